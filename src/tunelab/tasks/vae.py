"""Variational autoencoder task: learn what normal rows look like, then score how far new rows are from it, and
draw synthetic rows or images from it.

Rows become vectors (``vae_inputs``): numeric table columns, small images, or a pretrained text encoder's features.
The scaler is fitted on the training split only, in ``fit_splits``, which the data layer calls once the splits are
final; it is kept in the model as buffers, so final/ scores raw rows as training saw them. The loss is the negative
ELBO with the KL term weighted by beta (warmed up if the recipe asks); evaluation reports ELBO, reconstruction and
KL apart, and, when the recipe names the normal labels, anomaly detection against three sklearn baselines on the
same split and features (``anomaly``), with a threshold chosen on validation.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from tunelab.data.labels import label_name
from tunelab.data.sources import Row
from tunelab.errors import DataError, RecipeError, RunError
from tunelab.tasks import anomaly, synthetic
from tunelab.tasks.base import Feature, Prepared
from tunelab.tasks.vae_inputs import TextEncoder
from tunelab.tasks.vae_model import VAE
from tunelab.tasks.vectors import VectorInputs, check_inputs


def check_recipe(recipe: Any) -> str:
    """Refuse what a VAE cannot run before any work; returns the likelihood ('mse', 'gaussian' or 'bce') it will use."""
    cfg = recipe.task
    check_inputs(recipe, "VAE")
    likelihood = cfg.reconstruction or ("bce" if cfg.input == "image" else "gaussian")
    if likelihood == "bce" and cfg.input != "image":
        raise RecipeError(f"task.reconstruction bce needs inputs in [0, 1] (images); task.input {cfg.input} is "
                          "standardised, so use mse")
    return likelihood


class VAETask(VectorInputs):
    """A VAE on table, image or text-feature vectors: ELBO training, anomaly scores, synthetic samples."""

    name = "vae"

    def __init__(self, recipe: Any, encoder: TextEncoder | None = None) -> None:
        self.likelihood = check_recipe(recipe)
        self.init_inputs(recipe, encoder)
        self.validation: list[Feature] = []  # where thresholds are chosen
        self.scaler: tuple[torch.Tensor, torch.Tensor] | None = None
        self.warmup_examples = 0.0
        self._baselines: anomaly.Baselines | None = None
        self._baseline_scores: dict[str, dict[str, np.ndarray]] = {}

    @classmethod
    def load(cls, final_dir: Path, recipe: Any, info: dict[str, Any]) -> VAETask:
        """The VAE of final/ (weights and scaler from model.safetensors, shape and columns from tunelab.json)."""
        task = cls(recipe)
        task.columns, task.info, task.final_dir = list(info["columns"]), info, final_dir
        model = VAE(info["dim"], info["hidden"], info["latent"], info["likelihood"])
        model.load_state_dict(load_file(final_dir / "model.safetensors"))
        task.model = model.eval()
        return task

    # ---- rows and features -------------------------------------------------------------------------------------
    def fit_labels(self, train_rows: list[Row]) -> None:
        """Learn from the given training rows what needs no statistics: the table's columns (kept as saved for a
        loaded model) and that every normal label of task.normal occurs among them."""
        self.fit_columns(train_rows)
        if self.cfg.normal:
            seen = {label_name(row.values.get(self.label_col)) for row in train_rows}
            unknown = [name for name in self.cfg.normal if name not in seen]
            if unknown:
                raise DataError(f"task.normal names {unknown}, which no training row has in column '{self.label_col}' "
                                f"(labels seen: {', '.join(sorted(str(s) for s in seen))}); list normal labels as "
                                "the data spells them")

    def stratify_key(self, row: Row) -> str:
        """Splits and samples keep the share of anomalies (with task.normal); otherwise one stratum."""
        return ("anomaly" if self._anomalous(row.values) else "normal") if self.cfg.normal else ""

    def check_row(self, row: Row) -> str | None:
        if self.cfg.normal and label_name(row.values.get(self.label_col)) is None:
            return (f"no label in column '{self.label_col}' (task.normal needs one on every row to tell normal from "
                    "anomalous; map it with data.columns.label)")
        return self.input_problem(row.values)

    def featurize(self, rows: list[Row]) -> Prepared:
        """Rows as raw vectors with an id, where they came from, and whether they are anomalous (task.normal)."""
        return self.vectors(rows, lambda values: {"anomaly": self._anomalous(values) if self.cfg.normal else None})

    def _anomalous(self, values: dict[str, Any]) -> int:
        return int(label_name(values.get(self.label_col)) not in self.cfg.normal)

    def fit_splits(self, splits: dict[str, list[Feature]]) -> None:
        """Fit on the training split only: the scaler (unless the model was loaded with its own), the KL warm-up
        length, the baselines' data; keep validation for thresholds. Anomalies in training are refused."""
        train = splits["train"]
        bad = [f["where"] for f in train if f["anomaly"]]
        if bad:
            raise DataError(f"{len(bad)} training row(s) are anomalies (label not in task.normal {self.cfg.normal}), "
                            f"e.g. {'; '.join(bad[:3])}. A VAE learns what normal looks like from normal rows only: "
                            "give data.train with normal rows and data.validation / data.test with both")
        self.train_x = np.stack([f["x"] for f in train])
        if self.model is None:
            self.scaler = self.fit_scaler(self.train_x)
        self.warmup_examples = self.cfg.kl_warmup_epochs * len(train)
        self.validation = splits.get("validation", [])
        self._baselines, self._baseline_scores = None, {}

    def collate(self, features: list[Feature], train: bool = False) -> dict[str, torch.Tensor]:
        return {"inputs": torch.from_numpy(np.stack([f["x"] for f in features]))}

    # ---- model and loss ----------------------------------------------------------------------------------------
    def model_class(self) -> type | None:
        return VAE

    def build_model(self) -> nn.Module:
        """A fresh VAE around the training split's scaler."""
        if self.scaler is None or self.train_x is None:
            raise RunError("the VAE's scaler is fitted on the training split in fit_splits; prepare the data "
                           "(tunelab.data.prepare.prepare_rows) before building the model")
        return VAE(self.train_x.shape[1], self.cfg.hidden, self.cfg.latent, self.likelihood, *self.scaler)

    def beta(self, vae: VAE) -> float:
        """The KL weight now: beta, raised linearly from 0 over task.kl_warmup_epochs of training examples."""
        if self.warmup_examples <= 0:
            return self.cfg.beta
        return self.cfg.beta * min(1.0, int(vae.examples_seen) / self.warmup_examples)

    def loss_sum(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Σ over the batch of reconstruction NLL + beta·KL (one latent sample each, from the global RNG)."""
        vae = getattr(model, "module", model)  # under DDP the buffers live on the wrapped module
        terms = model(batch["inputs"])
        loss = (terms.reconstruction + self.beta(vae) * terms.kl).sum()
        if vae.training and torch.is_grad_enabled():
            vae.examples_seen += batch["inputs"].shape[0]
        return loss

    # ---- evaluation and scores ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def terms(self, model: nn.Module, features: list[Feature], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-example reconstruction NLL and KL over task.eval_samples latent draws. The draws come from a generator
        seeded by the recipe, all at once, so a row's score depends neither on the batch size nor on its batch."""
        model.eval()
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(self.recipe.seed)
        noise = torch.randn(self.cfg.eval_samples, len(features), model.latent, generator=generator).to(device)
        recon, kl = [], []
        for start in range(0, len(features), batch_size):
            inputs = self.collate(features[start : start + batch_size])["inputs"].to(device)
            out = model(inputs, noise[:, start : start + batch_size])
            recon.append(out.reconstruction.double().cpu())
            kl.append(out.kl.double().cpu())
        return torch.cat(recon).numpy(), torch.cat(kl).numpy()

    def scores(self, model: nn.Module, features: list[Feature], batch_size: int) -> np.ndarray:
        """Anomaly score per example, higher for odder rows: −ELBO or the reconstruction NLL (task.score)."""
        recon, kl = self.terms(model, features, batch_size)
        return recon + kl if self.cfg.score == "elbo" else recon

    def evaluate(self, model: nn.Module, features: list[Feature], batch_size: int) -> dict[str, Any]:
        """Mean loss (what training minimises), ELBO, reconstruction and KL per example; with task.normal, anomaly
        detection at the validation threshold and the sklearn baselines on the same rows.

        With task.normal the loss and ELBO terms are those of the normal rows (the anomalies' ELBO is reported
        apart): the best checkpoint is the one that models normal best. Over all rows, a model that learns to give
        anomalies a low likelihood, which is the point, would look worse and be passed over."""
        recon, kl = self.terms(model, features, batch_size)
        labels = np.array([f["anomaly"] if self.cfg.normal else 0 for f in features])
        normal = labels == 0
        r, k = recon[normal], kl[normal]
        metrics: dict[str, Any] = {"loss": float(np.mean(r + self.cfg.beta * k)), "elbo": float(-np.mean(r + k)),
                                   "reconstruction": float(np.mean(r)), "kl": float(np.mean(k)), "n": len(features)}
        if 0 < labels.sum() < len(labels):
            metrics["anomaly_elbo"] = float(-np.mean(recon[~normal] + kl[~normal]))
            metrics |= self._detection(model, recon + kl if self.cfg.score == "elbo" else recon, features, labels,
                                       batch_size)
        return metrics

    def _detection(self, model: nn.Module, scores: np.ndarray, features: list[Feature], labels: np.ndarray,
                   batch_size: int) -> dict[str, Any]:
        valid_labels = np.array([f["anomaly"] for f in self.validation])
        valid_scores = self.scores(model, self.validation, batch_size)
        threshold, rule = anomaly.choose_threshold(valid_scores, valid_labels, self.cfg.threshold_quantile)
        table = anomaly.detector_table({f"vae (-{self.cfg.score})": scores, **self.baseline_scores(model, features)},
                                       {f"vae (-{self.cfg.score})": valid_scores,
                                        **self.baseline_scores(model, self.validation)},
                                       labels, valid_labels, self.cfg.threshold_quantile)
        return anomaly.detection_metrics(scores, labels, threshold) | {
            "threshold_rule": rule, "detectors": table, "verdict": anomaly.verdict(table)}

    def baseline_scores(self, model: VAE, features: list[Feature]) -> dict[str, np.ndarray]:
        """The sklearn baselines' scores of these rows, fitted once on the scaled training rows (cached by rows)."""
        if self.train_x is None:
            raise RunError("the baselines are fitted on the training split in fit_splits; prepare the data first")
        center, spread = model.center.cpu().numpy(), model.spread.cpu().numpy()
        scale = lambda x: ((x - center) / spread).astype(np.float64)  # noqa: E731
        if self._baselines is None:
            self._baselines = anomaly.Baselines(scale(self.train_x), self.cfg.latent, self.recipe.seed)
        key = hashlib.sha256("".join(f["id"] for f in features).encode()).hexdigest()
        if key not in self._baseline_scores:
            self._baseline_scores[key] = self._baselines.scores(scale(np.stack([f["x"] for f in features])))
        return self._baseline_scores[key]

    def score_rows(self, model: nn.Module, rows: list[Row], batch_size: int = 256) -> list[dict[str, Any]]:
        """Score rows of a new file against final/'s threshold: where each came from, its terms, score and flag.

        Every row must be usable: a bad one is an error naming its file, line and column (none is left out)."""
        good, bad = [], []
        for row in rows:
            problem = self.input_problem(row.values)
            if problem:
                bad.append((row.where(), problem))
            else:
                good.append(row)
        prepared = self.vectors(good, lambda values: {"anomaly": None})
        bad += prepared.rejected
        if bad:
            shown = "\n".join(f"  - {where}: {problem}" for where, problem in bad[:5])
            raise DataError(f"{len(bad)} row(s) cannot be scored:\n{shown}\nFix them and score again.")
        recon, kl = self.terms(model, prepared.features, batch_size)
        scores = recon + kl if self.cfg.score == "elbo" else recon
        return [{"where": f["where"], "score": float(s), "flag": bool(s >= self.info["threshold"]),
                 "elbo": float(-r - k), "reconstruction": float(r), "kl": float(k)}
                for f, s, r, k in zip(prepared.features, scores, recon, kl)]

    def predict(self, model: nn.Module, inputs: list[Any], batch_size: int = 64) -> list[dict[str, Any]]:
        """Scores of raw inputs (texts, image paths, or table rows as dicts), labelled anomaly or normal by the
        threshold chosen on validation."""
        key = {"text": self.text_col, "image": self.image_col}.get(self.cfg.input)
        if key is None and not all(isinstance(item, dict) for item in inputs):
            raise RunError("a table VAE scores rows: pass dicts of column values, or score a file with "
                           "tunelab score RUN data.csv")
        rows = [Row(item if key is None else {key: item}, "input", i + 1) for i, item in enumerate(inputs)]
        return [{"text": str(item), "label": "anomaly" if result["flag"] else "normal",
                 "scores": {k: result[k] for k in ("score", "elbo", "reconstruction", "kl")}}
                for item, result in zip(inputs, self.score_rows(model, rows, batch_size))]

    def draw(self, model: VAE, n: int, seed: int) -> tuple[np.ndarray, None]:
        """n samples in raw units (``synthetic.draw``); a VAE's samples carry no class."""
        return synthetic.draw(model, n, seed), None

    def generate_and_score(self, model: VAE, features: list[Feature], batch_size: int) -> dict[str, Any]:
        """Samples judged against these rows' normal ones and the training rows (``synthetic.quality``): the
        detection score, nearest real rows, per-column distances for tables. Run once after training, on test."""
        normal = [f for f in features if not f["anomaly"]]
        return self.judge(model, synthetic.draw(model, len(normal), self.recipe.seed), normal)

    def figures(self, model: VAE, run_dir: Path) -> dict[str, str]:
        """For images: plots/samples.png, a grid of 64 samples."""
        return self.grid(synthetic.draw(model, 64, self.recipe.seed), run_dir) if self.cfg.input == "image" else {}

    # ---- saving ------------------------------------------------------------------------------------------------
    def save(self, model: nn.Module, folder: Path, strategy: Any) -> None:
        """final/: the weights with the scaler (model.safetensors) and tunelab.json with the shape, the columns, the
        encoder and the flag threshold chosen on validation; written whole or not at all."""
        labels = np.array([f["anomaly"] for f in self.validation]) if self.cfg.normal else None
        scores = self.scores(model, self.validation, self.recipe.eval.batch_size)
        threshold, rule = anomaly.choose_threshold(scores, labels, self.cfg.threshold_quantile)
        self.write_final(model, folder, strategy, {
            "hidden": list(self.cfg.hidden), "latent": model.latent, "likelihood": model.likelihood,
            "score": self.cfg.score, "threshold": threshold, "threshold_rule": rule})
