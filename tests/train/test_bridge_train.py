"""A preference bridge in training: joint-mode gradients reach the encoder, the bridge and the soft
table; `alignx train` with a `bridge:` section writes bridge_macro_f1, controllability and the bridge."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alignx_jax import bridge, data, kernels, losses
from alignx_jax import preferences as prefs
from alignx_jax.models import llama, scoring
from alignx_jax.train import ConfigError, config_from_dict, train
from alignx_jax.train import bridge as bridge_train
from alignx_jax.train import step as step_lib

K = 2


@pytest.fixture(scope="module")
def joint_batch(byte_tokenizer):
    """A tiny model, bridge params, and one packed soft-slot micro-batch with persona features."""
    config = llama.LlamaConfig.tiny(num_layers=1, hidden_size=32, intermediate_size=64)
    params = llama.init_params(config, jax.random.key(0))
    records = data.synthetic_records(4, seed=0, records_per_user=1, history_items=2)
    fmt = data.PromptFormat(kind="pba", soft_tokens=K)
    pairs = [data.encode_record(r, i, tokenizer=byte_tokenizer, prompt_format=fmt, seed=0, max_length=2048)[0]
             for i, r in enumerate(records)]
    batch = data.pack_rows([[p] for p in pairs], seq_len=2048, num_pair_slots=4).as_dict()
    bconfig = bridge.BridgeConfig(backbone_size=32, model_size=32, encoder_layer=1, persona_size=16, hidden_size=16,
                                  soft_tokens=K)
    bparams = bridge.init_params(bconfig, jax.random.key(1))
    rng = np.random.default_rng(0)
    m = 5
    labels = np.stack([np.asarray(bridge.direction_classes(prefs.binarize(r[prefs.DIRECTION]))) for r in records])
    micro = {**{k: jnp.asarray(v) for k, v in batch.items()},
             "persona_features": jnp.asarray(rng.standard_normal((4, m, 64)), jnp.float32),
             "persona_types": jnp.asarray(rng.integers(0, 3, (4, m)), jnp.int32),
             "persona_mask": jnp.asarray(np.arange(m) < np.array([[5], [3], [1], [0]])),
             "persona_labels": jnp.asarray(labels), "persona_has_label": jnp.ones((4,), bool)}
    return config, params, bparams, micro


def _spec(config, micro, joint=True):
    step = bridge_train.BridgeStep(joint=joint, ce_weight=0.5, class_weights=((10.0, 0.4, 10.0),),
                                   optimizer=optax.adam(1e-2))
    scored = kernels.bucket_length(scoring.scored_token_count({k: np.asarray(v) for k, v in micro.items()}), (4096,))
    return step_lib.StepSpec(model=config, loss_fn=losses.get("sigmoid"), loss_hparams=(("beta", 0.1),),
                             reference="frozen", lora=None, num_pairs=4, scored_length=scored, bridge=step)


def test_joint_gradients_reach_the_encoder_the_bridge_and_the_soft_table(joint_batch):
    config, params, bparams, micro = joint_batch
    spec = _spec(config, micro)
    state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=None, frozen=params,
                                bridge=bparams)
    grad_fn = jax.grad(lambda t: step_lib._micro_loss(t, state, micro, spec)[0])
    _, bridge_grads = grad_fn((params, bparams))
    norms = {"/".join(str(getattr(k, "key", k)) for k in path): float(jnp.linalg.norm(g))
             for path, g in jax.tree_util.tree_leaves_with_path(bridge_grads)}
    assert all(np.isfinite(v) for v in norms.values()), norms
    for name in ("encoder/type_kernel", "encoder/query", "encoder/key", "encoder/value", "encoder/empty",
                 "bridge/w1", "bridge/w2", "bridge/b2", "soft/table"):
        assert norms[name] > 0, (name, norms)
    # Without joint training the bridge network gets nothing: only the table learns (from DPO).
    fixed = {**micro, "persona_dist": bridge.direction_distribution(jnp.full((4, 90), 0.5))}
    spec_fixed = _spec(config, micro, joint=False)
    _, fixed_grads = jax.grad(lambda t: step_lib._micro_loss(t, state, fixed, spec_fixed)[0])((params, bparams))
    assert float(jnp.linalg.norm(fixed_grads["soft"]["table"])) > 0
    assert float(jnp.linalg.norm(fixed_grads["encoder"]["query"])) == 0


def test_train_step_updates_policy_and_bridge(joint_batch):
    config, params, bparams, micro = joint_batch
    spec = _spec(config, micro)
    optimizer = optax.adam(1e-3)
    state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                                frozen=params, bridge=bparams, bridge_opt_state=spec.bridge.optimizer.init(bparams))
    batch = jax.tree.map(lambda x: x[None], micro)
    new, metrics = jax.jit(step_lib.train_step, static_argnames=("spec", "optimizer", "schedule"))(
        state, batch, jax.random.key(0), spec=spec, optimizer=optimizer, schedule=optax.constant_schedule(1e-3))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["bridge/grad_norm"]) > 0
    assert float(metrics["bridge/ce"]) > 0
    assert not np.allclose(np.asarray(new.bridge["soft"]["table"]), np.asarray(bparams["soft"]["table"]))
    assert not np.allclose(np.asarray(new.bridge["encoder"]["query"]), np.asarray(bparams["encoder"]["query"]))


TINY = {
    "seed": 0, "steps": 3, "checkpoint_every": 3,
    "model": {"name": "random", "preset": "tiny", "tokenizer": "smollm2-135m-instruct",
              "overrides": {"vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1}},
    "data": {"synthetic": {"users": 8, "records_per_user": 2, "history_items": 2},
             "heldout_synthetic": {"users": 4, "records_per_user": 2, "history_items": 2},
             "prompt": "pba", "rows": 4, "seq_lengths": [256, 1024], "max_pairs_per_row": 2, "scored_buckets": [1024, 2048]},
    "optimizer": {"lr": 1e-3},
    "eval": {"rows": 4},
    "bridge": {"mode": "learned", "conditioning": "soft", "soft_tokens": 2, "pretrain_steps": 4, "pretrain_batch": 8,
               "persona_size": 16, "hidden_size": 16, "item_length": 48, "joint": True, "probes": 6},
}


# The text profile run re-checks the loop the soft run drives: in the slow set (~15 s).
@pytest.mark.parametrize("conditioning", ["soft", pytest.param("text", marks=pytest.mark.slow)])
def test_a_bridge_run_writes_its_figures_and_the_bridge(tmp_path, conditioning):
    bridge_section = {**TINY["bridge"], "conditioning": conditioning, "joint": conditioning == "soft",
                      "soft_select": "top_dimensions" if conditioning == "soft" else "sum"}
    out = tmp_path / "run"
    summary = train(config_from_dict({**TINY, "bridge": bridge_section, "out_dir": str(out)}))
    saved = json.loads((out / "summary.json").read_text())
    for key in ("bridge_macro_f1", "bridge_majority_macro_f1", "controllability", "probe_accuracy", "eval_accuracy"):
        assert saved[key] is not None and 0 <= saved[key] <= 1, (key, saved[key])
    assert 1 <= saved["controllability_n"] <= 6 and len(saved["bridge_pretrain"]) >= 1
    per = saved["controllability_per_dimension"]  # the same probes, by the dimension each flips
    assert sum(v["n"] for v in per.values()) == saved["controllability_n"]
    assert sum(v["n"] * v["accuracy"] for v in per.values()) / saved["controllability_n"] == \
        pytest.approx(saved["controllability"])
    assert saved["controllability_worst_dimension"] == min(v["accuracy"] for v in per.values())
    assert sum(v["n"] * v["reward_accuracy"] for v in per.values()) / saved["controllability_n"] == \
        pytest.approx(saved["controllability_reward"])
    rows = [json.loads(line) for line in (out / "heldout_scores.jsonl").read_text().splitlines()]
    right = [(r["policy_chosen_logp"] - r["start_chosen_logp"]) > (r["policy_rejected_logp"] - r["start_rejected_logp"])
             for r in rows]
    assert saved["eval_reward_accuracy"] == pytest.approx(sum(right) / len(rows))
    before = [(r["start_chosen_logp"] - r["ref_chosen_logp"]) > (r["start_rejected_logp"] - r["ref_rejected_logp"])
              for r in rows]  # the untrained PBA policy against the few-shot reference
    assert saved["eval_accuracy_before"] == pytest.approx(sum(before) / len(rows))
    assert summary["bridge_conditioning"] == conditioning
    loaded = bridge.load(out / "model")
    assert (loaded.mode, loaded.conditioning, loaded.config.soft_tokens) == ("learned", conditioning, 2)
    assert loaded.config.soft_select == bridge_section["soft_select"]
    assert loaded.params["soft"]["table"].shape == (2, 90, 3, 32)
    assert loaded.backbone_config.num_layers == 1 and "backbone" in loaded.params


def test_controllability_per_dimension_groups_the_probes_by_the_dimension_they_flip():
    from alignx_jax.bridge import Probe
    from alignx_jax.train.export import per_dimension_controllability

    found = [Probe(0, 16, 1.0, {}), Probe(1, 73, 0.0, {}), Probe(2, 16, 0.0, {}), Probe(3, 16, 1.0, {})]
    margins = [0.5, -0.2, 0.1, -0.3]  # the policy's (chosen - rejected) log-prob gap; the reference's is 0
    start = [0.7, -0.4, -0.1, -0.4]  # the start model's gap in the same (edited) prompt
    rows = [{"index": i, "persona": "p", "policy_chosen_logp": m, "policy_rejected_logp": 0.0,
             "ref_chosen_logp": 0.0, "ref_rejected_logp": 0.0, "start_chosen_logp": s, "start_rejected_logp": 0.0}
            for i, (m, s) in enumerate(zip(margins, start))]
    got = per_dimension_controllability(rows, found, beta=0.1)
    length, humour = (prefs.dimensions()[i].positive for i in (16, 73))
    # reward view: m - s > 0 for probes 1, 2, 3 (0.2, 0.2, 0.1), not probe 0 (-0.2)
    assert got["controllability_per_dimension"] == {
        length: {"n": 3, "accuracy": pytest.approx(2 / 3), "reward_accuracy": pytest.approx(2 / 3)},
        humour: {"n": 1, "accuracy": 0.0, "reward_accuracy": 1.0}}
    assert got["controllability_worst_dimension"] == 0.0
    assert got["controllability_worst_dimension_reward"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("change, message", [
    ({"data": {**TINY["data"], "prompt": "ica"}}, "'bridge' conditions a PBA policy: set data.prompt: pba"),
    ({"bridge": {"joint": True, "conditioning": "text"}}, "'bridge.joint' trains the bridge through the policy"),
    ({"bridge": {"mode": "lerned"}}, "did you mean 'learned'?"),
    ({"bridge": {"soft_tokens": 0}}, "'bridge.soft_tokens' must be >= 1"),
    ({"bridge": {"encoder_trainable": True, "mode": "official"}}, "'bridge.encoder_trainable' trains the encoder"),
])
def test_bridge_config_errors_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("?", r"\?")):
        config_from_dict({**TINY, **change})


def test_a_trainable_encoder_learns_in_pretraining_then_every_item_is_encoded_again(byte_tokenizer):
    config = llama.LlamaConfig.tiny(num_layers=1, hidden_size=32, intermediate_size=64)
    params = llama.init_params(config, jax.random.key(0))
    records = data.synthetic_records(8, seed=0, records_per_user=1, history_items=2)
    heldout = data.synthetic_records(2, seed=1, records_per_user=1, history_items=2)
    section = config_from_dict({**TINY, "out_dir": "x", "bridge": {**TINY["bridge"], "encoder_trainable": True}}).bridge
    setup = bridge.setup(section, train_records=records, heldout_records=heldout, params=params, model=config,
                         tokenizer=byte_tokenizer, seed=0)
    start = bridge.backbone_slice(params, 1)
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(setup.backbone), jax.tree.leaves(start))]
    assert any(moved)  # the CE reached the backbone layers
    one_layer = config.replace(num_layers=1)
    for table in (setup.train, setup.heldout):  # the features are the trained backbone's, not the start's
        items = table.items[0]
        trained = bridge.encode_views(setup.backbone, one_layer, items.tokens.reshape(-1, 48),
                                      items.token_mask.reshape(-1, 48)).reshape(len(items), -1)
        np.testing.assert_allclose(table.features[0], trained, rtol=1e-5, atol=1e-6)
        before = bridge.encode_views(start, one_layer, items.tokens.reshape(-1, 48),
                                     items.token_mask.reshape(-1, 48)).reshape(len(items), -1)
        assert not np.allclose(table.features[0], before)
    saved = bridge.saved_bridge(setup, None)  # what `alignx generate --persona` encodes new personas with
    np.testing.assert_array_equal(saved.params["backbone"]["embed"]["embedding"],
                                  np.asarray(setup.backbone["embed"]["embedding"]))


def test_a_label_initialized_table_makes_a_users_tokens_the_sum_of_their_labels_embeddings(byte_tokenizer):
    config = llama.LlamaConfig.tiny(num_layers=1, hidden_size=32, intermediate_size=64)
    params = llama.init_params(config, jax.random.key(0))
    records = data.synthetic_records(4, seed=0, records_per_user=1, history_items=1)
    section = config_from_dict({**TINY, "out_dir": "x", "bridge": {**TINY["bridge"], "soft_init": "labels",
                                                                   "pretrain_steps": 0}}).bridge
    setup = bridge.setup(section, train_records=records, heldout_records=records[:2], params=params, model=config,
                         tokenizer=byte_tokenizer, seed=0)
    embedding = np.asarray(params["embed"]["embedding"])
    words = lambda text: embedding[byte_tokenizer.encode(text)].mean(0)  # noqa: E731
    direction = np.asarray(records[0][prefs.DIRECTION])
    expected = sum(words(dim.positive if direction[dim.index] == prefs.POSITIVE else dim.negative)
                   for dim in prefs.dimensions() if direction[dim.index] != prefs.NEUTRAL)
    tokens = bridge.soft_tokens(jnp.asarray(setup.params["soft"]["table"]),
                                bridge.direction_distribution(jnp.asarray(direction))[None])[0]
    assert tokens.shape == (2, 32)
    for k in range(2):  # every slot starts as the profile's words
        np.testing.assert_allclose(tokens[k], expected, rtol=1e-5, atol=1e-6)
    # One dimension per slot: slot k starts as the words of the user's k-th marked label (ties in
    # marked probability go to the lower dimension index), a slot past the marks as nothing.
    top = bridge.soft_tokens(jnp.asarray(setup.params["soft"]["table"]),
                             bridge.direction_distribution(jnp.asarray(direction))[None], "top_dimensions")[0]
    labels = [words(dim.positive if direction[dim.index] == prefs.POSITIVE else dim.negative)
              for dim in prefs.dimensions() if direction[dim.index] != prefs.NEUTRAL]
    assert len(labels) >= 1
    for k in range(2):
        np.testing.assert_allclose(top[k], labels[k] if k < len(labels) else 0.0, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="soft_init"):
        config_from_dict({**TINY, "bridge": {**TINY["bridge"], "soft_init": "words"}})
    with pytest.raises(ConfigError, match="soft_select"):
        config_from_dict({**TINY, "bridge": {**TINY["bridge"], "soft_select": "max"}})


def test_the_edited_probes_reference_is_the_plain_probes_swapped(tmp_path):
    """The reference's few-shot prompt reads the history, not the profile an edit flips: the edited
    probes take the plain probes' reference log-probs swapped instead of a pass of their own, and
    those equal scoring the edited probes' own reference rows."""
    from alignx_jax.train import heldout, setup

    config = config_from_dict({**TINY, "bridge": {**TINY["bridge"], "conditioning": "text", "joint": False},
                               "out_dir": str(tmp_path / "run")})
    run = setup.setup(config, setup.SilentReporter())
    heldout.begin(run, run.state)
    plain, edited = run.bridge.probe_sets["plain"], run.bridge.probe_sets["edited"]
    assert len(edited.records) >= 1
    chosen, rejected = heldout.scores(run, run.state.frozen)(edited.reference_batches, len(edited.records))
    np.testing.assert_allclose(edited.ref_chosen, chosen, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(edited.ref_rejected, rejected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(edited.ref_chosen, plain.ref_rejected)
