"""The ``jaxprune`` command."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jaxprune.models import ModelSpec

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line on stderr and exit status 2 (no usage dump, no traceback)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _integer_list(minimum: int, items: str, label: str) -> Callable[[str], tuple[int, ...]]:
    """An argparse type: comma-separated ``items`` (integers ``>= minimum``) named ``label``."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(part) for part in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {items}, got {text!r}"
            ) from None
        if min(values) < minimum:
            raise argparse.ArgumentTypeError(f"{label} must be >= {minimum}, got {text!r}")
        return values

    return parse


_widths = _integer_list(1, "integers", "widths")
_steps = _integer_list(0, "step numbers", "steps")


def _integer_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


_positive = _integer_at_least(1)
_non_negative = _integer_at_least(0)


def _build_parser() -> argparse.ArgumentParser:
    from jaxprune.analyze import ACTIVATIONS, AnalyzeConfig
    from jaxprune.data import DATASETS

    defaults = AnalyzeConfig()
    parser = _Parser(
        prog="jaxprune",
        description="Pruning and spectral analysis of over-parameterized networks in JAX.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    analyze = commands.add_parser(
        "analyze",
        help="NTK, per-neuron and Hessian spectra of a built-in model on built-in data",
        description=(
            "Train a built-in MLP briefly on a built-in dataset, then on a fixed probe batch "
            "compute: the empirical NTK spectrum and PL condition number L_f/mu; for every "
            "hidden neuron, its own NTK's smallest eigenvalue and spectral entropy (the gating "
            "features of Chen et al. (2023), Sec. 3.2.2); the Hutchinson trace of the "
            "loss and output Hessians; and the top Hessian eigenvalues by Lanczos. Prints a "
            "table and writes summary.json, spectrum.png and groups.png to --out."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    analyze.add_argument(
        "--dataset",
        choices=DATASETS,
        default=defaults.dataset,
        help="built-in dataset (no network needed)",
    )
    analyze.add_argument(
        "--activation",
        choices=sorted(ACTIVATIONS),
        default=defaults.activation,
        help="hidden nonlinearity (with relu, a neuron inactive on some probe example has a "
        "rank-deficient kernel: lambda_min = 0)",
    )
    for flag, parse, help_text in (
        ("--hidden", _widths, "hidden widths of the MLP, comma separated, e.g. 64,64"),
        ("--train-steps", _non_negative, "Adam steps before the analysis (0: the initialization)"),
        ("--batch-size", _positive, None),
        ("--learning-rate", float, None),
        ("--probe-examples", _positive, "examples n of the probe batch (kernels are n x n)"),
        ("--num-probes", _positive, "Hutchinson probe vectors for the Hessian traces"),
        ("--top-k", _positive, "number of top Hessian eigenvalues"),
        ("--seed", int, None),
    ):
        field = flag.removeprefix("--").replace("-", "_")
        analyze.add_argument(flag, type=parse, default=getattr(defaults, field), help=help_text)
    analyze.add_argument(
        "--float64",
        action="store_true",
        help="run everything in float64 (eigen-decompositions always are)",
    )
    analyze.add_argument("--out", default=defaults.out, help="run directory for outputs")
    analyze.add_argument("--quiet", action="store_true", help="no progress bars")

    _add_train(commands)
    _add_experiment(commands)
    demo = commands.add_parser(
        "demo",
        help="dense vs PL gating vs baseline pruning criteria on built-in data (minutes on a CPU)",
        description=(
            "Train a 64-256-256-10 MLP on the scikit-learn digits densely and with PL gating "
            "(Chen et al. 2023), random, magnitude, SNIP, GraSP and LTH pruning at 90% of the "
            "neurons (TopK within each layer; 10 paired seeds: same initialization and data "
            "order per seed across methods), then print the comparison table (training loss at "
            "fixed steps, test accuracy, wall time, sparsity), PL's paired differences with win "
            "counts, and save plots. Same as `jaxprune experiment demo --preset small`."
        ),
    )
    demo.add_argument("--out", default="runs/demo", help="output directory")
    demo.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a demo setting, e.g. --set seeds=0 (see `jaxprune experiment demo --help`)",
    )
    demo.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def _float_in_unit(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a ratio in [0, 1), got {value}")
    return value


OPTIMIZERS = ("adam", "sgd", "momentum", "adamw")
NO_PRUNING = "none"

#: Method option -> its ``jaxprune train`` flag, type and help (``--per-layer`` is a switch).
METHOD_OPTIONS = {
    "num_batches": (
        "--num-batches",
        _positive,
        "criteria: training batches the scores average over",
    ),
    "num_probes": ("--num-probes", _positive, "hessian_diag, pl: Hutchinson probe vectors"),
    "gating_steps": (
        "--gating-steps",
        _positive,
        "pl: batches the gating network trains on per event",
    ),
    "feature_batch_size": (
        "--feature-batch-size",
        _positive,
        "pl: examples of the per-group NTK features (at most gating steps x batch size)",
    ),
    "output_projections": (
        "--output-projections",
        _positive,
        "pl: random output projections of the feature kernels (default: all outputs)",
    ),
    "alpha": (
        "--alpha",
        float,
        "pl: weight of the (normalized) Hessian-trace term of the gating loss",
    ),
    "hessian": (
        "--hessian",
        str,
        "pl: Hessian of the trace term: auto (the loss's Gauss-Newton trace where the output "
        "Hessian is identically zero, as on ReLU networks, eq. 36's output Hessian elsewhere), "
        "outputs (eq. 36), loss, or gauss_newton (equal to the loss Hessian's trace on ReLU "
        "networks, lower variance, cheaper to train on)",
    ),
}
METHOD_FLAGS = {"per_layer": "--per-layer", **{n: o[0] for n, o in METHOD_OPTIONS.items()}}


def _add_train(commands: argparse._SubParsersAction) -> None:
    from jaxprune.data import DATASET_NAMES
    from jaxprune.train import MODEL_NAMES, pruner_entry, pruner_names

    width = max(len(name) for name in (NO_PRUNING, *pruner_names()))
    listing = "\n".join(
        f"  {name:<{width}}  {pruner_entry(name).description}" for name in pruner_names()
    )

    train = commands.add_parser(
        "train",
        help="train a model on a dataset, optionally pruning it on a schedule",
        description=(
            "Train any registered model on any dataset, data-parallel over all local devices, "
            "with optional structured pruning: at the --prune-at steps the --method scores the "
            "groups (neurons, filters, heads or experts), the lowest are masked to reach "
            "--ratio (linearly over several steps), and training continues with pruned "
            "weights held at exactly 0 (--compact removes them). Metrics go to "
            "OUT/metrics.jsonl and .csv; with --checkpoint-every a killed run resumes from "
            "OUT when restarted with the same command."
        ),
        epilog=(
            "examples:\n"
            "  jaxprune train --model mlp --dataset digits --steps 1000\n"
            "  jaxprune train --model mlp --method snip --prune-at 0 --ratio 0.5\n"
            "  jaxprune train --model bert --dataset docstrings --method taylor "
            "--prune-at 200 --ratio 0.5 --compact\n"
            "  jaxprune train --method lth --prune-at 300,600,900 --ratio 0.75 --rewind-step 15\n"
            "  jaxprune train --method lth --steps 1200 --ratio 0.75\n"
            "  jaxprune train --method pl --prune-at 100 --ratio 0.75 --gating-steps 20\n"
            "\n"
            f"methods (--method):\n  {NO_PRUNING:<{width}}  dense training, no pruning\n{listing}"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument(
        "--model", default="mlp", help=f"model name, one of: {', '.join(MODEL_NAMES)}"
    )
    train.add_argument(
        "--model-preset",
        default=None,
        help="architecture preset (e.g. vgg16-bn-tiny, tiny; MLP: hidden widths like 256,256)",
    )
    train.add_argument(
        "--kind", default=None, help="group kind to prune (switch: experts, heads, experts+heads)"
    )
    train.add_argument(
        "--dataset", default="digits", help=f"dataset name, one of: {', '.join(DATASET_NAMES)}"
    )
    train.add_argument("--data-dir", default=None, help="TFDS data directory (tfds:NAME)")
    train.add_argument("--steps", type=_positive, default=500, help="optimizer steps")
    train.add_argument("--batch-size", type=_positive, default=64, help="global batch size")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument(
        "--method",
        default=NO_PRUNING,
        help=f"pruning method: {NO_PRUNING} (dense) or a registered method (listed below)",
    )
    train.add_argument(
        "--prune-at",
        type=_steps,
        default=None,
        help="pruning step(s), comma separated (lth without it: 3 rounds fitted into --steps, "
        "rewinding to 5%% of them, Chen et al. (2023), App. E.3)",
    )
    train.add_argument(
        "--ratio", type=_float_in_unit, default=0.5, help="final pruned fraction of the groups"
    )
    train.add_argument(
        "--rewind-step",
        type=_non_negative,
        default=None,
        help="LTH: step whose weights are restored (masked) after each event",
    )
    train.add_argument(
        "--per-layer",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="prune the same fraction in every layer (pl's default), or TopK over all groups "
        "with --no-per-layer (the criteria's default)",
    )
    options = train.add_argument_group(
        "method options", "passed to the method when given (each method takes some of them)"
    )
    for name, (flag, parse, help_text) in METHOD_OPTIONS.items():
        options.add_argument(flag, dest=name, type=parse, help=help_text)
    compacting = _compacting_models()
    masked_only = [name for name in MODEL_NAMES if name not in compacting]
    train.add_argument(
        "--compact",
        action="store_true",
        help=f"physically remove pruned groups; models that compact: {', '.join(compacting)}"
        + (f" (not {', '.join(masked_only)})" if masked_only else ""),
    )
    train.add_argument("--eval-every", type=_non_negative, default=0, help="0: at the end only")
    train.add_argument("--log-every", type=_positive, default=25)
    train.add_argument(
        "--analysis-every",
        type=_non_negative,
        default=0,
        help="steps between NTK condition number / Hessian trace analyses (0: off)",
    )
    train.add_argument("--checkpoint-every", type=_non_negative, default=0, help="0: never")
    train.add_argument(
        "--devices", type=_positive, default=None, help="data-parallel devices (default: all)"
    )
    train.add_argument("--seed", type=_non_negative, default=0)
    train.add_argument(
        "--out",
        default=None,
        help="run directory (default: a new runs/train-MODEL-METHOD-TIME); an existing one with "
        "checkpoints resumes its run, and refuses different settings",
    )
    train.add_argument(
        "--fresh", action="store_true", help="start over in --out, deleting its checkpoints"
    )
    train.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard scalars to OUT/tensorboard",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_experiment(commands: argparse._SubParsersAction) -> None:
    from jaxprune.experiments import EXPERIMENTS, PRESET_NAMES

    experiment = commands.add_parser(
        "experiment",
        help="run a named experiment of the papers at a preset size",
        description=(
            "Run a registered experiment. Presets: smoke (seconds; what the tests run), small "
            "(minutes on a CPU with built-in data), paper (the paper's configuration, for "
            "accelerators). Any setting can be overridden with --set FIELD=VALUE (tuples "
            "comma separated); --list-fields shows the settings of the chosen preset."
        ),
        epilog=f"experiments: {', '.join(EXPERIMENTS)}",
    )
    experiment.add_argument("name", help=f"one of: {', '.join(EXPERIMENTS)}")
    experiment.add_argument("--preset", choices=PRESET_NAMES, default="small")
    experiment.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a setting of the preset",
    )
    experiment.add_argument(
        "--list-fields", action="store_true", help="print the preset's settings and exit"
    )
    experiment.add_argument(
        "--out",
        default=None,
        help="output directory (runs/NAME-PRESET); the experiments made of many training runs "
        "(demo, pl_*, grda_sparsity, greedy_cnn) reuse the runs finished there earlier with the "
        "same settings and jaxprune source, so re-running one that was interrupted resumes it "
        "(delete the directory to retrain); the others start over",
    )
    experiment.add_argument("--quiet", action="store_true", help="no progress output")


def _optimizer(name: str, learning_rate: float):
    import optax

    if not learning_rate > 0:
        raise ValueError(f"--learning-rate must be > 0, got {learning_rate}")
    return {
        "adam": lambda: optax.adam(learning_rate),
        "adamw": lambda: optax.adamw(learning_rate),
        "sgd": lambda: optax.sgd(learning_rate),
        "momentum": lambda: optax.sgd(learning_rate, momentum=0.9),
    }[name]()


def _schedule(args: argparse.Namespace):
    """The pruning schedule of ``--prune-at``, ``--ratio`` and ``--rewind-step``.

    One step without rewinding: one-shot.  Several steps: the ratio reached linearly, or for
    ``lth`` geometrically (each round prunes the same share of what is left, as
    :func:`~jaxprune.masks.iterative_magnitude`).  ``lth`` without ``--prune-at`` and
    ``--rewind-step``: :func:`~jaxprune.masks.lth_schedule` fitted into ``--steps``.
    """
    from jaxprune.masks import PruningSchedule, iterative_magnitude, lth_schedule, one_shot

    if args.ratio <= 0:
        raise ValueError(f"--ratio must be > 0 when pruning, got {args.ratio}")
    lth = args.method == "lth"
    if lth and args.prune_at is None and args.rewind_step is None:
        return lth_schedule(args.steps, args.ratio)
    if lth and args.rewind_step is None:
        raise ValueError("--method lth needs --rewind-step (e.g. 5% of the steps)")
    if args.prune_at is None:
        raise ValueError(f"--method {args.method} needs --prune-at STEP[,STEP...]")
    steps = args.prune_at
    if len(steps) == 1 and args.rewind_step is None:
        return one_shot(steps[0], args.ratio)
    if lth:  # the ratios of IMP rounds do not depend on the round length or the rewind step
        ratios = iterative_magnitude(len(steps), 1, 0, final_ratio=args.ratio).event_ratios
    else:
        ratios = tuple(args.ratio * (j + 1) / len(steps) for j in range(len(steps)))
    return PruningSchedule(steps, ratios, args.rewind_step)


def _pruner(args: argparse.Namespace):
    """The ``--method`` through the pruner registry (``None`` for dense training)."""
    from jaxprune._validation import check_choice
    from jaxprune.train import make_pruner, pruner_entry, pruner_names

    check_choice(args.method, (NO_PRUNING, *pruner_names()), "--method")
    given = {name: getattr(args, name) for name in METHOD_FLAGS if getattr(args, name) is not None}
    if args.method == NO_PRUNING:
        if args.prune_at is not None:
            raise ValueError("--prune-at needs a pruning --method")
        if given:
            raise ValueError(f"{METHOD_FLAGS[next(iter(given))]} needs a pruning --method")
        return None
    accepted = pruner_entry(args.method).options
    refused = [METHOD_FLAGS[name] for name in given if name not in accepted]
    if refused:
        takes = [METHOD_FLAGS[name] for name in accepted if name in METHOD_FLAGS]
        raise ValueError(
            f"{refused[0]}: not an option of --method {args.method}, which takes "
            f"{', '.join(takes) or 'none of them'}"
        )
    return make_pruner(args.method, _schedule(args), **given)


#: What a model needs, by the dataset input kinds (:data:`~jaxprune.data.INPUT_KINDS`) it takes.
_NEEDS = {
    ("tokens",): "a token dataset",
    ("images",): "an image dataset",
    ("features", "images"): "a feature or image dataset",
}


def _compacting_models() -> list[str]:
    """The built-in models that ``--compact`` can compact (their spec has ``compact``)."""
    from jaxprune.models import model_spec
    from jaxprune.train import MODEL_NAMES

    return [name for name in MODEL_NAMES if model_spec(name).compact is not None]


def _model_inputs(spec: ModelSpec) -> tuple[str, ...]:
    """The dataset input kinds a model spec takes: token rows (masked language models),
    ``(H, W, C)`` images (an image example shape), else features or images (flattened)."""
    if spec.mlm:
        return ("tokens",)
    if len(spec.example_input_shape) == 3:
        return ("images",)
    return ("features", "images")


def _check_model_and_data(args: argparse.Namespace) -> None:
    """Refuse a ``--dataset`` whose examples ``--model`` cannot take, and ``--compact`` for a
    model without compaction, before any data is loaded or program compiled."""
    from jaxprune.data import DATASET_NAMES, dataset_inputs
    from jaxprune.models import model_spec

    spec = model_spec(args.model)
    takes = _model_inputs(spec)
    if dataset_inputs(args.dataset) not in takes:
        fitting = [name for name in DATASET_NAMES if dataset_inputs(name) in takes]
        raise ValueError(
            f"--dataset: model {args.model!r} needs {_NEEDS[takes]} ({', '.join(fitting)}), "
            f"got {args.dataset!r}"
        )
    if args.compact and spec.compact is None:
        raise ValueError(
            f"--compact: model {args.model!r} cannot be compacted (its pruned groups stay "
            f"masked at 0); models that compact: {', '.join(_compacting_models())}"
        )


def _check_out(out: str) -> None:
    """Refuse an ``--out`` that cannot be a directory: it, or a folder above it, is a file."""
    path = Path(out)
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise ValueError(
                    f"--out: expected a directory, got {out!r}, where {str(candidate)!r} is a file"
                )
            return


def _unused_directory(base: str) -> str:
    """``base``, or ``base-2``, ``base-3``, ... when it exists (two runs in the same second)."""
    candidate, suffix = base, 1
    while os.path.exists(candidate):
        suffix += 1
        candidate = f"{base}-{suffix}"
    return candidate


def _run_train(args: argparse.Namespace) -> int:
    from jaxprune.data import DataConfig, load_dataset
    from jaxprune.train import TrainConfig, build_model, train

    _check_model_and_data(args)
    pruner = _pruner(args)
    config = TrainConfig(
        num_steps=args.steps,
        batch_size=args.batch_size,
        eval_batch_size=max(args.batch_size, 256 // args.batch_size * args.batch_size),
        log_every=args.log_every,
        eval_every=args.eval_every,
        analysis_every=args.analysis_every,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        num_devices=args.devices,
        compact=args.compact,
        tensorboard=args.tensorboard,
        progress=not args.quiet,
    )
    try:
        splits = load_dataset(DataConfig(name=args.dataset, seed=args.seed, data_dir=args.data_dir))
    except ValueError as error:
        raise ValueError(f"--dataset {args.dataset}: {error}") from None
    model = build_model(
        args.model,
        num_outputs=splits.num_outputs,
        input_shape=splits.train["x"].shape[1:],
        preset=args.model_preset,
        kind=args.kind,
    )
    optimizer = _optimizer(args.optimizer, args.learning_rate)
    if args.out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        args.out = _unused_directory(f"runs/train-{args.model}-{args.method}-{stamp}")
    result = train(
        model,
        splits,
        optimizer,
        config,
        pruner=pruner,
        run_dir=args.out,
        resume=not args.fresh,
        run_info={"optimizer": args.optimizer, "learning_rate": args.learning_rate},
    )
    from jaxprune.train import summary_table
    from jaxprune.train.events import format_event

    keys = [
        k
        for k in ("train_loss", "test_loss", "test_accuracy", "test_perplexity")
        if any(k in row for row in result.rows)
    ]
    print(summary_table(result.rows, keys, maximize=["test_accuracy"]))
    for event in result.events:
        print(format_event(event))
    s = result.summary
    print(
        f"\nwall {s['wall_seconds']:.1f} s on {s['devices']} device(s); groups pruned "
        f"{s['group_sparsity']:.1%}; weights zero {s['weight_sparsity']:.1%}; "
        f"{s['parameters']:,} parameters; pruning events {s['event_share']:.1%} of the time"
    )
    print(f"wrote {args.out}/metrics.jsonl, metrics.csv, summary.json, curve_*.png")
    return 0


def _run_experiment(args: argparse.Namespace) -> int:
    import dataclasses

    from jaxprune.experiments import apply_overrides, get_experiment

    experiment = get_experiment(args.name)
    config = apply_overrides(experiment.presets[args.preset], args.overrides)
    if args.list_fields:
        for field in dataclasses.fields(config):
            print(f"{field.name} = {getattr(config, field.name)!r}")
        return 0
    out = Path(args.out or f"runs/{args.name}-{args.preset}")
    result = experiment.run(config, out, not args.quiet)
    print(result.get("table", ""))
    print(f"\nwrote {out}")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    args.name, args.preset, args.list_fields = "demo", "small", False
    return _run_experiment(args)


def _run_analyze(args: argparse.Namespace) -> int:
    from jaxprune.analyze import AnalyzeConfig, format_table, run_analyze

    config = AnalyzeConfig(
        dataset=args.dataset,
        hidden=args.hidden,
        activation=args.activation,
        train_steps=args.train_steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        probe_examples=args.probe_examples,
        num_probes=args.num_probes,
        top_k=args.top_k,
        seed=args.seed,
        float64=args.float64,
        out=args.out,
    )
    summary = run_analyze(config, progress=not args.quiet)
    print(format_table(summary))
    print(f"\nwrote {config.out}/summary.json, spectrum.png, groups.png")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxprune`` command; returns the exit status."""
    args = _build_parser().parse_args(argv)
    from jaxprune.compile_cache import enable_compilation_cache

    enable_compilation_cache()
    runners = {
        "analyze": _run_analyze,
        "train": _run_train,
        "experiment": _run_experiment,
        "demo": _run_demo,
    }
    try:
        if args.out is not None:
            _check_out(args.out)
        return runners[args.command](args)
    except (ValueError, TypeError) as error:
        print(f"jaxprune {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
