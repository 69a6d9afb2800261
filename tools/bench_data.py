"""Input pipeline throughput vs what the CPU training step consumes.

    JAX_PLATFORMS=cpu .venv/bin/python tools/bench_data.py            # both numbers and their ratio
    JAX_PLATFORMS=cpu .venv/bin/python tools/bench_data.py --no-step  # the pipeline alone

Pipeline: synthetic AlignX records in memory -> Grain (seeded shuffle, ICA training layout with the
official history draw) -> SmolLM2-135M-Instruct tokenizer with its chat template -> shared-prefix
packing into [rows, seq_len] batches, single process. Step (a proxy until the training step
exists): jitted value_and_grad of the summed response log-probs through `llama.forward` with
`LlamaConfig.smollm2_135m()` random init, at one packed batch of the same shape.
The last line is `pipeline_batches_per_s=... step_batches_per_s=... ratio=...`.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def bench_pipeline(records, tokenizer, config, seed: int, max_batches: int):
    from alignx_jax import data

    dataset = data.packed_batches(records, tokenizer=tokenizer, config=config, seed=seed, shard_index=0, shard_count=1)
    iterator = iter(dataset)
    first = next(iterator)  # warm-up: thread pool start, first tokenizer calls
    start = time.perf_counter()
    batches, real_tokens = 0, 0
    for batch in iterator:
        batches += 1
        real_tokens += int((batch.segment_ids > 0).sum())
        if batches == max_batches:
            break
    elapsed = time.perf_counter() - start
    return first, batches / elapsed, real_tokens / elapsed, iterator.stats


def bench_step(batch, repeats: int):
    import jax
    import jax.numpy as jnp

    from alignx_jax import data
    from alignx_jax.models import llama

    cfg = llama.LlamaConfig.smollm2_135m()
    params = jax.jit(llama.init_params, static_argnums=0)(cfg, jax.random.key(0))

    def summed_response_logprobs(params, b):
        mask = data.attention_mask(b["segment_ids"], b["roles"], b["positions"])
        logits = llama.forward(params, b["tokens"], cfg, positions=b["positions"], attention_mask=mask)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32), -1), b["targets"][..., None], -1)[..., 0]
        return jnp.sum(logp * (b["chosen_mask"] | b["rejected_mask"]))

    step = jax.jit(jax.value_and_grad(summed_response_logprobs))
    arrays = {k: jnp.asarray(v) for k, v in batch.as_dict().items() if k not in ("pair_valid", "pair_source")}
    start = time.perf_counter()
    jax.block_until_ready(step(params, arrays))
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(params, arrays))
        times.append(time.perf_counter() - start)
    return compile_s, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--max-batches", type=int, default=300)
    parser.add_argument("--step-repeats", type=int, default=3)
    parser.add_argument("--no-step", action="store_true", help="measure the pipeline only")
    args = parser.parse_args()

    from alignx_jax import data
    from alignx_jax.interop import load_tokenizer

    records = data.synthetic_records(args.users, seed=0)
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    config = data.PackingConfig(rows=args.rows, seq_lengths=(args.seq_len,), max_pairs_per_row=8)
    first, batches_per_s, tokens_per_s, stats = bench_pipeline(records, tokenizer, config, 0, args.max_batches)
    fill = float((first.segment_ids > 0).mean())
    print(f"records={len(records)} batch_shape={first.shape} first_batch_fill={fill:.2f} pairs_per_batch="
          f"{int(first.pair_valid.sum())}")
    print(f"pipeline: {batches_per_s:.1f} batches/s, {tokens_per_s:.0f} non-padding tokens/s; stats {stats}")
    if args.no_step:
        print(f"pipeline_batches_per_s={batches_per_s:.2f}")
        return
    compile_s, step_s = bench_step(first, args.step_repeats)
    print(f"step (SmolLM2-135M fwd+bwd, fp32, {first.shape}): compile {compile_s:.1f} s, median {step_s:.2f} s")
    print(f"pipeline_batches_per_s={batches_per_s:.2f} step_batches_per_s={1 / step_s:.3f} "
          f"ratio={batches_per_s * step_s:.0f}")


if __name__ == "__main__":
    np.set_printoptions(linewidth=120)
    main()
