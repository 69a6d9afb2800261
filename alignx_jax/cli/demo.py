"""`alignx demo --out DIR`: the embedded SmolLM2-135M-Instruct learns to follow each user, on this CPU.

1. held-out synthetic users in mirror pairs (a persona-blind model scores exactly 50%) and, when
   ../shared is present, held-out P-Soups friendly / unfriendly records of both personas;
2. accuracy before training (policy-only view: the untrained policy equals its reference);
3. ICA training (DPO, LoRA) with a progress bar, for what the time budget (`--budget-seconds`, the
   whole demo) leaves after the measured cost of the held-out passes and the answers;
4. accuracy after, policy-only and with the paper's metric, per persona and worst persona; the
   policy-only view per token too (log-probs over token counts), before and after;
5. export to DIR/hf and reload in PyTorch transformers, logits compared;
6. one post answered for two opposite users (concise vs detailed) before and after training.

Writes DIR/summary.json, DIR/demo.png, DIR/hf/ (transformers) and DIR/train/ (the run: metrics.jsonl,
model/).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import shutil
import time

DEFAULT_OUT = "runs/demo"
MARKER = ".alignx_demo"  # a folder holding this file is a demo's own output, replaced by the next demo
POST = "Any advice on a job interview tomorrow?"
DEFAULT_BUDGET_S = 570.0  # the whole demo within 10 minutes of wall time, with half a minute to spare
DEFAULT_STEPS = 400
SMOOTHING = 10  # demo.png's training curves: the mean of the last 10 steps beside each step's noisy value
# Words of a post that say nothing of its subject; an answer is on topic when it names the rest.
_FILLER = frozenset("any advice on a an the about what do you think i keep thinking thoughts of for to".split())


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="train the embedded model to follow each user's preferences, on the CPU",
                              description="Held-out accuracy before and after a few minutes of ICA training, per "
                                          "persona; export to PyTorch; answers for two opposite users.")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}; a previous demo's is replaced)")
    p.add_argument("--budget-seconds", type=float, default=DEFAULT_BUDGET_S,
                   help=f"wall time of the whole demo (default {DEFAULT_BUDGET_S:.0f}): training stops early, sized "
                        f"from the measured speed of its first steps, so that the rest still fits")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"at most this many training steps (default {DEFAULT_STEPS}; the budget usually stops it first)")
    p.add_argument("--psoups", default=None,
                   help="P-Soups friendly/unfriendly JSON (default: ../shared/data/ beside the checkout, when present)")
    p.add_argument("--max-new-tokens", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _default_psoups() -> pathlib.Path | None:
    repo = pathlib.Path(__file__).resolve().parents[2]
    path = repo.parent / "shared" / "data" / "psoups_friendly_unfriendly.json"
    return path if path.is_file() else None


def _out_dir(path: str) -> pathlib.Path:
    from alignx_jax.cli import _common

    out = pathlib.Path(path)
    if (out / MARKER).is_file():
        shutil.rmtree(out)
    _common.output_path(out, kind="folder", flag="--out")
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by `alignx demo`; the next demo replaces this folder\n")
    return out


def training_config(out: pathlib.Path, *, steps: int, seed: int, psoups: pathlib.Path | None):
    """One pair per 640-token row (one history item of each kind), 4 pairs per step, LoRA on the top 6
    of the 30 layers (the 24 below run once per step, forward only, for policy and reference alike,
    and once for the held-out policy batches), one compiled step shape; at most `steps` steps at a
    constant rate from the first (LoRA starts as the base model), so that a run the time budget stops
    early is not left mid-schedule. Held out: 4 synthetic users (2 mirror pairs) x 20 records and 10
    P-Soups records per persona. Every step trains twin pairs (the same post and responses under two
    users who disagree: mirror twins, P-Soups personas on a shared prompt) with DPO (`sigmoid`) and the
    cross-user term, which only reading the user lowers. No NLL term (`rpo`): with twin batches, DPO
    alone read the held-out users better on two seeds (the recipe study in docs/experiments.md)."""
    from alignx_jax.train import config_from_dict

    files = [{"path": str(psoups), "heldout_per_persona": 10, "limit": 64}] if psoups else []
    return config_from_dict({
        "out_dir": str(out / "train"), "seed": seed, "steps": steps, "model": "smollm2-135m-instruct",
        "data": {"synthetic": {"users": 400, "records_per_user": 2, "history_items": 1},
                 "heldout_synthetic": {"users": 4, "records_per_user": 20, "history_items": 1},
                 "files": files, "rows": 4, "seq_lengths": [640], "max_pairs_per_row": 1,
                 "scored_buckets": [512, 1024], "twins": True},
        "loss": "sigmoid", "beta": 0.1, "reference": "lora",
        "twin_loss": "cross_user", "twin_loss_weight": 1.0,
        "lora": {"rank": 16, "alpha": 32, "layers": 6}, "optimizer": {"lr": 5e-3, "warmup_steps": 0, "schedule": "constant"},
        "checkpoint_every": steps, "eval_every": 0, "eval": {"rows": 4, "layout": "training"},
    })


def _reload_in_pytorch(hf_dir: pathlib.Path, model_dir: pathlib.Path, tokenizer) -> float:
    """Max |logit difference| of transformers (PyTorch) on the exported folder vs our model, one prompt."""
    import numpy as np
    import torch
    import transformers

    from alignx_jax import interop

    ids = tokenizer(f"{POST} Keep it short.", add_special_tokens=False)["input_ids"]
    ours = np.asarray(interop.from_pretrained(model_dir)(np.asarray([ids], np.int32)))
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = torch_model(torch.tensor([ids])).logits.numpy()
    return float(np.abs(ours - theirs).max())


def _opposite_users(seed: int):
    """A mirror pair of synthetic users whose marks include the response length (concise vs detailed)."""
    from alignx_jax import data, preferences

    length = data.LENGTH_DIMENSION
    records = data.synthetic_records(200, seed=seed + 7, records_per_user=1, history_items=2)
    for first, second in zip(records[::2], records[1::2]):
        if first[preferences.DIRECTION][length] != preferences.NEUTRAL:
            concise = first if first[preferences.DIRECTION][length] == preferences.POSITIVE else second
            detailed = second if concise is first else first
            return {"concise": concise, "detailed": detailed}
    raise RuntimeError("no synthetic mirror pair marks the response length")  # 200 users: never happens


def _answers(model, users, max_new_tokens: int, *, with_history: bool = True) -> dict[str, dict]:
    """Greedy answers to POST for each user, and the side of each of the user's marked styles that the
    answer shows (`data.response_styles`). `with_history`: the ICA training layout with the user's
    whole history (what the trained model reads); else the post alone in a plain chat turn (what the
    untrained model can answer: given the history layout it only repeats the history's header)."""
    from alignx_jax import data, preferences
    from alignx_jax.models import decoding

    tokenizer = model.tokenizer

    def prompt(record):
        text = (data.chat_text(tokenizer, data.ica_train_prompt(POST, data.full_history(record))) if with_history
                else tokenizer.apply_chat_template([{"role": "user", "content": POST}], tokenize=False,
                                                   add_generation_prompt=True))
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    prompts = [prompt(record) for record in users.values()]
    outputs = model.generate(prompts, decoding.Sampling(max_new_tokens=max_new_tokens))
    answers = {}
    for (name, record), ids in zip(users.items(), outputs):
        text = tokenizer.decode(ids, skip_special_tokens=True).strip()
        direction = record[preferences.DIRECTION]
        read = data.response_styles(text)
        marks = {}
        for dim in preferences.dimensions():
            if direction[dim.index] != preferences.NEUTRAL:
                wants = direction[dim.index] == preferences.POSITIVE
                shown = read.get(dim.index)
                marks[dim.positive if wants else dim.negative] = None if shown is None else shown == wants
        answers[name] = {"tokens": len(ids), "text": text, "marks_followed": marks,
                         "follows_all_marks": bool(marks) and all(marks.values()), "on_topic": on_topic(POST, text)}
    return answers


def on_topic(post: str, answer: str) -> bool:
    """Does `answer` address `post`? It must name at least half of the post's subject words (its words
    without filler such as "any advice on"), compared lower-case: "Any advice on a job interview
    tomorrow?" needs two of job, interview, tomorrow."""
    words = lambda text: set(re.findall(r"[a-z]+", text.lower()))  # noqa: E731
    subject = words(post) - _FILLER
    return 2 * len(subject & words(answer)) >= len(subject) > 0


def length_contrast(answers: dict[str, dict], max_new_tokens: int, *, when: str) -> dict[str, bool | None]:
    """Do the two answers split on the length mark? `length_marks_followed_<when>`: each user's answer
    shows that user's side of it (`data.response_styles`: the detailed side's two step sentences);
    `concise_shorter_<when>`: the concise user's answer has fewer tokens, None when both reached
    `max_new_tokens` (cut there, their lengths say nothing)."""
    from alignx_jax import data, preferences

    dim = preferences.dimensions()[data.LENGTH_DIMENSION]
    concise, detailed = answers["concise"], answers["detailed"]
    cut = concise["tokens"] >= max_new_tokens and detailed["tokens"] >= max_new_tokens
    return {f"length_marks_followed_{when}": bool(concise["marks_followed"].get(dim.positive))
            and bool(detailed["marks_followed"].get(dim.negative)),
            f"concise_shorter_{when}": None if cut else concise["tokens"] < detailed["tokens"]}


def _short(persona: str) -> str:
    return persona if len(persona) <= 48 else persona[:45] + "..."


def _plot(groups: dict, metrics_rows: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels, before, after, paper = [], [], [], []
    for name, reports in groups.items():
        for persona, stats in reports["after"]["per_persona"].items():
            labels.append(f"{name}: {_short(persona)[:28]}")
            before.append(reports["before"]["per_persona"][persona]["accuracy_logp"])
            after.append(stats["accuracy_logp"])
            paper.append(stats["accuracy"])
    fig, (bars, curve) = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [2.2, 1]})
    x, w = np.arange(len(labels)), 0.27
    bars.bar(x - w, before, w, label="before (policy-only)")
    bars.bar(x, after, w, label="after (policy-only)")
    bars.bar(x + w, paper, w, label="after (paper's metric)")
    bars.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
    bars.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    bars.set_ylim(0, 1.05)
    bars.set_ylabel("held-out accuracy")
    bars.set_title("Held-out accuracy per persona, before and after training")
    bars.legend(fontsize=8, loc="lower right")
    steps = [r["step"] for r in metrics_rows]
    for key, label in (("loss", "loss (DPO + cross-user)"), ("rewards/accuracies", "reward accuracy (4 pairs)")):
        values = [r[key] for r in metrics_rows]
        line, = curve.plot(steps, values, alpha=0.25, linewidth=0.8)
        curve.plot(steps, moving_average(values, SMOOTHING), color=line.get_color(),
                   label=f"{label}, mean of {SMOOTHING} steps")
    curve.set_xlabel("step")
    curve.set_title("Training")
    curve.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean of the last `window` values at each point (fewer at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def _cis(before: dict, after: dict) -> dict:
    """95% bootstrap CIs of the headline figures (the worst persona's: that persona's own interval)."""
    persona_ci = lambda report, key, ci: report["per_persona"][report[key]][ci]  # noqa: E731
    return {"accuracy_before": before["ci_logp"], "accuracy_after": after["ci_logp"],
            "accuracy_after_paper": after["ci"],
            "worst_persona_before": persona_ci(before, "worst_persona_logp", "ci_logp"),
            "worst_persona_after": persona_ci(after, "worst_persona_logp", "ci_logp"),
            "worst_persona_after_paper": persona_ci(after, "worst_persona", "ci")}


def _headline(reports: dict) -> dict:
    before, after = reports["before"], reports["after"]
    token_before, token_after = reports["before_per_token"], reports["after_per_token"]
    return {"ci": _cis(before, after),
            "accuracy_before": before["accuracy_logp"], "accuracy_after": after["accuracy_logp"],
            "accuracy_after_paper": after["accuracy"], "worst_persona_before": before["worst_persona_accuracy_logp"],
            "worst_persona_after": after["worst_persona_accuracy_logp"],
            "worst_persona_after_paper": after["worst_persona_accuracy"], "n": after["n"],
            "per_persona_before": before["per_persona"], "per_persona_after": after["per_persona"],
            "n_per_persona_min": min(stats["n"] for stats in after["per_persona"].values()),
            "per_token": {"accuracy_before": token_before["accuracy_logp"], "accuracy_after": token_after["accuracy_logp"],
                          "worst_persona_before": token_before["worst_persona_accuracy_logp"],
                          "worst_persona_after": token_after["worst_persona_accuracy_logp"]}}


def run(args: argparse.Namespace) -> int:
    from alignx_jax import evaluation, interop
    from alignx_jax.cli.train import ConsoleReporter
    from alignx_jax.errors import InputError
    from alignx_jax.train import train
    from alignx_jax.train.metrics import read_metrics

    if args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    if args.budget_seconds <= 0:
        raise InputError(f"--budget-seconds must be > 0, got {args.budget_seconds}")
    if args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    psoups = pathlib.Path(args.psoups) if args.psoups else _default_psoups()
    if psoups is not None and not psoups.is_file():
        raise InputError(f"--psoups {psoups}: no such file")
    started = time.perf_counter()
    out = _out_dir(args.out)
    timings = {}
    config = training_config(out, steps=args.steps, seed=args.seed, psoups=psoups)
    users = _opposite_users(args.seed)
    tick = time.perf_counter()
    base = interop.from_pretrained("smollm2-135m-instruct")
    answers_before = _answers(base, users, args.max_new_tokens, with_history=False)
    timings["answers_before_s"] = time.perf_counter() - tick
    tick = time.perf_counter()
    # After training: the same load and answers again, then the export and the PyTorch reload (about as
    # long as a load and answers, measured at 0.6-0.8x here), so the training gets what is left of the budget.
    deadline = started + args.budget_seconds - 2 * timings["answers_before_s"]
    result = train(config, ConsoleReporter(log_every=1), deadline=deadline)
    timings["train_and_eval_s"] = time.perf_counter() - tick
    tick = time.perf_counter()
    trained = interop.from_pretrained(out / "train" / "model")
    answers_after = _answers(trained, users, args.max_new_tokens)
    timings["answers_after_s"] = time.perf_counter() - tick
    tick = time.perf_counter()
    trained.save_hf(out / "hf")
    logit_error = _reload_in_pytorch(out / "hf", out / "train" / "model", trained.tokenizer)
    timings["pytorch_reload_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - started
    groups = evaluation.group_reports(out / "train", config.beta, trained.tokenizer)
    summary = {
        # The headline: held-out synthetic users in mirror pairs (a persona-blind model scores 50%).
        **_headline(groups["synthetic"]),
        "psoups": _headline(groups["psoups"]) if "psoups" in groups else None,
        "steps": result["steps"], "final_loss": result["final_loss"], "budget_seconds": args.budget_seconds,
        "answers": {"post": POST, "before": answers_before, "after": answers_after,
                    **{f"on_topic_{when}": all(a["on_topic"] for a in answers.values())
                       for when, answers in (("before", answers_before), ("after", answers_after))},
                    **length_contrast(answers_before, args.max_new_tokens, when="before"),
                    **length_contrast(answers_after, args.max_new_tokens, when="after")},
        "pytorch_max_logit_difference": logit_error, "pytorch_logits_match": logit_error < 1e-3,
        "timings": timings, "psoups_file": str(psoups) if psoups else None,
    }
    _plot(groups, read_metrics(out / "train"), out / "demo.png")
    summary["seconds"] = time.perf_counter() - started  # the whole demo, as the user waits for it
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _print(summary, groups, out)
    return 0


def _print(summary: dict, groups: dict, out: pathlib.Path) -> None:
    pct = lambda v: f"{100 * v:5.1f}"  # noqa: E731
    titles = {"synthetic": "held-out synthetic users in mirror pairs", "psoups": "held-out P-Soups records"}
    print("\nHeld-out accuracy per persona: policy-only view before -> after, the paper's metric after, and the "
          "policy-only view per token (each response's log-prob over its token count) before -> after")
    for name, reports in groups.items():
        before, after = reports["before"], reports["after"]
        token_before, token_after = reports["before_per_token"], reports["after_per_token"]
        print(f"\n{titles[name]}\n{'':<54} {'policy-only':^13}  {'':5}  {'per token':^13}".rstrip())
        print(f"{'persona':<50} {'n':>3}  before  after  paper  before  after")
        for persona, stats in after["per_persona"].items():
            print(f"{_short(persona):<50} {stats['n']:>3}  {pct(before['per_persona'][persona]['accuracy_logp'])}  "
                  f"{pct(stats['accuracy_logp'])}  {pct(stats['accuracy'])}  "
                  f"{pct(token_before['per_persona'][persona]['accuracy_logp'])}  "
                  f"{pct(token_after['per_persona'][persona]['accuracy_logp'])}")
        print(f"{'mean':<50} {after['n']:>3}  {pct(before['accuracy_logp'])}  {pct(after['accuracy_logp'])}  "
              f"{pct(after['accuracy'])}  {pct(token_before['accuracy_logp'])}  {pct(token_after['accuracy_logp'])}")
        print(f"{'worst persona':<50} {'':>3}  {pct(before['worst_persona_accuracy_logp'])}  "
              f"{pct(after['worst_persona_accuracy_logp'])}  {pct(after['worst_persona_accuracy'])}  "
              f"{pct(token_before['worst_persona_accuracy_logp'])}  {pct(token_after['worst_persona_accuracy_logp'])}")
    answers = summary["answers"]
    print(f"\nPost: {answers['post']}")
    for when in ("before", "after"):
        for user in ("concise", "detailed"):
            a = answers[when][user]
            marks = ", ".join(f"{label} {'yes' if ok else 'no' if ok is not None else '?'}"
                              for label, ok in a["marks_followed"].items())
            print(f"--- {when}, {user} user ({a['tokens']} tokens; on topic: {'yes' if a['on_topic'] else 'no'}; "
                  f"follows: {marks}):\n{a['text']}")
    print(f"\nexported to {out / 'hf'}: PyTorch logits within {summary['pytorch_max_logit_difference']:.1e}")
    print(f"{summary['steps']} training steps, {summary['seconds']:.0f}s in all (budget {summary['budget_seconds']:.0f}s); "
          f"{out / 'summary.json'}, {out / 'demo.png'}")
