"""The image scenarios' Trainer side: what a user of timm + the transformers Trainer writes for the same work.

The backbone is the same EfficientNet-Lite0 (the bench saves tunelab's packaged ImageNet weights once as a plain timm
folder, loaded with ``timm.create_model("local-dir:...", pretrained=True, num_classes=10)``), wrapped in a module
that returns ``{"loss", "logits"}`` as the Trainer expects. The data are the same PNG folders, read with ``datasets``'
``imagefolder`` and transformed on the fly (``with_transform``) by timm's own train / eval transforms at the same
settings tunelab uses: the usual Hugging Face image-classification tutorial, with timm's transforms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common import Scenario, image_flops, image_forward_flops


class Classifier(nn.Module):
    """A timm model as a Trainer model: pixel_values (+ labels) in, a dict with loss and logits out."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.backbone(pixel_values)
        out = {"logits": logits}
        if labels is not None:
            out = {"loss": F.cross_entropy(logits, labels), **out}
        return out


def build(s: Scenario, folder: str, work: Path) -> tuple[nn.Module, Any, Any, Any]:
    """Model, train and validation datasets (transformed on access), and collator."""
    import timm
    from datasets import load_dataset

    backbone = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=10, drop_rate=0.2)
    size = s.task_options["image_size"]
    config = timm.data.resolve_data_config({"input_size": (3, size, size)}, model=backbone)
    eval_transform = timm.data.create_transform(**config, is_training=False)
    train_transform = eval_transform if not s.task_options.get("augment", True) else timm.data.create_transform(
        **config, is_training=True, scale=tuple(s.task_options["scale"]),
        hflip=0.5 if s.task_options.get("hflip", True) else 0.0, vflip=0.0, color_jitter=None, auto_augment=None,
        re_prob=0.0)
    data = load_dataset("imagefolder", data_dir=str(work / s.data_stem))

    def transformed(transform: Any) -> Any:
        def apply(batch: dict[str, list]) -> dict[str, list]:
            return {"pixel_values": [transform(image.convert("RGB")) for image in batch["image"]],
                    "labels": batch["label"]}
        return apply

    train = data["train"].with_transform(transformed(train_transform))
    validation = data["validation"].with_transform(transformed(eval_transform))
    model = Classifier(backbone)
    if s.strategy["method"] == "feature_extraction":
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("backbone.classifier."))
    elif s.strategy["method"] != "full":
        raise SystemExit(f"the image Trainer side has no strategy {s.strategy['method']!r}")
    return model, train, validation, collate


def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]),
            "labels": torch.tensor([r["labels"] for r in rows], dtype=torch.long)}


def work(s: Scenario, model: nn.Module, train_images: int, validation_images: int, passes: int) -> float:
    """Useful FLOPs: the backbone runs on every training image each epoch, backward too when it trains."""
    forward = image_forward_flops(model.backbone, s.task_options["image_size"])
    return image_flops(forward, train_images, validation_images * passes,
                       backward=s.strategy["method"] != "feature_extraction")
