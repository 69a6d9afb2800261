"""The preference bridge's hook into the training step (the `bridge:` section): what the
jitted step does with the bridge's params (`BridgeStep`: soft tokens for the prompts' slots, the
joint CE), the per-pair persona arrays each batch carries, and the prompt formats of a bridge run.

Everything else of the bridge (persona tables, pretraining, the mode switch, probes, saving) lives
in `alignx_jax.bridge` (`bridge.setup` builds the `BridgeSetup` this module reads).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

from alignx_jax import bridge as bridge_lib
from alignx_jax import data
from alignx_jax.train.config import OptimizerConfig
from alignx_jax.train.optimizer import learning_rate

BridgeSetup = bridge_lib.BridgeSetup


def heldout_format(setup: BridgeSetup | None) -> dict | None:
    """PromptFormat fields of the held-out policy prompts (`heldout.prepare`'s `policy_format`)."""
    if setup is None:
        return None
    if setup.soft:
        return {"kind": "pba", "soft_tokens": setup.section.soft_tokens}
    return {"kind": "pba", "profile": "precomputed"}


def prompt_format(setup: BridgeSetup | None, base: data.PromptFormat) -> data.PromptFormat:
    """The run's PBA format: K soft slots (soft), or the records' precomputed MAP profiles (text)."""
    if setup is None:
        return base
    if setup.soft:
        return dataclasses.replace(base, kind="pba", soft_tokens=setup.section.soft_tokens)
    return dataclasses.replace(base, kind="pba", profile="precomputed")



# ---- the step -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BridgeStep:
    """What the jitted step does with the bridge's params (hashable: a static part of `StepSpec`).

    soft tokens: from `persona_dist` [P, 90, 3] in the batch (fixed bridge), or, joint, from the
    learned bridge on `persona_features` [P, M, F] (+ types, mask); joint adds ce_weight * CE.
    """

    joint: bool
    ce_weight: float
    class_weights: tuple  # [90][3] floats (or [1][3]), `bridge.class_weights` as nested tuples
    optimizer: Any  # optax.GradientTransformation of the bridge params
    soft_select: str = "sum"  # `bridge.soft_tokens`' selection

    def distribution(self, params, micro):
        if self.joint:
            return bridge_lib.learned_distribution(params, micro["persona_features"], micro["persona_types"],
                                                   micro["persona_mask"])
        return micro["persona_dist"]

    def soft_tokens(self, params, micro):
        return bridge_lib.soft_tokens(params["soft"]["table"], self.distribution(params, micro), self.soft_select)

    def aux_loss(self, params, micro):
        """(summed ce_weight * CE over valid pairs, summed metrics) — zero without joint training."""
        if not self.joint:
            return jnp.zeros((), jnp.float32), {}
        logits = bridge_lib.bridge_logits(params["bridge"], bridge_lib.pool_items(
            params["encoder"], micro["persona_features"], micro["persona_types"], micro["persona_mask"]))
        ce = bridge_lib.class_balanced_ce(logits, micro["persona_labels"], jnp.asarray(self.class_weights))
        valid = micro["pair_valid"] & micro["persona_has_label"]
        total = jnp.sum(jnp.where(valid, ce, 0.0))
        return self.ce_weight * total, {"bridge/ce": total}


def step_spec(setup: BridgeSetup | None, optimizer_config: OptimizerConfig, steps: int) -> BridgeStep | None:
    if setup is None or not setup.soft:
        return None
    lr = learning_rate(dataclasses.replace(optimizer_config, lr=setup.section.lr), steps)
    optimizer = optax.adamw(lr)
    if optimizer_config.clip_norm is not None:
        optimizer = optax.chain(optax.clip_by_global_norm(optimizer_config.clip_norm), optimizer)
    weights = tuple(map(tuple, np.asarray(setup.class_weights, float).reshape(-1, bridge_lib.NUM_CLASSES)))
    return BridgeStep(setup.section.joint, setup.section.ce_weight, weights, optimizer, setup.section.soft_select)


def trainable_params(setup: BridgeSetup) -> dict:
    """What the step trains of the bridge: the table, and the encoder and bridge when joint."""
    if setup.section.joint:
        return setup.params
    return {"soft": setup.params["soft"]}


def pair_arrays(setup: BridgeSetup, sources: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pair persona arrays of one micro-batch's pair slots (`pair_source`, -1 = empty slot; the
    pipeline numbers a record's later epochs on: epoch e of record i is e * N + i)."""
    safe = np.where(sources >= 0, sources, 0) % len(setup.train_records)
    if not setup.section.joint:
        dist = setup.train_dist[safe]
        return {"persona_dist": np.where((sources >= 0)[:, None, None], dist, 1 / 3).astype(np.float32)}
    arrays = bridge_lib.persona_arrays(setup.train, safe, [setup.train.draws[i] for i in safe], setup.section.max_items)
    return {"persona_features": arrays["features"], "persona_types": arrays["types"],
            "persona_mask": arrays["mask"] & (sources >= 0)[:, None], "persona_labels": arrays["labels"],
            "persona_has_label": arrays["has_label"] & (sources >= 0)}


def batch_extras(setup: BridgeSetup | None, micro_batches: Sequence[Mapping[str, np.ndarray]]
                 ) -> dict[str, np.ndarray]:
    """[A, P, ...] persona arrays for the step's micro-batches ({} without soft conditioning)."""
    if setup is None or not setup.soft:
        return {}
    per = [pair_arrays(setup, b["pair_source"]) for b in micro_batches]
    return {k: np.stack([p[k] for p in per]) for k in per[0]}
