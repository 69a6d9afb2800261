"""`alignx eval` records/s vs a plain PyTorch transformers loop that scores the same records.

    .venv/bin/python tools/bench_eval.py                 # 200 P-Soups records (../shared/data)
    .venv/bin/python tools/bench_eval.py --records 16    # a quick check

Workload: the paper's metric on P-Soups records in the ICA evaluation layout, policy = the
embedded SmolLM2-135M-Instruct, reference = the same weights exported to a Hugging Face folder (a
second model, so `alignx eval` scores both passes and does not take its shortcut for one model
given twice). Four summed log-probs per record.

- ours: the `alignx eval` command in a subprocess (shared-prefix packed rows, scored tokens only,
  fused log-probs, length buckets); records/s = records / its scoring time, compilation included,
  model loading excluded (`report.json` timing).
- torch: transformers' own GGUF loader, fp32, one sequence at a time as the official scripts
  (`eval/loss_ica.py` + `eval/loss_few_shot.py`): prompt+chosen and prompt+rejected through the
  policy, then through the reference; the same token ids (the prompt text from scores.jsonl,
  then each response's own ids, then EOS). Model loading excluded.

Both phases run one after the other (never together); the torch phase also checks that its
log-probs equal ours. Last line: `eval_ratio_vs_torch=X` (ours records/s / torch records/s).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "psoups_friendly_unfriendly.json"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return f"load average {os.getloadavg()}"


def run_ours(args, reference_dir: pathlib.Path, out: pathlib.Path) -> dict:
    alignx = pathlib.Path(sys.executable).parent / "alignx"
    command = [str(alignx), "eval", "--policy", "smollm2-135m-instruct", "--reference", str(reference_dir),
               "--data", str(args.data), "--out", str(out), "--limit", str(args.records), "--mode", "ica",
               "--rows", str(args.rows), "--batch-tokens", str(args.batch_tokens)]
    print("ours:", " ".join(command), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")},
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"alignx eval failed:\n{done.stderr}")
    report = json.loads((out / "report.json").read_text())
    timing = report["timing"]
    return {"records": report["n"], "scoring_s": timing["scoring_s"], "wall_s": wall,
            "records_per_s": report["n"] / timing["scoring_s"], "accuracy": report["accuracy"],
            "accuracy_logp": report["accuracy_logp"]}


def run_torch(args, reference_dir: pathlib.Path, scores: list[dict]) -> dict:
    import torch
    import transformers

    from alignx_jax.interop import embedded_gguf_path, load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    gguf = embedded_gguf_path()
    policy = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                               dtype=torch.float32).eval()
    reference = transformers.AutoModelForCausalLM.from_pretrained(reference_dir, dtype=torch.float32).eval()

    def logp(model, prompt_ids, text):
        response = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt_ids + response])
        logits = model(ids).logits[0, len(prompt_ids) - 1:-1].float()
        return float(torch.log_softmax(logits, -1).gather(1, torch.tensor(response)[:, None]).sum())

    worst = 0.0
    start = time.perf_counter()
    with torch.inference_mode():
        for row in scores:
            prompt_ids = tokenizer.encode(row["policy_prompt"], add_special_tokens=False)
            if prompt_ids[0] != tokenizer.bos_token_id:
                prompt_ids = [tokenizer.bos_token_id] + prompt_ids
            got = {"policy_chosen_logp": logp(policy, prompt_ids, row["chosen"]),
                   "policy_rejected_logp": logp(policy, prompt_ids, row["rejected"]),
                   "ref_chosen_logp": logp(reference, prompt_ids, row["chosen"]),
                   "ref_rejected_logp": logp(reference, prompt_ids, row["rejected"])}
            worst = max(worst, *(abs(got[k] - row[k]) / max(abs(got[k]), 1e-6) for k in got))
    elapsed = time.perf_counter() - start
    return {"records": len(scores), "scoring_s": elapsed, "records_per_s": len(scores) / elapsed,
            "max_rel_diff_vs_ours": worst, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA)
    parser.add_argument("--records", type=int, default=200, help="taken evenly across the two personas")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--batch-tokens", type=int, default=8192)
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"{args.data}: missing (the P-Soups file lives in ../shared/data)")
    print(f"start: {uptime()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        reference_dir = tmp / "reference_hf"
        subprocess.run([str(pathlib.Path(sys.executable).parent / "alignx"), "convert", "gguf-to-hf",
                        str(reference_dir)], check=True, capture_output=True)
        ours = run_ours(args, reference_dir, tmp / "eval")
        print(f"ours: {ours['records']} records in {ours['scoring_s']:.1f}s scoring ({ours['wall_s']:.1f}s end to "
              f"end with start-up and model loading): {ours['records_per_s']:.3f} records/s; accuracy "
              f"{ours['accuracy']:.3f}, accuracy_logp {ours['accuracy_logp']:.3f}", flush=True)
        print(f"after ours: {uptime()}", flush=True)
        scores = [json.loads(line) for line in (tmp / "eval" / "scores.jsonl").read_text().splitlines()]
        theirs = run_torch(args, reference_dir, scores)
    print(f"torch: {theirs['records']} records in {theirs['scoring_s']:.1f}s ({theirs['threads']} threads): "
          f"{theirs['records_per_s']:.3f} records/s; largest relative difference from ours "
          f"{theirs['max_rel_diff_vs_ours']:.2e}", flush=True)
    print(f"end: {uptime()}", flush=True)
    print(f"eval_ratio_vs_torch={ours['records_per_s'] / theirs['records_per_s']:.2f}")


if __name__ == "__main__":
    main()
