"""`alignx demo`'s summary: the headline figures it reads from a run's held-out reports
(`evaluation.group_reports`, tested in tests/evaluation/test_views.py) and the answers' length marks."""
import pytest

from alignx_jax import data, evaluation, preferences
from alignx_jax.cli import demo


def test_headline_reads_the_synthetic_group(heldout_run_dir, word_tokenizer):
    synthetic = evaluation.group_reports(heldout_run_dir, 0.1, word_tokenizer)["synthetic"]
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


def test_moving_average_is_the_trailing_mean():
    assert demo.moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert demo.moving_average([2.0, 4.0], 10) == [2.0, 3.0]


def test_the_demo_trains_twin_pairs_with_the_cross_user_term(tmp_path):
    config = demo.training_config(tmp_path, steps=5, seed=0, psoups=None)
    assert config.data.twins and config.twin_loss == "cross_user"
    assert config.loss == "sigmoid" and not config.loss_hparams  # no NLL term (the recipe study)
    assert config.data.heldout_synthetic.users == 4 and config.data.heldout_synthetic.records_per_user == 20
