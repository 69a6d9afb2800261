"""`alignx demo`'s summary: the headline figures it reads from a run's held-out reports
(`evaluation.group_reports`, tested in tests/evaluation/test_views.py) and the answers' length marks."""
import json

import pytest

from alignx_jax import data, evaluation, preferences
from alignx_jax.cli import demo


class WordTokenizer:
    """One token per word: the packer scores a response's ids plus EOS, so "a b c" counts 4 tokens."""

    def encode(self, text, add_special_tokens=False):
        assert not add_special_tokens
        return text.split()


def _row(index, record, *, policy, start):
    """A held-out score row; `policy` / `start`: (chosen, rejected) log-probs; the reference is the start."""
    return {"index": index, "persona": record["persona"], "chosen": "a b c", "rejected": "a",
            "policy_chosen_logp": policy[0], "policy_rejected_logp": policy[1],
            "ref_chosen_logp": start[0], "ref_rejected_logp": start[1],
            "start_chosen_logp": start[0], "start_rejected_logp": start[1]}


@pytest.fixture
def train_dir(tmp_path):
    records = data.synthetic_records(2, seed=0, records_per_user=1, history_items=1)
    records.append(dict(records[0], **{preferences.GROUND_TRUTH_PERSONA: "Be friendly."}))
    data.write_records(records, tmp_path / "heldout.json")
    personas = [{"persona": "A"}, {"persona": "B"}, {"persona": "Be friendly."}]
    rows = [
        # chosen 4 tokens, rejected 2. After: sum -8 < -6 (wrong), per token -2 > -3 (right).
        _row(0, personas[0], policy=(-8.0, -6.0), start=(-12.0, -4.0)),  # start: -3 < -2 per token (wrong)
        # After: sum -5 > -6 (right), per token -1.25 > -3 (right); start: -4 > -10 (right), -1 > -5.
        _row(1, personas[1], policy=(-5.0, -6.0), start=(-4.0, -10.0)),
        _row(2, personas[2], policy=(-1.0, -9.0), start=(-9.0, -1.0)),
    ]
    (tmp_path / "heldout_scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_headline_reads_the_synthetic_group(train_dir):
    synthetic = evaluation.group_reports(train_dir, 0.1, WordTokenizer())["synthetic"]
    headline = demo._headline(synthetic)
    assert (headline["accuracy_before"], headline["accuracy_after"], headline["worst_persona_after"]) == (0.5, 0.5, 0.0)
    assert headline["n_per_persona_min"] == 1
    assert headline["per_token"] == {"accuracy_before": 0.5, "accuracy_after": 1.0,
                                     "worst_persona_before": 0.0, "worst_persona_after": 1.0}


def _answer(tokens, side, followed):
    """A generated answer: its token count and whether it shows the length mark's `side` ("positive":
    concise, "negative": detailed), under that side's label as `_answers` writes it."""
    label = getattr(preferences.dimensions()[data.LENGTH_DIMENSION], side)
    return {"tokens": tokens, "marks_followed": {label: followed}}


@pytest.mark.parametrize("concise, detailed, expected", [
    ((60, True), (60, True), (True, None)),
    ((30, True), (60, False), (False, True)),
    ((60, None), (45, True), (False, False)),
])
def test_length_contrast_reads_the_marks_and_says_none_when_both_answers_were_cut(concise, detailed, expected):
    answers = {"concise": _answer(concise[0], "positive", concise[1]),
               "detailed": _answer(detailed[0], "negative", detailed[1])}
    got = demo.length_contrast(answers, 60, when="after")
    assert (got["length_marks_followed_after"], got["concise_shorter_after"]) == expected


@pytest.mark.parametrize("answer, expected", [
    ("Fine, here is the answer. About a job interview tomorrow: go for it, but keep it simple.", True),
    ("For the interview, sleep well tonight.", False),  # one of job, interview, tomorrow
    ("Your JOB interview: prepare two stories.", True),  # two of three, any case
    ("Fine, here is the answer. About the new telescope images: go for it, but keep it simple.", False),
    ("", False),
])
def test_on_topic_needs_half_of_the_posts_subject_words(answer, expected):
    assert demo.on_topic(demo.POST, answer) is expected


def test_on_topic_is_false_for_a_post_of_filler_only():
    assert demo.on_topic("Any thoughts?", "Any thoughts? Sure.") is False
