"""Shared fixture of the experiment tests: one run of the module's smoke preset."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def smoke(request, tmp_path_factory):
    """``(out_dir, result)`` of ``EXPERIMENT.run(SMOKE, out_dir)`` of the test module, once."""
    experiment, settings = request.module.EXPERIMENT, request.module.SMOKE
    out = tmp_path_factory.mktemp(experiment.name)
    return out, experiment.run(settings, out, False)
