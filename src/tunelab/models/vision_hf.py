"""Image classifiers from Hugging Face transformers (``AutoModelForImageClassification``), beside timm's.

Why a second source: many image checkpoints people fine-tune live on the hub as transformers models
(``microsoft/resnet-50``, ``google/vit-base-patch16-224``, ``facebook/convnext-tiny-224``,
``google/mobilenet_v2_1.0_224``, ``google/efficientnet-b0``), with an image processor beside them. A recipe names one
by hub id or by a local folder holding a transformers ``config.json``; timm models keep their timm names (and
``hf-hub:timm/...`` for timm checkpoints on the hub).

Three rules keep such a run like a timm run:

* **The head is always new.** ``classifier`` is re-initialised with the model's own ``_init_weights`` even when the
  checkpoint's head already has as many classes, so "new parameters" means the same for every backbone.
* **Preprocessing is the checkpoint's image processor.** Evaluation and ``predict`` call it, and ``final/`` saves it,
  so plain ``AutoImageProcessor`` + ``AutoModelForImageClassification`` on ``final/`` give tunelab's logits. Training
  augmentation (random resized crop, flip) uses timm's transforms with the processor's mean, std and size.
* **``task.image_size``** scales the processor's resize and crop sizes together, keeping their ratio.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunelab.errors import ModelError, RecipeError
from tunelab.models.catalog import _load_error, _load_kwargs, _model_kwargs, model_path

RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}  # PIL's numbers
TIMM_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:", "timm/")


def is_transformers_model(name: str) -> bool:
    """Whether a recipe's image model name means a transformers checkpoint rather than a timm model.

    A local folder counts when its config.json has ``model_type`` (transformers) rather than ``architecture``
    (timm's own save format); ``org/name`` counts unless it is a timm hub name (``timm/...``, ``hf-hub:...``).
    """
    folder = Path(os.path.expanduser(name))
    if folder.is_dir():
        config = folder / "config.json"
        return config.is_file() and "model_type" in json.loads(config.read_text(encoding="utf-8"))
    return name.count("/") == 1 and not name.startswith(TIMM_PREFIXES)


def is_image_folder(name: str) -> bool:
    """Whether a local folder holds an image classifier (transformers ``*ForImageClassification``, or timm's format),
    so that ``tunelab inspect FOLDER`` inspects it as an image model."""
    config = Path(os.path.expanduser(name)) / "config.json"
    if not config.is_file():
        return False
    raw = json.loads(config.read_text(encoding="utf-8"))
    return "architecture" in raw or any(a.endswith("ForImageClassification") for a in raw.get("architectures") or [])


def _load(name: str, trust_remote_code: bool, what: str, loader: Any, **kwargs: Any) -> Any:
    """Call a transformers ``from_pretrained`` with tunelab's offline handling and a ModelError on failure."""
    resolved = model_path(name)
    options = _load_kwargs(resolved, trust_remote_code) if what == "image processor" else _model_kwargs(
        resolved, trust_remote_code)
    try:
        return loader.from_pretrained(resolved, **options, **kwargs)
    except (OSError, ValueError, KeyError) as error:
        raise _load_error(name, resolved, what, error) from error


def load_processor(name: str, trust_remote_code: bool = False, image_size: int | None = None) -> Any:
    """The checkpoint's image processor, its sizes scaled to ``image_size`` when given."""
    from transformers import AutoImageProcessor

    processor = _load(name, trust_remote_code, "image processor", AutoImageProcessor)
    if image_size is not None:
        resize_processor(processor, image_size)
    return processor


def _edge(size: Any) -> int | None:
    """The output edge a processor size dict describes (``shortest_edge``, or ``height``)."""
    size = dict(size or {})
    return size.get("height") or size.get("shortest_edge")


def output_edge(processor: Any) -> int:
    """The side of the square the processor hands the model."""
    crop = _edge(getattr(processor, "crop_size", None)) if getattr(processor, "do_center_crop", False) else None
    edge = crop or _edge(getattr(processor, "size", None))
    if not edge:
        raise ModelError(f"{type(processor).__name__}: cannot tell its output size from size={processor.size}")
    return int(edge)


def resize_processor(processor: Any, image_size: int) -> None:
    """Scale every resize and crop size of the processor by image_size / its output edge (ratios are kept)."""
    factor = image_size / output_edge(processor)
    for attr in ("size", "crop_size"):
        value = getattr(processor, attr, None)
        if value:
            setattr(processor, attr, {k: max(1, round(v * factor)) for k, v in dict(value).items() if v is not None})


def train_geometry(processor: Any) -> dict[str, Any]:
    """What timm's training transform needs from a processor: input size, interpolation, mean, std, crop."""
    edge = output_edge(processor)
    normalise = getattr(processor, "do_normalize", True)
    mean = tuple(processor.image_mean) if normalise else (0.0, 0.0, 0.0)
    std = tuple(processor.image_std) if normalise else (1.0, 1.0, 1.0)
    resize_edge = _edge(getattr(processor, "size", None)) or edge
    crop_pct = getattr(processor, "crop_pct", None) or min(1.0, edge / resize_edge)
    resample = getattr(processor, "resample", 2)
    return {"input_size": (3, edge, edge), "interpolation": RESAMPLE.get(int(resample), "bilinear"),
            "mean": mean, "std": std, "crop_pct": float(crop_pct), "crop_mode": "center"}


def eval_transform(processor: Any) -> Any:
    """PIL image -> tensor exactly as the checkpoint's own image processor prepares it."""
    return lambda image: processor(images=image, return_tensors="pt")["pixel_values"][0]


def _reset_head(model: nn.Module) -> list[str]:
    """Re-initialise ``model.classifier`` with the model's own init; return its parameter names."""
    head = getattr(model, "classifier", None)
    if not isinstance(head, nn.Module):
        raise ModelError(f"{type(model).__name__} has no 'classifier' module, so tunelab cannot give it a new head; "
                         "pick another image-classification checkpoint or a timm model.")
    for module in head.modules():
        for param in module.parameters(recurse=False):
            param._is_hf_initialized = False  # transformers' init functions skip tensors loaded from the checkpoint
        model._init_weights(module)
    return [f"classifier.{name}" for name, _ in head.named_parameters()]


def create(name: str, label_names: list[str], *, pretrained: bool, trust_remote_code: bool = False) -> nn.Module:
    """A transformers image classifier with a new head for ``label_names`` (pretrained, or from its config only)."""
    from transformers import AutoConfig, AutoModelForImageClassification

    labels = {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
              "label2id": {label: i for i, label in enumerate(label_names)}}
    if pretrained:
        model = _load(name, trust_remote_code, "image model", AutoModelForImageClassification,
                      ignore_mismatched_sizes=True, **labels)
    else:
        config = _load(name, trust_remote_code, "model config", AutoConfig, **labels)
        model = AutoModelForImageClassification.from_config(config, trust_remote_code=trust_remote_code)
    with torch.no_grad():
        model.tunelab_new_params = _reset_head(model)
    return model


def check_input_size(model: nn.Module, edge: int) -> None:
    """Refuse an input size that a model with fixed position embeddings (ViT, DeiT, BEiT) cannot take as saved.

    Such models run other sizes only with ``interpolate_pos_encoding=True`` on every call, which a plain
    transformers user of final/ would not pass; so the size is the checkpoint's own.
    """
    native = getattr(model.config, "image_size", None)
    takes = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
    if takes and isinstance(native, int) and native != edge:
        raise RecipeError(f"task.image_size: {type(model).__name__} has position embeddings for {native}x{native} "
                          f"images (config.image_size), not {edge}x{edge}; remove task.image_size or set it to "
                          f"{native}")


def save(model: nn.Module, processor: Any, folder: Path) -> None:
    """final/ as transformers writes it: config (with the labels), safetensors weights, the image processor."""
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)


def load(folder: Path) -> tuple[nn.Module, Any]:
    """Reload a folder written by ``save`` through plain transformers, as a user would."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    try:
        return (AutoModelForImageClassification.from_pretrained(folder).eval(),
                AutoImageProcessor.from_pretrained(folder))
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(f"Could not load the image model in {folder}: {error.__class__.__name__}: "
                         f"{' '.join(str(error).split())}. It needs config.json, model.safetensors and "
                         "preprocessor_config.json as save_pretrained writes them.") from error
