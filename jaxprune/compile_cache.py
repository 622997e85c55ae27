"""JAX's persistent compilation cache for jaxprune's command line and tests.

Experiments build a fresh model, optimizer and training step per method and seed, so the same
XLA programs are traced again for every run; with the persistent cache each distinct program is
compiled once and read back afterwards (on a shared 2-core CPU, wall time of a re-run with the
cache filled: ``jaxprune experiment pl_bert --preset smoke`` 143 s cold, 43 s warm; the ``demo``
smoke preset 49 s cold, 31 s warm).  Entries are keyed by the program, the compile
options, the JAX version and the device, so a stale entry is never used.

:func:`enable_compilation_cache` is called by the ``jaxprune`` command (not on import: a
library does not change global JAX settings).  It leaves a cache directory the user configured
(``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``) alone; ``JAXPRUNE_COMPILATION_CACHE=off``
turns it off.

Compiled programs also cost memory mappings: XLA:CPU keeps a few per program in memory (about 5
for a small jit, 50 for a Hessian, more for a PL event) until its jit cache is cleared, and Linux
caps a process at ``vm.max_map_count`` (65,530 by default).  A long process that compiles
thousands of programs (an experiment over many methods, seeds and compacted shapes; a test
worker) fails near the cap with an allocation error or an abort inside XLA.
:func:`release_compiled_programs` clears JAX's caches when a process passes half the cap; the
experiment runner calls it between runs.

References:
  JAX documentation, "Persistent compilation cache".
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import jax

__all__ = ["default_cache_dir", "enable_compilation_cache", "release_compiled_programs"]

#: Environment variable that names the cache directory, or ``off`` to disable it.
ENVIRONMENT = "JAXPRUNE_COMPILATION_CACHE"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/jaxprune/xla`` (default ``~/.cache/jaxprune/xla``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxprune" / "xla"


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> Path | None:
    """Use JAX's persistent compilation cache in ``directory``, caching every compilation.

    Args:
      directory: the cache directory; default ``$JAXPRUNE_COMPILATION_CACHE`` or
        :func:`default_cache_dir`.

    Returns:
      The directory in use, or ``None`` when it is off (``JAXPRUNE_COMPILATION_CACHE=off``) or
      the user configured JAX's own cache (then that one is used unchanged).
    """
    setting = os.environ.get(ENVIRONMENT, "")
    if directory is None and setting.lower() == "off":
        return None
    if jax.config.jax_compilation_cache_dir:
        return None
    path = Path(directory or setting or default_cache_dir())
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Many small programs (steps, events, evaluations): cache them all, however quick.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def memory_mappings() -> tuple[int, int] | None:
    """``(mappings, cap)``: this process's memory mappings and the kernel's ``vm.max_map_count``;
    ``None`` where ``/proc`` does not tell (not Linux)."""
    try:
        with open("/proc/self/maps") as maps, open("/proc/sys/vm/max_map_count") as cap:
            return sum(1 for _ in maps), int(cap.read())
    except (OSError, ValueError):
        return None


def release_compiled_programs(*, fraction: float = 0.5) -> bool:
    """Clear JAX's in-memory compiled programs (``jax.clear_caches``) when this process holds
    more than ``fraction`` of the kernel's cap on memory mappings.

    Programs needed again are recompiled, or read back from the persistent cache when it is on.

    Args:
      fraction: the share of ``vm.max_map_count`` above which to clear, in ``(0, 1]``.

    Returns:
      Whether the caches were cleared (never off Linux).
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError(f"fraction must be a number in (0, 1], got {fraction!r}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    usage = memory_mappings()
    if usage is None or usage[0] <= fraction * usage[1]:
        return False
    jax.clear_caches()
    gc.collect()
    return True
