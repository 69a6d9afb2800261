"""Time and peak host memory of importing the embedded SmolLM2-135M-Instruct and of a HF round trip.

Each measurement runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own.

    .venv/bin/python tools/bench_interop.py

Prints one line per stage: seconds, peak resident memory (MiB; it includes the pages of the
memory-mapped safetensors/GGUF file that were read) and the anonymous memory left at the end
(the parameters themselves), with the fp32 model size for scale.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile

STAGES = {
    "baseline (import jax + alignx_jax.interop)": "",
    "import GGUF -> JAX (dequantize Q4_1/Q8_0)": "params, config = interop.load_gguf()",
    "export JAX -> HF safetensors (fp32)": "params, config = interop.load_gguf()\nstart = time.perf_counter()\n"
                                           "interop.save_hf(params, config, '{tmp}/hf')",
    "import HF safetensors -> JAX (fp32)": "start = time.perf_counter()\nparams, config = interop.load_hf('{tmp}/hf')",
}


def run(code: str) -> dict:
    script = "\n".join([
        "import json, resource, time",
        "start = time.perf_counter()",
        "from alignx_jax import interop",
        "import jax",
        code,
        "jax.block_until_ready(locals().get('params'))",
        "anon = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('RssAnon'))",
        "print(json.dumps({'seconds': time.perf_counter() - start, 'anon_mib': anon / 1024,",
        "                  'peak_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))",
    ])
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, code in STAGES.items():
            result = run(code.format(tmp=tmp))
            print(f"{name:48s} {result['seconds']:6.2f} s   peak RSS {result['peak_mib']:6.0f} MiB"
                  f"   anonymous RSS after {result['anon_mib']:6.0f} MiB", flush=True)
    print("model size: 134.5M params = 514 MiB in fp32")


if __name__ == "__main__":
    main()
