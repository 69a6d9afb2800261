"""Persona items for the persona encoder (`alignx_jax.bridge`): each item of a history as two
tokenized text views, padded to static shapes.

    UGC item   (type 0): view 0 the comment, view 1 the post it answers
    pair item  (type 1): view 0 the chosen response, view 1 the rejected one
    demo item  (type 2): view 0 the demographic text, view 1 empty

Each view is BOS + the text's ids, cut to `item_length` tokens. The encoder pools each view on its
own, so a pair item can read the difference between what the user chose and what they rejected.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from alignx_jax import preferences as prefs
from alignx_jax.data._rendering import History

UGC_ITEM, PAIR_ITEM, DEMO_ITEM = 0, 1, 2
VIEWS = 2


@dataclasses.dataclass(frozen=True)
class PersonaItems:
    """n items of one persona: tokens int32 [n, 2, L], token_mask bool [n, 2, L], item_types int32 [n],
    directions float32 [n, 90] (0.5 where an item has none) and has_direction bool [n]."""

    tokens: np.ndarray
    token_mask: np.ndarray
    item_types: np.ndarray
    directions: np.ndarray
    has_direction: np.ndarray

    def __len__(self) -> int:
        return len(self.item_types)

    def take(self, index: Sequence[int]) -> PersonaItems:
        index = np.asarray(index, np.int64)
        return PersonaItems(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))


def cap_history(history: History, max_items: int) -> History:
    """At most `max_items` items, the demographic text counting as one: UGC items and pairs are
    taken alternately (first UGC item, first pair, second UGC item, ...)."""
    room = max_items - (1 if history.demographics else 0)
    if room < 0:
        return dataclasses.replace(history, ugc=(), pairs=(), demographics="")
    num_ugc = num_pairs = 0
    while num_ugc + num_pairs < room and (num_ugc < len(history.ugc) or num_pairs < len(history.pairs)):
        if num_ugc < len(history.ugc) and (num_ugc <= num_pairs or num_pairs == len(history.pairs)):
            num_ugc += 1
        else:
            num_pairs += 1
    return dataclasses.replace(history, ugc=history.ugc[:num_ugc], pairs=history.pairs[:num_pairs])


def _direction(item) -> np.ndarray | None:
    value = item.get(prefs.DIRECTION)
    return None if value is None else np.asarray(value, np.float32)


def persona_items(history: History, tokenizer: Any, *, item_length: int) -> PersonaItems:
    """Every item of `history` (UGC, then pairs, then the demographic text when non-empty)."""
    if item_length < 2:
        raise ValueError(f"item_length must be >= 2 (BOS and a token), got {item_length}")
    views, types, directions = [], [], []
    for item in history.ugc:
        views.append((item["comment"], item["prompt"]))
        types.append(UGC_ITEM)
        directions.append(_direction(item))
    for item in history.pairs:
        views.append((item["chosen"], item["rejected"]))
        types.append(PAIR_ITEM)
        directions.append(_direction(item))
    if history.demographics:
        views.append((history.demographics, ""))
        types.append(DEMO_ITEM)
        directions.append(None)
    n = len(views)
    tokens = np.zeros((n, VIEWS, item_length), np.int32)
    mask = np.zeros((n, VIEWS, item_length), bool)
    bos = tokenizer.bos_token_id
    for i, pair in enumerate(views):
        for v, text in enumerate(pair):
            ids = ([] if bos is None else [bos]) + list(tokenizer.encode(text, add_special_tokens=False))
            ids = ids[:item_length]
            tokens[i, v, :len(ids)] = ids
            mask[i, v, :len(ids)] = True
    has = np.array([d is not None for d in directions], bool)
    stacked = np.stack([d if d is not None else np.full(prefs.NUM_DIMENSIONS, prefs.NEUTRAL, np.float32)
                        for d in directions]) if n else np.zeros((0, prefs.NUM_DIMENSIONS), np.float32)
    return PersonaItems(tokens, mask, np.asarray(types, np.int32), stacked.astype(np.float32), has)


def pad_items(features: np.ndarray, items: PersonaItems, max_items: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Static-shape persona arrays of one persona: (features [M, F], item_types [M], item_mask [M],
    directions [M, 90], direction_mask [M]) from its n <= M items and their features [n, F]."""
    n = len(items)
    if n > max_items:
        raise ValueError(f"{n} persona items exceed max_items {max_items}")
    out_features = np.zeros((max_items, features.shape[-1]), np.float32)
    out_features[:n] = features
    types = np.zeros((max_items,), np.int32)
    types[:n] = items.item_types
    mask = np.arange(max_items) < n
    directions = np.full((max_items, prefs.NUM_DIMENSIONS), prefs.NEUTRAL, np.float32)
    directions[:n] = items.directions
    direction_mask = np.zeros((max_items,), bool)
    direction_mask[:n] = items.has_direction
    return out_features, types, mask, directions, direction_mask
