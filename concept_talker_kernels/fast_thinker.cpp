// Concept-Talker fast decode step: one OpenMP region runs every layer of a decode (or short prefill) step of a
// Qwen2-shaped decoder (the thinker, or the talker viewed as one).
//
// Built once per instruction set by concept_talker_kernels (torch.utils.cpp_extension), from this one file:
//   -DCT_ISA_AVX512  AVX-512 F/BW/DQ/VL (+ AVX512-BF16 dot products where the CPU has them), 16 fp32 lanes
//   -DCT_ISA_AVX2    AVX2 + FMA + F16C, 8 fp32 lanes (runs on every x86-64 CPU since Haswell / Zen 1)
// Weights are row-major [out, in] (PyTorch's nn.Linear layout): bf16, fp32, or int8 with one fp32 scale per output
// row (weight-only: activations stay fp32). Each thread streams a contiguous block of rows, one row at a time,
// which keeps the hardware prefetcher on a single sequential stream.
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>

#if defined(CT_ISA_AVX512)
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512DQ__) || !defined(__AVX512VL__)
#error "CT_ISA_AVX512 needs -mavx512f -mavx512bw -mavx512dq -mavx512vl"
#endif
#define CT_LANES 16
#elif defined(CT_ISA_AVX2)
#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "CT_ISA_AVX2 needs -mavx2 -mfma -mf16c"
#endif
#if defined(__AVX512F__)
#error "CT_ISA_AVX2 must be built without AVX-512 (it has to run on CPUs that lack it)"
#endif
#define CT_LANES 8
#else
#error "define CT_ISA_AVX512 or CT_ISA_AVX2"
#endif

#define CT_ABI_VERSION 2
#define CT_MAX_TOKENS 64

typedef uint16_t bf16_t;
static const int L = CT_LANES;

enum { W_BF16 = 0, W_F32 = 1, W_I8 = 2 };
enum { LAYER_SLOTS = 15 };
// per-layer slots of Model::layer
enum { S_QKV_W, S_QKV_B, S_O_W, S_GATE_W, S_UP_W, S_DOWN_W, S_LN1, S_LN2, S_K, S_V,
       S_QKV_S, S_O_S, S_GATE_S, S_UP_S, S_DOWN_S };

struct Model {
  int64_t hidden, heads, kv_heads, head_dim, inter, layers, vocab, max_len, batch;
  int64_t wdtype;        // W_BF16, W_F32 or W_I8 (int8 rows, each with an fp32 scale)
  int64_t cdtype;        // key/value cache: 0 bf16, 1 fp32
  int64_t lo_split;      // bf16 weights on AVX512-BF16: also use the bf16 rounding error of the activations
  int64_t nthreads;
  int64_t act_stride;    // bytes of private activation scratch per thread
  int64_t score_stride;  // floats of attention-score scratch per thread
  int64_t dynamic;       // 1: contiguous shares with stealing, 0: fixed contiguous shares
  int64_t yield_barrier; // 1: barriers spin then yield the core, 0: OpenMP barriers
  double eps, scale;
  void** layer;          // [layers][LAYER_SLOTS], see S_*
  void* norm;
  void* lm_w;
  void* lm_s;            // int8: [vocab] fp32 scales, else null
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

// ---- the vector layer: L fp32 lanes ------------------------------------------------------------------------------
// v_*n variants touch only the first n (0 < n <= L) elements in memory; the other lanes read as 0.
#if defined(CT_ISA_AVX512)
typedef __m512 vf;
static inline __mmask16 tail_mask(int n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1); }
static inline vf v_zero() { return _mm512_setzero_ps(); }
static inline vf v_set1(float x) { return _mm512_set1_ps(x); }
static inline vf v_load(const float* p) { return _mm512_loadu_ps(p); }
static inline vf v_loadn(const float* p, int n) { return _mm512_maskz_loadu_ps(tail_mask(n), p); }
static inline void v_store(float* p, vf v) { _mm512_storeu_ps(p, v); }
static inline void v_storen(float* p, vf v, int n) { _mm512_mask_storeu_ps(p, tail_mask(n), v); }
static inline vf v_add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf v_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf v_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf v_div(vf a, vf b) { return _mm512_div_ps(a, b); }
static inline vf v_max(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline vf v_min(vf a, vf b) { return _mm512_min_ps(a, b); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline float v_sum(vf a) { return _mm512_reduce_add_ps(a); }
static inline float v_hmax(vf a) { return _mm512_reduce_max_ps(a); }
static inline vf v_bf16(const bf16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
static inline vf v_bf16n(const bf16_t* p, int n) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(tail_mask(n), p)), 16));
}
// 2L = 32 bf16 weights -> their even-indexed and odd-indexed elements as fp32 (a shift and a mask: no shuffles)
static inline void v_bf16_pair(const bf16_t* p, vf* even, vf* odd) {
  const __m512i w = _mm512_loadu_si512(p);
  *even = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  *odd = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32((int)0xffff0000u)));
}
// exp for x <= 88, relative error ~1e-7.
static inline vf v_exp(vf x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  vf n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vf r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  vf p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}
// e where s is not -inf, else 0
static inline vf v_zero_where_ninf(vf e, vf s) {
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(s, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ), e);
}
// Lane j < 4 of the result is the sum of the j-th vector (a few shuffles instead of four full reductions).
static inline __m128 reduce4(vf a, vf b, vf c, vf d) {
  const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  __m512 x = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, 0x44), _mm512_shuffle_ps(ab, cd, 0xEE));
  x = _mm512_add_ps(x, _mm512_shuffle_f32x4(x, x, 0x4E));
  x = _mm512_add_ps(x, _mm512_shuffle_f32x4(x, x, 0xB1));
  return _mm512_castps512_ps128(x);
}
#else  // AVX2
typedef __m256 vf;
static inline __m256i tail_mask(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline vf v_zero() { return _mm256_setzero_ps(); }
static inline vf v_set1(float x) { return _mm256_set1_ps(x); }
static inline vf v_load(const float* p) { return _mm256_loadu_ps(p); }
static inline vf v_loadn(const float* p, int n) { return _mm256_maskload_ps(p, tail_mask(n)); }
static inline void v_store(float* p, vf v) { _mm256_storeu_ps(p, v); }
static inline void v_storen(float* p, vf v, int n) { _mm256_maskstore_ps(p, tail_mask(n), v); }
static inline vf v_add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf v_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline vf v_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf v_div(vf a, vf b) { return _mm256_div_ps(a, b); }
static inline vf v_max(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline vf v_min(vf a, vf b) { return _mm256_min_ps(a, b); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline float v_sum(vf a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
static inline float v_hmax(vf a) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
static inline vf v_bf16(const bf16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
static inline vf v_bf16n(const bf16_t* p, int n) {
  alignas(16) bf16_t b[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  memcpy(b, p, (size_t)n * 2);
  return v_bf16(b);
}
// 2L = 16 bf16 weights -> their even-indexed and odd-indexed elements as fp32 (a shift and a mask: no shuffles)
static inline void v_bf16_pair(const bf16_t* p, vf* even, vf* odd) {
  const __m256i w = _mm256_loadu_si256((const __m256i*)p);
  *even = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  *odd = _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32((int)0xffff0000u)));
}
static inline vf v_exp(vf x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  vf n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vf r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187045e-06f), r);
  vf p = _mm256_set1_ps(1.0f / 5040);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  // 2^n for n in [-126, 127] (x in [-87, 88]) by building the exponent bits
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
static inline vf v_zero_where_ninf(vf e, vf s) {
  return _mm256_and_ps(e, _mm256_cmp_ps(s, _mm256_set1_ps(-INFINITY), _CMP_NEQ_OQ));
}
static inline __m128 reduce4(vf a, vf b, vf c, vf d) {
  const __m256 ab = _mm256_hadd_ps(a, b);   // a01 a23 b01 b23 | a45 a67 b45 b67
  const __m256 cd = _mm256_hadd_ps(c, d);
  const __m256 x = _mm256_hadd_ps(ab, cd);  // a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7
  return _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
}
#endif

// ---- activations: fp32 rows -> the layout the dot products read ---------------------------------------------
// bf16 weights with AVX512-BF16: [T][hi: Kp bf16][lo: Kp bf16]; int8 weights: [T][Kp int16, fp32 scale]; bf16
// weights without AVX512-BF16: [T][Kp fp32], each block of 2L elements stored as its L even-indexed elements then
// its L odd-indexed ones (the order dot_bf16_widen reads the weights in); fp32 weights: [T][Kp fp32]. Zero padded
// to Kp.
static inline int64_t act_row_bytes(const Model* m, int64_t K) { return pad32(K) * 4; }

// int8 weights: each activation row as 16-bit fixed point with one fp32 scale, x ~ scale * X with |X| <= 32767.
// The error per element is at most max|x| / 65534, which is no larger than bf16's rounding of the elements that
// matter (max|x| <= sqrt(K) rms(x)), and the products are summed exactly in int32.
static inline void prep_act_i16(const float* s, int64_t K, int64_t Kp, int16_t* X, float* scale_out) {
  float mx = 0.0f;
  for (int64_t i = 0; i < K; i++) mx = fabsf(s[i]) > mx ? fabsf(s[i]) : mx;
  const float scale = mx > 0.0f ? mx / 32767.0f : 1.0f, inv = 1.0f / scale;
  for (int64_t i = 0; i < K; i++) {
    float v = nearbyintf(s[i] * inv);
    v = v > 32767.0f ? 32767.0f : (v < -32767.0f ? -32767.0f : v);
    X[i] = (int16_t)v;
  }
  for (int64_t i = K; i < Kp; i++) X[i] = 0;
  *scale_out = scale;
}

static void prep_act(const Model* m, const float* src, int64_t lds, int T, int64_t K, char* act) {
  const int64_t Kp = pad32(K), rb = act_row_bytes(m, K);
  for (int t = 0; t < T; t++) {
    const float* s = src + t * lds;
    if (m->wdtype == W_I8) {
      int16_t* X = (int16_t*)(act + t * rb);
      prep_act_i16(s, K, Kp, X, (float*)(X + Kp));
      continue;
    }
#if defined(__AVX512BF16__)
    if (m->wdtype == W_BF16) {
      bf16_t* hi = (bf16_t*)(act + t * rb);
      bf16_t* lo = hi + Kp;
      for (int64_t i = 0; i < Kp; i += 32) {
        __mmask16 m0 = i + 16 <= K ? 0xffff : (i < K ? (__mmask16)((1u << (K - i)) - 1) : 0);
        __mmask16 m1 = i + 32 <= K ? 0xffff : (i + 16 < K ? (__mmask16)((1u << (K - i - 16)) - 1) : 0);
        __m512 a = _mm512_maskz_loadu_ps(m0, s + i), b = _mm512_maskz_loadu_ps(m1, s + i + 16);
        __m512bh h = _mm512_cvtne2ps_pbh(b, a);
        _mm512_storeu_si512(hi + i, (__m512i)h);
        __m512 ha = v_bf16(hi + i), hb = v_bf16(hi + i + 16);
        __m512bh l = _mm512_cvtne2ps_pbh(_mm512_sub_ps(b, hb), _mm512_sub_ps(a, ha));
        _mm512_storeu_si512(lo + i, (__m512i)l);
      }
      continue;
    }
#endif
    float* d = (float*)(act + t * rb);
#if !defined(__AVX512BF16__)
    if (m->wdtype == W_BF16) {
      for (int64_t b = 0; b < Kp; b += 2 * L)
        for (int j = 0; j < L; j++) {
          d[b + j] = b + 2 * j < K ? s[b + 2 * j] : 0.0f;
          d[b + L + j] = b + 2 * j + 1 < K ? s[b + 2 * j + 1] : 0.0f;
        }
      continue;
    }
#endif
    memcpy(d, s, K * 4);
    for (int64_t i = K; i < Kp; i++) d[i] = 0.0f;
  }
}

// ---- dot products of one weight row with NB activation rows (unreduced: out[t] sums to the product) -----------
#if defined(__AVX512BF16__)
template <int NB, bool LO>
static inline __attribute__((always_inline)) void dot_bf16(const bf16_t* w, int64_t K, const char* act, int64_t rb,
                                                            vf* out) {
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

// fp32 weights: FMA against fp32 activations. U independent accumulators per token hide the FMA latency.
// Activations are zero padded to a multiple of 32, so only the weights need a tail load.
struct LoadF32 {
  static inline vf full(const float* w) { return v_load(w); }
  static inline vf part(const float* w, int n) { return v_loadn(w, n); }
};

template <int NB, class Load, class W>
static inline __attribute__((always_inline)) void dot_fma(const W* w, int64_t K, const char* act, int64_t rb,
                                                           vf* out) {
  constexpr int U = NB == 1 ? 4 : 2;
  vf acc[U][NB];
  for (int u = 0; u < U; u++)
    for (int t = 0; t < NB; t++) acc[u][t] = v_zero();
  int64_t i = 0;
  for (; i + U * L <= K; i += U * L) {
    for (int u = 0; u < U; u++) {
      const vf wv = Load::full(w + i + u * L);
      for (int t = 0; t < NB; t++)
        acc[u][t] = v_fma(wv, v_load((const float*)(act + t * rb) + i + u * L), acc[u][t]);
    }
  }
  for (; i < K; i += L) {
    const int n = K - i < L ? (int)(K - i) : L;
    const vf wv = n == L ? Load::full(w + i) : Load::part(w + i, n);
    for (int t = 0; t < NB; t++) acc[0][t] = v_fma(wv, v_load((const float*)(act + t * rb) + i), acc[0][t]);
  }
  for (int t = 0; t < NB; t++) {
    vf s = acc[0][t];
    for (int u = 1; u < U; u++) s = v_add(s, acc[u][t]);
    out[t] = s;
  }
}

// bf16 weights widened to fp32 (AVX2, and AVX-512 without AVX512-BF16): 2L weights per load, split into even and
// odd elements by a shift and a mask, against activations stored in that order (prep_act). One load and two
// integer ops per 2L weights instead of a widening shuffle per L: the dot product stays memory-bound on one core.
template <int NB>
static inline __attribute__((always_inline)) void dot_bf16_widen(const bf16_t* w, int64_t K, const char* act,
                                                                  int64_t rb, vf* out) {
  constexpr int U = NB == 1 ? 2 : 1;  // blocks of 2L per step: 2U independent accumulators per token
  vf acc[2 * U][NB];
  for (int u = 0; u < 2 * U; u++)
    for (int t = 0; t < NB; t++) acc[u][t] = v_zero();
  int64_t i = 0;
  for (; i + 2 * L * U <= K; i += 2 * L * U) {
    for (int u = 0; u < U; u++) {
      vf even, odd;
      v_bf16_pair(w + i + 2 * L * u, &even, &odd);
      for (int t = 0; t < NB; t++) {
        const float* x = (const float*)(act + t * rb) + i + 2 * L * u;
        acc[2 * u][t] = v_fma(even, v_load(x), acc[2 * u][t]);
        acc[2 * u + 1][t] = v_fma(odd, v_load(x + L), acc[2 * u + 1][t]);
      }
    }
  }
  for (; i < K; i += 2 * L) {  // activations are zero padded to Kp (a multiple of 2L)
    alignas(64) bf16_t tail[2 * CT_LANES];
    const int64_t n = K - i < 2 * L ? K - i : 2 * L;
    memset(tail, 0, sizeof(tail));
    memcpy(tail, w + i, (size_t)n * 2);
    vf even, odd;
    v_bf16_pair(tail, &even, &odd);
    for (int t = 0; t < NB; t++) {
      const float* x = (const float*)(act + t * rb) + i;
      acc[0][t] = v_fma(even, v_load(x), acc[0][t]);
      acc[1][t] = v_fma(odd, v_load(x + L), acc[1][t]);
    }
  }
  for (int t = 0; t < NB; t++) {
    vf s = acc[0][t];
    for (int u = 1; u < 2 * U; u++) s = v_add(s, acc[u][t]);
    out[t] = s;
  }
}

// int8 weights against 16-bit fixed-point activations (prep_act_i16): int16 x int16 multiply-adds summed in int32
// (in blocks short enough never to overflow: 2 products of at most 127 * 32767 per lane and step), then scaled by
// the activation row's scale (the caller applies the weight row's). Two to three times fewer instructions per
// weight than widening to fp32, which keeps int8 decoding memory-bound on two cores.
template <int NB>
static inline __attribute__((always_inline)) void dot_i8(const int8_t* w, int64_t K, const char* act, int64_t rb,
                                                          vf* out) {
  const int64_t Kp = pad32(K);
  constexpr int64_t BLOCK = 8192;  // < 2^31 / (2 * 127 * 32767) steps per accumulator lane
  vf f[NB];
  for (int t = 0; t < NB; t++) f[t] = v_zero();
  for (int64_t kb = 0; kb < K; kb += BLOCK) {
    const int64_t ke = K - kb < BLOCK ? K : kb + BLOCK;
#if defined(CT_ISA_AVX512)
    __m512i a[NB], b[NB];
    for (int t = 0; t < NB; t++) a[t] = b[t] = _mm512_setzero_si512();
    int64_t i = kb;
    for (; i + 64 <= ke; i += 64) {
      const __m512i w0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)(w + i)));
      const __m512i w1 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)(w + i + 32)));
      for (int t = 0; t < NB; t++) {
        const int16_t* x = (const int16_t*)(act + t * rb);
#if defined(__AVX512VNNI__)
        a[t] = _mm512_dpwssd_epi32(a[t], w0, _mm512_loadu_si512(x + i));
        b[t] = _mm512_dpwssd_epi32(b[t], w1, _mm512_loadu_si512(x + i + 32));
#else
        a[t] = _mm512_add_epi32(a[t], _mm512_madd_epi16(w0, _mm512_loadu_si512(x + i)));
        b[t] = _mm512_add_epi32(b[t], _mm512_madd_epi16(w1, _mm512_loadu_si512(x + i + 32)));
#endif
      }
    }
    for (; i < ke; i += 32) {  // activations are zero padded to Kp: only the weights need a masked load
      const __mmask32 mk = i + 32 <= ke ? 0xffffffffu : (__mmask32)((1ull << (ke - i)) - 1);
      const __m512i w0 = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mk, w + i));
      for (int t = 0; t < NB; t++)
        a[t] = _mm512_add_epi32(a[t], _mm512_madd_epi16(w0, _mm512_loadu_si512((const int16_t*)(act + t * rb) + i)));
    }
    for (int t = 0; t < NB; t++) f[t] = _mm512_add_ps(f[t], _mm512_cvtepi32_ps(_mm512_add_epi32(a[t], b[t])));
#else
    __m256i a[NB], b[NB];
    for (int t = 0; t < NB; t++) a[t] = b[t] = _mm256_setzero_si256();
    int64_t i = kb;
    for (; i + 32 <= ke; i += 32) {
      const __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(w + i)));
      const __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(w + i + 16)));
      for (int t = 0; t < NB; t++) {
        const int16_t* x = (const int16_t*)(act + t * rb);
        a[t] = _mm256_add_epi32(a[t], _mm256_madd_epi16(w0, _mm256_loadu_si256((const __m256i*)(x + i))));
        b[t] = _mm256_add_epi32(b[t], _mm256_madd_epi16(w1, _mm256_loadu_si256((const __m256i*)(x + i + 16))));
      }
    }
    for (; i < ke; i += 16) {
      alignas(16) int8_t tail[16] = {0};
      memcpy(tail, w + i, (size_t)(ke - i < 16 ? ke - i : 16));
      const __m256i w0 = _mm256_cvtepi8_epi16(_mm_load_si128((const __m128i*)tail));
      for (int t = 0; t < NB; t++)
        a[t] = _mm256_add_epi32(
            a[t], _mm256_madd_epi16(w0, _mm256_loadu_si256((const __m256i*)((const int16_t*)(act + t * rb) + i))));
    }
    for (int t = 0; t < NB; t++) f[t] = _mm256_add_ps(f[t], _mm256_cvtepi32_ps(_mm256_add_epi32(a[t], b[t])));
#endif
  }
  for (int t = 0; t < NB; t++) {
    const float xs = *(const float*)((const int16_t*)(act + t * rb) + Kp);
    out[t] = v_mul(f[t], v_set1(xs));
  }
}

// Kinds of dot product: bf16 weights with the activations' bf16 error term (AVX512-BF16), bf16 without it
// (AVX512-BF16), fp32 weights, bf16 weights widened to fp32, int8 weights (dot_i8).
enum { DOT_BF16_LO = 0, DOT_BF16 = 1, DOT_F32 = 2, DOT_BF16_WIDEN = 3, DOT_I8 = 4 };

template <int NB, int KIND>
static inline __attribute__((always_inline)) void dot_nb(const void* W, int64_t r, int64_t K, const char* act,
                                                          int64_t rb, vf* out) {
  if constexpr (KIND == DOT_F32) {
    dot_fma<NB, LoadF32>((const float*)W + r * K, K, act, rb, out);
  } else if constexpr (KIND == DOT_BF16_WIDEN) {
    dot_bf16_widen<NB>((const bf16_t*)W + r * K, K, act, rb, out);
  } else if constexpr (KIND == DOT_I8) {
    dot_i8<NB>((const int8_t*)W + r * K, K, act, rb, out);
  } else {
#if defined(__AVX512BF16__)
    dot_bf16<NB, KIND == DOT_BF16_LO>((const bf16_t*)W + r * K, K, act, rb, out);
#endif
  }
}

// Rows [r0, r1) against NB <= 4 activation rows. Each row is streamed on its own (one sequential stream for the
// hardware prefetcher); the partial sums of 4 consecutive rows are reduced together.
template <int NB, int KIND, class Emit>
static inline void rows_nb(const void* W, int64_t r0, int64_t r1, int64_t K, const char* act, int64_t rb,
                           Emit& emit) {
  float res[NB];
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    vf v0[NB], v1[NB], v2[NB], v3[NB];
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
    vf v[NB];
    dot_nb<NB, KIND>(W, r, K, act, rb, v);
    for (int t = 0; t < NB; t++) res[t] = v_sum(v[t]);
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
  float res[4][CT_MAX_TOKENS];
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
    vf v[4];
    for (int t0 = 0; t0 < T; t0 += 4) {
      const char* a = act + t0 * rb;
      const int nb = T - t0 < 4 ? T - t0 : 4;
      switch (nb) {
        case 1: dot_nb<1, KIND>(W, r, K, a, rb, v); break;
        case 2: dot_nb<2, KIND>(W, r, K, a, rb, v); break;
        case 3: dot_nb<3, KIND>(W, r, K, a, rb, v); break;
        default: dot_nb<4, KIND>(W, r, K, a, rb, v); break;
      }
      for (int t = 0; t < nb; t++) res[0][t0 + t] = v_sum(v[t]);
    }
    emit(r, res[0]);
  }
}

// Rows [r0, r1) of the matrix W (with per-row scales S for int8 weights) against T activation rows.
template <class Emit>
static inline void gemv_rows(const Model* m, const void* W, const void* S, int64_t r0, int64_t r1, int64_t K,
                             const char* act, int T, Emit emit) {
  const int64_t rb = act_row_bytes(m, K);
  if (m->wdtype == W_I8) {
    const float* scale = (const float*)S;
    auto scaled = [&](int64_t r, const float* res) {
      float out[CT_MAX_TOKENS];
      const float s = scale[r];
      for (int t = 0; t < T; t++) out[t] = res[t] * s;
      emit(r, (const float*)out);
    };
    rows_kind<DOT_I8>(W, r0, r1, K, act, rb, T, scaled);
    return;
  }
  if (m->wdtype == W_F32) {
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
  const int64_t item = m->wdtype == W_F32 ? 4 : (m->wdtype == W_I8 ? 1 : 2);
  const int64_t rows = (131072 / (K * item)) & ~(int64_t)15;
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

static inline void cache_set(const Model* m, void* c, int64_t idx, float v) {
  if (m->cdtype == 1)
    ((float*)c)[idx] = v;
  else
    ((bf16_t*)c)[idx] = f32_to_bf16(v);
}
// n (0 < n <= L) cache entries from idx as fp32 lanes
static inline vf cache_loadn(const Model* m, const void* c, int64_t idx, int n) {
  if (m->cdtype == 1) return n == L ? v_load((const float*)c + idx) : v_loadn((const float*)c + idx, n);
  return n == L ? v_bf16((const bf16_t*)c + idx) : v_bf16n((const bf16_t*)c + idx, n);
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
  const int64_t D = m->head_dim, H = m->heads, G = m->kv_heads, hq = H / G, Lm = m->max_len;
  float* q = (float*)m->qkv + t * (H + 2 * G) * D;
  float* k = q + (H + g) * D;
  float* v = q + (H + G + g) * D;
  const float* cs = (const float*)m->rope_cos + (int64_t)pos[t] * D;
  const float* sn = (const float*)m->rope_sin + (int64_t)pos[t] * D;
  for (int64_t i = 0; i < hq; i++) rope(q + (g * hq + i) * D, cs, sn, D);
  rope(k, cs, sn, D);
  const int64_t base = ((int64_t)row[t] * G + g) * D * Lm;  // K: [B, G, D, Lm]; V: [B, G, Lm, D]
  for (int64_t d = 0; d < D; d++) cache_set(m, kc, base + d * Lm + slot[t], k[d]);
  for (int64_t d = 0; d < D; d++) cache_set(m, vc, base + (int64_t)slot[t] * D + d, v[d]);
}

// Token t, kv head g: attention of the group's query heads over cache positions 0..slot[t].
static void attend(const Model* m, const void* kc, const void* vc, int t, int64_t g, const int32_t* row,
                   const int32_t* slot, float* sc) {
  const int64_t D = m->head_dim, H = m->heads, G = m->kv_heads, hq = H / G, Lm = m->max_len;
  const int64_t b = row[t], p = slot[t], len = p + 1, lp = (len + 15) & ~(int64_t)15;
  const float* q = (const float*)m->qkv + t * (H + 2 * G) * D + g * hq * D;
  float* out = (float*)m->attn + t * H * D + g * hq * D;
  const int64_t base = (b * G + g) * D * Lm;
  const uint8_t* valid = (const uint8_t*)m->valid + b * Lm;
  const vf scale = v_set1((float)m->scale), ninf = v_set1(-INFINITY);
  for (int64_t h0 = 0; h0 < hq; h0 += 8) {
    const int64_t nh = hq - h0 < 8 ? hq - h0 : 8;
    // scores [nh][lp]: L positions per vector (keys are stored transposed)
    for (int64_t j = 0; j < len; j += L) {
      const int n = len - j < L ? (int)(len - j) : L;
      vf acc[8];
      for (int64_t h = 0; h < 8; h++) acc[h] = v_zero();
      for (int64_t d = 0; d < D; d++) {
        const vf kv = cache_loadn(m, kc, base + d * Lm + j, n);
        for (int64_t h = 0; h < nh; h++) acc[h] = v_fma(v_set1(q[(h0 + h) * D + d]), kv, acc[h]);
      }
      for (int64_t h = 0; h < nh; h++) v_store(sc + h * lp + j, v_mul(acc[h], scale));
      for (int u = 0; u < L; u++) {  // padding and positions past the end score -inf
        if (j + u < len && (valid[j + u] || j + u == p)) continue;
        for (int64_t h = 0; h < nh; h++) sc[h * lp + j + u] = -INFINITY;
      }
    }
    for (int64_t j = (len + L - 1) / L * L; j < lp; j++)
      for (int64_t h = 0; h < nh; h++) sc[h * lp + j] = -INFINITY;
    float inv[8];
    for (int64_t h = 0; h < nh; h++) {
      float* s = sc + h * lp;
      vf mx = ninf;
      for (int64_t j = 0; j < lp; j += L) mx = v_max(mx, v_load(s + j));
      const vf mv = v_set1(v_hmax(mx));
      vf sum = v_zero();
      for (int64_t j = 0; j < lp; j += L) {
        const vf sj = v_load(s + j);
        const vf e = v_zero_where_ninf(v_exp(v_sub(sj, mv)), sj);
        v_store(s + j, e);
        sum = v_add(sum, e);
      }
      inv[h] = 1.0f / v_sum(sum);
    }
    for (int64_t dc = 0; dc < D; dc += L) {
      vf acc[8];
      for (int64_t h = 0; h < 8; h++) acc[h] = v_zero();
      for (int64_t j = 0; j < len; j++) {
        const vf vv = cache_loadn(m, vc, base + j * D + dc, L);
        for (int64_t h = 0; h < nh; h++) acc[h] = v_fma(v_set1(sc[h * lp + j]), vv, acc[h]);
      }
      for (int64_t h = 0; h < nh; h++) v_store(out + (h0 + h) * D + dc, v_mul(acc[h], v_set1(inv[h])));
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

extern "C" int ct_abi_version(void) { return CT_ABI_VERSION; }
extern "C" int ct_lanes(void) { return CT_LANES; }
extern "C" int ct_max_tokens(void) { return CT_MAX_TOKENS; }
extern "C" int ct_has_bf16_dot(void) {
#if defined(__AVX512BF16__)
  return 1;
#else
  return 0;
#endif
}

// Reads nbytes (a multiple of 256) with nthreads threads, each a contiguous share; returns a sum so the loads
// cannot be optimised away. For measuring the memory read bandwidth the decode steps compete with.
extern "C" double ct_read(const float* p, int64_t nbytes, int64_t nthreads) {
  const int64_t n = nbytes / 4;
  double total = 0;
#pragma omp parallel num_threads((int)nthreads) reduction(+ : total)
  {
    int64_t a, b;
    split_range(n / 64, 1, omp_get_thread_num(), omp_get_num_threads(), &a, &b);
    vf s0 = v_zero(), s1 = s0, s2 = s0, s3 = s0;
    for (int64_t i = a * 64; i < b * 64; i += 4 * L) {
      s0 = v_add(s0, v_load(p + i));
      s1 = v_add(s1, v_load(p + i + L));
      s2 = v_add(s2, v_load(p + i + 2 * L));
      s3 = v_add(s3, v_load(p + i + 3 * L));
    }
    total += v_sum(v_add(v_add(s0, s1), v_add(s2, s3)));
  }
  return total;
}

// One step over T new tokens (each with its batch row, cache slot and rope position; the slots must already be
// marked in m->valid). x [T, hidden] fp32 holds the input embeddings and is overwritten with the residual stream.
// Writes the final-normed hidden states [T, hidden] fp32 and the logits [n_logits, vocab] fp32 of the tokens
// logit_tok[0..n_logits). Returns 0, or -1 when T is out of range.
extern "C" int ct_step(const Model* m, int64_t T, float* x, const int32_t* row, const int32_t* slot,
                       const int32_t* pos, int64_t n_logits, const int32_t* logit_tok, float* logits,
                       float* hidden_out) {
  if (T < 1 || T > CT_MAX_TOKENS || n_logits < 0 || n_logits > T) return -1;
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
      void** P = m->layer + l * LAYER_SLOTS;
      // attention block
      rmsnorm_rows(x, Hd, (int)T, (const float*)P[S_LN1], m->eps, nrm);
      prep_act(m, nrm, Hd, (int)T, Hd, act);
      for_rows(m, ranges, Nqkv, chunk_rows(m, Hd), [&](int64_t r0, int64_t r1) {
        gemv_rows(m, P[S_QKV_W], P[S_QKV_S], r0, r1, Hd, act, (int)T, [&](int64_t r, const float* res) {
          const float bias = P[S_QKV_B] ? ((const float*)P[S_QKV_B])[r] : 0.0f;
          for (int64_t t = 0; t < T; t++) ((float*)m->qkv)[t * Nqkv + r] = res[t] + bias;
        });
      });
      PROF_MARK(0)
      step_barrier(m, &bar, nt, &sense);
      PROF_MARK(1)
      if (T == 1) {  // one token: each kv head's queries only need that head's new key and value
        for_rows(m, ranges, G, 1, [&](int64_t g, int64_t) {
          write_kv(m, P[S_K], P[S_V], 0, g, row, slot, pos);
          attend(m, P[S_K], P[S_V], 0, g, row, slot, sc);
        });
      } else {
        for_rows(m, ranges, T * G, 1, [&](int64_t it, int64_t) {
          write_kv(m, P[S_K], P[S_V], (int)(it / G), it % G, row, slot, pos);
        });
        step_barrier(m, &bar, nt, &sense);
        for_rows(m, ranges, T * G, 1, [&](int64_t it, int64_t) {
          attend(m, P[S_K], P[S_V], (int)(it / G), it % G, row, slot, sc);
        });
      }
      PROF_MARK(2)
      step_barrier(m, &bar, nt, &sense);
      PROF_MARK(1)
      prep_act(m, (const float*)m->attn, NH * D, (int)T, NH * D, act);
      for_rows(m, ranges, Hd, chunk_rows(m, NH * D), [&](int64_t r0, int64_t r1) {
        gemv_rows(m, P[S_O_W], P[S_O_S], r0, r1, NH * D, act, (int)T, [&](int64_t r, const float* res) {
          for (int64_t t = 0; t < T; t++) x[t * Hd + r] += res[t];
        });
      });
      PROF_MARK(3)
      step_barrier(m, &bar, nt, &sense);
      PROF_MARK(1)
      // MLP block: blocks of 16 gate rows then the same 16 up rows, then silu(gate) * up
      rmsnorm_rows(x, Hd, (int)T, (const float*)P[S_LN2], m->eps, nrm);
      prep_act(m, nrm, Hd, (int)T, Hd, act);
      for_rows(m, ranges, I, chunk_rows(m, Hd), [&](int64_t a, int64_t b) {
        for (int64_t r0 = a; r0 < b; r0 += 16) {
          const int64_t nr = b - r0 < 16 ? b - r0 : 16;
          alignas(64) float gate[CT_MAX_TOKENS * 16], up[CT_MAX_TOKENS * 16];  // [token][row]
          gemv_rows(m, P[S_GATE_W], P[S_GATE_S], r0, r0 + nr, Hd, act, (int)T, [&](int64_t r, const float* res) {
            for (int64_t t = 0; t < T; t++) gate[t * 16 + (r - r0)] = res[t];
          });
          gemv_rows(m, P[S_UP_W], P[S_UP_S], r0, r0 + nr, Hd, act, (int)T, [&](int64_t r, const float* res) {
            for (int64_t t = 0; t < T; t++) up[t * 16 + (r - r0)] = res[t];
          });
          for (int64_t t = 0; t < T; t++) {
            for (int64_t c = 0; c < nr; c += L) {
              const int n = nr - c < L ? (int)(nr - c) : L;
              const vf gv = v_load(gate + t * 16 + c), uv = v_load(up + t * 16 + c);
              const vf e = v_exp(v_min(v_sub(v_zero(), gv), v_set1(88.0f)));
              const vf sv = v_div(gv, v_add(v_set1(1.0f), e));
              v_storen((float*)m->mid + t * I + r0 + c, v_mul(sv, uv), n);
            }
          }
        }
      });
      PROF_MARK(4)
      step_barrier(m, &bar, nt, &sense);
      PROF_MARK(1)
      prep_act(m, (const float*)m->mid, I, (int)T, I, act);
      for_rows(m, ranges, Hd, chunk_rows(m, I), [&](int64_t r0, int64_t r1) {
        gemv_rows(m, P[S_DOWN_W], P[S_DOWN_S], r0, r1, I, act, (int)T, [&](int64_t r, const float* res) {
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
      gemv_rows(m, m->lm_w, m->lm_s, r0, r1, Hd, act, (int)n_logits, [&](int64_t r, const float* res) {
        for (int64_t j = 0; j < n_logits; j++) logits[j * V + r] = res[j];
      });
    });
    PROF_MARK(6)
  }
  return 0;
}
