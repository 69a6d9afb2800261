"""Run as a script with 8 host devices: one training step on several meshes, printed as JSON.

    python tests/train/sharded_worker.py   ->   {"1x1x1": {"loss": .., "params": path}, ...}
"""
import json
import os
import sys
import tempfile

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from alignx_jax import data, kernels, losses  # noqa: E402
from alignx_jax.models import llama  # noqa: E402
from alignx_jax.models import sharding as model_sharding  # noqa: E402
from alignx_jax.train import config_from_dict  # noqa: E402
from alignx_jax.train import data as train_data  # noqa: E402
from alignx_jax.train import sharding as train_sharding  # noqa: E402
from alignx_jax.train import create_state  # noqa: E402
from alignx_jax.train.optimizer import learning_rate  # noqa: E402
from alignx_jax.train.step import StepSpec, train_step  # noqa: E402

MODEL = llama.LlamaConfig.tiny(num_heads=4, num_kv_heads=2, intermediate_size=128)

# The tokens each call of the fused kernel sees (at trace time, inside shard_map: one device's share).
KERNEL_TOKENS = []


def _recording(fn):
    def wrapped(hidden, *args, **kwargs):
        KERNEL_TOKENS.append(int(hidden.shape[0]))
        return fn(hidden, *args, **kwargs)
    return wrapped


kernels.token_logprobs = _recording(kernels.token_logprobs)
kernels.token_logprobs_no_grad = _recording(kernels.token_logprobs_no_grad)


class ByteTokenizer:
    bos_token_id, eos_token_id = 1, 2

    def encode(self, text, add_special_tokens=False):
        return [b + 3 for b in text.encode("utf-8")]

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"


def main():
    records = data.synthetic_records(16, seed=0, records_per_user=2, history_items=0)
    packing = data.PackingConfig(rows=8, seq_lengths=(1024,), max_pairs_per_row=2)
    batch = next(iter(data.packed_batches(records, tokenizer=ByteTokenizer(), config=packing, seed=0,
                                          shard_index=0, shard_count=1))).as_dict()
    config = config_from_dict({"model": {"name": "random", "tokenizer": "x"}, "data": {"synthetic": {"users": 2}},
                               "optimizer": {"lr": 1e-2, "warmup_steps": 0}, "steps": 10})
    # SGD: the updated params are params - lr * grads, so they compare the gradients themselves (Adam's
    # first step, lr * g / |g|, would turn fp32 noise of near-zero gradients into lr-sized differences).
    optimizer = optax.sgd(0.1)
    params = llama.init_params(MODEL, jax.random.key(0))
    reference = jax.tree.map(lambda x: x * 0.98, params)  # policy != reference: a non-trivial loss
    results, folder = {}, tempfile.mkdtemp()
    for name, sizes in (("1x1x1", (1, 1, 1)), ("1x4x2", (1, 4, 2)), ("2x4x1", (2, 4, 1))):
        devices = jax.devices()[: int(np.prod(sizes))]
        mesh = model_sharding.make_mesh(*sizes, devices=devices)
        placed = jax.device_put(params, train_sharding.param_shardings(MODEL, mesh), may_alias=False)
        state, shardings = create_state(config, placed, MODEL, mesh, optimizer)
        state = state.replace(frozen=jax.device_put(reference, shardings.frozen, may_alias=False))
        rows, pairs = train_sharding.batch_shardings(mesh)
        arrays, scored = train_data.assemble([batch], buckets=(512, 1024, 2048, 4096, 8192), row_sharding=rows,
                                             pair_sharding=pairs)
        spec = StepSpec(model=MODEL, loss_fn=losses.get("sigmoid"), loss_hparams=(("beta", 0.1),), reference="frozen",
                        lora=None, num_pairs=len(batch["pair_valid"]), scored_length=scored)
        step = jax.jit(train_step, static_argnames=("spec", "optimizer", "schedule"), donate_argnums=0,
                       out_shardings=(shardings, None))
        KERNEL_TOKENS.clear()
        with jax.set_mesh(mesh), nn.logical_axis_rules(model_sharding.DEFAULT_RULES):
            new_state, metrics = step(state, arrays, jax.random.key(0), spec=spec, optimizer=optimizer,
                                      schedule=learning_rate(config.optimizer, config.steps))
        specs = {jax.tree_util.keystr(p): str(x.sharding.spec) for p, x in jax.tree_util.tree_leaves_with_path(new_state.params)}
        path = os.path.join(folder, f"{name}.npz")
        np.savez(path, **{jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(new_state.params)})
        results[name] = {"loss": float(metrics["loss"]), "params": path, "specs": specs, "scored_length": scored,
                         "kernel_tokens": sorted(set(KERNEL_TOKENS)),
                         "scored_tokens": float(metrics["scored_tokens"])}
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
