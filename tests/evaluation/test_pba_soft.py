"""A policy folder with a preference bridge: `alignx eval --mode pba_soft` scores with the bridge's soft
tokens, `alignx generate --preference/--persona` conditions on the (edited) distribution."""
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignx_jax import bridge, cli, data, evaluation, interop, kernels
from alignx_jax.cli import eval as eval_cli
from alignx_jax import preferences as prefs
from alignx_jax.errors import InputError
from alignx_jax.evaluation import _modes as evaluation_modes
from alignx_jax.models import llama, scoring

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "cli"))
from test_eval_cli import byte_tokenizer  # noqa: E402


def short_records():
    """Four users with one short comment, one short pair (with directions) and a demographic line."""
    records = []
    for u in range(4):
        direction = [0.5] * prefs.NUM_DIMENSIONS
        direction[47], direction[57] = float(u % 2), float(u // 2)  # science, law
        pair_direction = [0.5] * prefs.NUM_DIMENSIONS
        pair_direction[47] = direction[47]
        records.append({
            "prompt": f"Post {u}?", "chosen": f"yes {u}", "rejected": f"no {u}!", prefs.DIRECTION: direction,
            prefs.DEMOGRAPHICS: f"user {u}",
            prefs.UGC: [{"prompt": "q?", "comment": f"c{u}", prefs.DIRECTION: direction}],
            prefs.PAIRS: [{"prompt": "p?", "chosen": f"a{u}", "rejected": f"b{u}", prefs.DIRECTION: pair_direction}],
        })
    return records


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """A tiny random policy (byte tokenizer) with a random learned, soft-conditioned bridge."""
    root = tmp_path_factory.mktemp("pba_soft")
    tok = byte_tokenizer()
    config = llama.LlamaConfig.tiny(vocab_size=320, num_layers=2)
    params = llama.init_params(config, jax.random.key(0))
    interop.save_native(params, config, root / "policy", tokenizer=tok)
    bconfig = bridge.BridgeConfig(backbone_size=64, model_size=64, encoder_layer=1, persona_size=16, hidden_size=16,
                                  soft_tokens=3)
    bparams = jax.tree.map(np.asarray, bridge.init_params(bconfig, jax.random.key(1)))
    bparams["soft"]["table"] = bparams["soft"]["table"] * 50  # large enough to move the scores
    bparams["backbone"] = jax.tree.map(np.asarray, bridge.backbone_slice(params, 1))
    saved = bridge.SavedBridge("learned", "soft", bconfig, config.replace(num_layers=1), 32, bparams)
    bridge.save(root / "policy" / bridge.FOLDER, saved)
    records = short_records()
    (root / "users.json").write_text(json.dumps(records))
    return {"root": root, "policy": str(root / "policy"), "tok": tok, "params": params, "config": config,
            "records": records, "data": root / "users.json"}


def test_saved_bridge_round_trips(policy):
    loaded = bridge.load(policy["policy"])
    assert (loaded.mode, loaded.conditioning, loaded.config.soft_tokens, loaded.item_length) == ("learned", "soft", 3, 32)
    assert bridge.has_bridge(policy["policy"]) and not bridge.has_bridge(policy["root"])
    (policy["root"] / "broken" / "bridge").mkdir(parents=True)
    (policy["root"] / "broken" / "bridge" / "bridge.json").write_text("{not json")
    with pytest.raises(ValueError, match="bridge.json: not valid JSON"):
        bridge.load(policy["root"] / "broken")


def test_pba_soft_scores_with_the_bridges_soft_tokens(policy):
    reader = bridge.PersonaBridge(bridge.load(policy["policy"]), policy["tok"])
    mode = evaluation.PbaSoftMode(bridge=reader)
    model = (policy["params"], policy["config"])
    rows = evaluation.score_records(policy["records"], policy=model, reference=model, tokenizer=policy["tok"],
                                    mode=mode, seq_lengths=(256, 512))
    assert len(rows) == 4 and all(np.isfinite(r["policy_chosen_logp"]) for r in rows)
    # By hand for record 0: its full history -> distribution -> soft tokens in the PBA layout's slots.
    record = policy["records"][0]
    history = data.full_history(record)
    soft = reader.soft_tokens(reader.distributions([history], [record]))
    render = lambda h: data.pba_prompt(record["prompt"], data.soft_profile(3), evaluation=True)  # noqa: E731
    pair = data.encode_pair(policy["tok"], render, history, record["chosen"], record["rejected"], max_length=512)
    batch = data.pack_rows([[pair]], seq_len=512).as_dict()
    length = kernels.bucket_length(scoring.scored_token_count(batch), (512,))
    score = jax.jit(scoring.pair_logprobs, static_argnames=("config", "num_pairs", "scored_length"))
    got = score(policy["params"], policy["config"], {k: jnp.asarray(v) for k, v in batch.items()},
                num_pairs=1, scored_length=length, soft_tokens=jnp.asarray(soft))
    assert rows[0]["policy_chosen_logp"] == pytest.approx(float(got.chosen[0]), abs=1e-3)
    plain = score(policy["params"], policy["config"], {k: jnp.asarray(v) for k, v in batch.items()},
                  num_pairs=1, scored_length=length)
    assert abs(float(plain.chosen[0]) - float(got.chosen[0])) > 1e-3  # the soft tokens matter


def test_alignx_eval_mode_pba_soft(policy, tmp_path, capsys):
    out = tmp_path / "eval"
    assert cli.main(["eval", "--policy", policy["policy"], "--reference", policy["policy"], "--data",
                     str(policy["data"]), "--out", str(out), "--mode", "pba_soft", "--max-length", "512"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 4
    run = json.loads((out / "run.json").read_text())
    assert run["bridge"] == {"mode": "learned", "conditioning": "soft", "soft_tokens": 3, "encoder_layer": 1}
    capsys.readouterr()
    refused = tmp_path / "refused"
    assert cli.main(["eval", "--policy", policy["policy"], "--reference", policy["policy"], "--data",
                     str(policy["data"]), "--out", str(refused), "--mode", "pba_soft", "--reference-prompt",
                     "policy"]) == 2
    assert "error: --reference-prompt policy: the reference cannot read --mode pba_soft's soft tokens" in \
        capsys.readouterr().err
    assert not refused.exists()
    with pytest.raises(InputError, match="the reference cannot read the policy's prompt"):
        evaluation.PbaSoftMode(bridge=bridge.PersonaBridge(bridge.load(policy["policy"]), policy["tok"]),
                               reference_prompt="policy")


def test_edits_set_the_dimension_and_change_the_soft_tokens(official_labels, policy):
    reader = bridge.PersonaBridge(bridge.load(policy["policy"]), policy["tok"])
    base = bridge.neutral_distribution()
    up = bridge.edited(base, {"Likes humor": "positive"})
    down = bridge.edited(base, {"Dislikes humor": "positive"})  # the negative label, set: the same dimension, negative
    assert bridge.map_profile(up) == "Likes humor" and bridge.map_profile(down) == "Dislikes humor"
    tokens = reader.soft_tokens(np.stack([base, up, down]))
    assert not np.allclose(tokens[1], tokens[2]) and not np.allclose(tokens[0], tokens[1])


def test_generate_follows_preferences_and_persona(official_labels, policy, tmp_path, capsys):
    args = ["generate", "--model", policy["policy"], "--prompt", "Any advice on packing?", "--max-new-tokens", "4",
            "--temperature", "0", "--preference", "Likes travel=positive", "--preference", "Concise communication style=negative"]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    assert "preferences: Detailed communication style, Likes travel (as 3 soft tokens)" in captured.err
    assert captured.out.endswith("\n")  # the (random-model) answer
    # A model without a bridge: the persona's directions through the official rule, then the edits.
    plain_model = tmp_path / "plain"
    interop.save_native(policy["params"], policy["config"], plain_model, tokenizer=policy["tok"])
    persona = policy["records"][0]
    (tmp_path / "persona.json").write_text(json.dumps(persona))
    assert cli.main(["generate", "--model", str(plain_model), "--prompt", "Hi?", "--max-new-tokens", "2",
                     "--persona", str(tmp_path / "persona.json"), "--preference", "Likes science=neutral"]) == 0
    want = prefs.official_profile_direction(data.full_history(persona).directions())
    want[prefs.lookup("Likes science")[0].index] = 0.5
    assert f"preferences: {prefs.profile_text(want)}\n" in capsys.readouterr().err


def test_learned_profile_is_the_bridges_map_labels(policy):
    reader = bridge.PersonaBridge(bridge.load(policy["policy"]), policy["tok"])
    mode = evaluation.resolve_mode("pba_text", profile="learned", bridge=reader)
    # --policy-layout train: the layout `alignx train` renders a PBA record with that profile in.
    train_layout = evaluation.resolve_mode("pba_text", profile="learned", bridge=reader, layout="train")
    profiles = []
    for index, record in enumerate(policy["records"]):
        history = data.full_history(record)
        want = bridge.map_profile(reader.distributions([history], [record])[0])
        assert mode.policy_render(record, index)(history) == data.pba_prompt(record["prompt"], want, evaluation=True)
        _, render = data.PromptFormat(kind="pba", profile="precomputed", history="full").persona(
            {**record, prefs.PROFILE: want}, np.random.default_rng(0))
        trained_on = render(history)
        assert train_layout.policy_render(record, index)(history) == trained_on != \
            mode.policy_render(record, index)(history)
        profiles.append(want)
    assert any(profiles)  # the random bridge marks some dimension, so the check above sees labels
    assert eval_cli.PROFILE_SOURCES == evaluation.PROFILE_SOURCES  # the CLI's choices
    assert eval_cli.REFERENCE_PROMPTS == evaluation.REFERENCE_PROMPTS
    with pytest.raises(InputError, match="'learned' goes with a preference bridge"):
        evaluation.PbaTextMode(profile="learned")
    with pytest.raises(InputError, match="'learned' goes with a preference bridge"):
        evaluation.PbaTextMode(profile="official", bridge=reader)


def test_learned_profiles_of_a_chunk_come_from_batched_bridge_passes_with_the_same_labels(policy):
    reader = bridge.PersonaBridge(bridge.load(policy["policy"]), policy["tok"])
    records = policy["records"]
    histories = [data.full_history(record) for record in records]
    single = [bridge.map_profile(reader.distributions([h], [r])[0]) for h, r in zip(histories, records)]
    calls, distributions = [], reader.distributions
    reader.distributions = lambda hs, rs=None: calls.append(len(hs)) or distributions(hs, rs)
    mode = evaluation.PbaTextMode(profile="learned", bridge=reader)
    mode.prepare(records, histories)
    passes = -(-len(records) // evaluation_modes.PROFILE_BATCH)
    assert calls == [evaluation_modes.PROFILE_BATCH] * passes  # padded: one compiled shape
    for index, (record, history, want) in enumerate(zip(records, histories, single)):
        assert mode.policy_render(record, index)(history) == data.pba_prompt(record["prompt"], want, evaluation=True)
    assert len(calls) == passes  # rendering looked the profiles up, it ran no bridge pass of its own
    other = data.full_history(records[0])  # a history `prepare` did not see: a pass of its own
    mode.policy_render(records[0], 0)(other)
    assert calls[-1] == 1


def test_alignx_eval_profile_learned_reads_another_models_bridge(policy, tmp_path, capsys):
    plain = tmp_path / "plain"  # the policy without a bridge; the profiles come from --bridge
    interop.save_native(policy["params"], policy["config"], plain, tokenizer=policy["tok"])
    out = tmp_path / "eval"
    args = ["eval", "--policy", str(plain), "--reference", str(plain), "--data", str(policy["data"]),
            "--mode", "pba_text", "--profile", "learned", "--max-length", "512"]
    assert cli.main([*args, "--bridge", policy["policy"], "--out", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["bridge"]["conditioning"] == "soft" and run["bridge"]["model"]["source"] == policy["policy"]
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    reader = bridge.PersonaBridge(bridge.load(policy["policy"]), policy["tok"])
    model = (policy["params"], policy["config"])
    want = evaluation.score_records(policy["records"], policy=model, reference=model, tokenizer=policy["tok"],
                                    mode=evaluation.PbaTextMode(profile="learned", bridge=reader),
                                    seq_lengths=(256, 512))
    assert [s["policy_chosen_logp"] for s in scores] == pytest.approx([w["policy_chosen_logp"] for w in want],
                                                                      abs=1e-4)
    capsys.readouterr()
    for extra, message in (
            ([], f"--profile learned needs a preference bridge: --policy {plain} has none"),
            (["--profile", "official", "--bridge", policy["policy"]],
             "--bridge goes with --mode pba_text --profile learned")):
        assert cli.main([*args, *extra, "--out", str(tmp_path / "refused")]) == 2
        assert f"error: {message}" in capsys.readouterr().err
        assert not (tmp_path / "refused").exists()
