"""Evaluation reports: report.json, report.md, one bar chart per breakdown, and side-by-side tables.

Every table that shows a mean shows the worst persona beside it (DESIGN "Personas, not averages").
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

BREAKDOWNS = (("per_persona", "persona"), ("per_item_type", "persona-item type"),
              ("per_history_size", "history size (UGC + pair items shown)"))


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _ci(ci: Sequence[float] | None) -> str:
    return "-" if not ci else f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def _short(name: str, width: int = 60) -> str:
    name = name or "(none)"
    return name if len(name) <= width else name[: width - 3] + "..."


# What the reference of a run reads (run.json's reference_prompt; absent in older runs: few_shot), and
# what that makes `accuracy`.
REFERENCE_READS = {"few_shot": ("the few-shot prompt", "the paper's metric"),
                   "policy": ("the policy's prompt", "the reward view")}


def _reference_reads(report: Mapping[str, Any]) -> tuple[str, str]:
    return REFERENCE_READS[report.get("run", {}).get("reference_prompt") or "few_shot"]


def markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: headline with the worst persona, then one table per breakdown."""
    run = report.get("run", {})
    lines = ["# Alignment accuracy", ""]
    for key in ("policy", "reference", "data", "mode", "history", "persona_items", "reference_prompt"):
        if key in run:
            value = run[key]
            if isinstance(value, Mapping):
                value = value.get("source") or value.get("path")
            lines.append(f"- {key}: `{value}`")
    lines += [f"- beta: {report['beta']}, records scored: {report['n']}", "",
              "| | accuracy % | 95% CI | accuracy_logp % | 95% CI | n |", "|---|---|---|---|---|---|",
              f"| mean | {_pct(report['accuracy'])} | {_ci(report['ci'])} | {_pct(report['accuracy_logp'])} | "
              f"{_ci(report['ci_logp'])} | {report['n']} |"]
    worst = report["per_persona"][report["worst_persona"]]
    lines.append(f"| worst persona ({_short(report['worst_persona'], 40)}) | {_pct(worst['accuracy'])} | "
                 f"{_ci(worst['ci'])} | {_pct(report['worst_persona_accuracy_logp'])} | | {worst['n']} |")
    reads, metric = _reference_reads(report)
    lines += ["", "accuracy: r(chosen) > r(rejected), r = beta * (log pi - log pi_ref), a tie is wrong "
              f"(the reference reads {reads}: {metric}); "
              "accuracy_logp: log pi(chosen) > log pi(rejected) (the policy alone).", ""]
    for key, title in BREAKDOWNS:
        table = report.get(key) or {}
        if not table:
            continue
        with_worst = key != "per_persona"
        lines += [f"## Per {title}", ""]
        header = "| | n | accuracy % | 95% CI | accuracy_logp % | 95% CI |"
        rule = "|---|---|---|---|---|---|"
        if with_worst:
            header += " worst persona accuracy % | worst persona accuracy_logp % |"
            rule += "---|---|"
        lines += [header, rule]
        for name, g in table.items():
            line = (f"| {_short(name)} | {g['n']} | {_pct(g['accuracy'])} | {_ci(g['ci'])} | "
                    f"{_pct(g['accuracy_logp'])} | {_ci(g['ci_logp'])} |")
            if with_worst:
                line += f" {_pct(g['worst_persona_accuracy'])} | {_pct(g['worst_persona_accuracy_logp'])} |"
            lines.append(line)
        lines.append("")
    return "\n".join(lines)


def plot_breakdown(report: Mapping[str, Any], key: str, title: str, path: str | os.PathLike) -> None:
    """A bar chart of one breakdown: accuracy and accuracy_logp per group with 95% intervals, the
    mean and the worst persona as lines, chance (50%) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    table = report[key]
    names = list(table)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 2.5), 4.2))
    for offset, metric, ci_key, label in ((-0.2, "accuracy", "ci", "accuracy (reward vs reference)"),
                                          (0.2, "accuracy_logp", "ci_logp", "accuracy_logp (policy alone)")):
        values = np.array([table[n][metric] for n in names]) * 100
        cis = [table[n][ci_key] or [table[n][metric]] * 2 for n in names]
        err = np.abs(np.array(cis).T * 100 - values)
        ax.bar(x + offset, values, width=0.4, yerr=err, capsize=3, label=label)
    ax.axhline(50, color="grey", linestyle="--", linewidth=1)
    ax.axhline(100 * report["accuracy"], color="C0", linewidth=1, label=f"mean {_pct(report['accuracy'])}%")
    ax.axhline(100 * report["worst_persona_accuracy"], color="C3", linewidth=1,
               label=f"worst persona {_pct(report['worst_persona_accuracy'])}%")
    ax.set_xticks(x, ["\n".join(textwrap.wrap(_short(str(n), 48), 16)) or "(none)" for n in names], fontsize=7)
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.set_title(f"Alignment accuracy per {title} (n={report['n']})", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: Mapping[str, Any], folder: str | os.PathLike) -> list[pathlib.Path]:
    """report.json, report.md and `<breakdown>.png` into `folder`, each written under a temporary
    name and renamed, so a kill leaves the previous version or the new one, never half a file."""
    folder = pathlib.Path(folder)
    written = []

    def put(name: str, write) -> None:
        final = folder / name
        tmp = folder / f".{name}.tmp{final.suffix}"
        write(tmp)
        os.replace(tmp, final)
        written.append(final)

    put("report.json", lambda p: p.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"))
    put("report.md", lambda p: p.write_text(markdown(report) + "\n", encoding="utf-8"))
    for key, title in BREAKDOWNS:
        if report.get(key):
            put(f"{key}.png", lambda p, key=key, title=title: plot_breakdown(report, key, title, p))
    return written


def compare(reports: Mapping[str, Mapping[str, Any]]) -> str:
    """Reports side by side: mean, worst persona and every persona (then the other breakdowns),
    `accuracy / accuracy_logp` in % per run; a dash where a run lacks the group."""
    names = list(reports)
    rows: list[tuple[str, list[str]]] = [
        ("mean", [f"{_pct(r['accuracy'])} / {_pct(r['accuracy_logp'])}" for r in reports.values()]),
        ("worst persona", [f"{_pct(r['worst_persona_accuracy'])} / {_pct(r['worst_persona_accuracy_logp'])}"
                           for r in reports.values()]),
        ("n", [str(r["n"]) for r in reports.values()]),
        ("reference reads", [_reference_reads(r)[0] for r in reports.values()]),
    ]
    for key, title in BREAKDOWNS:
        groups = list(dict.fromkeys(g for r in reports.values() for g in (r.get(key) or {})))
        if key != "per_persona" and len(groups) < 2:
            continue
        rows.append((f"-- per {title} --", [""] * len(names)))
        for g in groups:
            cells = []
            for r in reports.values():
                s = (r.get(key) or {}).get(g)
                cells.append("-" if s is None else f"{_pct(s['accuracy'])} / {_pct(s['accuracy_logp'])} (n={s['n']})")
            rows.append((_short(g, 48), cells))
    header = ["accuracy / accuracy_logp %"] + names
    widths = [max(len(header[0]), *(len(r[0]) for r in rows))]
    widths += [max(len(names[i]), *(len(r[1][i]) for r in rows)) for i in range(len(names))]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [fmt(header), fmt(["-" * w for w in widths])]
    out += [fmt([label, *cells]) for label, cells in rows]
    return "\n".join(out)
