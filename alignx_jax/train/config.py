"""The training run's configuration: frozen dataclasses, read from YAML and `key=value` overrides.

Everything is checked before anything is loaded: an unknown key names the nearest known one
(`unknown key 'setps'; did you mean 'steps'?`), a wrong type or range names the key and what it
expected. `load_config(path, overrides)` is the one entry point; nothing below the CLI reads files.
"""
from __future__ import annotations

import dataclasses
import difflib
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from alignx_jax import data
from alignx_jax.train import config_yaml
# Re-exported: the YAML machinery lives in train/config_yaml.py; these names stay importable from here.
from alignx_jax.train.config_yaml import ConfigError, parse_overrides  # noqa: F401

REFERENCE_MODES = ("frozen", "precomputed", "lora")
# kernels.ATTENTION_IMPLS and kernels.IMPLS, spelled here so a config is checked without importing jax.
ATTENTION_IMPLS = ("auto", "xla", "dense", "cudnn", "pallas_gpu", "splash")
KERNEL_IMPLS = ("auto", "xla", "pallas_gpu", "pallas_tpu")
TWIN_LOSSES = ("cross_user",)  # losses.TWIN_LOSSES, likewise


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """`name`: what `from_pretrained` accepts (the alias `smollm2-135m-instruct`, a Hugging Face folder,
    an alignx_jax folder), or `random` for a random-init `preset` (+ `overrides`), which then needs a
    `tokenizer` (an alias or folder whose tokenizer to use)."""

    name: str = "smollm2-135m-instruct"
    preset: str = "tiny"
    overrides: dict = dataclasses.field(default_factory=dict)
    tokenizer: str | None = None
    dtype: Literal["float32", "bfloat16"] = "float32"  # compute; parameters (master weights) stay param_dtype
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    remat: bool = False
    attention_impl: str = "auto"  # kernels.attention's impl (ATTENTION_IMPLS); auto: splash on TPU
    kernel_impl: str = "auto"  # the fused log-prob kernel's impl (kernels.IMPLS); auto: pallas_tpu on TPU


@dataclasses.dataclass(frozen=True)
class SyntheticUsers:
    """`data.synthetic_records`: users in mirror pairs (a persona-blind model scores 50%). `seed`
    default: the run's seed for training users, that + 1 for held-out users, + 2 for held-out users of
    unseen dimensions (never the same users). `dimensions`: the style dimensions the users mark, by
    AlignX index or label (`data.STYLE_DIMENSIONS`: 16 length, 5 tone, 6 formality, 73 humour,
    3 enthusiasm, topics 47 science, 56 sports, 74 music, 60 travel, 69 finance; and the fourteen topics of
    `data.EXTRA_TOPIC_DIMENSIONS`, only when named); null: data.STYLE_DIMENSIONS."""

    users: int = 0
    records_per_user: int = 4
    history_items: int = 6
    seed: int | None = None
    dimensions: tuple[int | str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class DataFile:
    """A record file or folder (parquet, JSON, JSONL). `heldout_per_persona` records of each persona
    (`data.persona_key`, chosen by a seeded draw) go to the held-out set, the rest to training;
    `limit` keeps at most that many training records, evenly across personas."""

    path: str
    heldout_per_persona: int = 0
    limit: int | None = None


@dataclasses.dataclass(frozen=True)
class DataConfig:
    synthetic: SyntheticUsers = SyntheticUsers()
    heldout_synthetic: SyntheticUsers = SyntheticUsers()
    # Held-out users marked only on dimensions no training user marks: summary.json reports them
    # (eval_unseen_*) apart from the other held-out records (eval_seen_*).
    heldout_unseen: SyntheticUsers = SyntheticUsers()
    files: tuple[DataFile, ...] = ()
    prompt: Literal["ica", "pba"] = "ica"
    profile: Literal["official", "golden", "precomputed"] = "official"
    rows: int = 4
    seq_lengths: tuple[int, ...] = (512, 1024, 2048)
    max_pairs_per_row: int = 4
    on_long_response: Literal["drop", "truncate"] = "drop"
    scored_buckets: tuple[int, ...] = ()  # static scored-token counts (rows * T added last); () = powers of two up to rows * T
    # Twin batches: records holding the same post and responses with opposite labels (data.twin_units)
    # are shuffled and packed as one unit, so both twins train in the same step.
    twins: bool = False
    # Profile-first targets (data.profile_first): each training pair's chosen response opens with the
    # user's profile, the rejected with the mirror user's (held-out records are scored as they are).
    profile_first: bool = False


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """optax AdamW; lr warms up linearly for `warmup_steps`, then decays (`schedule`) to `end_lr_ratio` * lr."""

    lr: float = 1e-5
    warmup_steps: int = 0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    end_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float | None = 1.0
    accumulation: int = 1  # micro-batches per optimizer step, accumulated inside the jitted step


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Adapters W + (alpha / rank) A B on the named projections; A random, B zero (so step 0 = the base)."""

    rank: int = 16
    alpha: float = 32.0
    targets: tuple[str, ...] = LORA_TARGETS
    # Adapters on the top `layers` decoder layers only (None: all). The layers below stay the base
    # model's, so the policy and its reference share their output: one forward of them serves both,
    # and no gradient flows through them (train/step.py).
    layers: int | None = None


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh sizes; their product is the device count (one of them may be -1: the rest)."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """`jax.distributed.initialize` arguments; all None = single process, unless the cluster's
    environment (SLURM, TPU pod, ...) is detected by `initialize: auto`."""

    initialize: Literal["off", "auto", "explicit"] = "off"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation every `eval_every` steps: the paper's accuracy and the policy-only view."""

    history: Literal["full", "sampled"] = "full"
    layout: Literal["evaluation", "training"] = "evaluation"  # the official eval prompt, or the training one
    rows: int = 4
    limit: int | None = None  # at most this many held-out records, evenly across personas


@dataclasses.dataclass(frozen=True)
class BridgeSection:
    """PBA with a preference bridge (train/bridge.py): `mode` learned (persona encoder + bridge, CE on
    the records' directions) or the official / golden rule; `conditioning` text (the MAP profile in
    the PBA prompt) or soft (`soft_tokens` virtual tokens from a learned (dimension, direction)
    table); `pretrain_steps` of bridge CE before DPO; `joint`: the bridge keeps learning during DPO
    (loss + ce_weight * CE). `lr`: the bridge's and the table's AdamW rate during DPO (the policy's
    schedule shape)."""

    mode: Literal["learned", "official", "golden"] = "learned"
    conditioning: Literal["text", "soft"] = "soft"
    soft_tokens: int = 4
    # The soft-token table's start: random (small normal), or labels (each entry the embedding of its
    # label's words, `bridge.label_table`, so that a token starts as the profile text's words).
    soft_init: Literal["random", "labels"] = "random"
    # How a distribution makes the K tokens: "sum" (each token sums every dimension's entry) or
    # "top_dimensions" (token k is the k-th most surely marked dimension's entry alone, one label per
    # token as in the profile text): `bridge.soft_tokens`.
    soft_select: Literal["sum", "top_dimensions"] = "sum"
    encoder_layer: int = 1
    encoder_trainable: bool = False  # the encoder's backbone layers learn during pretraining, then freeze
    persona_size: int = 128
    hidden_size: int = 256  # the bridge MLP's width; 0: linear (the mean of per-item logits)
    item_length: int = 96  # tokens per item view
    max_items: int = 16
    # How often a training draw shows the demographic text (held-out personas always do). Shown
    # half the time, the bridge cannot tell an unmarked dimension from a marked one whose side writes
    # nothing (no humour sentence: neutral, or dislikes humour?): held-out macro-F1 0.67 vs 0.92
    # (the bridge alone on tiny_pba_soft, 64 held-out users).
    demo_probability: float = 1.0
    pretrain_steps: int = 400
    pretrain_batch: int = 32
    pretrain_lr: float = 3e-3
    joint: bool = False
    ce_weight: float = 1.0
    lr: float = 1e-2
    probes: int = 64  # controllability probe pairs (held-out pairs contrasting on one dimension)


@dataclasses.dataclass(frozen=True)
class LmWarmupConfig:
    """`steps` of next-token loss on the training rows (prompt, history and chosen response; constant
    `lr` after a 10% linear warmup) before the preference steps; the warmed model is then the reference
    (train/lm_warmup.py). 0 = none: the start model is the reference."""

    steps: int = 0
    lr: float = 1e-3


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    out_dir: str = "runs/alignx"
    seed: int = 0
    steps: int = 100
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    loss: str = "sigmoid"
    beta: float = 0.1
    loss_hparams: dict = dataclasses.field(default_factory=dict)
    # A batch-level term over twin pairs (losses.TWIN_LOSSES: cross_user), added to `loss` with weight
    # twin_loss_weight; needs data.twins.
    twin_loss: str | None = None
    twin_loss_weight: float = 1.0  # the twin loss's weight beside `loss` (>= 0)
    # Group-robust weights over the training personas (GRPO's step size eta; 0: off): the loss is
    # sum_g alpha_g * mean loss_g, alpha_g <- alpha_g * exp(eta * mean loss_g); alpha is checkpointed.
    group_robust_eta: float = 0.0
    reference: Literal["frozen", "precomputed", "lora"] = "frozen"
    reference_cache_dir: str | None = None  # default: out_dir/../.reference_cache
    lora: LoraConfig = LoraConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    mesh: MeshConfig = MeshConfig()
    distributed: DistributedConfig = DistributedConfig()
    checkpoint_every: int = 100
    checkpoint_dir: str | None = None  # default: out_dir/checkpoints; may be a URL (gs://bucket/run), given to orbax as is
    keep_checkpoints: int = 3
    eval_every: int = 0  # 0 = only at the end
    eval: EvalConfig = EvalConfig()
    log_every: int = 1
    export_hf: bool = False  # also write out_dir/hf (transformers folder)
    device_memory_gib: float | None = None  # when set, refuse a run whose planned memory per device exceeds it
    bridge: BridgeSection | None = None  # PBA conditioned by a preference bridge (issue 14)
    lm_warmup: LmWarmupConfig = LmWarmupConfig()

    def __post_init__(self):
        _check_ranges(self)


def _positive(value, key, minimum=1):
    if value is not None and value < minimum:
        raise ConfigError(f"config key {key!r} must be >= {minimum}, got {value}")


def _check_ranges(c: TrainConfig) -> None:
    if "://" in c.out_dir:  # metrics, summary and model/ are written with local file calls
        raise ConfigError(f"config key 'out_dir' must be a local folder, got {c.out_dir!r}; put the checkpoints in "
                          f"a bucket with checkpoint_dir: {c.out_dir.rstrip('/')}/checkpoints")
    _positive(c.steps, "steps")
    _positive(c.checkpoint_every, "checkpoint_every")
    _positive(c.keep_checkpoints, "keep_checkpoints")
    _positive(c.eval_every, "eval_every", 0)
    _positive(c.log_every, "log_every")
    _positive(c.data.rows, "data.rows")
    _positive(c.data.max_pairs_per_row, "data.max_pairs_per_row")
    _positive(c.optimizer.accumulation, "optimizer.accumulation")
    _positive(c.optimizer.warmup_steps, "optimizer.warmup_steps", 0)
    _positive(c.lora.rank, "lora.rank")
    _positive(c.lora.layers, "lora.layers")
    _positive(c.eval.rows, "eval.rows")
    for name, users in (("data.synthetic", c.data.synthetic), ("data.heldout_synthetic", c.data.heldout_synthetic),
                        ("data.heldout_unseen", c.data.heldout_unseen)):
        _positive(users.users, f"{name}.users", 0)
        _positive(users.records_per_user, f"{name}.records_per_user")
        _positive(users.history_items, f"{name}.history_items", 0)
        style_dimensions(users, name)
    _check_unseen(c.data)
    if c.optimizer.lr <= 0:
        raise ConfigError(f"config key 'optimizer.lr' must be > 0, got {c.optimizer.lr}")
    if c.beta <= 0:
        raise ConfigError(f"config key 'beta' must be > 0, got {c.beta}")
    if not 0 <= c.optimizer.end_lr_ratio <= 1:
        raise ConfigError(f"config key 'optimizer.end_lr_ratio' must be in [0, 1], got {c.optimizer.end_lr_ratio}")
    if not c.data.seq_lengths or list(c.data.seq_lengths) != sorted(set(c.data.seq_lengths)):
        raise ConfigError(f"config key 'data.seq_lengths' must be strictly increasing, got {list(c.data.seq_lengths)}")
    if list(c.data.scored_buckets) != sorted(set(c.data.scored_buckets)):
        raise ConfigError(f"config key 'data.scored_buckets' must be strictly increasing, got {list(c.data.scored_buckets)}")
    unknown = sorted(set(c.lora.targets) - set(LORA_TARGETS))
    if unknown:
        raise ConfigError(f"config key 'lora.targets': unknown projection(s) {unknown}; known: {list(LORA_TARGETS)}")
    for key, known in (("attention_impl", ATTENTION_IMPLS), ("kernel_impl", KERNEL_IMPLS)):
        value = getattr(c.model, key)
        if value not in known:
            close = difflib.get_close_matches(value, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"config key 'model.{key}' must be one of {list(known)}, got {value!r}{hint}")
    if c.model.name == "random" and not c.model.tokenizer:
        raise ConfigError("config key 'model.tokenizer' is required when model.name is 'random'")
    _positive(c.lm_warmup.steps, "lm_warmup.steps", 0)
    if c.lm_warmup.lr <= 0:
        raise ConfigError(f"config key 'lm_warmup.lr' must be > 0, got {c.lm_warmup.lr}")
    if c.lm_warmup.steps and c.reference == "precomputed":
        raise ConfigError("config key 'lm_warmup.steps': the warmed model becomes the reference, which "
                          "reference: precomputed cannot hold; use reference: frozen or lora")
    if c.bridge is not None:
        for key in ("soft_tokens", "encoder_layer", "persona_size", "hidden_size", "max_items", "pretrain_batch",
                    "probes"):
            _positive(getattr(c.bridge, key), f"bridge.{key}", 0 if key in ("probes", "hidden_size") else 1)
        _positive(c.bridge.item_length, "bridge.item_length", 2)
        _positive(c.bridge.pretrain_steps, "bridge.pretrain_steps", 0)
        for key in ("pretrain_lr", "lr"):
            if getattr(c.bridge, key) <= 0:
                raise ConfigError(f"config key 'bridge.{key}' must be > 0, got {getattr(c.bridge, key)}")
        if not 0 <= c.bridge.demo_probability <= 1:
            raise ConfigError(f"config key 'bridge.demo_probability' must be in [0, 1], got {c.bridge.demo_probability}")
        if c.bridge.ce_weight < 0:
            raise ConfigError(f"config key 'bridge.ce_weight' must be >= 0, got {c.bridge.ce_weight}")
        if c.data.prompt != "pba":
            raise ConfigError("config key 'bridge' conditions a PBA policy: set data.prompt: pba")
        if c.bridge.joint and (c.bridge.mode != "learned" or c.bridge.conditioning != "soft"):
            raise ConfigError("config key 'bridge.joint' trains the bridge through the policy: it needs "
                              "bridge.mode: learned and bridge.conditioning: soft")
        if c.bridge.encoder_trainable and (c.bridge.mode != "learned" or not c.bridge.pretrain_steps):
            raise ConfigError("config key 'bridge.encoder_trainable' trains the encoder's layers during bridge "
                              "pretraining: it needs bridge.mode: learned and bridge.pretrain_steps > 0")
    if c.twin_loss is not None:
        if c.twin_loss not in TWIN_LOSSES:
            raise ConfigError(f"config key 'twin_loss' must be one of {list(TWIN_LOSSES)}, got {c.twin_loss!r}")
        if not c.data.twins:
            raise ConfigError("config key 'twin_loss' reads twin pairs of one batch: set data.twins: true")
    if c.twin_loss_weight < 0:
        raise ConfigError(f"config key 'twin_loss_weight' must be >= 0, got {c.twin_loss_weight}")
    if c.group_robust_eta < 0:
        raise ConfigError(f"config key 'group_robust_eta' must be >= 0, got {c.group_robust_eta}")
    if c.data.twins and c.data.rows * c.data.max_pairs_per_row < 2:
        raise ConfigError("config key 'data.twins' packs twin pairs into one batch: it needs data.rows x "
                          "data.max_pairs_per_row >= 2 pair slots")
    if not c.data.synthetic.users and not c.data.files:
        raise ConfigError("config key 'data' names no training records: set data.synthetic.users or data.files")


def style_dimensions(users: SyntheticUsers, name: str) -> tuple[int, ...]:
    """The dimension indices `users.dimensions` names (data.STYLE_DIMENSIONS when null)."""
    if users.dimensions is None:
        return data.STYLE_DIMENSIONS
    if not users.dimensions:
        raise ConfigError(f"config key '{name}.dimensions' names no dimension; "
                          f"leave it out (null) for data.STYLE_DIMENSIONS")
    try:
        return data.style_dimensions(users.dimensions)
    except ValueError as error:
        raise ConfigError(f"config key '{name}.dimensions': {error}") from None


def _check_unseen(c: DataConfig) -> None:
    """Held-out users of unseen dimensions need their dimensions named, and no training user may mark them."""
    if not c.heldout_unseen.users:
        return
    if c.heldout_unseen.dimensions is None:
        raise ConfigError("config key 'data.heldout_unseen.dimensions' is required when data.heldout_unseen.users "
                          "> 0: the dimensions that no training user marks")
    if not c.synthetic.users:
        return
    shared = sorted(set(style_dimensions(c.heldout_unseen, "data.heldout_unseen"))
                    & set(style_dimensions(c.synthetic, "data.synthetic")))
    if shared:
        raise ConfigError(f"config key 'data.heldout_unseen.dimensions' must not share a dimension with "
                          f"data.synthetic.dimensions (null: all), which the training users mark; shared: {shared}")


# `model: smollm2-135m-instruct` is short for model.name; a data file given as a string, for its path.
_SHORTHANDS = {ModelConfig: "name", DataFile: "path"}


def config_from_dict(values: Mapping[str, Any], overrides: Sequence[str] = ()) -> TrainConfig:
    tree = dict(values)
    for key, value in parse_overrides(overrides):
        config_yaml.set_dotted(tree, key, value, shorthands={"model": "name"})
    return config_yaml.build(TrainConfig, tree, shorthands=_SHORTHANDS)


def load_config(path: str | pathlib.Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config, apply `key=value` overrides, check every key, type and range."""
    values = config_yaml.read_mapping(path)
    try:
        return config_from_dict(values, overrides)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def to_dict(config: TrainConfig) -> dict:
    """The config as plain YAML-able data (tuples as lists), as written to out_dir/config.yaml."""
    return config_yaml.plain(dataclasses.asdict(config))
