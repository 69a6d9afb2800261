"""Personas through a bridge: persona items -> static-shape arrays -> P(direction | persona), the
one mode switch (golden, official, learned), and a saved bridge applied to new personas.

    table = persona_table(records, tokenizer, section, backbone, backbone_config, seed=0)  # items, features
    arrays = persona_arrays(table, indices, draws, max_items)          # [B, M, ...] static shapes
    dist = distributions(mode, params, arrays, records)                # [B, 90, 3]: the mode switch
    reader = PersonaBridge(bridge.load(policy_folder), tokenizer)      # a saved bridge on new personas:
    dist = reader.distributions(histories, records)                    #   the same arrays, the same switch
    tokens = reader.soft_tokens(edited(dist[0], {"Likes humor": "positive"})[None])

Training (`bridge.setup`: pretraining, the fixed distributions, probes) and evaluation
(`alignx eval --mode pba_soft`, `alignx generate --preference / --persona`) both go through
`persona_arrays` and `distributions`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alignx_jax import data
from alignx_jax import preferences as prefs
from alignx_jax.bridge import _io, _networks, _rules
from alignx_jax.errors import InputError
from alignx_jax.models import llama

FEATURE_CHUNK = 64  # item views per encoder call (one compiled shape)


@dataclasses.dataclass
class PersonaTable:
    """Every record's persona items (capped at max_items), their features, the record's label."""

    items: list[data.PersonaItems]
    features: list[np.ndarray] | None  # [n_i, 2D] each (learned mode)
    labels: np.ndarray  # int32 [N, 90] class indices of the record's direction
    has_label: np.ndarray  # bool [N]
    draws: list[np.ndarray]  # the items each record's persona shows in DPO / evaluation (indices)


def labels_of(records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.full((len(records), prefs.NUM_DIMENSIONS), _rules.NEUTRAL, np.int32)
    has = np.zeros((len(records),), bool)
    for i, record in enumerate(records):
        if record.get(prefs.DIRECTION) is not None:
            labels[i] = np.asarray(_rules.direction_classes(prefs.binarize(record[prefs.DIRECTION])))
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


def item_features_of(items: list[data.PersonaItems], backbone: dict, backbone_config: llama.LlamaConfig,
              item_length: int) -> list[np.ndarray]:
    """[n_i, 2D] per record: every item view pooled by the frozen backbone."""
    if not items:
        return []
    views = np.concatenate([it.tokens.reshape(-1, item_length) for it in items])
    masks = np.concatenate([it.token_mask.reshape(-1, item_length) for it in items])
    pooled = _networks.encode_views(backbone, backbone_config, views, masks, chunk=FEATURE_CHUNK)
    out, offset = [], 0
    for it in items:
        n = len(it) * data.VIEWS
        out.append(pooled[offset:offset + n].reshape(len(it), -1))
        offset += n
    return out


def persona_table(records, tokenizer, section: Any, backbone, backbone_config, *, seed: int | None) -> PersonaTable:
    """Every record's persona items (capped at `section.max_items`, views of `section.item_length`
    tokens), their features (when a `backbone` encodes them) and labels. seed None: every item shows
    (held-out evaluation); else the seeded per-record training draw. `section`: the run's bridge
    settings (train's `BridgeSection`: max_items, item_length, demo_probability)."""
    items = [data.persona_items(data.cap_history(data.full_history(r), section.max_items), tokenizer,
                                item_length=section.item_length) for r in records]
    features = item_features_of(items, backbone, backbone_config, section.item_length) if backbone is not None else None
    labels, has = labels_of(records)
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


# ---- distributions: the one mode switch --------------------------------------------------------

@jax.jit
def _learned(params, features, types, mask):
    return _networks.learned_distribution(params, features, types, mask)


@jax.jit
def _official(directions, mask):
    return _rules.official_distribution(directions, mask)


def distributions(mode: str, params: dict, arrays: Mapping[str, np.ndarray],
                  records: Sequence[Mapping[str, Any]] | None = None) -> np.ndarray:
    """[B, 90, 3] P(direction | persona) of the personas of `persona_arrays` as `mode` gives it:
    golden (each record's own direction), official (the official rule over the shown items'
    directions), learned (the bridge network over the shown items' features)."""
    if mode == "golden":
        missing = [i for i, r in enumerate(records or ()) if r.get(prefs.DIRECTION) is None]
        if records is None or missing:
            raise InputError(f"bridge mode golden needs every record's {prefs.DIRECTION!r}"
                             + (f" (record {missing[0]} has none)" if missing else ""))
        return _rules.golden_distribution(np.stack([r[prefs.DIRECTION] for r in records]))
    if mode == "official":
        return np.asarray(_official(arrays["directions"], arrays["mask"] & arrays["direction_mask"]))
    return np.asarray(_learned(params, arrays["features"], arrays["types"], arrays["mask"]))


def table_distributions(mode: str, params: dict, table: PersonaTable, records: Sequence[Mapping[str, Any]],
                        max_items: int, chunk: int = 64) -> np.ndarray:
    """[N, 90, 3] of every record of a table (each showing its draw), in chunks of one compiled shape."""
    n = len(records)
    if mode == "golden":
        return distributions(mode, {}, {}, records)
    out = np.zeros((n, prefs.NUM_DIMENSIONS, _rules.NUM_CLASSES), np.float32)
    for start in range(0, n, chunk):
        idx = list(range(start, min(start + chunk, n)))
        padded = idx + [idx[0]] * (chunk - len(idx))
        arrays = persona_arrays(table, padded, [table.draws[i] for i in padded], max_items)
        out[start:start + len(idx)] = distributions(mode, params, arrays)[:len(idx)]
    return out


# ---- a saved bridge on new personas --------------------------------------------------------------

class PersonaBridge:
    """`saved` (a `SavedBridge`, what training writes beside its policy) with the tokenizer that
    renders persona items: P(direction | shown history), user edits, and the soft tokens the policy
    reads. Serves `alignx eval --mode pba_soft` and `alignx generate --preference / --persona`."""

    def __init__(self, saved: _io.SavedBridge, tokenizer: Any):
        self.saved, self.tokenizer = saved, tokenizer
        self.params = jax.tree.map(jnp.asarray, saved.params)
        if saved.mode == "learned" and (saved.backbone_config is None or "backbone" not in saved.params):
            raise InputError("the saved learned bridge has no encoder backbone (bridge.json 'backbone')")
        self.max_items = saved.max_items

    @property
    def soft(self) -> bool:
        return self.saved.conditioning == "soft"

    @property
    def num_slots(self) -> int:
        return self.saved.config.soft_tokens

    def arrays(self, histories: Sequence[data.History]) -> dict[str, np.ndarray]:
        """`persona_arrays` of the shown histories (every item of each, capped at max_items)."""
        settings = dataclasses.make_dataclass("Settings", ["max_items", "item_length", "demo_probability"])(
            self.max_items, max(self.saved.item_length, 2), 1.0)
        backbone = self.params.get("backbone") if self.saved.mode == "learned" else None
        table = persona_table([history_record(h) for h in histories], self.tokenizer, settings, backbone,
                              self.saved.backbone_config, seed=None)
        return persona_arrays(table, range(len(histories)), table.draws, self.max_items)

    def distributions(self, histories: Sequence[data.History], records: Sequence[Mapping[str, Any]] | None = None
                      ) -> np.ndarray:
        """[N, 90, 3] for each shown history (golden: each record's own direction)."""
        if self.saved.mode == "golden":
            return distributions("golden", {}, {}, records)
        return distributions(self.saved.mode, self.params, self.arrays(histories))

    def soft_tokens(self, dist: np.ndarray) -> np.ndarray:
        """[N, K, D] soft preference tokens of distributions [N, 90, 3]."""
        table = self.params["soft"]["table"]
        return np.asarray(_rules.soft_tokens(table, jnp.asarray(dist), self.saved.config.soft_select))


def history_record(history: data.History) -> dict:
    """A record whose full history is `history` (what `persona_table` reads)."""
    return {prefs.UGC: list(history.ugc), prefs.PAIRS: list(history.pairs), prefs.DEMOGRAPHICS: history.demographics}


def neutral_distribution() -> np.ndarray:
    """[90, 3]: nothing known of the user (every dimension neutral)."""
    return np.asarray(_rules.direction_distribution(jnp.full((prefs.NUM_DIMENSIONS,), prefs.NEUTRAL)))


def edited(distribution: np.ndarray, settings: Mapping[str, str]) -> np.ndarray:
    """A distribution [90, 3] with the user's settings ({"Likes science": "positive", ...}) applied."""
    if not settings:
        return np.asarray(distribution)
    dims, values = _rules.edits_from_labels(settings)
    return np.asarray(_rules.set_preferences(jnp.asarray(distribution), dims, values))


def generate_with_soft_tokens(params: Any, config: Any, ids: Sequence[int], slots: Sequence[int],
                              soft_tokens: np.ndarray, *, sampling: Any, seed: int = 0) -> list[int]:
    """New token ids of one prompt whose `slots` (positions in `ids`) read the soft tokens [K, D]."""
    from alignx_jax.models import decoding

    return decoding.generate_ids(params, [list(ids)], jax.random.key(seed), config=config, sampling=sampling,
                                 width_step=128, soft=([slots], np.asarray(soft_tokens)[None]))[0]
