"""Tokenizers (with their chat templates) always come from the model's own files, via transformers."""
from __future__ import annotations

import functools
import os
import pathlib

from alignx_jax.errors import MissingFileError
from alignx_jax.interop import gguf_file


def _cache_dir() -> pathlib.Path:
    root = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(root) / "alignx_jax"


@functools.lru_cache(maxsize=8)
def load_tokenizer(path_or_alias: str | os.PathLike):
    """The transformers tokenizer of the embedded alias, a Hugging Face folder or our model folder.

    Building the tokenizer from GGUF metadata takes ~10 s, so the converted tokenizer is cached
    on disk, keyed by the GGUF file's size and modification time.
    """
    import transformers

    if str(path_or_alias) == gguf_file.EMBEDDED_ALIAS:
        gguf = gguf_file.embedded_gguf_path()
        stat = gguf.stat()
        cached = _cache_dir() / f"tokenizer-{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"
        if (cached / "tokenizer_config.json").is_file():
            return transformers.AutoTokenizer.from_pretrained(cached)
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        try:
            tokenizer.save_pretrained(cached)
        except OSError:
            pass  # a read-only home only costs the next load its ~10 s
        return tokenizer
    folder = pathlib.Path(path_or_alias)
    if not (folder / "tokenizer_config.json").is_file() and not (folder / "tokenizer.json").is_file():
        raise MissingFileError(f"{folder}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
    return transformers.AutoTokenizer.from_pretrained(folder)
