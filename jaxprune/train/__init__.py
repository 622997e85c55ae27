"""Training infrastructure: atomic checkpoints with resume, and metrics logging.

The step functions, data-parallel loop, pruning events and analysis callbacks of issue 5 build
on these.
"""

from jaxprune.train.checkpoint import (
    checkpoint_paths,
    latest_step,
    restore_checkpoint,
    save_checkpoint,
)
from jaxprune.train.logging import MetricsLogger, plot_curves, read_metrics, summary_table

__all__ = [
    "MetricsLogger",
    "checkpoint_paths",
    "latest_step",
    "plot_curves",
    "read_metrics",
    "restore_checkpoint",
    "save_checkpoint",
    "summary_table",
]
