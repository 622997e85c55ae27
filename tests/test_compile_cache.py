"""jaxprune.compile_cache: the command line's persistent XLA cache, never over a user's own."""

from __future__ import annotations

import jax

from jaxprune.compile_cache import ENVIRONMENT, default_cache_dir, enable_compilation_cache


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
