"""Held-out evaluation during training: the paper's alignment accuracy and the policy-only view.

The reference never changes during a run, so its held-out log-probs are computed once, before the
first step (with the few-shot persona prompt, the official reference); each evaluation then runs
only the policy. With LoRA on the top K layers (`lora.layers`), the output of the base layers below
is kept from that first pass (`PairScorer.trunk`, up to `TRUNK_CACHE_BYTES` per device), so each
evaluation runs only the top K layers. The scoring is `evaluation.PairScorer` on the run's mesh (the service `alignx eval`
uses): every process packs the same held-out batches and feeds its slice of the rows, so the same
code serves one device, a mesh and several hosts. Scores are summarized per persona by
`evaluation.summarize` (worst persona beside the mean).

    held = begin(run, state)                  # packed, the reference and the start model scored
    rows = policy_rows(run, held, state)      # the rows of `alignx eval`'s scores.jsonl
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from alignx_jax import bridge as bridge_lib
from alignx_jax import data
from alignx_jax.train import bridge as bridge_train
from alignx_jax.train.config import DataConfig, EvalConfig
from alignx_jax.train.step import TrainState, policy_params

# score(batches, num_records) -> (chosen, rejected) per record: `PairScorer.score_records` with params bound
Score = Callable[[Sequence[Mapping[str, np.ndarray]], int], tuple[np.ndarray, np.ndarray]]
TRUNK_CACHE_BYTES = 2**30  # per device: the held-out trunk states kept between evaluations, at most


@dataclasses.dataclass
class HeldOut:
    """Packed held-out batches (policy layout and, when it differs, the reference layout) and the
    reference log-probs per record (filled by `score_reference`)."""

    records: list[dict]
    policy_batches: list[dict[str, np.ndarray]]
    reference_batches: list[dict[str, np.ndarray]]
    policy_prompts: list[str]
    reference_prompts: list[str]
    ref_chosen: np.ndarray | None = None
    ref_rejected: np.ndarray | None = None
    start_chosen: np.ndarray | None = None  # the start model as the policy (the "before" view)
    start_rejected: np.ndarray | None = None
    trunks: list | None = None  # per policy batch, the base layers' output below the adapters (kept on the mesh)
    trunk_layers: int = 0
    policy_share: float = 1.0  # a policy evaluation's cost as a share of the first pass (the whole model)


def _pack(records, tokenizer, fmt: data.PromptFormat, packing: data.PackingConfig, seed: int,
          on_long_response: str) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    """Batches in record order, and the rendered prompt text of each record ('' when dropped)."""
    pairs, prompts = [], []
    for index, record in enumerate(records):
        pair, _ = data.encode_record(record, index, tokenizer=tokenizer, prompt_format=fmt, seed=seed,
                                     max_length=packing.max_length, on_long_response=on_long_response)
        pairs.append(pair)
        prompts.append(tokenizer.decode(pair.prompt) if pair is not None else "")
    return [b.as_dict() for b in data.pack_stream(pairs, packing)], prompts


def prepare(records: Sequence[Mapping[str, Any]], *, tokenizer, data_config: DataConfig, eval_config: EvalConfig,
            seed: int, policy_format: Mapping[str, Any] | None = None,
            rows_for: Callable[[int], int] = lambda rows: rows) -> HeldOut:
    """Render and pack the held-out records: the policy sees the persona in the run's format (ICA
    history or PBA profile), the reference sees the few-shot ICA prompt (official evaluation).
    `policy_format`: PromptFormat fields that replace the run's (a bridge's soft slots or profiles);
    `rows_for`: `eval.rows` rounded to what the scorer's mesh holds (`PairScorer.rows_for`)."""
    records = list(records)
    if eval_config.limit is not None:
        records = [records[i] for i in data.take_evenly(records, eval_config.limit)]
    packing = data.PackingConfig(rows=rows_for(eval_config.rows), seq_lengths=data_config.seq_lengths,
                                 max_pairs_per_row=data_config.max_pairs_per_row)
    evaluation = eval_config.layout == "evaluation"
    policy_format = data.PromptFormat(**{**dict(kind=data_config.prompt, profile=data_config.profile,
                                                evaluation=evaluation, history=eval_config.history),
                                         **(policy_format or {})})
    reference_format = data.PromptFormat(kind="ica", evaluation=evaluation, history=eval_config.history)
    pack = lambda fmt: _pack(records, tokenizer, fmt, packing, seed, data_config.on_long_response)  # noqa: E731
    policy_batches, policy_prompts = pack(policy_format)
    if reference_format == policy_format:
        reference_batches, reference_prompts = policy_batches, policy_prompts
    else:
        reference_batches, reference_prompts = pack(reference_format)
    return HeldOut(records, policy_batches, reference_batches, policy_prompts, reference_prompts)


def score_start(heldout: HeldOut, score: Score, start_score: Score | None = None, *,
                reference: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Score once, before the steps: the reference (few-shot prompt) with `score`, and the untrained
    policy (the run's prompt) with `start_score`, which defaults to `score` (the start model is the
    reference, unless an LM warm-up made the reference); shared when the prompts are the same too.
    `reference`: the reference's (chosen, rejected) log-probs, already known."""
    heldout.ref_chosen, heldout.ref_rejected = reference or score(heldout.reference_batches, len(heldout.records))
    if start_score is None and heldout.policy_batches is heldout.reference_batches:
        heldout.start_chosen, heldout.start_rejected = heldout.ref_chosen, heldout.ref_rejected
    else:
        heldout.start_chosen, heldout.start_rejected = (start_score or score)(heldout.policy_batches,
                                                                              len(heldout.records))


def rows(heldout: HeldOut, policy_chosen: np.ndarray, policy_rejected: np.ndarray) -> list[dict]:
    """Per-record score rows (the keys of `alignx eval`'s scores.jsonl, and, once the start model is
    scored, its log-probs in the policy's prompt: `start_chosen_logp`, `start_rejected_logp`), dropped
    records left out."""
    out = []
    for i, record in enumerate(heldout.records):
        values = (policy_chosen[i], policy_rejected[i], heldout.ref_chosen[i], heldout.ref_rejected[i])
        if any(np.isnan(v) for v in values):
            continue
        row = {"index": i, "persona": data.persona_key(record), "policy_prompt": heldout.policy_prompts[i],
               "reference_prompt": heldout.reference_prompts[i], "chosen": record["chosen"],
               "rejected": record["rejected"], "policy_chosen_logp": float(values[0]),
               "policy_rejected_logp": float(values[1]), "ref_chosen_logp": float(values[2]),
               "ref_rejected_logp": float(values[3])}
        if heldout.start_chosen is not None:
            row.update(start_chosen_logp=float(heldout.start_chosen[i]),
                       start_rejected_logp=float(heldout.start_rejected[i]))
        out.append(row)
    return out


def reward_rows(score_rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The rows with the start model in the policy's own prompt as their reference: summarized, they
    give DPO's implicit-reward accuracy, [log pi(y_w|x) - log pi_0(y_w|x)] > [log pi(y_l|x) -
    log pi_0(y_l|x)] with x the policy's prompt (what the step optimizes and `rewards/accuracies`
    reports on training pairs), where the paper's metric takes the reference under the few-shot prompt."""
    return [dict(row, ref_chosen_logp=row["start_chosen_logp"], ref_rejected_logp=row["start_rejected_logp"])
            for row in score_rows]


def scores(run, params, soft_tokens: np.ndarray | None = None, held: HeldOut | None = None) -> Score:
    """`Score` of `params` (the run's model) on the run's mesh; soft_tokens [records, K, D]: a bridge
    run's policy, each pair's looked up by its record (None: the slots' placeholder tokens). With
    `held`, its kept trunks serve its policy batches (only the layers above them run)."""
    def score(batches, num_records):
        trunks = held.trunks if held is not None and batches is held.policy_batches else None
        return run.scorer.score_records(params, run.model, batches, num_records, soft_tokens=soft_tokens,
                                        trunks=trunks, trunk_layers=held.trunk_layers if trunks else 0)
    return score


def _keep_trunks(run, held: HeldOut, base_params) -> None:
    """Keep the held-out policy batches' trunk states (the base layers below the LoRA adapters) when
    the run shares a trunk and they fit `TRUNK_CACHE_BYTES` per device."""
    below = run.spec.trunk_layers
    if not below:
        return
    shards = run.scorer.row_multiple
    itemsize = np.dtype(run.model.dtype).itemsize
    size = sum(b["tokens"].size for b in held.policy_batches) * run.model.hidden_size * itemsize / shards
    if size > TRUNK_CACHE_BYTES:
        return
    held.trunks = [run.scorer.trunk(base_params, run.model, b, layers=below) for b in held.policy_batches]
    held.trunk_layers, held.policy_share = below, 1.0 - below / run.model.num_layers


def begin(run, state: TrainState) -> HeldOut:
    """The held-out set packed, its reference and start-model log-probs computed (and a bridge run's
    controllability probes, the reference scored)."""
    config = run.config
    held = prepare(run.splits.heldout, tokenizer=run.tokenizer, data_config=config.data, eval_config=config.eval,
                   seed=config.seed, policy_format=bridge_train.heldout_format(run.bridge),
                   rows_for=run.scorer.rows_for)
    reference = state.frozen if state.frozen is not None else run.start_params()
    _keep_trunks(run, held, reference)
    reference_score = scores(run, reference, held=held)
    # The "before" figures are the start model's; after an LM warm-up the reference is not it.
    start_score = scores(run, run.start_params()) if config.lm_warmup.steps > 0 else None
    score_start(held, reference_score, start_score)
    if run.bridge is not None:
        run.bridge.probe_sets = probe_sets(run, reference_score)
    return held


def policy_rows(run, held: HeldOut, state: TrainState) -> list[dict]:
    """Score rows (the keys of `alignx eval`'s scores.jsonl) of the held-out records under the policy."""
    soft = None if run.bridge is None else bridge_lib.records_soft_tokens(run.bridge, state.bridge, held.records)
    chosen, rejected = scores(run, policy_params(state, run.spec), soft, held)(held.policy_batches, len(held.records))
    return rows(held, chosen, rejected)


def probe_sets(run, reference_score: Score) -> dict:
    """Controllability probes (held-out pairs contrasting on one dimension), packed as held-out sets
    ('edited': swapped, the dimension flipped; 'plain': as the user chose), the reference scored."""
    found = bridge_lib.probes(run.bridge, run.config.bridge.probes)
    sets = {"found": found}
    if not found:
        return sets
    for name in ("plain", "edited"):
        held = prepare(bridge_lib.probe_records(run.bridge, found, edited=name == "edited"),
                       tokenizer=run.tokenizer, data_config=run.config.data,
                       eval_config=dataclasses.replace(run.config.eval, limit=None), seed=run.config.seed,
                       policy_format=bridge_train.heldout_format(run.bridge), rows_for=run.scorer.rows_for)
        # The reference's few-shot prompt reads the history, never the profile or soft tokens that an
        # edit changes: an edited probe's reference log-probs are its plain pair's, swapped.
        plain = sets.get("plain")
        score_start(held, reference_score, reference=plain and (plain.ref_rejected, plain.ref_chosen))
        sets[name] = held
    return sets
