"""The environment of a test subprocess that runs JAX on several forced CPU devices."""

from __future__ import annotations

from jaxprune.train.parallel import forced_cpu_devices_env


def cpu_devices_env(count: int) -> dict[str, str]:
    """``os.environ`` plus ``XLA_FLAGS`` forcing ``count`` host devices and CPU-only JAX (the
    flag takes effect only in a fresh process, so the code under test runs in a subprocess)."""
    return forced_cpu_devices_env(count)
