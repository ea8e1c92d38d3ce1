"""One exception family per kind of mistake, so users (and tests) can tell them apart.

Every message names the file, key or row at fault and says what to do about it.
"""


class TunelabError(Exception):
    """Base class for every error tunelab raises on purpose."""


class RecipeError(TunelabError):
    """The recipe (YAML or --set override) is invalid: wrong key, type or value."""


class DataError(TunelabError):
    """A data file or row cannot be used: missing column, empty text, unknown label..."""


class ModelError(TunelabError):
    """A model cannot be found, loaded, or does not fit the requested strategy."""


class RunError(TunelabError):
    """A run folder is missing, incomplete, or would be overwritten."""
