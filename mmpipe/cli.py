"""The ``mmpipe`` command line.

Each command group adds itself to the parser in its own ``add_*_commands`` function and
sets ``func`` on its leaf parsers; ``main`` parses and calls it. To add a command, write
one more such function and list it in ``COMMAND_GROUPS``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_world_commands(subparsers) -> None:
    world = subparsers.add_parser("world", help="the generated multimodal world")
    world_commands = world.add_subparsers(dest="world_command", required=True, metavar="COMMAND")

    generate = world_commands.add_parser(
        "generate",
        help="write a generated world (tables, images, videos, ground truth)",
        description="Generate a world whose truth is known and write it as raw data.",
    )
    generate.add_argument("--scale", default="small", help="tiny, small, medium or large (default: small)")
    generate.add_argument("--out", type=Path, default=Path("data/raw"), help="raw root to write (default: data/raw)")
    generate.add_argument("--seed", type=int, default=None, help="random seed (default: the scale's, 0)")
    generate.add_argument("--bad-rate", type=float, default=None, help="share of deliberately bad rows per table")
    generate.add_argument("--quiet", action="store_true", help="no progress bars")
    generate.set_defaults(func=run_world_generate)


def run_world_generate(args: argparse.Namespace) -> int:
    from mmpipe.world.config import world_config
    from mmpipe.world.generate import generate_world

    overrides = {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.bad_rate is not None:
        if not 0.0 <= args.bad_rate < 1.0:
            raise SystemExit(f"--bad-rate must be in [0, 1), got {args.bad_rate}")
        overrides["bad_rate"] = args.bad_rate
    try:
        cfg = world_config(args.scale, **overrides)
    except ValueError as error:
        raise SystemExit(str(error)) from None

    started = time.perf_counter()
    summary = generate_world(args.out, cfg, progress=not args.quiet)
    elapsed = time.perf_counter() - started

    print(f"world: scale={summary['scale']} seed={summary['seed']} -> {summary['out']} ({elapsed:.1f}s)")
    print(f"{'table':<16}{'rows':>10}{'bad':>8}")
    for table, rows in summary["counts"].items():
        print(f"{table:<16}{rows:>10}{summary['bad_records'][table]:>8}")
    print(f"oracle AUC {summary['oracle_auc']:.4f}, mean p(click) {summary['mean_p_click']:.4f}, "
          f"cold pins from {summary['cutoff_date']}")
    return 0


COMMAND_GROUPS = [add_world_commands]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmpipe", description="multimodal pipeline tools")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_commands in COMMAND_GROUPS:
        add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
