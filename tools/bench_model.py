"""SmolLM2-135M forward + backward: ours vs PyTorch transformers, and block-sparse vs dense masks.

    JAX_PLATFORMS=cpu .venv/bin/python tools/bench_model.py            # the whole comparison
    JAX_PLATFORMS=cpu .venv/bin/python tools/bench_model.py --shapes 1x512 --no-packed

Random-init SmolLM2-135M (`LlamaConfig.smollm2_135m()`), fp32, the gradient of
sum(final hidden states * a fixed random tensor) with respect to every parameter (no LM head):

1. Plain causal rows at each `--shapes` B x T: `llama.forward(..., return_hidden=True)` (layers
   scanned, `kernels.attention` with its default impl) against transformers' LlamaModel with
   `attn_implementation="sdpa"` (causal), each in its own fresh process so neither's thread pool
   disturbs the other.
2. Packed P-Soups rows (the real benchmark file, SmolLM2 tokenizer and chat template, ICA training
   layout, `data.packed_batches`, one row of `--packed-len` tokens): the same step with the mask given
   as structure (segment_ids, roles: block-sparse flash attention) against the dense [B, T, T] mask
   (`attention_mask=`, `jax.nn.dot_product_attention`). Skipped when the file is absent.

Times are the median of `--repeats` steps after one warm-up (compile excluded), wall time and the
process's CPU time over all its threads (CPU time above wall time means both cores worked). The
machine's load average is printed beside them: on a shared machine, read the figures with it. The last line is `model_ratio_vs_torch=X sparse_gain=Y`: X = ours /
PyTorch at the first shape, Y = dense / block-sparse time on the packed rows (nan when skipped).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "psoups_friendly_unfriendly.json"


def _load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _median_time(step, repeats: int) -> dict:
    """Compile (first call) time, then the median wall time and process CPU time (all threads) of a step."""
    start = time.perf_counter()
    step()
    compile_s = time.perf_counter() - start
    times, cpu = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), _cpu_s()
        step()
        times.append(time.perf_counter() - start)
        cpu.append(_cpu_s() - cpu_start)
    return {"compile_s": compile_s, "s": statistics.median(times), "cpu_s": statistics.median(cpu)}


def run_jax(batch: int, length: int, repeats: int, packed: str | None, mask: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from alignx_jax.models import llama

    config = llama.LlamaConfig.smollm2_135m()
    params = jax.jit(llama.init_params, static_argnums=0)(config, jax.random.key(0))
    if packed:
        arrays = {k: jnp.asarray(v) for k, v in np.load(packed).items()}
        batch, length = arrays["tokens"].shape
    else:
        tokens = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (batch, length)), jnp.int32)
        arrays = {"tokens": tokens}
    cotangent = jax.random.normal(jax.random.key(1), (batch, length, config.hidden_size))

    def loss(params, a):
        kw = {}
        if packed and mask == "structure":
            kw = dict(positions=a["positions"], segment_ids=a["segment_ids"], roles=a["roles"])
        elif packed:
            from alignx_jax import data

            kw = dict(positions=a["positions"],
                      attention_mask=data.attention_mask(a["segment_ids"], a["roles"], a["positions"]))
        hidden = llama.forward(params, a["tokens"], config, return_hidden=True, **kw)
        return jnp.sum(hidden * cotangent)

    step = jax.jit(jax.grad(loss))
    return _median_time(lambda: jax.block_until_ready(step(params, arrays)), repeats)


def run_torch(batch: int, length: int, repeats: int) -> dict:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, rope_theta=100_000.0, tie_word_embeddings=True, max_position_embeddings=8192,
        rms_norm_eps=1e-5, attn_implementation="sdpa")
    model = transformers.LlamaModel(config).float().train()
    tokens = torch.randint(0, config.vocab_size, (batch, length))
    cotangent = torch.randn(batch, length, config.hidden_size)

    def step():
        model.zero_grad(set_to_none=True)
        hidden = model(input_ids=tokens, use_cache=False).last_hidden_state
        (hidden * cotangent).sum().backward()

    return {**_median_time(step, repeats), "threads": torch.get_num_threads()}


def _child(args: list[str], repeats: int) -> dict:
    """Run one measurement in a fresh process; its last stdout line is a JSON dict."""
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    command = [sys.executable, __file__, "--repeats", str(repeats), "--child", *args]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def packed_rows(path: pathlib.Path, length: int, out: pathlib.Path) -> dict | None:
    """The first packed batch (one row of `length` tokens) of the P-Soups file, saved as .npz."""
    import numpy as np

    from alignx_jax import data
    from alignx_jax.interop import load_tokenizer

    records, _ = data.load_records(path)
    config = data.PackingConfig(rows=1, seq_lengths=(length,), max_pairs_per_row=16)
    batch = next(iter(data.packed_batches(records, tokenizer=load_tokenizer("smollm2-135m-instruct"), config=config,
                                          seed=0, shard_index=0, shard_count=1)))
    np.savez(out, **{k: v for k, v in batch.as_dict().items() if k in ("tokens", "positions", "segment_ids", "roles")})
    dense = data.attention_mask(batch.segment_ids, batch.roles, batch.positions)
    causal = length * (length + 1) / 2
    return {"pairs": int(batch.pair_valid.sum()), "fill": float((batch.segment_ids > 0).mean()),
            "mask_density_vs_causal": float(dense.sum() / causal)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["1x1024", "1x2048"], help="B x T of the causal comparison")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA)
    parser.add_argument("--packed-len", type=int, default=2048)
    parser.add_argument("--no-packed", action="store_true")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, batch, length, *rest = args.child
        if kind == "torch":
            result = run_torch(int(batch), int(length), args.repeats)
        else:
            packed, mask = (rest + [None, "structure"])[:2]
            result = run_jax(int(batch), int(length), args.repeats, packed, mask)
        print(json.dumps(result))
        return

    print(f"SmolLM2-135M random init, fp32, forward+backward of the final hidden states; median of {args.repeats}")
    ratios = []
    for shape in args.shapes:
        batch, length = (int(x) for x in shape.split("x"))
        ours = _child(["jax", str(batch), str(length)], args.repeats)
        torch_ = _child(["torch", str(batch), str(length)], args.repeats)
        ratios.append(ours["s"] / torch_["s"])
        print(f"[{batch}, {length}] ours {ours['s']:.2f} s (cpu {ours['cpu_s']:.2f} s, compile {ours['compile_s']:.0f} s)  "
              f"torch sdpa {torch_['s']:.2f} s (cpu {torch_['cpu_s']:.2f} s, {torch_['threads']} threads)  "
              f"ratio {ratios[-1]:.2f}  ({_load()})")

    gain = float("nan")
    if args.no_packed:
        pass
    elif not args.data.exists():
        print(f"packed rows: skipped, {args.data} not found")
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = pathlib.Path(tmp) / "batch.npz"
            info = packed_rows(args.data, args.packed_len, path)
            sparse = _child(["jax", "1", str(args.packed_len), str(path), "structure"], args.repeats)
            dense = _child(["jax", "1", str(args.packed_len), str(path), "dense"], args.repeats)
        gain = dense["s"] / sparse["s"]
        print(f"packed P-Soups [1, {args.packed_len}]: {info['pairs']} pairs, {info['fill']:.0%} non-padding, mask "
              f"density {info['mask_density_vs_causal']:.2f} of causal; block-sparse {sparse['s']:.2f} s (cpu "
              f"{sparse['cpu_s']:.2f} s), dense mask {dense['s']:.2f} s (cpu {dense['cpu_s']:.2f} s), gain {gain:.2f}  "
              f"({_load()})")
    print(f"model_ratio_vs_torch={ratios[0]:.2f} sparse_gain={gain:.2f}")


if __name__ == "__main__":
    main()
