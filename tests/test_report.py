"""The run report is built from real tiny runs (a text classifier, an image classifier) and read back as a person's
browser would get it: each section is there when its data exists, its numbers agree with summary.json, and the page
references nothing outside itself."""

from __future__ import annotations

import base64
import csv
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import make_recipe
from tests.test_vision_task import image_folder, image_recipe  # noqa: F401  (the fixture is used below)
from tunelab import api
from tunelab.report import write_report
from tunelab.report.plots import ema
from tunelab.report.sections import fmt


class Page(HTMLParser):
    """Tables by id (rows of cell texts), section ids, and every URL-bearing attribute of the page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.sections: list[str] = []
        self.urls: list[str] = []
        self.images: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.urls += [value or "" for key, value in attrs if key in ("src", "href", "action", "srcset", "poster", "data")]
        if tag == "img":
            self.images.append(found.get("src") or "")
        if tag == "section":
            self.sections.append(found.get("id") or "")
        if tag == "table" and found.get("id"):
            self._table = found["id"]
            self.tables[self._table] = []
        if self._table and tag == "tr":
            self.tables[self._table].append([])
        if self._table and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        if tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def png(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    data = base64.b64decode(uri.split(",", 1)[1])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(data))


def jpeg(uri: str) -> Image.Image:
    assert uri.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert image.format == "JPEG"
    return image


def check_offline(text: str, page: Page) -> None:
    """Nothing the browser would fetch: every src/href is a data URI or an anchor; no scripts, links, fonts, imports."""
    assert page.urls and all(url.startswith(("data:", "#")) for url in page.urls), [u[:60] for u in page.urls]
    assert not re.search(r"<script|<link|<iframe|@import|url\(|https?://|//cdn", text, re.IGNORECASE)


def body(rows: list[list[str]]) -> list[list[str]]:
    return rows[1:]  # the header row off


def test_text_classifier_report_agrees_with_the_summary(tmp_path: Path, tiny_bert_dir: Path, toy_csv: Path) -> None:
    run = api.train(make_recipe(tmp_path, tiny_bert_dir, toy_csv, train={"lr": 3e-3, "max_steps": 12, "eval_every": 4,
                                                                         "log_every": 1}, eval={"before": True}),
                    name="report")
    summary, text = run.summary, (run / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    check_offline(text, page)
    assert page.sections == ["results", "curves", "classes", "examples", "drift", "data", "cost"]
    assert len(page.images) == 3 and all(png(uri).width > 300 for uri in page.images)  # curves, confusion, drift
    assert (run / "plots" / "loss.png").is_file() and (run / "report.md").is_file()

    test = summary["after"]["test"]
    n = test["n"]
    assert n == summary["data"]["rows"]["test"] == 32
    confusion = body(page.tables["confusion-matrix"])
    assert [row[0] for row in confusion] == ["neg", "pos"] == list(test["per_class"])
    assert [[int(c) for c in row[1:]] for row in confusion] == test["confusion_matrix"]
    assert sum(int(c) for row in confusion for c in row[1:]) == n
    per_class = body(page.tables["per-class"])
    assert sum(int(row[4]) for row in per_class) == n
    for name, precision, recall, f1, support in per_class:
        figures = test["per_class"][name]
        assert (precision, recall, f1, support) == (fmt(figures["precision"]), fmt(figures["recall"]),
                                                    fmt(figures["f1"]), str(figures["support"]))
    correct = sum(test["confusion_matrix"][i][i] for i in range(2))
    assert correct / n == pytest.approx(test["accuracy"])
    assert ["test", "accuracy", fmt(summary["before"]["test"]["accuracy"]), fmt(test["accuracy"])] in page.tables["before-after"]

    examples = body(page.tables["examples"])
    assert len(examples) == len(test["examples"]) >= 6
    reviews = {row["review"] for row in csv.DictReader(toy_csv.open(encoding="utf-8"))}
    predicted = {r["text"]: r for r in run.predict([row[1] for row in examples])}  # the saved model, another path
    for mark, text_in, gold, label, probability, kind in examples:
        assert text_in in reviews and kind in ("first", "confident mistake")
        assert mark == ("✓" if gold == label else "✗")
        assert predicted[text_in]["label"] == label
        assert predicted[text_in]["scores"][label] == pytest.approx(float(probability), abs=6e-4)

    drift = body(page.tables["weight-drift"])
    per_group = summary["weight_drift"]["per_group"]
    assert [row[1] for row in drift] == [fmt(per_group[key]) for key in sorted(per_group, key=int)]
    assert len(drift) == 4  # embeddings, 2 blocks, head
    data = dict(body(page.tables["data-counts"]))
    assert data["kept for test"] == "32" and data["rows accounted for (kept + skipped)"] == "160"
    cost = dict(body(page.tables["cost"]))
    assert cost["training time"] == f"{summary['train_seconds']:.1f} s"
    assert cost["seconds per step (one-off work apart)"] == f"{summary['train_seconds'] / 12:.3f}"
    assert "weight 0.6 on the past" in text  # 12 logged points: the light smoothing, stated

    # the same summary without labels or drift: those sections are left out, not shown empty
    bare = {k: v for k, v in summary.items() if k not in ("weight_drift", "majority_baseline")}
    bare["after"] = {split: {k: v for k, v in m.items() if k not in ("per_class", "confusion_matrix", "examples")}
                     for split, m in summary["after"].items()}
    bare["figures"] = {"sample grid": "plots/grid.png"}  # a figure the task drew (a GAN's samples), embedded too
    (tmp_path / "bare" / "plots").mkdir(parents=True)
    (tmp_path / "bare" / "plots" / "grid.png").write_bytes((run / "plots" / "drift.png").read_bytes())
    write_report(tmp_path / "bare", bare, [])
    again = Page((tmp_path / "bare" / "report.html").read_text())
    assert again.sections == ["results", "curves", "figures", "data", "cost"] and len(again.images) == 2
    assert "![sample grid](plots/grid.png)" in (tmp_path / "bare" / "report.md").read_text()


def test_image_classifier_report_shows_thumbnails(tmp_path: Path, image_folder: Path) -> None:  # noqa: F811
    run = api.train(image_recipe(tmp_path, image_folder, train={"max_steps": 3, "eval_every": 3, "log_every": 1}),
                    name="images")
    summary, text = run.summary, (run / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    check_offline(text, page)
    assert {"classes", "examples", "drift"} <= set(page.sections)
    test = summary["after"]["test"]
    assert sum(map(sum, test["confusion_matrix"])) == test["n"] == summary["data"]["rows"]["test"]
    assert sum(int(row[4]) for row in body(page.tables["per-class"])) == test["n"]
    thumbnails = [uri for uri in page.images if uri.startswith("data:image/jpeg")]
    assert len(thumbnails) == len(test["examples"]) >= 6 and len(page.images) == len(thumbnails) + 3  # + 3 plots
    assert all(jpeg(uri).size == (24, 24) for uri in thumbnails)  # the 24-pixel images, not enlarged


def test_ema_is_bias_corrected() -> None:
    assert ema([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])  # no pull towards zero at the start
    assert ema([1.0, 3.0], 0.5) == pytest.approx([1.0, (0.25 * 1 + 0.5 * 3) / 0.75])
