"""`reference: precomputed` end to end: the run trains on the frozen reference's curve from a cache that
a second run reuses; the pass is written in pieces, so a killed pass resumes after its last piece
and ends with the values of a pass never killed; weights are hashed where they live."""
import dataclasses
import os
import signal

import jax
import numpy as np
import pytest

from alignx_jax import evaluation
from alignx_jax.models import sharding as model_sharding
from alignx_jax.train import config_from_dict, load_model, reference_cache, train
from alignx_jax.train.metrics import read_metrics
from alignx_jax.train.setup import SilentReporter, setup

TINY = {
    "seed": 0, "steps": 3, "checkpoint_every": 3, "log_every": 1,
    "model": {"name": "random", "preset": "tiny", "tokenizer": "smollm2-135m-instruct",
              "overrides": {"vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1}},
    "data": {"synthetic": {"users": 8, "records_per_user": 4, "history_items": 1},
             "rows": 4, "seq_lengths": [512], "max_pairs_per_row": 1, "scored_buckets": [2048]},
    "optimizer": {"lr": 1e-3, "warmup_steps": 1},
}


def test_a_precomputed_reference_trains_on_the_frozen_curve_and_is_reused(tmp_path, recorder):
    train(config_from_dict({**TINY, "out_dir": str(tmp_path / "frozen")}))
    cache = tmp_path / "cache"
    precomputed = {**TINY, "reference": "precomputed", "reference_cache_dir": str(cache)}
    train(config_from_dict({**precomputed, "out_dir": str(tmp_path / "first")}), recorder)
    frozen, first = ([row["loss"] for row in read_metrics(tmp_path / name)] for name in ("frozen", "first"))
    np.testing.assert_allclose(first, frozen, rtol=1e-5)
    (file,) = cache.iterdir()  # the arrays, and no pieces left behind
    assert file.name.startswith("reference_logps_") and file.suffix == ".npz"
    assert any(m.startswith("precomputing reference log-probs of 32 records") for m in recorder.messages)
    recorder.messages.clear()
    train(config_from_dict({**precomputed, "out_dir": str(tmp_path / "second")}), recorder)
    assert f"reference log-probs reused from {file}" in recorder.messages
    np.testing.assert_array_equal([row["loss"] for row in read_metrics(tmp_path / "second")], first)


def test_a_killed_pass_resumes_after_its_last_piece(tmp_path, monkeypatch):
    config = config_from_dict({**TINY, "out_dir": str(tmp_path / "run"), "reference": "precomputed",
                               "reference_cache_dir": str(tmp_path / "whole")})
    run = setup(config, SilentReporter())
    whole = reference_cache.precompute(run, print)
    monkeypatch.setattr(reference_cache, "PIECE_BATCHES", 2)
    scored = []
    score_records = evaluation.PairScorer.score_records

    def killed_after_two_pieces(self, params, model, batches, num_records, **kwargs):
        if len(scored) == 2:
            raise KeyboardInterrupt  # the kill
        scored.append(len(batches))
        return score_records(self, params, model, batches, num_records, **kwargs)

    monkeypatch.setattr(evaluation.PairScorer, "score_records", killed_after_two_pieces)
    run.config = dataclasses.replace(config, reference_cache_dir=str(tmp_path / "pieces"))
    with pytest.raises(KeyboardInterrupt):
        reference_cache.precompute(run, print)
    (pieces,) = (tmp_path / "pieces").iterdir()
    assert sorted(p.name for p in pieces.iterdir()) == ["000000.npz", "000001.npz"]
    messages = []
    scored.clear()
    monkeypatch.setattr(evaluation.PairScorer, "score_records", lambda self, *a, **k: (scored.append(len(a[2])),
                                                                                      score_records(self, *a, **k))[1])
    resumed = reference_cache.precompute(run, messages.append)
    assert "precomputing reference log-probs of 32 records (resuming after 2 pieces of 2 batches)" in messages
    assert sum(scored) == 8 - 4  # 32 records, 4 pairs a batch: 8 batches, 4 of them already in the pieces
    for name in reference_cache.NAMES:
        np.testing.assert_array_equal(resumed[name], whole[name])
    assert not np.isnan(whole["ref_chosen"]).any()
    assert [p.name for p in (tmp_path / "pieces").iterdir()] == [p.name for p in (tmp_path / "whole").iterdir()]


def test_the_weights_fingerprint_is_the_same_for_any_sharding_and_sees_one_bit():
    config = config_from_dict(TINY).model
    sharded = model_sharding.make_mesh(1, 4, 1)
    one = model_sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    params, _, _ = load_model(config, sharded, 0)
    assert any(len(leaf.sharding.device_set) == 4 and not leaf.sharding.is_fully_replicated
               for leaf in jax.tree.leaves(params))
    single = jax.device_put(params, jax.sharding.NamedSharding(one, jax.sharding.PartitionSpec()))
    assert reference_cache.weights_fingerprint(params, sharded) == reference_cache.weights_fingerprint(single, one)
    leaves, tree = jax.tree.flatten(single)
    index = next(i for i, leaf in enumerate(leaves) if leaf.ndim == 2)
    bits = np.asarray(leaves[index]).view(np.uint32).copy()
    bits[3, 5] ^= 1  # one bit of one weight
    changed = jax.tree.unflatten(tree, leaves[:index] + [bits.view(np.float32)] + leaves[index + 1:])
    assert reference_cache.weights_fingerprint(changed, one) != reference_cache.weights_fingerprint(single, one)


def test_sigterm_during_the_pass_keeps_its_pieces_and_the_rerun_resumes(tmp_path, monkeypatch, recorder):
    config = config_from_dict({**TINY, "out_dir": str(tmp_path / "run"), "reference": "precomputed",
                               "reference_cache_dir": str(tmp_path / "cache")})
    monkeypatch.setattr(reference_cache, "PIECE_BATCHES", 2)
    score_records = evaluation.PairScorer.score_records
    calls = []

    def preempted_in_the_first_piece(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler sets the flag; the piece still finishes
        return score_records(self, *args, **kwargs)

    monkeypatch.setattr(evaluation.PairScorer, "score_records", preempted_in_the_first_piece)
    assert train(config, recorder) == {"preempted": True, "step": 0}
    assert "SIGTERM: the reference pass kept its pieces; rerun to resume" in recorder.messages
    (pieces,) = (tmp_path / "cache").iterdir()
    assert [p.name for p in pieces.iterdir()] == ["000000.npz"]
    recorder.messages.clear()
    summary = train(config, recorder)
    assert summary["steps"] == 3 and len(calls) == 4  # 8 batches: 1 piece before the SIGTERM, 3 after
    assert "precomputing reference log-probs of 32 records (resuming after 1 pieces of 2 batches)" in recorder.messages
