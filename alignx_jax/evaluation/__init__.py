"""Layer 4 evaluation: the paper's alignment accuracy per persona, reports, generation, judges.

    rows = evaluation.score_records(records, policy=(params, config), reference=(ref_params, ref_config),
                                    tokenizer=tok, mode="ica")
    report = evaluation.summarize(rows, beta=0.1)   # accuracy, worst_persona_accuracy, per_persona, ...

Both work in memory (the training loop's held-out evaluation); `alignx eval` adds the files
(resumable scores.jsonl, report.json / report.md / plots).
"""
from alignx_jax.evaluation._metrics import (
    DEFAULT_BETA,
    bootstrap_ci,
    breakdown,
    correct,
    correct_logp,
    group_stats,
    reward_margins,
    row_order,
    summarize,
    worst_persona,
)
from alignx_jax.evaluation._modes import (
    MODE_NAMES,
    PERSONA_ITEMS,
    EvalMode,
    IcaMode,
    PbaTextMode,
    item_types,
    persona_history,
    resolve_mode,
)
from alignx_jax.evaluation._scoring import EVAL_SEQ_LENGTHS, iter_scores, score_records
from alignx_jax.evaluation._selection import even_quotas, persona_groups, select_indices

__all__ = [
    "DEFAULT_BETA", "bootstrap_ci", "breakdown", "correct", "correct_logp", "group_stats", "reward_margins",
    "row_order", "summarize", "worst_persona",
    "MODE_NAMES", "PERSONA_ITEMS", "EvalMode", "IcaMode", "PbaTextMode", "item_types", "persona_history",
    "resolve_mode",
    "EVAL_SEQ_LENGTHS", "iter_scores", "score_records",
    "even_quotas", "persona_groups", "select_indices",
]
