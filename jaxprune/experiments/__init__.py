"""Named experiments with presets ``smoke`` (seconds, run by the tests), ``small`` (minutes on a
CPU, built-in data) and ``paper`` (the paper's configuration, for accelerators).

Each experiment module defines ``EXPERIMENT``, an :class:`Experiment`: one frozen settings
dataclass per preset (``<Experiment>Settings``) and ``run(settings, out_dir, progress) ->
dict``, which writes its table and plots to ``out_dir`` and returns its figures.  ``jaxprune
experiment NAME --preset P --set field=value`` runs one from the command line.

The experiments that compare pruning methods on a model share one settings base
(:class:`~jaxprune.experiments.settings.ComparisonSettings`, validated once) and one runner
(:func:`~jaxprune.experiments.compare.run_method_comparison`: data, model, training of every
method and seed, table, ``results.json``, plot); their methods come from the pruner registry
(:func:`jaxprune.train.make_pruner`).  A module keeps only what differs: its extra fields,
schedules and method options, and its own tables or plots.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["EXPERIMENTS", "PRESET_NAMES", "Experiment", "apply_overrides", "get_experiment"]

PRESET_NAMES = ("smoke", "small", "paper")

#: Experiment name -> module defining ``EXPERIMENT``.
EXPERIMENTS = {
    "demo": "jaxprune.experiments.demo",
    "pl_bert": "jaxprune.experiments.pl_bert",
    "pl_switch": "jaxprune.experiments.pl_switch",
    "pl_vgg": "jaxprune.experiments.pl_vgg",
    "pl_ablations": "jaxprune.experiments.pl_ablations",
    "grda_linear": "jaxprune.experiments.grda_linear",
    "grda_sparsity": "jaxprune.experiments.grda_sparsity",
    "grda_valley": "jaxprune.experiments.grda_valley",
    "importance_linear": "jaxprune.experiments.importance_linear",
    "importance_lambda": "jaxprune.experiments.importance_lambda",
    "greedy_pretraining": "jaxprune.experiments.greedy_pretraining",
    "greedy_cnn": "jaxprune.experiments.greedy_cnn",
}


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A runnable experiment.

    Attributes:
      name: registry name.
      description: one paragraph for ``--help`` and listings.
      presets: ``{"smoke": settings, "small": settings, "paper": settings}``, frozen
        dataclasses of one type.
      run: ``run(settings, out_dir, progress) -> dict`` of results.
    """

    name: str
    description: str
    presets: dict[str, Any]
    run: Callable[[Any, Path, bool], dict]


def get_experiment(name: str) -> Experiment:
    """The registered experiment ``name`` (the error lists the valid names)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; expected one of {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name]).EXPERIMENT


def _parse(text: str, annotation: Any, field: str) -> Any:
    """``text`` as a value of the type ``annotation`` (str, int, float, bool, tuples, optionals)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text.lower() == "none" and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        return _parse(text, options[0], field)
    if origin is tuple:
        item = args[0] if args else str
        return tuple(_parse(part, item, field) for part in text.split(",") if part)
    if annotation is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"--set {field}: expected true or false, got {text!r}")
    if annotation in (int, float, str):
        try:
            return annotation(text)
        except ValueError:
            raise ValueError(
                f"--set {field}: expected {annotation.__name__}, got {text!r}"
            ) from None
    raise ValueError(
        f"--set {field}: fields of type {annotation} cannot be set from the command line"
    )


def apply_overrides(config: Any, assignments: Sequence[str]) -> Any:
    """``config`` with ``field=value`` assignments applied (values parsed by field type).

    Raises:
      ValueError: malformed assignment, unknown field (the message lists the fields) or a value
        of the wrong type; the config's own validation errors pass through.
    """
    hints = typing.get_type_hints(type(config))
    changes = {}
    for assignment in assignments:
        field, sep, text = assignment.partition("=")
        if not sep or not field:
            raise ValueError(f"--set expects field=value, got {assignment!r}")
        if field not in hints or field not in {f.name for f in dataclasses.fields(config)}:
            names = ", ".join(f.name for f in dataclasses.fields(config))
            raise ValueError(f"--set: unknown field {field!r}; fields are: {names}")
        changes[field] = _parse(text, hints[field], field)
    return dataclasses.replace(config, **changes)
