"""A saved preference bridge applied to personas: P(direction | persona), user edits, and what the
policy reads (soft tokens, or the MAP profile text). Serves `alignx eval --mode pba_soft` and
`alignx generate --preference / --persona`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alignx_jax import bridge, data
from alignx_jax import preferences as prefs
from alignx_jax.errors import InputError


class PersonaBridge:
    """`saved` (a `bridge.SavedBridge`) with the tokenizer that renders persona items."""

    def __init__(self, saved: bridge.SavedBridge, tokenizer: Any):
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

    def distributions(self, histories: Sequence[data.History], records: Sequence[Mapping[str, Any]] | None = None
                      ) -> np.ndarray:
        """[N, 90, 3] for each shown history (golden: each record's own direction)."""
        n = len(histories)
        if self.saved.mode == "golden":
            if records is None or any(r.get(prefs.DIRECTION) is None for r in records):
                raise InputError(f"a golden bridge needs each record's {prefs.DIRECTION!r}")
            return bridge.golden_distribution(np.stack([r[prefs.DIRECTION] for r in records]))
        items = [data.persona_items(data.cap_history(h, self.max_items), self.tokenizer,
                                    item_length=max(self.saved.item_length, 2)) for h in histories]
        m = self.max_items
        if self.saved.mode == "official":
            directions = np.full((n, m, prefs.NUM_DIMENSIONS), prefs.NEUTRAL, np.float32)
            mask = np.zeros((n, m), bool)
            for i, it in enumerate(items):
                directions[i, :len(it)] = it.directions
                mask[i, :len(it)] = it.has_direction
            return np.asarray(bridge.official_distribution(jnp.asarray(directions), jnp.asarray(mask)))
        length = self.saved.item_length
        views = [it.tokens.reshape(-1, length) for it in items]
        masks = [it.token_mask.reshape(-1, length) for it in items]
        pooled = bridge.encode_views(self.params["backbone"], self.saved.backbone_config,
                                     np.concatenate(views) if views else np.zeros((0, length), np.int32),
                                     np.concatenate(masks) if masks else np.zeros((0, length), bool))
        features = np.zeros((n, m, bridge.VIEWS * self.saved.backbone_config.hidden_size), np.float32)
        types = np.zeros((n, m), np.int32)
        item_mask = np.zeros((n, m), bool)
        offset = 0
        for i, it in enumerate(items):
            k = len(it)
            features[i, :k] = pooled[offset:offset + k * bridge.VIEWS].reshape(k, -1)
            types[i, :k], item_mask[i, :k] = it.item_types, True
            offset += k * bridge.VIEWS
        return np.asarray(bridge.learned_distribution(self.params, jnp.asarray(features), jnp.asarray(types),
                                                      jnp.asarray(item_mask)))

    def soft_tokens(self, distributions: np.ndarray) -> np.ndarray:
        """[N, K, D] soft preference tokens of distributions [N, 90, 3]."""
        return np.asarray(bridge.soft_tokens(self.params["soft"]["table"], jnp.asarray(distributions)))


def neutral_distribution() -> np.ndarray:
    """[90, 3]: nothing known of the user (every dimension neutral)."""
    return np.asarray(bridge.direction_distribution(jnp.full((prefs.NUM_DIMENSIONS,), prefs.NEUTRAL)))


def edited(distribution: np.ndarray, settings: Mapping[str, str]) -> np.ndarray:
    """A distribution [90, 3] with the user's settings ({"Likes science": "positive", ...}) applied."""
    if not settings:
        return np.asarray(distribution)
    dims, values = bridge.edits_from_labels(settings)
    return np.asarray(bridge.set_preferences(jnp.asarray(distribution), dims, values))


def generate_with_soft_tokens(params: Any, config: Any, ids: Sequence[int], slots: Sequence[int],
                              soft_tokens: np.ndarray, *, sampling: Any, seed: int = 0) -> list[int]:
    """New token ids of one prompt whose `slots` (positions in `ids`) read the soft tokens [K, D]."""
    from alignx_jax.models import decoding

    return decoding.generate_ids(params, [list(ids)], jax.random.key(seed), config=config, sampling=sampling,
                                 width_step=128, soft=([slots], np.asarray(soft_tokens)[None]))[0]
