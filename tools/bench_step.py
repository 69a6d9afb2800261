"""The DPO training step: ours (`alignx_jax.train.train_step`) vs TRL 1.16 `DPOTrainer`, its parts,
and the shared-prefix layout vs the two-row layout.

    JAX_PLATFORMS=cpu .venv/bin/python tools/bench_step.py      # everything: ~25 min on 2 cores, ~11 GB RAM at peak
    JAX_PLATFORMS=cpu .venv/bin/python tools/bench_step.py --layers 2 --steps 1 --prefix-len 128 --response-len 16 \
        --repeats 1 --rounds 1                                   # a quick check of the script (~3 min)

Model: the embedded SmolLM2-135M-Instruct, fp32, exported once with `save_hf` to a temporary
Hugging Face folder that both sides load (the same weights bit for bit). Each side runs in its own
fresh process, one after the other; its peak RSS is that process's `ru_maxrss` (`os.wait4`).

1. The step, ours vs TRL. The same P-Soups records (`../shared/data/psoups_friendly_unfriendly.json`,
   `--steps` x `--pairs` of them, evenly over the two personas), the same prompts (the ICA training
   layout with its seeded persona draw, through the SmolLM2 chat template) and the same token ids
   (TRL gets the chat-templated prompt as plain text, and the ids it tokenizes are checked against
   ours: prompt, then each response's ids and EOS), `--pairs` pairs per optimizer step on both sides,
   in the same order. Both run the frozen reference model's forward inside the step, AdamW with lr
   1e-6 (linear decay, no warmup, no weight decay), global-norm clipping at 1.0, sigmoid loss, beta 0.1.
   - ours: `train_step` jitted with donated state on a one-device mesh, as `alignx train` runs it;
     one pair per row (`PackingConfig(rows=pairs, max_pairs_per_row=1)`), rows padded to the smallest
     of `--seq-lengths`, the scored-token count to the smallest of `--scored-buckets`. Every shape
     the timed batches use is compiled and run once before timing (compile/warm-up excluded).
   - TRL: `DPOTrainer(model, ref_model, DPOConfig(...))` with `precompute_ref_log_probs=False`,
     `per_device_train_batch_size=pairs`, `gradient_accumulation_steps=1`, fp32, sequential sampling,
     no truncation (`max_length=None`), no eval/save/logging. Its first step (on the first timed
     batch's records) is a warm-up; the next `--steps` are timed with a TrainerCallback
     (on_step_begin -> on_step_end: forward, backward, clipping, optimizer, scheduler).
   pairs/s = timed pairs / summed time of the timed steps. The sides alternate in `--rounds` rounds
   (ABBA: TRL, ours, ours, TRL) and each side's fastest round gives the ratio: the two cores are
   shared with other people's jobs, which only ever slow a run down. "cores busy" (process CPU time /
   wall time of the timed steps) shows when a neighbour took a core. TRL's fused LM head is also
   timed alone at its first timed step's shape (off CUDA/XPU it scores every position).
2. Per-part times of our step, on the first timed batch's shapes (each part jitted alone, median of
   `--repeats` runs after one warm-up): one decoder layer's attention (norm excluded: q/k/v/o
   projections, RoPE, `kernels.attention` on the packed mask) forward+backward x num_layers; the
   same for the MLP; the gather of scored tokens + fused log-prob kernel (`kernels.token_logprobs`)
   + per-response sums, forward+backward w.r.t. hidden states and the tied embedding; the whole
   reference forward (`scoring.pair_logprobs(..., differentiable=False)`); `optimizer.update` +
   `optax.apply_updates` alone. "rest" is the measured step minus those parts (norms, residuals,
   embedding, the layer scan's stacking, the loss, the gradient norm).
3. Layout: `--prefix-pairs` pairs of a `--prefix-len`-token persona prompt (real ICA prompts of
   P-Soups, or synthetic users when the file is absent, cut to length) and `--response-len`-token
   responses, packed both ways (`data.pack_rows`: one row [prompt | chosen | rejected] per pair;
   `data.pack_two_rows`: [prompt | chosen] and [prompt | rejected] rows), rows at their exact
   lengths. Timed: the step's forward+backward (the policy's loss and gradients, the reference
   forward included; no optimizer), median of `--repeats`. Both layouts give the same loss.

Last line: `step_ratio_vs_trl=X prefix_ratio=Y` (X = ours / TRL pairs/s, Y = two-row / shared-prefix
time; nan where skipped). The machine's load average is printed beside the figures.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "psoups_friendly_unfriendly.json"
SEED = 0
LR = 1e-6
BETA = 0.1
CLIP = 1.0


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average %.2f %.2f %.2f" % os.getloadavg()


def _log(*parts) -> None:
    print(*parts, flush=True)


def _median_time(fn, repeats: int) -> tuple[float, float]:
    """(first call incl. compile, median of `repeats` later calls), seconds; fn blocks until done."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


# ==== workload (parent) ==========================================================================

def build_workload(args, tokenizer) -> dict:
    """The records of part 1 in step order, their TRL texts and our token ids (checked to agree)."""
    import numpy as np

    from alignx_jax import data

    records, _ = data.load_records(args.data)
    groups = list(data.persona_groups(records).values())  # the personas in turn: friendly, unfriendly, ...
    order = [group[i] for i in range(max(map(len, groups))) for group in groups if i < len(group)]
    fmt = data.PromptFormat(kind="ica")
    eos = tokenizer.eos_token
    selected, skipped = [], []
    for index in order:
        record = records[index]
        position = len(selected)  # the source index packed_batches will see for this record
        pair, _ = data.encode_record(record, position, tokenizer=tokenizer, prompt_format=fmt, seed=SEED,
                                     max_length=args.seq_lengths[-1])
        history, render = fmt.persona(record, np.random.default_rng([SEED, position]))
        prompt = data.chat_text(tokenizer, render(history))
        # TRL's tokenization: prompt alone, then prompt + response + EOS text, split at the common prefix.
        trl_prompt = tokenizer(text=prompt)["input_ids"]
        trl = {}
        for key in ("chosen", "rejected"):
            full = tokenizer(text=prompt + record[key] + eos)["input_ids"]
            common = next((i for i, (a, b) in enumerate(zip(trl_prompt, full)) if a != b), min(len(trl_prompt), len(full)))
            trl[key] = (common, full)
        cut = min(trl["chosen"][0], trl["rejected"][0])
        same = (pair is not None and trl_prompt[:cut] == pair.prompt.tolist() and
                trl["chosen"][1][cut:] == pair.chosen.tolist() and trl["rejected"][1][cut:] == pair.rejected.tolist())
        if not same:
            skipped.append(index)
            continue
        selected.append({"index": index, "record": record, "prompt": prompt, "chosen": record["chosen"],
                         "rejected": record["rejected"], "prompt_ids": pair.prompt.tolist(),
                         "chosen_ids": pair.chosen.tolist(), "rejected_ids": pair.rejected.tolist()})
        if len(selected) == args.steps * args.pairs:
            break
    if len(selected) < args.steps * args.pairs:
        sys.exit(f"only {len(selected)} records have matching token ids (need {args.steps * args.pairs})")
    return {"pairs": selected, "skipped": skipped}


def run_export(args, work: pathlib.Path) -> dict:
    """The embedded SmolLM2-135M (fp32) as a Hugging Face folder; `--layers` keeps the first N layers."""
    import jax

    from alignx_jax import interop

    model = interop.from_pretrained("smollm2-135m-instruct")
    params, config = model.params, model.config
    if args.layers and args.layers < config.num_layers:
        params = {**params, "layers": jax.tree.map(lambda x: x[:args.layers], params["layers"])}
        config = config.replace(num_layers=args.layers)
    interop.save_hf(params, config, work / "hf", tokenizer=model.tokenizer)
    return {"num_layers": config.num_layers}


# ==== TRL (child) ================================================================================

def run_trl(args, work: pathlib.Path) -> dict:
    import datasets
    import torch
    import transformers
    import trl

    workload = json.loads((work / "workload.json").read_text())
    pairs = workload["pairs"]
    hf = work / "hf"
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    # The first batch twice: its first run is the warm-up step.
    rows = pairs[:args.pairs] + pairs
    dataset = datasets.Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in rows])
    warmup = 1
    config = trl.DPOConfig(
        output_dir=str(work / "trl_out"), max_steps=warmup + args.steps, per_device_train_batch_size=args.pairs,
        gradient_accumulation_steps=1, learning_rate=LR, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=CLIP, beta=BETA, loss_type=["sigmoid"], precompute_ref_log_probs=False, max_length=None,
        bf16=False, fp16=False, use_cpu=True, seed=SEED, train_sampling_strategy="sequential", report_to=[],
        logging_strategy="no", save_strategy="no", eval_strategy="no", disable_tqdm=True, dataloader_num_workers=0)

    class Timer(transformers.TrainerCallback):
        def __init__(self):
            self.times, self.cpu, self.start = [], [], None

        def on_step_begin(self, *_, **__):
            self.start = (time.perf_counter(), time.process_time())

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter() - self.start[0])
            self.cpu.append(time.process_time() - self.start[1])

    timer = Timer()
    trainer = trl.DPOTrainer(model=model, ref_model=ref_model, args=config, train_dataset=dataset,
                             processing_class=tokenizer, callbacks=[timer])
    prepared = trainer.train_dataset
    for i, p in enumerate(rows):
        got = prepared[i]
        if (got["prompt_ids"], got["chosen_ids"], got["rejected_ids"]) != (p["prompt_ids"], p["chosen_ids"],
                                                                            p["rejected_ids"]):
            raise SystemExit(f"TRL tokenized record {p['index']} differently from ours")
    tokens = [max(len(p["prompt_ids"]) + len(p["chosen_ids"]), len(p["prompt_ids"]) + len(p["rejected_ids"]))
              for p in pairs]
    padded = [2 * args.pairs * max(tokens[s * args.pairs:(s + 1) * args.pairs]) for s in range(args.steps)]
    real = [sum(2 * len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"])
                for p in pairs[s * args.pairs:(s + 1) * args.pairs]) for s in range(args.steps)]
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    timed = timer.times[warmup:]
    if len(timed) != args.steps:
        raise SystemExit(f"TRL ran {len(timer.times)} steps, expected {warmup + args.steps}")
    return {"step_s": timed, "cpu_s": timer.cpu[warmup:], "warmup_s": timer.times[:warmup],
            "torch_threads": torch.get_num_threads(), "padded_tokens_per_step": padded, "real_tokens_per_step": real,
            "train_wall_s": wall, "head_s": _trl_head_time(args, model, padded[0] // (2 * args.pairs)),
            "versions": {"trl": trl.__version__, "torch": torch.__version__, "transformers": transformers.__version__}}


def _trl_head_time(args, model, length: int) -> dict:
    """TRL's fused LM head alone at the first timed step's shape. Off Triton devices (CPU) it scores
    every position of the padded [2 * pairs, length] batch, not only the completion tokens."""
    import torch
    from trl.trainer import utils as trl_utils

    rows = 2 * args.pairs
    n = rows * (length - 1)
    weight = model.get_output_embeddings().weight
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, weight.shape[1], generator=generator)
    labels = torch.randint(0, weight.shape[0], (n,), generator=generator)
    apply = lambda h, outputs: trl_utils._ChunkedLogProbFunction.apply(  # noqa: E731
        h, weight, None, labels, 1.0, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, outputs)

    def policy():  # the outputs DPOTrainer asks of the policy (its logged metrics need them)
        h = hidden.clone().requires_grad_(True)
        apply(h, ("log_probs", "entropy", "mean_logits", "is_top1"))[0].sum().backward()
        weight.grad = None

    def reference():
        with torch.no_grad():
            apply(hidden, ("log_probs",))

    return {"tokens": n, "policy_fwd_bwd": _median_time(policy, args.repeats)[1],
            "reference_fwd": _median_time(reference, args.repeats)[1]}


# ==== ours (children) ============================================================================

def _ours_setup(args, work: pathlib.Path, total_steps: int):
    """(mesh, model config, state, state shardings, optimizer, schedule, base spec, batches, buckets)."""
    import jax

    from alignx_jax import data, losses
    from alignx_jax.models import sharding as model_sharding
    from alignx_jax.train import config as config_lib
    from alignx_jax.train import sharding as train_sharding
    from alignx_jax.train import create_state, load_model
    from alignx_jax.train.optimizer import learning_rate, make_optimizer
    from alignx_jax.train.step import StepSpec

    workload = json.loads((work / "workload.json").read_text())
    pairs = workload["pairs"]
    mesh = model_sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    model_config = config_lib.ModelConfig(name=str(work / "hf"))
    train_config = config_lib.TrainConfig(
        out_dir=str(work / "ours_out"), seed=SEED, steps=total_steps, model=model_config,
        data=config_lib.DataConfig(files=(config_lib.DataFile(str(args.data)),), rows=args.pairs,
                                   seq_lengths=tuple(args.seq_lengths), max_pairs_per_row=1,
                                   scored_buckets=tuple(args.scored_buckets)),
        loss="sigmoid", beta=BETA, reference="frozen",
        optimizer=config_lib.OptimizerConfig(lr=LR, warmup_steps=0, schedule="linear", end_lr_ratio=0.0,
                                             weight_decay=0.0, clip_norm=CLIP))
    params, model, tokenizer = load_model(model_config, mesh, SEED)
    optimizer = make_optimizer(train_config.optimizer, total_steps)
    schedule = learning_rate(train_config.optimizer, total_steps)
    state, shardings = create_state(train_config, params, model, mesh, optimizer)
    del params
    loss_fn = losses.resolve("sigmoid", {"beta": BETA})
    spec = StepSpec(model=model, loss_fn=loss_fn, loss_hparams=(("beta", BETA),), reference="frozen", lora=None,
                    num_pairs=args.pairs, scored_length=args.scored_buckets[0])
    records = [p["record"] for p in pairs]
    packing = data.PackingConfig(rows=args.pairs, seq_lengths=tuple(args.seq_lengths), max_pairs_per_row=1)
    batches = list(data.packed_batches(records, tokenizer=tokenizer, config=packing,
                                       prompt_format=data.PromptFormat(kind="ica"), seed=SEED, shuffle=False,
                                       shard_index=0, shard_count=1))
    for step, batch in enumerate(batches):  # the same records, in the same order, as TRL's steps
        expected = list(range(step * args.pairs, (step + 1) * args.pairs))
        if batch.pair_source.tolist() != expected:
            raise SystemExit(f"batch {step} holds records {batch.pair_source.tolist()}, expected {expected}")
        for slot, source in enumerate(expected):
            row = batch.tokens[slot]
            p = pairs[source]
            want = p["prompt_ids"] + p["chosen_ids"] + p["prompt_ids"][-1:] + p["rejected_ids"]
            if row[:len(want)].tolist() != want:
                raise SystemExit(f"record {p['index']}: packed ids differ from the workload's")
    if len(batches) != args.steps:
        raise SystemExit(f"{len(batches)} batches, expected {args.steps}")
    row_sharding, pair_sharding = train_sharding.batch_shardings(mesh)
    return dict(mesh=mesh, model=model, state=state, shardings=shardings, optimizer=optimizer, schedule=schedule,
                spec=spec, batches=batches, row_sharding=row_sharding, pair_sharding=pair_sharding,
                replicated=train_sharding.replicated(mesh), rules=model_sharding.DEFAULT_RULES)


def _device_batch(s: dict, batch, buckets):
    from alignx_jax.train import data as train_data

    return train_data.assemble([batch.as_dict()], buckets=tuple(buckets), row_sharding=s["row_sharding"],
                               pair_sharding=s["pair_sharding"])


def _step_fn(s: dict):
    import jax

    from alignx_jax.train.step import train_step

    return jax.jit(train_step, static_argnames=("spec", "optimizer", "schedule"), donate_argnums=0,
                   out_shardings=(s["shardings"], s["replicated"]))


def run_ours(args, work: pathlib.Path) -> dict:
    import dataclasses

    import flax.linen as nn
    import jax

    s = _ours_setup(args, work, total_steps=args.steps + 8)
    step_fn = _step_fn(s)
    device_batches = [_device_batch(s, b, args.scored_buckets) for b in s["batches"]]
    shapes_needed = sorted({(b["tokens"].shape[-1], length) for b, length in device_batches})
    state = s["state"]
    rng = jax.random.key(SEED)
    compile_s, step_s, cpu_s, losses, shapes = {}, [], [], [], []
    with jax.set_mesh(s["mesh"]), nn.logical_axis_rules(s["rules"]):
        def run(batch, length):
            nonlocal state
            spec = dataclasses.replace(s["spec"], scored_length=length)
            state, metrics = step_fn(state, batch, rng, spec=spec, optimizer=s["optimizer"], schedule=s["schedule"])
            return jax.device_get(metrics)

        for shape in shapes_needed:  # compile + first run of every shape the timed steps use
            batch, length = next((b, l) for b, l in device_batches if (b["tokens"].shape[-1], l) == shape)
            start = time.perf_counter()
            run(batch, length)
            compile_s[f"{shape[0]}x{shape[1]}"] = time.perf_counter() - start
        for batch, length in device_batches:
            start, cpu = time.perf_counter(), time.process_time()
            metrics = run(batch, length)
            step_s.append(time.perf_counter() - start)
            cpu_s.append(time.process_time() - cpu)
            losses.append(float(metrics["loss"]))
            shapes.append([int(batch["tokens"].shape[1]), int(batch["tokens"].shape[2]), length])
    real = [int((b["segment_ids"] > 0).sum()) for b, _ in device_batches]
    return {"step_s": step_s, "cpu_s": cpu_s, "compile_and_first_run_s": compile_s, "real_tokens_per_step": real,
            "losses": losses, "shapes": shapes, "padded_tokens_per_step": [r * t for r, t, _ in shapes]}


def run_parts(args, work: pathlib.Path) -> dict:
    """Per-part times of our step on the first timed batch's shapes."""
    import dataclasses

    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from alignx_jax import kernels
    from alignx_jax.models import llama, scoring

    s = _ours_setup(args, work, total_steps=args.repeats + 8)
    model: llama.LlamaConfig = s["model"]
    batch, length = _device_batch(s, s["batches"][0], args.scored_buckets)
    spec = dataclasses.replace(s["spec"], scored_length=length)
    flat = jax.tree.map(lambda x: x[0], batch)  # [B, T] arrays of the one micro-batch
    b, t = flat["tokens"].shape
    d, layers = model.hidden_size, model.num_layers
    out = {"shape": [b, t, length], "num_layers": layers}
    state = s["state"]
    keys = iter(jax.random.split(jax.random.key(1), 16))
    normal = lambda shape, scale=1.0: scale * jax.random.normal(next(keys), shape, jnp.float32)  # noqa: E731
    block = jax.block_until_ready
    with jax.set_mesh(s["mesh"]), nn.logical_axis_rules(s["rules"]):
        step_fn = _step_fn(s)

        def step():
            nonlocal state
            state, metrics = step_fn(state, batch, jax.random.key(0), spec=spec, optimizer=s["optimizer"],
                                     schedule=s["schedule"])
            jax.device_get(metrics)

        compiled = step_fn.lower(state, batch, jax.random.key(0), spec=spec, optimizer=s["optimizer"],
                                 schedule=s["schedule"]).compile()
        memory = compiled.memory_analysis()
        out["memory_mib"] = {"arguments": memory.argument_size_in_bytes / 2**20,
                             "temporaries": memory.temp_size_in_bytes / 2**20}
        out["step"] = _median_time(step, args.repeats)
        params, frozen = state.params, state.frozen
        structure = (flat["positions"], flat["segment_ids"], flat["roles"])
        x = normal((b, t, d))

        layer = lambda name: jax.tree.map(lambda a: a[0], params["layers"][name])  # noqa: E731

        def attention_loss(p, x, ct):
            positions, segment_ids, roles = structure
            y, _ = llama.Attention(model).apply({"params": p}, x, positions, None, (segment_ids, roles))
            return jnp.vdot(y, ct)

        attn = jax.jit(jax.grad(attention_loss, argnums=(0, 1)))
        attn_p, attn_ct = layer("attn"), normal((b, t, d))
        out["attention_layer"] = _median_time(lambda: block(attn(attn_p, x, attn_ct)), args.repeats)

        n, k, h = model.num_heads, model.num_kv_heads, model.resolved_head_dim
        q_, k_, v_, o_ct = normal((b, t, n, h)), normal((b, t, k, h)), normal((b, t, k, h)), normal((b, t, n, h))

        def core_loss(q, kk, v, impl):
            positions, segment_ids, roles = structure
            o = kernels.attention(q, kk, v, segment_ids=segment_ids, roles=roles, positions=positions, impl=impl)
            return jnp.vdot(o, o_ct)

        core = jax.jit(jax.grad(core_loss, argnums=(0, 1, 2)), static_argnums=3)
        out["attention_impl"] = model.attention_impl
        out["attention_core_layer"] = _median_time(lambda: block(core(q_, k_, v_, model.attention_impl)), args.repeats)
        # Not in the step: the dense [B, T, T] mask with jax.nn.dot_product_attention, for comparison.
        out["attention_dense_layer"] = _median_time(lambda: block(core(q_, k_, v_, "dense")), args.repeats)

        def mlp_loss(p, x, ct):
            return jnp.vdot(llama.MLP(model).apply({"params": p}, x), ct)

        mlp = jax.jit(jax.grad(mlp_loss, argnums=(0, 1)))
        mlp_p, mlp_ct = layer("mlp"), normal((b, t, d))
        out["mlp_layer"] = _median_time(lambda: block(mlp(mlp_p, x, mlp_ct)), args.repeats)

        def head_loss(hidden, embedding, ct):
            chosen_mask = flat["chosen_mask"].reshape(-1)
            scored = kernels.gather_scored_tokens(chosen_mask | flat["rejected_mask"].reshape(-1), length)
            hs = hidden.reshape(-1, d)[scored.index]
            labels = flat["targets"].reshape(-1)[scored.index]
            logp, _ = kernels.token_logprobs(hs, embedding.T, labels, scored.valid)
            pair = flat["pair_ids"].reshape(-1)[scored.index]
            response = jnp.where(scored.valid, 2 * pair + jnp.where(chosen_mask[scored.index], 0, 1), -1)
            return jnp.vdot(kernels.segment_sum(logp, response, 2 * spec.num_pairs), ct)

        head = jax.jit(jax.grad(head_loss, argnums=(0, 1)))
        head_ct = normal((2 * spec.num_pairs,))
        embedding = params["embed"]["embedding"]
        hidden = normal((b, t, d))
        out["head"] = _median_time(lambda: block(head(hidden, embedding, head_ct)), args.repeats)

        reference = jax.jit(lambda p, a: scoring.pair_logprobs(p, model, a, num_pairs=spec.num_pairs,
                                                              scored_length=length, differentiable=False))
        out["reference"] = _median_time(lambda: block(reference(frozen, flat)), args.repeats)

        def update(grads, opt_state, params):
            updates, opt_state = s["optimizer"].update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        optimize = jax.jit(update, donate_argnums=(1, 2))
        grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-4), params)
        opt_params = jax.tree.map(jnp.copy, params)
        holder = {"opt": state.opt_state, "params": opt_params}

        def opt_step():
            holder["params"], holder["opt"] = optimize(grads, holder["opt"], holder["params"])
            block(holder["params"])

        out["optimizer"] = _median_time(opt_step, args.repeats)
    return out


def run_prefix(args, work: pathlib.Path) -> dict:
    """Shared-prefix vs two-row layout: the step's forward+backward on the same pairs."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from alignx_jax import data, kernels, losses
    from alignx_jax.models import scoring
    from alignx_jax.models import sharding as model_sharding
    from alignx_jax.train import config as config_lib
    from alignx_jax.train import load_model

    mesh = model_sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    params, model, tokenizer = load_model(config_lib.ModelConfig(name=str(work / "hf")), mesh, SEED)
    frozen = jax.tree.map(jnp.copy, params)
    if args.data.exists():
        records, _ = data.load_records(args.data)
        source = "P-Soups"
    else:
        records = data.synthetic_records(64, seed=SEED)
        source = "synthetic users"
    fmt = data.PromptFormat(kind="ica", history="full")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pairs = []
    r = 0
    for _ in range(args.prefix_pairs):
        # Rendered ICA prompts (full history), concatenated until they exceed the length, then
        # left-cut after BOS so the prompt ends with the last record's assistant header.
        ids, chosen_ids, rejected_ids = [], [], []
        while len(ids) < args.prefix_len or len(chosen_ids) < args.response_len or len(rejected_ids) < args.response_len:
            record = records[r % len(records)]
            r += 1
            history, render = fmt.persona(record, np.random.default_rng([SEED, r]))
            ids += tokenizer.encode(data.chat_text(tokenizer, render(history)), add_special_tokens=False)
            chosen_ids += tokenizer.encode(record["chosen"] + "\n", add_special_tokens=False)
            rejected_ids += tokenizer.encode(record["rejected"] + "\n", add_special_tokens=False)
        prompt = [bos] + ids[len(ids) - (args.prefix_len - 1):]
        as_array = lambda x: np.asarray(x, np.int32)  # noqa: E731
        pairs.append(data.EncodedPair(as_array(prompt), as_array(chosen_ids[:args.response_len - 1] + [eos]),
                                      as_array(rejected_ids[:args.response_len - 1] + [eos])))
    shared = data.pack_rows([[p] for p in pairs], seq_len=pairs[0].packed_length)
    two_row = data.pack_two_rows(pairs, seq_len=args.prefix_len + args.response_len)
    loss_fn = losses.resolve("sigmoid", {"beta": BETA})

    def loss(p, frozen, batch, num_pairs, length):
        pi = scoring.pair_logprobs(p, model, batch, num_pairs=num_pairs, scored_length=length)
        ref = scoring.pair_logprobs(frozen, model, batch, num_pairs=num_pairs, scored_length=length,
                                    differentiable=False)
        per_pair, _ = loss_fn(pi.chosen, pi.rejected, ref.chosen, ref.rejected, beta=BETA)
        valid = batch["pair_valid"]
        return jnp.sum(jnp.where(valid, per_pair, 0.0)) / jnp.maximum(jnp.sum(valid), 1), pi.chosen

    grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=(3, 4))
    out = {"source": source, "prefix_len": args.prefix_len, "response_len": args.response_len,
           "pairs": args.prefix_pairs}
    with jax.set_mesh(mesh), nn.logical_axis_rules(model_sharding.DEFAULT_RULES):
        for name, packed in (("shared_prefix", shared), ("two_row", two_row)):
            arrays = {k: jnp.asarray(v) for k, v in packed.as_dict().items() if k != "pair_source"}
            length = kernels.bucket_length(scoring.scored_token_count(packed.as_dict()), (64, 128, 256, 512, 1024, 2048,
                                                                                          4096, 8192))
            result = {}

            def call():
                (value, chosen), grads = grad_fn(params, frozen, arrays, args.prefix_pairs, length)
                jax.block_until_ready(grads)
                result.update(loss=float(value), chosen=np.asarray(chosen).tolist())

            first, median = _median_time(call, args.repeats)
            out[name] = {"rows": list(packed.tokens.shape), "tokens": int(packed.tokens.size), "scored_length": length,
                         "first_s": first, "s": median, **result}
    return out


# ==== orchestration (parent) =====================================================================

def _child(role: str, args, work: pathlib.Path, extra: tuple[str, ...] = ()) -> tuple[dict, float]:
    """Run one role in a fresh process; (its result, its peak RSS in MiB)."""
    command = [sys.executable, __file__, "--role", role, "--work", str(work), *extra] + args.passthrough
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"{role} failed (exit {process.returncode})")
    return json.loads((work / f"{role}.json").read_text()), usage.ru_maxrss / 1024


def _fmt_s(x: float) -> str:
    return f"{x:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per side")
    parser.add_argument("--pairs", type=int, default=4, help="pairs per optimizer step (both sides)")
    parser.add_argument("--seq-lengths", type=int, nargs="+", default=[256, 320, 384, 448, 512, 640, 768, 1024])
    parser.add_argument("--scored-buckets", type=int, nargs="+", default=[128, 256, 384, 512, 768, 1024])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per part / layout (median)")
    parser.add_argument("--prefix-len", type=int, default=1024)
    parser.add_argument("--response-len", type=int, default=64)
    parser.add_argument("--prefix-pairs", type=int, default=2)
    parser.add_argument("--layers", type=int, default=0, help="keep the first N decoder layers (quick checks); 0 = all")
    parser.add_argument("--rounds", type=int, default=2,
                        help="TRL and ours alternate, ABBA: 1 = TRL, ours; 2 = TRL, ours, ours, TRL (drift cancels)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["trl", "ours", "parts", "prefix"])
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=pathlib.Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        fn = {"export": run_export, "trl": run_trl, "ours": run_ours, "parts": run_parts, "prefix": run_prefix}[args.role]
        (args.work / f"{args.role}.json").write_text(json.dumps(fn(args, args.work)))
        return
    args.passthrough = [a for a in sys.argv[1:]]
    _log(f"bench_step: {_uptime()}")
    have_data = args.data.exists()
    if not have_data:
        _log(f"{args.data} not found: the step comparison with TRL and the per-part table need the P-Soups file "
             f"(../shared/data); skipping them, the layout comparison runs on synthetic users")
    with tempfile.TemporaryDirectory(prefix="bench_step_") as tmp:
        work = pathlib.Path(tmp)
        start = time.perf_counter()
        _child("export", args, work)
        _log(f"exported the model to {work / 'hf'} in {time.perf_counter() - start:.1f} s")
        results, rss, loads = {}, {}, {}
        roles = []
        if have_data:
            for r in range(args.rounds):
                roles += [("trl", r), ("ours", r)] if r % 2 == 0 else [("ours", r), ("trl", r)]
            roles.append(("parts", 0))
        roles.append(("prefix", 0))
        if have_data:
            from alignx_jax import interop

            tokenizer = interop.load_tokenizer(str(work / "hf"))
            workload = build_workload(args, tokenizer)
            (work / "workload.json").write_text(json.dumps(workload))
            _log(f"workload: {len(workload['pairs'])} P-Soups records ({args.steps} steps x {args.pairs} pairs); "
                 f"{len(workload['skipped'])} skipped because TRL's tokenization would differ")
        for role, r in roles:
            if role in args.skip:
                continue
            _log(f"--- {role} (round {r + 1}): {_uptime()}")
            start = time.perf_counter()
            result, peak = _child(role, args, work)
            results.setdefault(role, []).append(result)
            rss.setdefault(role, []).append(peak)
            loads.setdefault(role, []).append(_uptime())
            _log(f"--- {role} (round {r + 1}) done in {time.perf_counter() - start:.0f} s, peak RSS {peak:.0f} MiB; "
                 f"{loads[role][-1]}")
    report(args, results, rss, loads)


def report(args, results: dict, rss: dict, loads: dict) -> None:
    step_ratio = prefix_ratio = math.nan
    print()
    if "trl" in results or "ours" in results:
        def pairs_per_s(runs):
            return args.pairs * sum(len(x["step_s"]) for x in runs) / sum(sum(x["step_s"]) for x in runs)

        def best(key):  # neighbours on the shared cores only ever slow a run down: its fastest round counts
            return max(pairs_per_s([run]) for run in results[key])

        if "trl" in results and "ours" in results:
            step_ratio = best("ours") / best("trl")
        print(f"## 1. Training step, SmolLM2-135M fp32, {args.pairs} P-Soups pairs per step, the same {args.steps} "
              f"steps on each side, {args.rounds} round(s) per side (ABBA order)")
        print()
        print("| run | pairs/s | median step s | timed step times s | cores busy | tokens per step: real / padded | "
              "peak RSS MiB | load average after |")
        print("|---|---|---|---|---|---|---|---|")
        names = {"ours": "ours (alignx_jax train_step)", "trl": "TRL DPOTrainer"}
        for key in ("ours", "trl"):
            for r, run in enumerate(results.get(key, [])):
                load = loads[key][r].split("load average:")[-1].strip()
                print(f"| {names[key]}, round {r + 1} | {pairs_per_s([run]):.3f} | {statistics.median(run['step_s']):.2f} | "
                      f"{' '.join(_fmt_s(x) for x in run['step_s'])} | {sum(run['cpu_s']) / sum(run['step_s']):.2f} | "
                      f"{statistics.mean(run['real_tokens_per_step']):.0f} / "
                      f"{statistics.mean(run['padded_tokens_per_step']):.0f} | {rss[key][r]:.0f} | {load} |")
        print()
        for key in ("ours", "trl"):
            if key in results:
                print(f"{names[key]}: best round {best(key):.3f} pairs/s, all rounds together "
                      f"{pairs_per_s(results[key]):.3f} pairs/s, peak RSS {max(rss[key]):.0f} MiB")
        if "trl" in results and "ours" in results:
            print(f"ours / TRL: {step_ratio:.2f} (best rounds; all rounds together: "
                  f"{pairs_per_s(results['ours']) / pairs_per_s(results['trl']):.2f})")
        print("cores busy = the process's CPU time / wall time over the timed steps: 2 = both cores; about 1 = a "
              "neighbour's job had the other core (such a round is slower and does not count when another is faster)")
        if "ours" in results:
            ours = results["ours"][0]
            print(f"ours: rows x length / scored slots per step {[f'{r}x{t}/{l}' for r, t, l in ours['shapes']]}; "
                  f"compile + first run per shape (excluded) "
                  f"{ {k: round(v, 1) for k, v in ours['compile_and_first_run_s'].items()} } s; "
                  f"losses {[round(x, 4) for x in ours['losses']]}")
        if "trl" in results:
            trl = results["trl"][0]
            print(f"TRL {trl['versions']['trl']} (torch {trl['versions']['torch']}, transformers "
                  f"{trl['versions']['transformers']}, {trl['torch_threads']} torch threads): warm-up step (excluded) "
                  f"{[round(x, 2) for x in trl['warmup_s']]} s; padded tokens per step {trl['padded_tokens_per_step']}")
            fastest = max(results["trl"], key=lambda run: pairs_per_s([run]))
            head = fastest["head_s"]
            print(f"TRL's fused LM head alone at the first timed step's shape ({head['tokens']} positions: on CPU it "
                  f"scores every position, not only the completions), in its fastest round: policy fwd+bwd "
                  f"{head['policy_fwd_bwd']:.2f} s + reference fwd {head['reference_fwd']:.2f} s, against that step's "
                  f"{fastest['step_s'][0]:.2f} s")
        print()
    if "parts" in results:
        p = results["parts"][0]
        b, t, length = p["shape"]
        layers = p["num_layers"]
        step = p["step"][1]
        rows = [
            ("attention (q/k/v/o projections, RoPE, block-sparse kernel), fwd+bwd", p["attention_layer"][1] * layers,
             f"one layer's `llama.Attention` jitted alone x {layers}"),
            ("  of which kernels.attention alone", p["attention_core_layer"][1] * layers,
             f"impl={p['attention_impl']!r} (block-sparse XLA loop on CPU), one layer x {layers}"),
            ("MLP (SwiGLU), fwd+bwd", p["mlp_layer"][1] * layers, f"one layer's `llama.MLP` jitted alone x {layers}"),
            ("LM head + fused log-prob kernel (scored tokens), fwd+bwd", p["head"][1],
             f"gather + `token_logprobs` + segment sums on {length} scored slots, grads to hidden and embedding"),
            ("reference forward (frozen model, forward-only kernel)", p["reference"][1],
             "`scoring.pair_logprobs(differentiable=False)` jitted alone"),
            ("optimizer (clip + AdamW + apply_updates)", p["optimizer"][1], "`optimizer.update` + `apply_updates` jitted alone"),
        ]
        parts = sum(v for name, v, _ in rows if not name.startswith("  "))
        rows.append(("rest (norms, residuals, embedding, layer scan, loss, grad norm)", step - parts,
                     "the step minus the rows above"))
        print(f"## 2. Where our step's time goes ({b} rows x {t} tokens, {length} scored slots, the first timed batch; "
              f"each part the median of {args.repeats} after a warm-up)")
        print()
        print("| part | s | share of step | how it is measured |")
        print("|---|---|---|---|")
        for name, value, how in rows:
            print(f"| {name} | {value:.2f} | {100 * value / step:.0f}% | {how} |")
        print(f"| **step (`train_step`, measured)** | **{step:.2f}** | 100% | the jitted step on this batch |")
        print()
        memory = p["memory_mib"]
        print(f"not in the step, for comparison: kernels.attention impl='dense' (the [B, T, T] mask, "
              f"jax.nn.dot_product_attention) {p['attention_dense_layer'][1] * layers:.2f} s x {layers} layers")
        print(f"XLA's memory plan of the step: arguments {memory['arguments']:.0f} MiB (params, reference, Adam moments), "
              f"temporaries {memory['temporaries']:.0f} MiB (activations kept for the backward, gradients); "
              f"load after: {loads['parts'][0]}")
        print()
    if "prefix" in results:
        p = results["prefix"][0]
        shared, two = p["shared_prefix"], p["two_row"]
        prefix_ratio = two["s"] / shared["s"]
        print(f"## 3. Shared-prefix vs two-row layout: {p['pairs']} pairs, {p['prefix_len']}-token persona prompt "
              f"({p['source']}), {p['response_len']}-token responses; the step's forward+backward (reference "
              f"forward included), median of {args.repeats}")
        print()
        print("| layout | rows x length | tokens | s | loss |")
        print("|---|---|---|---|---|")
        for name, r in (("shared prefix [prompt | chosen | rejected]", shared), ("two rows [prompt | chosen], "
                                                                              "[prompt | rejected]", two)):
            print(f"| {name} | {r['rows'][0]}x{r['rows'][1]} | {r['tokens']} | {r['s']:.2f} | {r['loss']:.6f} |")
        print()
        diff = max(abs(a - b) for a, b in zip(shared["chosen"], two["chosen"]))
        print(f"time ratio two-row / shared-prefix {prefix_ratio:.2f} (token ratio {two['tokens'] / shared['tokens']:.2f}); "
              f"chosen log-probs agree within {diff:.1e}; peak RSS {rss['prefix'][0]:.0f} MiB; load after: "
              f"{loads['prefix'][0]}")
        print()
    print(_uptime())
    print(f"step_ratio_vs_trl={step_ratio:.2f} prefix_ratio={prefix_ratio:.2f}")


if __name__ == "__main__":
    main()
