"""`alignx losses`: list the registered preference losses, or check the ones a config would name."""
from __future__ import annotations

import argparse

from alignx_jax.errors import InputError


def register(subparsers) -> None:
    parser = subparsers.add_parser("losses", help="list the preference losses (registry names for `loss:`)")
    parser.add_argument("specs", nargs="*", metavar="LOSS",
                        help="only these: registry names or 'package.module:function' paths, each checked "
                             "against the loss call form (exit 2 on the first that fails)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alignx_jax import losses

    table = losses.descriptions()
    if args.specs:
        selected = {}
        for spec in args.specs:
            try:  # resolve's whole job is to judge the spec: its TypeError/ValueError are about the input
                fn = losses.resolve(spec)
            except (TypeError, ValueError) as error:
                raise InputError(str(error)) from error
            selected[spec] = table.get(spec) or (fn.__doc__ or "").strip().split("\n")[0]
        table = selected
    width = max(map(len, table))
    for name, description in table.items():
        print(f"{name:<{width}}  {description}")
    return 0
