"""Profile-first targets (FSPO's rationalized responses, Singh et al., 2025, arXiv 2502.19312).

The chosen response opens with a statement of the user's own profile, the rejected one with the
profile of the user who would choose the other way (every marked dimension flipped: the mirror
user's)::

    chosen'   = "Your preferences: " + profile_text(d)     + ".\\n\\n" + chosen
    rejected' = "Your preferences: " + profile_text(1 - d) + ".\\n\\n" + rejected

The pair's margin then holds a token-level term for reading the user (which labels the history
implies) beside the response's. Mirror twins stay twins: twin B's record is A's with the labels
swapped, and its prefixes are A's swapped too, so `twin_units` still pairs them.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from alignx_jax import preferences as prefs

PROFILE_FIRST_HEADER = "Your preferences: "


def profile_statement(direction) -> str:
    """The sentence a profile-first target opens with: header, the profile's labels, a blank line."""
    return f"{PROFILE_FIRST_HEADER}{prefs.profile_text(direction)}.\n\n"


def profile_first(record: Mapping[str, Any]) -> dict:
    """`record` with profile-first targets (the module's formula); other fields unchanged.

    Raises ValueError when the record's preference direction marks no dimension (no profile to state)."""
    direction = np.asarray(record[prefs.DIRECTION], np.float64)
    marked = np.isin(direction, (prefs.NEGATIVE, prefs.POSITIVE))
    if not marked.any():
        raise ValueError(f"{prefs.DIRECTION!r} marks no dimension, and a profile-first target states the "
                         f"user's marks")
    mirror = np.where(marked, 1.0 - direction, direction)
    return dict(record, **{prefs.CHOSEN: profile_statement(direction) + record[prefs.CHOSEN],
                           prefs.REJECTED: profile_statement(mirror) + record[prefs.REJECTED]})
