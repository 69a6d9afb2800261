"""The model and the train state of a run: its source resolved (`interop`), its params placed on the
mesh, the loss resolved from the registry, and the `TrainState` created directly in sharded form.

    params, model, tokenizer = load_model(config.model, mesh, seed)
    loss_fn, hparams = resolve_loss(config)
    state, shardings = create_state(config, params, model, mesh, optimizer)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from alignx_jax import interop, losses
from alignx_jax.errors import InputError, MissingFileError
from alignx_jax.models import llama
from alignx_jax.train import config as config_lib
from alignx_jax.train import lora
from alignx_jax.train import sharding as train_sharding
from alignx_jax.train.step import TrainState


def _numerics(config: config_lib.ModelConfig) -> dict:
    return dict(dtype=config.dtype, param_dtype=config.param_dtype, remat=config.remat,
                attention_impl=config.attention_impl)


def model_config_of(config: config_lib.ModelConfig) -> llama.LlamaConfig | None:
    """The architecture without loading weights (random presets, HF / our folders; None for GGUF,
    whose header is read with the weights)."""
    try:
        return interop.model_config(config.name, preset=config.preset, overrides=config.overrides,
                                    **_numerics(config))
    except (TypeError, ValueError) as error:
        raise InputError(f"config key 'model': {error}") from None
    except MissingFileError as error:
        raise MissingFileError(f"config key 'model.name': {error}") from None


def load_model(config: config_lib.ModelConfig, mesh, seed: int):
    """(params placed on the mesh, LlamaConfig, tokenizer)."""
    model_config_of(config)  # the config errors, named by their keys, before anything loads
    tokenizer = interop.load_tokenizer(config.tokenizer or config.name)
    params, model = interop.load_model(config.name, shardings=lambda c: train_sharding.param_shardings(c, mesh),
                                       seed=seed, preset=config.preset, overrides=config.overrides,
                                       **_numerics(config))
    return params, model, tokenizer


def resolve_loss(config: config_lib.TrainConfig):
    """(loss function, hashable hyper-parameters with beta) from the registry."""
    hparams = {"beta": config.beta, **config.loss_hparams}
    try:
        fn = losses.resolve(config.loss, hparams)
    except (TypeError, ValueError) as error:
        raise InputError(f"config key 'loss': {error}") from None
    return fn, tuple(sorted(hparams.items()))


def create_state(config: config_lib.TrainConfig, params, model: llama.LlamaConfig, mesh, optimizer):
    """TrainState on the mesh: the optimizer state is created directly in its sharded form."""
    param_shard = train_sharding.param_shardings(model, mesh)
    repl = train_sharding.replicated(mesh)
    if config.reference == "lora":
        adapters = lora.init_adapters(params, config.lora, jax.random.key(config.seed + 1))
        trained, trained_shard, frozen = jax.device_put(adapters, repl), jax.tree.map(lambda _: repl, adapters), params
    else:
        trained, trained_shard = params, param_shard
        # The reference is a copy of the start model (same placement); precomputed needs none.
        frozen = jax.tree.map(jnp.copy, params) if config.reference == "frozen" else None
    shapes = jax.eval_shape(lambda: trained)
    opt_shard = train_sharding.optimizer_shardings(optimizer, shapes, trained_shard, mesh)
    opt_state = jax.jit(optimizer.init, out_shardings=opt_shard)(trained)
    frozen_shard = None if frozen is None else param_shard
    state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), repl), params=trained, opt_state=opt_state,
                       frozen=frozen)
    shardings = TrainState(step=repl, params=trained_shard, opt_state=opt_shard, frozen=frozen_shard)
    return state, shardings
