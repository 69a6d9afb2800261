"""A preference bridge for training (the `bridge:` section of `alignx train`): the persona
tables, pretraining, the fixed distributions, the held-out figures, controllability probes and the
bridge saved beside the policy. The step hook (what the jitted step does with the bridge) is
`train/bridge.py`; everything else of the bridge lives here, beside the networks and the rules.

    persona items (UGC, pairs, demographics) --frozen backbone, once--> item features  [n, 2D] per record
    pretraining:  class-balanced CE of bridge(pool(features of a random draw)) vs the record's direction
    DPO:          text  - each record's MAP profile rendered into the PBA prompt (profile "precomputed")
                  soft  - K soft tokens = sum_{d,c} p[d, c] table[k, d, c] in the prompt's slots
                  joint - soft, and the bridge keeps learning: loss = DPO + ce_weight * CE, one step
    evaluation:   held-out accuracy with the policy conditioned the same way; bridge_macro_f1 (marked
                  dimensions, beside the majority-class baseline); controllability (flip one marked
                  dimension in the bridge output: does the preference follow within probe pairs that
                  contrast on exactly that dimension?)

The item features come from the start model's first `encoder_layer` layers, frozen, so they are
computed once per item and looked up by record (the step carries [P, M, 2D] features per pair,
never item tokens). With `encoder_trainable`, those layers learn during pretraining (the CE step
encodes the drawn items' tokens), then freeze and the features are computed again, once. Rule modes
(`official`, `golden`) have no encoder and no bridge network: their one-hot distributions come from
the rules; with soft conditioning only the table trains. `section` is the run's bridge settings
(train's `BridgeSection`); nothing here reads a config file.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from alignx_jax import preferences as prefs
from alignx_jax.bridge._io import SavedBridge
from alignx_jax.bridge._metrics import bridge_report
from alignx_jax.bridge._networks import (
    BridgeConfig,
    backbone_slice,
    bridge_logits,
    class_balanced_ce,
    class_weights,
    init_params,
    item_features,
    label_table,
    pool_items,
)
from alignx_jax.bridge._persona import (
    PersonaTable,
    draw_items,
    item_features_of,
    persona_arrays,
    persona_table,
    table_distributions,
)
from alignx_jax.bridge._rules import NEUTRAL, NUM_CLASSES, direction_distribution, map_profile, set_preferences, soft_tokens
from alignx_jax.errors import InputError
from alignx_jax.models import llama


@dataclasses.dataclass
class BridgeSetup:
    """Everything a bridge run needs besides the policy."""

    section: Any
    config: BridgeConfig
    backbone: dict | None
    backbone_config: llama.LlamaConfig | None
    train: PersonaTable
    heldout: PersonaTable
    class_weights: np.ndarray
    params: dict  # the bridge's trainable params after pretraining ({'soft'} only in rule modes)
    pretrain_log: list[dict]
    train_records: list[dict]
    heldout_records: list[dict]
    train_dist: np.ndarray | None = None  # [N, 90, 3] fixed distributions (all but joint training)
    probe_sets: dict | None = None  # the loop's packed controllability probes

    @property
    def soft(self) -> bool:
        return self.section.conditioning == "soft"

    @property
    def learned(self) -> bool:
        return self.section.mode == "learned"


def _distributions(setup: BridgeSetup, params: dict, table: PersonaTable, records: Sequence[Mapping[str, Any]]
                   ) -> np.ndarray:
    """[N, 90, 3] of every record of a table, as the run's mode gives it (`table_distributions`)."""
    return table_distributions(setup.section.mode, params, table, records, setup.section.max_items)


# ---- pretraining ----------------------------------------------------------------------------------

def _ce_loss(params, arrays, weights, backbone_config=None):
    """Class-balanced CE over the labelled personas; with `params["backbone"]` (a trainable encoder)
    the features are encoded from the items' tokens here, so the backbone gets gradients."""
    if "backbone" in params:
        features = item_features(params["backbone"], backbone_config, arrays["item_tokens"],
                                 arrays["item_token_mask"])
    else:
        features = arrays["features"]
    logits = bridge_logits(params["bridge"], pool_items(
        params["encoder"], features, arrays["types"], arrays["mask"]))
    per_example = class_balanced_ce(logits, arrays["labels"], weights)
    valid = arrays["has_label"].astype(jnp.float32)
    return jnp.sum(per_example * valid) / jnp.maximum(valid.sum(), 1.0)


def pretrain(setup: BridgeSetup, seed: int, report=lambda text: None) -> tuple[dict, dict]:
    """Class-balanced CE of the learned bridge on the training records' personas (a fresh random
    draw of items each time); returns (params, backbone) and logs the loss and held-out macro-F1.
    With `encoder_trainable` the backbone layers learn too; else the returned backbone is the given one."""
    section = setup.section
    trainable = {"encoder": setup.params["encoder"], "bridge": setup.params["bridge"]}
    if section.encoder_trainable:
        trainable["backbone"] = setup.backbone
    optimizer = optax.adamw(optax.cosine_decay_schedule(section.pretrain_lr, max(section.pretrain_steps, 1),
                                                        alpha=0.1))
    opt_state = optimizer.init(trainable)
    weights = jnp.asarray(setup.class_weights)

    @jax.jit
    def step(params, opt_state, arrays):
        loss, grads = jax.value_and_grad(_ce_loss)(params, arrays, weights, setup.backbone_config)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    labelled = np.flatnonzero(setup.train.has_label)
    if not len(labelled):
        raise InputError(f"bridge mode learned needs training records with a {prefs.DIRECTION!r} to learn from")
    keys = ("types", "mask", "labels", "has_label") + (
        ("item_tokens", "item_token_mask") if section.encoder_trainable else ("features",))
    for i in range(section.pretrain_steps):
        rng = np.random.default_rng([seed, 14, 1, i])
        idx = rng.choice(labelled, section.pretrain_batch, replace=len(labelled) < section.pretrain_batch)
        draws = [draw_items(setup.train.items[j], rng, section.demo_probability) for j in idx]
        arrays = persona_arrays(setup.train, idx, draws, section.max_items, with_tokens=section.encoder_trainable)
        trainable, opt_state, loss = step(trainable, opt_state, {k: arrays[k] for k in keys})
        if (i + 1) % max(section.pretrain_steps // 5, 1) == 0 or i + 1 == section.pretrain_steps:
            row = {"pretrain_step": i + 1, "ce": float(loss)}
            if setup.heldout_records:
                if section.encoder_trainable:  # the held-out features of the backbone as it is now
                    setup.heldout.features = item_features_of(setup.heldout.items, trainable["backbone"],
                                                              setup.backbone_config, section.item_length)
                row.update(macro_f1_report(setup, {**setup.params, **trainable}))
            setup.pretrain_log.append(row)
            report(f"bridge pretraining step {i + 1}/{section.pretrain_steps}: ce {float(loss):.4f}"
                   + (f", held-out macro-F1 {row['macro_f1']:.3f} (majority {row['majority_macro_f1']:.3f})"
                      if "macro_f1" in row else ""))
    backbone = trainable.pop("backbone", setup.backbone)
    return {**setup.params, **trainable}, backbone


def macro_f1_report(setup: BridgeSetup, params: dict) -> dict:
    """Held-out users' recovered directions: macro-F1 over marked dimensions and the majority baseline."""
    has = setup.heldout.has_label
    if not has.any() or not setup.train.has_label.any():
        return {}
    dist = _distributions(setup, params, setup.heldout, setup.heldout_records)
    predicted = np.asarray(jnp.argmax(dist, -1))
    true = setup.heldout.labels
    if not np.any(true[has] != NEUTRAL):
        return {}
    return bridge_report(predicted[has], true[has], setup.train.labels[setup.train.has_label])


# ---- set-up --------------------------------------------------------------------------------------

def setup(section: Any, *, train_records: list[dict], heldout_records: list[dict], params: dict,
          model: llama.LlamaConfig, tokenizer, seed: int, report=lambda text: None) -> BridgeSetup:
    """Encode every persona item once, pretrain the learned bridge, fix what stays fixed."""
    if section.encoder_layer > model.num_layers:
        raise InputError(f"config key 'bridge.encoder_layer' = {section.encoder_layer} exceeds the model's "
                         f"{model.num_layers} layers")
    config = BridgeConfig(backbone_size=model.hidden_size, model_size=model.hidden_size,
                          encoder_layer=section.encoder_layer, persona_size=section.persona_size,
                          hidden_size=section.hidden_size, soft_tokens=section.soft_tokens,
                          soft_select=section.soft_select)
    backbone = backbone_config = None
    if section.mode == "learned":
        # A copy of the start model's first layers: the policy trains on, the encoder stays as it was.
        backbone = jax.tree.map(jnp.copy, backbone_slice(params, section.encoder_layer))
        backbone_config = model.replace(num_layers=section.encoder_layer, remat=False, attention_impl="auto")
    report(f"bridge: encoding the persona items of {len(train_records)} training / {len(heldout_records)} "
           f"held-out records" + (f" with the model's first {section.encoder_layer} layer(s)" if backbone else ""))
    train = persona_table(train_records, tokenizer, section, backbone, backbone_config, seed=seed)
    heldout = persona_table(heldout_records, tokenizer, section, backbone, backbone_config, seed=None)
    initial = init_params(config, jax.random.key(seed + 14))
    if section.soft_init == "labels":
        initial["soft"]["table"] = label_table(params["embed"]["embedding"], profile_label_ids(tokenizer),
                                               section.soft_tokens)
    kept = initial if section.mode == "learned" else {"soft": initial["soft"]}
    weights = class_weights(train.labels[train.has_label]) if train.has_label.any() else \
        np.ones((prefs.NUM_DIMENSIONS, NUM_CLASSES), np.float32)
    out = BridgeSetup(section, config, backbone, backbone_config, train, heldout, weights, kept, [],
                      list(train_records), list(heldout_records))
    if section.mode == "learned" and section.pretrain_steps:
        out.params, trained_backbone = pretrain(out, seed, report)
        if section.encoder_trainable:  # frozen from here on: every item is encoded again, once
            out.backbone = trained_backbone
            for table in (out.train, out.heldout):
                table.features = item_features_of(table.items, trained_backbone, backbone_config, section.item_length)
    if not section.conditioning == "soft" or not section.joint:
        out.train_dist = _distributions(out, out.params, train, train_records)
    return out


def profile_label_ids(tokenizer) -> list[list[list[int]]]:
    """[90][3] token ids of each dimension's label per class (negative, neutral: none, positive)."""
    ids = lambda text: list(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    return [[ids(dim.negative), [], ids(dim.positive)] for dim in prefs.dimensions()]


def profiled(records: Sequence[Mapping[str, Any]], dist: np.ndarray) -> list[dict]:
    """Records with `profile` = the MAP profile text of their distribution (text conditioning)."""
    return [dict(r, **{prefs.PROFILE: map_profile(d)}) for r, d in zip(records, dist)]


def text_records(setup: BridgeSetup) -> tuple[list[dict], list[dict]]:
    """Training and held-out records whose `profile` is the bridge's MAP profile."""
    heldout_dist = _distributions(setup, setup.params, setup.heldout, setup.heldout_records)
    return profiled(setup.train_records, setup.train_dist), profiled(setup.heldout_records, heldout_dist)



# ---- evaluation and saving -------------------------------------------------------------------------

def current_params(setup: BridgeSetup, trained: dict | None) -> dict:
    return setup.params if trained is None else {**setup.params, **trained}


def records_soft_tokens(setup: BridgeSetup | None, trained: dict | None, records: Sequence[Mapping[str, Any]]
                        ) -> np.ndarray | None:
    """[len(records), K, D] soft tokens of held-out records (the same dicts as the setup's held-out
    records, e.g. an `eval.limit` subset); None without soft conditioning."""
    if setup is None or not setup.soft:
        return None
    position = {id(r): i for i, r in enumerate(setup.heldout_records)}
    missing = [i for i, r in enumerate(records) if id(r) not in position]
    if missing:
        raise ValueError(f"records {missing[:5]} are not the bridge's held-out records")
    return heldout_soft_tokens(setup, trained)[[position[id(r)] for r in records]]


def summary_fields(setup: BridgeSetup, trained: dict | None) -> dict:
    """The bridge's part of summary.json (controllability is added by train/export.py, which scores it)."""
    report = macro_f1_report(setup, current_params(setup, trained))
    return {"bridge_mode": setup.section.mode, "bridge_conditioning": setup.section.conditioning,
            "bridge_macro_f1": report.get("macro_f1"), "bridge_majority_macro_f1": report.get("majority_macro_f1"),
            "bridge_exact_marked": report.get("exact_marked"), "bridge_marked_dimensions": report.get("marked_dimensions"),
            "bridge_pretrain": setup.pretrain_log}


def heldout_soft_tokens(setup: BridgeSetup, trained: dict | None) -> np.ndarray:
    """[N_heldout, K, D] soft tokens of the held-out personas under the current bridge."""
    params = current_params(setup, trained)
    dist = _distributions(setup, params, setup.heldout, setup.heldout_records)
    return np.asarray(soft_tokens(jnp.asarray(params["soft"]["table"]), jnp.asarray(dist), setup.config.soft_select))


@dataclasses.dataclass(frozen=True)
class Probe:
    """A held-out record's history pair that contrasts on exactly one dimension."""

    record: int  # index in the held-out records
    dim: int
    value: float  # the user's direction on `dim` (what the chosen response shows)
    pair: Mapping[str, Any]


def probes(setup: BridgeSetup, limit: int) -> list[Probe]:
    """Up to `limit` probe pairs, spread over the held-out records (one per record per round)."""
    per_record = []
    for i, record in enumerate(setup.heldout_records):
        found = []
        for pair in record.get(prefs.PAIRS) or ():
            direction = pair.get(prefs.DIRECTION)
            if direction is None:
                continue
            marked = np.flatnonzero(np.asarray(direction) != prefs.NEUTRAL)
            if len(marked) == 1 and direction[marked[0]] in (prefs.POSITIVE, prefs.NEGATIVE):
                found.append(Probe(i, int(marked[0]), float(direction[marked[0]]), pair))
        per_record.append(found)
    out, round_ = [], 0
    while len(out) < limit and any(len(f) > round_ for f in per_record):
        out += [f[round_] for f in per_record if len(f) > round_][:limit - len(out)]
        round_ += 1
    return out


def probe_records(setup: BridgeSetup, found: Sequence[Probe], *, edited: bool) -> list[dict]:
    """One record per probe: the user's record with the probe pair as its (prompt, chosen, rejected).
    edited: the pair swapped (the response that follows the flipped dimension is 'chosen') and,
    with text conditioning, the flipped MAP profile."""
    out = []
    dist = None
    if not setup.soft:
        dist = _distributions(setup, setup.params, setup.heldout, setup.heldout_records)
    for p in found:
        record = dict(setup.heldout_records[p.record])
        chosen, rejected = p.pair["chosen"], p.pair["rejected"]
        if edited:
            chosen, rejected = rejected, chosen
        record.update({prefs.PROMPT: p.pair["prompt"], prefs.CHOSEN: chosen, prefs.REJECTED: rejected})
        if dist is not None:
            d = np.array(dist[p.record])
            if edited:
                d[p.dim] = np.asarray(direction_distribution(jnp.float32(1.0 - p.value)))
            record[prefs.PROFILE] = map_profile(d)
        out.append(record)
    return out


def probe_soft_tokens(setup: BridgeSetup, trained: dict | None, found: Sequence[Probe], *, edited: bool
                      ) -> np.ndarray:
    """[n_probes, K, D] soft tokens: the probe user's bridge output (edited: the probe's dimension
    set to the opposite direction, `bridge.set_preferences`)."""
    if not found:
        return np.zeros((0, setup.section.soft_tokens, setup.config.model_size), np.float32)
    params = current_params(setup, trained)
    dist = jnp.asarray(_distributions(setup, params, setup.heldout, setup.heldout_records)[[p.record for p in found]])
    if edited:
        dist = jax.vmap(set_preferences)(dist, jnp.asarray([[p.dim] for p in found]),
                                                    jnp.asarray([[1.0 - p.value] for p in found]))
    return np.asarray(soft_tokens(jnp.asarray(params["soft"]["table"]), dist, setup.config.soft_select))


def saved_bridge(setup: BridgeSetup, trained: dict | None) -> SavedBridge:
    """The bridge to write beside the exported model (backbone slice included for the learned mode)."""
    params = jax.tree.map(np.asarray, current_params(setup, trained))
    if setup.backbone is not None:
        params = {**params, "backbone": jax.tree.map(np.asarray, setup.backbone)}
    return SavedBridge(setup.section.mode, setup.section.conditioning, setup.config, setup.backbone_config,
                                  setup.section.item_length, params, setup.section.max_items)
