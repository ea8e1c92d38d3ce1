"""Tests for tunelab.evaluate: metrics against hand-computed values, drift, memory."""

from __future__ import annotations

import math
import mmap
import time
import warnings

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from tunelab.errors import RecipeError
from tunelab.evaluate.drift import snapshot, weight_drift
from tunelab.evaluate.memory import (
    RssSampler,
    estimate_training_memory,
    format_bytes,
    peak_rss_bytes,
)
from tunelab.evaluate.metrics import (
    classification_metrics,
    generation_metrics,
    majority_baseline,
    perplexity,
)

NAMES = ["neg", "neu", "pos"]


def test_classification_metrics_hand_computed() -> None:
    labels = [0, 0, 1, 1, 2, 2]
    preds = [0, 1, 1, 1, 0, 2]
    m = classification_metrics(preds, labels, NAMES)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    # neg: predicted at 0,4 (one right) -> P=1/2, R=1/2; neu: predicted 1,2,3 (two right) -> P=2/3, R=1;
    # pos: predicted at 5 (right) -> P=1, R=1/2.
    assert m["per_class"]["neg"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_class"]["neu"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert m["per_class"]["pos"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_confusion_matrix_rows_are_true_labels() -> None:
    m = classification_metrics([1, 1, 1], [0, 0, 2], NAMES)
    # Row = true label, column = predicted label.
    assert m["confusion_matrix"] == [[0, 2, 0], [0, 0, 0], [0, 1, 0]]


def test_absent_class_reported_as_zero_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics([0, 1, 0], [0, 1, 1], NAMES)
    assert m["per_class"]["pos"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert len(m["confusion_matrix"]) == 3


def test_classification_metrics_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="outside 0..2"):
        classification_metrics([0, 3], [0, 1], NAMES)
    with pytest.raises(ValueError, match="2 predictions but 1 labels"):
        classification_metrics([0, 1], [0], NAMES)
    with pytest.raises(ValueError, match="empty"):
        classification_metrics([], [], NAMES)


def test_majority_baseline() -> None:
    assert majority_baseline([2, 2, 1, 0], [2, 1, 2, 2]) == pytest.approx(0.75)
    # Ties go to the smallest label id whatever the order.
    assert majority_baseline([1, 0, 1, 0], [0, 0, 1]) == pytest.approx(2 / 3)


def test_generation_metrics_identical_and_disjoint() -> None:
    same = ["the quick brown fox jumps over the lazy dog", "a second sentence that is long enough"]
    m = generation_metrics(same, same)
    assert m["bleu"] == pytest.approx(100.0)
    assert m["chrf"] == pytest.approx(100.0)
    assert m["rougeL"] == pytest.approx(100.0)
    assert m["exact_match"] == 1.0
    assert m["bleu_signature"].startswith("nrefs:1|") and "tok:13a" in m["bleu_signature"]
    assert "nrefs:1" in m["chrf_signature"]

    disjoint = generation_metrics(["aaaa bbbb"], ["xxxx yyyy"])
    assert disjoint["chrf"] < 1.0
    assert disjoint["bleu"] < 1.0
    assert disjoint["exact_match"] == 0.0


def test_generation_metrics_rouge_l_and_exact_match() -> None:
    # LCS("the cat sat on the mat", "the cat was on the mat") = 5 of 6 tokens each side -> F1 = 5/6.
    m = generation_metrics(["the cat sat on the mat", " yes "], ["the cat was on the mat", "yes"])
    assert m["rougeL"] == pytest.approx(100 * (5 / 6 + 1.0) / 2)
    assert m["exact_match"] == 0.5
    assert m["n"] == 2


def test_generation_metrics_empty_raises() -> None:
    with pytest.raises(ValueError):
        generation_metrics([], [])


def test_perplexity() -> None:
    assert perplexity(3 * math.log(10), 3) == pytest.approx(10.0)
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError, match="n_tokens"):
        perplexity(1.0, 0)


def _linear() -> nn.Linear:
    layer = nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 0.0]]))
        layer.bias.zero_()
    return layer


def test_drift_zero_for_unchanged_model() -> None:
    model = _linear()
    d = weight_drift(snapshot(model), model)
    assert d["overall"] == 0.0
    assert d["n_compared"] == 2 and d["tensors_changed"] == 0 and d["elements_changed"] == 0


def test_drift_known_perturbation_and_groups() -> None:
    model = _linear()
    before = snapshot(model)
    with torch.no_grad():
        model.weight[0, 1] = 4.0  # after = [3, 4], bias 0: ||delta|| = 4, ||after|| = 5
    d = weight_drift(before, model, groups={"weight": 0, "bias": 1})
    assert d["overall"] == pytest.approx(0.8)
    assert d["per_group"] == {0: pytest.approx(0.8), 1: 0.0}
    assert d["tensors_changed"] == 1 and d["elements_changed"] == 1
    # The snapshot is a copy: later in-place updates do not leak into it.
    assert before["weight"].tolist() == [[3.0, 0.0]]


def test_drift_accepts_snapshot_and_rejects_shape_change() -> None:
    model = _linear()
    before = snapshot(model)
    after = {"weight": torch.tensor([[0.0, 0.0]]), "bias": torch.tensor([1.0]), "new_head": torch.ones(3)}
    d = weight_drift(before, after)
    # ||delta||^2 = 9 + 1, ||after||^2 = 1; the extra tensor is not compared.
    assert d["overall"] == pytest.approx(math.sqrt(10))
    assert d["n_compared"] == 2
    with pytest.raises(ValueError, match="'weight'"):
        weight_drift(before, {"weight": torch.zeros(2, 2)})


def test_rss_sampler_sees_allocation() -> None:
    """An allocation that lives a while is seen. The block is a fresh anonymous mapping with every page touched: a
    malloc'd block may reuse pages an earlier test freed but glibc kept resident, which would not raise RSS. On a
    loaded machine the sampler thread may be late, so the block lives until it is sampled, for at most 10 s."""
    size = 200 * 1024 * 1024
    with RssSampler() as sampler:
        block = mmap.mmap(-1, size)
        for offset in range(0, size, mmap.PAGESIZE):
            block[offset] = 1
        deadline = time.monotonic() + 10
        while sampler.peak_above_baseline_bytes < 0.9 * size and time.monotonic() < deadline:
            time.sleep(0.05)
        block.close()
    assert sampler.baseline_bytes > 0
    assert sampler.peak_above_baseline_bytes >= 0.9 * size
    assert peak_rss_bytes() >= sampler.peak_bytes * 0.99


def _tiny_bert() -> BertForSequenceClassification:
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        num_labels=3,
    )
    return BertForSequenceClassification(config)


def test_estimate_full_vs_head_only() -> None:
    model = _tiny_bert()
    full = estimate_training_memory(model, batch_size=4, seq_len=16)
    n_params = sum(p.numel() for p in model.parameters())
    assert full["weights"] == full["gradients"] == 4 * n_params
    assert full["optimizer"] == 2 * full["gradients"]
    assert full["activation_blocks"] == 2
    # Korthikanti: s*b*h*(34 + 5*a*s/h) * 4/2 per block, 2 blocks.
    assert full["activations"] == int(16 * 4 * 32 * (34 + 5 * 2 * 16 / 32) * 2 * 2)
    assert full["total"] == full["weights"] + full["gradients"] + full["optimizer"] + full["activations"]

    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("classifier")
    head = estimate_training_memory(model, batch_size=4, seq_len=16)
    assert head["weights"] == full["weights"]
    assert head["gradients"] < full["gradients"]
    assert head["optimizer"] < full["optimizer"]
    assert head["activations"] < full["activations"] and head["activation_blocks"] == 0

    # Training only the top block keeps activations for that block alone.
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("bert.encoder.layer.1.")
    top = estimate_training_memory(model, batch_size=4, seq_len=16, optimizer="sgd")
    assert top["activation_blocks"] == 1 and top["activations"] == full["activations"] // 2
    assert top["optimizer"] == 0


def test_estimate_unknown_optimizer() -> None:
    with pytest.raises(RecipeError, match="adamw"):
        estimate_training_memory(_linear(), batch_size=1, seq_len=1, optimizer="lion")


def test_format_bytes() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 1024**3) == "3.0 GiB"
    assert format_bytes(-2048) == "-2.0 KiB"
