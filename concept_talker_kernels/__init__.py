"""Native CPU decode kernels for Concept-Talker's fast runners (`modeling_concept_talker.fast_thinker`).

Installed with the `concept-talker` package, never copied into a Hub repository: a checkpoint loaded as remote code
uses these kernels only where this package is installed, and plain PyTorch otherwise. One C++ source
(`fast_thinker.cpp`) is built per instruction set (AVX-512, AVX2 + FMA + F16C) with `torch.utils.cpp_extension`,
cached per user in a directory only that user can write, and verified before every load (`loader`).

    from concept_talker_kernels import choose_kernel
    kernel, why = choose_kernel()          # $CONCEPT_TALKER_KERNEL=auto|avx512|avx2|torch, else the CPU's best
    kernel, why = choose_kernel("avx2")    # force a path
"""

from .loader import (
    ABI_VERSION,
    ENV_CACHE_DIR,
    ENV_KERNEL,
    ISAS,
    LAYER_SLOTS,
    MAX_TOKENS,
    Kernel,
    KernelFallbackWarning,
    KernelUnavailable,
    ModelStruct,
    UntrustedCacheDir,
    choose_kernel,
    cpu_flags,
    default_cache_dir,
    describe_cpu,
    fallback_cache_dir,
    load_kernel,
    make_model_struct,
    open_verified_library,
    read_bandwidth,
    requested_kernel,
    resolve_cache_dir,
    supported_isas,
    trusted_cache_dir,
)

__all__ = [
    "ABI_VERSION", "ENV_CACHE_DIR", "ENV_KERNEL", "ISAS", "LAYER_SLOTS", "MAX_TOKENS", "Kernel",
    "KernelFallbackWarning", "KernelUnavailable", "ModelStruct", "UntrustedCacheDir", "choose_kernel", "cpu_flags",
    "default_cache_dir", "describe_cpu", "fallback_cache_dir", "load_kernel", "make_model_struct",
    "open_verified_library", "read_bandwidth", "requested_kernel", "resolve_cache_dir", "supported_isas",
    "trusted_cache_dir",
]
