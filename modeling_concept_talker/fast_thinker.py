"""Fast thinker decoding on CPU: a drop-in for `ThinkerRunner` that streams the weights at memory bandwidth.

Decoding one token reads every weight of the thinker once (about 1 GB for Qwen2.5-0.5B in bf16, the tied
embedding / lm_head matrix included), so its speed is bounded by memory bandwidth. transformers' eager forward
reaches about 30% of that bound on a 2-core CPU: its bf16 matrix-vector products run well below bandwidth, and a
few hundred small ops per token add overhead.

`FastThinkerRunner` snapshots the thinker's weights once (LoRA adapters folded in, `[q; k; v]` fused) into one
block of memory laid out in reading order and backed by transparent huge pages, owns a preallocated key/value
cache, and runs each `append` in one of two ways:

- **native**: a small C++ kernel (embedded below, compiled once per machine with its C++ compiler, cached on
  disk, loaded with ctypes) runs the whole step for up to `native_max_tokens` new tokens in one OpenMP region:
  threads take chunks of ~128 KB of weight rows and stream each row once, bf16 dot products on AVX512-BF16
  (`vdpbf16ps`), fp32 residual stream, norms, RoPE, attention and logits; barriers yield the core when other
  processes compete for it.
- **torch**: the same computation in plain PyTorch ops (oneDNN GEMMs, SDPA), for longer appends and for machines
  where the kernel cannot be built (no AVX-512, no compiler, not x86-64 Linux): same results within rounding.

Both paths share the cache layout, so they mix freely within one conversation.
"""

from __future__ import annotations

import copy
import ctypes
import hashlib
import logging
import mmap
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import torch
from torch import nn
from torch.nn import functional as F

logger = logging.getLogger(__name__)

NATIVE_ABI_VERSION = 1
NATIVE_MAX_TOKENS = 64  # the kernel's per-step limit (its stack buffers hold 64 tokens)
LO_SPLIT_MAX_TOKENS = 4  # steps up to this many tokens use `lo_split`

_KERNEL_SOURCE = r"""
// Concept-Talker fast thinker step: one OpenMP region runs every layer of a decode (or short prefill) step.
// Weights are row-major [out, in] (PyTorch's nn.Linear layout), bf16 or fp32; each thread streams a contiguous
// block of rows, one row at a time, which keeps the hardware prefetcher on a single sequential stream.
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <sched.h>
#include <string.h>

#if !defined(__AVX512F__)
#error "the native fast-thinker kernel needs AVX-512"
#endif

typedef uint16_t bf16_t;

struct Model {
  int64_t hidden, heads, kv_heads, head_dim, inter, layers, vocab, max_len, batch;
  int64_t wdtype;        // 0: bf16 weights and cache, 1: fp32
  int64_t lo_split;      // bf16 weights: also use the bf16 rounding error of the activations (near-fp32 inputs)
  int64_t nthreads;
  int64_t act_stride;    // bytes of private activation scratch per thread
  int64_t score_stride;  // floats of attention-score scratch per thread
  int64_t dynamic;       // 1: contiguous shares with stealing, 0: fixed contiguous shares
  int64_t yield_barrier; // 1: barriers spin then yield the core, 0: OpenMP barriers
  double eps, scale;
  void** layer;          // [layers][10]: qkv_w, qkv_b, o_w, gate_w, up_w, down_w, ln1, ln2, k_cache, v_cache
  void* norm;
  void* lm_w;
  void* rope_cos;        // [max_len, head_dim] fp32
  void* rope_sin;
  void* valid;           // [batch, max_len] uint8
  void* qkv;             // scratch [T, (heads + 2 kv_heads) head_dim] fp32
  void* attn;            // scratch [T, heads head_dim] fp32
  void* mid;             // scratch [T, inter] fp32
  void* act;             // per-thread activation scratch
  void* scores;          // per-thread score scratch
};

static inline int64_t pad32(int64_t k) { return (k + 31) & ~(int64_t)31; }

static inline __m512 bf16x16_to_f32(const bf16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
static inline __m512 bf16x16_to_f32_mask(const bf16_t* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}
static inline bf16_t f32_to_bf16(float f) {  // round to nearest even (finite inputs)
  uint32_t u;
  memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1);
  return (bf16_t)(u >> 16);
}
static inline float bf16_to_f32(bf16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// exp for x <= 88, relative error ~1e-7.
static inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// ---- activations: fp32 rows -> the layout the dot products read ---------------------------------------------
// bf16 weights with AVX512-BF16: [T][hi: Kp bf16][lo: Kp bf16]; otherwise [T][Kp fp32]. Zero padded to Kp.
static inline int64_t act_row_bytes(const Model* m, int64_t K) { return pad32(K) * 4; }

static void prep_act(const Model* m, const float* src, int64_t lds, int T, int64_t K, char* act) {
  const int64_t Kp = pad32(K), rb = act_row_bytes(m, K);
  for (int t = 0; t < T; t++) {
    const float* s = src + t * lds;
#if defined(__AVX512BF16__)
    if (m->wdtype == 0) {
      bf16_t* hi = (bf16_t*)(act + t * rb);
      bf16_t* lo = hi + Kp;
      for (int64_t i = 0; i < Kp; i += 32) {
        __mmask16 m0 = i + 16 <= K ? 0xffff : (i < K ? (__mmask16)((1u << (K - i)) - 1) : 0);
        __mmask16 m1 = i + 32 <= K ? 0xffff : (i + 16 < K ? (__mmask16)((1u << (K - i - 16)) - 1) : 0);
        __m512 a = _mm512_maskz_loadu_ps(m0, s + i), b = _mm512_maskz_loadu_ps(m1, s + i + 16);
        __m512bh h = _mm512_cvtne2ps_pbh(b, a);
        _mm512_storeu_si512(hi + i, (__m512i)h);
        __m512 ha = bf16x16_to_f32(hi + i), hb = bf16x16_to_f32(hi + i + 16);
        __m512bh l = _mm512_cvtne2ps_pbh(_mm512_sub_ps(b, hb), _mm512_sub_ps(a, ha));
        _mm512_storeu_si512(lo + i, (__m512i)l);
      }
      continue;
    }
#endif
    float* d = (float*)(act + t * rb);
    memcpy(d, s, K * 4);
    for (int64_t i = K; i < Kp; i++) d[i] = 0.0f;
  }
}

// ---- dot products of one weight row with NB activation rows (unreduced: out[t] sums to the product) --------------------------------------------------
#if defined(__AVX512BF16__)
template <int NB, bool LO>
static inline __attribute__((always_inline)) void dot_bf16(const bf16_t* w, int64_t K, const char* act, int64_t rb,
                                                            __m512* out) {
  const int64_t Kp = pad32(K);
  __m512 ah[NB], al[NB], bh[NB], bl[NB];
  for (int t = 0; t < NB; t++) ah[t] = al[t] = bh[t] = bl[t] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= K; i += 64) {
    __m512bh v0 = (__m512bh)_mm512_loadu_si512(w + i);
    __m512bh v1 = (__m512bh)_mm512_loadu_si512(w + i + 32);
    for (int t = 0; t < NB; t++) {
      const bf16_t* xh = (const bf16_t*)(act + t * rb);
      ah[t] = _mm512_dpbf16_ps(ah[t], v0, (__m512bh)_mm512_loadu_si512(xh + i));
      bh[t] = _mm512_dpbf16_ps(bh[t], v1, (__m512bh)_mm512_loadu_si512(xh + i + 32));
      if (LO) {
        al[t] = _mm512_dpbf16_ps(al[t], v0, (__m512bh)_mm512_loadu_si512(xh + Kp + i));
        bl[t] = _mm512_dpbf16_ps(bl[t], v1, (__m512bh)_mm512_loadu_si512(xh + Kp + i + 32));
      }
    }
  }
  for (; i < K; i += 32) {
    __mmask32 mk = i + 32 <= K ? 0xffffffffu : (__mmask32)((1ull << (K - i)) - 1);
    __m512bh v0 = (__m512bh)_mm512_maskz_loadu_epi16(mk, w + i);
    for (int t = 0; t < NB; t++) {
      const bf16_t* xh = (const bf16_t*)(act + t * rb);
      ah[t] = _mm512_dpbf16_ps(ah[t], v0, (__m512bh)_mm512_loadu_si512(xh + i));
      if (LO) al[t] = _mm512_dpbf16_ps(al[t], v0, (__m512bh)_mm512_loadu_si512(xh + Kp + i));
    }
  }
  for (int t = 0; t < NB; t++) out[t] = _mm512_add_ps(_mm512_add_ps(ah[t], bh[t]), _mm512_add_ps(al[t], bl[t]));
}
#endif

// fp32 FMA against fp32 activations, for weights stored as fp32 or as bf16 widened on load (CPUs without
// AVX512-BF16). Load gives 16 weights as fp32: full(w) and masked(w, mask).
struct LoadF32 {
  static inline __m512 full(const float* w) { return _mm512_loadu_ps(w); }
  static inline __m512 masked(const float* w, __mmask16 mk) { return _mm512_maskz_loadu_ps(mk, w); }
};
struct LoadBF16Widened {
  static inline __m512 full(const bf16_t* w) { return bf16x16_to_f32(w); }
  static inline __m512 masked(const bf16_t* w, __mmask16 mk) { return bf16x16_to_f32_mask(w, mk); }
};

template <int NB, class Load, class W>
static inline __attribute__((always_inline)) void dot_fp32_fma(const W* w, int64_t K, const char* act, int64_t rb,
                                                                __m512* out) {
  __m512 a[NB], b[NB];
  for (int t = 0; t < NB; t++) a[t] = b[t] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= K; i += 32) {
    __m512 v0 = Load::full(w + i), v1 = Load::full(w + i + 16);
    for (int t = 0; t < NB; t++) {
      const float* x = (const float*)(act + t * rb);
      a[t] = _mm512_fmadd_ps(v0, _mm512_loadu_ps(x + i), a[t]);
      b[t] = _mm512_fmadd_ps(v1, _mm512_loadu_ps(x + i + 16), b[t]);
    }
  }
  for (; i < K; i += 16) {
    __mmask16 mk = i + 16 <= K ? 0xffff : (__mmask16)((1u << (K - i)) - 1);
    __m512 v0 = Load::masked(w + i, mk);
    for (int t = 0; t < NB; t++) a[t] = _mm512_fmadd_ps(v0, _mm512_loadu_ps((const float*)(act + t * rb) + i), a[t]);
  }
  for (int t = 0; t < NB; t++) out[t] = _mm512_add_ps(a[t], b[t]);
}

// Kinds of dot product: bf16 weights with the activations' bf16 error term, bf16 without it, fp32 weights, and bf16
// weights widened to fp32 (CPUs without AVX512-BF16).
enum { DOT_BF16_LO = 0, DOT_BF16 = 1, DOT_F32 = 2, DOT_BF16_WIDEN = 3 };

template <int NB, int KIND>
static inline __attribute__((always_inline)) void dot_nb(const void* W, int64_t r, int64_t K, const char* act,
                                                          int64_t rb, __m512* out) {
  if constexpr (KIND == DOT_F32) {
    dot_fp32_fma<NB, LoadF32>((const float*)W + r * K, K, act, rb, out);
  } else if constexpr (KIND == DOT_BF16_WIDEN) {
    dot_fp32_fma<NB, LoadBF16Widened>((const bf16_t*)W + r * K, K, act, rb, out);
  } else {
#if defined(__AVX512BF16__)
    dot_bf16<NB, KIND == DOT_BF16_LO>((const bf16_t*)W + r * K, K, act, rb, out);
#endif
  }
}

// Lane j < 4 of the result is the sum of the j-th vector (a few shuffles instead of four full reductions).
static inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  __m512 x = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, 0x44), _mm512_shuffle_ps(ab, cd, 0xEE));
  x = _mm512_add_ps(x, _mm512_shuffle_f32x4(x, x, 0x4E));
  x = _mm512_add_ps(x, _mm512_shuffle_f32x4(x, x, 0xB1));
  return _mm512_castps512_ps128(x);
}

// Rows [r0, r1) against NB <= 4 activation rows. Each row is streamed on its own (one sequential stream for the
// hardware prefetcher); the partial sums of 4 consecutive rows are reduced together.
template <int NB, int KIND, class Emit>
static inline void rows_nb(const void* W, int64_t r0, int64_t r1, int64_t K, const char* act, int64_t rb,
                           Emit& emit) {
  float res[NB];
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    __m512 v0[NB], v1[NB], v2[NB], v3[NB];
    dot_nb<NB, KIND>(W, r, K, act, rb, v0);
    dot_nb<NB, KIND>(W, r + 1, K, act, rb, v1);
    dot_nb<NB, KIND>(W, r + 2, K, act, rb, v2);
    dot_nb<NB, KIND>(W, r + 3, K, act, rb, v3);
    alignas(16) float sums[NB][4];
    for (int t = 0; t < NB; t++) _mm_store_ps(sums[t], reduce4(v0[t], v1[t], v2[t], v3[t]));
    for (int j = 0; j < 4; j++) {
      for (int t = 0; t < NB; t++) res[t] = sums[t][j];
      emit(r + j, res);
    }
  }
  for (; r < r1; r++) {
    __m512 v[NB];
    dot_nb<NB, KIND>(W, r, K, act, rb, v);
    for (int t = 0; t < NB; t++) res[t] = _mm512_reduce_add_ps(v[t]);
    emit(r, res);
  }
}

#if defined(__AVX512BF16__)
// Prefill: 4 weight rows x NB tokens per block, so each weight vector feeds NB tokens and each activation vector
// 4 rows (compute-bound: fewer loads per dot product). sums[t][j] = W[j] . act[t].
template <int NB>
static inline __attribute__((always_inline)) void block4_bf16(const bf16_t* w, int64_t K, const char* act,
                                                               int64_t rb, float (*sums)[4]) {
  __m512 acc[4][NB];
  for (int j = 0; j < 4; j++)
    for (int t = 0; t < NB; t++) acc[j][t] = _mm512_setzero_ps();
  for (int64_t i = 0; i < K; i += 32) {
    const __mmask32 mk = i + 32 <= K ? 0xffffffffu : (__mmask32)((1ull << (K - i)) - 1);
    __m512bh v[4];
    for (int j = 0; j < 4; j++) v[j] = (__m512bh)_mm512_maskz_loadu_epi16(mk, w + j * K + i);
    for (int t = 0; t < NB; t++) {
      const __m512bh x = (__m512bh)_mm512_loadu_si512((const bf16_t*)(act + t * rb) + i);
      for (int j = 0; j < 4; j++) acc[j][t] = _mm512_dpbf16_ps(acc[j][t], v[j], x);
    }
  }
  for (int t = 0; t < NB; t++) _mm_storeu_ps(sums[t], reduce4(acc[0][t], acc[1][t], acc[2][t], acc[3][t]));
}
#endif

// Rows [r0, r1) of W [*, K] against T activation rows; emit(r, res) receives res[t] = W[r] . act[t]. The kind and the
// token count are dispatched once per call, so the row loops are straight-line code.
template <int KIND, class Emit>
static inline void rows_kind(const void* W, int64_t r0, int64_t r1, int64_t K, const char* act, int64_t rb, int T,
                             Emit& emit) {
  switch (T) {
    case 1: rows_nb<1, KIND>(W, r0, r1, K, act, rb, emit); return;
    case 2: rows_nb<2, KIND>(W, r0, r1, K, act, rb, emit); return;
    case 3: rows_nb<3, KIND>(W, r0, r1, K, act, rb, emit); return;
    case 4: rows_nb<4, KIND>(W, r0, r1, K, act, rb, emit); return;
  }
  // more tokens
  float res[4][64];
  int64_t r = r0;
#if defined(__AVX512BF16__)
  if constexpr (KIND == DOT_BF16) {
    alignas(16) float sums[4][4];
    for (; r + 4 <= r1; r += 4) {
      const bf16_t* w = (const bf16_t*)W + r * K;
      for (int t0 = 0; t0 < T; t0 += 4) {
        const char* a = act + t0 * rb;
        int nb = T - t0 < 4 ? T - t0 : 4;
        switch (nb) {
          case 1: block4_bf16<1>(w, K, a, rb, sums); break;
          case 2: block4_bf16<2>(w, K, a, rb, sums); break;
          case 3: block4_bf16<3>(w, K, a, rb, sums); break;
          default: block4_bf16<4>(w, K, a, rb, sums); break;
        }
        for (int t = 0; t < nb; t++)
          for (int j = 0; j < 4; j++) res[j][t0 + t] = sums[t][j];
      }
      for (int j = 0; j < 4; j++) emit(r + j, res[j]);
    }
  }
#endif
  for (; r < r1; r++) {  // one row at a time, tokens in blocks of 4 (the row stays in L1)
    __m512 v[4];
    for (int t0 = 0; t0 < T; t0 += 4) {
      const char* a = act + t0 * rb;
      const int nb = T - t0 < 4 ? T - t0 : 4;
      switch (nb) {
        case 1: dot_nb<1, KIND>(W, r, K, a, rb, v); break;
        case 2: dot_nb<2, KIND>(W, r, K, a, rb, v); break;
        case 3: dot_nb<3, KIND>(W, r, K, a, rb, v); break;
        default: dot_nb<4, KIND>(W, r, K, a, rb, v); break;
      }
      for (int t = 0; t < nb; t++) res[0][t0 + t] = _mm512_reduce_add_ps(v[t]);
    }
    emit(r, res[0]);
  }
}

template <class Emit>
static inline void gemv_rows(const Model* m, const void* W, int64_t r0, int64_t r1, int64_t K, const char* act, int T,
                             Emit emit) {
  const int64_t rb = act_row_bytes(m, K);
  if (m->wdtype == 1) {
    rows_kind<DOT_F32>(W, r0, r1, K, act, rb, T, emit);
    return;
  }
#if defined(__AVX512BF16__)
  if (m->lo_split)
    rows_kind<DOT_BF16_LO>(W, r0, r1, K, act, rb, T, emit);
  else
    rows_kind<DOT_BF16>(W, r0, r1, K, act, rb, T, emit);
#else
  rows_kind<DOT_BF16_WIDEN>(W, r0, r1, K, act, rb, T, emit);
#endif
}

// ---- small helpers ----------------------------------------------------------------------------------------
static inline void split_range(int64_t n, int64_t align, int tid, int nth, int64_t* a, int64_t* b) {
  int64_t per = (n + nth - 1) / nth;
  per = (per + align - 1) / align * align;
  *a = per * tid < n ? per * tid : n;
  *b = per * (tid + 1) < n ? per * (tid + 1) : n;
}

// Work sharing. Each thread owns a contiguous share of a matrix's row chunks and streams it from the front; a
// thread that runs out steals chunks from the back of the others' shares. When the cores are ours, every thread
// streams one contiguous block (hardware prefetch friendly, one uncontended atomic per chunk); when another process
// slows a thread down, the others take over its unfinished chunks.
struct alignas(64) WorkRange {
  uint64_t v;  // low 32 bits: next chunk from the front; high 32 bits: end of the share (exclusive)
  char pad[56];
};

static inline uint64_t pack_range(uint64_t front, uint64_t back) { return front | (back << 32); }

// Takes one chunk from the front (owner) or the back (thief) of r; returns -1 when the share is used up.
static inline int64_t take_chunk(WorkRange* r, bool from_back) {
  uint64_t v = __atomic_load_n(&r->v, __ATOMIC_ACQUIRE);
  for (;;) {
    const uint64_t front = v & 0xffffffffu, back = v >> 32;
    if (front >= back) return -1;
    const uint64_t next = from_back ? pack_range(front, back - 1) : pack_range(front + 1, back);
    if (__atomic_compare_exchange_n(&r->v, &v, next, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
      return from_back ? (int64_t)back - 1 : (int64_t)front;
  }
}

// Rows [0, n) in chunks of `ch` rows, f(first, end) per chunk. Call from every thread of the parallel region (every
// share is used up when a thread returns, which the next call relies on); no barrier at the end.
template <class F>
static inline void for_rows(const Model* m, WorkRange* ranges, int64_t n, int64_t ch, F f) {
  const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
  const int64_t chunks = (n + ch - 1) / ch;
  int64_t a, b;
  split_range(chunks, 1, tid, nt, &a, &b);
  auto run = [&](int64_t c) { f(c * ch, c * ch + ch < n ? c * ch + ch : n); };
  if (!m->dynamic || nt == 1) {
    for (int64_t c = a; c < b; c++) run(c);
    return;
  }
  __atomic_store_n(&ranges[tid].v, pack_range((uint64_t)a, (uint64_t)b), __ATOMIC_RELEASE);
  for (int64_t c; (c = take_chunk(&ranges[tid], false)) >= 0;) run(c);
  for (int k = 1; k < nt; k++)
    for (int64_t c; (c = take_chunk(&ranges[(tid + k) % nt], true)) >= 0;) run(c);
}

// Rows per chunk: about 128 KB of weights, a multiple of 16.
static inline int64_t chunk_rows(const Model* m, int64_t K) {
  const int64_t rows = (131072 / (K * (m->wdtype == 1 ? 4 : 2))) & ~(int64_t)15;
  return rows < 16 ? 16 : rows;
}

static void rmsnorm_rows(const float* x, int64_t H, int T, const float* w, double eps, float* out) {
  for (int t = 0; t < T; t++) {
    const float* xr = x + t * H;
    double ss = 0;
    for (int64_t i = 0; i < H; i++) ss += (double)xr[i] * xr[i];
    float r = (float)(1.0 / sqrt(ss / H + eps));
    for (int64_t i = 0; i < H; i++) out[t * H + i] = xr[i] * r * w[i];
  }
}

static inline float cache_get(const Model* m, const void* c, int64_t idx) {
  return m->wdtype == 1 ? ((const float*)c)[idx] : bf16_to_f32(((const bf16_t*)c)[idx]);
}
static inline void cache_set(const Model* m, void* c, int64_t idx, float v) {
  if (m->wdtype == 1)
    ((float*)c)[idx] = v;
  else
    ((bf16_t*)c)[idx] = f32_to_bf16(v);
}
static inline __m512 cache_load16(const Model* m, const void* c, int64_t idx, __mmask16 mk) {
  return m->wdtype == 1 ? _mm512_maskz_loadu_ps(mk, (const float*)c + idx)
                        : bf16x16_to_f32_mask((const bf16_t*)c + idx, mk);
}

// RoPE (rotate-half convention) on one head in place.
static inline void rope(float* v, const float* cs, const float* sn, int64_t D) {
  const int64_t h = D / 2;
  for (int64_t i = 0; i < h; i++) {
    float x1 = v[i], x2 = v[i + h];
    v[i] = x1 * cs[i] - x2 * sn[i];
    v[i + h] = x2 * cs[i + h] + x1 * sn[i + h];
  }
}

// Token t, kv head g: rope the group's queries and the key, write key (transposed) and value into the cache.
static void write_kv(const Model* m, void* kc, void* vc, int t, int64_t g, const int32_t* row, const int32_t* slot,
                     const int32_t* pos) {
  const int64_t D = m->head_dim, H = m->heads, G = m->kv_heads, hq = H / G, L = m->max_len;
  float* q = (float*)m->qkv + t * (H + 2 * G) * D;
  float* k = q + (H + g) * D;
  float* v = q + (H + G + g) * D;
  const float* cs = (const float*)m->rope_cos + (int64_t)pos[t] * D;
  const float* sn = (const float*)m->rope_sin + (int64_t)pos[t] * D;
  for (int64_t i = 0; i < hq; i++) rope(q + (g * hq + i) * D, cs, sn, D);
  rope(k, cs, sn, D);
  const int64_t base = ((int64_t)row[t] * G + g) * D * L;  // K: [B, G, D, L]; V: [B, G, L, D]
  for (int64_t d = 0; d < D; d++) cache_set(m, kc, base + d * L + slot[t], k[d]);
  for (int64_t d = 0; d < D; d++) cache_set(m, vc, base + (int64_t)slot[t] * D + d, v[d]);
}

// Token t, kv head g: attention of the group's query heads over cache positions 0..slot[t].
static void attend(const Model* m, const void* kc, const void* vc, int t, int64_t g, const int32_t* row,
                   const int32_t* slot, float* sc) {
  const int64_t D = m->head_dim, H = m->heads, G = m->kv_heads, hq = H / G, L = m->max_len;
  const int64_t b = row[t], p = slot[t], len = p + 1, lp = (len + 15) & ~(int64_t)15;
  const float* q = (const float*)m->qkv + t * (H + 2 * G) * D + g * hq * D;
  float* out = (float*)m->attn + t * H * D + g * hq * D;
  const int64_t base = (b * G + g) * D * L;
  const uint8_t* valid = (const uint8_t*)m->valid + b * L;
  const float scale = (float)m->scale;
  for (int64_t h0 = 0; h0 < hq; h0 += 8) {
    const int64_t nh = hq - h0 < 8 ? hq - h0 : 8;
    // scores [nh][lp]
    for (int64_t j = 0; j < len; j += 16) {
      __mmask16 inr = j + 16 <= len ? 0xffff : (__mmask16)((1u << (len - j)) - 1);
      __mmask16 ok = 0;
      for (int64_t u = 0; u < 16 && j + u < len; u++)
        if (valid[j + u] || j + u == p) ok |= (__mmask16)(1u << u);
      __m512 acc[8];
      for (int64_t h = 0; h < 8; h++) acc[h] = _mm512_setzero_ps();
      for (int64_t d = 0; d < D; d++) {
        __m512 kv = cache_load16(m, kc, base + d * L + j, inr);
        for (int64_t h = 0; h < nh; h++) acc[h] = _mm512_fmadd_ps(_mm512_set1_ps(q[(h0 + h) * D + d]), kv, acc[h]);
      }
      for (int64_t h = 0; h < nh; h++)
        _mm512_storeu_ps(sc + h * lp + j, _mm512_mask_blend_ps(ok, _mm512_set1_ps(-INFINITY),
                                                                _mm512_mul_ps(acc[h], _mm512_set1_ps(scale))));
    }
    for (int64_t j = len; j < lp; j++)
      for (int64_t h = 0; h < nh; h++) sc[h * lp + j] = -INFINITY;
    float inv[8];
    for (int64_t h = 0; h < nh; h++) {
      float* s = sc + h * lp;
      __m512 mx = _mm512_set1_ps(-INFINITY);
      for (int64_t j = 0; j < lp; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + j));
      const float mxs = _mm512_reduce_max_ps(mx);
      __m512 sum = _mm512_setzero_ps(), mv = _mm512_set1_ps(mxs);
      for (int64_t j = 0; j < lp; j += 16) {
        __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), mv));
        e = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_loadu_ps(s + j), _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ), e);
        _mm512_storeu_ps(s + j, e);
        sum = _mm512_add_ps(sum, e);
      }
      inv[h] = 1.0f / _mm512_reduce_add_ps(sum);
    }
    for (int64_t dc = 0; dc < D; dc += 16) {
      __m512 acc[8];
      for (int64_t h = 0; h < 8; h++) acc[h] = _mm512_setzero_ps();
      for (int64_t j = 0; j < len; j++) {
        __m512 vv = cache_load16(m, vc, base + j * D + dc, 0xffff);
        for (int64_t h = 0; h < nh; h++) acc[h] = _mm512_fmadd_ps(_mm512_set1_ps(sc[h * lp + j]), vv, acc[h]);
      }
      for (int64_t h = 0; h < nh; h++)
        _mm512_storeu_ps(out + (h0 + h) * D + dc, _mm512_mul_ps(acc[h], _mm512_set1_ps(inv[h])));
    }
  }
}

#ifdef CT_PROFILE
static double ct_prof[16];
#define PROF_MARK(i)                           \
  if (tid == 0) {                              \
    double now = omp_get_wtime();              \
    ct_prof[i] += now - prof_t;                \
    prof_t = now;                              \
  }
extern "C" double* ct_profile(void) { return ct_prof; }
#else
#define PROF_MARK(i)
#endif

// Barrier for the threads of one step: spin briefly, then yield the core. When other processes share the cores,
// a thread that waits for a preempted sibling hands its core over instead of burning its time slice.
struct StepBarrier {
  int count;
  int sense;
};

static inline void step_barrier(const Model* m, StepBarrier* b, int nth, int* local_sense) {
  if (nth == 1) return;
  if (!m->yield_barrier) {
#pragma omp barrier
    return;
  }
  const int s = !*local_sense;
  *local_sense = s;
  if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == nth) {
    __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&b->sense, s, __ATOMIC_RELEASE);
  } else {
    for (int spins = 0; __atomic_load_n(&b->sense, __ATOMIC_ACQUIRE) != s; spins++) {
      if (spins < 4000)
        _mm_pause();
      else
        sched_yield();
    }
  }
}

extern "C" int ct_abi_version(void) { return 1; }

// Reads nbytes (a multiple of 256) with nthreads threads, each a contiguous share; returns a sum so the loads
// cannot be optimised away. For measuring the memory read bandwidth the decode steps compete with.
extern "C" double ct_read(const float* p, int64_t nbytes, int64_t nthreads) {
  const int64_t n = nbytes / 4;
  double total = 0;
#pragma omp parallel num_threads((int)nthreads) reduction(+ : total)
  {
    int64_t a, b;
    split_range(n / 64, 1, omp_get_thread_num(), omp_get_num_threads(), &a, &b);
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (int64_t i = a * 64; i < b * 64; i += 64) {
      s0 = _mm512_add_ps(s0, _mm512_loadu_ps(p + i));
      s1 = _mm512_add_ps(s1, _mm512_loadu_ps(p + i + 16));
      s2 = _mm512_add_ps(s2, _mm512_loadu_ps(p + i + 32));
      s3 = _mm512_add_ps(s3, _mm512_loadu_ps(p + i + 48));
    }
    total += _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
  }
  return total;
}

extern "C" int ct_has_bf16_dot(void) {
#if defined(__AVX512BF16__)
  return 1;
#else
  return 0;
#endif
}

// One step over T new tokens (each with its batch row, cache slot and rope position; the slots must already be
// marked in m->valid). x [T, hidden] fp32 holds the input embeddings and is overwritten with the residual stream.
// Writes the final-normed hidden states [T, hidden] fp32 and the logits [n_logits, vocab] fp32 of the tokens
// logit_tok[0..n_logits).
extern "C" int ct_step(const Model* m, int64_t T, float* x, const int32_t* row, const int32_t* slot,
                       const int32_t* pos, int64_t n_logits, const int32_t* logit_tok, float* logits,
                       float* hidden_out) {
  const int64_t Hd = m->hidden, D = m->head_dim, NH = m->heads, G = m->kv_heads, I = m->inter;
  const int64_t Nqkv = (NH + 2 * G) * D;
  const int nth = (int)m->nthreads;
  StepBarrier bar = {0, 0};
  WorkRange ranges[64];
  memset(ranges, 0, sizeof(ranges));
#pragma omp parallel num_threads(nth < 64 ? nth : 64)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    int sense = 0;
    char* act = (char*)m->act + tid * m->act_stride;
    float* nrm = (float*)(act + m->act_stride / 2);  // fp32 scratch for normed rows (second half)
    float* sc = (float*)m->scores + tid * m->score_stride;
#ifdef CT_PROFILE
    double prof_t = omp_get_wtime();
#endif
    for (int64_t l = 0; l < m->layers; l++) {
      void** P = m->layer + l * 10;
      // attention block
      rmsnorm_rows(x, Hd, (int)T, (const float*)P[6], m->eps, nrm);
      prep_act(m, nrm, Hd, (int)T, Hd, act);
      for_rows(m, ranges, Nqkv, chunk_rows(m, Hd), [&](int64_t r0, int64_t r1) {
        gemv_rows(m, P[0], r0, r1, Hd, act, (int)T, [&](int64_t r, const float* res) {
          const float bias = P[1] ? ((const float*)P[1])[r] : 0.0f;
          for (int64_t t = 0; t < T; t++) ((float*)m->qkv)[t * Nqkv + r] = res[t] + bias;
        });
      });
      PROF_MARK(0)
      step_barrier(m, &bar, nt, &sense);
      PROF_MARK(1)
      if (T == 1) {  // one token: each kv head's queries only need that head's new key and value
        for_rows(m, ranges, G, 1, [&](int64_t g, int64_t) {
          write_kv(m, P[8], P[9], 0, g, row, slot, pos);
          attend(m, P[8], P[9], 0, g, row, slot, sc);
        });
      } else {
        for_rows(m, ranges, T * G, 1, [&](int64_t it, int64_t) { write_kv(m, P[8], P[9], (int)(it / G), it % G, row, slot, pos); });
        step_barrier(m, &bar, nt, &sense);
        for_rows(m, ranges, T * G, 1, [&](int64_t it, int64_t) { attend(m, P[8], P[9], (int)(it / G), it % G, row, slot, sc); });
      }
      PROF_MARK(2)
      step_barrier(m, &bar, nt, &sense);
      PROF_MARK(1)
      prep_act(m, (const float*)m->attn, NH * D, (int)T, NH * D, act);
      for_rows(m, ranges, Hd, chunk_rows(m, NH * D), [&](int64_t r0, int64_t r1) {
        gemv_rows(m, P[2], r0, r1, NH * D, act, (int)T, [&](int64_t r, const float* res) {
          for (int64_t t = 0; t < T; t++) x[t * Hd + r] += res[t];
        });
      });
      PROF_MARK(3)
      step_barrier(m, &bar, nt, &sense);
      PROF_MARK(1)
      // MLP block: blocks of 16 gate rows then the same 16 up rows, then silu(gate) * up
      rmsnorm_rows(x, Hd, (int)T, (const float*)P[7], m->eps, nrm);
      prep_act(m, nrm, Hd, (int)T, Hd, act);
      for_rows(m, ranges, I, chunk_rows(m, Hd), [&](int64_t a, int64_t b) {
        for (int64_t r0 = a; r0 < b; r0 += 16) {
          const int64_t nr = b - r0 < 16 ? b - r0 : 16;
          float gate[16 * 64], up[16 * 64];  // [row][token]
          gemv_rows(m, P[3], r0, r0 + nr, Hd, act, (int)T, [&](int64_t r, const float* res) {
            for (int64_t t = 0; t < T; t++) gate[(r - r0) * 64 + t] = res[t];
          });
          gemv_rows(m, P[4], r0, r0 + nr, Hd, act, (int)T, [&](int64_t r, const float* res) {
            for (int64_t t = 0; t < T; t++) up[(r - r0) * 64 + t] = res[t];
          });
          const __mmask16 mk = nr == 16 ? 0xffff : (__mmask16)((1u << nr) - 1);
          const __m512i idx = _mm512_mullo_epi32(
              _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(64));
          for (int64_t t = 0; t < T; t++) {
            __m512 gv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk, idx, gate + t, 4);
            __m512 uv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk, idx, up + t, 4);
            __m512 e = exp512(_mm512_min_ps(_mm512_sub_ps(_mm512_setzero_ps(), gv), _mm512_set1_ps(88.0f)));
            __m512 sv = _mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
            _mm512_mask_storeu_ps((float*)m->mid + t * I + r0, mk, _mm512_mul_ps(sv, uv));
          }
        }
      });
      PROF_MARK(4)
      step_barrier(m, &bar, nt, &sense);
      PROF_MARK(1)
      prep_act(m, (const float*)m->mid, I, (int)T, I, act);
      for_rows(m, ranges, Hd, chunk_rows(m, I), [&](int64_t r0, int64_t r1) {
        gemv_rows(m, P[5], r0, r1, I, act, (int)T, [&](int64_t r, const float* res) {
          for (int64_t t = 0; t < T; t++) x[t * Hd + r] += res[t];
        });
      });
      PROF_MARK(5)
      step_barrier(m, &bar, nt, &sense);
      PROF_MARK(1)
    }
    // final norm of every token; logits of the requested ones
    rmsnorm_rows(x, Hd, (int)T, (const float*)m->norm, m->eps, nrm);
    if (tid == 0) memcpy(hidden_out, nrm, T * Hd * 4);
    float* gathered = sc;  // the score scratch is free now
    for (int64_t j = 0; j < n_logits; j++) memcpy(gathered + j * Hd, nrm + (int64_t)logit_tok[j] * Hd, Hd * 4);
    prep_act(m, gathered, Hd, (int)n_logits, Hd, act);
    const int64_t V = m->vocab;
    for_rows(m, ranges, V, chunk_rows(m, Hd), [&](int64_t r0, int64_t r1) {
      gemv_rows(m, m->lm_w, r0, r1, Hd, act, (int)n_logits, [&](int64_t r, const float* res) {
        for (int64_t j = 0; j < n_logits; j++) logits[j * V + r] = res[j];
      });
    });
    PROF_MARK(6)
  }
  return 0;
}
"""


# ---- building and loading the native kernel -----------------------------------------------------------------
class _ModelStruct(ctypes.Structure):
    """Mirror of the kernel's `struct Model`."""

    _fields_ = [
        (name, ctypes.c_int64)
        for name in (
            "hidden", "heads", "kv_heads", "head_dim", "inter", "layers", "vocab", "max_len", "batch",
            "wdtype", "lo_split", "nthreads", "act_stride", "score_stride", "dynamic", "yield_barrier",
        )
    ] + [("eps", ctypes.c_double), ("scale", ctypes.c_double)] + [
        (name, ctypes.c_void_p)
        for name in (
            "layer", "norm", "lm_w", "rope_cos", "rope_sin", "valid", "qkv", "attn", "mid", "act", "scores",
        )
    ]


_native_lock = threading.Lock()
_native_state: dict = {}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def kernel_cache_dir() -> str:
    """Where compiled kernels are kept: `$CONCEPT_TALKER_KERNEL_DIR`, else `~/.cache/concept_talker/kernels` (used
    only as a private directory: `trusted_kernel_dir`)."""
    return os.environ.get("CONCEPT_TALKER_KERNEL_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "concept_talker", "kernels"
    )


# ---- where compiled kernels may be kept, and loading only what this user built -----------------------------
class UntrustedKernelCache(RuntimeError):
    """No folder for compiled kernels that only this user can write: the kernel is not built or loaded."""


def private_directory(path: str) -> str | None:
    """`path` as a directory that only this user can write, or None where it cannot be one.

    Made atomically with mode 0700 (`os.mkdir`, its parents as needed) when absent. An existing one must be a real
    directory (not a symbolic link) owned by this user; any group or other permission bits are removed (it is ours).
    Anything else (another user's folder, a link planted at the name) gives None.
    """
    import stat

    path = os.path.abspath(path)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            return None
        if info.st_mode & 0o077:
            os.chmod(path, 0o700)
    except OSError:
        return None
    return path


def trusted_kernel_dir() -> str:
    """Where compiled kernels are built and loaded from: `kernel_cache_dir()` when it is (or can be made) a private
    directory, else `concept_talker_kernels-<uid>` under the system's temporary folder, made and checked the same way.
    Raises `UntrustedKernelCache` where neither can be (e.g. another user owns that name)."""
    preferred = private_directory(kernel_cache_dir())
    if preferred is not None:
        return preferred
    fallback = os.path.join(tempfile.gettempdir(), f"concept_talker_kernels-{os.getuid()}")
    trusted = private_directory(fallback)
    if trusted is None:
        raise UntrustedKernelCache(
            f"neither {kernel_cache_dir()} nor {fallback} is a folder that only this user can write (absent, or a "
            "real folder owned by this user): set CONCEPT_TALKER_KERNEL_DIR to one"
        )
    return trusted


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_library_digest(library: str) -> None:
    """Write the SHA-256 of the freshly built `library`'s bytes next to it (`<library>.sha256`)."""
    with open(library, "rb") as f:
        digest = _digest(f.read())
    temporary = f"{library}.sha256.tmp-{os.getpid()}"
    with open(temporary, "w") as f:
        f.write(digest)
    os.replace(temporary, f"{library}.sha256")


def load_verified_library(library: str) -> ctypes.CDLL | None:
    """Load `library` with ctypes only if its bytes hash to the digest recorded at its build
    (`record_library_digest`) and both files are regular files owned by this user; else None (build it again).

    Loading runs the library's constructors, so nothing unverified is ever loaded."""
    import stat

    try:
        for path in (library, f"{library}.sha256"):
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
                logger.warning("Not loading the kernel %s: %s is not a file only this user can write.", library, path)
                return None
        with open(f"{library}.sha256") as f:
            recorded = f.read().strip()
        with open(library, "rb") as f:
            actual = _digest(f.read())
    except OSError:
        return None
    if actual != recorded:
        logger.warning("The kernel %s does not match the digest recorded when it was built: building it again.",
                       library)
        return None
    return ctypes.CDLL(library)


def _build_native() -> ctypes.CDLL:
    if not sys.platform.startswith("linux") or platform.machine().lower() not in ("x86_64", "amd64"):
        raise RuntimeError(f"the native kernel is built for x86-64 Linux only (this is {sys.platform}/{platform.machine()})")
    flags = _cpu_flags()
    if "avx512f" not in flags:
        raise RuntimeError("this CPU has no AVX-512")
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler found (install g++ or set CXX)")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    command = [cxx, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
    key = hashlib.sha256(
        "\n".join([_KERNEL_SOURCE, " ".join(command), version, " ".join(sorted(flags))]).encode()
    ).hexdigest()[:16]
    cache = trusted_kernel_dir()
    path = os.path.join(cache, f"fast_thinker_{key}.so")
    lib = load_verified_library(path)
    if lib is None:
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            source = os.path.join(tmp, "fast_thinker.cpp")
            with open(source, "w") as f:
                f.write(_KERNEL_SOURCE)
            built = os.path.join(tmp, "fast_thinker.so")
            result = subprocess.run(command + [source, "-o", built], capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                raise RuntimeError(f"compiling the kernel failed: {result.stderr.strip()[-2000:]}")
            os.replace(built, path)  # atomic: concurrent builders end with one complete file
            record_library_digest(path)
        lib = load_verified_library(path)
        if lib is None:
            raise RuntimeError(f"the kernel just built at {path} could not be verified (another build replaced it?)")
    if lib.ct_abi_version() != NATIVE_ABI_VERSION:
        raise RuntimeError(f"{path} has kernel ABI {lib.ct_abi_version()}, expected {NATIVE_ABI_VERSION}")
    lib.ct_read.restype = ctypes.c_double
    lib.ct_read.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    lib.ct_step.restype = ctypes.c_int
    lib.ct_step.argtypes = [ctypes.POINTER(_ModelStruct), ctypes.c_int64] + [ctypes.c_void_p] * 4 + [
        ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p
    ]
    with open("/proc/self/maps") as f:
        mapped = {os.path.realpath(line.split()[-1]) for line in f if line.count("/")}
    runtimes = {p for p in mapped if os.path.basename(p).startswith(("libgomp", "libiomp", "libomp"))}
    if len(runtimes) > 1:
        logger.warning(
            "The fast thinker kernel loaded a second OpenMP runtime next to torch's (%s): threads may compete.",
            ", ".join(sorted(runtimes)),
        )
    return lib


def load_native_kernel() -> tuple[ctypes.CDLL | None, str | None]:
    """The compiled kernel (built on first use, then cached on disk), or `(None, why it is unavailable)`.

    Set `CONCEPT_TALKER_NATIVE=0` to never build or use it.
    """
    with _native_lock:
        if "lib" not in _native_state:
            if os.environ.get("CONCEPT_TALKER_NATIVE", "1") == "0":
                _native_state.update(lib=None, why="disabled by CONCEPT_TALKER_NATIVE=0")
            else:
                try:
                    _native_state.update(lib=_build_native(), why=None)
                except Exception as err:  # any failure means: use the torch path
                    if isinstance(err, UntrustedKernelCache):
                        logger.warning("The fast thinker kernel is not used (plain PyTorch instead): %s.", err)
                    _native_state.update(lib=None, why=f"{type(err).__name__}: {err}")
        return _native_state["lib"], _native_state["why"]


def native_read_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 7, threads: int | None = None) -> float | None:
    """Memory read bandwidth (bytes/s) as the native kernel streams: median of `repeats` reads of an `nbytes` block
    on transparent huge pages with `threads` threads (default torch's). None when the kernel is unavailable."""
    lib, _ = load_native_kernel()
    if lib is None:
        return None
    nbytes = nbytes // 256 * 256
    arena = _Arena(nbytes, torch.device("cpu"))
    block = arena.take((nbytes // 4, 1), torch.float32)
    block.fill_(1.0)
    threads = threads or torch.get_num_threads()
    lib.ct_read(block.data_ptr(), nbytes, threads)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        lib.ct_read(block.data_ptr(), nbytes, threads)
        times.append(time.perf_counter() - start)
    times.sort()
    return nbytes / times[len(times) // 2]


# ---- reading the thinker's weights ------------------------------------------------------------------------
def _is_lora_layer(module: nn.Module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "lora_B") and hasattr(module, "base_layer")


@torch.no_grad()
def effective_linear(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight `[out, in]` and bias `[out]` (or None) of a linear layer, with peft LoRA adapters folded in.

    The result computes what the module computes in eval mode: the active, unmerged adapters' `scale * B @ A` is
    added to the base weight (and a `lora_bias` to the bias), in fp32. A plain `nn.Linear` gives its own tensors.
    """
    if not _is_lora_layer(module):
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


def _rms_weight(norm: nn.Module) -> torch.Tensor:
    return norm.weight.detach().float().contiguous()


def _linear_shape(module: nn.Module) -> tuple[int, int]:
    base = module.get_base_layer() if _is_lora_layer(module) else module
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
            native kernel; with unmerged peft LoRA adapters or plain.
        batch_size: conversations run together.
        max_length: positions the cache holds (padding included); `append` beyond it raises a ValueError.
        dtype: compute dtype of the weights and the key/value cache, `torch.bfloat16` (default) or `torch.float32`.
            The residual stream, norms, attention and logits are always fp32.
        backend: `"auto"` (native kernel when it can be built, else torch), `"native"` (raise if it cannot be built)
            or `"torch"`.
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
            is fused into a new tensor).
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
        if backend not in ("auto", "native", "torch"):
            raise ValueError(f"backend must be 'auto', 'native' or 'torch', got {backend!r}.")
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
        embed = backbone.embed_tokens
        if _is_lora_layer(embed) or not isinstance(embed, nn.Embedding):
            raise NotImplementedError("Adapters on the input embedding are not supported: merge them first.")
        tied = thinker.lm_head.weight is embed.weight and not _is_lora_layer(thinker.lm_head)

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
        itemsize = torch.empty(0, dtype=dtype).element_size()
        arena = None
        if weights == "copy":
            arena = _Arena(sum(_aligned(rows * cols * itemsize) for rows, cols in shapes), device)
        elif weights != "share":
            raise ValueError(f"weights must be 'copy' or 'share', got {weights!r}.")

        def matrix(sources: list[torch.Tensor]) -> torch.Tensor:
            if arena is None and len(sources) == 1:
                return sources[0].to(dtype).contiguous()  # no copy when the thinker already is in `dtype`
            rows, cols = sum(w.shape[0] for w in sources), sources[0].shape[1]
            if arena is not None:
                out = arena.take((rows, cols), dtype)
            else:
                out = torch.empty(rows, cols, dtype=dtype, device=device)
            start = 0
            for w in sources:
                out[start : start + w.shape[0]].copy_(w)
                start += w.shape[0]
            return out

        self.layers = []
        for layer, layer_projections in zip(backbone.layers, projections):
            (attn, qkv_names), _, _, _, _ = layer_projections
            qkv = [effective_linear(getattr(attn, name)) for name in qkv_names]
            qkv_b = None
            if any(b is not None for _, b in qkv):
                qkv_b = torch.cat([torch.zeros(w.shape[0], device=device) if b is None else b.float() for w, b in qkv])
            entry = dict(qkv_w=matrix([w for w, _ in qkv]), qkv_b=qkv_b)
            del qkv
            for key, (parent, (name,)) in zip(("o_w", "gate_w", "up_w", "down_w"), layer_projections[1:]):
                weight, bias = effective_linear(getattr(parent, name))
                if bias is not None:
                    raise NotImplementedError(f"A bias on {name} is not supported (Qwen2 has none).")
                entry[key] = matrix([weight])
                del weight
            entry.update(ln1=_rms_weight(layer.input_layernorm), ln2=_rms_weight(layer.post_attention_layernorm))
            self.layers.append(entry)
        self.norm = _rms_weight(backbone.norm)
        lm_w, lm_b = effective_linear(thinker.lm_head)
        if lm_b is not None:
            raise NotImplementedError("A bias on lm_head is not supported.")
        self.lm_weight = matrix([lm_w])
        # tied: one matrix serves both; else only one row of the input embedding is read per token
        self.embed_weight = self.lm_weight if tied else embed.weight.detach().to(dtype).contiguous()
        self.tied = tied
        self._arena = arena

        positions = torch.arange(max_length, device=device)[None]
        cos, sin = backbone.rotary_emb(torch.zeros(1, dtype=torch.float32, device=device), positions)
        self.rope_cos = cos[0].float().contiguous()  # [max_length, head_dim]
        self.rope_sin = sin[0].float().contiguous()

        self._allocate_cache()

        self._lib, self.native_unavailable_reason = None, None
        if backend != "torch":
            why = None
            if device.type != "cpu":
                why = f"the thinker is on {device}, the kernel runs on the CPU"
            elif self.head_dim % 16:
                why = f"head_dim {self.head_dim} is not a multiple of 16"
            else:
                lib, why = load_native_kernel()
                if lib is not None and dtype == torch.bfloat16 and not lib.ct_has_bf16_dot():
                    lo_split = False  # no AVX512-BF16: the kernel widens weights to fp32 (exact activations)
                self._lib = lib
            self.native_unavailable_reason = why
            if why is not None:
                if backend == "native":
                    raise RuntimeError(f"The native fast-thinker kernel is unavailable: {why}.")
                logger.info("FastThinkerRunner uses the torch path: %s.", why)
        self.lo_split = lo_split

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
        return "native" if self._lib is not None else "torch"

    def sharing_weights(self, batch_size: int, max_length: int) -> "FastThinkerRunner":
        """A runner over this one's weight snapshot with its own empty cache, for another turn running alongside.

        Costs only the new key/value cache (no copy of the weights). `max_length` may not exceed this runner's.
        """
        if max_length > self.max_length:
            raise ValueError(f"max_length {max_length} is beyond the snapshot's {self.max_length}: build a new runner.")
        other = copy.copy(self)
        other.batch_size, other.max_length = batch_size, max_length
        other.rope_cos, other.rope_sin = self.rope_cos[:max_length], self.rope_sin[:max_length]
        other._allocate_cache()
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
        return F.embedding(token_ids, self.embed_weight)

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
        if self._lib is not None and batch * n <= self.native_max_tokens:
            logits, hidden_states = self._step_native(x, start, n, rope_positions)
        else:
            logits, hidden_states = self._step_torch(x.view(batch, n, hidden), start, n, rope_positions)
        return logits, hidden_states.view(batch, n, hidden).to(self.dtype)

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
        pointers = []
        for layer, k, v in zip(self.layers, self.k_cache, self.v_cache):
            pointers += [
                layer["qkv_w"].data_ptr(),
                None if layer["qkv_b"] is None else layer["qkv_b"].data_ptr(),
                layer["o_w"].data_ptr(),
                layer["gate_w"].data_ptr(),
                layer["up_w"].data_ptr(),
                layer["down_w"].data_ptr(),
                layer["ln1"].data_ptr(),
                layer["ln2"].data_ptr(),
                k.data_ptr(),
                v.data_ptr(),
            ]
        self._layer_pointers = (ctypes.c_void_p * len(pointers))(*pointers)
        s = self._scratch
        self._struct = _ModelStruct(
            hidden=H, heads=NH, kv_heads=G, head_dim=D, inter=I, layers=len(self.layers), vocab=self.vocab_size,
            max_len=self.max_length, batch=self.batch_size, wdtype=0 if self.dtype == torch.bfloat16 else 1,
            lo_split=int(self.lo_split), nthreads=threads, act_stride=act_stride, score_stride=score_stride,
            dynamic=int(self.schedule == "dynamic"), yield_barrier=1,
            eps=self.eps, scale=self.scale,
            layer=ctypes.cast(self._layer_pointers, ctypes.c_void_p), norm=self.norm.data_ptr(),
            lm_w=self.lm_weight.data_ptr(), rope_cos=self.rope_cos.data_ptr(), rope_sin=self.rope_sin.data_ptr(),
            valid=self.valid.data_ptr(), qkv=s["qkv"].data_ptr(), attn=s["attn"].data_ptr(),
            mid=s["mid"].data_ptr(), act=s["act"].data_ptr(), scores=s["scores"].data_ptr(),
        )
        self._struct_ref = ctypes.byref(self._struct)
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
        self._lib.ct_step(
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
            h = self._rms(x, layer["ln1"]).to(dt)
            qkv = F.linear(h, layer["qkv_w"], None if layer["qkv_b"] is None else layer["qkv_b"].to(dt)).float()
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
            x = x + F.linear(out.transpose(1, 2).reshape(batch, n, NH * D).to(dt), layer["o_w"]).float()
            h = self._rms(x, layer["ln2"]).to(dt)
            gate, up = F.linear(h, layer["gate_w"]).float(), F.linear(h, layer["up_w"]).float()
            x = x + F.linear((F.silu(gate) * up).to(dt), layer["down_w"]).float()
        hidden = self._rms(x, self.norm)
        logits = F.linear(hidden[:, -1].to(dt), self.lm_weight).float()
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
        final norm, the whole lm_head matrix, and the token's embedding row."""
        tensors = [self.norm, self.lm_weight, self.embed_weight[0]]
        for layer in self.layers:
            tensors += [t for t in layer.values() if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)


def talker_as_causal_lm(talker: nn.Module) -> nn.Module:
    """The talker's decoder as a `Qwen2ForCausalLM` with the same weights, so `FastThinkerRunner` can run it.

    The talker's blocks are Qwen2's (RMSNorm, RoPE with rotate-half, full multi-head attention, SiLU-gated MLP) with
    fused [q; k; v] and [gate; up] matrices and no biases; its per-codebook heads `[codebooks, codebook_size + 1,
    width]` become one lm_head of `codebooks x (codebook_size + 1)` rows, so the runner's logits reshape to
    `[codebooks, codebook_size + 1]`. Inputs are given as embeddings (`Talker.embed_*`); the embedding table here
    is unused. The copy shares no storage with the talker.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = talker.config
    width, heads = config.hidden_size, config.num_attention_heads
    codebooks, rows = talker.heads.shape[0], talker.heads.shape[1]
    qwen = Qwen2Config(
        vocab_size=codebooks * rows, hidden_size=width, intermediate_size=config.intermediate_size,
        num_hidden_layers=len(talker.blocks), num_attention_heads=heads, num_key_value_heads=heads,
        rms_norm_eps=talker.norm.eps if talker.norm.eps is not None else config.rms_norm_eps,
        rope_theta=float(talker.rotary.theta), max_position_embeddings=1 << 20, tie_word_embeddings=False,
        hidden_act="silu",
    )
    with torch.device("meta"):
        model = Qwen2ForCausalLM(qwen)
    state = {"model.norm.weight": talker.norm.weight, "lm_head.weight": talker.heads.reshape(codebooks * rows, width),
             "model.embed_tokens.weight": torch.zeros(1, width).expand(codebooks * rows, width)}
    for i, block in enumerate(talker.blocks):
        prefix = f"model.layers.{i}."
        q, k, v = block.attention.qkv_proj.weight.chunk(3, dim=0)
        gate, up = block.gate_up_proj.weight.chunk(2, dim=0)
        state.update({
            prefix + "self_attn.q_proj.weight": q, prefix + "self_attn.k_proj.weight": k,
            prefix + "self_attn.v_proj.weight": v, prefix + "self_attn.o_proj.weight": block.attention.o_proj.weight,
            prefix + "mlp.gate_proj.weight": gate, prefix + "mlp.up_proj.weight": up,
            prefix + "mlp.down_proj.weight": block.down_proj.weight,
            prefix + "input_layernorm.weight": block.attention_norm.weight,
            prefix + "post_attention_layernorm.weight": block.mlp_norm.weight,
        })
        for name in ("q_proj", "k_proj", "v_proj"):
            state[prefix + f"self_attn.{name}.bias"] = torch.zeros(width)
    dtype = talker.heads.dtype
    model.load_state_dict({k: v.detach().to(dtype) for k, v in state.items()}, assign=True, strict=True)
    model.model.rotary_emb = type(model.model.rotary_emb)(qwen)  # its inv_freq buffer, computed on the CPU
    return model.eval()


__all__ = ["FastThinkerRunner", "effective_linear", "load_native_kernel", "native_read_bandwidth",
           "talker_as_causal_lm"]
