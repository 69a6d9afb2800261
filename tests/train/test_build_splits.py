"""A run's splits on several processes: each process decodes only its share of the training records,
and the shares put together are the one-process training list (the same held-out draw and limit)."""
import pytest

from alignx_jax import data
from alignx_jax.preferences import RecordError
from alignx_jax.train import config_from_dict
from alignx_jax.train import data as train_data


def _config(path, **file):
    return config_from_dict({"data": {"synthetic": {"users": 2, "records_per_user": 3, "history_items": 1},
                                      "files": [{"path": str(path), **file}]}}).data


@pytest.fixture(scope="module")
def records():
    return data.synthetic_records(12, seed=5, records_per_user=2, history_items=1)


def test_the_shares_make_up_the_one_process_splits(tmp_path, records):
    path = tmp_path / "train.parquet"
    data.write_records(records, path, rows_per_group=5)
    config = _config(path, heldout_per_persona=1, limit=14)
    # The reference: the whole file decoded, split as the records themselves say.
    synthetic = data.synthetic_records(2, seed=0, records_per_user=3, history_items=1)
    train_ids, heldout_ids = data.heldout_split(records, 1, seed=0)
    file_train = [records[i] for i in train_ids]
    expected = synthetic + [file_train[i] for i in data.take_evenly(file_train, 14)]
    one = train_data.build_splits(config, 0)
    assert one.train == expected and one.heldout == [records[i] for i in heldout_ids]
    for count in (2, 3):
        shares = [train_data.build_splits(config, 0, share=(i, count)) for i in range(count)]
        for index, split in enumerate(shares):
            assert len(split.train) == len(expected)
            assert split.own_train == expected[index::count]
            assert [split.train[p] for p in range(index, len(expected), count)] == expected[index::count]
            assert split.heldout == one.heldout
        with pytest.raises(LookupError, match=f"training record 1 belongs to process 1's share, not to this "
                                              f"process's \\(0 of {count}\\)"):
            shares[0].train[1]


def test_a_bad_record_stops_only_the_process_whose_share_holds_it(tmp_path, records):
    bad = [dict(r) for r in records]
    bad[5]["chosen"] = ""  # training position 6 + 5 = 11 after the 6 synthetic records: process 1 of 2
    path = tmp_path / "train.parquet"
    data.write_records(bad, path, rows_per_group=4)
    config = _config(path)
    assert len(train_data.build_splits(config, 0, share=(0, 2)).own_train) == 15  # of 6 + 24
    for share in ((1, 2), (0, 1)):
        with pytest.raises(RecordError, match=r"train\.parquet: record 5: 'chosen' is empty"):
            train_data.build_splits(config, 0, share=share)


def test_the_pipeline_reads_only_its_share(tmp_path, records, byte_tokenizer):
    path = tmp_path / "train.parquet"
    data.write_records(records, path)
    split = train_data.build_splits(_config(path), 0, share=(1, 2))
    config = data.PackingConfig(rows=2, seq_lengths=(4096,), max_pairs_per_row=2)
    sources = [int(s) for batch in data.packed_batches(split.train, tokenizer=byte_tokenizer, config=config,
                                                       shard_index=1, shard_count=2)
               for s, valid in zip(batch.pair_source, batch.pair_valid) if valid]
    assert sorted(sources) == list(range(1, len(split.train), 2))


def test_fewer_records_than_processes_is_refused():
    config = config_from_dict({"data": {"synthetic": {"users": 1, "records_per_user": 1}}}).data
    with pytest.raises(Exception, match="holds 1 training records, fewer than the 2 processes"):
        train_data.build_splits(config, 0, share=(0, 2))
