"""The quality run: ours vs TRL 1.16 DPOTrainer on the same records, model, steps and LoRA, scored alike.

    JAX_PLATFORMS=cpu .venv/bin/python tools/bench_quality.py [--steps 60] [--out runs/quality] [--skip-trl]

1. Ours: `alignx train --config configs/smollm2_ica_psoups.yaml` (the embedded SmolLM2-135M-Instruct,
   LoRA, DPO, ICA on P-Soups friendly/unfriendly from ../shared plus synthetic users; a seeded draw of
   50 records per persona held out), then `alignx eval` on its held-out split (out/ours/heldout.json)
   with the paper's metric: the base model with the few-shot persona prompt as the reference, the
   official evaluation layout.
2. TRL: DPOTrainer on exactly the pairs our run consumed, in the same order and the same rendered
   training prompts (4 pairs per step), the same steps, learning rate schedule, beta, and LoRA (peft:
   the same rank, alpha and projections; the base with adapters off is TRL's reference too), then
   merged, saved as a Hugging Face folder and scored by the same `alignx eval`.
3. `alignx eval --compare` prints both per-persona tables side by side; wall times beside them.

Needs ../shared/data/psoups_friendly_unfriendly.json, trl 1.16 and peft (the test extra).
Last line: `worst_persona_ours=X worst_persona_trl=Y` (the paper's metric on the held-out split).

Equal time (`--equal-time SECONDS`, default config configs/smollm2_ica_twins.yaml, `--seed`): each side
trains for the same wall-clock budget, counted from the start of its training call (model loading,
data preparation, compilation and steps; each stops before a step that would end past the budget), in
its fastest correct setting: ours the config's recipe (twin batches, the cross-user term, a constant
learning rate, LoRA on the top layers, the packed shared-prefix step); TRL's `DPOTrainer` the same
records in our order, the config's loss as TRL writes it (`rpo`: `loss_type=["sigmoid", "sft"]`), the
same learning rate, beta, clipping and LoRA (rank, alpha, projections, layers), 4 pairs per step,
without gradient checkpointing (TRL's default; it only recomputes activations that fit memory anyway).
Both are scored by `alignx eval` on the config's held-out users (written to out/heldout.json before
either trains; our run itself skips held-out passes, so no scoring counts against its budget).
    JAX_PLATFORMS=cpu .venv/bin/python tools/bench_quality.py --equal-time 600 --seed 0 --out runs/equal_time/s0
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "smollm2_ica_psoups.yaml"
EQUAL_TIME_CONFIG = REPO / "configs" / "smollm2_ica_twins.yaml"
TRL_LOSSES = {"sigmoid": (["sigmoid"], None), "ipo": (["ipo"], None)}  # rpo: sigmoid + rpo_alpha x sft (below)
ALIGNX = pathlib.Path(sys.executable).parent / "alignx"


def consumed_pairs(config, steps: int) -> list[dict]:
    """The (prompt text, chosen, rejected) of every pair our run trains on, in step order."""
    from alignx_jax import data, interop
    from alignx_jax.train import data as train_data

    splits = train_data.build_splits(config.data, config.seed)
    tokenizer = interop.load_tokenizer(config.model.name)
    fmt = train_data.prompt_format(config.data)
    units = data.twin_units(splits.train) if config.data.twins else None
    batches = iter(data.packed_batches(splits.train, tokenizer=tokenizer, config=train_data.packing_config(config.data),
                                       prompt_format=fmt, seed=config.seed, num_epochs=None,
                                       on_long_response=config.data.on_long_response, shard_index=0, shard_count=1,
                                       units=units))
    pairs = []
    for _ in range(steps):
        batch = next(batches)
        for source in batch.pair_source[batch.pair_valid]:
            record = splits.train[int(source)]
            history, render = fmt.persona(record, np.random.default_rng([config.seed, int(source)]))
            pairs.append({"prompt": data.chat_text(tokenizer, render(history)), "chosen": record["chosen"],
                          "rejected": record["rejected"]})
    return pairs


def trl_loss(config) -> tuple[list[str], list[float] | None]:
    """The config's loss as TRL's `loss_type` and `loss_weights`."""
    if config.loss == "rpo":
        return ["sigmoid", "sft"], [1.0, float(config.loss_hparams.get("rpo_alpha", 1.0))]
    if config.loss not in TRL_LOSSES:
        sys.exit(f"loss {config.loss!r}: no TRL counterpart here (of {sorted(TRL_LOSSES) + ['rpo']})")
    return TRL_LOSSES[config.loss]


def train_trl(config, pairs: list[dict], steps: int, out: pathlib.Path, *, budget: float | None = None) -> dict:
    """TRL's DPOTrainer on `pairs` (LoRA as the config's); with `budget`, it stops before a step that
    would end past `budget` seconds after this call started. Returns its seconds and steps."""
    import datasets
    import peft
    import torch
    import transformers
    import trl

    from alignx_jax import interop

    hf = out / "base_hf"  # a one-off conversion of the GGUF file, outside the clock
    if not (hf / "config.json").exists():
        interop.from_pretrained(config.model.name).save_hf(hf)
    start = time.perf_counter()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    per_step = config.data.rows * config.data.max_pairs_per_row
    num_layers = model.config.num_hidden_layers
    layers = None if config.lora.layers is None else list(range(num_layers - config.lora.layers, num_layers))
    lora = peft.LoraConfig(r=config.lora.rank, lora_alpha=config.lora.alpha, lora_dropout=0.0,
                           target_modules=list(config.lora.targets), layers_to_transform=layers,
                           task_type="CAUSAL_LM")
    loss_type, loss_weights = trl_loss(config)
    args = trl.DPOConfig(
        output_dir=str(out / "trl_out"), max_steps=steps, per_device_train_batch_size=per_step,
        gradient_accumulation_steps=1, learning_rate=config.optimizer.lr, lr_scheduler_type=config.optimizer.schedule,
        warmup_steps=config.optimizer.warmup_steps, weight_decay=config.optimizer.weight_decay,
        max_grad_norm=config.optimizer.clip_norm, beta=config.beta, loss_type=loss_type, loss_weights=loss_weights,
        max_length=None, gradient_checkpointing=False,  # TRL's default recomputes activations: slower, no gain here
        bf16=False, fp16=False, use_cpu=True, seed=config.seed, train_sampling_strategy="sequential", report_to=[],
        logging_steps=1, save_strategy="no", eval_strategy="no", dataloader_num_workers=0)
    clock = _deadline_callback(start + budget) if budget is not None else None
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(pairs),
                             processing_class=tokenizer, peft_config=lora, callbacks=[clock] if clock else None)
    if budget is None:
        start = time.perf_counter()  # the same-steps comparison times the steps alone
    trainer.train()
    seconds = time.perf_counter() - start
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(out / "trl_model")
    tokenizer.save_pretrained(out / "trl_model")
    return {"seconds": seconds, "steps": int(trainer.state.global_step)}


def _deadline_callback(deadline: float):
    """A TrainerCallback that stops training before a step that would end past `deadline`."""
    import transformers

    class Deadline(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.tick = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            if now + (now - self.tick) > deadline:
                control.should_training_stop = True

    return Deadline()


def evaluate(policy: pathlib.Path, heldout: pathlib.Path, out: pathlib.Path) -> dict:
    if not (out / "report.json").exists():
        subprocess.run([str(ALIGNX), "eval", "--policy", str(policy), "--reference", "smollm2-135m-instruct",
                        "--data", str(heldout), "--mode", "ica", "--out", str(out)], check=True)
    return json.loads((out / "report.json").read_text())


def same_steps(args, out: pathlib.Path) -> tuple[dict, dict]:
    """Ours for the config's steps, then TRL on the pairs ours consumed, for as many steps."""
    from alignx_jax.train import load_config, train

    config = load_config(args.config or CONFIG, [f"out_dir={out / 'ours'}"] + _overrides(args))
    if not pathlib.Path(config.data.files[0].path).is_file():
        sys.exit(f"{config.data.files[0].path}: absent (../shared is not beside this checkout); nothing to run")
    times = {}
    start = time.perf_counter()
    train(config)
    times["ours_train_s"] = time.perf_counter() - start
    reports = {"ours": evaluate(out / "ours" / "model", out / "ours" / "heldout.json", out / "eval_ours")}
    if not args.skip_trl:
        pairs = consumed_pairs(config, config.steps)
        times["trl_train_s"] = train_trl(config, pairs, config.steps, out)["seconds"]
        reports["trl"] = evaluate(out / "trl_model", out / "ours" / "heldout.json", out / "eval_trl")
    return times, reports


def equal_time(args, out: pathlib.Path) -> tuple[dict, dict]:
    """Ours, then TRL, each for `args.equal_time` seconds; pairs trained and seconds of both."""
    import dataclasses

    from alignx_jax import data
    from alignx_jax.train import data as train_data
    from alignx_jax.train import load_config, train

    budget = args.equal_time
    # Steps enough for any budget (the schedule is the config's; a constant one does not depend on them).
    config = load_config(args.config or EQUAL_TIME_CONFIG, [f"out_dir={out / 'ours'}", "steps=100000", "eval_every=0",
                                                            "checkpoint_every=100000"] + _overrides(args))
    splits = train_data.build_splits(config.data, config.seed)
    # The held-out users are drawn apart from the training ones: without them, the training split is the same.
    ours = dataclasses.replace(config, data=dataclasses.replace(
        config.data, heldout_synthetic=dataclasses.replace(config.data.heldout_synthetic, users=0)))
    trained = train_data.build_splits(ours.data, ours.seed)
    if not splits.heldout or trained.heldout or len(trained.train) != len(splits.train):
        sys.exit(f"{args.config or EQUAL_TIME_CONFIG}: --equal-time scores held-out synthetic users "
                 f"(data.heldout_synthetic) and no held-out file records")
    heldout = out / "heldout.json"
    data.write_records(splits.heldout, heldout)
    start = time.perf_counter()
    summary = train(ours, deadline=start + budget)
    rows = [json.loads(line) for line in (out / "ours" / "metrics.jsonl").read_text().splitlines()]
    times = {"budget_s": budget, "ours_train_s": time.perf_counter() - start, "ours_steps": summary["steps"],
             "ours_pairs": int(sum(r["pairs"] for r in rows)),
             "ours_step_s": float(np.median([r["seconds"] for r in rows if not r["compiled"]] or [np.nan]))}
    reports = {"ours": evaluate(out / "ours" / "model", heldout, out / "eval_ours")}
    if not args.skip_trl:
        per_step = config.data.rows * config.data.max_pairs_per_row
        steps = max(3 * summary["steps"], 30)  # more than TRL reaches: the budget stops it
        trl_run = train_trl(config, consumed_pairs(config, steps)[:steps * per_step], steps, out, budget=budget)
        times.update(trl_train_s=trl_run["seconds"], trl_steps=trl_run["steps"], trl_pairs=trl_run["steps"] * per_step)
        reports["trl"] = evaluate(out / "trl_model", heldout, out / "eval_trl")
    return times, reports


def _overrides(args) -> list[str]:
    return ([f"steps={args.steps}"] if args.steps else []) + ([f"seed={args.seed}"] if args.seed is not None else []) \
        + args.overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="default: the config's")
    parser.add_argument("--equal-time", type=float, default=None, metavar="SECONDS",
                        help="train each side for this wall-clock budget instead of a number of steps")
    parser.add_argument("--config", type=pathlib.Path, default=None,
                        help=f"default: {CONFIG.name}, with --equal-time {EQUAL_TIME_CONFIG.name}")
    parser.add_argument("--seed", type=int, default=None, help="default: the config's")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "runs" / "quality")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, as `alignx train` takes")
    parser.add_argument("--skip-trl", action="store_true")
    args = parser.parse_args()
    if args.equal_time is not None and (args.equal_time <= 0 or args.steps):
        parser.error("--equal-time takes a positive number of seconds, and no --steps")
    out = args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    times, reports = (equal_time if args.equal_time is not None else same_steps)(args, out)
    subprocess.run([str(ALIGNX), "eval", "--compare", *(str(out / f"eval_{k}") for k in reports)], check=False)
    (out / "quality.json").write_text(json.dumps({"times": times, "reports": {
        k: {key: r[key] for key in ("accuracy", "accuracy_logp", "ci", "worst_persona_accuracy",
                                    "worst_persona_accuracy_logp", "n", "per_persona")} for k, r in reports.items()}},
        indent=2))
    print(json.dumps(times))
    worst = {k: r["worst_persona_accuracy"] for k, r in reports.items()}
    print(f"worst_persona_ours={worst['ours']:.4f} worst_persona_trl={worst.get('trl', float('nan')):.4f}")


if __name__ == "__main__":
    main()
