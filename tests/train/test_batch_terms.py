"""The step's batch-level terms against their definitions: the cross-user twin term and the
group-robust weights (loss, gradients and the weights' update), and the weights in the checkpoint."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alignx_jax import data, kernels, losses
from alignx_jax.losses import group_robust
from alignx_jax.models import llama, scoring
from alignx_jax.train import checkpoint as ckpt
from alignx_jax.train.step import StepSpec, TrainState, train_step

CONFIG = llama.LlamaConfig.tiny(num_layers=2)
BUCKETS = (256, 512, 1024, 2048, 4096)


@pytest.fixture(scope="module")
def twin_batch(byte_tokenizer):
    """One batch of 4 rows x 1 pair: two twin units, four personas, with pair_twin and pair_group."""
    records = data.synthetic_records(4, seed=0, records_per_user=1, history_items=0)
    units = data.twin_units(records)
    config = data.PackingConfig(rows=4, seq_lengths=(2048,), max_pairs_per_row=1)
    batch = next(iter(data.packed_batches(records, tokenizer=byte_tokenizer, config=config, seed=0, shuffle=False,
                                          shard_index=0, shard_count=1, units=units))).as_dict()
    batch["pair_twin"] = data.twin_slots(batch["pair_source"], data.twin_of(units, len(records)))
    personas = sorted({data.persona_key(r) for r in records})
    batch["pair_group"] = np.asarray([personas.index(data.persona_key(records[s])) for s in batch["pair_source"]],
                                     np.int32)
    assert (batch["pair_twin"] >= 0).all() and len(personas) == 4
    return batch


@pytest.fixture(scope="module")
def params():
    return llama.init_params(CONFIG, jax.random.key(0))


def _spec(batch, **kwargs):
    count = int((batch["chosen_mask"] | batch["rejected_mask"]).sum())
    return StepSpec(model=CONFIG, loss_fn=losses.get("sigmoid"), loss_hparams=(("beta", 0.1),), reference="frozen",
                    lora=None, num_pairs=len(batch["pair_valid"]), scored_length=kernels.bucket_length(count, BUCKETS),
                    **kwargs)


def _arrays(batch):
    return {k: jnp.asarray(v) for k, v in batch.items() if k != "pair_source"}


def _definition(policy, ref_params, batch, spec, alpha=None):
    """sigmoid DPO + weight * cross_user per pair; group-robust: sum_g alpha_g mean_g / sum alpha (all present)."""
    arrays = _arrays(batch)
    score = lambda p: scoring.pair_logprobs(p, CONFIG, arrays, num_pairs=spec.num_pairs,  # noqa: E731
                                            scored_length=spec.scored_length)
    pi, ref = score(policy), score(ref_params)
    per_pair, _ = losses.get("sigmoid")(pi.chosen, pi.rejected, ref.chosen, ref.rejected, beta=0.1)
    if spec.twin_loss is not None:
        per_pair = per_pair + spec.twin_weight * losses.cross_user(pi.chosen, pi.rejected, ref.chosen, ref.rejected,
                                                                   arrays["pair_twin"], beta=0.1)
    if alpha is None:
        return jnp.mean(per_pair)
    groups = arrays["pair_group"]
    means = jnp.stack([jnp.sum(jnp.where(groups == g, per_pair, 0.0)) / jnp.sum(groups == g)
                       for g in range(len(alpha))])
    return jnp.sum(alpha * means) / jnp.sum(alpha)


def _step(state, batch, spec):
    stacked = {k: v[None] for k, v in _arrays(batch).items()}
    step = jax.jit(functools.partial(train_step, spec=spec, optimizer=optax.sgd(1.0),
                                     schedule=optax.constant_schedule(1.0)))
    return step(state, stacked, jax.random.key(0))


def test_cross_user_term_in_the_step_equals_its_definition(params, twin_batch):
    spec = _spec(twin_batch, twin_loss=losses.cross_user, twin_weight=0.5)
    moved = jax.tree.map(lambda x: x * 1.02, params)  # policy != reference: the term is not at log 2
    state = TrainState(step=jnp.int32(0), params=moved, opt_state=optax.sgd(1.0).init(moved), frozen=params)
    new_state, metrics = _step(state, twin_batch, spec)
    want_loss, want_grads = jax.jit(jax.value_and_grad(_definition), static_argnums=3)(moved, params, twin_batch, spec)
    np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
    got_grads = jax.tree.map(lambda new, old: old - new, new_state.params, moved)
    chex.assert_trees_all_close(got_grads, want_grads, atol=5e-5, rtol=1e-3)
    assert metrics["twin_loss"] > 0


def test_group_robust_weights_weigh_the_loss_and_take_grpos_step(params, twin_batch):
    spec = _spec(twin_batch, num_groups=4, group_eta=0.5)
    alpha = jnp.asarray([0.1, 0.2, 0.3, 0.4], jnp.float32)
    moved = jax.tree.map(lambda x: x * 1.02, params)
    state = TrainState(step=jnp.int32(0), params=moved, opt_state=optax.sgd(1.0).init(moved), frozen=params,
                       group_weights=alpha)
    new_state, metrics = _step(state, twin_batch, spec)
    want_loss, want_grads = jax.jit(jax.value_and_grad(_definition), static_argnums=3)(moved, params, twin_batch, spec,
                                                                                        alpha)
    np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
    chex.assert_trees_all_close(jax.tree.map(lambda new, old: old - new, new_state.params, moved), want_grads,
                                atol=5e-5, rtol=1e-3)
    # The update: GRPO's step with this step's (unweighted) group mean losses.
    arrays = _arrays(twin_batch)
    score = lambda p: scoring.pair_logprobs(p, CONFIG, arrays, num_pairs=spec.num_pairs,  # noqa: E731
                                            scored_length=spec.scored_length)
    pi, ref = score(moved), score(params)
    per_pair, _ = losses.get("sigmoid")(pi.chosen, pi.rejected, ref.chosen, ref.rejected, beta=0.1)
    groups, valid = arrays["pair_group"], arrays["pair_valid"]
    want_alpha = group_robust.update_weights(alpha, group_robust.group_sums(per_pair, groups, valid, 4),
                                             group_robust.group_sums(jnp.ones(4), groups, valid, 4), eta=0.5)
    np.testing.assert_allclose(new_state.group_weights, want_alpha, rtol=1e-5)
    assert metrics["group_robust/max_weight"] == pytest.approx(0.4)
    assert "group_weights" in ckpt.saved_state(new_state)


def test_a_run_with_twins_and_group_weights_resumes_on_the_same_curve(tmp_path):
    """Every step trains whole twin units (the twin term is live on every pair), the weights are in
    metrics.jsonl and the checkpoint, and a run stopped at step 2 and resumed ends where a straight
    run ends: the same losses and the same group weights."""
    from alignx_jax.train import config_from_dict, train
    from alignx_jax.train.metrics import read_metrics

    tiny = {
        "seed": 0, "steps": 4, "checkpoint_every": 2, "model": {
            "name": "random", "preset": "tiny", "tokenizer": "smollm2-135m-instruct",
            "overrides": {"vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1}},
        "data": {"synthetic": {"users": 6, "records_per_user": 2, "history_items": 1}, "rows": 4,
                 "seq_lengths": [512], "max_pairs_per_row": 1, "scored_buckets": [2048], "twins": True},
        "twin_loss": "cross_user", "group_robust_eta": 0.5,
        "optimizer": {"lr": 1e-2, "schedule": "constant"},  # the 2-step run's schedule is the 4-step run's
    }
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(config_from_dict({**tiny, "out_dir": str(straight)}))
    train(config_from_dict({**tiny, "out_dir": str(resumed), "steps": 2}))
    train(config_from_dict({**tiny, "out_dir": str(resumed)}))
    rows, again = read_metrics(straight), read_metrics(resumed)
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    for row, other in zip(rows, again, strict=True):
        assert row["loss"] == pytest.approx(other["loss"], rel=1e-5)
        np.testing.assert_allclose(row["group_weights"], other["group_weights"], rtol=1e-5)
        assert row["pairs"] == 4 and row["twin_loss"] > 0
        assert len(row["group_weights"]) == 6 and sum(row["group_weights"]) == pytest.approx(1.0, abs=1e-4)
    assert rows[0]["group_weights"] != [pytest.approx(1 / 6)] * 6  # the weights moved
