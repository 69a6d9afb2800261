"""GPU check of the evaluation path: `evaluation.score_records` vs a plain PyTorch loop on one GPU.

    OUT=/tmp python3 tools/gpu_check_eval.py --tokenizer TOKENIZER_DIR --data psoups_friendly_unfriendly.json

SmolLM2-135M shapes with random weights (the embedded GGUF is ~100 MB, too large to carry to a
lent GPU machine; speed does not depend on the values), the SmolLM2 tokenizer (the folder
`alignx_jax.interop.load_tokenizer("smollm2-135m-instruct")` caches under ~/.cache/alignx_jax),
all 600 P-Soups records, policy != reference (two random inits). Times score_records cold (with
compilation) and warm at 8 and 32 rows per batch, then transformers on the same weights (save_hf),
fp32 without TF32, one sequence at a time as the official scripts (4 per record), and the largest
relative difference of its log-probs from ours (JAX at "highest" matmul precision). Writes
$OUT/gpu_eval.json. N_RECORDS=k limits the records (a dry run on CPU).
"""
import argparse
import json
import os
import pathlib
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.getcwd())  # the repository root: the package need not be installed there
import jax  # noqa: E402
import numpy as np  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--tokenizer", type=pathlib.Path, required=True)
parser.add_argument("--data", type=pathlib.Path, required=True)
parser.add_argument("--impls", default="xla", help="comma list of kernel impls to time (auto, xla, pallas_gpu)")
cli_args = parser.parse_args()
OUT = pathlib.Path(os.environ.get("OUT", "/tmp"))
results = {"jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}
print(results, flush=True)


def save():
    (OUT / "gpu_eval.json").write_text(json.dumps(results, indent=2))


import torch  # noqa: E402
import transformers  # noqa: E402

from alignx_jax import data, evaluation, interop  # noqa: E402
from alignx_jax.models import llama  # noqa: E402

tok = transformers.AutoTokenizer.from_pretrained(cli_args.tokenizer)
records, _ = data.load_records(cli_args.data)
records = records[: int(os.environ.get("N_RECORDS", len(records)))]
DEV = "cuda" if torch.cuda.is_available() else "cpu"
cfg = llama.LlamaConfig.smollm2_135m()
init = jax.jit(llama.init_params, static_argnums=0)
pol, ref = init(cfg, jax.random.key(1)), init(cfg, jax.random.key(2))
jax.block_until_ready((pol, ref))


def logps(rows):
    return np.array([[r["policy_chosen_logp"], r["policy_rejected_logp"], r["ref_chosen_logp"], r["ref_rejected_logp"]]
                     for r in rows])


def timed(**kw):
    start = time.perf_counter()
    rows = evaluation.score_records(records, policy=(pol, cfg), reference=(ref, cfg), tokenizer=tok, **kw)
    return rows, time.perf_counter() - start


# Host side alone: rendering + tokenization of 600 records (what a pass spends without the model).
start = time.perf_counter()
for i, r in enumerate(records):
    data.encode_record(r, i, tokenizer=tok, prompt_format=data.PromptFormat(kind="ica", evaluation=True, history="full"),
                       seed=0, max_length=8192)
results["host_encode_600_s"] = time.perf_counter() - start
print("host encode", results["host_encode_600_s"], flush=True)

base = None
for impl in cli_args.impls.split(","):
    for rows, batch_tokens in ((8, 8192), (32, 32768)):
        key = f"{impl}_rows{rows}"
        try:
            out, cold = timed(rows=rows, batch_tokens=batch_tokens, kernel_impl=impl)
            out2, warm = timed(rows=rows, batch_tokens=batch_tokens, kernel_impl=impl)
            results[key] = {"cold_s": cold, "warm_s": warm, "records_per_s_warm": len(records) / warm,
                            "records_per_s_cold": len(records) / cold}
            if base is None:
                base = logps(out2)
            else:
                results[key]["max_rel_diff_vs_first"] = float(np.max(np.abs(logps(out2) - base) / np.abs(base)))
            results[key]["accuracy_logp"] = evaluation.summarize(out2)["accuracy_logp"]
        except Exception:
            results[key] = {"error": traceback.format_exc()[-3000:]}
        print(key, results[key], flush=True)
        save()

# PyTorch: the same weights through save_hf, one sequence at a time (official scripts), fp32.
try:
    with tempfile.TemporaryDirectory() as tmp:
        interop.save_hf(pol, cfg, pathlib.Path(tmp) / "pol")
        interop.save_hf(ref, cfg, pathlib.Path(tmp) / "ref")
        models = [transformers.AutoModelForCausalLM.from_pretrained(pathlib.Path(tmp) / n, dtype=torch.float32)
                  .to(DEV).eval() for n in ("pol", "ref")]
    torch.backends.cuda.matmul.allow_tf32 = False
    with jax.default_matmul_precision("highest"):  # no TF32 on either side for the parity check
        rows_ref = evaluation.score_records(records, policy=(pol, cfg), reference=(ref, cfg), tokenizer=tok,
                                            kernel_impl="xla")

    def logp(model, prompt_ids, text):
        response = tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
        ids = torch.tensor([prompt_ids + response], device=DEV)
        logits = model(ids).logits[0, len(prompt_ids) - 1:-1].float()
        return float(torch.log_softmax(logits, -1).gather(1, torch.tensor(response, device=DEV)[:, None]).sum())

    for name in ("torch_warmup", "torch"):
        subset = rows_ref[:20] if name == "torch_warmup" else rows_ref
        got = []
        torch.cuda.synchronize() if DEV == "cuda" else None
        start = time.perf_counter()
        with torch.inference_mode():
            for row in subset:
                ids = tok.encode(row["policy_prompt"], add_special_tokens=False)
                ids = ids if ids[0] == tok.bos_token_id else [tok.bos_token_id] + ids
                got.append([logp(models[0], ids, row["chosen"]), logp(models[0], ids, row["rejected"]),
                            logp(models[1], ids, row["chosen"]), logp(models[1], ids, row["rejected"])])
        torch.cuda.synchronize() if DEV == "cuda" else None
        elapsed = time.perf_counter() - start
        ours = logps(subset)
        results[name] = {"records": len(subset), "s": elapsed, "records_per_s": len(subset) / elapsed,
                         "max_rel_diff_vs_ours": float(np.max(np.abs(np.array(got) - ours) / np.abs(ours)))}
        print(name, results[name], flush=True)
        save()
except Exception:
    results["torch"] = {"error": traceback.format_exc()[-3000:]}
    print(results["torch"], flush=True)
save()
