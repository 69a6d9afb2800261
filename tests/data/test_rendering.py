"""Rendering: exact strings of the official layouts, the official history draw, chat wrapping."""
import collections

import numpy as np
import pytest

from alignx_jax import data

D1, D0 = [1.0] + [0.5] * 89, [0.0] + [0.5] * 89
RECORD = {
    "prompt": "Is tea better than coffee?",
    "chosen": "Tea!", "rejected": "Coffee.",
    "Preference Direction": [1.0] * 2 + [0.5] * 88,
    "Demographic Information": "A 30-year-old teacher.",
    "User-Generated Content": [{"prompt": "Cats?", "comment": "Love them.", "Preference Direction": D1},
                               {"prompt": "Rain?", "comment": "Cosy.", "Preference Direction": D1}],
    "Pair-wise Comparative Feedback": [{"prompt": "Jazz?", "chosen": "Yes", "rejected": "No", "Preference Direction": D0}],
}

UGC_TEXT = ("**This person has commented on some posts:**\n\n"
            "1. *Post:*\nCats?\n\n*Comment:*\nLove them.\n\n"
            "2. *Post:*\nRain?\n\n*Comment:*\nCosy.\n\n")
PAIR_TEXT = ("**This person has chosen or rejected comments on some posts:**\n\n"
             "1. *Post:*\nJazz?\n\n*Chosen:*\nYes\n\n*Rejected:*\nNo\n\n")


def test_ica_train_layout():
    prompt = data.ica_train_prompt(RECORD["prompt"], data.full_history(RECORD))
    assert prompt.system == "Generate a task-specific response based on user historical behavior.\n"
    assert prompt.user == ("***Task***\n\nIs tea better than coffee?\n\n***Historical Behavior***\n\n"
                           + UGC_TEXT + PAIR_TEXT + "\n\n***Response:***\n\n")


def test_ica_eval_and_reference_layout():
    # The official eval scripts: task = "**Post:**\n{prompt}\n\n", then the section header directly.
    for render in (data.ica_eval_prompt, data.reference_prompt):
        prompt = render(RECORD["prompt"], data.full_history(RECORD))
        assert prompt.system == "Generate a task-specific response based on user historical behavior and preferences.\n"
        assert prompt.user == ("***Task***\n\n**Post:**\nIs tea better than coffee?\n\n"
                               "***Historical Behavior and User Preferences***\n\n"
                               + UGC_TEXT + PAIR_TEXT + "A 30-year-old teacher.\n\n***Response:***\n\n")


def test_sections_are_empty_without_items():
    empty = data.History()
    assert data.ugc_section(empty) == data.pair_section(empty) == ""
    assert data.ica_train_prompt("Q", empty).user == "***Task***\n\nQ\n\n***Historical Behavior***\n\n\n\n***Response:***\n\n"


def test_pba_layouts_and_profiles(official_labels):
    history = data.full_history(RECORD)
    official = data.record_profile(RECORD, history, "official")  # dim 0 mean (1+1+0)/3 = 0.667
    assert official == "Young"
    assert data.record_profile(RECORD, history, "golden") == "Young, Female"
    with pytest.raises(ValueError, match="precomputed profile needs the record's 'profile' field"):
        data.record_profile(RECORD, history, "precomputed")
    assert data.record_profile(dict(RECORD, profile="Older"), history, "precomputed") == "Older"
    train = data.pba_prompt("Q?", "Young", evaluation=False)
    assert train.system == "Generate a task-specific response based on user preferences.\n"
    assert train.user == "***Task***\n\nQ?\n\n***User Preferences***\n\nYoung\n\n***Response:***\n\n"
    evaluation = data.pba_prompt("Q?", "Young", evaluation=True)
    assert evaluation.user == "***Task***\n\n**Post:**\nQ?\n\n***User Preferences***\n\nYoung\n\n***Response:***\n\n"


def test_official_profile_needs_item_directions():
    record = dict(RECORD, **{"Pair-wise Comparative Feedback": [{"prompt": "q", "chosen": "a", "rejected": "b"}]})
    with pytest.raises(ValueError, match=r"history items \[2\] carry no 'Preference Direction'"):
        data.record_profile(record, data.full_history(record), "official")


def test_sample_history_follows_the_official_draw():
    ugc = [{"prompt": f"u{i}", "comment": "c"} for i in range(6)]
    pairs = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(2)]
    record = {"prompt": "Q", "User-Generated Content": ugc, "Pair-wise Comparative Feedback": pairs}
    counts = collections.Counter()
    for seed in range(2000):
        h = data.sample_history(record, np.random.default_rng(seed))
        counts[(len(h.ugc), len(h.pairs))] += 1
        assert len({it["prompt"] for it in h.ugc}) == len(h.ugc)  # without replacement
    # ugc count u = U{0..4} (6 available); pair count p = min(U{0..4}, 2), so P(p=2) = 3/5;
    # a (0, 0) draw (probability 1/25) becomes (4, 2).
    assert set(counts) == {(u, p) for u in range(5) for p in range(3)} - {(0, 0)}
    assert counts[(4, 2)] / 2000 == pytest.approx(1 / 5 * 3 / 5 + 1 / 25, abs=0.025)
    assert counts[(1, 0)] / 2000 == pytest.approx(1 / 5 * 1 / 5, abs=0.015)
    a = data.sample_history(record, np.random.default_rng([5, 7]))
    assert a == data.sample_history(record, np.random.default_rng([5, 7]))


def test_without_last_item_drops_pairs_then_ugc():
    h = data.full_history(RECORD)
    assert h.without_last_item() == data.History(ugc=h.ugc, pairs=(), demographics=h.demographics)
    assert h.without_last_item().without_last_item().ugc == h.ugc[:1]
    with pytest.raises(ValueError, match="no item left"):
        data.History().without_last_item()


def test_chat_wrapping_with_the_embedded_tokenizer():
    interop = pytest.importorskip("alignx_jax.interop")
    tokenizer = interop.load_tokenizer("smollm2-135m-instruct")
    prompt = data.ica_train_prompt("Q?", data.full_history(RECORD))
    text = data.chat_text(tokenizer, prompt)
    assert text == (f"<|im_start|>system\n{prompt.system}<|im_end|>\n<|im_start|>user\n{prompt.user}<|im_end|>\n"
                    "<|im_start|>assistant\n")
    pair = data.encode_pair(tokenizer, lambda h: data.ica_train_prompt("Q?", h), data.full_history(RECORD),
                            "Tea!", "Coffee.", max_length=1024)
    # The template already starts with BOS (<|im_start|>): not doubled; responses end with EOS.
    assert pair.prompt[0] == tokenizer.bos_token_id != pair.prompt[1]
    assert pair.prompt.tolist() == tokenizer.encode(text, add_special_tokens=False)
    assert pair.chosen.tolist() == tokenizer.encode("Tea!", add_special_tokens=False) + [tokenizer.eos_token_id]
