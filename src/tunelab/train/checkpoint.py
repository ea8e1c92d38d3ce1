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
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tunelab.errors import RunError

MANIFEST = "manifest.json"


def fsync_dir(path: Path) -> None:
    """Make a rename durable (the directory entry itself must reach the disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so readers see the old content or the new one, never a torn mix."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk (metrics.jsonl survives a kill up to the last line)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rng_state() -> dict[str, Any]:
    """Every random generator a step consumes (dropout uses torch's; python's for shuffles)."""
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_pos": random.getstate()[2]}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))


def save_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], objects: dict[str, Any], state: dict) -> None:
    """Write tensors (safetensors), torch objects (optimizer, scheduler, rng) and JSON state, atomically."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
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
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    fsync_dir(folder.parent)


def verify(folder: Path) -> None:
    """Refuse a checkpoint whose files do not match its manifest (torn copy, tampering, disk fault)."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise RunError(f"{folder}: incomplete checkpoint (no {MANIFEST}); it was never finished and cannot be used")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    for name, digest in manifest.items():
        path = folder / name
        if not path.is_file() or _sha256(path) != digest:
            raise RunError(f"{folder}/{name}: does not match the checkpoint manifest (corrupted or edited); refusing to load it")


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict]:
    """Tensors, torch objects and state of a verified checkpoint."""
    verify(folder)
    tensors = load_file(folder / "model.safetensors")
    objects = {p.stem: torch.load(p, weights_only=True) for p in folder.glob("*.pt")}
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    return tensors, objects, state


def complete_checkpoints(root: Path) -> list[Path]:
    """Finished step checkpoints, oldest first (temporary folders of a killed write are ignored)."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def prune(root: Path, keep: int, protect: set[str]) -> None:
    """Delete all but the newest ``keep`` step checkpoints, never one named in ``protect`` (the best)."""
    found = complete_checkpoints(root)
    for path in found[: max(0, len(found) - keep)]:
        if path.name not in protect:
            shutil.rmtree(path)
    for stale in root.glob(".step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
