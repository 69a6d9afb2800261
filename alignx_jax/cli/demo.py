"""`alignx demo`: the embedded SmolLM2-135M-Instruct answers one post for two users whose
preference profiles are opposite, through the PBA prompt layout of AlignX.

This is the foundation showcase (load in JAX, condition on a persona, decode with a KV cache);
the training demo replaces it when the trainer lands.
"""
from __future__ import annotations

import argparse
import time

from alignx_jax.errors import InputError

POST = "I have a free Saturday coming up. What should I do with it?"
USERS = {
    "user A": ["Young", "High Extraversion", "Concise communication style", "Likes sports", "Likes gaming",
               "Strong need for Play (enjoying fun, relaxation, and laughter)"],
    "user B": ["Older", "Low Extraversion", "Detailed communication style", "Likes science", "Likes stories",
               "Strong need for Order (neatness, organization, avoiding chaos)"],
}


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="personalized answers from the embedded model for two users")
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias, Hugging Face folder or alignx_jax folder")
    p.add_argument("--post", default=POST)
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--temperature", type=float, default=0.7, help="0 for greedy decoding")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise InputError(f"--temperature must be >= 0 (0 for greedy decoding), got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise InputError(f"--top-p must be in (0, 1], got {args.top_p}")
    if not args.post.strip():
        raise InputError("--post is empty")


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    from alignx_jax import data, interop, preferences
    from alignx_jax.models import decoding

    start = time.perf_counter()
    model = interop.from_pretrained(args.model)
    tokenizer = model.tokenizer
    print(f"loaded {args.model} ({model.config.num_layers} layers, vocab {model.config.vocab_size}) "
          f"in {time.perf_counter() - start:.1f}s")
    prompts, profiles = [], {}
    for user, labels in USERS.items():
        direction = preferences.parse_profile(", ".join(labels))  # labels -> 90-dim direction
        profiles[user] = preferences.golden_profile(direction)  # direction -> profile text (dimension order)
        chat = data.pba_prompt(args.post, profiles[user], evaluation=True)
        prompts.append(tokenizer(data.chat_text(tokenizer, chat), add_special_tokens=False)["input_ids"])
    start = time.perf_counter()
    sampling = decoding.Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    answers = model.generate(prompts, sampling, seed=args.seed)
    elapsed = time.perf_counter() - start
    print(f"\nPost: {args.post}\n")
    for (user, profile), ids in zip(profiles.items(), answers):
        print(f"--- {user}: {profile}\n{tokenizer.decode(ids, skip_special_tokens=True).strip()}\n")
    print(f"generated {sum(map(len, answers))} tokens for {len(answers)} users in {elapsed:.1f}s (KV cache, {sampling})")
    return 0
