"""The environment of a test subprocess that runs JAX on several forced CPU devices."""

from __future__ import annotations

import os


def cpu_devices_env(count: int) -> dict[str, str]:
    """``os.environ`` plus ``XLA_FLAGS`` forcing ``count`` host devices and CPU-only JAX (the
    flag takes effect only in a fresh process, so the code under test runs in a subprocess)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    return env
