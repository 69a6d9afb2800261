"""Layer 4 evaluation: the paper's alignment accuracy per persona, reports, generation, judges.

    rows = evaluation.score_records(records, policy=(params, config), reference=(ref_params, ref_config),
                                    tokenizer=tok, mode="ica", mesh=mesh)
    report = evaluation.summarize(rows, beta=0.1)   # accuracy, worst_persona_accuracy, per_persona, ...

`PairScorer` is the one scoring service: packed pair batches on a mesh (training's rules) ->
log-probs per pair or per record. `score_records` / `iter_scores` (records -> score rows), the
training run's held-out evaluation and its reference cache all call it. `evaluate_to_folder`
(what `alignx eval` runs) adds the files: a resumable scores.jsonl, report.json / report.md / plots.
`iter_generations` and the judges (`LocalJudge`, `HttpJudge`) serve win-rate studies.
"""
from alignx_jax.evaluation._generation import PAPER_SAMPLING, generate_ids, iter_generations, prompt_ids
from alignx_jax.evaluation._jsonl import RowWriter, read_rows
from alignx_jax.evaluation._judge import (
    HttpJudge,
    LocalJudge,
    judge_pairs,
    judge_prompt,
    pair_generations,
    summarize_judgments,
)
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
    PROFILE_SOURCES,
    REFERENCE_PROMPTS,
    EvalMode,
    IcaMode,
    PbaSoftMode,
    PbaTextMode,
    item_types,
    persona_history,
    resolve_mode,
)
from alignx_jax.evaluation._report import compare, markdown, write_report
from alignx_jax.evaluation._run import check_folder, evaluate_to_folder, file_fingerprint, model_fingerprint
from alignx_jax.evaluation._scorer import PairScorer
from alignx_jax.evaluation._scoring import EVAL_SEQ_LENGTHS, iter_scores, score_records
from alignx_jax.evaluation._selection import select_indices
from alignx_jax.evaluation._views import group_reports, per_token, scored_tokens

__all__ = [
    "PAPER_SAMPLING", "generate_ids", "iter_generations", "prompt_ids",
    "RowWriter", "read_rows",
    "HttpJudge", "LocalJudge", "judge_pairs", "judge_prompt", "pair_generations", "summarize_judgments",
    "compare", "markdown", "write_report", "check_folder", "evaluate_to_folder", "file_fingerprint",
    "model_fingerprint",
    "DEFAULT_BETA", "bootstrap_ci", "breakdown", "correct", "correct_logp", "group_stats", "reward_margins",
    "row_order", "summarize", "worst_persona",
    "MODE_NAMES", "PERSONA_ITEMS", "PROFILE_SOURCES", "REFERENCE_PROMPTS", "EvalMode", "IcaMode", "PbaSoftMode",
    "PbaTextMode", "item_types",
    "persona_history",
    "resolve_mode",
    "PairScorer", "EVAL_SEQ_LENGTHS", "iter_scores", "score_records",
    "select_indices",
    "group_reports", "per_token", "scored_tokens",
]
