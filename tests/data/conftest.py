"""Fixtures of the data tests: a byte-level toy tokenizer (ids < 512, so the tiny Llama can read them)."""
import pytest


class ByteTokenizer:
    """Bytes -> ids 3..258; BOS 1, EOS 2. The chat template adds no BOS, so the packer must."""

    bos_token_id, eos_token_id, vocab_size = 1, 2, 259

    def encode(self, text, add_special_tokens=False):
        assert add_special_tokens is False
        return [b + 3 for b in text.encode("utf-8")]

    def decode(self, ids):
        return bytes(i - 3 for i in ids if i >= 3).decode("utf-8")

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        assert tokenize is False and add_generation_prompt
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"


@pytest.fixture(scope="session")
def byte_tokenizer():
    return ByteTokenizer()
