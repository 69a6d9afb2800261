"""Fixtures of the evaluation tests: the byte-level toy tokenizer (tests/data's pattern), tiny
random-init models, and short persona-sorted records in the AlignX schema."""
import jax
import pytest

from alignx_jax import preferences as prefs
from alignx_jax.models import llama


class ByteTokenizer:
    """Bytes -> ids 3..258; BOS 1, EOS 2. The chat template adds no BOS, so the packer must."""

    bos_token_id, eos_token_id, vocab_size = 1, 2, 259

    def encode(self, text, add_special_tokens=False):
        assert add_special_tokens is False
        return [b + 3 for b in text.encode("utf-8")]

    def decode(self, ids, skip_special_tokens=False):
        return bytes(i - 3 for i in ids if i >= 3).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        assert tokenize is False and add_generation_prompt
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"


@pytest.fixture(scope="session")
def byte_tokenizer():
    return ByteTokenizer()


@pytest.fixture(scope="session")
def tiny_models():
    """(policy, reference): two tiny Llamas with different random weights, (params, config) each."""
    config = llama.LlamaConfig.tiny(vocab_size=320)
    init = jax.jit(llama.init_params, static_argnums=0)
    return (init(config, jax.random.key(1)), config), (init(config, jax.random.key(2)), config)


def direction(*positive):
    """A 90-dim direction with the given dimension indices positive, the rest neutral."""
    return [1.0 if i in positive else 0.5 for i in range(prefs.NUM_DIMENSIONS)]


def make_records(per_persona=4, personas=("friendly", "unfriendly")):
    """Short records sorted by persona (like the benchmark files): UGC items, pairs with directions,
    demographics; lengths vary so batches get several row lengths."""
    records = []
    for p, persona in enumerate(personas):
        for i in range(per_persona):
            records.append({
                "prompt": f"Post {i}: what about topic {i}?" + " more" * (i % 3),
                "chosen": f"{persona} answer {i}" + "!" * i,
                "rejected": f"plain answer {i}",
                "ground_truth_persona": persona,
                prefs.DIRECTION: direction(p, 10 + p),
                prefs.DEMOGRAPHICS: f"A {persona} person.",
                prefs.UGC: [{"prompt": f"q{j}", "comment": f"{persona} c{j}", prefs.DIRECTION: direction(p)}
                            for j in range(1 + i % 3)],
                prefs.PAIRS: [{"prompt": f"pq{j}", "chosen": f"{persona} yes", "rejected": "no",
                               prefs.DIRECTION: direction(10 + p)} for j in range(2)],
            })
    return records


@pytest.fixture
def records():
    return make_records()
