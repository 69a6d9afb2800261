"""`alignx losses`: list the registered preference losses with a one-line description each."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("losses", help="list the preference losses (registry names for `loss:`)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alignx_jax import losses

    table = losses.descriptions()
    width = max(map(len, table))
    for name, description in table.items():
        print(f"{name:<{width}}  {description}")
    return 0
