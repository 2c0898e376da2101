"""What the benchmarks run besides the reference path: the native kernel paths to measure (`kernels_to_measure`) and
transformers' documented fast path for `generate()` (`CompiledForward`), the baseline the bench compares against."""

from __future__ import annotations

import torch


def kernels_to_measure(spec: str) -> list[str]:
    """`--kernel` as a list of `SpokenGenerationConfig.kernel` values ("all": every instruction set this CPU runs,
    fastest first, or "torch" where it runs none or the kernels package is missing)."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if names == ["all"]:
        try:
            from concept_talker_kernels import supported_isas
        except ImportError:
            return ["torch"]
        return supported_isas() or ["torch"]
    for name in names:
        if name not in ("auto", "avx512", "avx2", "torch"):
            raise SystemExit(f"--kernel takes avx512, avx2, torch, auto or all (comma-separated), got {name!r}.")
    return names


class CompiledForward:
    """transformers' documented fast path for `generate()` (docs: "LLM inference optimization"): a static
    key/value cache and `torch.compile` of the model's forward (`fullgraph=True`; "reduce-overhead" mode as the
    guide writes it, which on a CPU compiles without CUDA graphs). While the context is active, `thinker.forward`
    is the compiled one and `generate_kwargs` ask for the static cache."""

    generate_kwargs = {"cache_implementation": "static"}

    def __init__(self, thinker):
        self.thinker = thinker
        self.compiled = torch.compile(thinker.forward, mode="reduce-overhead", fullgraph=True)

    def __enter__(self):
        self.thinker.forward = self.compiled
        return self

    def __exit__(self, *exc):
        del self.thinker.forward  # the class's own forward again
