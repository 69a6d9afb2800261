"""`alignx compile --config CONFIG [key=value ...] [--topology NAME] [--out FILE]`: prove a config fits a TPU slice.

Compiles the exact step `alignx train` runs for the config (its shardings, kernels, remat, dtypes,
reference mode, accumulation, and the largest static batch the config can produce) for a named
Cloud TPU slice, on this machine, without TPU hardware, weights or data (`train/compile.py`), and
prints XLA's per-device memory against the chip's HBM, FLOPs per device beside the model's own
count, and the step's collectives. An unknown topology is one line on stderr and exit 2. A step
that does not fit is an answer as well: the same table with XLA's figure for what it needs (when the
TPU compiler itself runs out of memory too), `fits: false` in `--out`, one line on stderr and exit 2.
`--fit` also finds the smallest v5p and v6e slices the step fits (compiling about two per kind).
Needs libtpu: pip install 'alignx_jax[tpu]'.
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
    p.add_argument("--fit", action="store_true",
                   help="also find the smallest v5p and v6e slices the step fits, by compiling (about two per kind); "
                        "without it the report names the ones train.memory's plan suggests")
    p.set_defaults(func=run)


def _topology_from_name(path: str) -> str | None:
    import re

    m = re.search(r"(v4|v5p|v5e|v6e)_(\d+)", path)
    return f"{m.group(1)}-{m.group(2)}" if m else None


def run(args: argparse.Namespace) -> int:
    from alignx_jax.cli import EXIT_ERROR, _common
    from alignx_jax.errors import InputError
    from alignx_jax.train import compile as compile_lib
    from alignx_jax.train import fit as fit_lib
    from alignx_jax.train import load_config

    import jax

    # No persistent compilation cache (JAX_COMPILATION_CACHE_DIR, as `make` sets it): jax writes the TPU
    # executable there but cannot read it back without a TPU client, and warned "INVALID_ARGUMENT:
    # PjRtCompiler must be constructed with a Client" on every later compile of the same step. Set
    # before anything compiles: jax decides once per process whether it uses the cache.
    jax.config.update("jax_enable_compilation_cache", False)
    config = load_config(args.config, args.overrides)
    name = args.topology or _topology_from_name(args.config)
    if name is None:
        raise InputError(f"--topology is required: {args.config} names no TPU slice (e.g. --topology v5p-64)")
    compile_lib.topology(name)  # an unknown name fails before anything compiles
    out = _common.output_path(args.out, suffixes=(".json",), flag="--out") if args.out else None
    hlo = _common.output_path(args.hlo, flag="--hlo") if args.hlo else None
    report = compile_lib.compile_step(config, name, config_name=args.config, hlo_path=hlo)
    if args.fit:
        known = {report.topology: report}
        found = fit_lib.find_smallest_slices(
            config, config_name=args.config,
            compile_fn=lambda c, n, **kw: known[n] if n in known else compile_lib.compile_step(c, n, **kw),
            progress=lambda r: print(f"--fit: {r.topology} {'fits' if r.fits else 'does not fit'} "
                                     f"({r.per_device_bytes['total'] / 2**30:.1f} GiB per device)", flush=True),
            refused=lambda name, why: print(f"--fit: {name} does not compile ({why})", flush=True))
        report.smallest_slices, report.slices_by = {kind: r and r.topology for kind, r in found.items()}, "xla"
    else:
        report.smallest_slices, report.slices_by = fit_lib.planned_slices(config), "plan"
    print(compile_lib.format_table(report))
    if out is not None:
        with _common.atomic_output(out) as tmp:
            compile_lib.write_json(report, tmp)
    if not report.fits:
        print(f"alignx: error: {compile_lib.does_not_fit_line(report)}", file=sys.stderr)
        return EXIT_ERROR
    return 0
