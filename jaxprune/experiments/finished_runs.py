"""Finished runs of an experiment, kept on disk so that an interrupted experiment resumes.

A run's identity is a key: the SHA-256 of everything that determines its figures (the
experiment's settings, which run it is, and the jaxprune source itself).  :func:`save_finished`
writes a run's figures next to that key when the run ends; :func:`load_finished` gives them back
only while the key still matches, so a run is redone whenever the settings or the code change.
Re-running an experiment into the same output directory therefore repeats only the runs that
had not finished; deleting the directory retrains everything.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 of jaxprune's Python source (read once per process): a finished run is reused
    only by the same code."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def run_key(described: dict[str, Any]) -> str:
    """The key of the run that ``described`` (JSON-serializable; other values are compared by
    ``repr``) determines, together with the jaxprune source."""
    text = json.dumps({**described, "source": source_digest()}, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def load_finished(path: Path, key: str) -> dict[str, Any] | None:
    """The figures saved at ``path`` for ``key``, or ``None`` when there are none for it."""
    path = Path(path)
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved.get("key") != key:
        return None
    return saved["figures"]


def save_finished(path: Path, key: str, figures: dict[str, Any]) -> None:
    """Write a finished run's ``figures`` (JSON-serializable) to ``path`` under ``key``,
    atomically: an interruption leaves either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"key": key, "figures": figures}))
    os.replace(temporary, path)
