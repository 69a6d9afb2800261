"""Our training step equals TRL's `DPOTrainer`, step for step: the same model, pairs, order and optimizer.

    JAX_PLATFORMS=cpu .venv/bin/python tools/parity_trl.py --loss sigmoid,ipo,rpo --steps 10 --out parity.json
    JAX_PLATFORMS=cpu .venv/bin/python tools/parity_trl.py --loss sigmoid,ipo,rpo --steps 10 --lora \
        --out parity_lora.json

Both sides train the embedded SmolLM2-135M-Instruct in float32 from the same weights (exported once with
`save_hf` to a Hugging Face folder that both load), on the same records in the same order (P-Soups from
`../shared/data` when present, else synthetic mirror users written to a temporary file), with the same
prompts and token ids (the ICA training layout with its seeded persona draw through the chat template;
`tools/bench_step.build_workload` checks TRL's tokenization against ours record by record): `--pairs`
pairs per optimizer step, AdamW at a constant `--lr` (b1 0.9, b2 0.999, eps 1e-8, no weight decay),
global-norm clipping at 1.0, beta 0.1, a frozen reference model (full fine-tuning) or the base without
its adapters (`--lora`: rank 16, alpha 32 on q/k/v/o/gate/up/down of every layer, dropout 0; peft's
A matrices are set to ours, so both start from the same adapters).

- ours: `alignx_jax.train.train_step` jitted on one device, shared-prefix packed rows (one pair per row).
- TRL 1.16: `DPOTrainer(model, ref_model | peft_config, DPOConfig(...))`, sequential sampling, logging
  every step; loss and grad norm (before clipping) from the trainer's log, TRL's reward metrics from
  its own `_metrics`.

Losses: `sigmoid` and `ipo` by TRL's `loss_type`; `rpo` is TRL's RPO form, `loss_type=["sigmoid", "sft"]`
with `loss_weights=[1, rpo_alpha]` (the NLL averaged over all chosen tokens of the batch), which ours
runs as `mixture` of `sigmoid` and `sft` (our registry's `rpo` averages the NLL per example instead).

Per step and loss: loss, rewards/chosen, rewards/rejected, logps/chosen, logps/rejected (the policy's
summed response log-probs, batch means) and grad_norm; a value agrees when |ours - TRL| <= rtol *
max(|TRL|, floor): `--rtol` 1e-4 for the loss, the log-probs and the grad norm, `--reward-rtol` 1e-3
for the rewards. A reward is beta times the difference of the policy's and the reference's summed
float32 log-probs: it carries beta times their error (measured on the full model: log-probs within
2.6e-6 relative, 1.1e-4 absolute, so rewards within 1e-5 absolute), which is 2e-4 of a reward of 0.05.
`--floor` (0.05) keeps rewards near 0 (step 1's are exactly 0 on both sides) from dividing by zero. Exit 0 only when every value of every step agrees; the JSON
(`--out`) holds both sides' values, the worst relative difference per metric and the verdict.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_step  # noqa: E402  (the shared workload: records, prompts and token ids checked against TRL's)

METRICS = ("loss", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "grad_norm")
LOSSES = {  # --loss name: (our registry loss and hparams, TRL loss_type and loss_weights)
    "sigmoid": (("sigmoid", {}), (["sigmoid"], None)),
    "ipo": (("ipo", {}), (["ipo"], None)),
    "rpo": (("mixture", {"loss_type": ("sigmoid", "sft"), "loss_weights": (1.0, 1.0)}), (["sigmoid", "sft"], [1.0, 1.0])),
}
LORA = {"rank": 16, "alpha": 32.0, "targets": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}


def _synthetic_file(work: pathlib.Path) -> pathlib.Path:
    from alignx_jax import data

    path = work / "synthetic.json"
    data.write_records(data.synthetic_records(64, seed=0, records_per_user=2, history_items=1), path)
    return path


# ==== ours ======================================================================================

def run_ours(args, work: pathlib.Path, workload: dict, loss: str) -> dict:
    """Per-step metrics of our step; writes our initial LoRA A matrices for TRL (`lora_a.npz`)."""
    import flax.linen as nn
    import jax
    import numpy as np

    from alignx_jax import data, losses
    from alignx_jax.models import sharding as model_sharding
    from alignx_jax.train import config as config_lib
    from alignx_jax.train import create_state, load_model
    from alignx_jax.train import data as train_data
    from alignx_jax.train import sharding as train_sharding
    from alignx_jax.train.optimizer import learning_rate, make_optimizer
    from alignx_jax.train.step import StepSpec, train_step

    (name, hparams), _ = LOSSES[loss]
    pairs = workload["pairs"]
    mesh = model_sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    model_config = config_lib.ModelConfig(name=str(work / "hf"))
    lora = config_lib.LoraConfig(rank=LORA["rank"], alpha=LORA["alpha"], targets=LORA["targets"])
    config = config_lib.TrainConfig(
        out_dir=str(work / "ours"), seed=args.seed, steps=args.steps, model=model_config,
        data=config_lib.DataConfig(synthetic=config_lib.SyntheticUsers(users=2), rows=args.pairs,
                                   seq_lengths=tuple(args.seq_lengths), max_pairs_per_row=1),
        loss=name, beta=bench_step.BETA, loss_hparams=hparams, reference="lora" if args.lora else "frozen", lora=lora,
        optimizer=config_lib.OptimizerConfig(lr=args.lr, warmup_steps=0, schedule="constant", weight_decay=0.0,
                                             clip_norm=bench_step.CLIP))
    params, model, tokenizer = load_model(model_config, mesh, args.seed)
    optimizer = make_optimizer(config.optimizer, args.steps)
    schedule = learning_rate(config.optimizer, args.steps)
    state, shardings = create_state(config, params, model, mesh, optimizer)
    if args.lora:
        np.savez(work / "lora_a.npz", **{k: np.asarray(v["a"]) for k, v in state.params.items()})
    loss_fn = losses.resolve(name, {"beta": bench_step.BETA, **hparams})
    spec = StepSpec(model=model, loss_fn=loss_fn, loss_hparams=tuple(sorted({"beta": bench_step.BETA, **hparams}.items())),
                    reference=config.reference, lora=lora if args.lora else None, num_pairs=args.pairs,
                    scored_length=0)
    packing = data.PackingConfig(rows=args.pairs, seq_lengths=tuple(args.seq_lengths), max_pairs_per_row=1)
    batches = list(data.packed_batches([p["record"] for p in pairs], tokenizer=tokenizer, config=packing,
                                       prompt_format=data.PromptFormat(kind="ica"), seed=bench_step.SEED,
                                       shuffle=False, shard_index=0, shard_count=1))
    for step, batch in enumerate(batches):  # the workload's records, in TRL's order, with its token ids
        for slot, source in enumerate(batch.pair_source.tolist()):
            p = pairs[source]
            want = p["prompt_ids"] + p["chosen_ids"] + p["prompt_ids"][-1:] + p["rejected_ids"]
            if source != step * args.pairs + slot or batch.tokens[slot][:len(want)].tolist() != want:
                raise SystemExit(f"step {step + 1}: packed record {source} differs from the workload's")
    row_sharding, pair_sharding = train_sharding.batch_shardings(mesh)
    step_fn = jax.jit(train_step, static_argnames=("spec", "optimizer", "schedule"), donate_argnums=0,
                      out_shardings=(shardings, train_sharding.replicated(mesh)))
    buckets = train_data.default_buckets(args.pairs * args.seq_lengths[-1])
    rows = []
    with jax.set_mesh(mesh), nn.logical_axis_rules(model_sharding.DEFAULT_RULES):
        for step, batch in enumerate(batches):
            arrays, scored = train_data.assemble([batch.as_dict()], buckets=buckets, row_sharding=row_sharding,
                                                 pair_sharding=pair_sharding)
            start = time.perf_counter()
            state, metrics = step_fn(state, arrays, jax.random.key(step),
                                     spec=dataclasses.replace(spec, scored_length=scored), optimizer=optimizer,
                                     schedule=schedule)
            metrics = jax.device_get(metrics)
            rows.append({**{k: float(metrics[k]) for k in METRICS}, "seconds": time.perf_counter() - start})
    return {"steps": rows}


# ==== TRL =======================================================================================

def run_trl(args, work: pathlib.Path, workload: dict, loss: str) -> dict:
    import datasets
    import numpy as np
    import torch
    import transformers
    import trl

    _, (loss_type, loss_weights) = LOSSES[loss]
    pairs = workload["pairs"]
    hf = work / "hf"
    torch.manual_seed(args.seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    ref_model, peft_config = None, None
    if args.lora:
        import peft

        peft_config = peft.LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=0.0, bias="none",
                                      target_modules=list(LORA["targets"]), task_type="CAUSAL_LM")
    else:
        ref_model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    dataset = datasets.Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    config = trl.DPOConfig(
        output_dir=str(work / "trl"), max_steps=args.steps, per_device_train_batch_size=args.pairs,
        gradient_accumulation_steps=1, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch",
        max_grad_norm=bench_step.CLIP, beta=bench_step.BETA, loss_type=loss_type, loss_weights=loss_weights,
        precompute_ref_log_probs=False, max_length=None, bf16=False, fp16=False, use_cpu=True, seed=args.seed,
        train_sampling_strategy="sequential", report_to=[], logging_strategy="steps", logging_steps=1,
        save_strategy="no", eval_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    trainer = trl.DPOTrainer(model=model, ref_model=ref_model, args=config, train_dataset=dataset,
                             processing_class=tokenizer, peft_config=peft_config)
    for i, p in enumerate(pairs):
        got = trainer.train_dataset[i]
        if (got["prompt_ids"], got["chosen_ids"], got["rejected_ids"]) != (p["prompt_ids"], p["chosen_ids"],
                                                                            p["rejected_ids"]):
            raise SystemExit(f"TRL tokenized record {p['index']} differently from ours")
    if args.lora:  # peft's A := ours (B is zero on both sides), so both start from the same adapters
        ours = np.load(work / "lora_a.npz")
        set_count = 0
        for module_name, module in trainer.model.named_modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                layer = int(module_name.split(".layers.")[1].split(".")[0])
                projection = module_name.rsplit(".", 1)[1]
                a = torch.from_numpy(np.ascontiguousarray(ours[projection][layer].T))
                with torch.no_grad():
                    module.lora_A["default"].weight.copy_(a)
                    module.lora_B["default"].weight.zero_()
                set_count += 1
        if set_count != len(LORA["targets"]) * ours[LORA["targets"][0]].shape[0]:
            raise SystemExit(f"set {set_count} peft adapters, expected one per projection and layer")
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    logged = [row for row in trainer.state.log_history if "loss" in row and "grad_norm" in row]
    if len(logged) != args.steps:
        raise SystemExit(f"TRL logged {len(logged)} steps, expected {args.steps}")
    rows = [{k: float(row[k]) for k in METRICS} for row in logged]
    return {"steps": rows, "train_wall_s": wall,
            "versions": {"trl": trl.__version__, "torch": torch.__version__, "transformers": transformers.__version__}}


# ==== comparison ================================================================================

def compare(ours: list[dict], theirs: list[dict], rtol: float, reward_rtol: float, floor: float) -> dict:
    """Per metric: the largest |ours - TRL| / max(|TRL|, floor) over the steps, its step, its tolerance."""
    worst = {}
    for key in METRICS:
        diffs = [abs(a[key] - b[key]) / max(abs(b[key]), floor) for a, b in zip(ours, theirs, strict=True)]
        tolerance = reward_rtol if key.startswith("rewards/") else rtol
        worst[key] = {"max_rel": max(diffs), "step": 1 + diffs.index(max(diffs)), "rtol": tolerance,
                      "max_abs": max(abs(a[key] - b[key]) for a, b in zip(ours, theirs, strict=True))}
    return {"worst": worst, "agree": all(w["max_rel"] <= w["rtol"] for w in worst.values())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loss", default="sigmoid,ipo,rpo", help=f"comma-separated, of {sorted(LOSSES)}")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=2, help="pairs per optimizer step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora", action="store_true", help="LoRA (rank 16, alpha 32, all projections) instead of "
                                                            "full fine-tuning")
    parser.add_argument("--lr", type=float, default=1e-5, help="AdamW's constant learning rate")
    parser.add_argument("--rtol", type=float, default=1e-4, help="loss, log-probs and grad norm")
    parser.add_argument("--reward-rtol", type=float, default=1e-3, help="rewards (beta x a log-prob difference)")
    parser.add_argument("--floor", type=float, default=0.05, help="relative to max(|TRL|, floor)")
    parser.add_argument("--layers", type=int, default=0, help="keep the first N decoder layers (quick checks); 0 = all")
    parser.add_argument("--data", type=pathlib.Path, default=bench_step.DEFAULT_DATA,
                        help="AlignX-format records (default: P-Soups in ../shared/data; synthetic users when absent)")
    parser.add_argument("--seq-lengths", type=int, nargs="+", default=[256, 384, 512, 640, 768, 1024, 1536, 2048])
    parser.add_argument("--out", type=pathlib.Path, help="JSON with both sides' values and the verdict")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.loss.split(",") if n.strip()]
    unknown = sorted(set(names) - set(LOSSES))
    if unknown or not names:
        parser.error(f"--loss: unknown {unknown}; choose from {sorted(LOSSES)}")
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        if not args.data.is_file():
            args.data = _synthetic_file(work)
        from alignx_jax import interop

        bench_step.run_export(args, work)
        tokenizer = interop.load_tokenizer(str(work / "hf"))
        workload = bench_step.build_workload(args, tokenizer)
        report = {"command": " ".join(sys.argv), "data": str(args.data), "lora": args.lora, "lr": args.lr,
                  "pairs": args.pairs, "steps": args.steps, "rtol": args.rtol, "reward_rtol": args.reward_rtol,
                  "floor": args.floor, "losses": {}}
        for loss in names:
            ours = run_ours(args, work, workload, loss)
            theirs = run_trl(args, work, workload, loss)
            verdict = compare(ours["steps"], theirs["steps"], args.rtol, args.reward_rtol, args.floor)
            report["losses"][loss] = {"ours": ours["steps"], "trl": theirs["steps"], **verdict}
            report["versions"] = theirs["versions"]
            print(f"{loss} ({'LoRA' if args.lora else 'full'}): "
                  + ", ".join(f"{k} max rel {v['max_rel']:.2e} (step {v['step']})" for k, v in verdict["worst"].items())
                  + f" -> {'agree' if verdict['agree'] else 'DIFFER'}", flush=True)
    report["agree"] = all(v["agree"] for v in report["losses"].values())
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    print(f"parity_trl: {'agree' if report['agree'] else 'DIFFER'} ({', '.join(names)}; "
          f"{'LoRA' if args.lora else 'full'}; {args.steps} steps)")
    return 0 if report["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
