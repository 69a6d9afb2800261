"""Every file in configs/ parses and builds; the 8B pod and multi-GPU configs fit their devices'
memory (planned with jax.eval_shape, no weights allocated); config errors name the key."""
import pathlib

import pytest

from alignx_jax import losses
from alignx_jax.models import llama
from alignx_jax.train import ConfigError, config_from_dict, load_config, memory
from alignx_jax.train import model_config_of
from alignx_jax.train.optimizer import make_optimizer

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
PLACEHOLDER = "/path/to/"


def built_model(config):
    """The architecture a config trains; a placeholder folder stands for the config's `model.preset`."""
    if config.model.name.startswith(PLACEHOLDER):
        return llama.preset(config.model.preset, dtype=config.model.dtype, param_dtype=config.model.param_dtype,
                            remat=config.model.remat)
    return model_config_of(config.model)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses_and_builds(path):
    text = path.read_text()
    assert text.startswith("#") and "Run:" in text, "each config states the command that runs it"
    config = load_config(path)
    losses.resolve(config.loss, {"beta": config.beta, **config.loss_hparams})
    make_optimizer(config.optimizer, config.steps)
    model = built_model(config)
    if model is not None:  # the embedded GGUF's architecture is read with its weights
        assert llama.num_params(model) > 0


# (config, devices of its slice or host, HBM GiB per device, parameters). v5p-64 is 32 chips: v5p
# names count TensorCores (two per chip) and JAX sees one device per chip.
POD_CONFIGS = [("llama3_1_8b_tpu_v5p_64.yaml", 32, 95, 8.03e9), ("llama3_1_8b_8xh100.yaml", 8, 80, 8.03e9),
               ("llama3_1_70b_tpu_v5p_64.yaml", 32, 95, 70.55e9)]


@pytest.mark.parametrize("name, devices, max_gib, params", POD_CONFIGS)
def test_pod_configs_fit_their_devices(name, devices, max_gib, params):
    config = load_config(pathlib.Path(CONFIGS[0]).parent / name)
    mesh = {"data": config.mesh.data, "fsdp": config.mesh.fsdp, "tensor": config.mesh.tensor}
    assert mesh["data"] * mesh["fsdp"] * mesh["tensor"] == devices
    planned = memory.per_device_gib(config, built_model(config), mesh)
    assert planned["total"] < config.device_memory_gib == max_gib, planned
    # The parameter shard is the fp32 parameters over the devices (nothing replicated by mistake).
    assert planned["trained"] == pytest.approx(params * 4 / devices / 2**30, rel=0.02)


@pytest.mark.parametrize("name", [c[0] for c in POD_CONFIGS])
def test_pod_configs_take_the_recipes_128_pairs_per_step(name):
    """The official recipe's global batch: rows x micro-batches x pairs per row = 128 pair slots."""
    config = load_config(pathlib.Path(CONFIGS[0]).parent / name)
    assert config.data.rows * config.optimizer.accumulation * config.data.max_pairs_per_row == 128
    assert config.data.seq_lengths[-1] == 8192


def test_memory_plan_refuses_an_unsharded_8b_run():
    config = load_config(pathlib.Path(CONFIGS[0]).parent / "llama3_1_8b_8xh100.yaml")
    planned = memory.per_device_gib(config, built_model(config), {"data": 1, "fsdp": 1, "tensor": 1})
    assert planned["total"] > 80  # 8B fp32 with Adam on one device cannot fit


@pytest.mark.parametrize("values, message", [
    ({"setps": 3}, "unknown key 'setps'; did you mean 'steps'?"),
    ({"optimizer": {"lr": "fast"}}, "config key 'optimizer.lr' must be float, got 'fast'"),
    ({"optimizer": {"lrr": 1e-3}}, "unknown key 'optimizer.lrr'; did you mean 'optimizer.lr'?"),
    ({"steps": 0}, "config key 'steps' must be >= 1, got 0"),
    ({"reference": "frozn"}, "config key 'reference' must be one of ['frozen', 'precomputed', 'lora'], got 'frozn'; "
                             "did you mean 'frozen'?"),
    ({"data": {"seq_lengths": [1024, 512]}}, "'data.seq_lengths' must be strictly increasing"),
    ({"lora": {"targets": ["q_proj", "qkv"]}}, "unknown projection(s) ['qkv']"),
    ({"model": {"name": "random"}}, "'model.tokenizer' is required"),
    ({"twin_loss": "cross_user"}, "config key 'twin_loss' reads twin pairs of one batch: set data.twins: true"),
    ({"twin_loss": "swap", "data": {"twins": True}},
     "config key 'twin_loss' must be one of ['cross_user'], got 'swap'"),
    ({"twin_loss_weight": -1.0}, "config key 'twin_loss_weight' must be >= 0, got -1.0"),
    ({"group_robust_eta": -0.1}, "config key 'group_robust_eta' must be >= 0, got -0.1"),
    ({"data": {"twins": True, "rows": 1, "max_pairs_per_row": 1}}, "it needs data.rows x data.max_pairs_per_row >= 2"),
])
def test_config_errors_name_the_key(values, message):
    base = {"data": {"synthetic": {"users": 2}}}
    merged = {**base, **values, "data": {**base["data"], **values.get("data", {})}}
    with pytest.raises(ConfigError) as error:
        config_from_dict(merged)
    assert message in str(error.value)


def test_overrides_reach_nested_keys_and_parse_yaml_values():
    config = config_from_dict({"data": {"synthetic": {"users": 2}}},
                              ["steps=7", "optimizer.lr=1e-4", "model=smollm2-135m-instruct", "data.seq_lengths=[256, 512]"])
    assert (config.steps, config.optimizer.lr, config.model.name, config.data.seq_lengths) == (
        7, 1e-4, "smollm2-135m-instruct", (256, 512))
    with pytest.raises(ConfigError, match="must look like key=value"):
        config_from_dict({}, ["steps"])


@pytest.mark.parametrize("configured, expected", [((), (64, 128, 256, 512, 640)),
                                                  ((512, 1024), (512, 640)),  # 1024 > 4 x 160 tokens: capped
                                                  ((100, 200), (100, 200, 640))])  # full shape added last
def test_scored_buckets_always_hold_a_full_batch(configured, expected):
    from alignx_jax.train.data import scored_buckets

    assert scored_buckets(configured, 640) == expected
