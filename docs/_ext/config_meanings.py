"""The meaning of each config field that carries no comment of its own in the code.

Keyed by `ClassName.field` of the public config dataclasses (`alignx_jax.train.config`), so one entry
serves every place a class is used (`data.synthetic`, `data.heldout_synthetic` and
`data.heldout_unseen` are all `SyntheticUsers`). A comment beside the field in the code wins over this
table only when the table has no entry. `docs/_ext/alignx_docs.py` warns (an error under `-W`) about a
key with no meaning and about an entry here that names no field; `tests/test_docs.py` checks the same.
"""

MEANINGS = {
    # TrainConfig: the top level
    "TrainConfig.out_dir": "Local folder of the run: metrics.jsonl, summary.json, config.yaml, heldout.json, "
                           "model/, tensorboard/ and (by default) checkpoints/. Created with its parents; a URL is "
                           "refused (use `checkpoint_dir` for a bucket).",
    "TrainConfig.seed": "Seed of the parameter init, the data shuffle, the persona draws and the step RNG "
                        "(`fold_in(key(seed), step)`).",
    "TrainConfig.steps": "Optimizer steps to run (an upper bound when a deadline stops the run early).",
    "TrainConfig.loss": "A registry name (`alignx losses` lists them, TRL's `loss_type` names) or your own "
                        "function as `package.module:function`.",
    "TrainConfig.beta": "The DPO temperature beta, passed to the loss (must be > 0).",
    "TrainConfig.loss_hparams": "Extra keyword arguments of the loss (e.g. `{rpo_alpha: 1.0}`, "
                                "`{label_smoothing: 0.1}`); checked against the loss's signature at start-up.",
    "TrainConfig.reference": "The reference model: `frozen` (a copy of the start model, forward only, inside the "
                             "step), `precomputed` (one pass before the first step, cached in `reference_cache_dir`) "
                             "or `lora` (the base without its adapters).",
    "TrainConfig.checkpoint_every": "Steps between orbax checkpoints (the last step is always saved).",
    "TrainConfig.keep_checkpoints": "How many of the newest checkpoints to keep.",
    "TrainConfig.log_every": "Steps between metrics.jsonl rows (a row with a held-out evaluation is always written).",
    # ModelConfig
    "ModelConfig.name": "What `from_pretrained` accepts: the alias `smollm2-135m-instruct` (the embedded model), "
                        "a Hugging Face folder, an alignx_jax model folder, a GGUF file, or `random` for a "
                        "random-init `preset`.",
    "ModelConfig.preset": "The architecture of a `random` model, and the one `alignx compile` uses while `name`'s "
                          "folder is absent: a `LlamaConfig` preset (`tiny`, `smollm2-135m`, `llama3.1-8b`, ...).",
    "ModelConfig.overrides": "Fields of the preset's `LlamaConfig` to change (e.g. `{num_layers: 2, "
                             "hidden_size: 64}`).",
    "ModelConfig.tokenizer": "The tokenizer of a `random` model: a model alias or folder whose tokenizer and chat "
                             "template to use (required when `name` is `random`).",
    "ModelConfig.param_dtype": "dtype of the stored parameters (the master weights the optimizer updates).",
    "ModelConfig.attention_impl": "Attention over packed pairs: `auto` (splash on TPU; on a GPU cuDNN for bf16/fp16, "
                                  "else `dense`; the block-sparse `xla` loop on CPU), `xla`, `dense`, `cudnn`, "
                                  "`pallas_gpu` or `splash`.",
    "ModelConfig.kernel_impl": "The fused log-prob kernel: `auto` (Pallas on TPU; on a GPU Pallas when a tile fits "
                               "the GPU's shared memory at the model's hidden size, else the XLA loop; the XLA loop on "
                               "CPU), `xla`, `pallas_gpu` or `pallas_tpu`.",
    "ModelConfig.remat": "Recompute each decoder layer's activations in the backward pass (saves memory on long "
                         "rows).",
    # SyntheticUsers (data.synthetic, data.heldout_synthetic, data.heldout_unseen)
    "SyntheticUsers.users": "How many synthetic users (0: none). Users come in mirror pairs.",
    "SyntheticUsers.records_per_user": "Preference pairs per user.",
    "SyntheticUsers.history_items": "History items (earlier comments and choices) shown per user.",
    "SyntheticUsers.seed": "Seed of these users; null: the run's seed for training users, + 1 for held-out users, "
                           "+ 2 for held-out users of unseen dimensions.",
    "SyntheticUsers.dimensions": "The style dimensions the users mark, by AlignX index or label "
                                 "(`data.STYLE_DIMENSIONS`, plus `data.EXTRA_TOPIC_DIMENSIONS` when named); null: "
                                 "the ten of `data.STYLE_DIMENSIONS`.",
    # DataFile (data.files[])
    "DataFile.path": "A record file or folder: parquet (the hub's shards), JSON or JSONL, on a local or shared "
                     "file system (not a URL).",
    "DataFile.heldout_per_persona": "Records of each persona (`data.persona_key`) that a seeded draw moves to the "
                                    "held-out set; the rest are training records.",
    "DataFile.limit": "At most this many training records from the file, taken evenly across personas (null: all).",
    # DataConfig
    "DataConfig.prompt": "The persona layout: `ica` (the history as text, the official training layout) or `pba` "
                         "(a profile of preference labels).",
    "DataConfig.profile": "Where a `pba` prompt's profile comes from without a bridge: the `official` rule over "
                          "the history's directions, the record's own direction (`golden`), or the benchmark's "
                          "`profile` field (`precomputed`).",
    "DataConfig.rows": "Packed rows per micro-batch (across all devices).",
    "DataConfig.seq_lengths": "The static row lengths (tokens), strictly increasing; each batch is padded to the "
                              "smallest that fits, so the step compiles once per length.",
    "DataConfig.max_pairs_per_row": "At most this many `[prompt | chosen | rejected]` pairs packed into one row.",
    "DataConfig.on_long_response": "A response that does not fit the longest row: `drop` the pair or `truncate` "
                                   "the response.",
    # OptimizerConfig
    "OptimizerConfig.lr": "Peak learning rate of AdamW.",
    "OptimizerConfig.warmup_steps": "Steps of linear warm-up from 0 to `lr`.",
    "OptimizerConfig.schedule": "Decay after the warm-up: `cosine`, `linear` or `constant`.",
    "OptimizerConfig.end_lr_ratio": "The decay ends at `end_lr_ratio * lr` (in [0, 1]).",
    "OptimizerConfig.weight_decay": "AdamW's decoupled weight decay.",
    "OptimizerConfig.b1": "AdamW's first-moment decay.",
    "OptimizerConfig.b2": "AdamW's second-moment decay.",
    "OptimizerConfig.eps": "AdamW's epsilon.",
    "OptimizerConfig.clip_norm": "Global gradient-norm clip before the update (null: no clipping).",
    # LoraConfig
    "LoraConfig.rank": "Rank r of the adapters (used when `reference: lora`).",
    "LoraConfig.alpha": "Scale numerator: the update is `(alpha / rank) A B`.",
    "LoraConfig.targets": "The projections that get adapters.",
    # MeshConfig
    "MeshConfig.data": "Size of the `data` mesh axis (rows split over it; parameters replicated).",
    "MeshConfig.fsdp": "Size of the `fsdp` axis (rows and parameters split over it); -1: the remaining devices.",
    "MeshConfig.tensor": "Size of the `tensor` axis (heads, MLP width and the vocabulary split over it).",
    # DistributedConfig
    "DistributedConfig.initialize": "`off` (one process), `auto` (TPU pods, SLURM, or the `JAX_COORDINATOR_ADDRESS` "
                                    "/ `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID` environment) or `explicit` (the three "
                                    "keys below).",
    "DistributedConfig.coordinator_address": "`host:port` of process 0 (`initialize: explicit`).",
    "DistributedConfig.num_processes": "Number of processes (`initialize: explicit`).",
    "DistributedConfig.process_id": "This process's index (`initialize: explicit`).",
    # EvalConfig
    "EvalConfig.history": "Held-out prompts show the `full` history or a `sampled` draw as in training.",
    "EvalConfig.rows": "Rows per held-out scoring batch.",
    # BridgeSection (bridge.*; the section is off unless set)
    "BridgeSection.mode": "`learned` (persona encoder + bridge, trained with CE on the records' directions), "
                          "`official` (the official rule) or `golden` (the record's own direction).",
    "BridgeSection.conditioning": "How the policy sees the bridge's output: `text` (the MAP profile in the PBA "
                                  "prompt) or `soft` (soft preference tokens).",
    "BridgeSection.soft_tokens": "Number K of soft tokens (`conditioning: soft`).",
    "BridgeSection.encoder_layer": "The persona encoder reads the start model's hidden states after this many "
                                   "layers.",
    "BridgeSection.persona_size": "Width of the persona vector.",
    "BridgeSection.max_items": "At most this many persona items per user.",
    "BridgeSection.pretrain_steps": "Steps of bridge cross-entropy before the preference steps.",
    "BridgeSection.pretrain_batch": "Users per bridge pretraining step.",
    "BridgeSection.pretrain_lr": "Learning rate of bridge pretraining.",
    "BridgeSection.joint": "Keep training the bridge during the preference steps (loss + `ce_weight` * CE); needs "
                           "`mode: learned` and `conditioning: soft`.",
    "BridgeSection.ce_weight": "Weight of the bridge's CE in joint training.",
    "BridgeSection.lr": "AdamW rate of the bridge and the soft-token table during the preference steps.",
    # LmWarmupConfig
    "LmWarmupConfig.steps": "Steps of next-token loss on the training rows before the preference steps (0: none).",
    "LmWarmupConfig.lr": "Learning rate of the LM warm-up (constant after a 10% linear warm-up).",
}
