"""Packing: the shared-prefix row scores chosen and rejected exactly as the two-row layout does."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignx_jax import data
from alignx_jax.data import CHOSEN, PAD, PROMPT, REJECTED


def random_pair(rng, prompt_len, chosen_len, rejected_len):
    ids = lambda n: rng.integers(3, 259, n).astype(np.int32)  # noqa: E731
    return data.EncodedPair(np.concatenate([[1], ids(prompt_len - 1)]).astype(np.int32),
                            np.append(ids(chosen_len - 1), 2).astype(np.int32),
                            np.append(ids(rejected_len - 1), 2).astype(np.int32))


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(0)
    return [random_pair(rng, 9, 5, 4), random_pair(rng, 4, 3, 6), random_pair(rng, 12, 1, 2)]


def token_logprobs(batch, params, cfg):
    """log p(targets[t] | tokens[<=t]) at every position, under the batch's mask and positions."""
    from alignx_jax.models import llama

    @jax.jit
    def run(params, tokens, positions, segment_ids, roles, targets):
        mask = data.attention_mask(segment_ids, roles, positions)
        logits = llama.forward(params, tokens, cfg, positions=positions, attention_mask=mask)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]

    return np.asarray(run(params, batch.tokens, batch.positions, batch.segment_ids, batch.roles, batch.targets))


def test_shared_prefix_logprobs_equal_two_row_layout(pairs):
    llama = pytest.importorskip("alignx_jax.models.llama")
    cfg = llama.LlamaConfig.tiny()
    params = llama.init_params(cfg, jax.random.key(0))
    # Row 0 holds two pairs, row 1 one pair and padding.
    packed = data.pack_rows([pairs[:2], pairs[2:]], seq_len=48)
    plain = data.pack_two_rows(pairs, seq_len=16)
    packed_logp, plain_logp = token_logprobs(packed, params, cfg), token_logprobs(plain, params, cfg)
    for p in range(len(pairs)):
        for mask in ("chosen_mask", "rejected_mask"):
            got = packed_logp[getattr(packed, mask) & (packed.pair_ids == p)]
            want = plain_logp[getattr(plain, mask) & (plain.pair_ids == p)]
            assert got.shape == want.shape == (len(pairs[p].chosen if mask == "chosen_mask" else pairs[p].rejected),)
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    for mask in ("chosen_mask", "rejected_mask"):
        packed_sums = jax.jit(data.pair_sums, static_argnums=3)(packed_logp, getattr(packed, mask), packed.pair_ids, 3)
        plain_sums = data.pair_sums(plain_logp, getattr(plain, mask), plain.pair_ids, 3)
        np.testing.assert_allclose(np.asarray(packed_sums), plain_sums, atol=1e-4, rtol=0)
        np.testing.assert_allclose(plain_sums, [plain_logp[getattr(plain, mask) & (plain.pair_ids == p)].sum() for p in range(3)],
                                   rtol=1e-6)


def test_scored_positions_read_the_next_token(pairs):
    for batch in (data.pack_rows([pairs[:2], pairs[2:]], seq_len=48), data.pack_two_rows(pairs, seq_len=16)):
        t = batch.shape[1]
        for p, pair in enumerate(pairs):
            for mask, response in ((batch.chosen_mask, pair.chosen), (batch.rejected_mask, pair.rejected)):
                rows, cols = np.nonzero(mask & (batch.pair_ids == p))
                assert np.all(cols < t - 1)
                # logp of the token at t+1 is read at position t: the scored next tokens are the response.
                np.testing.assert_array_equal(batch.tokens[rows, cols + 1], response)
                np.testing.assert_array_equal(batch.targets[rows, cols], response)
        assert not np.any(batch.chosen_mask & batch.rejected_mask)
        assert np.all(batch.targets[~(batch.chosen_mask | batch.rejected_mask)] == 0)


def test_layout_positions_and_roles(pairs):
    batch = data.pack_rows([pairs[:2]], seq_len=40)
    a, b = pairs[0], pairs[1]
    la = a.packed_length  # 9 + 5 + 1 + 4 = 19
    assert la == 19
    np.testing.assert_array_equal(batch.tokens[0, :la], np.concatenate([a.prompt, a.chosen, a.prompt[-1:], a.rejected]))
    np.testing.assert_array_equal(batch.positions[0, :la], [*range(9), *range(9, 14), 8, *range(9, 13)])
    np.testing.assert_array_equal(batch.roles[0, :la], [PROMPT] * 9 + [CHOSEN] * 5 + [REJECTED] * 5)
    lb = b.packed_length
    np.testing.assert_array_equal(batch.positions[0, la:la + lb], [*range(4), *range(4, 7), 3, *range(4, 10)])
    np.testing.assert_array_equal(batch.segment_ids[0], [1] * la + [2] * lb + [0] * (40 - la - lb))
    np.testing.assert_array_equal(batch.roles[0, la + lb:], PAD)
    np.testing.assert_array_equal(batch.pair_ids[0], [0] * la + [1] * lb + [-1] * (40 - la - lb))


def expected_mask(rows_of_pairs, seq_len):
    """The visibility rule written per pair from block offsets: prompt causal; chosen sees the
    whole prompt and earlier chosen; rejected (copy first) sees prompt[:P-1] and earlier rejected."""
    mask = np.zeros((len(rows_of_pairs), seq_len, seq_len), bool)
    for row, pairs in enumerate(rows_of_pairs):
        s = 0
        for pair in pairs:
            n_p, n_c, n_r = len(pair.prompt), len(pair.chosen), len(pair.rejected)
            prompt, chosen = range(s, s + n_p), range(s + n_p, s + n_p + n_c)
            rejected = range(s + n_p + n_c, s + n_p + n_c + 1 + n_r)
            for q in prompt:
                mask[row, q, s:q + 1] = True
            for q in chosen:
                mask[row, q, s:s + n_p] = True
                mask[row, q, chosen.start:q + 1] = True
            for q in rejected:
                mask[row, q, s:s + n_p - 1] = True
                mask[row, q, rejected.start:q + 1] = True
            s += pair.packed_length
    return mask


def test_attention_mask_matches_the_rule_numpy_and_jit(pairs):
    rows = [pairs[:2], pairs[2:]]
    batch = data.pack_rows(rows, seq_len=48)
    want = expected_mask(rows, 48)
    np.testing.assert_array_equal(data.attention_mask(batch.segment_ids, batch.roles, batch.positions), want)
    jitted = jax.jit(data.attention_mask)(jnp.asarray(batch.segment_ids), jnp.asarray(batch.roles), jnp.asarray(batch.positions))
    np.testing.assert_array_equal(np.asarray(jitted), want)
    # Two-row layout: plain causal within each row's non-padding tokens.
    plain = data.pack_two_rows(pairs, seq_len=16)
    lengths = (plain.segment_ids > 0).sum(-1)
    causal = np.tril(np.ones((16, 16), bool))
    for row, n in enumerate(lengths):
        valid = np.arange(16) < n
        np.testing.assert_array_equal(data.attention_mask(plain.segment_ids, plain.roles, plain.positions)[row],
                                      causal & valid[:, None] & valid[None, :])


def test_pack_errors(pairs):
    with pytest.raises(ValueError, match="row 0: pairs need 33 tokens, more than seq_len 30"):
        data.pack_rows([pairs[:2]], seq_len=30)
    with pytest.raises(ValueError, match="pair 0: 14 tokens exceed seq_len 10"):
        data.pack_two_rows(pairs, seq_len=10)


def test_pack_stream_buckets_and_keeps_every_pair_in_order():
    rng = np.random.default_rng(1)
    pairs = [random_pair(rng, int(rng.integers(2, 30)), int(rng.integers(1, 20)), int(rng.integers(1, 20))) for _ in range(40)]
    config = data.PackingConfig(rows=2, seq_lengths=(32, 64, 128), max_pairs_per_row=3)
    batches = list(data.pack_stream([*pairs[:5], None, *pairs[5:]], config))
    for batch in batches:
        assert batch.shape[0] == 2 and batch.shape[1] in (32, 64, 128)
        assert batch.pair_valid.shape == (6,)
        assert batch.segment_ids.max() <= 3
        # The static length is the smallest bucket that holds the longest row.
        assert batch.shape[1] == config.bucket(int((batch.segment_ids > 0).sum(-1).max()))
        assert not batch.pair_valid[int(batch.pair_valid.sum()):].any()
    seen = [b.targets[b.chosen_mask & (b.pair_ids == p)].tolist() for b in batches for p in range(int(b.pair_valid.sum()))]
    assert seen == [p.chosen.tolist() for p in pairs]


def test_packing_config_errors():
    with pytest.raises(ValueError, match="strictly increasing"):
        data.PackingConfig(rows=1, seq_lengths=(64, 32))
    with pytest.raises(ValueError, match="exceed the largest static length 64"):
        data.PackingConfig(rows=1, seq_lengths=(32, 64)).bucket(65)


class TestEncodePair:
    """Over-long persona context: whole history items go first, then left truncation; responses
    are dropped or truncated by option; every change is counted."""

    def history(self, n):
        return data.History(pairs=tuple({"prompt": f"post {i}", "chosen": "a" * 20, "rejected": "b" * 20} for i in range(n)))

    def encode(self, tok, history, chosen="yes", rejected="no", **kw):
        stats = data.PackingStats()
        render = lambda h: data.ica_train_prompt("Q?", h)  # noqa: E731
        return data.encode_pair(tok, render, history, chosen, rejected, stats=stats, **kw), stats

    def test_fits_unchanged(self, byte_tokenizer):
        pair, stats = self.encode(byte_tokenizer, self.history(3), max_length=4096)
        text = data.chat_text(byte_tokenizer, data.ica_train_prompt("Q?", self.history(3)))
        assert pair.prompt.tolist() == [1] + byte_tokenizer.encode(text)
        assert pair.chosen.tolist() == byte_tokenizer.encode("yes") + [2]
        assert stats == data.PackingStats(pairs=1)

    def test_drops_whole_items_first(self, byte_tokenizer):
        full, _ = self.encode(byte_tokenizer, self.history(3), max_length=4096)
        two, _ = self.encode(byte_tokenizer, self.history(2), max_length=4096)
        pair, stats = self.encode(byte_tokenizer, self.history(3), max_length=two.packed_length)
        np.testing.assert_array_equal(pair.prompt, two.prompt)
        assert pair.packed_length <= two.packed_length < full.packed_length
        assert stats == data.PackingStats(pairs=1, history_items_dropped=1)

    def test_then_left_truncates_after_bos(self, byte_tokenizer):
        none, _ = self.encode(byte_tokenizer, self.history(0), max_length=4096)
        pair, stats = self.encode(byte_tokenizer, self.history(2), max_length=40)
        assert pair.packed_length == 40
        cut = len(none.prompt) - len(pair.prompt)
        np.testing.assert_array_equal(pair.prompt, np.concatenate([none.prompt[:1], none.prompt[1 + cut:]]))
        assert stats == data.PackingStats(pairs=1, history_items_dropped=2, prompts_left_truncated=1, prompt_tokens_cut=cut)

    def test_long_response_is_dropped_or_truncated_and_counted(self, byte_tokenizer):
        long = "x" * 100
        pair, stats = self.encode(byte_tokenizer, self.history(1), chosen=long, max_length=64, min_prompt_tokens=16)
        assert pair is None and stats == data.PackingStats(pairs_dropped=1)
        pair, stats = self.encode(byte_tokenizer, self.history(1), chosen=long, max_length=64, min_prompt_tokens=16,
                                  on_long_response="truncate")
        assert pair.packed_length == 64
        assert pair.rejected.tolist() == byte_tokenizer.encode("no") + [2]
        assert pair.chosen.tolist() == byte_tokenizer.encode(long)[:len(pair.chosen)]  # cut: no EOS
        assert stats.responses_truncated == 1 and stats.pairs == 1
        with pytest.raises(ValueError, match="on_long_response must be one of"):
            self.encode(byte_tokenizer, self.history(1), max_length=64, on_long_response="cut")


def test_batch_contract_shapes_and_dtypes(pairs):
    # One pair per row: the longest row (19 tokens) picks the 32 bucket; the fourth slot is empty.
    config = data.PackingConfig(rows=4, seq_lengths=(32, 64), max_pairs_per_row=1)
    (batch,) = data.pack_stream(pairs, config)
    int_fields = ("tokens", "positions", "segment_ids", "roles", "targets", "pair_ids")
    for name in int_fields + ("chosen_mask", "rejected_mask"):
        array = getattr(batch, name)
        assert array.shape == (4, 32) and array.dtype == (np.int32 if name in int_fields else np.bool_), name
    assert batch.pair_valid.tolist() == [True, True, True, False]
    assert (batch.segment_ids[3] == 0).all()
    assert batch.pair_source.dtype == np.int32 and batch.pair_source.tolist()[3] == -1
    assert batch.as_dict().keys() == {*int_fields, "chosen_mask", "rejected_mask", "pair_valid", "pair_source"}
