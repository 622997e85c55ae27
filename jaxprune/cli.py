"""The ``jaxprune`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line on stderr and exit status 2 (no usage dump, no traceback)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"widths must be >= 1, got {text!r}")
    return widths


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


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
            "features of the PL-pruning paper, Section 3.2.2); the Hutchinson trace of the "
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
        "--hidden",
        type=_widths,
        default=defaults.hidden,
        help="hidden widths of the MLP, comma separated, e.g. 64,64",
    )
    analyze.add_argument(
        "--activation",
        choices=sorted(ACTIVATIONS),
        default=defaults.activation,
        help="hidden nonlinearity (with relu, a neuron inactive on some probe example has a "
        "rank-deficient kernel: lambda_min = 0)",
    )
    analyze.add_argument(
        "--train-steps",
        type=_non_negative,
        default=defaults.train_steps,
        help="Adam steps before the analysis (0 analyzes the initialization)",
    )
    analyze.add_argument("--batch-size", type=_positive, default=defaults.batch_size)
    analyze.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    analyze.add_argument(
        "--probe-examples",
        type=_positive,
        default=defaults.probe_examples,
        help="examples n of the probe batch (kernels are n x n)",
    )
    analyze.add_argument(
        "--num-probes",
        type=_positive,
        default=defaults.num_probes,
        help="Hutchinson probe vectors for the Hessian traces",
    )
    analyze.add_argument(
        "--top-k", type=_positive, default=defaults.top_k, help="number of top Hessian eigenvalues"
    )
    analyze.add_argument("--seed", type=int, default=defaults.seed)
    analyze.add_argument(
        "--float64",
        action="store_true",
        help="run everything in float64 (eigen-decompositions always are)",
    )
    analyze.add_argument("--out", default=defaults.out, help="run directory for outputs")
    analyze.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxprune`` command; returns the exit status."""
    args = _build_parser().parse_args(argv)
    if args.command == "analyze":
        from jaxprune.analyze import AnalyzeConfig, format_table, run_analyze

        try:
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
        except (ValueError, TypeError) as error:
            print(f"jaxprune analyze: error: {error}", file=sys.stderr)
            return 2
        print(format_table(summary))
        print(f"\nwrote {config.out}/summary.json, spectrum.png, groups.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
