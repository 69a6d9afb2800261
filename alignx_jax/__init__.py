"""alignx_jax: personalized preference alignment (AlignX / AlignXpert) in JAX/Flax.

`alignx_jax.from_pretrained("smollm2-135m-instruct")` loads the embedded default model; a path
loads a Hugging Face folder or one of our model folders. Heavier submodules load on first use.
"""
import importlib

__version__ = "0.1.0"

_LAZY = {"from_pretrained": "alignx_jax.interop", "load_tokenizer": "alignx_jax.interop", "LlamaConfig": "alignx_jax.models.llama"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'alignx_jax' has no attribute {name!r}")


__all__ = ["from_pretrained", "load_tokenizer", "LlamaConfig", "__version__"]
