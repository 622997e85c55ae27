"""The settings every "compare methods on a model" experiment shares, validated once.

An experiment's settings are one frozen dataclass deriving from :class:`ComparisonSettings`
(training fields every comparison has) or :class:`MethodComparisonSettings` (plus the compared
``methods`` and the pruned ``ratio``).  Subclasses redeclare a field only to change its
default, add the fields that differ, and put their own checks in
:meth:`~ComparisonSettings.check`, which runs after the shared checks of the training fields
(and of ``methods`` and ``ratio``) and before those of ``report_steps`` and ``seeds``.  Every
field is ``--set field=value`` on the command line (:func:`jaxprune.experiments.apply_overrides`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from jaxprune._validation import check_int, check_positive_int, check_ratio, check_real

__all__ = [
    "PL_FIELDS",
    "TOPK_NOTE",
    "ComparisonSettings",
    "MethodComparisonSettings",
    "check_positive_values",
    "check_seeds",
    "check_step",
    "check_subset",
    "deprecated_names",
    "pl_options",
]

#: Settings fields passed to PL gating under the same name (``PLGatingConfig`` fields).
PL_FIELDS = ("gating_steps", "feature_batch_size", "output_projections", "alpha", "hessian")


def check_step(step: Any, num_steps: int, name: str) -> int:
    """``step`` as an int in ``[0, num_steps)``: a pruning event inside the run."""
    step = check_int(step, name)
    if not 0 <= step < num_steps:
        raise ValueError(f"{name}: expected a step in [0, num_steps={num_steps}), got {step}")
    return step


def check_subset(values: Sequence[str], allowed: Sequence[str], name: str) -> None:
    """Raise unless ``values`` is a non-empty subset of ``allowed`` (methods, setups, ...)."""
    unknown = [v for v in values if v not in allowed]
    if not values or unknown:
        raise ValueError(
            f"{name}: unknown {unknown}; expected a non-empty subset of {tuple(allowed)}"
        )


def check_seeds(seeds: Sequence[int]) -> None:
    """Raise unless ``seeds`` names at least one seed."""
    if not seeds:
        raise ValueError(f"seeds: expected at least one seed, got {tuple(seeds)!r}")


def check_positive_values(values: Sequence[float], name: str) -> tuple[float, ...]:
    """``values`` as a non-empty tuple of finite numbers ``> 0`` (a grid of one setting)."""
    if not values:
        raise ValueError(f"{name}: expected a non-empty tuple of numbers > 0, got {values!r}")
    return tuple(check_real(v, name, minimum=0.0, strict=True) for v in values)


@dataclasses.dataclass(frozen=True)
class ComparisonSettings:
    """Training settings shared by the comparisons (each is ``--set field=value``).

    Attributes:
      dataset: registry name of the data (:func:`jaxprune.data.load_dataset`).
      model_preset: preset of the experiment's model.
      num_steps, batch_size, learning_rate: training length, batch size and (base) rate.
      report_steps: steps in ``(0, num_steps]`` whose training loss the table reports.
      seeds: one run per seed and method (a seed fixes initialization and data order).
    """

    dataset: str = "digits"
    model_preset: str = "256,256"
    num_steps: int = 300
    batch_size: int = 64
    learning_rate: float = 1e-3
    report_steps: tuple[int, ...] = (100, 200, 300)
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        self._check_shared()
        self.check()
        bad = [s for s in self.report_steps if not 0 < s <= self.num_steps]
        if not self.report_steps or bad:
            raise ValueError(
                f"report_steps: expected steps in (0, num_steps={self.num_steps}], got "
                f"{self.report_steps!r}"
            )
        check_seeds(self.seeds)

    def _check_shared(self) -> None:
        check_positive_int(self.num_steps, "num_steps")
        check_positive_int(self.batch_size, "batch_size")
        check_real(self.learning_rate, "learning_rate", minimum=0.0, strict=True)

    def check(self) -> None:
        """The experiment's own checks: after the training fields, before the report steps
        and seeds; none by default."""


@dataclasses.dataclass(frozen=True)
class MethodComparisonSettings(ComparisonSettings):
    """:class:`ComparisonSettings` of an experiment comparing named pruning methods.

    Attributes:
      methods: the compared methods, a subset of the class's :attr:`METHODS` (``"dense"``:
        no pruning; the others are :func:`jaxprune.train.make_pruner` names).
      ratio: pruned fraction of the groups, in ``(0, 1)``.
    """

    #: The methods this experiment can run.
    METHODS: ClassVar[tuple[str, ...]] = ("dense",)

    methods: tuple[str, ...] = ("dense",)
    ratio: float = 0.5

    def _check_shared(self) -> None:
        check_subset(self.methods, self.METHODS, "methods")
        check_ratio(self.ratio, "ratio")
        super()._check_shared()


def pl_options(settings: Any, **changes: Any) -> dict[str, Any]:
    """The PL gating options ``settings`` holds, for ``make_pruner("pl", ...)``.

    Fields named like :class:`~jaxprune.methods.pl_gating.PLGatingConfig` fields
    (:data:`PL_FIELDS`, and ``per_layer``, the TopK scope every method of a comparison shares)
    pass under their name; ``changes`` override them.
    """
    names = (*PL_FIELDS, "per_layer")
    options = {name: getattr(settings, name) for name in names if hasattr(settings, name)}
    return {**options, **changes}


#: The TopK scope in a comparison's note, by ``per_layer``.
TOPK_NOTE = {
    True: "TopK within each layer (the same fraction of every layer)",
    False: "global TopK keeping >= 1 group per layer",
}


def deprecated_names(module: str, renamed: Mapping[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving old names of ``module`` with a ``DeprecationWarning``.

    Args:
      module: the module's ``__name__``.
      renamed: old name -> the object now public under a new name.
    """

    def __getattr__(name: str) -> Any:
        if name not in renamed:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new = renamed[name]
        warnings.warn(
            f"{module}.{name} is deprecated; use {module}.{new.__name__}",
            DeprecationWarning,
            stacklevel=2,
        )
        return new

    return __getattr__
