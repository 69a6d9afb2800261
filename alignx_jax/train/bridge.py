"""PBA with a preference bridge in `alignx train` (the `bridge:` config section, issue 14).

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
the landed rules; with soft conditioning only the table trains.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from alignx_jax import bridge as bridge_lib
from alignx_jax import data
from alignx_jax import preferences as prefs
from alignx_jax.errors import InputError
from alignx_jax.models import llama
from alignx_jax.train.config import BridgeSection, OptimizerConfig
from alignx_jax.train.optimizer import learning_rate

FEATURE_CHUNK = 64  # item views per encoder call (one compiled shape)


@dataclasses.dataclass
class PersonaTable:
    """Every record's persona items (capped at max_items), their features, the record's label."""

    items: list[data.PersonaItems]
    features: list[np.ndarray] | None  # [n_i, 2D] each (learned mode)
    labels: np.ndarray  # int32 [N, 90] class indices of the record's direction
    has_label: np.ndarray  # bool [N]
    draws: list[np.ndarray]  # the items each record's persona shows in DPO / evaluation (indices)


@dataclasses.dataclass
class BridgeSetup:
    """Everything a bridge run needs besides the policy."""

    section: BridgeSection
    config: bridge_lib.BridgeConfig
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


# ---- persona tables ------------------------------------------------------------------------------

def _labels(records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.full((len(records), prefs.NUM_DIMENSIONS), bridge_lib.NEUTRAL, np.int32)
    has = np.zeros((len(records),), bool)
    for i, record in enumerate(records):
        if record.get(prefs.DIRECTION) is not None:
            labels[i] = np.asarray(bridge_lib.direction_classes(prefs.binarize(record[prefs.DIRECTION])))
            has[i] = True
    return labels, has


def _split_items(items: data.PersonaItems) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the UGC, pair and demo items of a record's item list."""
    t = items.item_types
    return np.flatnonzero(t == data.UGC_ITEM), np.flatnonzero(t == data.PAIR_ITEM), np.flatnonzero(t == data.DEMO_ITEM)


def draw_items(items: data.PersonaItems, rng: np.random.Generator, demo_probability: float = 1.0) -> np.ndarray:
    """A persona as training shows it: the official draw of 0-4 UGC items and 0-4 pairs (both 0:
    up to 4 of each), and the demographic text with `demo_probability` (held-out personas show it
    always: a lower value trains for personas without one)."""
    ugc, pairs, demo = _split_items(items)
    num_ugc = min(int(rng.integers(0, 5)), len(ugc))
    num_pairs = min(int(rng.integers(0, 5)), len(pairs))
    if not (num_ugc or num_pairs):
        num_ugc, num_pairs = min(4, len(ugc)), min(4, len(pairs))
    chosen = [rng.choice(ugc, num_ugc, replace=False), rng.choice(pairs, num_pairs, replace=False)]
    if len(demo) and rng.random() < demo_probability:
        chosen.append(demo)
    return np.sort(np.concatenate(chosen).astype(np.int64))


def _features(items: list[data.PersonaItems], backbone: dict, backbone_config: llama.LlamaConfig,
              item_length: int) -> list[np.ndarray]:
    """[n_i, 2D] per record: every item view pooled by the frozen backbone."""
    if not items:
        return []
    views = np.concatenate([it.tokens.reshape(-1, item_length) for it in items])
    masks = np.concatenate([it.token_mask.reshape(-1, item_length) for it in items])
    pooled = bridge_lib.encode_views(backbone, backbone_config, views, masks, chunk=FEATURE_CHUNK)
    out, offset = [], 0
    for it in items:
        n = len(it) * data.VIEWS
        out.append(pooled[offset:offset + n].reshape(len(it), -1))
        offset += n
    return out


def _table(records, tokenizer, section: BridgeSection, backbone, backbone_config, *, seed: int | None
           ) -> PersonaTable:
    """seed None: every item shows (held-out evaluation); else the seeded per-record training draw."""
    items = [data.persona_items(data.cap_history(data.full_history(r), section.max_items), tokenizer,
                                item_length=section.item_length) for r in records]
    features = _features(items, backbone, backbone_config, section.item_length) if backbone is not None else None
    labels, has = _labels(records)
    if seed is None:
        draws = [np.arange(len(it)) for it in items]
    else:
        draws = [draw_items(it, np.random.default_rng([seed, 14, i]), section.demo_probability)
                 for i, it in enumerate(items)]
    return PersonaTable(items, features, labels, has, draws)


def persona_arrays(table: PersonaTable, indices: Sequence[int], draws: Sequence[np.ndarray], max_items: int,
                   *, with_tokens: bool = False) -> dict[str, np.ndarray]:
    """Static-shape persona arrays of some records: features [B, M, 2D] (learned mode), types [B, M],
    mask [B, M], item directions [B, M, 90] and their mask, labels [B, 90], has_label [B]; with_tokens:
    also the items' views, item_tokens int32 [B, M, 2, L] and item_token_mask [B, M, 2, L]."""
    out = {k: [] for k in ("features", "types", "mask", "directions", "direction_mask")}
    tokens, token_mask = [], []
    for i, draw in zip(indices, draws):
        items = table.items[i].take(draw)
        width = table.features[i].shape[-1] if table.features is not None else 1
        features = table.features[i][draw] if table.features is not None else np.zeros((len(draw), width), np.float32)
        for key, value in zip(out, data.pad_items(features, items, max_items)):
            out[key].append(value)
        if with_tokens:
            pad = ((0, max_items - len(items)), (0, 0), (0, 0))
            tokens.append(np.pad(items.tokens, pad))
            token_mask.append(np.pad(items.token_mask, pad))
    arrays = {k: np.stack(v) for k, v in out.items()}
    if with_tokens:
        arrays.update(item_tokens=np.stack(tokens).astype(np.int32), item_token_mask=np.stack(token_mask))
    arrays["labels"] = table.labels[np.asarray(indices)]
    arrays["has_label"] = table.has_label[np.asarray(indices)]
    return arrays


# ---- distributions --------------------------------------------------------------------------------

@jax.jit
def _learned(params, features, types, mask):
    return bridge_lib.learned_distribution(params, features, types, mask)


@jax.jit
def _official(directions, mask):
    return bridge_lib.official_distribution(directions, mask)


def distributions(setup: BridgeSetup, params: dict, table: PersonaTable, records: Sequence[Mapping[str, Any]],
                  chunk: int = 64) -> np.ndarray:
    """[N, 90, 3] P(direction | persona) of every record of a table, as the run's mode gives it."""
    n = len(records)
    if setup.section.mode == "golden":
        missing = [i for i, r in enumerate(records) if r.get(prefs.DIRECTION) is None]
        if missing:
            raise InputError(f"bridge mode golden needs every record's {prefs.DIRECTION!r} (record {missing[0]} has none)")
        return bridge_lib.golden_distribution(np.stack([r[prefs.DIRECTION] for r in records]))
    out = np.zeros((n, prefs.NUM_DIMENSIONS, bridge_lib.NUM_CLASSES), np.float32)
    for start in range(0, n, chunk):
        idx = list(range(start, min(start + chunk, n)))
        pad = chunk - len(idx)
        arrays = persona_arrays(table, idx + [idx[0]] * pad, [table.draws[i] for i in idx + [idx[0]] * pad],
                                setup.section.max_items)
        if setup.learned:
            dist = _learned(params, arrays["features"], arrays["types"], arrays["mask"])
        else:
            dist = _official(arrays["directions"], arrays["mask"] & arrays["direction_mask"])
        out[start:start + len(idx)] = np.asarray(dist)[:len(idx)]
    return out


# ---- pretraining ----------------------------------------------------------------------------------

def _ce_loss(params, arrays, weights, backbone_config=None):
    """Class-balanced CE over the labelled personas; with `params["backbone"]` (a trainable encoder)
    the features are encoded from the items' tokens here, so the backbone gets gradients."""
    if "backbone" in params:
        features = bridge_lib.item_features(params["backbone"], backbone_config, arrays["item_tokens"],
                                            arrays["item_token_mask"])
    else:
        features = arrays["features"]
    logits = bridge_lib.bridge_logits(params["bridge"], bridge_lib.pool_items(
        params["encoder"], features, arrays["types"], arrays["mask"]))
    per_example = bridge_lib.class_balanced_ce(logits, arrays["labels"], weights)
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
                    setup.heldout.features = _features(setup.heldout.items, trainable["backbone"],
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
    dist = distributions(setup, params, setup.heldout, setup.heldout_records)
    predicted = np.asarray(jnp.argmax(dist, -1))
    true = setup.heldout.labels
    if not np.any(true[has] != bridge_lib.NEUTRAL):
        return {}
    return bridge_lib.bridge_report(predicted[has], true[has], setup.train.labels[setup.train.has_label])


# ---- set-up --------------------------------------------------------------------------------------

def setup(section: BridgeSection, *, train_records: list[dict], heldout_records: list[dict], params: dict,
          model: llama.LlamaConfig, tokenizer, seed: int, report=lambda text: None) -> BridgeSetup:
    """Encode every persona item once, pretrain the learned bridge, fix what stays fixed."""
    if section.encoder_layer > model.num_layers:
        raise InputError(f"config key 'bridge.encoder_layer' = {section.encoder_layer} exceeds the model's "
                         f"{model.num_layers} layers")
    config = bridge_lib.BridgeConfig(backbone_size=model.hidden_size, model_size=model.hidden_size,
                                     encoder_layer=section.encoder_layer, persona_size=section.persona_size,
                                     hidden_size=section.hidden_size, soft_tokens=section.soft_tokens)
    backbone = backbone_config = None
    if section.mode == "learned":
        # A copy of the start model's first layers: the policy trains on, the encoder stays as it was.
        backbone = jax.tree.map(jnp.copy, bridge_lib.backbone_slice(params, section.encoder_layer))
        backbone_config = model.replace(num_layers=section.encoder_layer, remat=False, attention_impl="auto")
    report(f"bridge: encoding the persona items of {len(train_records)} training / {len(heldout_records)} "
           f"held-out records" + (f" with the model's first {section.encoder_layer} layer(s)" if backbone else ""))
    train = _table(train_records, tokenizer, section, backbone, backbone_config, seed=seed)
    heldout = _table(heldout_records, tokenizer, section, backbone, backbone_config, seed=None)
    initial = bridge_lib.init_params(config, jax.random.key(seed + 14))
    kept = initial if section.mode == "learned" else {"soft": initial["soft"]}
    weights = bridge_lib.class_weights(train.labels[train.has_label]) if train.has_label.any() else \
        np.ones((prefs.NUM_DIMENSIONS, bridge_lib.NUM_CLASSES), np.float32)
    out = BridgeSetup(section, config, backbone, backbone_config, train, heldout, weights, kept, [],
                      list(train_records), list(heldout_records))
    if section.mode == "learned" and section.pretrain_steps:
        out.params, trained_backbone = pretrain(out, seed, report)
        if section.encoder_trainable:  # frozen from here on: every item is encoded again, once
            out.backbone = trained_backbone
            for table in (out.train, out.heldout):
                table.features = _features(table.items, trained_backbone, backbone_config, section.item_length)
    if not section.conditioning == "soft" or not section.joint:
        out.train_dist = distributions(out, out.params, train, train_records)
    return out


def profiled(records: Sequence[Mapping[str, Any]], dist: np.ndarray) -> list[dict]:
    """Records with `profile` = the MAP profile text of their distribution (text conditioning)."""
    return [dict(r, **{prefs.PROFILE: bridge_lib.map_profile(d)}) for r, d in zip(records, dist)]


def text_records(setup: BridgeSetup) -> tuple[list[dict], list[dict]]:
    """Training and held-out records whose `profile` is the bridge's MAP profile."""
    heldout_dist = distributions(setup, setup.params, setup.heldout, setup.heldout_records)
    return profiled(setup.train_records, setup.train_dist), profiled(setup.heldout_records, heldout_dist)


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

    def distribution(self, params, micro):
        if self.joint:
            return bridge_lib.learned_distribution(params, micro["persona_features"], micro["persona_types"],
                                                   micro["persona_mask"])
        return micro["persona_dist"]

    def soft_tokens(self, params, micro):
        return bridge_lib.soft_tokens(params["soft"]["table"], self.distribution(params, micro))

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
    return BridgeStep(setup.section.joint, setup.section.ce_weight, weights, optimizer)


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
    arrays = persona_arrays(setup.train, safe, [setup.train.draws[i] for i in safe], setup.section.max_items)
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


# ---- evaluation -------------------------------------------------------------------------------------

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
    """The bridge's part of summary.json (controllability is added by the loop, which scores it)."""
    report = macro_f1_report(setup, current_params(setup, trained))
    return {"bridge_mode": setup.section.mode, "bridge_conditioning": setup.section.conditioning,
            "bridge_macro_f1": report.get("macro_f1"), "bridge_majority_macro_f1": report.get("majority_macro_f1"),
            "bridge_exact_marked": report.get("exact_marked"), "bridge_marked_dimensions": report.get("marked_dimensions"),
            "bridge_pretrain": setup.pretrain_log}


def heldout_soft_tokens(setup: BridgeSetup, trained: dict | None) -> np.ndarray:
    """[N_heldout, K, D] soft tokens of the held-out personas under the current bridge."""
    params = current_params(setup, trained)
    dist = distributions(setup, params, setup.heldout, setup.heldout_records)
    return np.asarray(bridge_lib.soft_tokens(jnp.asarray(params["soft"]["table"]), jnp.asarray(dist)))


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
        dist = distributions(setup, setup.params, setup.heldout, setup.heldout_records)
    for p in found:
        record = dict(setup.heldout_records[p.record])
        chosen, rejected = p.pair["chosen"], p.pair["rejected"]
        if edited:
            chosen, rejected = rejected, chosen
        record.update({prefs.PROMPT: p.pair["prompt"], prefs.CHOSEN: chosen, prefs.REJECTED: rejected})
        if dist is not None:
            d = np.array(dist[p.record])
            if edited:
                d[p.dim] = np.asarray(bridge_lib.direction_distribution(jnp.float32(1.0 - p.value)))
            record[prefs.PROFILE] = bridge_lib.map_profile(d)
        out.append(record)
    return out


def probe_soft_tokens(setup: BridgeSetup, trained: dict | None, found: Sequence[Probe], *, edited: bool
                      ) -> np.ndarray:
    """[n_probes, K, D] soft tokens: the probe user's bridge output (edited: the probe's dimension
    set to the opposite direction, `bridge.set_preferences`)."""
    if not found:
        return np.zeros((0, setup.section.soft_tokens, setup.config.model_size), np.float32)
    params = current_params(setup, trained)
    dist = jnp.asarray(distributions(setup, params, setup.heldout, setup.heldout_records)[[p.record for p in found]])
    if edited:
        dist = jax.vmap(bridge_lib.set_preferences)(dist, jnp.asarray([[p.dim] for p in found]),
                                                    jnp.asarray([[1.0 - p.value] for p in found]))
    return np.asarray(bridge_lib.soft_tokens(jnp.asarray(params["soft"]["table"]), dist))


def saved(setup: BridgeSetup, trained: dict | None) -> bridge_lib.SavedBridge:
    """The bridge to write beside the exported model (backbone slice included for the learned mode)."""
    params = jax.tree.map(np.asarray, current_params(setup, trained))
    if setup.backbone is not None:
        params = {**params, "backbone": jax.tree.map(np.asarray, setup.backbone)}
    return bridge_lib.SavedBridge(setup.section.mode, setup.section.conditioning, setup.config, setup.backbone_config,
                                  setup.section.item_length, params, setup.section.max_items)
