"""FastThinkerRunner against the reference ThinkerRunner on small random Qwen2 thinkers, on every native kernel this
machine can run (AVX-512 and AVX2: an AVX-512 CPU runs both) and on plain PyTorch.

A kernel test is skipped only where this CPU cannot run that instruction set (the skip says which flags it lacks);
on a CPU that can, a kernel that fails to build fails the test.

Tolerances:
- fp32 compute: logits and hidden states within 1e-4 of the reference (both are fp32; only the summation order
  differs, measured ~1e-6), greedy tokens identical.
- bf16 compute: the reference is the fp32 thinker (the exact function). The fast runner must be no further from it
  than transformers' own bf16 forward (ThinkerRunner on the thinker cast to bf16) is, times 1.5. Greedy tokens may
  only differ from the fp32 ones on near ties: the fast runner's pick must score within the bf16 error bound of the
  reference's best logit.
- int8 weights (per output channel): each kernel within 0.3% (of the largest logit) of the torch path on the same
  int8 snapshot (fp32 activations there, 16-bit fixed point in the kernels), and no further from the fp32 thinker
  than 4x transformers' bf16 forward is (measured 1.5x and 2x on these two thinkers).
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

import concept_talker_kernels
from configuration import load_preset
from modeling_concept_talker.fast_thinker import FastThinkerRunner, effective_linear, quantize_rows
from modeling_concept_talker.thinker_runner import ThinkerRunner

FP32_ATOL = 1e-4
ISAS = concept_talker_kernels.ISAS  # ("avx512", "avx2")


def _isa_or_skip(isa: str) -> str:
    """`isa` if this CPU can run it (building it if needed: a build failure fails the test), else skip saying why."""
    if isa not in concept_talker_kernels.supported_isas():
        missing = concept_talker_kernels.loader.missing_cpu_flags(isa)
        pytest.skip(f"this CPU cannot run the {isa} kernel (it lacks {', '.join(missing) or 'x86-64 Linux'})")
    concept_talker_kernels.load_kernel(isa)
    return isa


def _gqa_config() -> Qwen2Config:
    """Several layers, 4 query heads per kv head, untied lm_head, odd widths (kernel tails) and a small vocab."""
    return Qwen2Config(
        vocab_size=1000,
        hidden_size=128,
        intermediate_size=200,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )


def _thinker(name: str) -> torch.nn.Module:
    config = load_preset("tiny").thinker_config if name == "tiny" else _gqa_config()
    torch.manual_seed(0)
    thinker = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # random biases and norms, so the test sees them used
        for name_, param in thinker.named_parameters():
            if name_.endswith("bias") or "norm" in name_:
                param.add_(0.1 * torch.randn_like(param))
    return thinker


@pytest.fixture(scope="module", params=["tiny", "gqa"])
def thinker(request):
    return _thinker(request.param)


VARIANTS = {
    "avx512": dict(backend="avx512"),
    "avx512-static-shared": dict(backend="avx512", schedule="static", weights="share"),
    "avx2": dict(backend="avx2"),
    "avx2-static-shared": dict(backend="avx2", schedule="static", weights="share"),
    "torch": dict(backend="torch"),
}
BACKENDS = list(ISAS) + ["torch"]


def _backend(name: str) -> str:
    return name if name == "torch" else _isa_or_skip(name)


def _variant(name: str) -> dict:
    _backend(VARIANTS[name]["backend"])
    return VARIANTS[name]


def _run(runner, prompt: torch.Tensor, steps: int, embed=None):
    """Prefill `prompt` then decode greedily: (list of (logits, hidden) per append, generated tokens)."""
    embed = embed or runner.embed
    outputs = [runner.append(embed(prompt))]
    tokens = []
    for _ in range(steps):
        token = outputs[-1][0].argmax(-1, keepdim=True)
        tokens.append(token)
        outputs.append(runner.append(embed(token)))
    return outputs, torch.cat(tokens, dim=1)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fp32_matches_reference(thinker, variant):
    prompt = torch.randint(0, thinker.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(1))
    reference, ref_tokens = _run(ThinkerRunner(thinker), prompt, 20)
    fast = FastThinkerRunner(thinker, max_length=64, dtype=torch.float32, **_variant(variant))
    outputs, tokens = _run(fast, prompt, 20)
    assert torch.equal(tokens, ref_tokens)
    assert fast.length == 29
    for (logits, hidden), (ref_logits, ref_hidden) in zip(outputs, reference):
        assert logits.dtype == torch.float32 and logits.shape == ref_logits.shape
        assert hidden.shape == ref_hidden.shape
        torch.testing.assert_close(logits, ref_logits, atol=FP32_ATOL, rtol=FP32_ATOL)
        torch.testing.assert_close(hidden, ref_hidden, atol=FP32_ATOL, rtol=FP32_ATOL)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bf16_as_close_as_transformers_bf16(thinker, variant):
    prompt = torch.randint(0, thinker.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(2))
    truth_runner = ThinkerRunner(thinker)
    thinker_bf16 = copy.deepcopy(thinker).to(torch.bfloat16)
    hf_bf16 = ThinkerRunner(thinker_bf16)
    fast = FastThinkerRunner(thinker, max_length=64, **_variant(variant))
    embed = truth_runner.embed  # same fp32 inputs for all three
    worst_hf = worst_fast = worst_hidden_hf = worst_hidden_fast = 0.0
    token = None
    for step in range(12):
        inputs = embed(prompt if step == 0 else token)
        ref_logits, ref_hidden = truth_runner.append(inputs)
        hf_logits, hf_hidden = hf_bf16.append(inputs)
        logits, hidden = fast.append(inputs)
        assert hidden.dtype == torch.bfloat16
        worst_hf = max(worst_hf, (hf_logits - ref_logits).abs().max().item())
        worst_fast = max(worst_fast, (logits - ref_logits).abs().max().item())
        worst_hidden_hf = max(worst_hidden_hf, (hf_hidden.float() - ref_hidden).abs().max().item())
        worst_hidden_fast = max(worst_hidden_fast, (hidden.float() - ref_hidden).abs().max().item())
        # greedy: the fast pick is the reference's best, or a near tie within the bf16 error bound
        pick, best = logits.argmax(-1), ref_logits.argmax(-1)
        margin = ref_logits.gather(-1, best[:, None]) - ref_logits.gather(-1, pick[:, None])
        assert (margin <= 2 * 1.5 * worst_hf).all(), (step, margin)
        token = best[:, None]  # both continue with the reference token
    assert worst_fast <= 1.5 * worst_hf, (worst_fast, worst_hf)
    assert worst_hidden_fast <= 1.5 * worst_hidden_hf, (worst_hidden_fast, worst_hidden_hf)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, "int8"])
def test_chunked_prefill_equals_one_shot(thinker, dtype, isa):
    """Chunks of 7, 13 and 20, and one 40-position append (longer than a native step: it runs as native steps of
    32 and 8), on the kernel, against one 40-position append through torch GEMMs; then one decode step."""
    prompt = torch.randint(0, thinker.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(3))
    kwargs = dict(weights="int8", dtype=torch.bfloat16) if dtype == "int8" else dict(dtype=dtype)
    reference = FastThinkerRunner(thinker, max_length=64, backend="torch", **kwargs)
    one_shot = FastThinkerRunner(thinker, max_length=64, backend=_isa_or_skip(isa), **kwargs)
    chunked = FastThinkerRunner(thinker, max_length=64, backend=isa, **kwargs)

    def no_torch_steps(*args):
        raise AssertionError("an append on the kernel fell back to the torch path")

    one_shot._step_torch = chunked._step_torch = no_torch_steps
    logits_ref, hidden_ref = reference.append(reference.embed(prompt))
    logits_one, hidden_one = one_shot.append(one_shot.embed(prompt))
    hidden_chunks = []
    for piece in prompt.split([7, 13, 20], dim=1):
        logits_chunked, hidden = chunked.append(chunked.embed(piece))
        hidden_chunks.append(hidden)
    # fp32: summation order only; bf16 and int8: the two paths round intermediate values differently
    tol = FP32_ATOL if dtype == torch.float32 else 3e-2
    for logits, hidden in ((logits_one, hidden_one), (logits_chunked, torch.cat(hidden_chunks, 1))):
        torch.testing.assert_close(logits, logits_ref, atol=tol, rtol=tol)
        torch.testing.assert_close(hidden.float(), hidden_ref.float(), atol=tol, rtol=tol)
    token = logits_ref.argmax(-1, keepdim=True)
    next_ref, _ = reference.append(reference.embed(token))
    for runner in (one_shot, chunked):
        next_logits, _ = runner.append(runner.embed(token))
        torch.testing.assert_close(next_logits, next_ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("batch, positions", [(2, 17), (3, 31), (2, 40)])
def test_long_batched_append_runs_natively_in_steps(thinker, isa, batch, positions):
    """An append of more than `native_max_tokens` (batch x positions) runs as native steps, down to a last step of
    one position per row, and equals the torch path."""
    embeds = torch.randn(batch, positions, thinker.config.hidden_size, generator=torch.Generator().manual_seed(5))
    mask = torch.ones(batch, positions, dtype=torch.long)
    mask[1, :3] = 0  # left padding in one row
    native = FastThinkerRunner(thinker, batch_size=batch, max_length=64, dtype=torch.float32, backend=_isa_or_skip(isa))
    reference = FastThinkerRunner(thinker, batch_size=batch, max_length=64, dtype=torch.float32, backend="torch")
    logits, hidden = native.append(embeds, mask)
    ref_logits, ref_hidden = reference.append(embeds, mask)
    torch.testing.assert_close(logits, ref_logits, atol=FP32_ATOL, rtol=FP32_ATOL)
    keep = mask.bool()
    torch.testing.assert_close(hidden[keep], ref_hidden[keep], atol=FP32_ATOL, rtol=FP32_ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_with_left_padding(thinker, backend):
    """Two conversations of different lengths, left padded, against each one alone and against ThinkerRunner."""
    vocab = thinker.config.vocab_size
    generator = torch.Generator().manual_seed(4)
    long, short = torch.randint(0, vocab, (1, 8), generator=generator), torch.randint(0, vocab, (1, 5), generator=generator)
    ids = torch.cat([long, torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1)])
    mask = torch.tensor([[1] * 8, [0, 0, 0] + [1] * 5])
    kwargs = dict(max_length=64, dtype=torch.float32, backend=_backend(backend))
    batch = FastThinkerRunner(thinker, batch_size=2, **kwargs)
    reference = ThinkerRunner(thinker, batch_size=2)
    logits, hidden = batch.append(batch.embed(ids), mask)
    ref_logits, ref_hidden = reference.append(reference.embed(ids), mask)
    torch.testing.assert_close(logits, ref_logits, atol=FP32_ATOL, rtol=FP32_ATOL)
    torch.testing.assert_close(hidden[mask.bool()], ref_hidden[mask.bool()], atol=FP32_ATOL, rtol=FP32_ATOL)
    singles = [FastThinkerRunner(thinker, **kwargs) for _ in range(2)]
    single_outputs = [runner.append(runner.embed(row)) for runner, row in zip(singles, (long, short))]
    for row, (single_logits, single_hidden) in enumerate(single_outputs):
        torch.testing.assert_close(logits[row], single_logits[0], atol=FP32_ATOL, rtol=FP32_ATOL)
        torch.testing.assert_close(hidden[row, -single_hidden.shape[1] :], single_hidden[0], atol=FP32_ATOL, rtol=FP32_ATOL)
    for _ in range(4):  # decode both rows together: one token each, no padding
        tokens = logits.argmax(-1, keepdim=True)
        logits, hidden = batch.append(batch.embed(tokens))
        ref_logits, _ = reference.append(reference.embed(tokens))
        torch.testing.assert_close(logits, ref_logits, atol=FP32_ATOL, rtol=FP32_ATOL)
        for row, runner in enumerate(singles):
            single_logits, single_hidden = runner.append(runner.embed(tokens[row : row + 1]))
            torch.testing.assert_close(logits[row], single_logits[0], atol=FP32_ATOL, rtol=FP32_ATOL)
            torch.testing.assert_close(hidden[row], single_hidden[0], atol=FP32_ATOL, rtol=FP32_ATOL)
    assert torch.equal(batch.positions, torch.tensor([12, 9]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_lora_is_folded(backend):
    from peft import LoraConfig, inject_adapter_in_model

    thinker = _thinker("gqa")
    base = FastThinkerRunner(thinker, max_length=32, dtype=torch.float32, backend="torch")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=targets), thinker)
    torch.manual_seed(5)
    with torch.no_grad():
        for name, param in thinker.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    thinker.eval()
    assert any(hasattr(module, "lora_A") for module in thinker.modules())
    prompt = torch.randint(0, thinker.config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(6))
    fast = FastThinkerRunner(thinker, max_length=32, dtype=torch.float32, backend=_backend(backend))
    reference = ThinkerRunner(thinker)
    logits = None
    for step in range(4):
        ids = prompt if step == 0 else logits.argmax(-1, keepdim=True)
        logits, hidden = fast.append(fast.embed(ids))
        ref_logits, ref_hidden = reference.append(reference.embed(ids))
        torch.testing.assert_close(logits, ref_logits, atol=FP32_ATOL, rtol=FP32_ATOL)
        torch.testing.assert_close(hidden, ref_hidden, atol=FP32_ATOL, rtol=FP32_ATOL)
        if step == 0:
            prompt_logits = logits
    base_logits, _ = base.append(base.embed(prompt))
    assert (base_logits - prompt_logits).abs().max() > 1e-2  # the adapters matter, so the check above means something
    q = thinker.model.layers[0].self_attn.q_proj
    weight, bias = effective_linear(q)
    x = torch.randn(3, weight.shape[1])
    torch.testing.assert_close(x @ weight.T + bias, q(x), atol=1e-5, rtol=1e-5)


def test_max_length_error():
    thinker = _thinker("tiny")
    fast = FastThinkerRunner(thinker, max_length=8)
    fast.append(fast.embed(torch.zeros(1, 6, dtype=torch.long)))
    fast.append(fast.embed(torch.zeros(1, 2, dtype=torch.long)))
    assert fast.length == 8
    with pytest.raises(ValueError, match="max_length"):
        fast.append(fast.embed(torch.zeros(1, 1, dtype=torch.long)))
    assert fast.length == 8  # nothing was written
    fast.reset()
    logits, _ = fast.append(fast.embed(torch.zeros(1, 3, dtype=torch.long)))
    assert fast.length == 3 and torch.isfinite(logits).all()


def test_backend_choice():
    thinker = _thinker("tiny")
    assert FastThinkerRunner(thinker, backend="torch").backend == "torch"
    config = load_preset("tiny").thinker_config
    config.head_dim = 8  # not a multiple of 16: the kernel declines, "auto" falls back to torch
    config.num_attention_heads, config.hidden_size = 8, 64
    odd = AutoModelForCausalLM.from_config(config).eval()
    assert FastThinkerRunner(odd, max_length=16).backend == "torch"
    with pytest.raises(RuntimeError, match="head_dim"):
        FastThinkerRunner(odd, max_length=16, backend="native")
    with pytest.raises(ValueError, match="backend"):
        FastThinkerRunner(thinker, backend="cuda")
    with pytest.raises(ValueError, match="weights"):
        FastThinkerRunner(thinker, weights="int4")


@pytest.mark.parametrize("isa", ISAS)
def test_kernel_switch(isa, monkeypatch):
    """`backend=<isa>` and `CONCEPT_TALKER_KERNEL=<isa>` both run that instruction set's kernel; "torch" forces
    plain PyTorch; the runner says which code runs."""
    thinker = _thinker("tiny")
    assert FastThinkerRunner(thinker, max_length=16, backend=_isa_or_skip(isa)).kernel.split("-")[0] == isa
    monkeypatch.setenv("CONCEPT_TALKER_KERNEL", isa)
    runner = FastThinkerRunner(thinker, max_length=16)
    assert runner.backend == "native" and runner.kernel.split("-")[0] == isa
    monkeypatch.setenv("CONCEPT_TALKER_KERNEL", "torch")
    assert FastThinkerRunner(thinker, max_length=16).kernel == "torch"


def test_quantize_rows():
    weight = torch.randn(37, 50) * torch.linspace(0.01, 3, 37)[:, None]
    weight[5] = 0.0  # an all-zero row
    q, scale = torch.empty(37, 50, dtype=torch.int8), torch.empty(37)
    quantize_rows(weight, q, scale, block_rows=8)
    assert q.abs().max() <= 127 and (q.abs().amax(dim=1)[torch.arange(37) != 5] == 127).all()
    assert scale[5] == 1.0 and (q[5] == 0).all()
    assert ((q.float() * scale[:, None] - weight).abs() <= scale[:, None] / 2 + 1e-6).all()


@pytest.mark.parametrize("isa", ISAS)
def test_int8_kernel_matches_torch_int8(thinker, isa):
    """The kernel's int8 path against the torch path on the same int8 snapshot, decoding greedily."""
    prompt = torch.randint(0, thinker.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(7))
    native = FastThinkerRunner(thinker, max_length=64, weights="int8", backend=_isa_or_skip(isa))
    reference = FastThinkerRunner(thinker, max_length=64, weights="int8", backend="torch")
    assert native.lm_weight.dtype == torch.int8 and native.layers[0]["qkv_w"].dtype == torch.int8
    outputs, tokens = _run(native, prompt, 12)
    ref_outputs, ref_tokens = _run(reference, prompt, 12)
    assert torch.equal(tokens, ref_tokens)
    for (logits, hidden), (ref_logits, ref_hidden) in zip(outputs, ref_outputs):
        scale = ref_logits.abs().max()
        assert (logits - ref_logits).abs().max() <= 3e-3 * scale
        assert hidden.dtype == torch.bfloat16
        torch.testing.assert_close(hidden.float(), ref_hidden.float(), atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_close_to_the_fp32_thinker(thinker, backend):
    prompt = torch.randint(0, thinker.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(8))
    truth = ThinkerRunner(thinker)
    hf_bf16 = ThinkerRunner(copy.deepcopy(thinker).to(torch.bfloat16))
    int8 = FastThinkerRunner(thinker, max_length=64, weights="int8", backend=_backend(backend))
    weight_bytes = FastThinkerRunner(thinker, max_length=64, backend="torch").weight_bytes_per_token()
    assert int8.weight_bytes_per_token() < 0.6 * weight_bytes  # int8 + scales vs bf16
    worst_hf = worst_int8 = 0.0
    token = None
    for step in range(8):
        inputs = truth.embed(prompt if step == 0 else token)
        ref_logits, _ = truth.append(inputs)
        hf_logits, _ = hf_bf16.append(inputs)
        logits, _ = int8.append(inputs)
        worst_hf = max(worst_hf, (hf_logits - ref_logits).abs().max().item())
        worst_int8 = max(worst_int8, (logits - ref_logits).abs().max().item())
        token = ref_logits.argmax(-1, keepdim=True)
    assert worst_int8 <= 4 * worst_hf, (worst_int8, worst_hf)


def test_int8_embedding_of_a_tied_thinker():
    thinker = _thinker("tiny")
    assert thinker.config.tie_word_embeddings
    runner = FastThinkerRunner(thinker, max_length=16, weights="int8", backend="torch")
    assert runner.tied and runner.embed_weight.dtype == torch.int8
    ids = torch.tensor([[1, 5, 9]])
    exact = thinker.get_input_embeddings()(ids)
    embedded = runner.embed(ids)
    assert embedded.dtype == torch.bfloat16
    step = runner.embed_scale[ids][..., None]
    assert ((embedded.float() - exact).abs() <= step / 2 + exact.abs() / 128).all()


def test_turns_share_one_weight_snapshot_until_a_weight_changes(tmp_path):
    """make_runner keeps the fast runner's weight snapshot on the model: a second turn reuses it (no copy), runs
    from an empty cache of its own, and a training step (weights changed in place) makes a fresh snapshot."""
    from modeling_concept_talker import ConceptTalkerForConditionalGeneration
    from modeling_concept_talker.generation import SpokenGenerationConfig, make_runner

    config = load_preset("tiny")
    model = ConceptTalkerForConditionalGeneration(config).eval()
    settings = SpokenGenerationConfig(thinker_runner="fast")
    first = make_runner(model, 1, settings, max_length=64)
    embeds = torch.randn(1, 5, config.thinker_config.hidden_size)
    logits_first, _ = first.append(embeds)
    second = make_runner(model, 2, settings, max_length=32)
    assert second.layers[0]["qkv_w"].data_ptr() == first.layers[0]["qkv_w"].data_ptr()
    assert second.length == 0 and second.k_cache[0].data_ptr() != first.k_cache[0].data_ptr()
    logits_second, _ = second.append(embeds.expand(2, -1, -1))
    torch.testing.assert_close(logits_second[0], logits_first[0])

    with torch.no_grad():
        model.thinker.lm_head.weight.add_(1.0)  # what an optimizer step does
    third = make_runner(model, 1, settings, max_length=64)
    assert third.lm_weight.data_ptr() != first.lm_weight.data_ptr()
    logits_third, _ = third.append(embeds)
    assert not torch.allclose(logits_third, logits_first)


def test_avx512_without_bf16_dot_products(thinker, monkeypatch):
    """AVX-512 CPUs without AVX512-BF16 (Skylake-X to Ice Lake) widen bf16 weights to fp32: built and tested here by
    hiding the CPU's bf16 and VNNI flags (an AVX512-BF16 CPU runs that code too)."""
    _isa_or_skip("avx512")
    flags = concept_talker_kernels.cpu_flags() - {"avx512_bf16", "avx512_vnni"}
    monkeypatch.setattr(concept_talker_kernels.loader, "cpu_flags", lambda: flags)
    prompt = torch.randint(0, thinker.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(9))
    fast = FastThinkerRunner(thinker, max_length=64, dtype=torch.float32, backend="avx512")
    assert fast.kernel == "avx512"
    outputs, tokens = _run(fast, prompt, 8)
    reference, ref_tokens = _run(ThinkerRunner(thinker), prompt, 8)
    assert torch.equal(tokens, ref_tokens)
    for (logits, _), (ref_logits, _) in zip(outputs, reference):
        torch.testing.assert_close(logits, ref_logits, atol=FP32_ATOL, rtol=FP32_ATOL)
    bf16 = FastThinkerRunner(thinker, max_length=64, backend="avx512")
    bf16_torch = FastThinkerRunner(thinker, max_length=64, backend="torch")
    logits, _ = bf16.append(bf16.embed(prompt))
    torch.testing.assert_close(logits, bf16_torch.append(bf16_torch.embed(prompt))[0], atol=3e-2, rtol=3e-2)
    int8 = FastThinkerRunner(thinker, max_length=64, weights="int8", backend="avx512")
    int8_torch = FastThinkerRunner(thinker, max_length=64, weights="int8", backend="torch")
    logits, _ = int8.append(int8.embed(prompt))
    ref_logits, _ = int8_torch.append(int8_torch.embed(prompt))
    assert (logits - ref_logits).abs().max() <= 3e-3 * ref_logits.abs().max()
