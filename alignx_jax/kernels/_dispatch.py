"""Which implementation computes the tiles: chosen by backend unless the caller names one."""
import dataclasses
import functools

import jax

from alignx_jax.kernels import _pallas_gpu, _pallas_tpu, _xla

IMPLS = ("auto", "xla", "pallas_gpu", "pallas_tpu")

# Tile sizes per implementation (tokens, vocabulary). The XLA loop wants big tiles so each step is
# one efficient matmul (CPU: 1024 x 1024 fp32 logits = 4 MiB, 40 MiB of temporaries at the
# 16k x 2048 x 128k benchmark); Pallas tiles must fit on chip (untuned: no TPU/GPU here).
_DEFAULT_BLOCKS = {"xla": (1024, 1024), "pallas_gpu": (64, 128), "pallas_tpu": (256, 512)}


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Static choice of implementation and tiling; hashable so it can be a jit/custom_vjp static.

    ``impl``: "auto" (Pallas on TPU; on a GPU Pallas when a tile fits its shared memory at the hidden
    size, else the XLA loop, see `resolved_for`; the XLA loop on CPU), "xla", "pallas_gpu" or
    "pallas_tpu". ``block_tokens``/``block_vocab``: tile shape (None: the implementation's default).
    ``interpret``: run a Pallas kernel in interpret mode (CPU tests).
    """

    impl: str = "auto"
    block_tokens: int | None = None
    block_vocab: int | None = None
    interpret: bool = False

    def __post_init__(self):
        if self.impl not in IMPLS:
            raise ValueError(f"token_logprobs: impl={self.impl!r} is not one of {IMPLS}")
        for name in ("block_tokens", "block_vocab"):
            size = getattr(self, name)
            if size is not None and (not isinstance(size, int) or size < 1):
                raise ValueError(f"token_logprobs: {name}={size!r} must be a positive int or None")

    def resolved(self) -> "KernelConfig":
        """This config with ``impl`` and block sizes made concrete for the default backend."""
        impl = self.impl
        if impl == "auto":
            # Without D known (`resolved_for` knows it): GPUs take the XLA loop; the Pallas GPU kernel's
            # untuned tiles asked 475 KB of shared memory at D = 576 on an H100 (232 KB; measured).
            impl = {"tpu": "pallas_tpu"}.get(jax.default_backend(), "xla")
        tokens, vocab = _DEFAULT_BLOCKS[impl]
        return KernelConfig(impl, self.block_tokens or tokens, self.block_vocab or vocab, self.interpret)

    def resolved_for(self, d: int, itemsize: int) -> "KernelConfig":
        """`resolved()`, with the Pallas TPU tiles chosen from the target chip's VMEM at hidden size
        `d` when the caller named none (interpret mode keeps the defaults)."""
        if self.impl == "auto" and jax.default_backend() == "gpu":
            # The Triton kernel when a tile fits the GPU's shared memory at this D (SmolLM2's 576 does on
            # an H100; Llama's 4096 does not: its [bn, D] + [D, bv] blocks alone exceed 228 KiB).
            tiles = _pallas_gpu.choose_tiles(d, itemsize, _pallas_gpu.shared_memory_bytes())
            impl = "xla" if tiles is None else "pallas_gpu"
            return dataclasses.replace(self, impl=impl).resolved_for(d, itemsize)
        config = self.resolved()
        untiled = self.block_tokens is None or self.block_vocab is None
        if config.impl == "pallas_tpu" and not self.interpret and untiled:
            bn, bv = _pallas_tpu.choose_tiles(d, itemsize, _pallas_tpu.device_vmem_bytes())
            config = KernelConfig(config.impl, self.block_tokens or bn, self.block_vocab or bv, self.interpret)
        if config.impl == "pallas_gpu" and not self.interpret and untiled:
            tiles = _pallas_gpu.choose_tiles(d, itemsize, _pallas_gpu.shared_memory_bytes()) or (16, 16)
            config = KernelConfig(config.impl, self.block_tokens or tiles[0], self.block_vocab or tiles[1],
                                  self.interpret)
        return config


def implementation(config: KernelConfig):
    """``(forward_stats, backward_grads)`` of a resolved config, with its tiling bound."""
    module = {"xla": _xla, "pallas_gpu": _pallas_gpu, "pallas_tpu": _pallas_tpu}[config.impl]
    options = dict(block_tokens=config.block_tokens, block_vocab=config.block_vocab)
    if config.impl != "xla":
        options["interpret"] = config.interpret
    return functools.partial(module.forward_stats, **options), functools.partial(module.backward_grads, **options)
