"""Fixtures of the training tests: a tiny random Llama and packed batches of synthetic users."""
import pytest

from alignx_jax import data


class ByteTokenizer:
    """Bytes -> ids 3..258 (BOS 1, EOS 2), so a tiny model with a 512 vocabulary reads them."""

    bos_token_id, eos_token_id = 1, 2

    def encode(self, text, add_special_tokens=False):
        return [b + 3 for b in text.encode("utf-8")]

    def decode(self, ids):
        return bytes(i - 3 for i in ids if i >= 3).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"


@pytest.fixture(scope="session")
def byte_tokenizer():
    return ByteTokenizer()


@pytest.fixture(scope="session")
def synthetic_batches(byte_tokenizer):
    """Four packed [2, 1024] batches of synthetic users (ICA training layout, no history: short rows)."""
    records = data.synthetic_records(8, seed=0, records_per_user=2, history_items=0)
    config = data.PackingConfig(rows=2, seq_lengths=(1024,), max_pairs_per_row=2)
    batches = list(data.packed_batches(records, tokenizer=byte_tokenizer, config=config, seed=0, shuffle=False,
                                       shard_index=0, shard_count=1))
    assert len(batches) >= 4
    return [b.as_dict() for b in batches[:4]]


class Recorder:
    """A loop reporter that keeps the messages (`train(config, reporter)`)."""

    def __init__(self):
        self.messages = []

    def start(self, total, completed): pass
    def step(self, step, row): pass
    def message(self, text): self.messages.append(text)
    def close(self): pass


@pytest.fixture
def recorder():
    return Recorder()
