"""The `alignx` command line. Each subcommand lives in its own module with `register(subparsers)`."""
from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order `alignx --help` lists them.
_COMMANDS = ("demo", "convert", "data", "losses")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignx", description="Personalized preference alignment (AlignX) in JAX.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in _COMMANDS:
        importlib.import_module(f"alignx_jax.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
