"""Offline model catalog: named packaged models, local folders and hub ids, GGUF conversion."""

from tunelab.models.catalog import CATALOG, architecture_class, list_models, portable_name, load_pretrained, load_tokenizer, model_path
from tunelab.models.gguf import cache_root, convert_gguf

__all__ = [
    "CATALOG",
    "architecture_class",
    "cache_root",
    "convert_gguf",
    "list_models",
    "load_pretrained",
    "load_tokenizer",
    "model_path",
    "portable_name",
]
