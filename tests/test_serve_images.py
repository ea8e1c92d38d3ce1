"""``tunelab serve`` for an image classifier (timm's tiny config-built CNN): base64 images, bare or as data URLs,
get what the run's own ``predict`` gives for the same bytes; what is not an image (or is a path on the server) is a
400 naming the input, checked before the model sees it."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx2
import numpy as np
import pytest
import yaml
from PIL import Image

from tunelab import api
from tunelab.run import Run
from tunelab.serve import ServeOptions, ServerThread, build

COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (40, 50, 210)}


def png(colour: tuple[int, int, int], seed: int, size: int = 24, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("serve-images")
    for label, colour in COLOURS.items():
        (root / "data" / label).mkdir(parents=True)
        for i in range(8):
            (root / "data" / label / f"{i}.png").write_bytes(png(colour, i))
    recipe = {
        "name": "img", "seed": 0, "model": {"name": "test_efficientnet"},
        "task": {"type": "image_classification", "pretrained": False, "image_size": 32},
        "data": {"train": str(root / "data"), "split": {"validation": 0.2, "test": 0.2}},
        "train": {"lr": 3e-3, "max_steps": 2, "batch_size": 8, "warmup_ratio": 0.0},
        "eval": {"before": False, "batch_size": 16}, "output": {"dir": str(root / "runs")},
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return api.train(root / "recipe.yaml", name="colours")


@pytest.fixture(scope="module")
def url(image_run: Run) -> Iterator[str]:
    with ServerThread(build(image_run.dir, ServeOptions(max_image_bytes=20_000))) as running:
        yield running.url


def test_base64_and_data_url_images_get_what_predict_gives(url: str, image_run: Run) -> None:
    images = [png(COLOURS["red"], 100), png(COLOURS["blue"], 101), png(COLOURS["green"], 102, mode="P")]
    inputs = [base64.b64encode(images[0]).decode(), "data:image/png;base64," + base64.b64encode(images[1]).decode(),
              base64.b64encode(images[2]).decode()]
    response = httpx2.post(f"{url}/v1/classify", json={"model": "colours", "inputs": inputs})
    assert response.status_code == 200, response.text
    direct = image_run.predict(images)
    for served, local in zip(response.json()["data"], direct):
        assert served["label"] == local["label"] and set(served["scores"]) == set(COLOURS)
        assert served["scores"] == pytest.approx(local["scores"], abs=1e-5)


@pytest.mark.parametrize(("second", "status", "words"), [
    ("images/red/0.png", 400, "is not base64"),  # a path: never read on the server
    (base64.b64encode(b"GIF89a this is not really an image").decode(), 400, "not an image PIL can read"),
    (base64.b64encode(png((9, 9, 9), 0, size=2)).decode(), 400, "smaller than 4x4"),
    ("data:image/png,rawbytes", 400, "without ';base64,'"),
    ("", 400, "is empty"),
    (base64.b64encode(b"x" * 30_000).decode(), 400, "limit of 20000"),
], ids=["a-path", "not-an-image", "tiny", "data-url-without-base64", "empty", "too-large"])
def test_what_is_not_an_image_is_a_400_naming_the_input(url: str, second: str, status: int, words: str) -> None:
    good = base64.b64encode(png(COLOURS["red"], 5)).decode()
    response = httpx2.post(f"{url}/v1/classify", json={"inputs": [good, second]})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == "inputs[1]" and words in error["message"], error
    assert httpx2.get(f"{url}/health").json()["task"] == "image_classification"
