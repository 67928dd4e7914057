"""The `nas` command line (also `python -m nas`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from nas.registry import UnknownNameError


def _spaces_cmd(args: argparse.Namespace) -> int:
    import search_spaces

    for name in search_spaces.SPACES.list():
        space = search_spaces.get_space(name)
        print(f"{name:12s} {len(space.keys):3d} dims  {search_spaces.SPACES.describe(name)}")
    return 0


def _demo_cmd(args: argparse.Namespace) -> int:
    import search_spaces
    from nas.demo import run_price_demo

    space = search_spaces.get_space(args.space)
    out = run_price_demo(space, Path(args.out), n_trials=args.trials, seed=args.seed)
    print(f"run folder: {out}  (report: {out / 'report.md'})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nas", description="Hardware-aware neural architecture search for edge devices."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("spaces", help="list the registered search spaces")
    p.set_defaults(func=_spaces_cmd)

    p = sub.add_parser("demo", help="price sampled archs through an Optuna study into runs/demo")
    p.add_argument("--space", default="tiny", help="registered space name (default: tiny)")
    p.add_argument("--trials", type=int, default=200, help="archs to price (default: 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    p.set_defaults(func=_demo_cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (UnknownNameError, ValueError) as err:
        print(f"nas: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
