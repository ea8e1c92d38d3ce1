"""The VAE's maths and its data checks: the KL term in closed form, the reparameterised sample, the KL reaching the
gradients (with beta and warm-up), the scaler fitted on training rows only, and bad tables named by row and column."""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tunelab.data.prepare import prepare_rows
from tunelab.errors import DataError, RecipeError
from tunelab.recipe import parse_recipe
from tunelab.tasks.synthetic import nearest_real
from tunelab.tasks.vae import VAETask
from tunelab.tasks.vae_model import VAE, kl_to_standard_normal, reconstruction_nll, reparameterise


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def table_rows(n: int, seed: int, anomalous: bool = False, shift: float = 0.0) -> list[dict[str, Any]]:
    """Normal rows follow b = 2a; anomalies break it (b = -2a). ``shift`` moves every column."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a = rng.gauss(0, 1)
        b = (-2 if anomalous else 2) * a + rng.gauss(0, 0.1)
        rows.append({"a": round(a + shift, 5), "b": round(b + shift, 5), "c": round(rng.gauss(5, 2) + shift, 5),
                     "label": "odd" if anomalous else "ok"})
    return rows


def vae_recipe(tmp_path: Path, train: Path, **task: Any) -> Any:
    raw = {"model": {"name": "none"}, "task": {"type": "vae", "input": "table", **task},
           "data": {"train": str(train)}, "train": {"lr": 1e-3, "batch_size": 16},
           "output": {"dir": str(tmp_path / "runs")}}
    return parse_recipe(raw)


def prepared_task(tmp_path: Path, rows: list[dict[str, Any]], **task: Any) -> tuple[VAETask, dict[str, list]]:
    recipe = vae_recipe(tmp_path, write_csv(tmp_path / "train.csv", rows), **task)
    vae = VAETask(recipe)
    splits, _ = prepare_rows(recipe.data, vae, recipe.seed, None)
    return vae, splits


# ---- the maths ---------------------------------------------------------------------------------------------------
def test_kl_matches_the_closed_form_and_torch() -> None:
    # N(1, 1) against N(0, 1): ½(1 + 1 − 1 − 0) = ½ per dimension; N(0, e²): ½(e² − 1 − 2)
    mu = torch.tensor([[1.0, 0.0]])
    logvar = torch.tensor([[0.0, 2.0]])
    assert kl_to_standard_normal(mu, logvar).item() == pytest.approx(0.5 + 0.5 * (math.exp(2.0) - 3.0), rel=1e-6)
    assert kl_to_standard_normal(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    assert torch.allclose(kl_to_standard_normal(mu, logvar), expected, atol=1e-5)


def test_reparameterised_sample_has_the_right_mean_and_variance() -> None:
    mu = torch.tensor([1.0, -2.0, 0.0])
    logvar = torch.tensor([math.log(4.0), math.log(0.25), 0.0])
    n = 200_000
    noise = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))
    z = reparameterise(mu.expand(n, 3), logvar.expand(n, 3), noise)
    variance = logvar.exp()
    assert torch.allclose(z.mean(0), mu, atol=float(4 * (variance.max() / n).sqrt()))
    assert torch.allclose(z.var(0), variance, rtol=0.02)
    # and gradients reach both parameters: dz/dmu = 1, dz/dlogvar = ½σε
    mu_p, logvar_p = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    noise = torch.tensor([0.5, -1.0, 2.0])
    reparameterise(mu_p, logvar_p, noise).sum().backward()
    assert torch.allclose(mu_p.grad, torch.ones(3))
    assert torch.allclose(logvar_p.grad, 0.5 * (0.5 * logvar).exp() * noise)


def test_reconstruction_terms_are_the_negative_log_likelihoods() -> None:
    torch.manual_seed(0)
    out, x, log_noise = torch.randn(4, 3), torch.randn(4, 3), torch.randn(3)
    normal = torch.distributions.Normal(out, (0.5 * log_noise).exp())
    assert torch.allclose(reconstruction_nll(out, x, "gaussian", log_noise), -normal.log_prob(x).sum(-1), atol=1e-5)
    unit = torch.distributions.Normal(out, torch.ones(3))
    assert torch.allclose(reconstruction_nll(out, x, "mse"), -unit.log_prob(x).sum(-1), atol=1e-5)
    pixels = torch.rand(4, 3)
    bernoulli = -(pixels * torch.sigmoid(out).log() + (1 - pixels) * (1 - torch.sigmoid(out)).log()).sum(-1)
    assert torch.allclose(reconstruction_nll(out, pixels, "bce"), bernoulli, atol=1e-5)


def test_kl_term_is_in_the_loss_and_reaches_the_gradients(tmp_path: Path) -> None:
    def loss_and_grads(beta: float) -> tuple[float, dict[str, torch.Tensor]]:
        vae, splits = prepared_task(tmp_path, table_rows(40, 0), beta=beta)
        torch.manual_seed(0)
        model = vae.build_model()
        batch = vae.collate(splits["train"][:16])
        torch.manual_seed(1)  # the same latent noise for both betas
        loss = vae.loss_sum(model, batch)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    without, grads0 = loss_and_grads(0.0)
    with_kl, grads1 = loss_and_grads(1.0)
    vae, splits = prepared_task(tmp_path, table_rows(40, 0))
    torch.manual_seed(0)
    model = vae.build_model()
    kl = model(vae.collate(splits["train"][:16])["inputs"]).kl.sum().item()
    assert kl > 0.01  # an untrained encoder's q(z|x) is not N(0, I)
    assert with_kl - without == pytest.approx(kl, rel=1e-4)
    # the KL's gradient is what differs: it reaches both heads of the encoder and the layers under them
    for name in ("mu.weight", "logvar.weight", "encoder.0.weight"):
        assert (grads1[name] - grads0[name]).abs().max() > 1e-4, name
    assert torch.equal(grads1["decoder.1.weight"], grads0["decoder.1.weight"])  # the decoder never sees the KL


def test_kl_warmup_raises_beta_linearly_and_counts_only_training(tmp_path: Path) -> None:
    vae, splits = prepared_task(tmp_path, table_rows(40, 0), beta=2.0, kl_warmup_epochs=2.0)
    model = vae.build_model()
    n = len(splits["train"])
    assert vae.beta(model) == 0.0
    batch = vae.collate(splits["train"])
    model.eval()
    vae.loss_sum(model, batch)
    assert int(model.examples_seen) == 0  # evaluation does not advance the warm-up
    model.train()
    vae.loss_sum(model, batch)
    assert int(model.examples_seen) == n
    assert vae.beta(model) == pytest.approx(1.0)  # one epoch of two: half of beta 2
    vae.loss_sum(model, batch)
    vae.loss_sum(model, batch)
    assert vae.beta(model) == 2.0
    assert "examples_seen" in model.state_dict()  # so checkpoints carry it and a resume warms up the same way


# ---- the data ----------------------------------------------------------------------------------------------------
def test_scaler_is_fitted_on_training_rows_only(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", table_rows(60, 0))
    held = write_csv(tmp_path / "held.csv", table_rows(30, 1, shift=100.0))
    recipe = parse_recipe({"model": {"name": "none"}, "task": {"type": "vae"},
                           "data": {"train": str(train), "validation": str(held), "test": str(held)}})
    vae = VAETask(recipe)
    splits, _ = prepare_rows(recipe.data, vae, recipe.seed, None)
    x = np.stack([f["x"] for f in splits["train"]])
    model = vae.build_model()
    assert np.allclose(model.center.numpy(), x.mean(0), atol=1e-5)
    assert np.allclose(model.spread.numpy(), x.std(0), atol=1e-5)
    assert vae.columns == ["a", "b", "c"]  # the label column is not modelled


def test_bad_table_cells_are_named_by_line_and_column(tmp_path: Path) -> None:
    rows = table_rows(30, 0)
    rows[1]["b"] = ""  # line 3
    rows[4]["c"] = "12,5"  # line 6
    rows[7]["a"] = "nan"  # line 9
    with pytest.raises(DataError) as err:
        prepared_task(tmp_path, rows)
    message = str(err.value)
    assert "3 bad row(s)" in message
    assert "train.csv, line 3: column 'b' has no value" in message
    assert "train.csv, line 6: column 'c' holds '12,5', not a finite number" in message
    assert "train.csv, line 9: column 'a' holds 'nan'" in message
    assert "data.on_bad_rows: skip" in message


def test_non_numeric_and_constant_columns_are_named(tmp_path: Path) -> None:
    rows = [{**row, "patient": f"p{i}"} for i, row in enumerate(table_rows(20, 0))]
    with pytest.raises(DataError, match=r"column 'patient' holds 'p0', not a finite number; .* task.columns"):
        prepared_task(tmp_path, rows)
    vae, splits = prepared_task(tmp_path, rows, columns=["a", "b", "c"])  # listing the numeric columns works
    assert splits["train"][0]["x"].shape == (3,)
    constant = [{**row, "d": 7} for row in table_rows(20, 0)]
    with pytest.raises(DataError, match=r"column 'd' has the same value \(7\) in every training row"):
        prepared_task(tmp_path, constant)


def test_skipped_bad_rows_are_counted(tmp_path: Path) -> None:
    rows = table_rows(30, 0)
    rows[2]["a"] = "?"
    recipe = vae_recipe(tmp_path, write_csv(tmp_path / "train.csv", rows))
    recipe.data.on_bad_rows = "skip"
    vae = VAETask(recipe)
    splits, report = prepare_rows(recipe.data, vae, recipe.seed, None)
    assert sum(len(s) for s in splits.values()) == 29
    assert sum(report.skipped.values()) == 1


def test_anomalies_in_training_and_unknown_normal_labels_are_refused(tmp_path: Path) -> None:
    mixed = table_rows(40, 0) + table_rows(10, 1, anomalous=True)
    with pytest.raises(DataError, match=r"training row\(s\) are anomalies .* normal rows only"):
        prepared_task(tmp_path, mixed, normal=["ok"])
    with pytest.raises(DataError, match=r"task.normal names \['okay'\], which no training row has"):
        prepared_task(tmp_path, table_rows(40, 0), normal=["okay"])


def test_recipes_a_vae_cannot_run_are_refused(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", table_rows(10, 0))
    for changes, pattern in (({"strategy": {"method": "lora"}}, "trains from scratch"),
                             ({"model": {"name": "minilm-l6"}}, "set model.name: none"),
                             ({"task": {"type": "vae", "reconstruction": "bce"}}, "bce needs inputs in")):
        raw = {"model": {"name": "none"}, "task": {"type": "vae"}, "data": {"train": str(train)}} | changes
        with pytest.raises(RecipeError, match=pattern):
            VAETask(parse_recipe(raw))


def test_memorised_samples_are_caught() -> None:
    rng = np.random.default_rng(0)
    train, holdout = rng.normal(size=(300, 5)), rng.normal(size=(300, 5))
    fresh = nearest_real(rng.normal(size=(400, 5)), train, holdout, seed=0)
    assert not fresh["memorised"] and 0.4 < fresh["nearer_train_share"] < 0.6 and fresh["exact_copies"] == 0
    copies = nearest_real(train[:200] + 1e-4 * rng.normal(size=(200, 5)), train, holdout, seed=0)
    assert copies["memorised"] and copies["nearer_train_share"] > 0.9
    assert nearest_real(train[:50], train, holdout, seed=0)["exact_copies"] == 50


def test_a_model_reloads_its_scaler_with_its_weights(tmp_path: Path) -> None:
    vae = VAE(3, [8], 2, "mse", torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 2.0]))
    again = VAE(3, [8], 2, "mse")
    again.load_state_dict(vae.state_dict())
    assert torch.equal(again.center, vae.center) and torch.equal(again.spread, vae.spread)
    assert torch.allclose(again.scale(torch.tensor([[3.0, 4.0, 5.0]])), torch.ones(1, 3))


def test_parquet_tables_are_checked_like_csv(tmp_path: Path) -> None:
    import pandas as pd

    rows = table_rows(30, 0)
    frame = pd.DataFrame(rows)
    frame.loc[3, "a"] = None  # row 4: missing (pyarrow stores a null)
    frame.loc[5, "c"] = float("nan")  # row 6: NaN is a missing value too
    path = tmp_path / "train.parquet"
    frame.to_parquet(path)
    recipe = vae_recipe(tmp_path, path)
    with pytest.raises(DataError) as err:
        prepare_rows(recipe.data, VAETask(recipe), recipe.seed, None)
    assert "train.parquet, line 4: column 'a' has no value" in str(err.value)
    assert "train.parquet, line 6: column 'c' has no value" in str(err.value)
    frame.loc[3, "a"], frame.loc[5, "c"] = 0.5, 5.0
    frame.to_parquet(path)
    vae = VAETask(recipe)
    splits, _ = prepare_rows(recipe.data, vae, recipe.seed, None)
    assert vae.columns == ["a", "b", "c"] and sum(len(s) for s in splits.values()) == 30
