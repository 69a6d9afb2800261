"""Registry names, descriptions, user losses by import path, and the errors of bad input."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from alignx_jax import losses
from alignx_jax.losses import _registry

# Every name the issue promises (TRL's loss_type names where TRL has the loss).
PROMISED = (
    "sigmoid",
    "ipo",
    "hinge",
    "robust",
    "bco_pair",
    "exo_pair",
    "nca_pair",
    "sppo_hard",
    "aot",
    "aot_pair",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
    "simpo",
    "orpo",
    "cpo",
    "rpo",
    "sft",
    "mixture",
)


def test_every_promised_name_is_registered_with_a_one_line_description():
    assert set(PROMISED) <= set(losses.names()) and len(losses.names()) >= 18
    descriptions = losses.descriptions()
    assert list(descriptions) == sorted(descriptions)
    for name in losses.names():
        assert descriptions[name] and "\n" not in descriptions[name], name
        assert losses.get(name).__doc__, name  # formula and paper live in the docstring


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match=r"unknown loss 'sigmod'; did you mean 'sigmoid'"):
        losses.get("sigmod")


@pytest.fixture
def fresh_registry(monkeypatch):
    monkeypatch.setattr(_registry, "_LOSSES", dict(_registry._LOSSES))
    monkeypatch.setattr(_registry, "_DESCRIPTIONS", dict(_registry._DESCRIPTIONS))


def test_register_adds_a_loss_and_refuses_a_taken_name(fresh_registry):
    @losses.register("margin_squared")
    def margin_squared(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta=0.1):
        """Squared margin, for the test."""
        margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
        return margin**2, {}

    assert losses.get("margin_squared") is margin_squared
    assert losses.descriptions()["margin_squared"] == "Squared margin, for the test."
    with pytest.raises(ValueError, match="'sigmoid' is already registered"):
        losses.register("sigmoid", margin_squared)

    # A registered loss can join a mixture; batch inputs it does not name (token counts) are not passed to it.
    logps = [jnp.asarray(x) for x in ([-1.0, -2.0], [-3.0, -1.0], [-2.0, -1.0], [-1.0, -2.0])]
    mixed, metrics = losses.get("mixture")(
        *logps,
        loss_type=["sigmoid", "margin_squared"],
        loss_weights=[1.0, 2.0],
        beta=0.2,
        chosen_tokens=[1, 2],
        rejected_tokens=[1, 2],
    )
    expected = losses.get("sigmoid")(*logps, beta=0.2)[0] + 2.0 * margin_squared(*logps, beta=0.2)[0]
    np.testing.assert_allclose(mixed, expected, rtol=1e-6)
    assert set(metrics) >= {"loss/sigmoid", "loss/margin_squared", "rewards/chosen"}


def test_resolve_by_name_checks_hparams():
    assert losses.resolve("ipo", {"beta": 0.5}) is losses.get("ipo")
    # The trial call passes token counts, which length-normalized components of a mixture need.
    assert losses.resolve("mixture", {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]})
    with pytest.raises(TypeError, match=r"loss 'ipo' does not accept the call form .* \['gamma'\]"):
        losses.resolve("ipo", {"gamma": 1.0})


_USER_MODULE = """
import jax
import jax.numpy as jnp

def good(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta=0.1):
    z = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -jax.nn.log_sigmoid(z), {"rewards/margins": z}

def two_inputs(policy_chosen, policy_rejected):
    return policy_chosen - policy_rejected, {}

def scalar(policy_chosen, policy_rejected, ref_chosen, ref_rejected):
    return jnp.mean(policy_chosen - policy_rejected), {}

def no_metrics(policy_chosen, policy_rejected, ref_chosen, ref_rejected):
    return policy_chosen - policy_rejected

def crashes(policy_chosen, policy_rejected, ref_chosen, ref_rejected):
    return policy_chosen @ jnp.ones((3, 3)), {}

NOT_A_FUNCTION = 3
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_user_losses.py").write_text(_USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_user_losses"


def test_resolve_a_user_loss_by_import_path(user_module):
    fn = losses.resolve(f"{user_module}:good", {"beta": 0.2})
    pc, pr, rc, rr = (np.array(x) for x in ([-1.0, -2.0], [-3.0, -1.0], [-2.0, -1.0], [-1.0, -2.0]))
    values, _ = fn(*(jnp.asarray(x, jnp.float32) for x in (pc, pr, rc, rr)), beta=0.2)
    z = 0.2 * ((pc - rc) - (pr - rr))
    np.testing.assert_allclose(values, np.logaddexp(0, -z), rtol=1e-6)


@pytest.mark.parametrize(
    "attr,error,message",
    [
        ("two_inputs", TypeError, r"does not accept the call form fn\(policy_chosen, policy_rejected, ref_chosen"),
        ("scalar", TypeError, r"must return per-example losses of shape \[B\].* returned \(\)"),
        ("no_metrics", TypeError, r"must return \(losses \[B\], metrics dict\)"),
        ("crashes", ValueError, r"failed on a trial batch of 2 float32 log-probs"),
        ("NOT_A_FUNCTION", TypeError, r"'NOT_A_FUNCTION' is a int, not a function"),
        ("missing", ValueError, r"module 'my_user_losses' has no attribute 'missing'"),
    ],
)
def test_resolve_reports_a_bad_user_loss_clearly(user_module, attr, error, message):
    with pytest.raises(error, match=message):
        losses.resolve(f"{user_module}:{attr}")


def test_resolve_reports_a_missing_module():
    with pytest.raises(ValueError, match=r"loss 'no_such_pkg.losses:fn': cannot import module 'no_such_pkg.losses'"):
        losses.resolve("no_such_pkg.losses:fn")


_B = jnp.asarray([-1.0, -2.0, -3.0])


@pytest.mark.parametrize(
    "call,error,message",
    [
        (
            lambda: losses.get("sigmoid")(_B[:, None], _B, _B, _B),
            ValueError,
            r"loss 'sigmoid': policy_chosen must have shape \[B\].*got shape \(3, 1\)",
        ),
        (
            lambda: losses.get("hinge")(_B, _B[:2], _B, _B),
            ValueError,
            r"loss 'hinge': policy_rejected has shape \(2,\), expected \(3,\)",
        ),
        (
            lambda: losses.get("sigmoid")(_B, _B, jnp.asarray([1, 2, 3]), _B),
            TypeError,
            r"loss 'sigmoid': ref_chosen must be a floating array of log-probs, got dtype int32",
        ),
        (
            lambda: losses.get("sigmoid")(_B, _B, _B, None),
            ValueError,
            r"pass both ref_chosen and ref_rejected, or neither",
        ),
        (lambda: losses.get("ipo")(_B, _B, _B, _B), ValueError, r"loss 'ipo' is length-normalized: pass chosen_tokens"),
        (
            lambda: losses.get("simpo")(_B, _B),
            ValueError,
            r"loss 'simpo' works on average log-probs: pass chosen_tokens",
        ),
        (
            lambda: losses.get("orpo")(_B, _B, policy_chosen_avg=_B),
            ValueError,
            r"pass both policy_chosen_avg and policy_rejected_avg",
        ),
        (lambda: losses.get("sft")(_B, _B), ValueError, r"token_average='batch' needs chosen_tokens"),
        (
            lambda: losses.get("sigmoid")(_B, _B, chosen_tokens=[1.0, 2.0]),
            ValueError,
            r"chosen_tokens has shape \(2,\), expected \(3,\)",
        ),
        (lambda: losses.get("sigmoid")(_B, _B, f_divergence_type="kl"), ValueError, r"unknown f_divergence_type 'kl'"),
        (lambda: losses.get("sigmoid")(_B, _B, beta=0.0), ValueError, r"loss 'sigmoid': beta must be > 0, got 0.0"),
        (
            lambda: losses.get("robust")(_B, _B, label_smoothing=0.5),
            ValueError,
            r"label_smoothing must be in \[0, 0.5\)",
        ),
        (
            lambda: losses.get("exo_pair")(_B, _B, label_smoothing=0.0),
            ValueError,
            r"label_smoothing must be in \(0, 1\)",
        ),
        (lambda: losses.get("aot")(_B, _B, weights=_B), ValueError, r"sorts over the batch, so per-example weights"),
        (
            lambda: losses.get("mixture")(_B, _B, loss_type=["sigmoid", "ipo"], loss_weights=[1.0]),
            ValueError,
            r"loss_weights has 1 values for 2 losses",
        ),
        (
            lambda: losses.get("mixture")(_B, _B, loss_type=["sigmoid"], simpo_gamma=1.0),
            ValueError,
            r"hyper-parameters \['simpo_gamma'\] are accepted by none of \['sigmoid'\]",
        ),
        (
            lambda: losses.get("hinge")(_B, _B, label_smoothing=0.1),
            TypeError,
            r"unexpected keyword argument 'label_smoothing'",
        ),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_mixture_weights_every_component_or_refuses(fresh_registry):
    losses.register("no_weights", lambda pc, pr, rc, rr: (pc - pr, {}), description="takes no weights")
    logps = [jnp.asarray(x) for x in ([-1.0, -2.0], [-3.0, -1.0], [-2.0, -1.0], [-1.0, -2.0])]
    weights = jnp.asarray([0.5, 2.0])
    mixed, _ = losses.get("mixture")(*logps, loss_type=["sigmoid", "hinge"], weights=weights)
    plain, _ = losses.get("mixture")(*logps, loss_type=["sigmoid", "hinge"])
    np.testing.assert_allclose(mixed, plain * weights, rtol=1e-6)
    with pytest.raises(ValueError, match=r"weights given, but \['no_weights'\] take no per-example weights"):
        losses.get("mixture")(*logps, loss_type=["sigmoid", "no_weights"], weights=weights)
