"""`alignx eval`: the paper's alignment accuracy of a policy against a reference, per persona.

    alignx eval --policy P --reference R --data FILE --mode ica --out DIR [--limit N] ...
    alignx eval --compare DIR1 DIR2 ...

Every refusal (a bad flag value, a file that is not AlignX records, an output folder holding
something else, different tokenizers) happens before a model is loaded, and leaves nothing in
--out. A killed run resumes from DIR/scores.jsonl when the same command is run again.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

from alignx_jax.errors import InputError, MissingFileError, read_json

MODES = ("ica", "pba_text", "pba_soft")
PROFILE_SOURCES = ("auto", "official", "golden", "precomputed", "learned")  # evaluation.PROFILE_SOURCES, kept
# here so that `alignx --help` needs no JAX import (a test holds them equal)
PERSONA_ITEMS = ("ugc", "pair", "demo", "mixed")
REFERENCE_PROMPTS = ("few_shot", "policy")  # evaluation.REFERENCE_PROMPTS, kept here for the same reason


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="alignment accuracy (per persona, worst persona) of a policy against a reference",
        description="Score each record's chosen and rejected responses under the policy (persona in its prompt) and "
                    "the reference (the few-shot persona prompt); report the paper's alignment accuracy per persona. "
                    "Resumable: run the same command again after an interruption.")
    p.add_argument("--policy", help="model: alias (smollm2-135m-instruct), Hugging Face folder, alignx_jax folder")
    p.add_argument("--reference", help="the reference model (the base model), same forms as --policy")
    p.add_argument("--data", type=pathlib.Path, help="AlignX records: .json / .jsonl benchmark file or parquet")
    p.add_argument("--mode", default="ica", choices=MODES, help="what the policy's prompt shows of the persona")
    p.add_argument("--out", type=pathlib.Path, help="output folder (new, empty, or an earlier run to resume)")
    p.add_argument("--per-persona", type=int, help="score the first N records of each persona")
    p.add_argument("--limit", type=int, help="score N records, taken evenly across personas (never a file prefix)")
    p.add_argument("--history", default=None,
                   help="at most N UGC + pair items per persona (default: all); a list 0,2,4,8,16 scores each "
                        "record at each size")
    p.add_argument("--persona-items", default="mixed", choices=PERSONA_ITEMS,
                   help="which persona items to show: comments (ugc), earlier choices (pair), demographics (demo), "
                        "or all (mixed)")
    p.add_argument("--beta", type=float, default=0.1, help="reward scale (the paper's 0.1)")
    p.add_argument("--profile", default="auto", choices=PROFILE_SOURCES,
                   help="pba_text: the profile source (auto: the record's `profile`, else the official rule; learned: "
                        "the MAP labels of a learned preference bridge reading the shown history, see --bridge)")
    p.add_argument("--bridge", default=None, metavar="MODEL",
                   help="--profile learned: the model folder whose preference bridge writes the profile (default: "
                        "--policy)")
    p.add_argument("--policy-layout", default="eval", choices=("eval", "train"),
                   help="ica and pba_text: the policy's prompt layout (eval: the official evaluation layout, "
                        "for ica the reference's; train: the layout `alignx train` trains on)")
    p.add_argument("--reference-prompt", default="few_shot", choices=REFERENCE_PROMPTS,
                   help="what the reference reads (few_shot: the few-shot persona prompt, the paper's metric; policy: "
                        "the policy's own prompt, DPO's implicit reward against the start model, the reward view "
                        "training reports as eval_reward_accuracy: give the start model as --reference)")
    p.add_argument("--max-length", type=int, default=8192, help="token budget of one pair (prompt + both responses)")
    p.add_argument("--rows", type=int, default=8, help="pairs per batch (at most)")
    p.add_argument("--batch-tokens", type=int, default=8192, help="tokens per batch (at most)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="parameter and compute dtype")
    p.add_argument("--kernel-impl", default="auto", choices=("auto", "xla", "pallas_gpu", "pallas_tpu"),
                   help="the fused log-prob kernel (auto: Pallas on TPU; on a GPU Pallas when a tile fits its shared "
                        "memory at the model's hidden size, else the XLA loop; the XLA loop on CPU)")
    p.add_argument("--mesh", default=None, metavar="data=1,fsdp=-1,tensor=1",
                   help="the device mesh, with training's rules (`mesh:` of a config): rows split over data x fsdp, "
                        "parameters sharded over fsdp (and tensor); one size may be -1 (the remaining devices). "
                        "Default: every device on fsdp, as training")
    p.add_argument("--data-parallel", action="store_true",
                   help="the mesh data=-1,fsdp=1: each batch's rows split over every device, parameters replicated")
    p.add_argument("--compare", nargs="+", type=pathlib.Path, metavar="DIR",
                   help="print the reports of earlier runs side by side (per persona) and exit")
    p.set_defaults(func=run)


def parse_history(text: str | None) -> int | list[int] | None:
    """`--history`: None (every item), "N", or "0,2,4" (a sweep)."""
    if text is None or text.strip().lower() == "all":
        return None
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--history must be N or a list like 0,2,4 (items per persona), got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise InputError(f"--history needs item counts >= 0, got {text!r}")
    return values[0] if len(values) == 1 else sorted(set(values))


MESH_AXES = ("data", "fsdp", "tensor")


def parse_mesh(text: str | None, data_parallel: bool = False) -> dict[str, int]:
    """`--mesh data=2,fsdp=-1`: mesh sizes over MESH_AXES (unnamed ones: data 1, fsdp -1, tensor 1)."""
    sizes = {"data": 1, "fsdp": -1, "tensor": 1}
    if data_parallel:
        if text is not None:
            raise InputError("give --mesh or --data-parallel, not both")
        return {"data": -1, "fsdp": 1, "tensor": 1}
    if text is None:
        return sizes
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        try:
            size = int(value)
        except ValueError:
            size = 0
        if name not in MESH_AXES or not (size >= 1 or size == -1):
            raise InputError(f"--mesh must look like data=1,fsdp=-1,tensor=1 (sizes >= 1, one may be -1), got {text!r}")
        sizes[name] = size
    return sizes


def make_mesh(sizes: dict[str, int]):
    from alignx_jax.models import sharding

    try:
        return sharding.make_mesh(sizes["data"], sizes["fsdp"], sizes["tensor"])
    except ValueError as error:
        raise InputError(f"--mesh: {error}") from None


def _check_args(args: argparse.Namespace) -> None:
    missing = [flag for flag, value in (("--policy", args.policy), ("--reference", args.reference),
                                        ("--data", args.data), ("--out", args.out)) if value is None]
    if missing:
        raise InputError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required "
                         f"(or give --compare DIR ...)")
    for flag, value, least in (("--limit", args.limit, 1), ("--per-persona", args.per_persona, 1),
                               ("--rows", args.rows, 1), ("--batch-tokens", args.batch_tokens, 1),
                               ("--max-length", args.max_length, 128)):
        if value is not None and value < least:
            raise InputError(f"{flag} must be >= {least}, got {value}")
    if not args.beta > 0:
        raise InputError(f"--beta must be > 0, got {args.beta}")


def check_model_path(flag: str, source: str) -> None:
    from alignx_jax.interop import EMBEDDED_ALIAS

    if source != EMBEDDED_ALIAS and not pathlib.Path(source).exists():
        raise MissingFileError(f"{flag} {source}: no such model folder (nor the alias {EMBEDDED_ALIAS!r})")


def has_preference_bridge(source: str) -> bool:
    """Whether a policy folder carries a preference bridge (`<policy>/bridge/bridge.json`, written by
    `alignx train` with a `bridge:` section)."""
    path = pathlib.Path(source)
    return path.is_dir() and (path / "bridge" / "bridge.json").is_file()


def profile_bridge_source(args: argparse.Namespace, model_flag: str = "--policy") -> str | None:
    """The model folder whose preference bridge writes `--profile learned` profiles (None for
    another profile source); refuses a --bridge without it and a folder without a bridge."""
    learned = args.mode == "pba_text" and args.profile == "learned"
    if args.bridge is not None and not learned:
        raise InputError("--bridge goes with --mode pba_text --profile learned")
    if not learned:
        return None
    source = args.bridge if args.bridge is not None else getattr(args, model_flag.lstrip("-"))
    flag = "--bridge" if args.bridge is not None else model_flag
    check_model_path(flag, source)
    if not has_preference_bridge(source):
        raise InputError(f"--profile learned needs a preference bridge: {flag} {source} has none (bridge/bridge.json); "
                         f"give --bridge FOLDER of a model trained with a `bridge:` section")
    return source


def load_profile_bridge(source: str, saved=None):
    """A `bridge.PersonaBridge` of `source`'s saved bridge (`saved`, when already loaded) with the
    tokenizer of `source`, the one its encoder reads."""
    from alignx_jax import bridge, interop

    return bridge.PersonaBridge(saved if saved is not None else bridge.load(source), interop.load_tokenizer(source))


def tokenizer_difference(a, b) -> str | None:
    """Why two tokenizers would give different token ids, or None when they agree."""
    if (getattr(a, "bos_token_id", None), getattr(a, "eos_token_id", None)) != (
            getattr(b, "bos_token_id", None), getattr(b, "eos_token_id", None)):
        return (f"BOS/EOS ids {a.bos_token_id}/{a.eos_token_id} vs {b.bos_token_id}/{b.eos_token_id}")
    if hasattr(a, "get_vocab") and hasattr(b, "get_vocab"):
        va, vb = a.get_vocab(), b.get_vocab()
        if va != vb:
            return f"vocabularies of {len(va)} and {len(vb)} tokens that differ"
    return None


def load_tokenizers(policy: str, reference: str):
    """Both tokenizers, refused when they differ (before any model loads)."""
    from alignx_jax import interop

    tokenizer = interop.load_tokenizer(policy)
    if reference == policy:
        return tokenizer, tokenizer
    reference_tokenizer = interop.load_tokenizer(reference)
    why = tokenizer_difference(tokenizer, reference_tokenizer)
    if why:
        raise InputError(f"--policy {policy} and --reference {reference} have different tokenizers ({why}); "
                         f"the implicit reward compares log-probs of the same token ids")
    return tokenizer, reference_tokenizer


def select_records(data_path: pathlib.Path, *, limit: int | None, per_persona: int | None):
    """The validated records of a file and the stratified selection: (records, indices)."""
    from alignx_jax import data, evaluation

    records, report = data.load_records(data_path)  # raises naming the first bad record
    report.check_usable(data_path)
    indices = evaluation.select_indices(records, limit=limit, per_persona=per_persona)
    return [records[i] for i in indices], indices


def check_persona_items(records, indices, items: str, data_path) -> None:
    from alignx_jax import evaluation

    if items == "mixed":
        return
    if not any(evaluation.persona_history(r, items=items).num_items or (items == "demo" and
               evaluation.persona_history(r, items=items).demographics) for r in records):
        raise InputError(f"--persona-items {items}: none of the {len(indices)} selected records of {data_path} "
                         f"has such items")


def check_profiles(mode, records, indices, items: str, data_path) -> None:
    """pba_text: every selected record must give a profile; refuse now, naming the file and record."""
    from alignx_jax import evaluation

    for record, index in zip(records, indices):
        try:
            mode.profile_text(record, evaluation.persona_history(record, items=items), index)
        except InputError as error:
            raise InputError(f"{data_path}: {error}") from None


class Progress:
    """A tqdm bar on stderr with records/s and ETA, started when the amount to do is known."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="rec", file=sys.stderr, dynamic_ncols=True,
                            disable=total == 0)
        self.bar.update(done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> int:
    if args.compare:
        return _compare(args.compare)
    _check_args(args)
    history = parse_history(args.history)
    mesh_sizes = parse_mesh(args.mesh, args.data_parallel)
    if args.mode == "pba_soft":
        check_model_path("--policy", args.policy)
        if not has_preference_bridge(args.policy):
            raise InputError(f"--mode pba_soft needs a policy trained with a preference bridge ({args.policy} has "
                             f"none); use --mode ica or --mode pba_text")
        from alignx_jax import bridge

        saved_bridge = bridge.load(args.policy)  # a damaged bridge is refused before any model loads
    bridge_source = profile_bridge_source(args)
    if bridge_source is not None:
        from alignx_jax import bridge

        saved_bridge = bridge.load(bridge_source)
    from alignx_jax import evaluation

    check_model_path("--policy", args.policy)
    check_model_path("--reference", args.reference)
    records, indices = select_records(args.data, limit=args.limit, per_persona=args.per_persona)
    check_persona_items(records, indices, args.persona_items, args.data)
    mode = None if args.mode == "pba_soft" or bridge_source else evaluation.resolve_mode(
        args.mode, layout=args.policy_layout, profile=args.profile, reference_prompt=args.reference_prompt)
    if args.mode == "pba_text" and not bridge_source:
        check_profiles(mode, records, indices, args.persona_items, args.data)
    run_info = {
        "policy": evaluation.model_fingerprint(args.policy),
        "reference": evaluation.model_fingerprint(args.reference),
        "data": evaluation.file_fingerprint(args.data),
        "mode": args.mode,
        "history": history,
        "persona_items": args.persona_items,
        "profile": args.profile if args.mode == "pba_text" else None,
        "policy_layout": args.policy_layout if args.mode in ("ica", "pba_text") else None,
        "reference_prompt": args.reference_prompt,
        "max_length": args.max_length,
        "dtype": args.dtype,
        "limit": args.limit,
        "per_persona": args.per_persona,
    }
    if args.mode == "pba_soft":
        run_info["bridge"] = bridge.describe(saved_bridge)
        if saved_bridge.conditioning == "soft" and args.reference_prompt == "policy":
            raise InputError("--reference-prompt policy: the reference cannot read --mode pba_soft's soft tokens "
                             "(they come from the policy's bridge); use --reference-prompt few_shot")
    if bridge_source is not None:
        run_info["bridge"] = {**bridge.describe(saved_bridge), "model": evaluation.model_fingerprint(bridge_source)}
    resuming = evaluation.check_folder(args.out, run_info)
    tokenizer, reference_tokenizer = load_tokenizers(args.policy, args.reference)
    if args.mode == "pba_soft":
        mode = evaluation.PbaSoftMode(bridge=bridge.PersonaBridge(saved_bridge, tokenizer),
                                      reference_prompt=args.reference_prompt)
    if bridge_source is not None:
        mode = evaluation.PbaTextMode(profile="learned", bridge=load_profile_bridge(bridge_source, saved_bridge),
                                      layout=args.policy_layout, reference_prompt=args.reference_prompt)

    from alignx_jax import interop
    from alignx_jax.models import sharding

    mesh = make_mesh(mesh_sizes)
    start = time.perf_counter()
    load = lambda source: interop.load_model(  # noqa: E731
        source, shardings=lambda config: sharding.param_shardings(config, mesh), param_dtype=args.dtype,
        dtype=args.dtype)
    policy = load(args.policy)
    reference = policy if args.reference == args.policy else load(args.reference)
    load_s = time.perf_counter() - start
    print(f"{'resuming' if resuming else 'scoring'} {len(records)} records of {args.data} "
          f"({args.mode}, models loaded in {load_s:.1f}s) into {args.out}", file=sys.stderr)
    seq_lengths = tuple(s for s in evaluation.EVAL_SEQ_LENGTHS if s < args.max_length) + (args.max_length,)
    progress = Progress("scoring")
    try:
        report = evaluation.evaluate_to_folder(
            args.out, records, indices, run=run_info, beta=args.beta, progress=progress, policy=policy,
            reference=reference, tokenizer=tokenizer, reference_tokenizer=reference_tokenizer, mode=mode,
            history=history, persona_items=args.persona_items, rows=args.rows, seq_lengths=seq_lengths,
            batch_tokens=args.batch_tokens, mesh=mesh, kernel_impl=args.kernel_impl)
    finally:
        progress.close()
    timing = report["timing"]
    print(f"accuracy {100 * report['accuracy']:.1f}% (worst persona {100 * report['worst_persona_accuracy']:.1f}%), "
          f"accuracy_logp {100 * report['accuracy_logp']:.1f}% (worst persona "
          f"{100 * report['worst_persona_accuracy_logp']:.1f}%), n={report['n']}; "
          f"{timing['records_scored_now']} scored now, {timing['records_resumed']} resumed; "
          f"report in {args.out / 'report.md'}")
    return 0


def _compare(folders: list[pathlib.Path]) -> int:
    from alignx_jax import evaluation

    reports = {}
    for folder in folders:
        path = folder / "report.json"
        if not path.is_file():
            raise MissingFileError(f"--compare {folder}: no report.json (not a finished `alignx eval` folder)")
        report = read_json(path)
        if not isinstance(report, dict) or "per_persona" not in report:
            raise InputError(f"{path}: not an `alignx eval` report (no per_persona)")
        name = str(folder)
        while name in reports:
            name += "'"
        reports[name] = report
    print(evaluation.compare(reports))
    return 0
