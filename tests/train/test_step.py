"""The training step against its definition: loss of the registry on pair_logprobs, accumulation,
reference modes, LoRA."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alignx_jax import kernels, losses
from alignx_jax.models import llama, scoring
from alignx_jax.train import lora
from alignx_jax.train.config import LoraConfig
from alignx_jax.train.step import StepSpec, TrainState, train_step

CONFIG = llama.LlamaConfig.tiny(num_layers=2)
BUCKETS = (256, 512, 1024, 2048, 4096)


def stack(batches):
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


@pytest.fixture(scope="module")
def params():
    return llama.init_params(CONFIG, jax.random.key(0))


def spec_for(batch, reference="frozen", lora_config=None, loss="sigmoid", hparams=(("beta", 0.1),)):
    count = max(int((b["chosen_mask"] | b["rejected_mask"]).sum()) for b in batch)
    return StepSpec(model=CONFIG, loss_fn=losses.get(loss), loss_hparams=hparams, reference=reference,
                    lora=lora_config, num_pairs=len(batch[0]["pair_valid"]),
                    scored_length=kernels.bucket_length(count, BUCKETS))


def run_step(state, micro_batches, spec, optimizer):
    batch = {k: jnp.asarray(v) for k, v in stack(micro_batches).items() if k != "pair_source"}
    step = jax.jit(functools.partial(train_step, spec=spec, optimizer=optimizer, schedule=optax.constant_schedule(1e-3)))
    return step(state, batch, jax.random.key(0))


def reference_loss(params, ref_params, batch, spec):
    """The definition: sigmoid DPO on pair_logprobs, mean over valid pairs."""
    arrays = {k: jnp.asarray(v) for k, v in batch.items() if k != "pair_source"}
    score = lambda p: scoring.pair_logprobs(p, CONFIG, arrays, num_pairs=spec.num_pairs,  # noqa: E731
                                            scored_length=spec.scored_length)
    pi, ref = score(params), score(ref_params)
    per_pair, _ = losses.get("sigmoid")(pi.chosen, pi.rejected, ref.chosen, ref.rejected, beta=0.1)
    valid = arrays["pair_valid"]
    return jnp.sum(jnp.where(valid, per_pair, 0)) / jnp.sum(valid)


def test_first_step_loss_is_log_2_and_grads_match_the_definition(params, synthetic_batches):
    batch = synthetic_batches[0]
    spec = spec_for([batch])
    optimizer = optax.sgd(1.0)  # the update is minus the gradient
    state = TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params), frozen=params)
    new_state, metrics = run_step(state, [batch], spec, optimizer)
    np.testing.assert_allclose(metrics["loss"], np.log(2.0), rtol=1e-4)  # policy == reference at the start
    want_grads = jax.jit(jax.grad(reference_loss), static_argnums=3)(params, params, batch, spec)
    got_grads = jax.tree.map(lambda new, old: old - new, new_state.params, params)
    # fp32 sums over ~700 tokens whose chosen and rejected terms cancel: jit vs eager of the same
    # function already differ by ~2e-5 at gradients of ~3e-2.
    chex.assert_trees_all_close(got_grads, want_grads, atol=5e-5, rtol=1e-3)
    assert metrics["pairs"] == batch["pair_valid"].sum() and int(new_state.step) == 1
    assert metrics["grad_norm"] > 0


def test_accumulated_micro_batches_equal_one_batch_of_all_pairs(params, synthetic_batches):
    """Two micro-batches of 2 rows update exactly as the 4 rows together (sum of grads / all pairs)."""
    optimizer = optax.sgd(1.0)  # Adam's g / sqrt(v) would turn fp32 noise of tiny gradients into lr-sized steps
    spec = spec_for(synthetic_batches[:2])
    moved = jax.tree.map(lambda x: x * 1.01, params)  # policy != reference, so the loss is not at its start
    state = TrainState(step=jnp.int32(0), params=moved, opt_state=optimizer.init(moved), frozen=params)
    accumulated, acc_metrics = run_step(state, synthetic_batches[:2], spec, optimizer)
    one = {k: np.concatenate([b[k] for b in synthetic_batches[:2]]) for k in synthetic_batches[0]}
    offset = len(synthetic_batches[0]["pair_valid"])
    one["pair_ids"] = np.concatenate([synthetic_batches[0]["pair_ids"],
                                      np.where(synthetic_batches[1]["pair_ids"] >= 0, synthetic_batches[1]["pair_ids"] + offset, -1)])
    spec_one = spec_for([one])
    state = TrainState(step=jnp.int32(0), params=moved, opt_state=optimizer.init(moved), frozen=params)
    single, single_metrics = run_step(state, [one], spec_one, optimizer)
    np.testing.assert_allclose(acc_metrics["loss"], single_metrics["loss"], rtol=1e-6)
    np.testing.assert_allclose(acc_metrics["loss"], reference_loss(moved, params, one, spec_one), rtol=1e-5)
    chex.assert_trees_all_close(accumulated.params, single.params, atol=5e-5, rtol=1e-3)


def test_precomputed_reference_equals_the_frozen_reference(params, synthetic_batches):
    batch = synthetic_batches[1]
    spec = spec_for([batch])
    arrays = {k: jnp.asarray(v) for k, v in batch.items() if k != "pair_source"}
    ref = scoring.pair_logprobs(params, CONFIG, arrays, num_pairs=spec.num_pairs, scored_length=spec.scored_length,
                                differentiable=False)
    optimizer = optax.adamw(1e-3)
    moved = jax.tree.map(lambda x: x * 0.99, params)
    frozen_state, frozen_metrics = run_step(
        TrainState(step=jnp.int32(0), params=moved, opt_state=optimizer.init(moved), frozen=params), [batch], spec, optimizer)
    with_ref = dict(batch, ref_chosen=np.asarray(ref.chosen), ref_rejected=np.asarray(ref.rejected))
    pre_state, pre_metrics = run_step(
        TrainState(step=jnp.int32(0), params=moved, opt_state=optimizer.init(moved)), [with_ref],
        spec_for([batch], reference="precomputed"), optimizer)
    np.testing.assert_allclose(pre_metrics["loss"], frozen_metrics["loss"], rtol=1e-6)
    chex.assert_trees_all_close(pre_state.params, frozen_state.params, atol=1e-6)


def test_lora_starts_at_the_base_and_trains_only_the_adapters(params, synthetic_batches):
    config = LoraConfig(rank=4, alpha=8.0)
    adapters = lora.init_adapters(params, config, jax.random.key(1))
    chex.assert_trees_all_equal(lora.merge(params, adapters, config), params)  # B = 0
    assert adapters["o_proj"]["a"].shape == (CONFIG.num_layers, CONFIG.num_heads * CONFIG.resolved_head_dim, 4)
    optimizer = optax.adamw(1e-2)
    batch = synthetic_batches[2]
    state = TrainState(step=jnp.int32(0), params=adapters, opt_state=optimizer.init(adapters), frozen=params)
    spec = spec_for([batch], reference="lora", lora_config=config)
    new_state, metrics = run_step(state, [batch], spec, optimizer)
    np.testing.assert_allclose(metrics["loss"], np.log(2.0), rtol=1e-4)
    chex.assert_trees_all_equal(new_state.frozen, params)
    assert all(float(jnp.abs(b["b"]).max()) > 0 for b in new_state.params.values())
    merged = lora.merge(params, new_state.params, config)
    delta = merged["layers"]["attn"]["q_proj"]["kernel"] - params["layers"]["attn"]["q_proj"]["kernel"]
    a, b = new_state.params["q_proj"]["a"], new_state.params["q_proj"]["b"]
    np.testing.assert_allclose(delta, np.einsum("lir,lro->lio", a, b).reshape(delta.shape) * 2.0, atol=1e-7)


def test_lora_on_the_top_layers_shares_the_trunk_and_equals_the_definition(params, synthetic_batches):
    """Adapters on the top layer only: the step runs the bottom layer once for policy and reference,
    and its loss and adapter gradients are the full model's (merged policy vs base reference)."""
    config = LoraConfig(rank=4, alpha=8.0, layers=1)
    adapters = lora.init_adapters(params, config, jax.random.key(1))
    assert adapters["q_proj"]["a"].shape[0] == 1 and adapters["down_proj"]["b"].shape[0] == 1
    adapters = jax.tree.map(lambda x: x + 0.01, adapters)  # B != 0: the policy has left the base
    merged = lora.merge(params, adapters, config)
    chex.assert_trees_all_equal(jax.tree.map(lambda x: x[:1], merged["layers"]),  # the bottom layer is the base's
                                jax.tree.map(lambda x: x[:1], params["layers"]))
    batch = synthetic_batches[2]
    spec = spec_for([batch], reference="lora", lora_config=config)
    assert spec.trunk_layers == 1
    optimizer = optax.sgd(1.0)
    state = TrainState(step=jnp.int32(0), params=adapters, opt_state=optimizer.init(adapters), frozen=params)
    new_state, metrics = run_step(state, [batch], spec, optimizer)
    definition = lambda a: reference_loss(lora.merge(params, a, config), params, batch, spec)  # noqa: E731
    want_loss, want_grads = jax.jit(jax.value_and_grad(definition))(adapters)
    np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
    got_grads = jax.tree.map(lambda new, old: old - new, new_state.params, adapters)
    chex.assert_trees_all_close(got_grads, want_grads, atol=5e-5, rtol=1e-3)


def registry_loss(params, ref_params, batch, spec):
    """The definition for any registry loss: its per-pair values on pair_logprobs (with token counts
    when it takes them), the mean over valid pairs."""
    arrays = {k: jnp.asarray(v) for k, v in batch.items() if k != "pair_source"}
    score = lambda p: scoring.pair_logprobs(p, CONFIG, arrays, num_pairs=spec.num_pairs,  # noqa: E731
                                            scored_length=spec.scored_length)
    pi, ref = score(params), score(ref_params)
    extra = dict(chosen_tokens=pi.chosen_tokens, rejected_tokens=pi.rejected_tokens) if spec.passes_token_counts else {}
    per_pair, _ = spec.loss_fn(pi.chosen, pi.rejected, ref.chosen, ref.rejected, **dict(spec.loss_hparams), **extra)
    valid = arrays["pair_valid"]
    return jnp.sum(jnp.where(valid, per_pair, 0)) / jnp.sum(valid)


# SimPO (the token counts) in the slow set: one more compiled step (~25 s) on the path IPO already checks.
@pytest.mark.parametrize("loss, hparams", [("ipo", (("beta", 0.1),)),
                                           pytest.param("simpo", (("beta", 2.0), ("simpo_gamma", 0.5)),
                                                        marks=pytest.mark.slow)])
def test_other_registry_losses_run_in_the_step(params, synthetic_batches, loss, hparams):
    """The step's loss is the registry loss of the batch's log-probs (SimPO reads the token counts),
    and its update is minus that loss's gradient."""
    optimizer = optax.sgd(1.0)
    batch = synthetic_batches[3]
    spec = spec_for([batch], loss=loss, hparams=hparams)
    moved = jax.tree.map(lambda x: x * 1.01, params)
    state = TrainState(step=jnp.int32(0), params=moved, opt_state=optimizer.init(moved), frozen=params)
    new_state, metrics = run_step(state, [batch], spec, optimizer)
    np.testing.assert_allclose(metrics["loss"], registry_loss(moved, params, batch, spec), rtol=1e-5)
    if loss == "ipo":  # at the reference (h = 0) IPO's loss is (1 / (2 beta))^2 = 25
        np.testing.assert_allclose(registry_loss(params, params, batch, spec), 25.0, rtol=1e-5)
    want_grads = jax.jit(jax.grad(registry_loss), static_argnums=3)(moved, params, batch, spec)
    got_grads = jax.tree.map(lambda new, old: old - new, new_state.params, moved)
    chex.assert_trees_all_close(got_grads, want_grads, atol=5e-5, rtol=1e-3)
