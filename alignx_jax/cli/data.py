"""`alignx data`: synthesize, validate and summarize AlignX record files."""
from __future__ import annotations

import argparse
import collections
import pathlib
import statistics

from alignx_jax.cli._common import atomic_output, output_path
from alignx_jax.errors import InputError


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="synthesize, validate and summarize AlignX record files")
    commands = parser.add_subparsers(dest="data_command", required=True)

    synth = commands.add_parser("synth", help="write synthetic users' records in the AlignX schema")
    synth.add_argument("--users", type=int, required=True, help="number of users (mirror pairs: even is best)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--records-per-user", type=int, default=4)
    synth.add_argument("--history-items", type=int, default=6, help="UGC items and history pairs per record")
    synth.add_argument("--dimensions", default=None,
                       help="the style dimensions users mark, comma-separated AlignX indices or labels (e.g. "
                            "'3,Likes music', or 'Likes cinema' of data.EXTRA_TOPIC_DIMENSIONS); "
                            "default: data.STYLE_DIMENSIONS")
    synth.add_argument("--out", type=pathlib.Path, required=True, help="FILE.parquet (hub schema), .jsonl or .json")
    synth.set_defaults(func=_synth)

    validate = commands.add_parser("validate", help="check every record; exit 1 if any is bad, listing each "
                                                    "(exit 2 if the file cannot be read or holds no records)")
    validate.add_argument("file", type=pathlib.Path, help="a .parquet file or folder, .json or .jsonl")
    validate.add_argument("--schema", choices=("alignx", "benchmark"), default=None,
                          help="default: alignx for parquet, benchmark for JSON")
    validate.set_defaults(func=_validate)

    stats = commands.add_parser("stats", help="counts and lengths of a record file")
    stats.add_argument("file", type=pathlib.Path)
    stats.add_argument("--schema", choices=("alignx", "benchmark"), default=None)
    stats.set_defaults(func=_stats)


def _synth(args: argparse.Namespace) -> int:
    from alignx_jax import data
    from alignx_jax.data import RECORD_SUFFIXES

    for flag, value, least in (("--users", args.users, 1), ("--records-per-user", args.records_per_user, 1),
                               ("--history-items", args.history_items, 0)):
        if value < least:
            raise InputError(f"{flag} must be >= {least}, got {value}")
    dimensions = None
    if args.dimensions is not None:
        names = [int(n) if n.strip().isdigit() else n.strip() for n in args.dimensions.split(",") if n.strip()]
        try:
            dimensions = data.style_dimensions(names)
        except ValueError as error:
            raise InputError(f"--dimensions: {error}") from None
        if not dimensions:
            raise InputError(f"--dimensions {args.dimensions!r} names no dimension; "
                             f"leave it out for data.STYLE_DIMENSIONS")
    out = output_path(args.out, kind="file", suffixes=RECORD_SUFFIXES, flag="--out")
    records = data.synthetic_records(args.users, seed=args.seed, records_per_user=args.records_per_user,
                                     history_items=args.history_items, dimensions=dimensions)
    with atomic_output(out) as tmp:
        data.write_records(records, tmp)
    print(f"wrote {len(records)} records of {args.users} users to {args.out}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from alignx_jax import data

    report = data.LoadReport()
    for _ in data.iter_records(args.file, schema=args.schema, on_error="skip", report=report):
        pass
    total = report.loaded + report.skipped
    if not total:
        raise InputError(f"{args.file}: holds no records")
    for error in report.errors:
        print(error)
    print(f"{total} records, {report.skipped} bad")
    return 1 if report.skipped else 0


def _stats(args: argparse.Namespace) -> int:
    from alignx_jax import data, preferences

    report = data.LoadReport()
    records = list(data.iter_records(args.file, schema=args.schema, on_error="skip", report=report))
    report.check_usable(args.file)
    print(f"records: {len(records)} (bad, skipped: {report.skipped})")
    directions = {tuple(r[preferences.DIRECTION]) for r in records if r.get(preferences.DIRECTION) is not None}
    print(f"distinct preference directions: {len(directions)}")
    for field in ("prompt", "chosen", "rejected"):
        lengths = [len(r[field]) for r in records]
        print(f"{field} characters: mean {statistics.fmean(lengths):.0f}, max {max(lengths)}")
    for field in (preferences.UGC, preferences.PAIRS):
        counts = [len(r.get(field) or ()) for r in records]
        print(f"{field} items per record: mean {statistics.fmean(counts):.2f}, max {max(counts)}")
    personas = collections.Counter(data.persona_key(r) for r in records)
    print(f"personas: {len(personas)}")
    dims, labels = preferences.dimensions(), collections.Counter()
    for r in records:
        if r.get(preferences.DIRECTION) is not None:
            marked = preferences.binarize(r[preferences.DIRECTION])
            labels.update(dims[i].positive if v == 1 else dims[i].negative for i, v in enumerate(marked) if v != 0.5)
    if labels:
        print("most frequent preference labels:")
    for label, count in labels.most_common(10):
        print(f"  {count:6d}  {label}")
    return 0

