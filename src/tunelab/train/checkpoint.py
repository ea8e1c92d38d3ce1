"""Crash-safe checkpoints and run files.

A checkpoint is written into a hidden temporary folder, every file fsynced, a manifest of SHA-256 hashes written
last, and then the folder is renamed into place: a kill at any moment leaves either the complete old state or the
complete new one. Loading checks the manifest and reads tensors only through safetensors or
``torch.load(weights_only=True)``, never a pickle.

Under FSDP every process writes its own shard into the same temporary folder (``write_part`` with a ``rankR-of-W``
suffix); the main process seals it (state, manifest, rename) once all have written, so the guarantee is the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tunelab.errors import RunError
from tunelab.io import atomic_write_text, fsync_dir

MANIFEST = "manifest.json"
SHARD = re.compile(r"model\.rank\d+-of-\d+\.safetensors")  # one FSDP process's weights (see train.fsdp)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rng_state() -> dict[str, Any]:
    """Every random generator a step consumes (dropout uses torch's; python's for shuffles; noise drawn on a GPU,
    CUDA's)."""
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_pos": random.getstate()[2]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's persistent buffers (batch norm's running mean and variance among them): training moves them as it
    moves weights, so a checkpoint without them would resume, or restore the best step, with stale statistics."""
    params = {name for name, _ in model.named_parameters()}
    return {name: value.detach().clone() for name, value in model.state_dict().items() if name not in params}


def save_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], objects: dict[str, Any], state: dict) -> None:
    """Write tensors (safetensors), torch objects (optimizer, scheduler, rng) and JSON state, atomically."""
    tmp = start(folder)
    guarded(folder, lambda: write_part(tmp, tensors, objects))
    seal(folder, state)


def start(folder: Path) -> Path:
    """The empty hidden temporary folder a checkpoint is written into (one left by a killed write is removed)."""
    tmp = temporary(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def temporary(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.tmp")


def guarded(folder: Path, write: Any) -> None:
    """Run a write into the temporary folder; a failure removes it and names the earlier checkpoints as intact."""
    try:
        write()
    except (OSError, RuntimeError, SafetensorError) as err:  # disk full, quota, I/O (torch raises RuntimeError)
        shutil.rmtree(temporary(folder), ignore_errors=True)
        raise RunError(f"cannot write the checkpoint {folder.name} in {folder.parent} ({err}); the earlier checkpoints "
                       "are untouched. Free disk space, then resume the run with --resume.") from None


def write_part(tmp: Path, tensors: dict[str, torch.Tensor], objects: dict[str, Any], suffix: str = "") -> None:
    """One process's files: model[.SUFFIX].safetensors and NAME[.SUFFIX].pt, each fsynced."""
    dot = f".{suffix}" if suffix else ""
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / f"model{dot}.safetensors")
    paths = [tmp / f"model{dot}.safetensors"]
    for name, obj in objects.items():
        torch.save(obj, tmp / f"{name}{dot}.pt")
        paths.append(tmp / f"{name}{dot}.pt")
    for path in paths:
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())


def seal(folder: Path, state: dict) -> None:
    """Write state.json and the manifest of every file's hash last, then rename the folder into place."""
    tmp = temporary(folder)

    def finish() -> None:
        (tmp / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
        with open(tmp / "state.json", "rb+") as handle:
            os.fsync(handle.fileno())
        manifest = {path.name: _sha256(path) for path in sorted(tmp.iterdir())}
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1))

    guarded(folder, finish)
    if folder.exists():  # moved aside in one rename, so a kill never leaves it half deleted under its real name
        discard(folder)
    os.replace(tmp, folder)
    fsync_dir(folder.parent)


def discard(folder: Path) -> None:
    """Delete a checkpoint folder by renaming it to a hidden name first (atomic), then removing it."""
    aside = folder.with_name(f".{folder.name}.del")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(folder, aside)
    shutil.rmtree(aside)


def verify(folder: Path) -> None:
    """Refuse a checkpoint whose files do not match its manifest (torn copy, tampering, disk fault)."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise RunError(f"{folder}: incomplete checkpoint (no {MANIFEST}); it was never finished and cannot be used")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise RunError(f"{manifest_path}: unreadable manifest; the checkpoint is damaged, refusing to load it") from None
    present = {p.name for p in folder.iterdir() if p.name != MANIFEST}
    weights = "model.safetensors" in present or any(SHARD.fullmatch(name) for name in present)  # one, or per process
    if not isinstance(manifest, dict) or set(manifest) != present or "state.json" not in present or not weights:
        raise RunError(f"{folder}: its files ({sorted(present)}) are not those its manifest lists; refusing to load it")
    for name, digest in manifest.items():
        if _sha256(folder / name) != digest:
            raise RunError(f"{folder}/{name}: does not match the checkpoint manifest (corrupted or edited); refusing to load it. "
                           f"Delete {folder} to resume from the checkpoint before it.")


def load_checkpoint(folder: Path, suffix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Any], dict]:
    """Tensors, torch objects and state of a verified checkpoint (tensors only: no pickled code is ever run); with a
    ``suffix`` (one process's shard, ``rankR-of-W``), that process's files and the shared ones."""
    verify(folder)
    dot = f".{suffix}" if suffix else ""
    try:
        tensors = load_file(folder / f"model{dot}.safetensors")
        objects = {}
        for path in folder.glob("*.pt"):
            name = path.name[: -len(".pt")]
            if ".rank" not in name:
                objects[name] = torch.load(path, weights_only=True)
            elif dot and name.endswith(dot):
                objects[name[: -len(dot)]] = torch.load(path, weights_only=True)
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except Exception as err:  # noqa: BLE001 - any reader's failure means the same thing here
        raise RunError(f"{folder}: cannot be read ({type(err).__name__}: {err}); refusing to load it") from None
    return tensors, objects, state


def complete_checkpoints(root: Path) -> list[Path]:
    """Finished step checkpoints, oldest first (temporary folders of a killed write are ignored)."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if re.fullmatch(r"step-\d+", p.name) and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def prune(root: Path, keep: int, protect: set[str]) -> None:
    """Delete all but the newest ``keep`` step checkpoints, never one named in ``protect`` (the best)."""
    found = complete_checkpoints(root)
    for path in found[: max(0, len(found) - keep)]:
        if path.name not in protect:
            discard(path)
    for stale in root.glob(".step-*"):  # .tmp of a killed write, .del of a killed delete
        shutil.rmtree(stale, ignore_errors=True)
