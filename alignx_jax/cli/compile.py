"""`alignx compile --config CONFIG [key=value ...] [--topology NAME] [--out FILE]`: prove a config fits a TPU slice.

Compiles the exact step `alignx train` runs for the config (its shardings, kernels, remat, dtypes,
reference mode, accumulation, and the largest static batch the config can produce) for a named
Cloud TPU slice, on this machine, without TPU hardware, weights or data (`train/compile.py`), and
prints XLA's per-device memory against the chip's HBM, FLOPs per device beside the model's own
count, and the step's collectives. An unknown topology, or a step that does not fit, is one line
on stderr and exit 2 (after the table, for "does not fit"). Needs libtpu: pip install 'alignx_jax[tpu]'.
"""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("compile", help="compile a config's training step for a TPU slice (memory, FLOPs)",
                              description="Compile the training step of a config for a Cloud TPU slice (v4-8, "
                                          "v5e-16, v5p-64, v6e-256, ...) on this machine and print per-device "
                                          "memory, FLOPs and collectives. key=value arguments override config keys.")
    p.add_argument("--config", required=True, help="YAML file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.rows=64")
    p.add_argument("--topology", default=None,
                   help="Cloud TPU name, e.g. v5p-64 (32 chips); default: read from the config file name (_v5p_64)")
    p.add_argument("--out", default=None, help="also write the report as JSON to this file")
    p.add_argument("--hlo", default=None, help="also write the compiled (optimized) HLO text to this file")
    p.set_defaults(func=run)


def _topology_from_name(path: str) -> str | None:
    import re

    m = re.search(r"(v4|v5p|v5e|v6e)_(\d+)", path)
    return f"{m.group(1)}-{m.group(2)}" if m else None


def run(args: argparse.Namespace) -> int:
    from alignx_jax.cli import EXIT_ERROR, _common
    from alignx_jax.errors import InputError
    from alignx_jax.train import compile as compile_lib
    from alignx_jax.train import load_config

    config = load_config(args.config, args.overrides)
    name = args.topology or _topology_from_name(args.config)
    if name is None:
        raise InputError(f"--topology is required: {args.config} names no TPU slice (e.g. --topology v5p-64)")
    compile_lib.topology(name)  # an unknown name fails before anything compiles
    out = _common.output_path(args.out, suffixes=(".json",), flag="--out") if args.out else None
    hlo = _common.output_path(args.hlo, flag="--hlo") if args.hlo else None
    report = compile_lib.compile_step(config, name, config_name=args.config, hlo_path=hlo)
    print(compile_lib.format_table(report))
    if out is not None:
        with _common.atomic_output(out) as tmp:
            compile_lib.write_json(report, tmp)
    if not report.fits:
        print(f"alignx: error: {args.config} does not fit {name}: {report.per_device_bytes['total'] / 2**30:.1f} GiB "
              f"per device, the chip has {report.hbm_bytes / 2**30:.0f} GiB", file=sys.stderr)
        return EXIT_ERROR
    return 0
