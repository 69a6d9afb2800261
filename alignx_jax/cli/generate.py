"""`alignx generate`: sampled answers for win-rate studies, or one answer to one prompt.

    alignx generate --model M --data FILE --out FILE.jsonl [--limit N] ...   # resumable
    alignx generate --model M --prompt "..."                                  # prints the answer
    alignx generate --model M --prompt "..." --preference "Likes humor=positive" [--persona FILE]

With --preference / --persona the answer is conditioned on a user's preference directions in the
PBA layout: the persona (read by the model's preference bridge, or by the official rule when the
model has none) gives a distribution over the 90 dimensions, each --preference sets one dimension,
and the policy reads the result as soft tokens (a soft-conditioned bridge) or as the profile text.

Sampling defaults are the paper's: temperature 0.9, top-k 10, top-p 0.95, up to 512 new tokens.
"""
from __future__ import annotations

import argparse
import difflib
import pathlib
import sys

from alignx_jax.cli import eval as eval_cli
from alignx_jax.errors import InputError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="sample answers to a benchmark's posts (JSONL, resumable) or to one --prompt",
        description="Answer each record's post with the persona in the prompt (the policy's view in `alignx eval`), "
                    "with the paper's sampling; or answer one --prompt and print it.")
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="alias, Hugging Face folder or alignx_jax folder (default: the embedded SmolLM2-135M-Instruct)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=pathlib.Path, help="AlignX records (.json / .jsonl / parquet)")
    source.add_argument("--prompt", help="one question, answered and printed (no file written)")
    p.add_argument("--out", type=pathlib.Path, help="with --data: FILE.jsonl (appended to; rerun to resume)")
    p.add_argument("--preference", action="append", default=[], metavar="LABEL=positive|negative|neutral",
                   help="with --prompt: set one of the 90 preference dimensions by either of its labels, e.g. "
                        "'Concise communication style=positive' (repeatable)")
    p.add_argument("--persona", type=pathlib.Path,
                   help="with --prompt: a JSON file with one user's persona (an AlignX record, or an object with its "
                        "'User-Generated Content' / 'Pair-wise Comparative Feedback' / 'Demographic Information')")
    p.add_argument("--mode", default="ica", choices=("ica", "pba_text"), help="how the persona enters the prompt")
    p.add_argument("--profile", default="auto", choices=eval_cli.PROFILE_SOURCES,
                   help="pba_text: the profile source (learned: the MAP labels of a preference bridge, see --bridge)")
    p.add_argument("--bridge", default=None, metavar="MODEL",
                   help="with --data, --profile learned: the model folder whose preference bridge writes the profiles "
                        "(default: --model)")
    p.add_argument("--policy-layout", default="eval", choices=("eval", "train"), help="ica: the prompt layout")
    p.add_argument("--limit", type=int, help="N records, taken evenly across personas")
    p.add_argument("--per-persona", type=int, help="the first N records of each persona")
    p.add_argument("--history", type=int, help="at most N UGC + pair items per persona (default: all)")
    p.add_argument("--persona-items", default="mixed", choices=("ugc", "pair", "demo", "mixed"))
    p.add_argument("--temperature", type=float, default=0.9, help="0 for greedy decoding")
    p.add_argument("--top-k", type=int, default=10, help="0 disables")
    p.add_argument("--top-p", type=float, default=0.95, help="1 disables")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.set_defaults(func=run)


def _sampling(args: argparse.Namespace):
    from alignx_jax.models import decoding

    if args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise InputError(f"--temperature must be >= 0 (0 for greedy decoding), got {args.temperature}")
    if args.top_k < 0:
        raise InputError(f"--top-k must be >= 0 (0 disables it), got {args.top_k}")
    if not 0 < args.top_p <= 1:
        raise InputError(f"--top-p must be in (0, 1], got {args.top_p}")
    return decoding.Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p)


def run(args: argparse.Namespace) -> int:
    sampling = _sampling(args)
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.prompt is None and (args.preference or args.persona is not None):
        raise InputError("--preference and --persona go with --prompt (with --data the persona is each record's)")
    if args.prompt is not None and args.bridge is not None:
        raise InputError("--bridge goes with --data (with --prompt, --persona is read by the model's own bridge)")
    eval_cli.check_model_path("--model", args.model)
    if args.prompt is not None:
        return _answer_one(args, sampling)
    return _answer_file(args, sampling)


PREFERENCE_SETTINGS = ("positive", "negative", "neutral")


def parse_preferences(items: list[str]) -> dict[str, str]:
    """`--preference LABEL=SETTING` values -> {label: setting}; labels are checked against the 90
    dimensions (a wrong one lists the nearest), a dimension may be set once."""
    from alignx_jax import preferences as prefs

    labels = [label for d in prefs.dimensions() for label in (d.positive, d.negative)]
    settings, dims = {}, {}
    for item in items:
        label, sep, setting = item.rpartition("=")
        label, setting = label.strip(), setting.strip().lower()
        if not sep or not label:
            raise InputError(f"--preference {item!r} must look like LABEL=positive|negative|neutral")
        if setting not in PREFERENCE_SETTINGS:
            raise InputError(f"--preference {item!r}: the setting must be positive, negative or neutral, got {setting!r}")
        if label not in labels:
            near = difflib.get_close_matches(label, labels, n=3, cutoff=0.3)
            hint = f"; nearest: {', '.join(repr(n) for n in near)}" if near else ""
            raise InputError(f"--preference {item!r}: unknown preference {label!r}{hint}")
        dim = prefs.lookup(label)[0]
        if dim.index in dims:
            raise InputError(f"--preference {item!r}: dimension {dim.index} ({dim.positive} / {dim.negative}) is "
                             f"already set by {dims[dim.index]!r}")
        dims[dim.index] = item
        settings[label] = setting
    return settings


def load_persona(path: pathlib.Path) -> dict:
    """One user's persona from a JSON file: an object (an AlignX record, or its persona fields), or a
    list whose first object is used."""
    from alignx_jax import preferences as prefs
    from alignx_jax.errors import MissingFileError, read_json

    if not path.is_file():
        raise MissingFileError(f"--persona {path}: no such file")
    value = read_json(path, name=f"--persona {path}")
    if isinstance(value, list) and value:
        value = value[0]
    fields = (prefs.UGC, prefs.PAIRS, prefs.DEMOGRAPHICS, prefs.DIRECTION)
    if not isinstance(value, dict) or not any(value.get(f) for f in fields):
        raise InputError(f"--persona {path}: expected a JSON object with a persona ({', '.join(repr(f) for f in fields)})")
    for field, keys in ((prefs.UGC, ("prompt", "comment")), (prefs.PAIRS, ("prompt", "chosen", "rejected"))):
        items = value.get(field) or []
        if not isinstance(items, list) or not all(isinstance(i, dict) and all(k in i for k in keys) for i in items):
            raise InputError(f"--persona {path}: {field!r} must be a list of objects with {', '.join(keys)}")
    return value


def single_prompt_messages(args: argparse.Namespace) -> list[dict]:
    """The conversation that `--prompt` sends. Options that condition the answer on a user
    (a persona file, preference settings) turn it into a persona prompt here."""
    if not args.prompt.strip():
        raise InputError("--prompt is empty")
    return [{"role": "user", "content": args.prompt}]


def _answer_one(args: argparse.Namespace, sampling) -> int:
    if args.out is not None:
        raise InputError("--out goes with --data; --prompt prints its answer")
    from alignx_jax import evaluation, interop

    messages = single_prompt_messages(args)
    if args.preference or args.persona is not None:
        return _answer_conditioned(args, sampling)
    tokenizer = interop.load_tokenizer(args.model)
    params, config = interop.load_params(args.model, param_dtype=args.dtype, dtype=args.dtype)
    ids = evaluation.prompt_ids(tokenizer, messages)
    new = evaluation.generate_ids(params, config, [ids], sampling=sampling, seed=args.seed)[0]
    if new and new[-1] in config.eos_token_ids:
        new = new[:-1]
    print(tokenizer.decode(new, skip_special_tokens=True).strip())
    return 0


def _answer_conditioned(args: argparse.Namespace, sampling) -> int:
    """--prompt with --preference / --persona: the PBA evaluation layout conditioned on the user."""
    import numpy as np

    from alignx_jax import bridge, data, evaluation, interop
    from alignx_jax import preferences as prefs

    settings = parse_preferences(args.preference)
    persona = load_persona(args.persona) if args.persona is not None else None
    saved = bridge.load(args.model) if bridge.has_bridge(args.model) else None
    history = data.full_history(persona) if persona is not None else None
    if persona is not None and saved is None:
        try:  # no bridge: the official rule over the persona's item directions
            directions = history.directions()
        except ValueError as error:
            raise InputError(f"--persona {args.persona}: {args.model} has no preference bridge to read it, and the "
                             f"official rule needs directions ({error})") from None
        if not directions:
            raise InputError(f"--persona {args.persona}: no UGC or pair items for the official rule to read "
                             f"({args.model} has no preference bridge)")
    if persona is not None and saved is not None and saved.mode == "golden" and persona.get(prefs.DIRECTION) is None:
        raise InputError(f"--persona {args.persona}: the model's golden bridge needs the persona's {prefs.DIRECTION!r}")
    tokenizer = interop.load_tokenizer(args.model)
    params, config = interop.load_params(args.model, param_dtype=args.dtype, dtype=args.dtype)
    reader = bridge.PersonaBridge(saved, tokenizer) if saved is not None else None
    if persona is None:
        distribution = bridge.neutral_distribution()
    elif reader is not None:
        distribution = reader.distributions([history], [persona])[0]
    else:
        distribution = np.asarray(bridge.direction_distribution(prefs.official_profile_direction(history.directions())))
    distribution = bridge.edited(distribution, settings)
    profile = bridge.map_profile(distribution)
    print(f"preferences: {profile or '(all neutral)'}"
          + (f" (as {reader.num_slots} soft tokens)" if reader is not None and reader.soft else ""), file=sys.stderr)
    new = conditioned_answer(params, config, tokenizer, reader, args.prompt, distribution, sampling=sampling,
                             seed=args.seed)
    print(tokenizer.decode(new, skip_special_tokens=True).strip())
    return 0


def conditioned_answer(params, config, tokenizer, reader, prompt: str, distribution, *, sampling, seed: int = 0
                       ) -> list[int]:
    """New token ids (EOS dropped) answering `prompt` in the PBA evaluation layout for a user whose
    preferences are `distribution` [90, 3]: as soft tokens when `reader` (a `bridge.PersonaBridge`)
    is soft-conditioned, else as the profile text (its MAP labels)."""
    from alignx_jax import bridge, data, evaluation

    if reader is not None and reader.soft:
        chat = data.pba_prompt(prompt, data.soft_profile(reader.num_slots), evaluation=True)
        ids, slots = data.prompt_ids_and_slots(tokenizer, chat)
        new = bridge.generate_with_soft_tokens(params, config, ids, slots, reader.soft_tokens(distribution[None])[0],
                                               sampling=sampling, seed=seed)
    else:
        ids = evaluation.prompt_ids(tokenizer, data.pba_prompt(prompt, bridge.map_profile(distribution), evaluation=True))
        new = evaluation.generate_ids(params, config, [ids], sampling=sampling, seed=seed)[0]
    return new[:-1] if new and new[-1] in config.eos_token_ids else new


def _answer_file(args: argparse.Namespace, sampling) -> int:
    from alignx_jax import evaluation
    from alignx_jax.cli._common import output_path

    if args.out is None:
        raise InputError("--data needs --out FILE.jsonl")
    for flag, value in (("--limit", args.limit), ("--per-persona", args.per_persona)):
        if value is not None and value < 1:
            raise InputError(f"{flag} must be >= 1, got {value}")
    if args.history is not None and args.history < 0:
        raise InputError(f"--history must be >= 0, got {args.history}")
    out = output_path(args.out, kind="file", suffixes=(".jsonl",), flag="--out")
    records, indices = eval_cli.select_records(args.data, limit=args.limit, per_persona=args.per_persona)
    eval_cli.check_persona_items(records, indices, args.persona_items, args.data)
    bridge_source = eval_cli.profile_bridge_source(args, "--model")
    reader = eval_cli.load_profile_bridge(bridge_source) if bridge_source else None
    mode = evaluation.resolve_mode(args.mode, layout=args.policy_layout, profile=args.profile, bridge=reader)
    if args.mode == "pba_text" and reader is None:
        eval_cli.check_profiles(mode, records, indices, args.persona_items, args.data)
    settings = {
        "model": evaluation.model_fingerprint(args.model), "data": evaluation.file_fingerprint(args.data)["sha256"],
        "mode": args.mode, "profile": args.profile if args.mode == "pba_text" else None,
        **({"bridge": evaluation.model_fingerprint(bridge_source)} if bridge_source else {}),
        "policy_layout": args.policy_layout if args.mode == "ica" else None, "history": args.history,
        "persona_items": args.persona_items, "temperature": args.temperature, "top_k": args.top_k,
        "top_p": args.top_p, "max_new_tokens": args.max_new_tokens, "seed": args.seed, "dtype": args.dtype,
    }
    previous = evaluation.read_rows(out)  # refuses a damaged file; a truncated last line is dropped below
    if previous and previous[0].get("generation") != settings:
        raise InputError(f"--out {out}: holds generations with other settings (or is not an `alignx generate` "
                         f"file); give a new file, or the same settings to resume it")
    done = {row["index"] for row in previous}
    wanted = [i for i in indices if i not in done]
    from alignx_jax import interop

    tokenizer = interop.load_tokenizer(args.model)
    params, config = interop.load_params(args.model, param_dtype=args.dtype, dtype=args.dtype)
    evaluation.read_rows(out, repair=True)
    print(f"generating {len(wanted)} answers ({len(done & set(indices))} already in {out})", file=sys.stderr)
    progress = eval_cli.Progress("generating")
    progress(0, len(wanted))
    try:
        with evaluation.RowWriter(out) as writer:
            for rows in evaluation.iter_generations(
                    records, model=(params, config), tokenizer=tokenizer, mode=mode, history=args.history,
                    persona_items=args.persona_items, indices=indices, skip=done, sampling=sampling,
                    batch_size=args.batch_size, seed=args.seed):
                writer.write([{**row, "generation": settings} for row in rows])
                progress(len(rows), len(wanted))
    finally:
        progress.close()
    print(f"wrote {len(wanted)} answers to {out}")
    return 0
