"""The `alignx` command line. Each subcommand lives in its own module with `register(subparsers)`.

The error rule, for every subcommand: bad input raises `alignx_jax.errors.AlignxError` (a file,
record, key or value named, and what was expected), which `main` prints as the one line
`alignx: error: <message>` on stderr, exit 2; anything else is a bug and keeps its traceback, exit 1
(`alignx --debug` or ALIGNX_DEBUG=1 shows tracebacks always). Check arguments and output paths
(`_common.output_path`) before the work, and write outputs through `_common.atomic_output`, so a
refused or failed command leaves nothing behind.
"""
from __future__ import annotations

import argparse
import glob
import importlib
import os
import re
import sys
import traceback

from alignx_jax.errors import AlignxError

# Subcommand modules, in the order `alignx --help` lists them.
_COMMANDS = ("demo", "convert", "data", "losses", "train", "compile", "eval", "generate", "judge")

EXIT_ERROR = 2  # bad input, as argparse uses for a bad command line
DEBUG_ENV = "ALIGNX_DEBUG"


class _Parser(argparse.ArgumentParser):
    """argparse with the same one-line error as the rest of the command (subparsers inherit it)."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"alignx: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="alignx", description="Personalized preference alignment (AlignX) in JAX.")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of input errors too (or set {DEBUG_ENV}=1)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in _COMMANDS:
        importlib.import_module(f"alignx_jax.cli.{name}").register(subparsers)
    return parser


def _debug(args: argparse.Namespace) -> bool:
    return args.debug or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


# Grain appends this note to an error raised inside a dataset pipeline; it is about Grain's traceback.
_GRAIN_NOTE = re.compile(r"\n-+\nFor simplicity, Grain has removed .*", re.DOTALL)


def _one_line(text: str) -> str:
    text = _GRAIN_NOTE.sub("", text)
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


# The PCI vendor id of Google's TPU chips (what JAX's own check for local chips reads).
_TPU_PCI_VENDOR = "0x1ae0"


def _has_tpu_chips() -> bool:
    for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(path) as f:
                if f.read().strip() == _TPU_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def quiet_tpu_runtime_without_chips() -> None:
    """libtpu (installed for `alignx compile`) initializes whenever JAX looks for backends, also on a
    machine without TPU chips; there, with no TPU metadata to read, it prints `INVALID_ARGUMENT: Error:
    unexpected worker hostname 'WARNING: could not determine TPU worker hostnames ...'` and a source
    trace on stderr. Give it the local answers instead (this host, a valid accelerator type: neither
    changes what it compiles for an abstract slice). A TPU VM, or a user's own settings, are left alone."""
    if "TPU_WORKER_HOSTNAMES" in os.environ or "TPU_ACCELERATOR_TYPE" in os.environ or _has_tpu_chips():
        return
    os.environ["TPU_WORKER_HOSTNAMES"] = "localhost"
    os.environ["TPU_ACCELERATOR_TYPE"] = "v5p-8"


def main(argv: list[str] | None = None) -> int:
    quiet_tpu_runtime_without_chips()  # before anything loads a JAX backend
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (AlignxError, OSError, KeyboardInterrupt) as error:
        if isinstance(error, OSError) and not isinstance(error, AlignxError) and error.filename is None:
            raise  # an OSError that names no file is not about a path the user gave
        if _debug(args):
            traceback.print_exc()
        if isinstance(error, KeyboardInterrupt):
            print("alignx: interrupted", file=sys.stderr)
            return 130  # 128 + SIGINT, as shells report it
        if isinstance(error, AlignxError):
            message = _one_line(str(error))
        else:  # the OS refused a path: permissions, a full disk, a file where a folder should be
            message = _one_line(f"{error.filename}: {error.strerror or error}")
        print(f"alignx: error: {message}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
