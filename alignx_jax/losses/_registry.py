"""Name -> loss function registry, and resolution of a user's own loss by import path.

A loss is any callable with the call form

    fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, **hparams) -> (losses [B], metrics)

where the four inputs are per-sequence log-probs ``[B]`` and ``metrics`` maps names to arrays.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

LossFn = Callable[..., tuple[jax.Array, Mapping[str, jax.Array]]]

CALL_FORM = "fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, **hparams) -> (losses [B], metrics dict)"

_LOSSES: dict[str, LossFn] = {}
_DESCRIPTIONS: dict[str, str] = {}


def _first_line(fn: Callable) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.splitlines()[0].strip() if doc else ""


def register(name: str, fn: LossFn | None = None, *, description: str | None = None):
    """Adds ``fn`` under ``name`` (usable as ``@register("name")``); the description defaults to the
    first line of its docstring. Registering a taken name is an error."""

    def add(fn: LossFn) -> LossFn:
        if not isinstance(name, str) or not name:
            raise ValueError(f"loss name must be a non-empty string, got {name!r}")
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is already registered (by {_LOSSES[name].__module__})")
        if not callable(fn):
            raise TypeError(f"loss {name!r}: expected a callable, got {type(fn).__name__}")
        _LOSSES[name] = fn
        _DESCRIPTIONS[name] = description or _first_line(fn)
        return fn

    return add if fn is None else add(fn)


def get(name: str) -> LossFn:
    """The registered loss called ``name`` (a TRL ``loss_type`` name where TRL has the loss)."""
    try:
        return _LOSSES[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), _LOSSES, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown loss {name!r}{hint} Known losses: {', '.join(names())}") from None


def names() -> tuple[str, ...]:
    """Every registered loss name, sorted."""
    return tuple(sorted(_LOSSES))


def descriptions() -> dict[str, str]:
    """Name -> one-line description, sorted by name (what ``alignx losses`` prints)."""
    return {name: _DESCRIPTIONS[name] for name in names()}


def _import_loss(spec: str) -> LossFn:
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ValueError(f"loss {spec!r}: an import path must look like 'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"loss {spec!r}: cannot import module {module_name!r} ({error})") from error
    for attr in attr_path.split("."):
        if not hasattr(target, attr):
            raise ValueError(f"loss {spec!r}: module {module_name!r} has no attribute {attr_path!r}")
        target = getattr(target, attr)
    if not callable(target):
        raise TypeError(f"loss {spec!r}: {attr_path!r} is a {type(target).__name__}, not a function")
    return target


def check_call_form(fn: LossFn, hparams: Mapping[str, Any] | None = None, *, label: str | None = None) -> None:
    """Checks that ``fn`` follows the loss call form, by signature and by an abstract trial call.

    The trial runs under ``jax.eval_shape`` (no computation) on a batch of 2 float32 log-probs with
    ``hparams``; token counts are passed too when ``fn`` names ``chosen_tokens``/``rejected_tokens``.
    Raises TypeError or ValueError that names the loss and says what is wrong.
    """
    hparams = dict(hparams or {})
    label = label or getattr(fn, "__name__", repr(fn))
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        signature = None  # builtins without a signature: rely on the trial call
    if signature is not None:
        try:
            signature.bind(0.0, 0.0, 0.0, 0.0, **hparams)
        except TypeError as error:
            raise TypeError(
                f"loss {label!r} does not accept the call form {CALL_FORM} with hparams {sorted(hparams)}: {error}"
            ) from None
    logps = jax.ShapeDtypeStruct((2,), jnp.float32)
    if signature is not None and {"chosen_tokens", "rejected_tokens"} <= set(signature.parameters):
        hparams.setdefault("chosen_tokens", jnp.ones((2,), jnp.int32))
        hparams.setdefault("rejected_tokens", jnp.ones((2,), jnp.int32))
    try:
        out = jax.eval_shape(lambda *args: fn(*args, **hparams), logps, logps, logps, logps)
    except Exception as error:
        raise ValueError(
            f"loss {label!r} failed on a trial batch of 2 float32 log-probs: {type(error).__name__}: {error}"
        ) from error
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError(f"loss {label!r} must return (losses [B], metrics dict), got {type(out).__name__}")
    losses, metrics = out
    if getattr(losses, "shape", None) != (2,) or not jnp.issubdtype(losses.dtype, jnp.floating):
        raise TypeError(
            f"loss {label!r} must return per-example losses of shape [B] (floating); for B=2 it returned "
            f"{getattr(losses, 'shape', type(losses).__name__)} {getattr(losses, 'dtype', '')}".rstrip()
        )
    if not isinstance(metrics, Mapping) or not all(isinstance(key, str) for key in metrics):
        raise TypeError(f"loss {label!r} must return a metrics dict with string keys, got {type(metrics).__name__}")


def resolve(spec: str, hparams: Mapping[str, Any] | None = None) -> LossFn:
    """A loss by registry name (``"sigmoid"``) or import path (``"my_pkg.losses:my_loss"``), with its
    call form checked against ``hparams`` so a config error surfaces at start-up, not mid-run."""
    if not isinstance(spec, str):
        raise TypeError(f"loss spec must be a string (a name or 'package.module:function'), got {type(spec).__name__}")
    fn = _import_loss(spec) if ":" in spec else get(spec)
    check_call_form(fn, hparams, label=spec)
    return fn
