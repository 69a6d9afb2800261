"""One-shot GPU check of the training step (< 2.5 minutes on one H100), then the attention checks.

    PYTHONPATH=. python tools/gpu_check_train.py          # on a CUDA machine
    PYTHONPATH=. python tools/gpu_check_train.py --dry    # tiny shapes, any backend (is the script sound?)

1. The DPO step (`train_step`: policy forward + backward, frozen reference forward, fused log-probs,
   AdamW) of a random-init SmolLM2-135M, bf16 compute / fp32 master weights, on packed P-Soups-like
   rows [8, 1024] (one pair of ~600 prompt + 2 x 150 response tokens per row): loss and gradient
   norm finite, the loss at step 0 equals log 2 (policy = reference), steady-state pairs/s,
   tokens/s and MFU against the H100's 989 TFLOP/s bf16 (model FLOPs as in train/metrics.py).
   The attention is `auto` (cuDNN for bf16) and the log-prob kernel `auto` (the XLA loop on GPU).
2. The same step with `attention_impl="dense"`: the loss agrees (bf16 tolerance).
3. tools/gpu_check_attention.py's correctness section (pallas_gpu / cudnn / xla vs dense).

Self-contained on the lent machine (its jax, flax, optax, chex): `grain` is not installed there, and
the data layer imports it for its pipeline only, so a stand-in module is installed when missing.
"""
from __future__ import annotations

import argparse
import functools
import pathlib
import sys
import time
import traceback
import types

import numpy as np

START = time.perf_counter()


def _grain_stand_in():
    try:
        import grain  # noqa: F401
    except ImportError:
        module = types.ModuleType("grain")
        module.DatasetIterator = module.IterDataset = object
        module.ReadOptions = module.MapDataset = object
        sys.modules["grain"] = module
        print("note: grain is not installed; a stand-in lets alignx_jax.data import (no pipeline is used)")


def _pairs(rng, count, prompt, response, vocab):
    from alignx_jax import data

    ids = lambda n: rng.integers(3, vocab, n).astype(np.int32)  # noqa: E731
    return [data.EncodedPair(np.concatenate([[1], ids(prompt - 1)]).astype(np.int32),
                             np.append(ids(response - 1), 2).astype(np.int32),
                             np.append(ids(response - 1), 2).astype(np.int32)) for _ in range(count)]


def step_check(dry: bool):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from alignx_jax import data, kernels, losses
    from alignx_jax.models import llama
    from alignx_jax.models import sharding as model_sharding
    from alignx_jax.train import metrics
    from alignx_jax.train.step import StepSpec, TrainState, train_step

    print(f"devices: {jax.devices()}  jax {jax.__version__}", flush=True)
    if dry:
        model = llama.LlamaConfig.tiny(dtype="bfloat16")
        rows, seq, prompt, response = 2, 256, 100, 40
    else:
        model = llama.LlamaConfig.smollm2_135m(dtype="bfloat16")
        rows, seq, prompt, response = 8, 1024, 600, 150
    batch = data.pack_rows([[p] for p in _pairs(np.random.default_rng(0), rows, prompt, response, model.vocab_size)],
                           seq_len=seq).as_dict()
    arrays = {k: jnp.asarray(v)[None] for k, v in batch.items() if k != "pair_source"}
    scored = kernels.bucket_length(int((batch["chosen_mask"] | batch["rejected_mask"]).sum()), (512, 1024, 2048, 4096))
    optimizer = optax.adamw(1e-5)
    mesh = model_sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])

    def run(config, steps):
        params = jax.jit(llama.init_params, static_argnums=0)(config, jax.random.key(0))
        state = TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params),
                           frozen=jax.tree.map(jnp.copy, params))
        spec = StepSpec(model=config, loss_fn=losses.get("sigmoid"), loss_hparams=(("beta", 0.1),), reference="frozen",
                        lora=None, num_pairs=rows, scored_length=scored)
        step = jax.jit(functools.partial(train_step, spec=spec, optimizer=optimizer, schedule=optax.constant_schedule(1e-5)),
                       donate_argnums=0)
        times, rows_out = [], []
        with jax.set_mesh(mesh), nn.logical_axis_rules(model_sharding.DEFAULT_RULES):
            for i in range(steps):
                tick = time.perf_counter()
                state, m = step(state, arrays, jax.random.key(i))
                m = jax.device_get(m)
                times.append(time.perf_counter() - tick)
                rows_out.append(m)
        return times, rows_out

    times, out = run(model, 2 if dry else 7)
    first = out[0]
    print(f"step 0: loss {first['loss']:.6f} (log 2 = {np.log(2):.6f}), grad_norm {first['grad_norm']:.4f}, "
          f"pairs {first['pairs']:.0f}, tokens {first['tokens']:.0f}, scored {first['scored_tokens']:.0f}; "
          f"compile+run {times[0]:.1f} s")
    assert np.isfinite(first["loss"]) and np.isfinite(first["grad_norm"]) and abs(first["loss"] - np.log(2)) < 1e-2
    steady = float(np.median(times[2:])) if len(times) > 2 else times[-1]
    flops = metrics.step_flops(model, tokens=float(first["tokens"]), scored_tokens=float(first["scored_tokens"]),
                               seq_len=seq, reference_forward=True)
    print(f"steady step {1000 * steady:.1f} ms (median of {max(len(times) - 2, 1)}): {first['pairs'] / steady:.1f} pairs/s, "
          f"{first['tokens'] / steady:.0f} tokens/s, {flops / 1e12:.2f} TFLOP per step, "
          f"MFU {flops / steady / 989e12:.3f} of 989 TFLOP/s bf16", flush=True)
    dense_times, dense_out = run(model.replace(attention_impl="dense"), 2)
    print(f"attention dense: step 0 loss {dense_out[0]['loss']:.6f}, second step loss {dense_out[1]['loss']:.6f} vs "
          f"auto {out[1]['loss']:.6f}; dense step {1000 * dense_times[-1]:.1f} ms", flush=True)


def section(title, fn, *args):
    print(f"\n== {title} ({time.perf_counter() - START:.0f} s elapsed)", flush=True)
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - a check script reports and goes on
        print(f"!! {title} failed:")
        traceback.print_exc(limit=8, file=sys.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true")
    args = parser.parse_args()
    _grain_stand_in()
    section("training step", step_check, args.dry)
    if not args.dry:
        sys.path.insert(0, str(pathlib.Path(__file__).parent))
        import gpu_check_attention

        gpu_check_attention._chex_stand_in()
        section("attention correctness", gpu_check_attention.correctness)
    print(f"\ndone in {time.perf_counter() - START:.0f} s")


if __name__ == "__main__":
    main()
