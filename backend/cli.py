"""Command line of the backend: `python -m backend {train,evaluate,predict,serve}`.

Each subcommand parses its arguments here and calls one library function; no ML logic lives in this file.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    # --- model commands (train / evaluate / predict) ---
    # --- serve ---
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
