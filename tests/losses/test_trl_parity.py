"""TRL 1.16 as the reference: its own loss code, driven on log-probs we choose.

``DPOTrainer._compute_loss`` (trl/trainer/dpo_trainer.py) computes every DPO-family loss inline,
after a model forward. We call it unbound with a stand-in ``self`` carrying the attributes it reads
and a stand-in model whose per-token log-probs put each sequence's whole log-prob on its first
completion token (zeros elsewhere), so TRL's token sums reproduce our per-sequence inputs exactly and
its ``completion_mask`` carries the token counts that ipo, sigmoid_norm and sft divide by.
Reference log-probs go in as TRL's precomputed ``ref_chosen_logps``/``ref_rejected_logps``.
CPO/SimPO and ORPO come from TRL's experimental trainers' ``cpo_loss`` and ``odds_ratio_loss``.
"""

from __future__ import annotations

import collections
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

trl = pytest.importorskip("trl")
torch = pytest.importorskip("torch")
if not trl.__version__.startswith("1.16."):
    pytest.skip(f"the TRL parity tests drive TRL 1.16 internals; found trl {trl.__version__}", allow_module_level=True)

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # we import experimental trainers on purpose
from trl.experimental.cpo import CPOTrainer  # noqa: E402
from trl.experimental.orpo import ORPOTrainer  # noqa: E402
from trl.trainer.dpo_trainer import DPOTrainer  # noqa: E402

from alignx_jax import losses  # noqa: E402

_CPU = types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x)


class _StandInModel:
    """Returns fixed per-token log-probs in place of a causal LM's fused-LM-head outputs."""

    training = True

    def __init__(self, log_probs):
        self.log_probs = log_probs

    def __call__(self, **kwargs):
        zeros = torch.zeros_like(self.log_probs)
        return types.SimpleNamespace(
            log_probs=self.log_probs,
            entropy=zeros,
            mean_logits=zeros,
            is_top1=torch.zeros_like(self.log_probs, dtype=torch.bool),
            log_sum_sq_probs=zeros,  # WPO weights then are exp(mean token log-prob)
        )


def trl_dpo(
    loss_type,
    logps,
    chosen_tokens,
    rejected_tokens,
    *,
    dtype=torch.float64,
    loss_weights=None,
    beta=0.1,
    label_smoothing=0.0,
    f_divergence_type="reverse_kl",
    f_alpha_divergence_coef=0.5,
    discopop_tau=0.05,
    use_weighting=False,
):
    """TRL's batch loss and its gradients w.r.t. (policy_chosen, policy_rejected, ref_chosen, ref_rejected).

    ``logps`` is those four numpy vectors; ``loss_type`` a name or a list (with ``loss_weights``).
    Also returns TRL's logged metrics (batch means).
    """
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = (np.asarray(x, np.float64) for x in logps)
    batch = len(policy_chosen)
    counts = np.concatenate([chosen_tokens, rejected_tokens]).astype(int)
    length = 1 + int(counts.max())  # one prompt token, then the completion
    completion_mask = torch.zeros(2 * batch, length, dtype=torch.long)
    for row, count in enumerate(counts):
        completion_mask[row, 1 : 1 + count] = 1
    leaves = [
        torch.tensor(x, dtype=dtype, requires_grad=True)
        for x in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    ]
    policy = torch.cat(leaves[:2])
    log_probs = torch.cat([policy[:, None], torch.zeros(2 * batch, length - 2, dtype=dtype)], dim=1)
    inputs = {
        "input_ids": torch.zeros(2 * batch, length, dtype=torch.long),
        "attention_mask": torch.ones(2 * batch, length, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": leaves[2],
        "ref_rejected_logps": leaves[3],
    }
    loss_types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    trainer = types.SimpleNamespace(
        model=_StandInModel(log_probs),
        accelerator=_CPU,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        beta=beta,
        label_smoothing=label_smoothing,
        loss_types=loss_types,
        loss_weights=loss_weights or [1.0] * len(loss_types),
        f_divergence_type=f_divergence_type,
        f_alpha_divergence_coef=f_alpha_divergence_coef,
        use_weighting=use_weighting,
        args=types.SimpleNamespace(discopop_tau=discopop_tau, gradient_checkpointing_kwargs=None),
        _metrics=collections.defaultdict(lambda: collections.defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # exo_pair builds torch.tensor(label_smoothing) in the default dtype
    try:
        loss = DPOTrainer._compute_loss(trainer, trainer.model, inputs, return_outputs=False)
    finally:
        torch.set_default_dtype(default_dtype)
    loss.backward()
    # A loss that ignores an input (sft ignores the reference) leaves its grad None: zero gradient.
    grads = tuple(np.zeros(batch) if leaf.grad is None else leaf.grad.double().numpy() for leaf in leaves)
    metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}
    return float(loss.detach()), grads, metrics


def trl_cpo(loss_type, policy_chosen, policy_rejected, *, beta, label_smoothing=0.0, simpo_gamma=0.5):
    """TRL's per-example CPO/SimPO losses and their gradients w.r.t. the two policy inputs."""
    leaves = [torch.tensor(np.asarray(x, np.float64), requires_grad=True) for x in (policy_chosen, policy_rejected)]
    trainer = types.SimpleNamespace(
        alpha=0.0,
        loss_type=loss_type,
        beta=beta,
        label_smoothing=label_smoothing,
        simpo_gamma=simpo_gamma,
        accelerator=_CPU,
    )
    losses, chosen_rewards, rejected_rewards = CPOTrainer.cpo_loss(trainer, *leaves)
    losses.sum().backward()  # examples are independent: the gradient of the sum is per example
    return (
        losses.detach().numpy(),
        tuple(leaf.grad.numpy() for leaf in leaves),
        (chosen_rewards.numpy(), rejected_rewards.numpy()),
    )


def trl_odds_ratio(policy_chosen_avg, policy_rejected_avg, *, beta):
    """TRL's per-example ORPO odds-ratio term beta * log sigmoid(log odds) (float32: TRL casts with
    ``.float()``), its gradients, and its logged means of log sigmoid(log odds) and log odds."""
    leaves = [
        torch.tensor(np.asarray(x, np.float32), requires_grad=True) for x in (policy_chosen_avg, policy_rejected_avg)
    ]
    trainer = types.SimpleNamespace(beta=beta, accelerator=_CPU)
    losses, _, _, mean_ratio, mean_log_odds = ORPOTrainer.odds_ratio_loss(trainer, *leaves)
    losses.sum().backward()
    grads = tuple(leaf.grad.numpy() for leaf in leaves)
    return losses.detach().numpy(), grads, float(mean_ratio.detach()), float(mean_log_odds.detach())


def ours(name, logps, **kwargs):
    """Our per-example losses, the gradients of their mean w.r.t. the four log-probs, and the metrics,
    in float64 (so that float rounding is far below the 1e-6 tolerance)."""
    with jax.enable_x64(True):
        args = [jnp.asarray(x, jnp.float64) for x in logps]
        fn = losses.get(name)
        values, metrics = fn(*args, **kwargs)
        grads = jax.grad(lambda *a: jnp.mean(fn(*a, **kwargs)[0]), argnums=(0, 1, 2, 3))(*args)
        return np.asarray(values), [np.asarray(g) for g in grads], {k: np.asarray(v) for k, v in metrics.items()}


def _example(logps, tokens, index):
    return [x[index : index + 1] for x in logps], tokens[0][index : index + 1], tokens[1][index : index + 1]


# Loss-specific TRL hyper-parameters; beta = 0.3 rather than TRL's default, so that a beta applied twice shows.
_HPARAMS = {
    "robust": {"label_smoothing": 0.2},
    "exo_pair": {"label_smoothing": 1e-3},
    "discopop": {"discopop_tau": 0.05},
}
_PER_EXAMPLE = (
    "sigmoid",
    "hinge",
    "ipo",
    "robust",
    "exo_pair",
    "nca_pair",
    "bco_pair",
    "sppo_hard",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
)
_F_DIVERGENCE_LOSSES = (
    "sigmoid",
    "sigmoid_norm",
    "hinge",
    "ipo",
    "exo_pair",
    "robust",
    "discopop",
)  # TRL lines 810-816
_CASES = [(name, "reverse_kl") for name in _PER_EXAMPLE] + [
    (name, f) for name in _F_DIVERGENCE_LOSSES for f in ("forward_kl", "js_divergence", "alpha_divergence")
]
_TRL_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)


@pytest.mark.parametrize("name,f_divergence_type", _CASES)
def test_per_example_loss_matches_trl(pair_batch, name, f_divergence_type):
    hparams = {"beta": 0.3, **_HPARAMS.get(name, {})}
    if f_divergence_type != "reverse_kl":
        hparams.update(f_divergence_type=f_divergence_type, f_alpha_divergence_coef=0.3)
    # TRL's alpha-divergence clamp table has no float64 entry (dpo_trainer.py line 1375), so that
    # transform runs in float32 on TRL's side: its values carry float32 rounding (eps 1.2e-7 on
    # O(1) quantities through exp), hence 1e-5 there and 1e-6 everywhere else.
    dtype, tol = (torch.float32, 1e-5) if f_divergence_type == "alpha_divergence" else (torch.float64, 1e-6)
    tokens = (pair_batch.chosen_tokens, pair_batch.rejected_tokens)
    data = {"chosen_tokens": tokens[0], "rejected_tokens": tokens[1]}
    values, grads, metrics = ours(name, pair_batch.logps, **hparams, **data)

    # Per-example values: TRL on each example alone (its loss is the batch mean).
    trl_values = [
        trl_dpo(name, *_example(pair_batch.logps, tokens, i), dtype=dtype, **hparams)[0] for i in range(len(values))
    ]
    np.testing.assert_allclose(values, trl_values, rtol=tol, atol=tol)
    trl_loss, trl_grads, trl_metrics = trl_dpo(name, pair_batch.logps, *tokens, dtype=dtype, **hparams)
    np.testing.assert_allclose(values.mean(), trl_loss, rtol=tol, atol=tol)
    for ours_grad, trl_grad in zip(grads, trl_grads):
        np.testing.assert_allclose(ours_grad, trl_grad, rtol=tol, atol=tol)
    for key in _TRL_METRICS:
        np.testing.assert_allclose(metrics[key].mean(), trl_metrics[key], rtol=tol, atol=tol, err_msg=key)


@pytest.mark.parametrize(
    "name,trl_name,hparams",
    [
        ("aot", "aot", {"label_smoothing": 0.1}),
        ("aot_pair", "aot_unpaired", {"label_smoothing": 0.1}),
        ("aot_unpaired", "aot_unpaired", {}),
        ("sft", "sft", {}),
    ],
)
def test_batch_level_loss_matches_trl(pair_batch, name, trl_name, hparams):
    """aot sorts over the batch and sft averages over all its tokens: compare the batch loss and gradients."""
    tokens = (pair_batch.chosen_tokens, pair_batch.rejected_tokens)
    values, grads, _ = ours(
        name, pair_batch.logps, beta=0.3, chosen_tokens=tokens[0], rejected_tokens=tokens[1], **hparams
    )
    trl_loss, trl_grads, _ = trl_dpo(trl_name, pair_batch.logps, *tokens, beta=0.3, **hparams)
    np.testing.assert_allclose(values.mean(), trl_loss, rtol=1e-6, atol=1e-6)
    for ours_grad, trl_grad in zip(grads, trl_grads):
        np.testing.assert_allclose(ours_grad, trl_grad, rtol=1e-6, atol=1e-6)


def test_mixture_matches_trl_loss_weights(pair_batch):
    """MPO-style mixture: TRL's loss_type list with loss_weights is the mean of our weighted sum."""
    tokens = (pair_batch.chosen_tokens, pair_batch.rejected_tokens)
    mix = {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]}
    values, grads, metrics = ours(
        "mixture", pair_batch.logps, beta=0.3, chosen_tokens=tokens[0], rejected_tokens=tokens[1], **mix
    )
    trl_loss, trl_grads, _ = trl_dpo(
        mix["loss_type"], pair_batch.logps, *tokens, beta=0.3, loss_weights=mix["loss_weights"]
    )
    np.testing.assert_allclose(values.mean(), trl_loss, rtol=1e-6, atol=1e-6)
    for ours_grad, trl_grad in zip(grads, trl_grads):
        np.testing.assert_allclose(ours_grad, trl_grad, rtol=1e-6, atol=1e-6)
    weighted = sum(w * metrics[f"loss/{n}"] for n, w in zip(mix["loss_type"], mix["loss_weights"]))
    np.testing.assert_allclose(values, weighted, rtol=1e-12)


def test_example_weights_match_trl_wpo_weighting(pair_batch):
    """TRL's WPO weighting multiplies each pair's loss by exp(mean token log-prob) of chosen and
    rejected; with the stand-in model (zero log_sum_sq_probs) that is exp(l_w/|y_w| + l_l/|y_l|)."""
    tokens = (pair_batch.chosen_tokens, pair_batch.rejected_tokens)
    policy_chosen, policy_rejected = pair_batch.logps[:2]
    weights = np.exp(policy_chosen / tokens[0] + policy_rejected / tokens[1])
    values, grads, _ = ours("sigmoid", pair_batch.logps, beta=0.3, weights=weights)
    trl_loss, trl_grads, _ = trl_dpo("sigmoid", pair_batch.logps, *tokens, beta=0.3, use_weighting=True)
    np.testing.assert_allclose(values.mean(), trl_loss, rtol=1e-6, atol=1e-12)
    for ours_grad, trl_grad in zip(grads, trl_grads):
        np.testing.assert_allclose(ours_grad, trl_grad, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize(
    "name,trl_loss_type,hparams",
    [
        ("simpo", "simpo", {"beta": 2.0, "simpo_gamma": 0.7, "label_smoothing": 0.1}),
        ("cpo", "sigmoid", {"beta": 0.3, "label_smoothing": 0.1, "cpo_alpha": 0.0}),
    ],
)
def test_cpo_family_matches_trl(pair_batch, name, trl_loss_type, hparams):
    """TRL's CPO trainer feeds average log-probs to simpo and summed ones to sigmoid (CPO)."""
    policy_chosen, policy_rejected = pair_batch.logps[:2]
    if name == "simpo":
        trl_inputs = (policy_chosen / pair_batch.chosen_tokens, policy_rejected / pair_batch.rejected_tokens)
    else:
        trl_inputs = (policy_chosen, policy_rejected)
    trl_hparams = {k: v for k, v in hparams.items() if k != "cpo_alpha"}
    trl_values, trl_grads, trl_rewards = trl_cpo(trl_loss_type, *trl_inputs, **trl_hparams)

    fn = losses.get(name)
    with jax.enable_x64(True):
        inputs = [jnp.asarray(x, jnp.float64) for x in trl_inputs]

        def loss_of(chosen, rejected):
            if name == "simpo":  # differentiate w.r.t. the averages, which is what TRL sees
                return fn(
                    jnp.asarray(policy_chosen),
                    jnp.asarray(policy_rejected),
                    policy_chosen_avg=chosen,
                    policy_rejected_avg=rejected,
                    **hparams,
                )
            return fn(chosen, rejected, **hparams)

        values, metrics = loss_of(*inputs)
        grads = jax.grad(lambda c, r: jnp.sum(loss_of(c, r)[0]), argnums=(0, 1))(*inputs)
    np.testing.assert_allclose(values, trl_values, rtol=1e-6, atol=1e-6)
    for ours_grad, trl_grad in zip(grads, trl_grads):
        np.testing.assert_allclose(ours_grad, trl_grad, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(metrics["rewards/chosen"], trl_rewards[0], rtol=1e-12)
    np.testing.assert_allclose(metrics["rewards/rejected"], trl_rewards[1], rtol=1e-12)


def test_cpo_nll_term_matches_trl_when_lengths_are_equal(pair_batch):
    """TRL's CPO loss is mean(cpo_loss) + cpo_alpha * NLL over all chosen tokens; ours adds each
    example's mean token NLL, which has the same batch mean when every chosen response has n tokens."""
    policy_chosen, policy_rejected = pair_batch.logps[:2]
    n = 7
    trl_values, _, _ = trl_cpo("sigmoid", policy_chosen, policy_rejected, beta=0.3)
    trl_loss = trl_values.mean() + 0.5 * -(policy_chosen.sum() / (n * len(policy_chosen)))
    values, _, metrics = ours(
        "cpo", pair_batch.logps, beta=0.3, cpo_alpha=0.5, chosen_tokens=np.full(5, n), rejected_tokens=np.full(5, n)
    )
    np.testing.assert_allclose(values.mean(), trl_loss, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(metrics["nll_loss"], -policy_chosen / n, rtol=1e-12)


def test_orpo_matches_trl(pair_batch):
    """ORPO per example is NLL_w - (TRL's odds_ratio_loss term). TRL computes that term in float32
    (``.float()`` in odds_ratio_loss), so we compare in float32 within 1e-5: float32 eps 1.2e-7
    amplified by log1mexp near 0, where average log-probs of short responses come close."""
    avg_chosen = pair_batch.logps[0] / pair_batch.chosen_tokens
    avg_rejected = pair_batch.logps[1] / pair_batch.rejected_tokens
    trl_terms, trl_grads, trl_mean_ratio, trl_mean_log_odds = trl_odds_ratio(avg_chosen, avg_rejected, beta=0.3)
    fn = losses.get("orpo")
    inputs = [jnp.asarray(x, jnp.float32) for x in (avg_chosen, avg_rejected)]

    def loss_of(chosen, rejected):
        return fn(chosen, rejected, policy_chosen_avg=chosen, policy_rejected_avg=rejected, beta=0.3)

    values, metrics = loss_of(*inputs)
    grads = jax.grad(lambda c, r: jnp.sum(loss_of(c, r)[0]), argnums=(0, 1))(*inputs)
    np.testing.assert_allclose(values, -avg_chosen - trl_terms, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads[0], -1.0 - trl_grads[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads[1], -trl_grads[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(metrics["log_odds_ratio"].mean(), trl_mean_ratio, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(metrics["log_odds_chosen"].mean(), trl_mean_log_odds, rtol=1e-5, atol=1e-5)
