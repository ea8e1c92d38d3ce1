"""Recipes waiting to run, one after another, kept on disk (``.tunelab-ui/queue.json``) so that a queue survives
a restart of the app: the next app starts the next item when nothing it started is running."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from tunelab.io import atomic_write_text
from tunelab.ui.folder import read_json


class Queue:
    """A list of items (each a run name, its ``tunelab train`` arguments and the command shown), first in first out."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()

    def items(self) -> list[dict[str, Any]]:
        saved = read_json(self.path)
        return saved.get("items", []) if isinstance(saved, dict) else []

    def _write(self, items: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({"items": items}, indent=1))

    def add(self, name: str, argv: list[str], command: str) -> dict[str, Any]:
        item = {"id": uuid.uuid4().hex[:12], "name": name, "argv": argv, "command": command, "added": time.time()}
        with self.lock:
            self._write([*self.items(), item])
        return item

    def remove(self, item_id: str) -> bool:
        with self.lock:
            items = self.items()
            kept = [item for item in items if item["id"] != item_id]
            self._write(kept)
        return len(kept) < len(items)

    def pop(self) -> dict[str, Any] | None:
        """Take the first item off the queue."""
        with self.lock:
            items = self.items()
            if not items:
                return None
            self._write(items[1:])
            return items[0]

    def names(self) -> set[str]:
        return {item["name"] for item in self.items()}
