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
ALIGNX = pathlib.Path(sys.executable).parent / "alignx"


def consumed_pairs(config, steps: int) -> list[dict]:
    """The (prompt text, chosen, rejected) of every pair our run trains on, in step order."""
    from alignx_jax import data, interop
    from alignx_jax.train import data as train_data

    splits = train_data.build_splits(config.data, config.seed)
    tokenizer = interop.load_tokenizer(config.model.name)
    fmt = train_data.prompt_format(config.data)
    batches = iter(data.packed_batches(splits.train, tokenizer=tokenizer, config=train_data.packing_config(config.data),
                                       prompt_format=fmt, seed=config.seed, num_epochs=None,
                                       on_long_response=config.data.on_long_response, shard_index=0, shard_count=1))
    pairs = []
    for _ in range(steps):
        batch = next(batches)
        for source in batch.pair_source[batch.pair_valid]:
            record = splits.train[int(source)]
            history, render = fmt.persona(record, np.random.default_rng([config.seed, int(source)]))
            pairs.append({"prompt": data.chat_text(tokenizer, render(history)), "chosen": record["chosen"],
                          "rejected": record["rejected"]})
    return pairs


def train_trl(config, pairs: list[dict], steps: int, out: pathlib.Path) -> float:
    import datasets
    import peft
    import torch
    import transformers
    import trl

    from alignx_jax import interop

    hf = out / "base_hf"
    if not (hf / "config.json").exists():
        interop.from_pretrained(config.model.name).save_hf(hf)
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    per_step = config.data.rows * config.data.max_pairs_per_row
    lora = peft.LoraConfig(r=config.lora.rank, lora_alpha=config.lora.alpha, lora_dropout=0.0,
                           target_modules=list(config.lora.targets), task_type="CAUSAL_LM")
    args = trl.DPOConfig(
        output_dir=str(out / "trl_out"), max_steps=steps, per_device_train_batch_size=per_step,
        gradient_accumulation_steps=1, learning_rate=config.optimizer.lr, lr_scheduler_type=config.optimizer.schedule,
        warmup_steps=config.optimizer.warmup_steps, weight_decay=config.optimizer.weight_decay,
        max_grad_norm=config.optimizer.clip_norm, beta=config.beta, loss_type=["sigmoid"], max_length=None,
        bf16=False, fp16=False, use_cpu=True, seed=config.seed, train_sampling_strategy="sequential", report_to=[],
        logging_steps=1, save_strategy="no", eval_strategy="no", dataloader_num_workers=0)
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(pairs),
                             processing_class=tokenizer, peft_config=lora)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(out / "trl_model")
    tokenizer.save_pretrained(out / "trl_model")
    return seconds


def evaluate(policy: pathlib.Path, heldout: pathlib.Path, out: pathlib.Path) -> dict:
    if not (out / "report.json").exists():
        subprocess.run([str(ALIGNX), "eval", "--policy", str(policy), "--reference", "smollm2-135m-instruct",
                        "--data", str(heldout), "--mode", "ica", "--out", str(out)], check=True)
    return json.loads((out / "report.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="default: the config's")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "runs" / "quality")
    parser.add_argument("--skip-trl", action="store_true")
    args = parser.parse_args()
    from alignx_jax.train import load_config, train

    out = args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    config = load_config(CONFIG, [f"out_dir={out / 'ours'}"] + ([f"steps={args.steps}"] if args.steps else []))
    if not pathlib.Path(config.data.files[0].path).is_file():
        sys.exit(f"{config.data.files[0].path}: absent (../shared is not beside this checkout); nothing to run")
    times = {}
    start = time.perf_counter()
    train(config)
    times["ours_train_s"] = time.perf_counter() - start
    reports = {"ours": evaluate(out / "ours" / "model", out / "ours" / "heldout.json", out / "eval_ours")}
    if not args.skip_trl:
        pairs = consumed_pairs(config, config.steps)
        times["trl_train_s"] = train_trl(config, pairs, config.steps, out)
        reports["trl"] = evaluate(out / "trl_model", out / "ours" / "heldout.json", out / "eval_trl")
    subprocess.run([str(ALIGNX), "eval", "--compare", *(str(out / f"eval_{k}") for k in reports)], check=False)
    (out / "quality.json").write_text(json.dumps({"times": times, "reports": {
        k: {key: r[key] for key in ("accuracy", "accuracy_logp", "worst_persona_accuracy", "worst_persona_accuracy_logp",
                                    "n", "per_persona")} for k, r in reports.items()}}, indent=2))
    print(json.dumps(times))
    worst = {k: r["worst_persona_accuracy"] for k, r in reports.items()}
    print(f"worst_persona_ours={worst['ours']:.4f} worst_persona_trl={worst.get('trl', float('nan')):.4f}")


if __name__ == "__main__":
    main()
