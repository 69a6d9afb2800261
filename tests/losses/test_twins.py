"""Batch-level terms against closed forms: the cross-user term over twin pairs and GRPO's
group-robust weights (Ramesh et al. 2024, `compute_robust_loss`, written out in numpy here)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignx_jax import losses
from alignx_jax.losses import group_robust


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def test_cross_user_equals_its_closed_form_and_is_zero_without_a_twin():
    rng = np.random.default_rng(0)
    pc, pr, rc, rr = (rng.normal(size=5).astype(np.float32) * 3 for _ in range(4))
    twin = np.array([2, -1, 0, 4, 3], np.int32)
    got = np.asarray(losses.cross_user(pc, pr, rc, rr, twin, beta=0.3))
    m = (pc - rc) - (pr - rr)
    want = [-_log_sigmoid(0.3 * (m[i] + m[twin[i]])) if twin[i] >= 0 else 0.0 for i in range(5)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[1] == 0.0 and got[0] == got[2]  # symmetric: both twins carry the same term


def test_a_persona_blind_shift_gets_no_gradient_from_the_cross_user_term():
    """Twin B holds A's responses with the labels swapped. A model that ignores the persona moves both
    responses' log-probs by the same amounts under A and B: m_A + d and m_B - d, so m_A + m_B is fixed."""
    pc, pr = jnp.array([-3.0, -5.0]), jnp.array([-5.0, -3.0])  # B's chosen is A's rejected
    ref = jnp.array([-4.0, -4.0])
    twin = jnp.array([1, 0])

    def term(shift):  # shift: log-prob added to response 1 (A's chosen) whoever the user is
        return jnp.sum(losses.cross_user(pc + jnp.array([shift, 0.0]), pr + jnp.array([0.0, shift]), ref, ref, twin))

    assert float(jax.grad(term)(0.0)) == 0.0
    # Reading the user (raising response 1 for A only) lowers it.
    read = lambda s: jnp.sum(losses.cross_user(pc + jnp.array([s, 0.0]), pr, ref, ref, twin))  # noqa: E731
    assert float(jax.grad(read)(0.0)) < 0


def test_twin_loss_names_match_the_config_check():
    from alignx_jax.train import config

    assert tuple(sorted(losses.TWIN_LOSSES)) == tuple(sorted(config.TWIN_LOSSES))
    with pytest.raises(ValueError, match="unknown twin loss 'swap'; known: cross_user"):
        losses.get_twin_loss("swap")


def _grpo_reference(alpha, losses_, groups, eta):
    """GRPO's `compute_robust_loss` step, in numpy: group means (absent groups 0), the exponentiated
    update and normalization, then the robust loss = group_loss @ alpha_new."""
    g = len(alpha)
    group_map = (groups[None, :] == np.arange(g)[:, None]).astype(np.float64)
    counts = group_map.sum(1)
    group_loss = group_map @ losses_ / (counts + (counts == 0))
    new = alpha * np.exp(eta * group_loss)
    new = new / new.sum()
    return new, group_loss


def test_group_weights_update_equals_grpo():
    rng = np.random.default_rng(1)
    alpha = rng.dirichlet(np.ones(4)).astype(np.float32)
    values = rng.uniform(0, 3, size=7).astype(np.float32)
    groups = np.array([0, 0, 2, 2, 2, 3, 0], np.int32)  # group 1 absent
    valid = np.ones(7, bool)
    sums = group_robust.group_sums(jnp.asarray(values), jnp.asarray(groups), jnp.asarray(valid), 4)
    counts = group_robust.group_sums(jnp.ones(7), jnp.asarray(groups), jnp.asarray(valid), 4)
    got = group_robust.update_weights(jnp.asarray(alpha), sums, counts, eta=0.7)
    want, _ = _grpo_reference(alpha.astype(np.float64), values.astype(np.float64), groups, 0.7)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(float(jnp.sum(got)), 1.0, rtol=1e-6)


def test_pair_weights_give_grpos_objective_over_the_present_groups():
    rng = np.random.default_rng(2)
    alpha = rng.dirichlet(np.ones(5)).astype(np.float32)
    values = rng.uniform(0, 3, size=8).astype(np.float32)
    groups = np.array([0, 0, 1, 3, 3, 3, -1, 1], np.int32)
    valid = np.array([1, 1, 1, 1, 1, 1, 1, 0], bool)
    counts = group_robust.group_sums(jnp.ones(8), jnp.asarray(groups), jnp.asarray(valid), 5)
    weights = group_robust.pair_weights(jnp.asarray(alpha), jnp.asarray(groups), counts)
    got = float(jnp.sum(jnp.where(valid, weights * values, 0.0)) / valid.sum())
    present = [0, 1, 3]
    means = {g: values[(groups == g) & valid].mean() for g in present}
    robust = sum(alpha[g] * means[g] for g in present) / sum(alpha[g] for g in present)
    ungrouped = values[6]  # weight 1; the 6 grouped pairs share the robust mean
    np.testing.assert_allclose(got, (robust * 6 + ungrouped) / 7, rtol=1e-5)
    # Uniform weights and every group present: the plain mean.
    uniform = jnp.full((5,), 0.2)
    full = np.array([0, 1, 2, 3, 4, 0, 1, 2], np.int32)
    counts = group_robust.group_sums(jnp.ones(8), jnp.asarray(full), jnp.ones(8, bool), 5)
    w = group_robust.pair_weights(uniform, jnp.asarray(full), counts)
    means = np.array([values[full == g].mean() for g in range(5)])
    np.testing.assert_allclose(float(jnp.sum(w * values) / 8), means.mean(), rtol=1e-5)
