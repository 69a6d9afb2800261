"""score_records: per-record log-probs equal an independent full-logits computation on the
unpacked sequence, and the accuracy equals the hand formula (ties wrong)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignx_jax import data, evaluation
from alignx_jax.models import llama
from alignx_jax.models import sharding as model_sharding


def sequence_logp(model, tokenizer, prompt: data.ChatPrompt, response: str) -> float:
    """log p(response + EOS | prompt) from full logits of one causal sequence (no packing code)."""
    params, config = model
    prompt_ids = [tokenizer.bos_token_id] + tokenizer.encode(data.chat_text(tokenizer, prompt), add_special_tokens=False)
    response_ids = tokenizer.encode(response, add_special_tokens=False) + [tokenizer.eos_token_id]
    ids = prompt_ids + response_ids
    width = -(-len(ids) // 256) * 256  # right padding: a causal model's earlier positions do not see it
    tokens = jnp.asarray([ids + [0] * (width - len(ids))], jnp.int32)
    logp = np.asarray(jax.nn.log_softmax(_forward(params, tokens, config)[0].astype(jnp.float32), -1), np.float64)
    start = len(prompt_ids)
    return float(sum(logp[start - 1 + k, t] for k, t in enumerate(response_ids)))


_forward = jax.jit(llama.forward, static_argnames=("config",))


def hand_scores(records, policy, reference, tokenizer, policy_prompt, reference_reads_policy=False):
    out = []
    for r in records:
        history = data.full_history(r)
        pol_prompt = policy_prompt(r, history)
        ref_prompt = pol_prompt if reference_reads_policy else data.reference_prompt(r["prompt"], history)
        out.append([sequence_logp(policy, tokenizer, pol_prompt, r["chosen"]),
                    sequence_logp(policy, tokenizer, pol_prompt, r["rejected"]),
                    sequence_logp(reference, tokenizer, ref_prompt, r["chosen"]),
                    sequence_logp(reference, tokenizer, ref_prompt, r["rejected"])])
    return np.array(out)


def logps(rows):
    return np.array([[r["policy_chosen_logp"], r["policy_rejected_logp"], r["ref_chosen_logp"], r["ref_rejected_logp"]]
                     for r in rows])


def test_ica_scores_and_accuracy_equal_the_hand_computation(records, tiny_models, byte_tokenizer):
    policy, reference = tiny_models
    rows = evaluation.score_records(records, policy=policy, reference=reference, tokenizer=byte_tokenizer, mode="ica")
    want = hand_scores(records, policy, reference, byte_tokenizer, lambda r, h: data.ica_eval_prompt(r["prompt"], h))
    np.testing.assert_allclose(logps(rows), want, rtol=1e-5, atol=1e-4)
    beta = 0.1
    margin = beta * ((want[:, 0] - want[:, 2]) - (want[:, 1] - want[:, 3]))
    report = evaluation.summarize(rows, beta=beta)
    assert report["accuracy"] == pytest.approx(np.mean(margin > 0))
    assert report["accuracy_logp"] == pytest.approx(np.mean(want[:, 0] > want[:, 1]))
    assert [r["correct"] for r in rows] == (margin > 0).tolist()
    for r, record in zip(rows, records):
        expected = data.chat_text(byte_tokenizer, data.ica_eval_prompt(record["prompt"], data.full_history(record)))
        assert r["policy_prompt"] == r["reference_prompt"] == expected
        assert r["persona"] == record["ground_truth_persona"] and r["item_types"] == "ugc+pair+demo"
        assert r["chosen_tokens"] == len(record["chosen"].encode()) + 1 and not r["truncated"]
    assert [r["index"] for r in rows] == list(range(len(records)))


def test_same_model_is_scored_once_and_every_pair_ties(records, tiny_models, byte_tokenizer):
    policy, _ = tiny_models
    rows = evaluation.score_records(records, policy=policy, reference=policy, tokenizer=byte_tokenizer)
    got = logps(rows)
    np.testing.assert_array_equal(got[:, :2], got[:, 2:])
    report = evaluation.summarize(rows)
    assert report["accuracy"] == 0.0  # every reward margin is exactly 0: ties are wrong
    assert report["accuracy_logp"] == pytest.approx(np.mean(got[:, 0] > got[:, 1]))


def test_pba_text_policy_prompt_with_the_few_shot_reference(records, tiny_models, byte_tokenizer):
    policy, reference = tiny_models
    rows = evaluation.score_records(records, policy=policy, reference=reference, tokenizer=byte_tokenizer,
                                    mode="pba_text")

    def pba(record, history):
        return data.pba_prompt(record["prompt"], data.record_profile(record, history, "official"), evaluation=True)

    np.testing.assert_allclose(logps(rows), hand_scores(records, policy, reference, byte_tokenizer, pba),
                               rtol=1e-5, atol=1e-4)
    assert "***User Preferences***" in rows[0]["policy_prompt"] and rows[0]["policy_prompt"] != rows[0]["reference_prompt"]


@pytest.mark.parametrize("mode_name", ["pba_text", "ica"])
def test_a_reference_reading_the_policys_prompt_gives_the_reward_view(records, tiny_models, byte_tokenizer,
                                                                       mode_name):
    policy, reference = tiny_models
    def prompt(record, history):  # the training layouts
        if mode_name == "ica":
            return data.ica_train_prompt(record["prompt"], history)
        return data.pba_prompt(record["prompt"], data.record_profile(record, history, "golden"), evaluation=False)

    mode = evaluation.resolve_mode(mode_name, layout="train", profile="golden", reference_prompt="policy")
    rows = evaluation.score_records(records, policy=policy, reference=reference, tokenizer=byte_tokenizer, mode=mode)
    want = hand_scores(records, policy, reference, byte_tokenizer, prompt, reference_reads_policy=True)
    np.testing.assert_allclose(logps(rows), want, rtol=1e-5, atol=1e-4)
    assert all(r["reference_prompt"] == r["policy_prompt"] for r in rows)
    margin = (want[:, 0] - want[:, 2]) - (want[:, 1] - want[:, 3])
    assert evaluation.summarize(rows)["accuracy"] == pytest.approx(np.mean(margin > 0))
    few_shot = evaluation.score_records(records, policy=policy, reference=reference, tokenizer=byte_tokenizer,
                                        mode=dataclasses.replace(mode, reference_prompt="few_shot"))
    np.testing.assert_allclose(logps(few_shot)[:, :2], want[:, :2], rtol=1e-5, atol=1e-4)  # the policy's view as is
    assert not np.allclose(logps(few_shot)[:, 2:], want[:, 2:])  # the reference's is not
    with pytest.raises(ValueError, match="reference_prompt must be one of"):
        evaluation.IcaMode(reference_prompt="policies")


def test_batching_does_not_change_the_scores(records, tiny_models, byte_tokenizer):
    policy, reference = tiny_models
    kwargs = dict(policy=policy, reference=reference, tokenizer=byte_tokenizer, mode="ica")
    base = logps(evaluation.score_records(records, **kwargs))
    for options in (dict(rows=1), dict(rows=3, seq_lengths=(256, 512, 1024)), dict(batch_tokens=600)):
        np.testing.assert_allclose(logps(evaluation.score_records(records, **kwargs, **options)), base,
                                   rtol=1e-5, atol=1e-4)


def test_sharded_batches_equal_unsharded(records, tiny_models, byte_tokenizer):
    if jax.device_count() < 4:
        pytest.skip("needs 4 (CPU) devices")
    policy, reference = tiny_models
    kwargs = dict(policy=policy, reference=reference, tokenizer=byte_tokenizer, rows=4, batch_tokens=4096)
    one = model_sharding.make_mesh(devices=jax.devices()[:1])
    single = evaluation.score_records(records, **kwargs, mesh=one)
    for sizes in (dict(data=4, fsdp=1), dict(data=1, fsdp=4), dict(data=2, fsdp=2)):  # training's mesh rules
        mesh = model_sharding.make_mesh(**sizes, devices=jax.devices()[:4])
        np.testing.assert_allclose(logps(evaluation.score_records(records, **kwargs, mesh=mesh)), logps(single),
                                   rtol=1e-5, atol=1e-4, err_msg=str(sizes))
    # Rows per batch round up to the 4 row shards (3 -> 4).
    odd = evaluation.score_records(records, **{**kwargs, "rows": 3},
                                   mesh=model_sharding.make_mesh(data=4, fsdp=1, devices=jax.devices()[:4]))
    np.testing.assert_allclose(logps(odd), logps(single), rtol=1e-5, atol=1e-4)


def test_history_sweep_and_persona_items(records, tiny_models, byte_tokenizer):
    policy, reference = tiny_models
    rows = evaluation.score_records(records, policy=policy, reference=reference, tokenizer=byte_tokenizer,
                                    history=[0, 1, 2], persona_items="mixed")
    assert len(rows) == 3 * len(records)
    sizes = {(r["index"], r["history"]): r["history_size"] for r in rows}
    assert all(sizes[(i, cap)] == cap for i in range(len(records)) for cap in (0, 1, 2))
    one = [r for r in rows if r["history"] == 1]
    assert all(r["item_types"] == "ugc+demo" for r in one)  # the cap takes a UGC item first
    assert all(r["item_types"] == "demo" for r in rows if r["history"] == 0)
    report = evaluation.summarize(rows)
    assert report["n"] == len(records) and set(report["per_history_size"]) == {"0", "1", "2"}

    pairs_only = evaluation.score_records(records, policy=policy, reference=reference, tokenizer=byte_tokenizer,
                                          persona_items="pair")
    assert {r["item_types"] for r in pairs_only} == {"pair"}
    assert all("*Chosen:*" in r["policy_prompt"] and "*Comment:*" not in r["policy_prompt"] for r in pairs_only)


def test_long_prompts_drop_history_items_to_fit_and_say_so(records, tiny_models, byte_tokenizer):
    policy, reference = tiny_models
    rows = evaluation.score_records(records[:2], policy=policy, reference=reference, tokenizer=byte_tokenizer,
                                    seq_lengths=(128, 384))
    full = data.full_history(records[0]).num_items
    assert all(r["truncated"] and r["history_size"] < full for r in rows)
    # The row's prompt is the text that was scored: the shortened one.
    shown = evaluation.persona_history(records[0])
    assert rows[0]["policy_prompt"] != data.chat_text(byte_tokenizer, data.ica_eval_prompt(records[0]["prompt"], shown))


def test_persona_history_cap_alternates_kinds():
    record = {"prompt": "p", "User-Generated Content": [{"prompt": "a", "comment": str(i)} for i in range(3)],
              "Pair-wise Comparative Feedback": [{"prompt": "b", "chosen": "c", "rejected": "r"}],
              "Demographic Information": "d"}
    assert [len(evaluation.persona_history(record, history=n).ugc) for n in range(6)] == [0, 1, 1, 2, 3, 3]
    assert [len(evaluation.persona_history(record, history=n).pairs) for n in range(6)] == [0, 0, 1, 1, 1, 1]
    assert evaluation.persona_history(record, items="demo").num_items == 0
    assert evaluation.persona_history(record, items="ugc").demographics == ""
