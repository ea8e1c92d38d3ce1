"""Image classification: a new head on a pretrained timm backbone (EfficientNet, ResNet, MobileNetV2, VGG, ViT, ...)
or a transformers image classifier named by hub id or local folder (``models/vision_hf.py``).

Rows hold an image (a path, raw bytes or an array) and a label. Each image is decoded and checked once, when the
data is prepared: a corrupt, truncated, empty or tiny image is a row-named error (or a counted skip), and CMYK,
greyscale, palette and alpha images are converted to RGB and counted. Features keep the decoded pixels (shrunk to
what the crop needs) and a digest of them, which is the example's key for the frozen-feature cache.

A timm model is wrapped so that batches reach it as ``pixel_values`` like any other task's inputs; final/ holds the
bare timm model (adapters merged in) with its preprocessing, which plain ``timm.create_model("local-dir:...")``
reloads. A transformers model takes ``pixel_values`` itself; its final/ is what ``save_pretrained`` writes, with the
image processor, for ``AutoModelForImageClassification`` and ``AutoImageProcessor``.
"""

from __future__ import annotations

import copy
import hashlib
import io
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

from tunelab.data.sources import Row
from tunelab.errors import RunError
from tunelab.io import publish_dir, write_json
from tunelab.models import vision, vision_hf
from tunelab.tasks.base import Feature, Prepared
from tunelab.tasks.labels import Labelled

MIN_SIDE = 4  # pixels: smaller images carry too little to classify (and often mean a broken export)


class ImageClassifier(nn.Module):
    """A timm model that takes ``pixel_values`` and returns an output with ``.logits``, as the text models do."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, pixel_values: torch.Tensor, **_: Any) -> ImageClassifierOutput:
        return ImageClassifierOutput(logits=self.backbone(pixel_values))


class ImageClassificationTask(Labelled):
    """Classify images into the labels seen in training."""

    name = "image_classification"

    def __init__(self, recipe: Any, preprocessing: vision.Preprocessing | None = None,
                 hf_processor: Any = None) -> None:
        self.recipe = recipe
        self.hf_processor = hf_processor  # a transformers backbone's image processor; None for timm backbones
        self.transformers = hf_processor is not None or (
            preprocessing is None and vision_hf.is_transformers_model(recipe.model.name))
        self.cfg = recipe.task
        self.image_col = recipe.data.columns.get("image", "image")
        self.label_col = recipe.data.columns.get("label", "label")
        self.set_labels(recipe.data.labels or [])
        self.preprocessing = preprocessing or self._preprocessing()
        self.model: nn.Module | None = None
        self.info: dict[str, Any] = {}  # final/tunelab.json, once loaded from a run
        self.final_dir: Path | None = None

    def _preprocessing(self) -> vision.Preprocessing:
        """The backbone's own preprocessing (from its pretrained config), at task.image_size if the recipe sets it."""
        if self.transformers:
            self.hf_processor = vision_hf.load_processor(self.recipe.model.name, self.recipe.model.trust_remote_code,
                                                         self.cfg.image_size)
            return vision.Preprocessing(**vision_hf.train_geometry(self.hf_processor))
        own = vision.preprocessing_for(self.recipe.model.name)
        if self.cfg.image_size is None:
            return own
        return vision.Preprocessing(**{**own.data_config(), "input_size": (3, self.cfg.image_size, self.cfg.image_size)})

    @property
    def processor(self) -> vision.Preprocessing:
        return self.preprocessing

    @classmethod
    def load(cls, final_dir: Path, recipe: Any, info: dict[str, Any]) -> ImageClassificationTask:
        """The bare model of final/ (as plain timm or transformers loads it) with its saved preprocessing."""
        if info.get("format") == "transformers":
            model, processor = vision_hf.load(final_dir)
            task = cls(recipe, vision.Preprocessing(**vision_hf.train_geometry(processor)), processor)
        else:
            backbone, preprocessing = vision.load_image_model(final_dir)
            task, model = cls(recipe, preprocessing), ImageClassifier(backbone).eval()
        task.set_labels(info["labels"])
        task.info, task.final_dir = info, final_dir
        task.model = model
        return task

    # ---- rows and features -------------------------------------------------------------------------------------
    def check_row(self, row: Row) -> str | None:
        if self.image_col not in row.values:
            return f"missing column '{self.image_col}' (the image; map it with data.columns.image)"
        return self.label_problem(row.values)

    def featurize(self, rows: list[Row]) -> Prepared:
        """Decode and check every image once; keep RGB pixels no larger than the crop needs."""
        prepared = Prepared([])
        keep = math.ceil(self.preprocessing.input_size[-1] / self.preprocessing.crop_pct)
        for row in rows:
            try:
                image, converted = decode(row.values[self.image_col], Path(row.source).parent)
            except ValueError as err:
                prepared.rejected.append((row.where(), str(err)))
                continue
            if converted:
                prepared.converted[f"{converted} images converted to RGB"] += 1
            if min(image.size) > keep:  # a 4000-pixel photo need not stay in memory at full size
                scale = keep / min(image.size)
                image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
            pixels = np.asarray(image, dtype=np.uint8)
            prepared.features.append({"label": self.label_id(row.values), "pixels": pixels,
                                      "image_id": hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()[:20]})
        return prepared

    def length(self, feature: Feature) -> int:
        return 1  # every image becomes the same input size

    def collate(self, features: list[Feature], train: bool = False) -> dict[str, torch.Tensor]:
        """Images to a normalised batch: random resized crop and flip when training (``train``), else the backbone's
        own resize and centre crop."""
        transform = self._train_transform if train and self.cfg.augment else self._eval_transform
        pixels = torch.stack([transform(Image.fromarray(f["pixels"])) for f in features])
        return {"pixel_values": pixels, "labels": torch.tensor([f["label"] for f in features], dtype=torch.long)}

    @property
    def _eval_transform(self) -> Any:
        if not hasattr(self, "_eval"):
            self._eval = (vision_hf.eval_transform(self.hf_processor) if self.transformers
                          else vision.eval_transform(self.preprocessing))
        return self._eval

    @property
    def _train_transform(self) -> Any:
        if not hasattr(self, "_train"):
            self._train = vision.train_transform(self.preprocessing, hflip=0.5 if self.cfg.hflip else 0.0,
                                                 scale=self.cfg.scale)
        return self._train

    def cache_keys(self, inputs: dict[str, torch.Tensor]) -> tuple[list[tuple], list[int]]:
        """A digest of each image's input pixels: the same image after the same (eval) transform, the same key."""
        rows = inputs["pixel_values"].detach().cpu().contiguous()
        return [(hashlib.sha1(row.numpy().tobytes()).digest(),) for row in rows], [1] * len(rows)

    # ---- model and loss ----------------------------------------------------------------------------------------
    def model_class(self) -> type | None:
        return None  # strategies that need to see the architecture check the built model instead

    def build_model(self) -> nn.Module:
        """The backbone (pretrained, or the same architecture from scratch) with a new head for these labels."""
        if self.transformers:  # task.drop_rate is timm's; a transformers model keeps its config's dropout
            model = vision_hf.create(self.recipe.model.name, self.label_names, pretrained=self.cfg.pretrained,
                                     trust_remote_code=self.recipe.model.trust_remote_code)
            vision_hf.check_input_size(model, vision_hf.output_edge(self.hf_processor))
            return model
        backbone, _ = vision.create_image_model(self.recipe.model.name, len(self.label_names),
                                                pretrained=self.cfg.pretrained)
        if hasattr(backbone, "drop_rate"):
            backbone.drop_rate = self.cfg.drop_rate
        model = ImageClassifier(backbone)
        model.tunelab_new_params = [f"backbone.{name}" for name in backbone.tunelab_new_params]
        return model

    def count(self, features: list[Feature]) -> int:
        return len(features)

    def loss_sum(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(pixel_values=batch["pixel_values"]).logits
        return F.cross_entropy(logits.float(), batch["labels"], reduction="sum")

    # ---- evaluation and prediction -----------------------------------------------------------------------------
    @torch.inference_mode()
    def logits(self, model: nn.Module, features: list[Feature], batch_size: int) -> torch.Tensor:
        model.eval()
        device = next(model.parameters()).device
        out = [model(pixel_values=self.collate(features[s : s + batch_size])["pixel_values"].to(device)).logits.float().cpu()
               for s in range(0, len(features), batch_size)]
        return torch.cat(out) if out else torch.empty(0, len(self.label_names))

    def predict(self, model: nn.Module, images: list[Any], batch_size: int = 64) -> list[dict[str, Any]]:
        """Label and probabilities for image files (paths) or decoded images, preprocessed as in evaluation."""
        features = []
        for image in images:
            try:
                decoded, _ = decode(image, Path.cwd())
            except ValueError as err:
                raise RunError(f"{image}: {err}") from None
            features.append({"pixels": np.asarray(decoded, dtype=np.uint8), "label": 0})
        probs = self.logits(model, features, batch_size).softmax(-1)
        return [{"text": str(image) if isinstance(image, (str, Path)) else f"image {i}",
                 "label": self.label_names[int(p.argmax())], "scores": dict(zip(self.label_names, p.tolist()))}
                for i, (image, p) in enumerate(zip(images, probs))]

    # ---- saving ------------------------------------------------------------------------------------------------
    def save(self, model: nn.Module, folder: Path, strategy: Any) -> None:
        """final/ as plain timm or transformers writes it (adapters merged in), written whole or not at all."""
        bare = _merged_backbone(model)
        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if self.transformers:
            vision_hf.save(bare, self.hf_processor, tmp)
        else:
            vision.save_image_model(bare, self.preprocessing, tmp, label_names=self.label_names)
        write_json(tmp / "tunelab.json", {"task": self.name, "labels": self.label_names, "strategy": strategy.name,
                                          "format": "transformers" if self.transformers else "timm"})
        publish_dir(tmp, folder)

    def export(self, target: Path) -> Path:
        if self.transformers:
            raise RunError(f"{self.final_dir}: this image run's final/ is already a plain transformers folder (adapters "
                           f"merged in); load it with AutoModelForImageClassification.from_pretrained('{self.final_dir}')"
                           " and AutoImageProcessor.from_pretrained of the same folder")
        raise RunError(f"{self.final_dir}: an image run's final/ is already a plain timm folder (adapters merged in); "
                       f"load it with timm.create_model('local-dir:{self.final_dir}', pretrained=True)")


def _merged_backbone(model: nn.Module) -> nn.Module:
    """The bare model with any PEFT adapter folded into a copy of its weights (the training model is kept)."""
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    return model.backbone if isinstance(model, ImageClassifier) else model


def decode(image: Any, base: Path) -> tuple[Image.Image, str | None]:
    """An RGB image from a path (relative to ``base``), raw bytes or an array; and the mode it was converted from.

    Raises ValueError saying what is wrong: a missing, empty, corrupt or truncated file, or a tiny image.
    """
    if isinstance(image, (str, Path)):
        path = Path(image) if Path(image).is_absolute() else base / image
        if not path.is_file():
            raise ValueError(f"image file {path} does not exist")
        if path.stat().st_size == 0:
            raise ValueError(f"image file {path} is empty (0 bytes)")
        source: Any = path
    elif isinstance(image, (bytes, bytearray)):
        if not image:
            raise ValueError("image bytes are empty")
        source = io.BytesIO(image)
    elif isinstance(image, np.ndarray):
        return _checked(Image.fromarray(image))
    else:
        raise ValueError(f"image is {type(image).__name__}; expected a file path, bytes or an array")
    try:
        with Image.open(source) as opened:
            opened.load()  # decode now: a truncated file fails here, not in the middle of training
            return _checked(opened)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot decode the image ({' '.join(str(err).split())})") from None


def _checked(image: Image.Image) -> tuple[Image.Image, str | None]:
    if min(image.size) < MIN_SIDE:
        raise ValueError(f"image is {image.width}x{image.height} pixels, smaller than {MIN_SIDE}x{MIN_SIDE}")
    if image.mode == "RGB":
        return image.copy(), None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        background = Image.new("RGB", image.size, (255, 255, 255))  # transparent areas become white, not black
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background, image.mode
    return image.convert("RGB"), image.mode
