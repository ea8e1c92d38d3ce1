"""GAN task: a generator learns to draw rows or images that a discriminator cannot tell from real ones; optionally
conditional on the class, so its samples come labelled and can train a classifier.

Rows become vectors as for the VAE (``vectors``: tables, small images, a pretrained text encoder's features; the
scaler fitted on the training split only, kept in the model). The task owns its training step: on every batch one
discriminator update, and on every ``d_steps``-th a generator update, each through its own optimiser, rate and
schedule (``optimizer_groups``); the loop checkpoints both, so a resumed run continues exactly. GAN losses say
little about sample quality, so evaluation draws synthetic rows and judges them by what they are for
(``synthetic.quality``): TSTR accuracy beside train-on-real, a detection score (0.5 ideal), nearest real rows
(memorisation), per-column distances for tables. The best checkpoint is the one with the lowest detection score,
unless the recipe picks another figure (eval.metric: tstr_accuracy, where the detection score saturates).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from tunelab.data.labels import label_name
from tunelab.data.prepare import label_names
from tunelab.data.sources import Row
from tunelab.errors import RecipeError, RunError
from tunelab.tasks.base import Feature, OptimizerGroup, Prepared, Stepper
from tunelab.tasks.gan_model import GAN
from tunelab.tasks.vae_inputs import TextEncoder
from tunelab.tasks.vectors import VectorInputs, check_inputs


def _gan(model: nn.Module) -> GAN:
    return getattr(model, "module", model)  # under a wrapper the networks live on the wrapped module


class GANTask(VectorInputs):
    """A GAN on table, image or text-feature vectors: adversarial training, synthetic samples judged by use."""

    name = "gan"

    def __init__(self, recipe: Any, encoder: TextEncoder | None = None) -> None:
        check_inputs(recipe, "GAN")
        cfg = recipe.task
        if cfg.architecture == "conv" and (cfg.input != "image" or cfg.image_size % 4):
            raise RecipeError(f"task.architecture conv needs images whose side divides by 4 (task.input "
                              f"{cfg.input}, image_size {cfg.image_size}); use architecture: mlp")
        self.init_inputs(recipe, encoder)
        self.labels: list[str] = []
        self.prior: np.ndarray | None = None  # training share of each class: what unlabelled draws follow
        self.scaler: tuple[torch.Tensor, torch.Tensor] | None = None
        self.splits: dict[str, list[Feature]] = {}

    @classmethod
    def load(cls, final_dir: Path, recipe: Any, info: dict[str, Any]) -> GANTask:
        """The GAN of final/ (weights and scaler from model.safetensors; shape, columns, classes from tunelab.json)."""
        task = cls(recipe)
        task.columns, task.info, task.final_dir = list(info["columns"]), info, final_dir
        task.labels, task.prior = list(info["labels"]), np.array(info["prior"]) if info["prior"] else None
        model = task._new_model(info["dim"])
        model.load_state_dict(load_file(final_dir / "model.safetensors"))
        task.model = model.eval()
        return task

    # ---- rows and features -------------------------------------------------------------------------------------
    def fit_labels(self, train_rows: list[Row]) -> None:
        """The table's columns and, when conditional, the class names in id order (data.labels, else sorted)."""
        self.fit_columns(train_rows)
        if self.cfg.conditional and self.model is None:
            self.labels = label_names(train_rows, self.label_col, self.recipe.data.labels)

    def stratify_key(self, row: Row) -> str:
        return str(label_name(row.values.get(self.label_col))) if self.cfg.conditional else ""

    def check_row(self, row: Row) -> str | None:
        if self.cfg.conditional:
            label = label_name(row.values.get(self.label_col))
            if label is None:
                return (f"no label in column '{self.label_col}' (task.conditional needs one on every row; map it "
                        "with data.columns.label)")
            if label not in self.labels:
                return f"unknown label '{label}' (not among the training labels: {', '.join(self.labels)})"
        return self.input_problem(row.values)

    def featurize(self, rows: list[Row]) -> Prepared:
        """Rows as raw vectors with an id and where they came from; the class id when conditional."""
        if not self.cfg.conditional:
            return self.vectors(rows)
        return self.vectors(rows, lambda values: {"label": self.labels.index(label_name(values[self.label_col]))})

    def fit_splits(self, splits: dict[str, list[Feature]]) -> None:
        """The scaler (unless loaded with the model) and the class shares, from the training split only."""
        self.splits = splits
        self.train_x = np.stack([f["x"] for f in splits["train"]])
        if self.model is None:
            self.scaler = self.fit_scaler(self.train_x)
            if self.cfg.conditional:
                counts = np.bincount([f["label"] for f in splits["train"]], minlength=len(self.labels))
                self.prior = counts / counts.sum()

    def collate(self, features: list[Feature], train: bool = False) -> dict[str, torch.Tensor]:
        batch = {"inputs": torch.from_numpy(np.stack([f["x"] for f in features]))}
        if self.cfg.conditional:
            batch["labels"] = torch.tensor([f["label"] for f in features])
        return batch

    # ---- model and training step -------------------------------------------------------------------------------
    def model_class(self) -> type | None:
        return GAN

    def _new_model(self, dim: int, center: torch.Tensor | None = None, spread: torch.Tensor | None = None) -> GAN:
        cfg = self.cfg
        return GAN(dim, cfg.noise, cfg.generator_hidden, cfg.discriminator_hidden, len(self.labels),
                   pixels=cfg.input == "image", architecture=cfg.architecture, side=cfg.image_size,
                   dropout=cfg.dropout, center=center, spread=spread)

    def build_model(self) -> nn.Module:
        """A fresh generator and discriminator around the training split's scaler."""
        if self.scaler is None or self.train_x is None:
            raise RunError("the GAN's scaler is fitted on the training split in fit_splits; prepare the data "
                           "(tunelab.data.prepare.prepare_rows) before building the model")
        return self._new_model(self.train_x.shape[1], *self.scaler)

    def optimizer_groups(self, model: nn.Module) -> dict[str, OptimizerGroup]:
        """One AdamW per network, each with the rate, betas and schedule of its task section."""
        groups = {}
        for net in ("discriminator", "generator"):
            opts = getattr(self.cfg, net)
            names = [name for name, _ in model.named_parameters() if name.startswith(f"{net}.")]
            groups[net] = OptimizerGroup(names, opts.lr or self.recipe.train.lr, opts.betas, opts.weight_decay,
                                         opts.schedule)
        return groups

    def train_step(self, step: Stepper) -> dict[str, float]:
        """A discriminator update on this batch; a generator update on every task.d_steps-th batch. The loss the
        loop shows is the discriminator's (its training health); both are logged."""
        terms = {"d_loss": step.update("discriminator", self.d_loss_sum)}
        if (step.index + 1) % self.cfg.d_steps == 0:
            terms["g_loss"] = step.update("generator", self.g_loss_sum)
        return {"loss": terms["d_loss"], **terms}

    def _fake(self, gan: GAN, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Generated rows for this batch (its classes, when conditional); noise from torch's CPU generator, which
        every checkpoint saves, so a resumed run draws the same noise on any device."""
        z = torch.randn(batch["inputs"].shape[0], gan.noise).to(batch["inputs"].device)
        return gan.generate(z, batch.get("labels"))

    def d_loss_sum(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Σ over the batch of the discriminator's loss on its real rows and as many generated ones."""
        gan = _gan(model)
        labels = batch.get("labels")
        with torch.no_grad():
            fake = self._fake(gan, batch)
        real_logits, fake_logits = gan.critic(gan.scale(batch["inputs"]), labels), gan.critic(fake, labels)
        if self.cfg.loss == "hinge":
            return F.relu(1 - real_logits).sum() + F.relu(1 + fake_logits).sum()
        target = torch.full_like(real_logits, 1.0 - self.cfg.label_smoothing)
        return F.binary_cross_entropy_with_logits(real_logits, target, reduction="sum") + F.softplus(fake_logits).sum()

    def g_loss_sum(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Σ over the batch of the generator's loss: −log D(G(z)) (non-saturating) or −D(G(z)) (hinge)."""
        gan = _gan(model)
        logits = gan.critic(self._fake(gan, batch), batch.get("labels"))
        return -logits.sum() if self.cfg.loss == "hinge" else F.softplus(-logits).sum()

    def loss_sum(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The discriminator's loss (the Task protocol's loss; training goes through ``train_step``)."""
        return self.d_loss_sum(model, batch)

    # ---- samples and evaluation --------------------------------------------------------------------------------
    @torch.inference_mode()
    def draw(self, model: nn.Module, n: int, seed: int, labels: np.ndarray | None = None
             ) -> tuple[np.ndarray, list[str] | None]:
        """n rows in raw units from a seeded generator, and their class names when conditional (``labels`` given,
        else drawn from the training shares)."""
        gan = _gan(model)
        gan.eval()
        device = next(gan.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(n, gan.noise, generator=generator)
        classes = None
        if gan.classes:
            if labels is None:
                labels = torch.multinomial(torch.tensor(self.prior), n, replacement=True, generator=generator).numpy()
            classes = torch.as_tensor(labels, dtype=torch.long).to(device)
        rows = gan(z.to(device), classes).double().cpu().numpy()
        return rows, [self.labels[i] for i in labels] if gan.classes else None

    def evaluate(self, model: nn.Module, features: list[Feature], batch_size: int) -> dict[str, Any]:
        """Synthetic rows (as many as ``features``, with their classes when conditional) judged against these real
        rows and the training rows: detection score, nearest real rows, TSTR and per-column distances."""
        n = self.cfg.eval_samples or len(features)
        labels = None
        if self.cfg.conditional:
            real_labels = np.array([f["label"] for f in features])
            labels = (np.resize(real_labels, n), np.array([f["label"] for f in self.splits["train"]]), real_labels)
        fake, _ = self.draw(model, n, self.recipe.seed, labels[0] if labels else None)
        return self.judge(_gan(model), fake, features, labels) | {"n": len(features), "samples": n}

    def figures(self, model: nn.Module, run_dir: Path) -> dict[str, str]:
        """For images: plots/samples.png, 64 samples; when conditional, a row of 8 per class in label order."""
        if self.cfg.input != "image":
            return {}
        classes = np.repeat(np.arange(len(self.labels)), 8) if self.labels else None
        fake, _ = self.draw(model, len(classes) if self.labels else 64, self.recipe.seed, classes)
        return self.grid(fake, run_dir)

    # ---- saving ------------------------------------------------------------------------------------------------
    def save(self, model: nn.Module, folder: Path, strategy: Any) -> None:
        """final/: both networks with the scaler (model.safetensors) and tunelab.json with the shape, the columns,
        the classes and their training shares; written whole or not at all."""
        self.write_final(_gan(model), folder, strategy, {
            "labels": self.labels, "prior": self.prior.tolist() if self.prior is not None else None})
