"""The LM warm-up against its definition: next-token targets of the packed layouts, the NLL against
full logits, one step's update against the gradient of the mean NLL; in the loop, the warmed model
becomes the reference, is checkpointed, and a resumed run does not warm up again."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alignx_jax import data, losses
from alignx_jax.models import llama
from alignx_jax.train import config_from_dict, lm_warmup, train
from alignx_jax.train.config import ConfigError
from alignx_jax.train.step import StepSpec

CONFIG = llama.LlamaConfig.tiny(num_layers=2)


def naive_targets(batch):
    """The definition, position by position on the host."""
    tokens, seg, pos, roles = (np.asarray(batch[k]) for k in ("tokens", "segment_ids", "positions", "roles"))
    labels, valid = np.zeros_like(tokens), np.zeros(tokens.shape, bool)
    for b in range(tokens.shape[0]):
        for t in range(tokens.shape[1] - 1):
            labels[b, t] = tokens[b, t + 1]
            valid[b, t] = (seg[b, t] > 0 and seg[b, t + 1] == seg[b, t] and pos[b, t + 1] == pos[b, t] + 1
                           and roles[b, t + 1] != data.REJECTED)
    return labels, valid


def test_targets_cover_prompt_and_chosen_never_rejected():
    pair = data.EncodedPair(prompt=np.array([1, 10, 11, 12]), chosen=np.array([20, 21, 2]),
                            rejected=np.array([30, 31, 32, 2]), source=0)
    batch = data.pack_rows([[pair, pair]], seq_len=32).as_dict()
    labels, valid = jax.device_get(lm_warmup.next_token_targets({k: jnp.asarray(v) for k, v in batch.items()}))
    expected_labels, expected_valid = naive_targets(batch)
    np.testing.assert_array_equal(valid, expected_valid)
    np.testing.assert_array_equal(labels[valid], expected_labels[valid])
    # Per pair: 3 prompt -> prompt, 1 prompt -> c0, 2 chosen -> chosen; the rejected branch and padding none.
    assert valid.sum() == 2 * 6
    np.testing.assert_array_equal(labels[0, :6], [10, 11, 12, 20, 21, 2])


def test_targets_on_synthetic_rows_match_the_definition(synthetic_batches):
    for batch in synthetic_batches[:2]:
        labels, valid = jax.device_get(lm_warmup.next_token_targets({k: jnp.asarray(v) for k, v in batch.items()}))
        expected_labels, expected_valid = naive_targets(batch)
        np.testing.assert_array_equal(valid, expected_valid)
        np.testing.assert_array_equal(labels[valid], expected_labels[valid])


@pytest.fixture(scope="module")
def params():
    return llama.init_params(CONFIG, jax.random.key(0))


def naive_mean_nll(params, batches):
    """Full [B, T, V] logits, log-softmax, the mean over every valid target of all batches."""
    total, count = 0.0, 0.0
    for batch in batches:
        logits = llama.forward(params, jnp.asarray(batch["tokens"]), CONFIG, positions=jnp.asarray(batch["positions"]),
                               segment_ids=jnp.asarray(batch["segment_ids"]), roles=jnp.asarray(batch["roles"]))
        labels, valid = naive_targets(batch)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), jnp.asarray(labels)[..., None], -1)[..., 0]
        total += -jnp.sum(jnp.where(valid, logp, 0.0))
        count += valid.sum()
    return total / count


def test_nll_matches_full_logits(params, synthetic_batches):
    batch = {k: jnp.asarray(v) for k, v in synthetic_batches[0].items() if k != "pair_source"}
    total, count = lm_warmup.nll_sum(params, CONFIG, batch)
    assert int(count) == naive_targets(synthetic_batches[0])[1].sum()
    np.testing.assert_allclose(total / count, naive_mean_nll(params, synthetic_batches[:1]), rtol=1e-5)


def test_a_step_over_two_micro_batches_descends_the_mean_nll(params, synthetic_batches):
    micro = synthetic_batches[:2]
    batch = {k: jnp.asarray(np.stack([b[k] for b in micro])) for k in micro[0] if k != "pair_source"}
    spec = StepSpec(model=CONFIG, loss_fn=losses.get("sigmoid"), loss_hparams=(("beta", 0.1),), reference="frozen",
                    lora=None, num_pairs=len(micro[0]["pair_valid"]), scored_length=1024)
    optimizer = optax.sgd(1.0)  # the update is minus the gradient
    step = jax.jit(functools.partial(lm_warmup.warmup_step, spec=spec, optimizer=optimizer))
    updated, _, metrics = step(params, optimizer.init(params), None, batch)
    expected_nll, grads = jax.value_and_grad(naive_mean_nll)(params, micro)
    np.testing.assert_allclose(metrics["nll"], expected_nll, rtol=1e-5)
    assert metrics["tokens"] == sum(naive_targets(b)[1].sum() for b in micro)
    delta = jax.tree.map(lambda new, old: old - new, updated, params)
    for got, want in zip(jax.tree.leaves(delta), jax.tree.leaves(grads)):
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-6)


TINY = {
    "seed": 0, "steps": 2, "checkpoint_every": 2,
    "model": {"name": "random", "preset": "tiny", "tokenizer": "smollm2-135m-instruct",
              "overrides": {"vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1}},
    "data": {"synthetic": {"users": 8, "records_per_user": 2, "history_items": 1},
             "heldout_synthetic": {"users": 2, "records_per_user": 2, "history_items": 1},
             "rows": 4, "seq_lengths": [512], "max_pairs_per_row": 1, "scored_buckets": [2048]},
    "optimizer": {"lr": 1e-3},
    "lm_warmup": {"steps": 3, "lr": 1e-2},
}


def held_out_scores(out):
    return [json.loads(line) for line in (out / "heldout_scores.jsonl").read_text().splitlines()]


@pytest.mark.slow  # two whole runs (~75 s); the warm-up step and its loss stay in the default set
def test_the_warmed_model_is_the_reference_and_a_resumed_run_keeps_it(tmp_path, recorder):
    out = tmp_path / "run"
    train(config_from_dict({**TINY, "out_dir": str(out)}))
    rows = [json.loads(line) for line in (out / "lm_warmup.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["nll"] < rows[0]["nll"]
    # The reference of the preference steps is the warmed model: it gives the held-out chosen responses
    # more probability than the start model, whose scores stay the "before" view (`start_*`).
    warmed = held_out_scores(out)
    assert np.mean([r["ref_chosen_logp"] for r in warmed]) > np.mean([r["start_chosen_logp"] for r in warmed]) + 1.0
    assert (out / "checkpoints" / "0").is_dir()
    train(config_from_dict({**TINY, "out_dir": str(out), "steps": 3}), recorder)
    assert any(m.endswith("checkpoints/2") for m in recorder.messages if m.startswith("resumed from")), recorder.messages
    assert not any(m.startswith("LM warm-up") for m in recorder.messages), recorder.messages
    assert [r["ref_chosen_logp"] for r in held_out_scores(out)] == [r["ref_chosen_logp"] for r in warmed]


def test_warmup_with_a_precomputed_reference_is_refused():
    with pytest.raises(ConfigError, match="lm_warmup.steps"):
        config_from_dict({**TINY, "out_dir": "x", "reference": "precomputed"})
