"""Helpers for the tests that run refbp in child processes and stop them with real signals."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    """The environment of a child Python that must import this working tree's refbp."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def waiting_on(path: Path) -> set[int]:
    """pids waiting for a flock on ``path``, from Linux's /proc/locks, where a waiter's line
    reads '1: -> FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode> 0 EOF'."""
    inode = path.stat().st_ino
    waiting = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and fields[-3].endswith(f":{inode}"):
            waiting.add(int(fields[fields.index("->") + 4]))
    return waiting
