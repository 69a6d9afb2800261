"""Shared inputs for the loss tests."""

from __future__ import annotations

import types

import numpy as np
import pytest


@pytest.fixture
def pair_batch():
    """A small random batch: summed log-probs of responses with 1..12 tokens, references near the policy."""
    rng = np.random.default_rng(0)
    batch = 5
    chosen_tokens = rng.integers(1, 13, batch)
    rejected_tokens = rng.integers(1, 13, batch)
    policy_chosen = -rng.uniform(0.3, 2.5, batch) * chosen_tokens
    policy_rejected = -rng.uniform(0.3, 2.5, batch) * rejected_tokens
    ref_chosen = policy_chosen + rng.normal(0.0, 1.5, batch)
    ref_rejected = policy_rejected + rng.normal(0.0, 1.5, batch)
    return types.SimpleNamespace(
        logps=(policy_chosen, policy_rejected, ref_chosen, ref_rejected),
        chosen_tokens=chosen_tokens,
        rejected_tokens=rejected_tokens,
    )
