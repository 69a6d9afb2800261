"""The end of a run: the final held-out evaluation (in summary.json and on the last step's row of
metrics.jsonl), heldout_scores.jsonl and the exported model (model/: our folder format, LoRA merged,
with a bridge beside it; hf/ with export_hf).

    summary = finish(run, state, held, last_row, eval_rows, started, message)
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable

import jax

from alignx_jax import bridge as bridge_lib
from alignx_jax import evaluation, interop
from alignx_jax import preferences as prefs
from alignx_jax.train import data as train_data
from alignx_jax.train import heldout as heldout_lib
from alignx_jax.train import metrics
from alignx_jax.train.step import TrainState, policy_params


def bridge_summary(run, state: TrainState) -> dict:
    """bridge_macro_f1 (beside the majority-class baseline) and controllability for summary.json."""
    setup = run.bridge
    out = bridge_lib.summary_fields(setup, state.bridge)
    sets = setup.probe_sets or {}
    for name, key in (("edited", "controllability"), ("plain", "probe_accuracy")):
        if name not in sets:
            continue
        held = sets[name]
        soft = bridge_lib.probe_soft_tokens(setup, state.bridge, sets["found"], edited=name == "edited") \
            if setup.soft else None
        chosen, rejected = heldout_lib.scores(run, policy_params(state, run.spec), soft)(held.policy_batches,
                                                                                       len(held.records))
        rows = heldout_lib.rows(held, chosen, rejected)
        report = evaluation.summarize(rows, beta=run.config.beta)
        out.update({key: report["accuracy"], f"{key}_logp": report["accuracy_logp"], f"{key}_n": report["n"],
                    f"{key}_reward": reward_report(rows, beta=run.config.beta)["accuracy"]})
        if name == "edited":
            out.update(per_dimension_controllability(rows, sets["found"], beta=run.config.beta))
    return out


def per_dimension_controllability(rows: list[dict], found, *, beta: float) -> dict:
    """`controllability_per_dimension`: the edited probes grouped by the dimension each flips (its
    positive label): n, the paper's metric and the reward view (`reward_report`);
    `controllability_worst_dimension` (`_reward`): the lowest of them."""
    groups = {}
    for row in rows:
        groups.setdefault(prefs.dimensions()[found[row["index"]].dim].positive, []).append(row)
    per = {label: {"n": len(picked), "accuracy": evaluation.summarize(picked, beta=beta)["accuracy"],
                   "reward_accuracy": reward_report(picked, beta=beta)["accuracy"]}
           for label, picked in sorted(groups.items())}
    return {"controllability_per_dimension": per,
            "controllability_worst_dimension": min((v["accuracy"] for v in per.values()), default=None),
            "controllability_worst_dimension_reward": min((v["reward_accuracy"] for v in per.values()), default=None)}


def _group_reports(rows: list[dict], unseen_personas: frozenset[str], *, beta: float) -> dict[str, dict | None]:
    """{"seen" | "unseen": `evaluation.summarize` of the group's rows, None when it has none}."""
    groups = {group: [r for r in rows if (r["persona"] in unseen_personas) == (group == "unseen")]
              for group in ("seen", "unseen")}
    return {group: evaluation.summarize(picked, beta=beta) if picked else None for group, picked in groups.items()}


def _figures(reports: dict[str, dict | None]) -> dict:
    out = {}
    for group, report in reports.items():
        out.update({f"eval_{group}_{key}": report and report[key] for key in
                    ("accuracy", "accuracy_logp", "worst_persona_accuracy", "worst_persona_accuracy_logp")})
        out[f"eval_{group}_n"] = report["n"] if report else 0
    return out


def seen_unseen_figures(rows: list[dict], unseen_personas: frozenset[str], *, beta: float) -> dict:
    """The held-out records of unseen personas (`eval_unseen_*`: users of dimensions no training user
    marks) and of the others (`eval_seen_*`), each as the whole set's: the paper's metric and the
    policy-only view, mean and worst persona, and n (a group without records: None, n 0). Written
    at every held-out evaluation (metrics.jsonl, `eval_history`) and in summary.json."""
    return _figures(_group_reports(rows, unseen_personas, beta=beta))


def reward_report(rows: list[dict], *, beta: float) -> dict:
    """`evaluation.summarize` of the reward view (`heldout.reward_rows`: the start model in the
    policy's prompt as the reference); its `accuracy` is DPO's implicit-reward accuracy."""
    return evaluation.summarize(heldout_lib.reward_rows(rows), beta=beta)


def evaluation_entry(step: int, rows: list[dict], report: dict, reward: dict, unseen_personas: frozenset[str], *,
                     beta: float) -> dict:
    """A held-out evaluation as metrics.jsonl and `eval_history` hold it: the step, the paper's metric
    and the policy-only view (mean and worst persona), the reward view (mean and worst persona), and
    the seen / unseen figures when the held-out set has unseen personas. `report` is
    `evaluation.summarize(rows)`, `reward` is `reward_report(rows)`."""
    entry = {"step": step, "eval_accuracy": report["accuracy"], "eval_accuracy_logp": report["accuracy_logp"],
             "eval_worst_persona_accuracy": report["worst_persona_accuracy"],
             "eval_worst_persona_accuracy_logp": report.get("worst_persona_accuracy_logp"),
             "eval_reward_accuracy": reward["accuracy"],
             "eval_worst_persona_reward_accuracy": reward["worst_persona_accuracy"]}
    if unseen_personas:
        entry.update(seen_unseen_figures(rows, unseen_personas, beta=beta))
    return entry


def seen_unseen_fields(rows: list[dict], before_rows: list[dict], unseen_personas: frozenset[str], *,
                       beta: float) -> dict:
    """summary.json's seen / unseen figures: `seen_unseen_figures`, each group's per persona, and the
    start model's policy-only view (None for a group without scored records)."""
    reports = _group_reports(rows, unseen_personas, beta=beta)
    befores = _group_reports(before_rows, unseen_personas, beta=beta)
    out = _figures(reports)
    for group, report in reports.items():
        before = befores[group] if report else None
        out.update({
            f"per_persona_{group}": report and report["per_persona"],
            f"eval_{group}_accuracy_logp_before": before and before["accuracy_logp"],
            f"eval_{group}_worst_persona_accuracy_logp_before": before and before["worst_persona_accuracy_logp"],
        })
    return out


def finish(run, state: TrainState, held, last_row: dict, eval_rows: list, started: float,
           message: Callable[[str], None]) -> dict:
    """The final evaluation, the exported model and summary.json (returned). `eval_rows`: the run's
    earlier evaluations (`evaluation_entry`), those of the sessions before a resume included; the
    final one joins the last step's row of metrics.jsonl, so a run extended later keeps it."""
    config = run.config
    final_params = policy_params(state, run.spec)
    report = before = reward = None
    if held is not None:
        rows = heldout_lib.policy_rows(run, held, state)
        before_rows = heldout_lib.rows(held, held.start_chosen, held.start_rejected)
        report = evaluation.summarize(rows, beta=config.beta)
        before = evaluation.summarize(before_rows, beta=config.beta)
        reward = reward_report(rows, beta=config.beta)
        if jax.process_index() == 0:  # per record, the trained policy's and the start model's log-probs
            with (run.out_dir / "heldout_scores.jsonl").open("w") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)
            metrics.add_to_row(run.out_dir, evaluation_entry(int(state.step), rows, report, reward,
                                                             run.splits.unseen_personas, beta=config.beta))
    summary = {
        "steps": int(state.step), "final_loss": last_row.get("loss"),
        "eval_accuracy": report and report["accuracy"], "eval_accuracy_logp": report and report["accuracy_logp"],
        "eval_worst_persona_accuracy": report and report["worst_persona_accuracy"],
        "eval_worst_persona_accuracy_logp": report and report.get("worst_persona_accuracy_logp"),
        "eval_n": report and report["n"], "per_persona": report and report["per_persona"], "eval_history": eval_rows,
        # The start model as the policy: the policy-only view, and the paper's metric (0 where the policy's
        # prompt is the reference's, every margin a tie; else what the untrained model scores, e.g. PBA).
        "eval_accuracy_before": before and before["accuracy"],
        "eval_worst_persona_accuracy_before": before and before["worst_persona_accuracy"],
        "eval_accuracy_logp_before": before and before["accuracy_logp"],
        "eval_worst_persona_accuracy_logp_before": before and before["worst_persona_accuracy_logp"],
        "per_persona_before": before and before["per_persona"],
        # DPO's implicit reward against the start model in the policy's own prompt (`reward_report`).
        "eval_reward_accuracy": report and reward["accuracy"], "eval_reward_accuracy_ci": report and reward["ci"],
        "eval_worst_persona_reward_accuracy": report and reward["worst_persona_accuracy"],
        "per_persona_reward": report and reward["per_persona"],
        "wall_time_s": time.perf_counter() - started, "reference": config.reference, "loss": config.loss,
        "model": config.model.name, "train_records": len(run.splits.train), "heldout_records": len(run.splits.heldout),
    }
    if report is not None and run.splits.unseen_personas:
        summary.update(seen_unseen_fields(rows, before_rows, run.splits.unseen_personas, beta=config.beta))
    model_dir = run.out_dir / "model"
    export_config = run.model.replace(remat=False, attention_impl="auto")
    # orbax writes the (sharded) parameters collectively: every process calls it.
    interop.save_native(final_params, export_config, model_dir, tokenizer=run.tokenizer)
    if run.bridge is not None:
        summary.update(bridge_summary(run, state))
        if jax.process_index() == 0:  # beside the policy, for `alignx eval --mode pba_soft` and `alignx generate`
            bridge_lib.save(model_dir / bridge_lib.FOLDER, bridge_lib.saved_bridge(run.bridge, state.bridge))
    if config.export_hf:
        # One layer's weight at a time reaches the hosts (every process takes part in each gather, in
        # table order); process 0 writes. Gathering the whole model first put all of it (fp32: ~280 GB
        # for 70B) into every host's memory.
        interop.save_hf(final_params, export_config, run.out_dir / "hf", tokenizer=run.tokenizer,
                        to_host=train_data.to_host, write=jax.process_index() == 0)
    if jax.process_index() == 0:
        (run.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        message(f"wrote {model_dir} and {run.out_dir / 'summary.json'}")
    if jax.process_count() > 1:  # the others wait for process 0's files, then all shut down together
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("alignx train: outputs written")
    return summary
