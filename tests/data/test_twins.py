"""Twin units: records with the same post and responses and opposite labels train in one batch."""
import dataclasses
import re

import numpy as np
import pytest

from alignx_jax import cli, data
from alignx_jax import preferences as prefs
from alignx_jax.errors import InputError
from alignx_jax.train import data as train_data
from alignx_jax.train.config import DataConfig


def _record(prompt, chosen, rejected, persona):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "ground_truth_persona": persona}


def test_synthetic_mirror_twins_are_matched_in_pairs():
    records = data.synthetic_records(6, seed=0, records_per_user=3, history_items=1)
    units = data.twin_units(records)
    assert units == [(i, i + 1) for i in range(0, len(records), 2)]
    twins = data.twin_of(units, len(records))
    for i, j in units:
        assert records[i][prefs.CHOSEN] == records[j][prefs.REJECTED]
        assert twins[i] == j and twins[j] == i


def test_shared_prompts_are_matched_in_file_order_and_the_rest_stay_single():
    records = [_record("p", "a", "b", "friendly"), _record("p", "a", "b", "friendly"), _record("q", "c", "d", "x"),
               _record("p", "b", "a", "unfriendly"), _record("p", "a", "b", "friendly"), _record("p", "b", "a", "u"),
               _record("r", "e", "e", "x")]
    assert data.twin_units(records) == [(0, 3), (1, 5), (2,), (4,), (6,)]
    assert sorted(i for unit in data.twin_units(records) for i in unit) == list(range(7))


def test_twin_slots_point_at_the_twin_in_the_same_batch_only():
    twins = np.array([3, -1, 4, 0, 2], np.int32)
    source = np.array([0, 3, 2, 1, -1], np.int32)  # record 4 (2's twin) is in another batch
    np.testing.assert_array_equal(data.twin_slots(source, twins), [1, 0, -1, -1, -1])


def test_packed_batches_keep_every_unit_in_one_batch_and_resume_exactly(byte_tokenizer):
    records = data.synthetic_records(12, seed=3, records_per_user=2, history_items=0)
    units = data.twin_units(records)
    twins = data.twin_of(units, len(records))
    config = data.PackingConfig(rows=3, seq_lengths=(2048,), max_pairs_per_row=1)  # 3 slots: a unit never splits
    dataset = data.packed_batches(records, tokenizer=byte_tokenizer, config=config, seed=5, shard_index=0,
                                  shard_count=1, units=units, num_epochs=2)
    batches = list(dataset)
    seen = []
    for batch in batches:
        sources = batch.pair_source[batch.pair_valid]
        assert len(sources) == 2  # one unit per batch: a second does not fit the third slot
        assert twins[sources[0]] == sources[1]
        np.testing.assert_array_equal(data.twin_slots(batch.pair_source, twins)[:2], [1, 0])
        seen += sources.tolist()
    assert sorted(seen) == sorted(list(range(len(records))) * 2)
    shuffled = [b.pair_source[0] for b in batches[:6]]
    assert shuffled != sorted(shuffled)  # the units are shuffled
    iterator = iter(dataset)
    for _ in range(3):
        next(iterator)
    state = iterator.get_state()
    rest = [b.pair_source.tolist() for b in iterator]
    again = iter(dataset)
    again.set_state(state)
    assert [b.pair_source.tolist() for b in again] == rest


UNIT_TOO_LONG = (r"records \[[01], [01]\] \(a twin unit, packed whole\) need \[\d+, \d+\] tokens, more than one batch "
                 r"holds \(1 rows of 512 tokens, 2 pairs per row\): raise data.max_pairs_per_row, data.rows or "
                 r"data.seq_lengths, or set data.twins: false")


def _long_twins():
    return [_record("p" * 300, "a" * 60, "b" * 60, "friendly"), _record("p" * 300, "b" * 60, "a" * 60, "unfriendly")]


def test_a_unit_too_long_for_one_batch_is_refused_before_training(byte_tokenizer):
    records = _long_twins()  # 2 slots (rows 1 x 2 pairs), but a 512-token row holds one of these pairs
    config = DataConfig(rows=1, seq_lengths=(512,), max_pairs_per_row=2, twins=True, prompt="ica")
    with pytest.raises(InputError, match=UNIT_TOO_LONG):
        train_data.check_units_fit(records, data.twin_units(records), tokenizer=byte_tokenizer, config=config, seed=0)
    fitting = dataclasses.replace(config, seq_lengths=(2048,))
    train_data.check_units_fit(records, data.twin_units(records), tokenizer=byte_tokenizer, config=fitting, seed=0)


def test_a_unit_too_long_met_mid_run_gives_the_same_one_line_error(byte_tokenizer):
    records = _long_twins()
    config = data.PackingConfig(rows=1, seq_lengths=(512,), max_pairs_per_row=2)
    dataset = data.packed_batches(records, tokenizer=byte_tokenizer, config=config, seed=0, shard_index=0,
                                  shard_count=1, units=data.twin_units(records), num_epochs=1)
    with pytest.raises(InputError, match=UNIT_TOO_LONG) as error:
        next(iter(dataset))
    # Grain appends a note on its traceback to the message; the CLI's one line leaves it out.
    assert re.fullmatch(UNIT_TOO_LONG, cli._one_line(str(error.value)))


def test_every_epoch_reads_the_records_by_their_own_positions(byte_tokenizer):
    """A second epoch's pairs carry the records' positions (0..n-1), as units do: the persona draw and
    a precomputed reference value belong to the record, whatever the epoch."""
    records = data.synthetic_records(4, seed=1, records_per_user=2, history_items=0)
    config = data.PackingConfig(rows=4, seq_lengths=(2048,), max_pairs_per_row=1)
    for units in (None, data.twin_units(records)):
        dataset = data.packed_batches(records, tokenizer=byte_tokenizer, config=config, seed=0, num_epochs=3,
                                      shard_index=0, shard_count=1, units=units)
        sources = [s for b in dataset for s in b.pair_source[b.pair_valid].tolist()]
        assert sorted(sources) == sorted(list(range(len(records))) * 3)
