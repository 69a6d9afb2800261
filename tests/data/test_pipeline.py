"""TFDS builder `alignx` (array_record, no TensorFlow) and the Grain pipeline: determinism,
per-host sharding, exact resume."""
import json
import subprocess
import sys

import numpy as np
import pytest

from alignx_jax import data

CONFIG = data.PackingConfig(rows=2, seq_lengths=(2048, 4096), max_pairs_per_row=4)


@pytest.fixture(scope="module")
def records():
    return data.synthetic_records(8, seed=1, records_per_user=3, history_items=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory, records):
    manual, out = tmp_path_factory.mktemp("manual"), tmp_path_factory.mktemp("tfds")
    (manual / "train").mkdir()
    data.write_records(records[:10], manual / "train" / "a.parquet", rows_per_group=4)
    data.write_records(records[10:], manual / "train" / "b.parquet", rows_per_group=4)
    data.write_records(records[:5], manual / "psoups.json")
    return manual, out


def test_tfds_build_without_tensorflow(built, records):
    manual, out = built
    script = (
        "import sys, json; from alignx_jax import data\n"
        f"data.build_tfds('train', manual_dir={str(manual)!r}, data_dir={str(out)!r})\n"
        f"data.build_tfds('psoups', manual_dir={str(manual)!r}, data_dir={str(out)!r})\n"
        "print(json.dumps('tensorflow' in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "false"
    assert sorted(p.name for p in (out / "alignx" / "train" / "1.0.0").glob("*.array_record*"))
    train = data.TfdsRecords("train", data_dir=out)
    assert len(train) == len(records)
    assert [train[i] for i in range(len(train))] == records  # source order, records exact
    assert [data.TfdsRecords("psoups", data_dir=out)[i] for i in range(5)] == records[:5]


def test_tfds_missing_manual_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config 'prism': no prism/ folder"):
        data.build_tfds("prism", manual_dir=tmp_path, data_dir=tmp_path / "out")


def batches_of(iterator, n=None):
    out = []
    for batch in iterator:
        out.append(batch.as_dict())
        if n is not None and len(out) == n:
            break
    return out


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_grain_pipeline_is_deterministic_and_restores_exactly(records, byte_tokenizer):
    make = lambda: data.packed_batches(records, tokenizer=byte_tokenizer, config=CONFIG, seed=7,  # noqa: E731
                                       shard_index=0, shard_count=1)
    full = batches_of(iter(make()))
    assert len(full) >= 3
    assert_same_batches(full, batches_of(iter(make())))
    iterator = iter(make())
    batches_of(iterator, 2)
    state = json.loads(json.dumps(iterator.get_state()))  # the state survives a JSON checkpoint
    restored = iter(make())
    restored.set_state(state)
    assert_same_batches(batches_of(restored), full[2:])
    assert restored.stats.pairs == sum(int(b["pair_valid"].sum()) for b in full)
    other_seed = batches_of(iter(data.packed_batches(records, tokenizer=byte_tokenizer, config=CONFIG, seed=8,
                                                     shard_index=0, shard_count=1)))
    assert not np.array_equal(other_seed[0]["tokens"], full[0]["tokens"])


def test_grain_pipeline_shards_hosts_disjointly(records, byte_tokenizer):
    def prompts(shard_index, shard_count):
        dataset = data.packed_batches(records, tokenizer=byte_tokenizer, config=CONFIG, seed=7,
                                      shard_index=shard_index, shard_count=shard_count)
        out = []
        for batch in dataset:
            for p in range(int(batch.pair_valid.sum())):
                ids = batch.tokens[(batch.pair_ids == p) & (batch.roles == data.PROMPT)]
                out.append(byte_tokenizer.decode(ids).split("***Task***\n\n")[1].split("\n\n")[0])
        return out

    host0, host1 = prompts(0, 2), prompts(1, 2)
    assert len(host0) + len(host1) == len(records)
    assert sorted(host0 + host1) == sorted(r["prompt"] for r in records)
    with pytest.raises(ValueError, match=r"shard_index 2 must be in \[0, 2\)"):
        data.packed_batches(records, tokenizer=byte_tokenizer, config=CONFIG, shard_index=2, shard_count=2)


def test_tfds_records_feed_the_pipeline(built, records, byte_tokenizer):
    _, out = built
    source = data.TfdsRecords("train", data_dir=out)
    from_tfds = batches_of(iter(data.packed_batches(source, tokenizer=byte_tokenizer, config=CONFIG, seed=3,
                                                    shard_index=0, shard_count=1)))
    from_list = batches_of(iter(data.packed_batches(records, tokenizer=byte_tokenizer, config=CONFIG, seed=3,
                                                    shard_index=0, shard_count=1)))
    assert_same_batches(from_tfds, from_list)


def test_two_epochs_reshuffle_and_keep_hosts_disjoint(records, byte_tokenizer):
    def prompts(shard_index):
        dataset = data.packed_batches(records, tokenizer=byte_tokenizer, config=CONFIG, seed=7, num_epochs=2,
                                      shard_index=shard_index, shard_count=2)
        return [byte_tokenizer.decode(b.tokens[(b.pair_ids == p) & (b.roles == data.PROMPT)]).split("***Task***\n\n")[1]
                .split("\n\n")[0] for b in dataset for p in range(int(b.pair_valid.sum()))]

    host0, host1 = prompts(0), prompts(1)
    half = len(records) // 2
    assert len(host0) == len(host1) == 2 * half
    for epoch in (slice(0, half), slice(half, None)):
        assert sorted(host0[epoch] + host1[epoch]) == sorted(r["prompt"] for r in records)
    assert host0[:half] != host0[half:]


def test_prompt_formats_render_the_benchmark_layouts(shared_data_dir, byte_tokenizer):
    record = data.load_records(shared_data_dir / "psoups_friendly_unfriendly.json")[0][0]
    full = data.full_history(record)
    cases = [
        (data.PromptFormat(kind="pba", evaluation=True, history="full", profile="precomputed"),
         data.pba_prompt(record["prompt"], record["profile"], evaluation=True)),
        (data.PromptFormat(kind="ica", evaluation=True, history="full"), data.ica_eval_prompt(record["prompt"], full)),
        (data.PromptFormat(kind="ica", evaluation=False, history="full"), data.ica_train_prompt(record["prompt"], full)),
    ]
    for prompt_format, expected in cases:
        pair, stats = data.encode_record(record, 0, tokenizer=byte_tokenizer, prompt_format=prompt_format, seed=0,
                                         max_length=8192)
        assert byte_tokenizer.decode(pair.prompt) == data.chat_text(byte_tokenizer, expected)
        assert byte_tokenizer.decode(pair.chosen) == record["chosen"] and pair.chosen[-1] == byte_tokenizer.eos_token_id
        assert stats == data.PackingStats(pairs=1)
    with pytest.raises(ValueError, match=r"history items \[0, 1, 2, 3\] carry no 'Preference Direction'"):
        data.encode_record(record, 0, tokenizer=byte_tokenizer, prompt_format=data.PromptFormat(kind="pba", history="full"), seed=0,
                           max_length=8192)
    with pytest.raises(ValueError, match="kind must be one of"):
        data.PromptFormat(kind="rag")


def test_pair_source_names_each_pairs_record(records, byte_tokenizer):
    dataset = data.packed_batches(records, tokenizer=byte_tokenizer, config=CONFIG, seed=7)
    seen = []
    for batch in dataset:
        for p in range(int(batch.pair_valid.sum())):
            ids = batch.tokens[(batch.pair_ids == p) & (batch.roles == data.PROMPT)]
            prompt = byte_tokenizer.decode(ids).split("***Task***\n\n")[1].split("\n\n")[0]
            assert prompt == records[batch.pair_source[p]]["prompt"]
            seen.append(int(batch.pair_source[p]))
        assert (batch.pair_source[~batch.pair_valid] == -1).all()
    assert sorted(seen) == list(range(len(records)))
