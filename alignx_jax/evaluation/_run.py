"""A resumable evaluation run in a folder: run.json (what is evaluated), scores.jsonl (one row per
scored record, appended batch by batch), then the reports.

Killed and started again with the same settings, a run reads scores.jsonl (dropping the truncated
last line of the batch it was writing), scores only what is missing, and writes the same report
an uninterrupted run writes.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from alignx_jax.errors import InputError, check_output_parent, read_json
from alignx_jax.evaluation import _jsonl, _metrics, _report, _scoring

SCORES = "scores.jsonl"
RUN = "run.json"
# Settings that change the scores; a folder's run.json must match them to be resumed. The record
# selection (--limit / --per-persona) and beta are not among them: rows are keyed by record index.
IDENTITY_KEYS = ("policy", "reference", "data", "mode", "history", "persona_items", "profile", "policy_layout",
                 "reference_prompt", "max_length", "dtype", "bridge")
IDENTITY_DEFAULTS = {"reference_prompt": "few_shot"}  # the value of a key that folders written before it lack


def file_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Path, size and sha256 of a data file (of each file of a folder), the data's identity."""
    path = pathlib.Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest, size = hashlib.sha256(), 0
    for file in files:
        with file.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
                size += len(block)
    return {"path": str(path), "bytes": size, "sha256": digest.hexdigest()}


def model_fingerprint(source: str) -> dict[str, Any]:
    """A model's identity: the alias, or the folder/file with the size and latest change of its files."""
    path = pathlib.Path(source)
    if not path.exists():
        return {"source": source}
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stats = [f.stat() for f in files]
    return {"source": source, "path": str(path.resolve()), "bytes": sum(s.st_size for s in stats),
            "modified": max((s.st_mtime for s in stats), default=0.0)}


def check_folder(out: str | os.PathLike, run: Mapping[str, Any], *, flag: str = "--out") -> bool:
    """Refuse an output folder that cannot hold this run, before any work; True when it holds the
    same run, to be resumed. Its parents may be missing (created when scoring starts); the folder must be absent, empty, or hold a
    run.json with the same settings (`IDENTITY_KEYS`)."""
    out = pathlib.Path(out)
    check_output_parent(out, f"{flag} {out}")
    if out.exists() and not out.is_dir():
        raise InputError(f"{flag} {out}: is a file, expected a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    if not (out / RUN).is_file():
        raise InputError(f"{flag} {out}: the folder is not empty and holds no {RUN} of an evaluation; "
                         f"give a new or empty folder")
    previous = read_json(out / RUN)
    different = [k for k in IDENTITY_KEYS
                 if previous.get(k, IDENTITY_DEFAULTS.get(k)) != run.get(k, IDENTITY_DEFAULTS.get(k))]
    if different:
        k = different[0]
        raise InputError(f"{flag} {out}: holds an evaluation with other settings ({k}: {_brief(previous.get(k))} "
                         f"there, {_brief(run.get(k))} now); give a new folder, or the same settings to resume it")
    return True


def _brief(value: Any) -> str:
    if isinstance(value, Mapping):
        value = value.get("source") or value.get("path") or value
    return json.dumps(value)


def evaluate_to_folder(
    out: str | os.PathLike,
    records: Sequence[Mapping[str, Any]],
    indices: Sequence[int],
    *,
    run: Mapping[str, Any],
    beta: float = _metrics.DEFAULT_BETA,
    progress: Callable[[int, int], Any] | None = None,
    **score_kwargs: Any,
) -> dict[str, Any]:
    """Score `records` (the selected ones; `indices` their file positions) into `out`, resuming what
    is there, and write the reports. `run` is the identity written to run.json (and checked by
    `check_folder`, which the caller runs first); `score_kwargs` go to `iter_scores`.
    `progress(done_now, total_to_do)` is called once before scoring and after each batch.

    Returns the report dict (also written as report.json).
    """
    start = time.perf_counter()
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / RUN).is_file():
        (out / RUN).write_text(json.dumps(dict(run), indent=2) + "\n", encoding="utf-8")
    settings = _scoring._histories(score_kwargs.get("history"))
    wanted = {(int(i), cap) for i in indices for cap in settings}
    previous, done = [], set()
    for row in _jsonl.read_rows(out / SCORES, repair=True):
        key = (row.get("index"), row.get("history"))
        if key in wanted and key not in done:
            previous.append(row)
            done.add(key)
    to_do = len(wanted) - len(done)
    if progress is not None:
        progress(0, to_do)
    scored, scoring_start = [], time.perf_counter()
    with _jsonl.RowWriter(out / SCORES) as writer:
        for rows in _scoring.iter_scores(records, indices=indices, skip=done, beta=beta, **score_kwargs):
            writer.write(rows)
            scored.extend(rows)
            if progress is not None:
                progress(len(rows), to_do)
    scoring_time = time.perf_counter() - scoring_start
    report = _metrics.summarize(previous + scored, beta=beta)
    report["run"] = dict(run)
    report["timing"] = {
        "records_scored_now": len(scored),
        "records_resumed": len(previous),
        "scoring_s": round(scoring_time, 3),
        "records_per_s": round(len(scored) / scoring_time, 3) if scored and scoring_time > 0 else None,
        "wall_s": round(time.perf_counter() - start, 3),
    }
    _report.write_report(report, out)
    return report
