"""The training engine: tasks, models by name, jit/data-parallel steps, pruning events,
analysis callbacks, atomic checkpoints with resume, and metrics logging.

Typical use::

    splits = jaxprune.data.load_dataset("digits")
    model = build_model("mlp", num_outputs=splits.num_outputs,
                        input_shape=splits.train["x"].shape[1:])
    pruner = criterion_pruner("snip", jaxprune.masks.one_shot(100, 0.5))
    result = train(model, splits, optax.adam(1e-3), TrainConfig(num_steps=500),
                   pruner=pruner, run_dir="runs/snip")
"""

from jaxprune.train.checkpoint import (
    checkpoint_paths,
    latest_step,
    restore_checkpoint,
    save_checkpoint,
)
from jaxprune.train.engine import RunResult, TrainConfig, evaluate, train
from jaxprune.train.identity import RunMismatchError
from jaxprune.train.logging import MetricsLogger, plot_curves, read_metrics, summary_table
from jaxprune.train.parallel import compile_step, data_mesh, replicate, shard_batch
from jaxprune.train.pruning import (
    CRITERIA,
    PruneContext,
    Pruner,
    PrunerEntry,
    criterion_pruner,
    lth_pruner,
    make_pruner,
    pl_event_summary,
    pl_gating_pruner,
    pruner_entry,
    pruner_names,
    register_pruner,
)
from jaxprune.train.steps import (
    TrainState,
    init_state,
    make_eval_step,
    make_loss_fn,
    make_train_step,
)
from jaxprune.train.tasks import Task, classification, make_task, mlm, regression
from jaxprune.train.zoo import MODEL_NAMES, Bound, build_model

__all__ = [
    "CRITERIA",
    "MODEL_NAMES",
    "Bound",
    "MetricsLogger",
    "PruneContext",
    "Pruner",
    "PrunerEntry",
    "RunMismatchError",
    "RunResult",
    "Task",
    "TrainConfig",
    "TrainState",
    "build_model",
    "checkpoint_paths",
    "classification",
    "compile_step",
    "criterion_pruner",
    "data_mesh",
    "evaluate",
    "init_state",
    "latest_step",
    "lth_pruner",
    "make_eval_step",
    "make_loss_fn",
    "make_pruner",
    "make_task",
    "make_train_step",
    "mlm",
    "pl_event_summary",
    "pl_gating_pruner",
    "plot_curves",
    "pruner_entry",
    "pruner_names",
    "read_metrics",
    "register_pruner",
    "regression",
    "replicate",
    "restore_checkpoint",
    "save_checkpoint",
    "shard_batch",
    "summary_table",
    "train",
]
