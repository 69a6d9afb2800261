"""Does a user's setting steer the answers? `alignx generate --preference "LABEL=positive"` against
`=negative` on ten prompts, each answer checked as the demo checks it (the goal: 8 of 10 steered).

    JAX_PLATFORMS=cpu .venv/bin/python tools/steer_check.py --model runs/smollm2_pba_soft/model \
        [--label "Concise communication style"] [--out steer.json]

For each prompt, both answers come from `alignx generate`'s own path (`cli.generate.conditioned_answer`:
the model's bridge on no persona, the one dimension set by the edit, greedy decoding). For the length
dimension a prompt counts as steered when the positive (concise) answer has fewer tokens than the
negative (detailed) one and each shows its side (`data.response_styles`: the detailed side's step
sentences); for another synthetic style, when each answer shows its side. Prints one line per
prompt and the count; --out writes every answer.
"""
from __future__ import annotations

import argparse
import json
import pathlib

PROMPTS = (
    "Any advice on planting tomatoes?",
    "What do you think about adopting a rescue cat?",
    "I keep thinking about repainting my kitchen. Thoughts?",
    "Any advice on asking for a raise?",
    "What do you think about learning to swim as an adult?",
    "I keep thinking about selling my old car. Thoughts?",
    "Any advice on hosting a board game night?",
    "What do you think about waking up at 5 am?",
    "I keep thinking about writing a short story. Thoughts?",
    "Any advice on sleeping better?",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a policy trained with a preference bridge (or any model)")
    parser.add_argument("--label", default="Concise communication style", help="the positive label of the dimension")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--out", type=pathlib.Path, help="JSON file of every answer and check")
    args = parser.parse_args()

    from alignx_jax import bridge, data, interop
    from alignx_jax import preferences as prefs
    from alignx_jax.cli.generate import conditioned_answer
    from alignx_jax.models import decoding

    dim = prefs.lookup(args.label)[0]
    tokenizer = interop.load_tokenizer(args.model)
    params, config = interop.load_params(args.model)
    reader = bridge.PersonaBridge(bridge.load(args.model), tokenizer) if bridge.has_bridge(args.model) else None
    sampling = decoding.Sampling(max_new_tokens=args.max_new_tokens)
    rows = []
    for prompt in PROMPTS:
        row = {"prompt": prompt}
        for setting in ("positive", "negative"):
            distribution = bridge.edited(bridge.neutral_distribution(), {dim.positive: setting})
            ids = conditioned_answer(params, config, tokenizer, reader, prompt, distribution, sampling=sampling)
            text = tokenizer.decode(ids, skip_special_tokens=True).strip()
            shown = data.response_styles(text).get(dim.index)
            row[setting] = {"tokens": len(ids), "text": text, "shows_its_side": shown == (setting == "positive")}
        sides = row["positive"]["shows_its_side"] and row["negative"]["shows_its_side"]
        shorter = row["positive"]["tokens"] < row["negative"]["tokens"]
        row["steered"] = bool(sides and (shorter if dim.index == data.LENGTH_DIMENSION else True))
        rows.append(row)
        print(f"{'steered' if row['steered'] else 'not    '}  {row['positive']['tokens']:4d} vs "
              f"{row['negative']['tokens']:4d} tokens  {prompt}", flush=True)
    steered = sum(row["steered"] for row in rows)
    print(f"{dim.positive} / {dim.negative}: steered on {steered} of {len(rows)} prompts")
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "dimension": dim.index, "steered": steered,
                                        "prompts": rows}, indent=1))


if __name__ == "__main__":
    main()
