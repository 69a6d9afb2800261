"""Synthetic personalized preference data in the exact AlignX schema.

Each user marks 2-4 of ten style-bearing dimensions (length, tone, formality, humour,
enthusiasm, five topics), or of a chosen set of dimensions (`dimensions`: users of some dimensions for
training, users of the others held out, to test a model on preference dimensions it never saw); the
chosen set may add fourteen more topics (`EXTRA_TOPIC_DIMENSIONS`: cinema, gaming, pets, ...), each an
aside of its own, for training on a broader range of preferences than the held-out ones. A
response is composed from parts that each style switches on or off; styles outside the subset never
appear. Every compared pair differs only along dimensions the user marked, and the user chooses the
response that matches their marks, so the choice is learnable from the persona. Users come in
mirror pairs (user 2k+1 flips every mark of user 2k) who see the same posts and candidate
responses, so a model that ignores the persona sits at 50%.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np

from alignx_jax import preferences as prefs

_TOPICS = {
    "Likes science": ("the new telescope images", "how vaccines are tested", "why the sky is blue"),
    "Likes sports": ("the marathon this weekend", "choosing running shoes", "the playoff game"),
    "Likes music": ("learning the guitar", "the new jazz album", "building a playlist"),
    "Likes travel": ("a week in Lisbon", "packing light for a trip", "cheap train passes"),
    "Likes finance": ("starting an index fund", "paying off a credit card", "a first monthly budget"),
}
_GENERAL = ("moving to a new city", "a rainy weekend", "cooking dinner for friends", "a noisy neighbour",
            "learning a language", "a job interview tomorrow", "fixing a bike", "a birthday gift")
_ASIDES = {
    "Likes science": "There is some neat science behind it, too: small experiments tell you more than guesses.",
    "Likes sports": "Think of it like training for a race: steady practice beats one big effort.",
    "Likes music": "It is a bit like practising scales: the rhythm comes once you repeat it.",
    "Likes travel": "It reminds me of planning a trip: the best part is often the detour.",
    "Likes finance": "Treat it like a budget: decide what it is worth before you spend on it.",
}
# Topics users mark only when `dimensions` names them (posts stay on the five topics above or general).
_EXTRA_ASIDES = {
    "Likes cinema": "It plays out like a good film: the second act is where things turn.",
    "Likes gaming": "Think of it like a video game level: you learn the map by trying it.",
    "Likes pets": "It is a bit like training a puppy: patience and treats work better than scolding.",
    "Likes health": "Look after your health along the way: sleep and water make every plan easier.",
    "Likes cars": "It is like tuning a car engine: small adjustments add up to a smoother ride.",
    "Likes gourmet food": "It is a bit like cooking a fine sauce: good ingredients and low heat pay off.",
    "Likes reading": "It reminds me of a good novel: the middle chapters matter as much as the ending.",
    "Likes painting": "Think of it as painting a canvas: rough shapes first, details last.",
    "Likes dance": "It is like learning a dance: go through the steps slowly before you speed up.",
    "Likes photography": "Frame it like a photograph: decide what is in the picture and what stays out.",
    "Likes fitness": "Treat it like a workout plan: short regular sessions beat one long one.",
    "Likes fashion": "Think of it like putting together an outfit: a few pieces that match go a long way.",
    "Likes outdoors": "It is like a hike in the hills: bring a map, but enjoy the view.",
    "Likes digital technology": "It is like updating your phone: back up first, then let the new version settle in.",
}


@dataclasses.dataclass(frozen=True)
class _Style:
    index: int  # the AlignX dimension the style expresses
    label: str  # that dimension's positive label in the official vocabulary (the generator's own name for it)
    apply: Callable[[dict, bool], None]  # edits the response parts for the positive (True) or negative side
    positive_marker: str | None  # text only the positive side writes (None: that side writes nothing)
    negative_marker: str | None


def _length(parts, positive):
    if not positive:
        parts["body"] += [
            "Start with the part that worries you most and write down what you already know.",
            "Then pick one small step you can take today, and check after a few days how it went.",
        ]


def _tone(parts, positive):
    parts["opener"] = "What a lovely thing to ask about, thank you for sharing!" if positive else "Fine, here is the answer."


def _formality(parts, positive):
    parts["closer"] = "In summary, a deliberate and orderly approach is advisable." if positive else "Anyway, you'll figure it out, no stress."


def _humour(parts, positive):
    if positive:
        parts["body"].append("Worst case, you get a funny story out of it, and honestly that is half the point.")


def _enthusiasm(parts, positive):
    parts["body"] = [s.rstrip(".") + "!" for s in parts["body"]] if positive else parts["body"]


def _topic(aside):
    def apply(parts, positive):
        if positive:
            parts["body"].append(aside)
    return apply


# The AlignX index of each topic (checked against the official vocabulary by the tests).
_TOPIC_INDEX = {"Likes science": 47, "Likes sports": 56, "Likes music": 74, "Likes travel": 60, "Likes finance": 69,
                "Likes cinema": 50, "Likes gaming": 52, "Likes pets": 59, "Likes health": 61, "Likes cars": 63,
                "Likes gourmet food": 64, "Likes reading": 75, "Likes painting": 76, "Likes dance": 77,
                "Likes photography": 79, "Likes fitness": 81, "Likes fashion": 89, "Likes outdoors": 85,
                "Likes digital technology": 71}


def _topic_style(label, aside):
    """A topic's style: the positive side adds `aside`, whose first clause is its marker."""
    return _Style(_TOPIC_INDEX[label], label, _topic(aside), aside.split(":")[0].split(",")[0], None)
LENGTH_DIMENSION = 16  # "Concise communication style" (positive) vs "Detailed communication style"

STYLES = (
    _Style(LENGTH_DIMENSION, "Concise communication style", _length, None, "Start with the part that worries you most"),
    _Style(5, "High Agreeableness", _tone, "What a lovely thing to ask about", "Fine, here is the answer"),
    _Style(6, "High Conscientiousness", _formality, "In summary, a deliberate", "Anyway, you'll figure it out"),
    _Style(73, "Likes humor", _humour, "Worst case, you get a funny story", None),
    _Style(3, "High Extraversion", _enthusiasm, "but keep it simple!", "but keep it simple."),
    *(_topic_style(label, _ASIDES[label]) for label in _TOPICS),
)
EXTRA_TOPIC_STYLES = tuple(_topic_style(label, aside) for label, aside in _EXTRA_ASIDES.items())
_ALL_STYLES = STYLES + EXTRA_TOPIC_STYLES

STYLE_DIMENSIONS = tuple(style.index for style in STYLES)  # the default set (dimensions=None)
EXTRA_TOPIC_DIMENSIONS = tuple(style.index for style in EXTRA_TOPIC_STYLES)


def style_dimensions(names: Iterable[int | str]) -> tuple[int, ...]:
    """The AlignX dimension indices of synthetic styles named by index or by label (`STYLE_DIMENSIONS`
    and `EXTRA_TOPIC_DIMENSIONS`), in the order given; ValueError names an unknown or repeated one and
    lists the known ones."""
    by_label = {style.label: style.index for style in _ALL_STYLES}
    indices = []
    for name in names:
        index = by_label.get(name) if isinstance(name, str) else name
        if index not in STYLE_DIMENSIONS + EXTRA_TOPIC_DIMENSIONS:
            known = ", ".join(f"{style.index} ({style.label})" for style in _ALL_STYLES)
            raise ValueError(f"{name!r} is not a synthetic style dimension; known: {known}")
        if index in indices:
            raise ValueError(f"{name!r} names dimension {index} twice")
        indices.append(index)
    return tuple(indices)


def response_styles(text: str) -> dict[int, bool]:
    """Which side of each synthetic style a response expresses: dimension index -> positive side?

    A style whose two sides both write a marker counts only when exactly one marker is in `text`; a
    style with one marked side counts its absence as the other side. (Reads the responses this module
    writes, and generated answers in their style; text that holds both sides of a style is skipped.)
    """
    sides = {}
    for style in _ALL_STYLES:
        positive = style.positive_marker is not None and style.positive_marker in text
        negative = style.negative_marker is not None and style.negative_marker in text
        if style.positive_marker is None:
            sides[style.index] = not negative
        elif style.negative_marker is None:
            sides[style.index] = positive
        elif positive != negative:
            sides[style.index] = positive
    return sides


def _post(rng: np.random.Generator) -> tuple[str, str]:
    """A post and its subject."""
    if rng.random() < 0.5:
        label = list(_TOPICS)[rng.integers(len(_TOPICS))]
        subject = _TOPICS[label][rng.integers(len(_TOPICS[label]))]
    else:
        label, subject = None, _GENERAL[rng.integers(len(_GENERAL))]
    template = ("What do you think about {}?", "Any advice on {}?", "I keep thinking about {}. Thoughts?")
    return template[rng.integers(len(template))].format(subject), subject


def _response(subject: str, settings: dict[int, bool]) -> str:
    """A response to `post` with each style in `settings` (dimension index -> positive side?) applied."""
    parts = {"opener": "", "body": [f"About {subject}: go for it, but keep it simple."],
             "closer": ""}
    for style in _ALL_STYLES:
        if style.index in settings:
            style.apply(parts, settings[style.index])
    return " ".join(s for s in [parts["opener"], *parts["body"], parts["closer"]] if s)


def _user_direction(rng: np.random.Generator, styles: tuple[_Style, ...]) -> np.ndarray:
    """2-4 of `styles` marked (all of them when fewer), each on a random side."""
    direction = np.full((prefs.NUM_DIMENSIONS,), prefs.NEUTRAL)
    marked = rng.choice(len(styles), size=min(len(styles), int(rng.integers(2, 5))), replace=False)
    for s in marked:
        direction[styles[s].index] = float(rng.integers(0, 2))
    return direction


def _pair(rng: np.random.Generator, direction: np.ndarray, styles: tuple[_Style, ...]) -> dict:
    """A post and two responses differing on 1-2 of the user's marked dimensions; chosen matches them.
    The other `styles` are shared by both responses (each on its positive side with probability 0.3,
    scaled down beyond ten styles so that a response carries as many asides as with ten)."""
    post, subject = _post(rng)
    marked = [i for i in np.flatnonzero(direction != prefs.NEUTRAL)]
    contrast = rng.choice(marked, size=min(len(marked), int(rng.integers(1, 3))), replace=False)
    positive = 0.3 * min(1.0, len(STYLES) / len(styles))
    shared = {s.index: bool(rng.random() < positive) for s in styles}
    liked = shared | {int(i): bool(direction[i] == prefs.POSITIVE) for i in contrast}
    disliked = shared | {int(i): not liked[int(i)] for i in contrast}
    item_direction = np.full((prefs.NUM_DIMENSIONS,), prefs.NEUTRAL)
    item_direction[contrast] = direction[contrast]
    return {"prompt": post, "chosen": _response(subject, liked), "rejected": _response(subject, disliked),
            prefs.DIRECTION: item_direction.tolist()}


def _ugc(rng: np.random.Generator, direction: np.ndarray) -> dict:
    post, subject = _post(rng)
    settings = {int(i): bool(direction[i] == prefs.POSITIVE) for i in np.flatnonzero(direction != prefs.NEUTRAL)}
    return {"prompt": post, "comment": _response(subject, settings), prefs.DIRECTION: direction.tolist()}


def _mirror(record: dict) -> dict:
    """The same record for the user with every mark flipped: chosen and rejected swap, directions flip."""
    flip = lambda d: [1.0 - v for v in d]  # noqa: E731
    pairs = [dict(p, chosen=p["rejected"], rejected=p["chosen"], **{prefs.DIRECTION: flip(p[prefs.DIRECTION])})
             for p in record[prefs.PAIRS]]
    return dict(record, chosen=record["rejected"], rejected=record["chosen"], **{prefs.DIRECTION: flip(record[prefs.DIRECTION])},
                **{prefs.PAIRS: pairs, prefs.UGC: None})


def synthetic_records(num_users: int, *, seed: int, records_per_user: int = 4, history_items: int = 6,
                      dimensions: Iterable[int | str] | None = None) -> list[dict]:
    """`num_users * records_per_user` AlignX records, a user's record and its mirror's alternating.

    Every record carries the user's full direction, `history_items` UGC items and history pairs
    of that user, and a demographic line naming the user's marks. `dimensions`: the style dimensions
    (`STYLE_DIMENSIONS` and `EXTRA_TOPIC_DIMENSIONS`, by index or label) users mark and responses
    express (None: `STYLE_DIMENSIONS`).
    Deterministic in `seed` and `dimensions` (not in their order).
    """
    if num_users < 0 or records_per_user < 1 or history_items < 0:
        raise ValueError(f"need num_users >= 0, records_per_user >= 1, history_items >= 0; got {num_users}, "
                         f"{records_per_user}, {history_items}")
    chosen = set(STYLE_DIMENSIONS if dimensions is None else style_dimensions(dimensions))
    if not chosen:
        raise ValueError("dimensions names no style dimension; None means STYLE_DIMENSIONS")
    styles = tuple(style for style in _ALL_STYLES if style.index in chosen)
    records = []
    for base_user in range(0, num_users, 2):
        rng = np.random.default_rng([seed, base_user])
        direction = _user_direction(rng, styles)
        users = [direction] + ([1.0 - direction] if base_user + 1 < num_users else [])
        for _ in range(records_per_user):
            target = _pair(rng, direction, styles)
            pairs = [_pair(rng, direction, styles) for _ in range(history_items)]
            post_seed = int(rng.integers(2**31))
            record = {"prompt": target["prompt"], "chosen": target["chosen"], "rejected": target["rejected"],
                      prefs.DIRECTION: direction.tolist(), prefs.DEMOGRAPHICS: "", prefs.UGC: None, prefs.PAIRS: pairs}
            # An odd last user has no mirror: zip stops at the one user.
            for user_direction, make in zip(users, (lambda r: r, _mirror), strict=False):
                user_record = make(record)
                ugc_rng = np.random.default_rng(post_seed)
                user_record[prefs.UGC] = [_ugc(ugc_rng, user_direction) for _ in range(history_items)]
                user_record[prefs.DEMOGRAPHICS] = f"This person can be described as: {prefs.profile_text(user_direction)}."
                records.append(user_record)
    return records
