"""`alignx judge`: win / tie / loss of one generation file against another, per persona.

    alignx judge A.jsonl B.jsonl --out DIR [--judge local|http] [--judge-model M]

`local` (default) runs a local model offline (the embedded SmolLM2-135M-Instruct unless
--judge-model names another). `http` asks an OpenAI-compatible chat-completions endpoint: its
base URL comes from ALIGNX_JUDGE_URL, the key from ALIGNX_JUDGE_API_KEY, the model from
--judge-model or ALIGNX_JUDGE_MODEL; none of them is written to disk.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

from alignx_jax.errors import InputError, MissingFileError

URL_ENV, KEY_ENV, MODEL_ENV = "ALIGNX_JUDGE_URL", "ALIGNX_JUDGE_API_KEY", "ALIGNX_JUDGE_MODEL"


def register(subparsers) -> None:
    p = subparsers.add_parser("judge", help="win/tie/loss of generation file A against B, per persona",
                              description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=pathlib.Path, metavar="A.jsonl", help="answers of the model under test (alignx generate)")
    p.add_argument("b", type=pathlib.Path, metavar="B.jsonl", help="answers of the model it is compared with")
    p.add_argument("--out", type=pathlib.Path, required=True, help="new output folder")
    p.add_argument("--judge", default="local", choices=("local", "http"))
    p.add_argument("--judge-model", default=None,
                   help=f"local: model alias or folder (default smollm2-135m-instruct); http: the model name "
                        f"(default ${MODEL_ENV})")
    p.add_argument("--limit", type=int, help="judge the first N shared records only")
    p.add_argument("--batch-size", type=int, default=8, help="local judge: prompts per batch")
    p.set_defaults(func=run)


def _read_generations(path: pathlib.Path) -> list[dict]:
    from alignx_jax import evaluation

    if not path.is_file():
        raise MissingFileError(f"{path}: no such generation file (write one with `alignx generate`)")
    rows = evaluation.read_rows(path)
    if not rows:
        raise InputError(f"{path}: holds no generations")
    for number, row in enumerate(rows, start=1):
        missing = [k for k in ("index", "post", "response") if k not in row]
        if missing:
            raise InputError(f"{path}: row {number} is not an `alignx generate` row (no {missing[0]!r})")
    return rows


def _make_judge(args: argparse.Namespace):
    from alignx_jax import evaluation

    if args.judge == "http":
        url = os.environ.get(URL_ENV, "").strip()
        if not url:
            raise InputError(f"--judge http needs the endpoint's base URL in ${URL_ENV} "
                             f"(e.g. https://api.openai.com/v1) and its key in ${KEY_ENV}")
        model = args.judge_model or os.environ.get(MODEL_ENV, "").strip()
        if not model:
            raise InputError(f"--judge http needs a model name: --judge-model NAME or ${MODEL_ENV}")
        return evaluation.HttpJudge(url, model, api_key=os.environ.get(KEY_ENV) or None), {"kind": "http", "model": model}
    from alignx_jax import interop
    from alignx_jax.cli import eval as eval_cli

    source = args.judge_model or interop.EMBEDDED_ALIAS
    eval_cli.check_model_path("--judge-model", source)
    tokenizer = interop.load_tokenizer(source)
    params, config = interop.load_params(source)
    judge = evaluation.LocalJudge(params, config, tokenizer, name=source, batch_size=args.batch_size)
    return judge, {"kind": "local", "model": source}


def run(args: argparse.Namespace) -> int:
    from alignx_jax import evaluation
    from alignx_jax.cli._common import atomic_output, output_path

    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = output_path(args.out, kind="folder", flag="--out")
    rows_a, rows_b = _read_generations(args.a), _read_generations(args.b)
    pairs = evaluation.pair_generations(rows_a, rows_b, name_a=str(args.a), name_b=str(args.b))
    if not pairs:
        raise InputError(f"{args.a} and {args.b} answer no record in common")
    pairs = pairs[: args.limit] if args.limit else pairs
    judge, judge_info = _make_judge(args)
    print(f"judging {len(pairs)} pairs, both orders, with the {judge_info['kind']} judge {judge_info['model']}",
          file=sys.stderr)
    judgments = evaluation.judge_pairs(pairs, judge)
    report = evaluation.summarize_judgments(judgments)
    report.update(a=str(args.a), b=str(args.b), judge=judge_info, only_in_a=len(rows_a) - len(pairs) if not args.limit
                  else None, only_in_b=len(rows_b) - len(pairs) if not args.limit else None)
    with atomic_output(out, kind="folder") as tmp:
        (tmp / "judgments.jsonl").write_text("".join(json.dumps(j) + "\n" for j in judgments), encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(_markdown(report) + "\n", encoding="utf-8")
    print(f"A wins {report['win']}, ties {report['tie']}, loses {report['loss']} of {report['n']} "
          f"(win rate {100 * report['win_rate']:.1f}%, worst persona {100 * report['worst_persona_win_rate']:.1f}%); "
          f"report in {out / 'report.md'}")
    return 0


def _markdown(report: dict) -> str:
    lines = ["# Win rate", "", f"- A: `{report['a']}`", f"- B: `{report['b']}`",
             f"- judge: {report['judge']['kind']} `{report['judge']['model']}` (each pair judged in both orders; "
             f"a split verdict is a tie)", "",
             "| | n | win | tie | loss | win rate % |", "|---|---|---|---|---|---|",
             f"| all | {report['n']} | {report['win']} | {report['tie']} | {report['loss']} | "
             f"{100 * report['win_rate']:.1f} |"]
    for name, g in report["per_persona"].items():
        label = name if len(name) <= 60 else name[:57] + "..."
        lines.append(f"| {label or '(none)'} | {g['n']} | {g['win']} | {g['tie']} | {g['loss']} | "
                     f"{100 * g['win_rate']:.1f} |")
    lines += ["", f"Worst persona: {report['worst_persona'] or '(none)'} ({100 * report['worst_persona_win_rate']:.1f}%)"]
    return "\n".join(lines)
