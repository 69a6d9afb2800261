"""Naive (full [N, V] logits) vs fused token log-probs: compiled temporary memory and wall time.

    python tools/bench_logprobs.py --quick                    # N=16384 D=2048 V=128256 fp32 fwd+bwd
    python tools/bench_logprobs.py                            # the full grid (needs a big machine)
    python tools/bench_logprobs.py --memory-only              # the full grid, compile only, no arrays
    python tools/bench_logprobs.py --shape 2048 2048 16384 --dtype float32   # one shape

Memory is XLA's own account of the compiled fwd+bwd program (``memory_analysis().temp_size_in_bytes``:
scratch beyond the arguments and outputs), taken from ShapeDtypeStructs without allocating. Time is
the median over ``--repeats`` runs after ``--warmup`` runs; naive and fused runs alternate, so a
busy machine slows both alike. With ``--quick`` the last line is
``memory_ratio=<naive/fused temp memory> time_ratio=<fused/naive time>``.
"""
import argparse
import itertools
import statistics
import time

import jax
import jax.numpy as jnp

from alignx_jax import kernels

GRID = {"n": (4096, 16384), "d": (576, 2048, 4096), "v": (49152, 128256), "dtype": ("float32", "bfloat16")}
QUICK = {"n": (16384,), "d": (2048,), "v": (128256,), "dtype": ("float32",)}


def fwd_bwd(logprobs):
    """``(sum(logp), d/d hidden, d/d w)``: the work of one training step's log-prob head."""

    def loss(hidden, w, labels):
        logp, _ = logprobs(hidden, w, labels)
        return jnp.sum(logp)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def contenders(impl: str, block_tokens, block_vocab):
    fused = lambda h, w, y: kernels.token_logprobs(h, w, y, impl=impl, block_tokens=block_tokens, block_vocab=block_vocab)
    return {"naive": fwd_bwd(kernels.naive_token_logprobs), "fused": fwd_bwd(fused)}


def measure(n, d, v, dtype, args):
    shapes = (
        jax.ShapeDtypeStruct((n, d), dtype),
        jax.ShapeDtypeStruct((d, v), dtype),
        jax.ShapeDtypeStruct((n,), jnp.int32),
    )
    compiled = {name: fn.lower(*shapes).compile() for name, fn in contenders(args.impl, args.block_tokens, args.block_vocab).items()}
    memory = {name: c.memory_analysis().temp_size_in_bytes for name, c in compiled.items()}
    times = {name: [] for name in compiled}
    if not args.memory_only:
        k_h, k_w, k_y = jax.random.split(jax.random.key(0), 3)
        inputs = (
            jax.random.normal(k_h, (n, d), dtype),
            (jax.random.normal(k_w, (d, v), jnp.float32) / d**0.5).astype(dtype),
            jax.random.randint(k_y, (n,), 0, v, jnp.int32),
        )
        for run in range(args.warmup + args.repeats):
            for name, c in compiled.items():
                start = time.perf_counter()
                jax.block_until_ready(c(*inputs))
                if run >= args.warmup:
                    times[name].append(time.perf_counter() - start)
        del inputs
    return memory, {name: statistics.median(t) if t else float("nan") for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="only N=16384 D=2048 V=128256 fp32")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("N", "D", "V"), help="one shape instead of the grid")
    parser.add_argument("--dtype", choices=GRID["dtype"], help="one dtype instead of the grid")
    parser.add_argument("--memory-only", action="store_true", help="compile and report memory, run nothing")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--impl", default="auto", choices=kernels.IMPLS)
    parser.add_argument("--block-tokens", type=int, default=None)
    parser.add_argument("--block-vocab", type=int, default=None)
    args = parser.parse_args()
    grid = dict(QUICK if args.quick else GRID)
    if args.shape:
        grid.update(n=(args.shape[0],), d=(args.shape[1],), v=(args.shape[2],))
    if args.dtype:
        grid["dtype"] = (args.dtype,)
    print(f"backend={jax.default_backend()} impl={args.impl} warmup={args.warmup} repeats={args.repeats}")
    print("| N | D | V | dtype | naive temp MiB | fused temp MiB | memory ratio | naive s | fused s | time ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, d, v, dtype in itertools.product(grid["n"], grid["d"], grid["v"], grid["dtype"]):
        memory, seconds = measure(n, d, v, jnp.dtype(dtype), args)
        memory_ratio = memory["naive"] / max(memory["fused"], 1)
        time_ratio = seconds["fused"] / seconds["naive"]
        print(
            f"| {n} | {d} | {v} | {dtype} | {memory['naive'] / 2**20:.1f} | {memory['fused'] / 2**20:.1f} | "
            f"{memory_ratio:.1f} | {seconds['naive']:.2f} | {seconds['fused']:.2f} | {time_ratio:.3f} |",
            flush=True,
        )
    print(f"memory_ratio={memory_ratio:.2f} time_ratio={time_ratio:.3f}")


if __name__ == "__main__":
    main()
