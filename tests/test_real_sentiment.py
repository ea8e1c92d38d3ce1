"""The foundation on the real packaged model and data: MiniLM-L6 on Rotten Tomatoes, a short run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunelab import api


@pytest.mark.real
def test_minilm_learns_sentiment_and_final_reloads_in_plain_transformers(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = api.train("recipes/sentiment.yaml", name="real", overrides=[
        f"output.dir={tmp_path}", "data.limit=1600", "train.max_steps=100", "train.batch_size=16", "train.eval_every=50",
        "train.lr=1e-4", "train.early_stopping=null", "eval.max_examples=300",
        "eval.before=false",  # the before figures are tested on tiny models; here they would cost ~10% of the test
    ])
    summary = json.loads((run / "summary.json").read_text())
    # 100 steps of 16 snippets move the pretrained encoder well past the majority class on held-out data
    assert summary["after"]["test"]["accuracy"] > summary["majority_baseline"]["test"] + 0.08
    assert summary["data"]["source"]["excluded_plot_rows"] > 0 and summary["parameters"]["trainable_share"] == 1.0

    texts = ["An absolute delight from start to finish.", "A tedious, lifeless mess."]
    loaded = api.load(run)
    ours = torch.tensor([[r["scores"][n] for n in loaded.label_names] for r in loaded.predict(loaded.model, texts)])
    plain = AutoModelForSequenceClassification.from_pretrained(run / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    with torch.no_grad():
        probs = plain(**tokenizer(texts, return_tensors="pt", padding=True)).logits.softmax(-1)
    assert torch.allclose(ours, probs, atol=1e-5)
    assert plain.config.id2label == {0: "fresh", 1: "rotten"}
