"""The processes the web app starts: ``python -m tunelab train`` and ``python -m tunelab compare``, each in its own
session with its output in a log file, and a record of each on disk.

Why processes, not threads: a run must outlive the page and the app. Closing the browser, or stopping and restarting
``tunelab ui``, leaves a run training; the next app finds it through its record (``.tunelab-ui/jobs/*.json``: the
command, the process id, the log) and its run folder. A process of its own also gives each run its own memory peak
and lets a crash stay in that run.

Stopping sends SIGINT to the process group, exactly what Ctrl-C in a terminal does: tunelab's loop finishes the step
in hand, writes a checkpoint and exits, so ``tunelab train RUN --resume`` continues it exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tunelab.io import atomic_write_text
from tunelab.ui.folder import read_json

STATE = ".tunelab-ui"  # the app's own files inside the output folder (a run name can never start with '.')


class Jobs:
    """Start, watch and stop the app's processes; records survive the app (one JSON file per job)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.records = root / STATE / "jobs"
        self.logs = root / STATE / "logs"
        self.children: dict[str, subprocess.Popen] = {}  # the processes this app started (reaped by poll)
        self.lock = threading.RLock()

    # ---- records ----------------------------------------------------------------------------------------------
    def get(self, key: str) -> dict[str, Any] | None:
        record = read_json(self.records / f"{key}.json")
        return record if isinstance(record, dict) else None

    def save(self, key: str, record: dict[str, Any]) -> None:
        self.records.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.records / f"{key}.json", json.dumps(record, indent=1))

    def keys(self, kind: str) -> list[str]:
        """Keys of the recorded jobs of one kind (train or compare)."""
        prefix = f"{kind}-"
        return sorted(p.stem for p in self.records.glob(f"{prefix}*.json")) if self.records.is_dir() else []

    def staging_log(self, key: str) -> Path:
        """Where a process writes until its folder exists (tunelab creates the run folder only once data and model
        are known to be good, and refuses to write into a folder that exists already)."""
        return self.logs / f"{key}.log"

    # ---- processes --------------------------------------------------------------------------------------------
    def start(self, key: str, argv: list[str], log: Path, **extra: Any) -> dict[str, Any]:
        """Start ``python -m tunelab ARGV`` in its own session, appending its output to ``log``."""
        with self.lock:
            if self.alive(key):
                raise RuntimeError(f"{key} is already running")
            log.parent.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "tunelab", *argv]
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
            with log.open("a", encoding="utf-8") as out:
                out.write(f"$ tunelab {' '.join(argv)}\n")
                out.flush()
                child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
            self.children[key] = child
            record = {**(self.get(key) or {}), **extra, "key": key, "argv": argv, "pid": child.pid,
                      "started": time.time(), "ended": None, "exit": None, "stop_requested": False, "log": str(log)}
            self.save(key, record)
            return record

    def alive(self, key: str) -> bool:
        """Whether the job's process is still running (ours: polled; an earlier app's: checked by its process id and
        command line, so a recycled id is not mistaken for the run)."""
        child = self.children.get(key)
        if child is not None:
            return child.poll() is None
        record = self.get(key)
        if not record or not record.get("pid") or record.get("ended"):
            return False
        return _running(int(record["pid"]), record.get("argv") or [])

    def stop(self, key: str) -> bool:
        """Ctrl-C for the job's process group; False when it is not running."""
        with self.lock:
            record = self.get(key)
            if not record or not self.alive(key):
                return False
            try:
                os.killpg(int(record["pid"]), signal.SIGINT)
            except ProcessLookupError:
                return False
            self.save(key, {**record, "stop_requested": True})
            return True

    def reap(self) -> list[str]:
        """Record the end of every process of ours that ended (exit status, time); returns their keys."""
        ended = []
        with self.lock:
            for key, child in list(self.children.items()):
                code = child.poll()
                if code is None:
                    continue
                del self.children[key]
                self.save(key, {**(self.get(key) or {}), "exit": code, "ended": time.time()})
                ended.append(key)
        return ended

    def any_alive(self) -> bool:
        return any(self.alive(key) for kind in ("train", "compare") for key in self.keys(kind))

    def adopt_log(self, key: str, folder: Path, name: str, marker: str) -> Path | None:
        """Move a staging log into its folder once the folder exists (``marker`` is the file that says it is
        complete); the running process keeps writing to it, since a rename keeps the open file. Returns the log."""
        staging, final = self.staging_log(key), folder / name
        with self.lock:
            if staging.is_file() and (folder / marker).is_file() and not final.exists():
                try:
                    os.replace(staging, final)
                except OSError:
                    return staging
                record = self.get(key)
                if record and record.get("log") == str(staging):
                    self.save(key, {**record, "log": str(final)})
        return final if final.is_file() else (staging if staging.is_file() else None)

    def close(self) -> None:
        """Forget our children without stopping them: runs outlive the app (their records say where they are)."""
        self.reap()
        self.children.clear()


def _running(pid: int, argv: list[str]) -> bool:
    """Whether ``pid`` is alive and (where /proc tells) still the tunelab command we started."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():
        return True
    try:
        parts = cmdline.read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":  # a zombie: ended, waiting for a parent that is gone
        return False
    return all(arg.encode() in parts for arg in argv[:2])
