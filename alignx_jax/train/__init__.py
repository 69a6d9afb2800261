"""Layer 4 training: config, state and step, sharding, checkpoints, reference cache, the loop.

    config = load_config("configs/tiny_ica.yaml", ["steps=50"])
    summary = train(config)                     # out_dir: metrics.jsonl, checkpoints/, summary.json, model/

`train_step(state, batch, rng, *, spec, optimizer, schedule) -> (state, metrics)` is the pure
jitted step; `StepSpec` fixes the model, the loss and the reference mode for a run. Tools and
tests that build a step by hand use `load_model`, `create_state` and `resolve_loss` (train/state.py).
"""
from alignx_jax.train.config import ConfigError, TrainConfig, config_from_dict, load_config
from alignx_jax.train.loop import train
from alignx_jax.train.setup import Reporter, SilentReporter
from alignx_jax.train.state import create_state, load_model, model_config_of, resolve_loss
from alignx_jax.train.step import StepSpec, TrainState, train_step

__all__ = ["ConfigError", "Reporter", "SilentReporter", "StepSpec", "TrainConfig", "TrainState", "config_from_dict",
           "create_state", "load_config", "load_model", "model_config_of", "resolve_loss", "train", "train_step"]
