"""jaxprune.compile_cache: the command line's persistent XLA cache, never over a user's own."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from jaxprune.compile_cache import (
    ENVIRONMENT,
    default_cache_dir,
    enable_compilation_cache,
    memory_mappings,
    release_compiled_programs,
)


def test_the_cache_is_off_on_request_and_never_replaces_a_configured_one(monkeypatch, tmp_path):
    configured = jax.config.jax_compilation_cache_dir  # the test session's (tests/conftest.py)
    assert configured
    monkeypatch.setenv(ENVIRONMENT, "off")
    assert enable_compilation_cache() is None
    monkeypatch.setenv(ENVIRONMENT, str(tmp_path))
    assert enable_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir == configured
    assert not any(tmp_path.iterdir())


def test_default_directory_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "jaxprune" / "xla"


@pytest.mark.skipif(memory_mappings() is None, reason="needs /proc (Linux)")
def test_release_frees_the_mappings_of_compiled_programs():
    x = jnp.ones((8, 8))
    programs = [jax.jit(lambda a, k=k: jnp.tanh(a * k).sum()) for k in range(40)]
    for program in programs:
        program(x).block_until_ready()
    held, cap = memory_mappings()
    assert held < cap
    assert not release_compiled_programs(fraction=1.0)  # under the cap: nothing cleared
    assert all(program._cache_size() == 1 for program in programs)
    assert release_compiled_programs(fraction=1 / cap)
    assert all(program._cache_size() == 0 for program in programs)
    assert memory_mappings()[0] <= held - 40  # at least one mapping per program came back


@pytest.mark.parametrize(
    "fraction, error",
    [(0.0, ValueError), (1.5, ValueError), ("half", TypeError), (True, TypeError)],
)
def test_release_rejects_a_bad_fraction(fraction, error):
    with pytest.raises(error, match=f"fraction must be .*got {fraction!r}"):
        release_compiled_programs(fraction=fraction)
