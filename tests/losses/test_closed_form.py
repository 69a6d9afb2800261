"""Closed-form values for what TRL 1.16 lacks or computes differently (cDPO smoothing, RPO, per-example
NLL, reference-free mode, AOT's sorted terms), written as numpy formulas; and the metric contract."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignx_jax import losses


def neg_log_sigmoid(x):
    return np.logaddexp(0.0, -x)  # -log sigma(x) = log(1 + e^-x)


def run(name, logps, **kwargs):
    with jax.enable_x64(True):
        values, metrics = losses.get(name)(*(jnp.asarray(x, jnp.float64) for x in logps), **kwargs)
        return np.asarray(values), {k: np.asarray(v) for k, v in metrics.items()}


def test_sigmoid_label_smoothing_is_conservative_dpo(pair_batch):
    pc, pr, rc, rr = pair_batch.logps
    eps, beta = 0.15, 0.3
    z = beta * ((pc - rc) - (pr - rr))
    values, _ = run("sigmoid", pair_batch.logps, beta=beta, label_smoothing=eps)
    np.testing.assert_allclose(values, (1 - eps) * neg_log_sigmoid(z) + eps * neg_log_sigmoid(-z), rtol=1e-12)


def test_reference_free_mode_is_a_zero_reference(pair_batch):
    pc, pr, _, _ = pair_batch.logps
    zeros = np.zeros_like(pc)
    tokens = {"chosen_tokens": pair_batch.chosen_tokens, "rejected_tokens": pair_batch.rejected_tokens}
    for name in ("sigmoid", "ipo", "hinge", "bco_pair", "apo_zero", "sigmoid_norm"):
        free = run(name, (pc, pr), **tokens)
        with_zeros = run(name, (pc, pr, zeros, zeros), **tokens)
        np.testing.assert_array_equal(free[0], with_zeros[0], err_msg=name)
    z = 0.1 * (pc - pr)
    np.testing.assert_allclose(run("sigmoid", (pc, pr))[0], neg_log_sigmoid(z), rtol=1e-12)


@pytest.mark.parametrize("name", ["simpo", "cpo", "orpo"])
def test_reference_free_losses_ignore_the_reference(pair_batch, name):
    pc, pr, rc, rr = pair_batch.logps
    tokens = {"chosen_tokens": pair_batch.chosen_tokens, "rejected_tokens": pair_batch.rejected_tokens}
    np.testing.assert_array_equal(run(name, (pc, pr, rc, rr), **tokens)[0], run(name, (pc, pr), **tokens)[0])


def test_simpo_closed_form_and_token_counts_equal_averages(pair_batch):
    pc, pr, _, _ = pair_batch.logps
    n_w, n_l = pair_batch.chosen_tokens, pair_batch.rejected_tokens
    beta, gamma = 2.5, 1.4
    by_counts, metrics = run("simpo", (pc, pr), beta=beta, simpo_gamma=gamma, chosen_tokens=n_w, rejected_tokens=n_l)
    by_averages, _ = run(
        "simpo", (pc, pr), beta=beta, simpo_gamma=gamma, policy_chosen_avg=pc / n_w, policy_rejected_avg=pr / n_l
    )
    np.testing.assert_allclose(by_counts, neg_log_sigmoid(beta * (pc / n_w - pr / n_l) - gamma), rtol=1e-12)
    np.testing.assert_allclose(by_averages, by_counts, rtol=1e-12)
    # Averages take precedence over sums / counts, so a trainer may pass both.
    both, _ = run(
        "simpo",
        (pc, pr),
        beta=beta,
        simpo_gamma=gamma,
        policy_chosen_avg=pc / n_w,
        policy_rejected_avg=pr / n_l,
        chosen_tokens=np.ones_like(n_w),
        rejected_tokens=np.ones_like(n_l),
    )
    np.testing.assert_allclose(both, by_counts, rtol=1e-12)
    np.testing.assert_allclose(metrics["rewards/chosen"], beta * pc / n_w, rtol=1e-12)


def test_orpo_closed_form(pair_batch):
    pc, pr, _, _ = pair_batch.logps
    n_w, n_l = pair_batch.chosen_tokens, pair_batch.rejected_tokens
    a_w, a_l = pc / n_w, pr / n_l
    log_odds = (a_w - a_l) - (np.log1p(-np.exp(a_w)) - np.log1p(-np.exp(a_l)))
    values, metrics = run("orpo", (pc, pr), beta=0.2, chosen_tokens=n_w, rejected_tokens=n_l)
    np.testing.assert_allclose(values, -a_w + 0.2 * neg_log_sigmoid(log_odds), rtol=1e-10)
    np.testing.assert_allclose(metrics["log_odds_chosen"], log_odds, rtol=1e-10)
    np.testing.assert_allclose(metrics["nll_loss"], -a_w, rtol=1e-12)


def test_cpo_adds_alpha_times_the_mean_token_nll(pair_batch):
    pc, pr, _, _ = pair_batch.logps
    n_w = pair_batch.chosen_tokens
    values, _ = run(
        "cpo", (pc, pr), beta=0.3, cpo_alpha=0.7, chosen_tokens=n_w, rejected_tokens=pair_batch.rejected_tokens
    )
    np.testing.assert_allclose(values, neg_log_sigmoid(0.3 * (pc - pr)) + 0.7 * (-pc / n_w), rtol=1e-12)


def test_rpo_is_dpo_plus_alpha_nll_and_equals_the_mixture(pair_batch):
    pc, pr, rc, rr = pair_batch.logps
    n_w, n_l = pair_batch.chosen_tokens, pair_batch.rejected_tokens
    tokens = {"chosen_tokens": n_w, "rejected_tokens": n_l}
    values, metrics = run("rpo", pair_batch.logps, beta=0.3, rpo_alpha=0.5, **tokens)
    dpo = neg_log_sigmoid(0.3 * ((pc - rc) - (pr - rr)))
    np.testing.assert_allclose(values, dpo + 0.5 * (-pc / n_w), rtol=1e-12)
    mixed, _ = run(
        "mixture",
        pair_batch.logps,
        loss_type=["sigmoid", "sft"],
        loss_weights=[1.0, 0.5],
        beta=0.3,
        token_average="example",
        **tokens,
    )
    np.testing.assert_allclose(mixed, values, rtol=1e-12)
    np.testing.assert_allclose(metrics["nll_loss"], -pc / n_w, rtol=1e-12)


def test_dpop_charges_lambda_per_nat_of_chosen_below_the_reference(pair_batch):
    pc, pr, rc, rr = pair_batch.logps
    u_w, u_l = pc - rc, pr - rr
    assert (u_w < 0).any() and (u_w > 0).any()  # both sides of the hinge are checked
    values, metrics = run("dpop", pair_batch.logps, beta=0.3, dpop_lambda=7.0)
    np.testing.assert_allclose(values, neg_log_sigmoid(0.3 * (u_w - u_l - 7.0 * np.maximum(0.0, -u_w))), rtol=1e-12)
    np.testing.assert_allclose(metrics["rewards/chosen"], 0.3 * u_w, rtol=1e-12)
    above = u_w >= 0  # where the chosen stays above the reference it is plain DPO
    np.testing.assert_allclose(values[above], run("sigmoid", pair_batch.logps, beta=0.3)[0][above], rtol=1e-12)
    np.testing.assert_allclose(run("dpop", pair_batch.logps, beta=0.3, dpop_lambda=0.0)[0],
                               run("sigmoid", pair_batch.logps, beta=0.3)[0], rtol=1e-12)
    with pytest.raises(ValueError, match="loss 'dpop': dpop_lambda must be >= 0, got -1"):
        run("dpop", pair_batch.logps, dpop_lambda=-1)


def test_sft_token_averages(pair_batch):
    pc = pair_batch.logps[0]
    n_w = pair_batch.chosen_tokens
    tokens = {"chosen_tokens": n_w, "rejected_tokens": pair_batch.rejected_tokens}
    batch, _ = run("sft", pair_batch.logps, **tokens)
    example, _ = run("sft", pair_batch.logps, token_average="example", **tokens)
    np.testing.assert_allclose(batch, np.full_like(pc, -pc.sum() / n_w.sum()), rtol=1e-12)
    np.testing.assert_allclose(example, -pc / n_w, rtol=1e-12)


@pytest.mark.parametrize("name", ["aot", "aot_pair"])
def test_aot_terms_are_sorted_quantile_pairs(pair_batch, name):
    pc, pr, rc, rr = pair_batch.logps
    eps, beta = 0.1, 0.3
    if name == "aot":
        delta = np.sort(pc - pr) - np.sort(rc - rr)
    else:
        delta = np.sort(pc - rc) - np.sort(pr - rr)
    values, metrics = run(name, pair_batch.logps, beta=beta, label_smoothing=eps)
    expected = (1 - eps) * neg_log_sigmoid(beta * delta) + eps * neg_log_sigmoid(-beta * delta)
    np.testing.assert_allclose(values, expected, rtol=1e-12)
    np.testing.assert_allclose(metrics["rewards/chosen"], beta * (pc - rc), rtol=1e-12)  # rewards stay per example
    # Batch-level: the loss of example 0 depends on the other examples.
    alone, _ = run(name, [x[:1] for x in pair_batch.logps], beta=beta, label_smoothing=eps)
    assert not np.isclose(alone[0], values.mean())


def test_f_divergence_scores_closed_form():
    u = np.array([-3.0, -0.5, 0.0, 0.7, 2.0])
    with jax.enable_x64(True):

        def scores(kind, alpha=0.5):
            return np.asarray(losses.f_divergence_scores(jnp.asarray(u), kind, alpha))

        np.testing.assert_array_equal(scores("reverse_kl"), u)
        np.testing.assert_allclose(scores("forward_kl"), 1 - np.exp(-u), rtol=1e-12)
        np.testing.assert_allclose(scores("js_divergence"), np.log(2 * np.exp(u) / (np.exp(u) + 1)), rtol=1e-12)
        np.testing.assert_allclose(scores("alpha_divergence", 0.3), (np.exp(-0.7 * u) - 1) / -0.7, rtol=1e-12)
        np.testing.assert_array_equal(scores("alpha_divergence", 1.0), u)  # the reverse-KL limit


def test_weights_multiply_the_per_example_losses(pair_batch):
    weights = np.linspace(0.0, 2.0, len(pair_batch.chosen_tokens))
    plain, _ = run("sigmoid", pair_batch.logps)
    weighted, _ = run("sigmoid", pair_batch.logps, weights=weights)
    np.testing.assert_allclose(weighted, plain * weights, rtol=1e-12)


def test_metrics_are_per_example_without_gradient(pair_batch):
    pc, pr, rc, rr = pair_batch.logps
    values, metrics = run("sigmoid", pair_batch.logps, beta=0.3)
    chosen, rejected = 0.3 * (pc - rc), 0.3 * (pr - rr)
    np.testing.assert_allclose(metrics["rewards/chosen"], chosen, rtol=1e-12)
    np.testing.assert_allclose(metrics["rewards/margins"], chosen - rejected, rtol=1e-12)
    np.testing.assert_array_equal(metrics["rewards/accuracies"], (chosen > rejected).astype(float))
    np.testing.assert_array_equal(metrics["logps/chosen"], pc)
    assert all(v.shape == values.shape for v in metrics.values())
    fn = losses.get("sigmoid")
    grads = jax.grad(lambda x: sum(jnp.sum(v) for v in fn(x, *map(jnp.asarray, (pr, rc, rr)))[1].values()))(
        jnp.asarray(pc)
    )
    np.testing.assert_array_equal(grads, 0.0)


def test_low_precision_inputs_are_computed_in_float32(pair_batch):
    logps = [jnp.asarray(x, jnp.bfloat16) for x in pair_batch.logps]
    values, metrics = losses.get("sigmoid")(*logps)
    assert values.dtype == jnp.float32 and metrics["rewards/chosen"].dtype == jnp.float32


@pytest.mark.parametrize("module", ["_dpo", "_divergence"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"alignx_jax.losses.{module}")
    result = doctest.testmod(mod, extraglobs={"jnp": jnp}, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
