"""Crash-safe checkpoints and run files.

A checkpoint is written into a hidden temporary folder, every file fsynced, a manifest of SHA-256 hashes written
last, and then the folder is renamed into place: a kill at any moment leaves either the complete old state or the
complete new one. Loading checks the manifest and reads tensors only through safetensors or
``torch.load(weights_only=True)``, never a pickle.
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
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_files(tmp, tensors, objects, state)
    except (OSError, RuntimeError, SafetensorError) as err:  # disk full, quota, I/O (torch raises RuntimeError)
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunError(f"cannot write the checkpoint {folder.name} in {folder.parent} ({err}); the earlier checkpoints "
                       "are untouched. Free disk space, then resume the run with --resume.") from None
    if folder.exists():  # moved aside in one rename, so a kill never leaves it half deleted under its real name
        discard(folder)
    os.replace(tmp, folder)
    fsync_dir(folder.parent)


def _write_files(tmp: Path, tensors: dict[str, torch.Tensor], objects: dict[str, Any], state: dict) -> None:
    """Fill the temporary folder, fsync every file, and write the manifest of their hashes last."""
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / "model.safetensors")
    for name, obj in objects.items():
        torch.save(obj, tmp / f"{name}.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
    manifest = {}
    for path in sorted(tmp.iterdir()):
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
        manifest[path.name] = _sha256(path)
    atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1))


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
    if not isinstance(manifest, dict) or set(manifest) != present or not {"model.safetensors", "state.json"} <= present:
        raise RunError(f"{folder}: its files ({sorted(present)}) are not those its manifest lists; refusing to load it")
    for name, digest in manifest.items():
        if _sha256(folder / name) != digest:
            raise RunError(f"{folder}/{name}: does not match the checkpoint manifest (corrupted or edited); refusing to load it. "
                           f"Delete {folder} to resume from the checkpoint before it.")


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict]:
    """Tensors, torch objects and state of a verified checkpoint (tensors only: no pickled code is ever run)."""
    verify(folder)
    try:
        tensors = load_file(folder / "model.safetensors")
        objects = {p.stem: torch.load(p, weights_only=True) for p in folder.glob("*.pt")}
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
