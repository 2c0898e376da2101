"""Fast thinker decoding on CPU: a drop-in for `ThinkerRunner` that streams the weights at memory bandwidth.

Decoding one token reads every weight of the thinker once (about 1 GB for Qwen2.5-0.5B in bf16, the tied
embedding / lm_head matrix included), so its speed is bounded by memory bandwidth. transformers' eager forward
reaches about 30% of that bound on a 2-core CPU: its bf16 matrix-vector products run well below bandwidth, and a
few hundred small ops per token add overhead.

`FastThinkerRunner` snapshots the thinker's weights once (LoRA adapters folded in, `[q; k; v]` fused; bf16, fp32, or
int8 with one scale per output channel) into one block of memory laid out in reading order and backed by transparent
huge pages, owns a preallocated key/value cache, and runs each `append` in one of two ways:

- **native**: a compiled kernel runs the whole step for up to `native_max_tokens` new tokens in one OpenMP region:
  threads take chunks of ~128 KB of weight rows and stream each row once; fp32 residual stream, norms, RoPE,
  attention and logits; barriers yield the core when other processes compete for it. One build per instruction set,
  chosen at run time: AVX-512 (bf16 dot products on AVX512-BF16) or AVX2 + FMA + F16C. The kernel lives in the
  separate `concept_talker_kernels` package (installed with `concept-talker`, never part of a Hub repository's
  remote code), which builds it with `torch.utils.cpp_extension`, caches it per user and verifies it before loading.
- **torch**: the same computation in plain PyTorch ops (oneDNN GEMMs, SDPA, `_weight_int8pack_mm` or widened int8 weights), for
  longer appends and wherever the kernel is unavailable (the package not installed, no compiler, not x86-64 Linux,
  a CPU without AVX2, `CONCEPT_TALKER_KERNEL=torch`): same results within rounding.

Both paths share the cache layout, so they mix freely within one conversation.
"""

from __future__ import annotations

import copy
import logging
import mmap
from types import SimpleNamespace

import torch
from torch import nn
from torch.nn import functional as F

from .lora import is_lora_layer

try:  # the native kernels: a separate package, absent from remote code
    import concept_talker_kernels as _kernels
except ImportError:  # plain PyTorch
    _kernels = None

logger = logging.getLogger(__name__)

NATIVE_MAX_TOKENS = 64  # the kernel's per-step limit (its stack buffers hold 64 tokens)
LO_SPLIT_MAX_TOKENS = 4  # steps up to this many tokens use `lo_split`
INT8_PACKED_MAX_ROWS = 4  # the torch path multiplies this many rows or fewer with `_weight_int8pack_mm`
BACKENDS = ("auto", "native", "avx512", "avx2", "torch")
WEIGHT_FORMATS = ("copy", "share", "int8")
_W_BF16, _W_F32, _W_I8 = 0, 1, 2  # the kernel's weight formats
_NOT_INSTALLED = (
    "the concept_talker_kernels package is not installed (it comes with `pip install concept-talker`; a checkpoint "
    "loaded as remote code runs plain PyTorch without it)"
)


def load_native_kernel(kernel: str = "auto", warn: bool = True):
    """The native kernel to run, `(kernel, None)`, or `(None, why it is unavailable)`.

    `kernel`: "auto" (`$CONCEPT_TALKER_KERNEL` if set, else the fastest instruction set this CPU supports),
    "avx512", "avx2" or "torch". Builds the kernel on first use (seconds, once per machine and user, cached); a kernel
    that cannot be had gives one `KernelFallbackWarning` and `None`.
    """
    if kernel == "native":
        kernel = "auto"
    if _kernels is None:
        return None, _NOT_INSTALLED
    return _kernels.choose_kernel(kernel, warn=warn)


def native_read_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 7, threads: int | None = None,
                          kernel: str = "auto", clock=None) -> float | None:
    """Memory read bandwidth (bytes/s) as the native kernel streams: median of `repeats` reads of an `nbytes` block
    on transparent huge pages with `threads` threads (default torch's), timed by `clock` (default
    `time.perf_counter`). None when no kernel is available."""
    lib, _ = load_native_kernel(kernel, warn=False)
    if lib is None:
        return None
    return _kernels.read_bandwidth(lib, nbytes, repeats, threads or torch.get_num_threads(), clock=clock)


def kernel_cache_dir() -> str | None:
    """Where compiled kernels are kept (`$CONCEPT_TALKER_KERNEL_DIR`, else `~/.cache/concept_talker/kernels`), or
    None without the kernels package."""
    return None if _kernels is None else _kernels.default_cache_dir()


# ---- reading the thinker's weights ------------------------------------------------------------------------
@torch.no_grad()
def effective_linear(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight `[out, in]` and bias `[out]` (or None) of a linear layer, with peft LoRA adapters folded in.

    The result computes what the module computes in eval mode: the active, unmerged adapters' `scale * B @ A` is
    added to the base weight (and a `lora_bias` to the bias), in fp32. A plain `nn.Linear` gives its own tensors.
    """
    if not is_lora_layer(module):
        if not isinstance(module, nn.Linear):
            raise TypeError(f"expected a Linear layer, got {type(module).__name__}")
        return module.weight.detach(), None if module.bias is None else module.bias.detach()
    base = module.get_base_layer()
    if not isinstance(base, nn.Linear):
        raise NotImplementedError(
            f"LoRA on a {type(base).__name__} layer cannot be folded: merge the adapters first (merge_lora())."
        )
    weight = base.weight.detach().float().clone()
    bias = None if base.bias is None else base.bias.detach().float().clone()
    if not getattr(module, "disable_adapters", False):
        for name in module.active_adapters:
            if name not in module.lora_A or name in getattr(module, "merged_adapters", []):
                continue
            if getattr(module, "use_dora", {}).get(name, False):
                raise NotImplementedError("DoRA adapters cannot be folded here: merge them first (merge_lora()).")
            weight += module.get_delta_weight(name).float()
            if getattr(module, "lora_bias", {}).get(name, False) and module.lora_B[name].bias is not None:
                extra = module.lora_B[name].bias.detach().float() * module.scaling[name]
                bias = extra if bias is None else bias + extra
    return weight, bias


@torch.no_grad()
def quantize_rows(weight: torch.Tensor, out: torch.Tensor, scale: torch.Tensor, block_rows: int = 4096) -> None:
    """Symmetric int8 per output channel: `out[r] = round(weight[r] / scale[r])` in [-127, 127] with
    `scale[r] = max |weight[r]| / 127` (1 for an all-zero row). `weight [rows, cols]` any float dtype; `out`
    (int8) and `scale` (fp32) are written in place, `block_rows` rows at a time (bounded temporary memory)."""
    for start in range(0, weight.shape[0], block_rows):
        w = weight[start : start + block_rows].float()
        s = w.abs().amax(dim=1) / 127.0
        s = torch.where(s > 0, s, torch.ones_like(s))
        out[start : start + block_rows].copy_(torch.round(w / s[:, None]).clamp_(-127, 127).to(torch.int8))
        scale[start : start + block_rows].copy_(s)


def _int8_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`x [m, in]` fp32 times the int8 `weight [out, in]` scaled per row by `scale [out]`: `[m, out]` fp32.

    A few rows go through `torch._weight_int8pack_mm`; its cost grows with every row of `x` (on CPU 30x slower than
    one fp32 GEMM at 32 rows), so more rows widen the weight to fp32 for one GEMM."""
    if x.shape[0] <= INT8_PACKED_MAX_ROWS and hasattr(torch, "_weight_int8pack_mm"):
        try:
            return torch._weight_int8pack_mm(x, weight, scale)
        except RuntimeError:  # shapes the packed kernel does not take
            pass
    return F.linear(x, weight.float()) * scale


def _rms_weight(norm: nn.Module) -> torch.Tensor:
    return norm.weight.detach().float().contiguous()


def _linear_shape(module: nn.Module) -> tuple[int, int]:
    base = module.get_base_layer() if is_lora_layer(module) else module
    return tuple(base.weight.shape)


def _aligned(nbytes: int, alignment: int = 64) -> int:
    return (nbytes + alignment - 1) // alignment * alignment


class _Arena:
    """One block of memory for the weight matrices, filled in the order a decode step reads them.

    On Linux the block is private anonymous memory advised to use transparent huge pages: streaming ~1 GB through
    4 KB pages costs a TLB miss every 4 KB, about 15% of the step time on a 2-core EPYC.
    """

    HUGE_PAGE = 2 << 20

    def __init__(self, nbytes: int, device: torch.device):
        self.huge_pages = False  # advised; huge_page_bytes() says what the kernel granted
        buffer = None
        size = nbytes + self.HUGE_PAGE
        if device.type == "cpu" and all(hasattr(mmap, name) for name in ("MAP_PRIVATE", "MAP_ANONYMOUS", "MADV_HUGEPAGE")):
            try:
                # private: shared anonymous memory is shmem, which transparent huge pages usually skip
                block = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
                block.madvise(mmap.MADV_HUGEPAGE)
                buffer = torch.frombuffer(block, dtype=torch.uint8)  # keeps the block alive
                self.huge_pages = True
            except (OSError, ValueError):
                buffer = None
        if buffer is None:
            buffer = torch.empty(size, dtype=torch.uint8, device=device)
        self.buffer = buffer
        self.offset = (-buffer.data_ptr()) % self.HUGE_PAGE
        self.used = 0

    def take(self, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        nbytes = shape[0] * shape[1] * torch.empty(0, dtype=dtype).element_size()
        view = self.buffer[self.offset : self.offset + nbytes].view(dtype).view(shape)
        self.offset += _aligned(nbytes)
        self.used += _aligned(nbytes)
        return view

    def huge_page_bytes(self) -> int | None:
        """Bytes of the block the kernel backs with huge pages (Linux `/proc/self/smaps`), None if unknown."""
        address, inside = self.buffer.data_ptr(), False
        try:
            with open("/proc/self/smaps") as f:
                for line in f:
                    head = line.split(maxsplit=1)[0]
                    if "-" in head and not head.endswith(":"):
                        low, high = (int(x, 16) for x in head.split("-"))
                        inside = low <= address < high
                    elif inside and head == "AnonHugePages:":
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
        return None


# ---- the runner -----------------------------------------------------------------------------------------------
class FastThinkerRunner:
    """Incremental prefill and decoding of a Qwen2 thinker with a static cache; same interface as `ThinkerRunner`.

    The runner snapshots the thinker's weights when it is built (LoRA adapters folded in): later changes to the
    thinker are not seen. Positions, padding and the returned values follow `ThinkerRunner` exactly.

    Args:
        thinker: a `Qwen2ForCausalLM` (or a Llama-style causal LM with the same layer structure), on the CPU for the
            native kernel; with unmerged peft LoRA adapters or plain. A decoder without a token table
            (`model.embed_tokens` None, the talker's: `talker_as_causal_lm`) is fed embeddings only.
        batch_size: conversations run together.
        max_length: positions the cache holds (padding included); `append` beyond it raises a ValueError.
        dtype: compute dtype of the weights and the key/value cache, `torch.bfloat16` (default) or `torch.float32`
            (with `weights="int8"`: of the cache only). The residual stream, norms, attention and logits are fp32.
        backend: which code runs the steps. `"auto"` (default): the native kernel that `$CONCEPT_TALKER_KERNEL`
            names (`auto`, `avx512`, `avx2`, `torch`), else the fastest one this CPU supports; plain PyTorch, with
            one warning, where it cannot be had. `"native"`: the same choice, but raise if no kernel can be had.
            `"avx512"` or `"avx2"`: that instruction set's kernel, or raise. `"torch"`: plain PyTorch.
        native_max_tokens: steps with at most this many new tokens (batch x positions) run on the native kernel;
            longer prefills run on torch's GEMMs, which are faster once the work is compute-bound.
        lo_split: bf16 on AVX512-BF16, steps of at most 4 tokens (decoding): also multiply the weights by the
            activations' bf16 rounding error, so activations keep about 16 mantissa bits instead of 8. Longer steps
            are compute-bound and round the activations to bf16, as transformers' bf16 forward does.
        schedule: how the kernel's threads share each matrix: `"dynamic"` (chunks of about 128 KB handed out on
            demand, robust when other processes take CPU time) or `"static"` (one contiguous share per thread).
        weights: `"copy"` (default): the matrices are copied, in reading order, into one block of memory on
            transparent huge pages (about 15% faster decoding; costs one more copy of the weights when the thinker
            is already in `dtype`). `"share"`: use the thinker's own tensors where the dtype matches (only [q; k; v]
            is fused into a new tensor). `"int8"`: copied as int8 with one fp32 scale per output channel
            (symmetric, weight-only: activations stay fp32), half the bytes of bf16 to stream per token; the lm_head
            too (and the input embedding when tied to it).
    """

    def __init__(
        self,
        thinker: nn.Module,
        batch_size: int = 1,
        max_length: int = 4096,
        dtype: torch.dtype = torch.bfloat16,
        backend: str = "auto",
        native_max_tokens: int = 32,
        lo_split: bool = False,
        schedule: str = "dynamic",
        weights: str = "copy",
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(repr(b) for b in BACKENDS)}, got {backend!r}.")
        if weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights must be one of {', '.join(repr(w) for w in WEIGHT_FORMATS)}, got {weights!r}.")
        if dtype not in (torch.bfloat16, torch.float32):
            raise ValueError(f"dtype must be torch.bfloat16 or torch.float32, got {dtype}.")
        if schedule not in ("dynamic", "static"):
            raise ValueError(f"schedule must be 'dynamic' or 'static', got {schedule!r}.")
        self.schedule = schedule
        if not 1 <= native_max_tokens <= NATIVE_MAX_TOKENS:
            raise ValueError(f"native_max_tokens must be between 1 and {NATIVE_MAX_TOKENS}, got {native_max_tokens}.")
        config = thinker.config
        self.config = config
        self.batch_size = batch_size
        self.max_length = max_length
        self.dtype = dtype
        self.weight_format = weights
        self.native_max_tokens = native_max_tokens
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or self.hidden_size // self.num_heads
        self.intermediate_size = config.intermediate_size
        self.vocab_size = config.vocab_size
        self.eps = float(config.rms_norm_eps)
        self.scale = self.head_dim**-0.5
        self._check_supported(thinker, max_length)

        backbone = thinker.model
        device = thinker.lm_head.weight.device if hasattr(thinker.lm_head, "weight") else torch.device("cpu")
        self.device = device
        embed = backbone.embed_tokens  # None for a decoder fed embeddings only (the talker's)
        if embed is not None and (is_lora_layer(embed) or not isinstance(embed, nn.Embedding)):
            raise NotImplementedError("Adapters on the input embedding are not supported: merge them first.")
        tied = embed is not None and thinker.lm_head.weight is embed.weight and not is_lora_layer(thinker.lm_head)

        # The matrices a decode step streams, in reading order: [q; k; v], o, gate, up, down per layer, then lm_head.
        projections = [
            [(layer.self_attn, ("q_proj", "k_proj", "v_proj")), (layer.self_attn, ("o_proj",))]
            + [(layer.mlp, (name,)) for name in ("gate_proj", "up_proj", "down_proj")]
            for layer in backbone.layers
        ]
        shapes = [
            (sum(_linear_shape(getattr(parent, name))[0] for name in names), _linear_shape(getattr(parent, names[0]))[1])
            for layer in projections
            for parent, names in layer
        ] + [tuple(thinker.lm_head.weight.shape)]
        int8 = weights == "int8"
        weight_dtype = torch.int8 if int8 else dtype
        itemsize = torch.empty(0, dtype=weight_dtype).element_size()
        arena = None
        if weights in ("copy", "int8"):
            arena = _Arena(sum(_aligned(rows * cols * itemsize) for rows, cols in shapes), device)

        def matrix(sources: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
            """The matrices stacked by rows in the stored format, and their per-row scales (int8) or None."""
            if arena is None and len(sources) == 1:
                return sources[0].to(dtype).contiguous(), None  # no copy when the thinker already is in `dtype`
            rows, cols = sum(w.shape[0] for w in sources), sources[0].shape[1]
            if arena is not None:
                out = arena.take((rows, cols), weight_dtype)
            else:
                out = torch.empty(rows, cols, dtype=dtype, device=device)
            scale = torch.empty(rows, device=device) if int8 else None
            start = 0
            for w in sources:
                if int8:
                    quantize_rows(w, out[start : start + w.shape[0]], scale[start : start + w.shape[0]])
                else:
                    out[start : start + w.shape[0]].copy_(w)
                start += w.shape[0]
            return out, scale

        self.layers = []
        for layer, layer_projections in zip(backbone.layers, projections):
            (attn, qkv_names), _, _, _, _ = layer_projections
            qkv = [effective_linear(getattr(attn, name)) for name in qkv_names]
            qkv_b = None
            if any(b is not None for _, b in qkv):
                qkv_b = torch.cat([torch.zeros(w.shape[0], device=device) if b is None else b.float() for w, b in qkv])
            qkv_w, qkv_s = matrix([w for w, _ in qkv])
            entry = dict(qkv_w=qkv_w, qkv_b=qkv_b, qkv_s=qkv_s)
            del qkv
            for key, (parent, (name,)) in zip(("o", "gate", "up", "down"), layer_projections[1:]):
                weight, bias = effective_linear(getattr(parent, name))
                if bias is not None:
                    raise NotImplementedError(f"A bias on {name} is not supported (Qwen2 has none).")
                entry[key + "_w"], entry[key + "_s"] = matrix([weight])
                del weight
            entry.update(ln1=_rms_weight(layer.input_layernorm), ln2=_rms_weight(layer.post_attention_layernorm))
            self.layers.append(entry)
        self.norm = _rms_weight(backbone.norm)
        lm_w, lm_b = effective_linear(thinker.lm_head)
        if lm_b is not None:
            raise NotImplementedError("A bias on lm_head is not supported.")
        self.lm_weight, self.lm_scale = matrix([lm_w])
        del lm_w
        # tied: one matrix serves both; else only one row of the input embedding is read per token (kept in dtype)
        if tied:
            self.embed_weight = self.lm_weight
        else:
            self.embed_weight = None if embed is None else embed.weight.detach().to(dtype).contiguous()
        self.embed_scale = self.lm_scale if tied else None
        self.tied = tied
        self._arena = arena

        positions = torch.arange(max_length, device=device)[None]
        cos, sin = backbone.rotary_emb(torch.zeros(1, dtype=torch.float32, device=device), positions)
        self.rope_cos = cos[0].float().contiguous()  # [max_length, head_dim]
        self.rope_sin = sin[0].float().contiguous()

        self._allocate_cache()

        self._lo_split_asked = lo_split
        self._use_kernel(backend)

    def _use_kernel(self, backend: str) -> None:
        """Chooses the code the steps run on (see `backend` in the class docstring)."""
        self._kernel, why = None, None
        if backend != "torch":
            if self.device.type != "cpu":
                why = f"the thinker is on {self.device}, the kernel runs on the CPU"
            elif self.head_dim % 16:
                why = f"head_dim {self.head_dim} is not a multiple of 16"
            else:
                self._kernel, why = load_native_kernel("auto" if backend in ("auto", "native") else backend)
            if why is not None:
                if backend != "auto":
                    raise RuntimeError(f"The native fast-thinker kernel ({backend}) is unavailable: {why}.")
                logger.info("FastThinkerRunner uses the torch path: %s.", why)
        self.native_unavailable_reason = why
        # lo_split is for bf16 dot products only; elsewhere the activations keep more bits anyway
        bf16_dot = self._kernel is not None and self._kernel.bf16_dot
        self.lo_split = self._lo_split_asked and bf16_dot and self.weight_format != "int8" and self.dtype == torch.bfloat16
        self._struct = None

    # ---- checks ------------------------------------------------------------------------------------------------
    def _check_supported(self, thinker: nn.Module, max_length: int) -> None:
        config = self.config
        if getattr(config, "hidden_act", "silu") != "silu":
            raise NotImplementedError(f"Only SiLU MLPs are supported, the thinker uses {config.hidden_act!r}.")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads.")
        layer_types = getattr(config, "layer_types", None) or []
        if any(t != "full_attention" for t in layer_types):
            raise NotImplementedError(f"Only full attention is supported; the thinker's layers are {sorted(set(layer_types))}.")
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}.")
        if max_length > config.max_position_embeddings:
            logger.warning(
                "max_length %d is beyond the thinker's max_position_embeddings %d.",
                max_length, config.max_position_embeddings,
            )
        if not hasattr(thinker, "model") or not hasattr(thinker, "lm_head"):
            raise TypeError("Expected a causal LM with .model (the decoder) and .lm_head, such as Qwen2ForCausalLM.")
        first = thinker.model.layers[0]
        if hasattr(first.self_attn, "q_norm"):
            raise NotImplementedError("Per-head q/k norms (Qwen3-style) are not supported.")

    # ---- the ThinkerRunner interface ---------------------------------------------------------------------------
    @property
    def length(self) -> int:
        """Positions held in the cache (padding included)."""
        return self._length

    @property
    def mask(self) -> torch.Tensor:
        """`[batch, length]` 1 for real positions, 0 for padding."""
        return self.valid[:, : self._length].long()

    @property
    def backend(self) -> str:
        """`"native"` when decoding steps run on the compiled kernel, else `"torch"`."""
        return "native" if self._kernel is not None else "torch"

    @property
    def kernel(self) -> str:
        """The code decoding steps run on: `"avx512-bf16"` (AVX-512 with bf16 dot products), `"avx512"`, `"avx2"`
        or `"torch"`."""
        return "torch" if self._kernel is None else self._kernel.name

    def sharing_weights(self, batch_size: int, max_length: int, backend: str | None = None) -> "FastThinkerRunner":
        """A runner over this one's weight snapshot with its own empty cache, for another turn running alongside.

        Costs only the new key/value cache (no copy of the weights). `max_length` may not exceed this runner's.
        `backend` (as the constructor's; default: this runner's kernel) chooses the code the new runner runs on.
        """
        if max_length > self.max_length:
            raise ValueError(f"max_length {max_length} is beyond the snapshot's {self.max_length}: build a new runner.")
        other = copy.copy(self)
        other.batch_size, other.max_length = batch_size, max_length
        other.rope_cos, other.rope_sin = self.rope_cos[:max_length], self.rope_sin[:max_length]
        other._allocate_cache()
        if backend is not None:
            other._use_kernel(backend)
        return other

    def _allocate_cache(self) -> None:
        # Keys are stored transposed ([batch, kv_heads, head_dim, max_length]) so the kernel scores 16 positions
        # per vector; values as [batch, kv_heads, max_length, head_dim].
        G, D, B, L = self.num_kv_heads, self.head_dim, self.batch_size, self.max_length
        self.k_cache = [torch.zeros(B, G, D, L, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.v_cache = [torch.zeros(B, G, L, D, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.valid = torch.zeros(B, L, dtype=torch.uint8, device=self.device)
        self.positions = torch.zeros(B, dtype=torch.long, device=self.device)
        self._length = 0
        self._struct = None
        self._scratch_threads = 0

    def reset(self) -> None:
        """Forget every position (start new conversations); weights and buffers are kept."""
        self.valid.zero_()
        self.positions.zero_()
        self._length = 0

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids `[batch, n]` -> input embeddings `[batch, n, hidden]` (compute dtype)."""
        if self.embed_weight is None:
            raise ValueError("This decoder has no token table: it is fed embeddings (append).")
        rows = F.embedding(token_ids, self.embed_weight)
        if self.embed_scale is None:
            return rows
        return (rows.float() * self.embed_scale[token_ids][..., None]).to(self.dtype)

    @torch.no_grad()
    def append(self, embeds: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Read `embeds` `[batch, n, hidden]` after what the cache holds.

        Args:
            embeds: input embeddings of the new positions (any float dtype; the residual stream is fp32).
            mask: `[batch, n]`, 0 for padding positions (left padding of a batch), default all 1.

        Returns:
            logits of the last new position `[batch, vocab]` (float32) and the last hidden states of all new
            positions `[batch, n, hidden]` (after the final norm, compute dtype).
        """
        batch, n, hidden = embeds.shape
        if batch != self.batch_size or hidden != self.hidden_size:
            raise ValueError(
                f"embeds must be [batch={self.batch_size}, n, hidden={self.hidden_size}], got {list(embeds.shape)}."
            )
        if n == 0:
            raise ValueError("append needs at least one new position.")
        start = self._length
        if start + n > self.max_length:
            raise ValueError(
                f"The thinker cache holds {self.max_length} positions and already has {start}: appending {n} more "
                f"would exceed it. Build the runner with a larger max_length (e.g. FastThinkerRunner(thinker, "
                f"max_length={2 * max(self.max_length, start + n)})), or reset() it for a new conversation."
            )
        if mask is None:
            rope_positions = self.positions[:, None] + self._arange(n)[None]
            self.positions += n
            self.valid[:, start : start + n] = 1
        else:
            if tuple(mask.shape) != (batch, n):
                raise ValueError(f"mask must be [batch, n] = [{batch}, {n}], got {list(mask.shape)}.")
            mask = mask.to(device=self.device, dtype=torch.long)
            rope_positions = (self.positions[:, None] + mask.cumsum(-1) - 1).clamp(min=0)
            self.positions += mask.sum(-1)
            self.valid[:, start : start + n] = mask.to(torch.uint8)
        self._length = start + n
        x = embeds.to(device=self.device, dtype=torch.float32).reshape(batch * n, hidden).clone()
        chunk = self.native_max_tokens // batch if self._kernel is not None else 0
        if chunk == 0:
            logits, hidden_states = self._step_torch(x.view(batch, n, hidden), start, n, rope_positions)
            return logits, hidden_states.view(batch, n, hidden).to(self.dtype)
        # A longer append runs as native steps of `chunk` positions (each attends to the ones before it): the kernel
        # keeps its speed, where the torch path is several times slower (and far slower with int8 weights).
        rows = x.view(batch, n, hidden)
        pieces = []
        for offset in range(0, n, chunk):
            size = min(chunk, n - offset)
            piece = rows[:, offset : offset + size].reshape(batch * size, hidden).contiguous()  # the kernel reads rows
            logits, states = self._step_native(piece, start + offset, size, rope_positions[:, offset : offset + size])
            pieces.append(states.view(batch, size, hidden))
        return logits, torch.cat(pieces, dim=1).to(self.dtype)

    # ---- native path -------------------------------------------------------------------------------------------
    _arange_cache: torch.Tensor | None = None

    def _arange(self, n: int) -> torch.Tensor:
        if self._arange_cache is None or self._arange_cache.numel() < n:
            self._arange_cache = torch.arange(max(n, 64), device=self.device)
        return self._arange_cache[:n]

    def _prepare_native(self, threads: int) -> None:
        """Scratch buffers for `threads` threads and the struct the kernel reads."""
        T = NATIVE_MAX_TOKENS
        H, NH, G, D, I = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, self.intermediate_size
        widest = max(H, NH * D, I)
        widest = (widest + 31) // 32 * 32
        act_stride = 2 * T * widest * 4  # activations, then fp32 normed rows
        group = min(NH // G, 8)
        score_stride = max(group * ((self.max_length + 15) // 16 * 16), T * H) + 16
        self._scratch = dict(
            qkv=torch.zeros(T, (NH + 2 * G) * D),
            attn=torch.zeros(T, NH * D),
            mid=torch.zeros(T, I),
            act=torch.zeros(threads, act_stride // 4),
            scores=torch.zeros(threads, score_stride),
        )
        def pointer(t: torch.Tensor | None) -> int | None:
            return None if t is None else t.data_ptr()

        pointers = []
        for layer, k, v in zip(self.layers, self.k_cache, self.v_cache):  # the kernel's S_* order
            pointers += [pointer(layer[name]) for name in (
                "qkv_w", "qkv_b", "o_w", "gate_w", "up_w", "down_w", "ln1", "ln2")]
            pointers += [k.data_ptr(), v.data_ptr()]
            pointers += [pointer(layer[name]) for name in ("qkv_s", "o_s", "gate_s", "up_s", "down_s")]
        assert len(pointers) == len(self.layers) * _kernels.LAYER_SLOTS
        s = self._scratch
        wdtype = _W_I8 if self.weight_format == "int8" else (_W_BF16 if self.dtype == torch.bfloat16 else _W_F32)
        self._struct, self._struct_ref, self._layer_pointers = _kernels.make_model_struct(
            pointers, hidden=H, heads=NH, kv_heads=G, head_dim=D, inter=I, layers=len(self.layers), vocab=self.vocab_size,
            max_len=self.max_length, batch=self.batch_size, wdtype=wdtype,
            cdtype=0 if self.dtype == torch.bfloat16 else 1,
            lo_split=int(self.lo_split), nthreads=threads, act_stride=act_stride, score_stride=score_stride,
            dynamic=int(self.schedule == "dynamic"), yield_barrier=1,
            eps=self.eps, scale=self.scale,
            norm=self.norm.data_ptr(),
            lm_w=self.lm_weight.data_ptr(), lm_s=pointer(self.lm_scale),
            rope_cos=self.rope_cos.data_ptr(), rope_sin=self.rope_sin.data_ptr(),
            valid=self.valid.data_ptr(), qkv=s["qkv"].data_ptr(), attn=s["attn"].data_ptr(),
            mid=s["mid"].data_ptr(), act=s["act"].data_ptr(), scores=s["scores"].data_ptr(),
        )
        self._scratch_threads = threads

    def _step_native(self, x: torch.Tensor, start: int, n: int, rope_positions: torch.Tensor):
        threads = torch.get_num_threads()
        if self._struct is None or threads > self._scratch_threads:
            self._prepare_native(threads)
        batch, T = self.batch_size, x.shape[0]
        self._struct.nthreads = threads
        # longer steps are compute-bound: there the split would cost ~1.6x, so they round activations to bf16
        self._struct.lo_split = int(self.lo_split and T <= LO_SPLIT_MAX_TOKENS)
        steps = self._arange(n)
        rows = torch.arange(batch, dtype=torch.int32).repeat_interleave(n) if batch > 1 else torch.zeros(n, dtype=torch.int32)
        slots = (steps + start).to(torch.int32).repeat(batch)
        positions = rope_positions.reshape(-1).to(torch.int32)
        logit_tokens = (torch.arange(batch, dtype=torch.int32) * n + (n - 1))
        logits = torch.empty(batch, self.vocab_size)
        hidden = torch.empty(T, self.hidden_size)
        self._kernel.step(
            self._struct_ref, T, x.data_ptr(), rows.data_ptr(), slots.data_ptr(), positions.data_ptr(),
            batch, logit_tokens.data_ptr(), logits.data_ptr(), hidden.data_ptr(),
        )
        return logits, hidden

    # ---- torch path --------------------------------------------------------------------------------------------
    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * weight

    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _linear(self, h: torch.Tensor, layer: dict, name: str) -> torch.Tensor:
        """`h [..., in]` (fp32) through the matrix `layer[name + "_w"]` (+ the bias `name + "_b"`), fp32 out: in the
        compute dtype as transformers' forward, or int8 weights x fp32 activations, scaled per output channel."""
        weight, scale, bias = layer[name + "_w"], layer.get(name + "_s"), layer.get(name + "_b")
        if scale is None:
            out = F.linear(h.to(self.dtype), weight, None if bias is None else bias.to(self.dtype)).float()
            return out
        flat = h.reshape(-1, h.shape[-1]).float().contiguous()
        out = _int8_matmul(flat, weight, scale).view(*h.shape[:-1], weight.shape[0])
        return out if bias is None else out + bias

    def _step_torch(self, x: torch.Tensor, start: int, n: int, rope_positions: torch.Tensor):
        """x `[batch, n, hidden]` fp32 -> (logits `[batch, vocab]`, normed hidden `[batch, n, hidden]` fp32)."""
        batch = x.shape[0]
        NH, G, D = self.num_heads, self.num_kv_heads, self.head_dim
        end = start + n
        dt = self.dtype
        cos = self.rope_cos[rope_positions][:, :, None]  # [batch, n, 1, D]
        sin = self.rope_sin[rope_positions][:, :, None]
        keys = torch.arange(end, device=self.device)
        queries = self._arange(n) + start
        allowed = self.valid[:, None, :end].bool() & (keys[None, :] <= queries[:, None])  # [batch, n, end]
        allowed |= keys[None, :] == queries[:, None]  # padding queries see themselves: no empty softmax
        allowed = allowed[:, None]
        for layer, k_cache, v_cache in zip(self.layers, self.k_cache, self.v_cache):
            h = self._rms(x, layer["ln1"])
            qkv = self._linear(h, layer, "qkv")
            q, k, v = qkv.split([NH * D, G * D, G * D], dim=-1)
            q = self._rope(q.view(batch, n, NH, D), cos, sin)
            k = self._rope(k.view(batch, n, G, D), cos, sin)
            k_cache[:, :, :, start:end] = k.permute(0, 2, 3, 1).to(dt)
            v_cache[:, :, start:end] = v.view(batch, n, G, D).transpose(1, 2).to(dt)
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                k_cache[:, :, :, :end].transpose(-1, -2).float(),
                v_cache[:, :, :end].float(),
                attn_mask=allowed,
                scale=self.scale,
                enable_gqa=G != NH,
            )
            x = x + self._linear(out.transpose(1, 2).reshape(batch, n, NH * D), layer, "o")
            h = self._rms(x, layer["ln2"])
            gate, up = self._linear(h, layer, "gate"), self._linear(h, layer, "up")
            x = x + self._linear(F.silu(gate) * up, layer, "down")
        hidden = self._rms(x, self.norm)
        logits = self._linear(hidden[:, -1], {"lm_w": self.lm_weight, "lm_s": self.lm_scale}, "lm")
        return logits, hidden

    # ---- accounting ----------------------------------------------------------------------------------------------
    def memory(self) -> dict[str, int | None]:
        """Bytes this runner holds: `arena` (its copy of the weight matrices, 0 with weights="share"),
        `huge_pages` (how much of the arena the kernel backs with huge pages), `cache` (keys and values)."""
        cache = sum(t.numel() * t.element_size() for t in self.k_cache + self.v_cache)
        arena = self._arena
        return {
            "arena": 0 if arena is None else arena.used,
            "huge_pages": None if arena is None else arena.huge_page_bytes(),
            "cache": cache,
        }

    def weight_bytes_per_token(self) -> int:
        """Bytes of weights one decoded token reads, as stored here: every layer's matrices, biases and norms, the
        final norm, the whole lm_head matrix, and the token's embedding row (if it has a token table)."""
        tensors = [self.norm, self.lm_weight, self.lm_scale]
        if self.embed_weight is not None:
            tensors.append(self.embed_weight[0])
        for layer in self.layers:
            tensors += [t for t in layer.values() if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def talker_as_causal_lm(talker: nn.Module) -> SimpleNamespace:
    """The talker's decoder and heads as the causal LM `FastThinkerRunner` reads: `.model` is the talker's own
    decoder (a `LlamaModel` without a token table, fed `ConceptTalkerTalkerModel.embed_*`), `.lm_head` its
    per-codebook heads `[codebooks, codebook_size, width]` viewed as one `[codebooks * codebook_size, width]` matrix
    (so the runner's logits view as `[codebooks, codebook_size]`), `.config` the decoder's with that many rows as its
    vocabulary. Every tensor is the talker's own."""
    codebooks, rows, width = talker.heads.shape
    lm_head = nn.Linear(width, codebooks * rows, bias=False, device="meta")
    lm_head.weight = nn.Parameter(talker.heads.detach().view(codebooks * rows, width), requires_grad=False)
    config = copy.copy(talker.decoder.config)
    config.vocab_size = codebooks * rows
    return SimpleNamespace(config=config, model=talker.decoder, lm_head=lm_head)


__all__ = ["FastThinkerRunner", "effective_linear", "load_native_kernel", "native_read_bandwidth", "quantize_rows",
           "talker_as_causal_lm"]
