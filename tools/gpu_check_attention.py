"""One-shot GPU check of the attention implementations: correctness, then timings (< 3 minutes).

    PYTHONPATH=. python tools/gpu_check_attention.py            # on a CUDA machine
    PYTHONPATH=. python tools/gpu_check_attention.py --quick    # correctness + the smallest timing row

Self-contained: needs jax (with CUDA), numpy and this repository on PYTHONPATH; nothing else of
the project's dependencies (a stand-in for chex is installed when chex is missing, and the packed
rows are built here, not with `alignx_jax.data`). Every section runs in its own try/except, so one
failure prints its error and the rest still runs.

1. Correctness: `kernels.attention` with impl in (pallas_gpu, cudnn, xla) on packed rows (several
   [prompt | chosen | rejected] pairs per row, padding, T not a multiple of any block) and on plain
   causal rows, fp32 and bf16, values and d(q, k, v) against `jax.nn.dot_product_attention` in fp32
   with the dense mask (`kernels.packed_mask`). Errors are max |got - want| / max |want| over
   non-padding rows; limits 1e-5 (fp32, relative to the scale) and 2e-2 (bf16). cuDNN runs bf16 only.
2. Timings: forward + backward (d q, k, v) in bf16, median of 5 after a compile, at [4, 2048] and
   [1, 8192] with SmolLM2-135M heads (9 query / 3 kv, 64) and Llama-3.1-8B heads (32 / 8, 128), on
   P-Soups-like packed rows (prompt ~600, chosen ~150, rejected ~150 tokens per pair) and on plain
   causal rows: dense (XLA with the [B, T, T] mask), cudnn, pallas_gpu (block-sparse Triton).
3. pallas_gpu block sizes at one shape.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
import traceback
import types

import numpy as np

START = time.perf_counter()
BUDGET_S = 165.0


def _chex_stand_in():
    """The project imports chex for shape assertions only; replace it when it is not installed."""
    try:
        import chex  # noqa: F401
        return
    except ImportError:
        pass
    import jax

    module = types.ModuleType("chex")
    module.Array = jax.Array
    module.ArrayTree = object
    module.__getattr__ = lambda name: (lambda *a, **k: None) if name.startswith("assert") else object
    sys.modules["chex"] = module
    print("note: chex is not installed; using a no-op stand-in for its assertions")


def section(title):
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            print(f"\n== {title} ({time.perf_counter() - START:.0f} s elapsed)", flush=True)
            try:
                return fn(*args, **kwargs)
            except Exception:  # noqa: BLE001 - a check script reports and goes on
                print(f"!! {title} failed:")
                traceback.print_exc(limit=6, file=sys.stdout)
        return run
    return wrap


def packed_structure(batch, length, pair_lengths, seed=0):
    """segment_ids, roles, positions int32 [B, T] of the data layer's packed layout.

    Per pair (prompt P, chosen C, rejected R): roles 1 (P tokens, positions 0..P-1), 2 (C tokens,
    P..P+C-1), 3 (the copy of the prompt's last token at P-1, then R tokens, P..P+R-1); segments
    1, 2, ... per pair; padding (0) after the last pair that fits.
    """
    rng = np.random.default_rng(seed)
    seg, role, pos = (np.zeros((batch, length), np.int32) for _ in range(3))
    for b in range(batch):
        start, segment = 0, 1
        while True:
            p, c, r = (max(2, int(n * rng.uniform(0.7, 1.3))) for n in pair_lengths)
            if start + p + c + 1 + r > length:
                break
            blocks = [(1, np.arange(p)), (2, p + np.arange(c)), (3, p - 1 + np.arange(r + 1))]
            for role_id, positions in blocks:
                end = start + len(positions)
                seg[b, start:end], role[b, start:end], pos[b, start:end] = segment, role_id, positions
                start = end
            segment += 1
    return seg, role, pos


def make_inputs(shape, heads, dtype, seed=0):
    import jax

    (b, t), (n, kv, h) = shape, heads
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (b, t, n, h), dtype)
    k, v = (jax.random.normal(key, (b, t, kv, h), dtype) for key in keys[1:3])
    cotangent = jax.random.normal(keys[3], (b, t, n, h), dtype)
    return q, k, v, cotangent


def fwd_bwd(impl, structure, interpret=False):
    """jit(q, k, v, cotangent -> (out, dq, dk, dv)) of kernels.attention with `impl`."""
    import jax
    import jax.numpy as jnp

    from alignx_jax import kernels

    kw = {} if structure is None else dict(zip(("segment_ids", "roles", "positions"), (jnp.asarray(a) for a in structure)))
    if impl == "reference":
        mask = None if structure is None else kernels.packed_mask(*kw.values())

        def attend(q, k, v):
            up = lambda x: x.astype(jnp.float32)  # noqa: E731
            if mask is None:
                return jax.nn.dot_product_attention(up(q), up(k), up(v), is_causal=True)
            return jax.nn.dot_product_attention(up(q), up(k), up(v), mask=mask[:, None])
    else:
        attend = functools.partial(kernels.attention, impl=impl, **kw)

    def run(q, k, v, cotangent):
        out, vjp = jax.vjp(attend, q, k, v)
        return (out, *vjp(cotangent.astype(out.dtype)))

    return jax.jit(run)


@section("environment")
def environment():
    import jax

    print(f"python {sys.version.split()[0]}, jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    try:
        from jax._src.lib import cuda_versions

        print(f"cuDNN {cuda_versions.cudnn_get_version() if cuda_versions else 'not found'}")
    except Exception as exc:  # noqa: BLE001
        print(f"cuDNN version unknown ({exc})")
    from alignx_jax import kernels

    for dtype in ("float32", "bfloat16"):
        print(f"auto picks {kernels.auto_attention_impl(dtype, 64)} for {dtype}")


@section("correctness vs dense fp32 (values, dq, dk, dv)")
def correctness():
    import jax

    # XLA's float32 dots (the reference, impl="xla") in full precision rather than TF32.
    with jax.default_matmul_precision("highest"):
        _correctness()


def _correctness():
    import jax.numpy as jnp

    shape, heads = (2, 1000), (9, 3, 64)
    layouts = {"packed": packed_structure(*shape, (300, 80, 70)), "causal": None}
    print(f"shape {shape}, heads {heads}; packed rows hold "
          f"{[int(s.max()) for s in layouts['packed'][0]]} pairs, padding {float((layouts['packed'][0] == 0).mean()):.0%}")
    print(f"{'impl':12s} {'layout':7s} {'dtype':9s} {'out':>9s} {'dq':>9s} {'dk':>9s} {'dv':>9s}  verdict")
    for layout, structure in layouts.items():
        live = np.ones(shape, bool) if structure is None else structure[0] > 0
        for dtype in (jnp.float32, jnp.bfloat16):
            inputs = make_inputs(shape, heads, dtype)
            cotangent = inputs[3] * jnp.asarray(live, dtype)[:, :, None, None]  # padding rows out of the loss
            want = [np.asarray(x, np.float32) for x in fwd_bwd("reference", structure)(*inputs[:3], cotangent.astype(jnp.float32))]
            for impl in ("pallas_gpu", "cudnn", "xla"):
                if impl == "cudnn" and dtype == jnp.float32:
                    continue
                try:
                    got = [np.asarray(x, np.float32) for x in fwd_bwd(impl, structure)(*inputs[:3], cotangent)]
                except Exception as exc:  # noqa: BLE001
                    print(f"{impl:12s} {layout:7s} {jnp.dtype(dtype).name:9s} failed: {type(exc).__name__}: {str(exc)[:300]}")
                    continue
                errors = []
                for i, (g, w) in enumerate(zip(got, want)):
                    if i == 0:  # the output: non-padding rows only
                        g, w = g[live], w[live]
                    errors.append(float(np.abs(g - w).max() / max(np.abs(w).max(), 1e-30)))
                limit = 1e-5 if dtype == jnp.float32 else 2e-2
                verdict = "ok" if max(errors) <= limit else f"FAIL (limit {limit})"
                print(f"{impl:12s} {layout:7s} {jnp.dtype(dtype).name:9s} " + " ".join(f"{e:9.2e}" for e in errors)
                      + f"  {verdict}", flush=True)


def time_call(fn, args, repeats=5):
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


@section("timings: forward + backward, bf16, ms (median of 5)")
def timings(quick: bool):
    import jax.numpy as jnp

    rows = [((4, 2048), (9, 3, 64), "SmolLM2"), ((4, 2048), (32, 8, 128), "Llama-8B"),
            ((1, 8192), (9, 3, 64), "SmolLM2"), ((1, 8192), (32, 8, 128), "Llama-8B")]
    if quick:
        rows = rows[:1]
    impls = ("dense", "cudnn", "pallas_gpu")
    print(f"{'shape':11s} {'heads':9s} {'layout':7s} " + " ".join(f"{i:>11s}" for i in impls) + "  mask density")
    for shape, heads, name in rows:
        for layout in ("packed", "causal"):
            if time.perf_counter() - START > BUDGET_S:
                print("time budget reached; skipping the remaining rows")
                return
            structure = packed_structure(*shape, (600, 150, 150)) if layout == "packed" else None
            inputs = make_inputs(shape, heads, jnp.bfloat16)
            cells = []
            for impl in impls:
                try:
                    cells.append(f"{time_call(fwd_bwd(impl, structure), inputs):11.2f}")
                except Exception as exc:  # noqa: BLE001
                    cells.append(f"{'error':>11s}")
                    print(f"  {impl} at {shape} {name} {layout}: {type(exc).__name__}: {str(exc)[:200]}")
            density = "causal" if structure is None else f"{_density(structure):.2f} of causal"
            print(f"{str(list(shape)):11s} {name:9s} {layout:7s} " + " ".join(cells) + f"  {density}", flush=True)


def _density(structure):
    import jax.numpy as jnp

    from alignx_jax import kernels

    mask = np.asarray(kernels.packed_mask(*(jnp.asarray(a) for a in structure)))
    t = mask.shape[-1]
    return float(mask.sum() / (mask.shape[0] * t * (t + 1) / 2))


@section("pallas_gpu block sizes, [1, 8192] SmolLM2 heads, packed, bf16, ms")
def block_sweep():
    import jax
    import jax.numpy as jnp

    from alignx_jax import kernels

    shape, heads = (1, 8192), (9, 3, 64)
    structure = tuple(jnp.asarray(a) for a in packed_structure(*shape, (600, 150, 150)))
    inputs = make_inputs(shape, heads, jnp.bfloat16)
    for block_q, block_k in ((32, 32), (64, 64), (64, 128), (128, 64), (128, 128)):
        if time.perf_counter() - START > BUDGET_S + 10:
            print("time budget reached")
            return
        attend = functools.partial(kernels.attention, segment_ids=structure[0], roles=structure[1],
                                   positions=structure[2], impl="pallas_gpu", block_q=block_q, block_k=block_k)

        def run(q, k, v, cotangent):
            out, vjp = jax.vjp(attend, q, k, v)
            return (out, *vjp(cotangent))

        try:
            print(f"block_q={block_q:4d} block_k={block_k:4d}: {time_call(jax.jit(run), inputs):8.2f}", flush=True)
        except Exception as exc:  # noqa: BLE001
            print(f"block_q={block_q:4d} block_k={block_k:4d}: {type(exc).__name__}: {str(exc)[:200]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    _chex_stand_in()
    environment()
    correctness()
    timings(args.quick)
    if not args.quick:
        block_sweep()
    print(f"\ndone in {time.perf_counter() - START:.0f} s")


if __name__ == "__main__":
    main()
