"""How well a bridge recovers users' preference directions: macro-F1 over the marked dimensions.

On the host (numpy): these summarize a held-out set, they are not traced.
"""
from __future__ import annotations

import numpy as np

from alignx_jax.bridge import _rules


def marked_dimensions(true_classes: np.ndarray) -> np.ndarray:
    """Indices of the dimensions that some row marks (not neutral): int [d]."""
    return np.flatnonzero(np.any(np.asarray(true_classes) != _rules.NEUTRAL, axis=0))


def macro_f1(predicted: np.ndarray, true: np.ndarray, dims: np.ndarray | None = None) -> float:
    """Macro-F1 over the three classes of the entries (user, dimension) for the dimensions `dims`
    (default: the dimensions any true row marks).

        F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c),   macro-F1 = mean over the classes that occur
        (in the truth or the predictions) of F1_c

    predicted, true: class indices int [N, 90] (`_rules.direction_classes`). Restricting to marked
    dimensions keeps the 80-odd never-marked dimensions from making every bridge look perfect;
    neutral still counts as a class, so predicting a mark where there is none costs.
    """
    predicted, true = np.asarray(predicted), np.asarray(true)
    if predicted.shape != true.shape or predicted.ndim != 2:
        raise ValueError(f"predicted and true must be [N, 90] class arrays of one shape, got {predicted.shape}, "
                         f"{true.shape}")
    dims = marked_dimensions(true) if dims is None else np.asarray(dims)
    if dims.size == 0:
        raise ValueError("no marked dimension to score")
    p, t = predicted[:, dims].reshape(-1), true[:, dims].reshape(-1)
    scores = []
    for c in range(_rules.NUM_CLASSES):
        tp, fp, fn = np.sum((p == c) & (t == c)), np.sum((p == c) & (t != c)), np.sum((p != c) & (t == c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def majority_classes(train_classes: np.ndarray) -> np.ndarray:
    """Each dimension's most frequent training class, int [90] (the majority-class baseline)."""
    train_classes = np.asarray(train_classes)
    counts = np.stack([(train_classes == c).sum(0) for c in range(_rules.NUM_CLASSES)])  # [3, 90]
    return counts.argmax(0).astype(np.int32)


def bridge_report(predicted: np.ndarray, true: np.ndarray, train_classes: np.ndarray) -> dict:
    """macro-F1 of the bridge and of the majority-class baseline on the same marked dimensions, and
    the share of exactly recovered marked entries."""
    dims = marked_dimensions(true)
    baseline = np.broadcast_to(majority_classes(train_classes), np.shape(true))
    return {"macro_f1": macro_f1(predicted, true, dims), "majority_macro_f1": macro_f1(baseline, true, dims),
            "marked_dimensions": int(dims.size), "users": int(np.shape(true)[0]),
            "exact_marked": float(np.mean(np.asarray(predicted)[:, dims] == np.asarray(true)[:, dims]))}
