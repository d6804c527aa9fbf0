#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define VL 16
typedef __m512 vf;
static inline vf v_zero(void) { return _mm512_setzero_ps(); }
static inline vf v_set(float a) { return _mm512_set1_ps(a); }
static inline vf v_f32(const float *p) { return _mm512_loadu_ps(p); }
static inline void v_store(float *p, vf a) { _mm512_storeu_ps(p, a); }
static inline vf v_bf16(const uint16_t *p) {  /* bfloat16 is the top half of a float32 */
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
static inline vf v_f16(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf v_add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf v_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf v_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline float v_sum(vf a) { return _mm512_reduce_add_ps(a); }
/* [sum a, sum b, sum c, sum d] with a third of the shuffles of four v_sum */
static inline __m128 v_sum4(vf a, vf b, vf c, vf d) {
    /* per 128-bit lane: a0+a2, b0+b2, a1+a3, b1+b3, then the lane sums of a, b, c, d */
    vf ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    vf cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    vf abcd = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, 0x44), _mm512_shuffle_ps(ab, cd, 0xEE));
    __m256 half = _mm256_add_ps(_mm512_castps512_ps256(abcd),
                                _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(abcd), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
}
static inline vf v_round(vf a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vf v_times_pow2(vf a, vf n) { return _mm512_scalef_ps(a, n); }
static inline vf v_zero_below(vf a, vf x, float limit) {
    return _mm512_maskz_mov_ps(~_mm512_cmp_ps_mask(x, _mm512_set1_ps(limit), _CMP_LT_OQ), a);
}
/* bfloat16 rounded to nearest even, NaN as 0x7FC0 (as torch rounds); float16 by the F16C instruction */
static inline void v_store_bf16(uint16_t *p, vf a) {
    __m512i bits = _mm512_castps_si512(a);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
    rounded = _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtepi32_epi16(rounded));
}
static inline void v_store_f16(uint16_t *p, vf a) {
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#define MB_MAX 4  /* tokens per tile: 16 sums + 4 weights + x in the 32 registers */
#define IL 32  /* int16 lanes */
#define I8_MB_MAX 2  /* INT8 tiles: 8 int32 and 8 float sums + 4 weights + x */
typedef __m512i vi;
static inline vi i_zero(void) { return _mm512_setzero_si512(); }
static inline vi i_i16(const int16_t *p) { return _mm512_loadu_si512(p); }
static inline vi i_i8(const int8_t *p) { return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)p)); }
static inline vf i_float(vi a) { return _mm512_cvtepi32_ps(a); }
#define I4_MB_MAX 2  /* INT4 tiles: 8 int32 and 8 float sums + unpacked weights + x */
static inline vi b_load(const void *p) { return _mm512_loadu_si512(p); }
static inline vi b_set(char a) { return _mm512_set1_epi8(a); }
static inline vi b_and(vi a, vi b) { return _mm512_and_si512(a, b); }
static inline vi b_xor(vi a, vi b) { return _mm512_xor_si512(a, b); }
static inline vi b_high_nibbles(vi a) { return _mm512_and_si512(_mm512_srli_epi16(a, 4), _mm512_set1_epi8(0x0F)); }
#if defined(__AVX512VNNI__)
static inline vi i_dot_add(vi acc, vi a, vi b) { return _mm512_dpwssd_epi32(acc, a, b); }
static inline vi u8_dot_add(vi acc, vi u, vi s) { return _mm512_dpbusd_epi32(acc, u, s); }
#else
static inline vi i_dot_add(vi acc, vi a, vi b) { return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b)); }
static inline vi u8_dot_add(vi acc, vi u, vi s) {
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1)));
}
#endif
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define VL 8
typedef __m256 vf;
static inline vf v_zero(void) { return _mm256_setzero_ps(); }
static inline vf v_set(float a) { return _mm256_set1_ps(a); }
static inline vf v_f32(const float *p) { return _mm256_loadu_ps(p); }
static inline void v_store(float *p, vf a) { _mm256_storeu_ps(p, a); }
static inline vf v_bf16(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
static inline vf v_f16(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf v_add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline float v_sum(vf a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
static inline vf v_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf v_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline __m128 v_sum4(vf a, vf b, vf c, vf d) {
    vf ab = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
    vf cd = _mm256_add_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
    vf abcd = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, 0x44), _mm256_shuffle_ps(ab, cd, 0xEE));
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}
static inline vf v_round(vf a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vf v_times_pow2(vf a, vf n) {  /* n >= -126 */
    __m256i exponent = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(a, _mm256_castsi256_ps(exponent));
}
static inline vf v_zero_below(vf a, vf x, float limit) {
    return _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_set1_ps(limit), _CMP_LT_OQ), a);
}
static inline void v_store_bf16(uint16_t *p, vf a) {
    __m256i bits = _mm256_castps_si256(a);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF))), 16);
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), nan);
    __m128i low = _mm256_castsi256_si128(rounded), high = _mm256_extracti128_si256(rounded, 1);
    _mm_storeu_si128((__m128i *)p, _mm_packus_epi32(low, high));
}
static inline void v_store_f16(uint16_t *p, vf a) {
    _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#define MB_MAX 2  /* 8 sums + 4 weights + x in the 16 registers */
#define IL 16
#define I8_MB_MAX 1
typedef __m256i vi;
static inline vi i_zero(void) { return _mm256_setzero_si256(); }
static inline vi i_i16(const int16_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline vi i_i8(const int8_t *p) { return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)p)); }
static inline vf i_float(vi a) { return _mm256_cvtepi32_ps(a); }
static inline vi i_dot_add(vi acc, vi a, vi b) { return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)); }
#define I4_MB_MAX 1
static inline vi b_load(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline vi b_set(char a) { return _mm256_set1_epi8(a); }
static inline vi b_and(vi a, vi b) { return _mm256_and_si256(a, b); }
static inline vi b_xor(vi a, vi b) { return _mm256_xor_si256(a, b); }
static inline vi b_high_nibbles(vi a) { return _mm256_and_si256(_mm256_srli_epi16(a, 4), _mm256_set1_epi8(0x0F)); }
/* 16 unsigned bytes times 16 signed bytes, summed by fours into int32: no overflow for nibbles (15 * 128 * 2) */
static inline vi u8_dot_add(vi acc, vi u, vi s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}
#else
#error "the CPU kernels need AVX2, FMA and F16C, or AVX-512"
#endif

/* e^x for the shifted scores of a softmax (x <= 0): Cephes' expf polynomial after x = n ln2 + r, within 2
   ulp of expf; 0 below -87.3 (and at -inf), NaN stays NaN. */
static inline vf v_exp(vf x) {
    vf n = v_round(v_mul(x, v_set(1.44269504f)));
    vf r = v_fma(n, v_set(-0.693359375f), x);
    r = v_fma(n, v_set(2.12194440e-4f), r);
    vf p = v_set(1.9875691500e-4f);
    p = v_fma(p, r, v_set(1.3981999507e-3f));
    p = v_fma(p, r, v_set(8.3334519073e-3f));
    p = v_fma(p, r, v_set(4.1665795894e-2f));
    p = v_fma(p, r, v_set(1.6666665459e-1f));
    p = v_fma(p, r, v_set(5.0000001201e-1f));
    vf y = v_add(v_fma(p, v_mul(r, r), r), v_set(1.0f));
    return v_zero_below(v_times_pow2(y, n), x, -87.3f);
}

/* Four rows of w times MB rows of x: y[m * N + r] = sum_k x[m * K + k] * w[r * K + k] for r < 4, m < MB.
   Each load of w serves the MB rows of x and each load of x the four rows of w (a long x, K = 16384 floats,
   is more than L1), so a batch of MB tokens reads the weight once. MB is a constant at every call: the
   compiler unrolls both loops and keeps the 4 * MB sums in registers. With `ahead`, the next tile's rows
   are prefetched: rows of at most SHORT_ROW bytes are too short for the hardware prefetcher, and a batch
   of tokens then waited on memory between tiles; longer rows only lose time to the extra instructions. */
#define SHORT_ROW 4096
#define TILE(NAME, T, LOAD)                                                                              \
static inline __attribute__((always_inline)) void NAME(const float *x, const T *w, float *y, int64_t N,  \
                                                       int64_t K, const int MB, const int ahead) {       \
    vf acc[4][4];  /* MB <= 4 */                                                                        \
    for (int m = 0; m < MB; m++)                                                                        \
        for (int r = 0; r < 4; r++) acc[m][r] = v_zero();                                               \
    for (int64_t k = 0; k < K; k += VL) {                                                               \
        vf w0 = LOAD(w + k), w1 = LOAD(w + K + k), w2 = LOAD(w + 2 * K + k), w3 = LOAD(w + 3 * K + k);   \
        if (ahead)                                                                                      \
            for (int r = 4; r < 8; r++) _mm_prefetch((const char *)(w + r * K + k), _MM_HINT_T0);       \
        for (int m = 0; m < MB; m++) {                                                                  \
            vf xv = v_f32(x + m * K + k);                                                               \
            acc[m][0] = v_fma(xv, w0, acc[m][0]), acc[m][1] = v_fma(xv, w1, acc[m][1]);                 \
            acc[m][2] = v_fma(xv, w2, acc[m][2]), acc[m][3] = v_fma(xv, w3, acc[m][3]);                 \
        }                                                                                               \
    }                                                                                                   \
    for (int m = 0; m < MB; m++)                                                                        \
        _mm_storeu_ps(y + m * N, v_sum4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]));                   \
}
TILE(tile_f32, float, v_f32)
TILE(tile_bf16, uint16_t, v_bf16)
TILE(tile_f16, uint16_t, v_f16)

/* One row of w times one row of x, for the last N % 4 rows. */
#define DOT(NAME, T, LOAD)                                                                               \
static inline float NAME(const float *x, const T *w, int64_t K) {                                        \
    vf a = v_zero();                                                                                    \
    for (int64_t k = 0; k < K; k += VL) a = v_fma(v_f32(x + k), LOAD(w + k), a);                        \
    return v_sum(a);                                                                                    \
}
DOT(dot_f32, float, v_f32)
DOT(dot_bf16, uint16_t, v_bf16)
DOT(dot_f16, uint16_t, v_f16)

/* y[M, N] = x[M, K] @ w[N, K]^T for a float weight and a few tokens. K a multiple of VL. */
#define MATMUL(NAME, T, TILE_FN, DOT_FN)                                                                 \
static void NAME(const float *x, const T *w, float *y, int64_t M, int64_t N, int64_t K, int threads) {   \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                                   \
    for (int64_t n = 0; n < N - 3; n += 4)                                                              \
        for (int64_t m = 0; m < M; m += MB_MAX) {                                                       \
            const float *xm = x + m * K;                                                                \
            const T *wn = w + n * K;                                                                    \
            float *ym = y + m * N + n;                                                                  \
            switch ((M - m < MB_MAX ? M - m : MB_MAX) + 4 * (K * (int64_t)sizeof(T) <= SHORT_ROW)) {   \
            case 1: TILE_FN(xm, wn, ym, N, K, 1, 0); break;                                             \
            case 2: TILE_FN(xm, wn, ym, N, K, 2, 0); break;                                             \
            case 3: TILE_FN(xm, wn, ym, N, K, 3, 0); break;                                             \
            case 4: TILE_FN(xm, wn, ym, N, K, 4, 0); break;                                             \
            case 5: TILE_FN(xm, wn, ym, N, K, 1, 1); break;                                             \
            case 6: TILE_FN(xm, wn, ym, N, K, 2, 1); break;                                             \
            case 7: TILE_FN(xm, wn, ym, N, K, 3, 1); break;                                             \
            default: TILE_FN(xm, wn, ym, N, K, 4, 1); break;                                            \
            }                                                                                           \
        }                                                                                               \
    for (int64_t n = N - N % 4; n < N; n++)                                                             \
        for (int64_t m = 0; m < M; m++) y[m * N + n] = DOT_FN(x + m * K, w + n * K, K);                 \
}
MATMUL(matmul_f32, float, tile_f32, dot_f32)
MATMUL(matmul_f16, uint16_t, tile_f16, dot_f16)
#if defined(__AVX512BF16__)
/* bfloat16 weights: x is rounded to bfloat16 once (it already is in a bfloat16 model), then each instruction
   multiplies 32 pairs exactly and adds them in float32, a third of the work of widening; tiles as in TILE. */
static inline __attribute__((always_inline)) void tile_bf16_dot(const uint16_t *xb, const uint16_t *w, float *y,
                                                                int64_t N, int64_t K, const int MB) {
    __m512 acc[4][4];  /* MB <= 4 */
    for (int m = 0; m < MB; m++)
        for (int r = 0; r < 4; r++) acc[m][r] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 32) {
        __m512bh w0 = (__m512bh)_mm512_loadu_si512(w + k), w1 = (__m512bh)_mm512_loadu_si512(w + K + k);
        __m512bh w2 = (__m512bh)_mm512_loadu_si512(w + 2 * K + k), w3 = (__m512bh)_mm512_loadu_si512(w + 3 * K + k);
        for (int m = 0; m < MB; m++) {
            __m512bh xv = (__m512bh)_mm512_loadu_si512(xb + m * K + k);
            acc[m][0] = _mm512_dpbf16_ps(acc[m][0], xv, w0), acc[m][1] = _mm512_dpbf16_ps(acc[m][1], xv, w1);
            acc[m][2] = _mm512_dpbf16_ps(acc[m][2], xv, w2), acc[m][3] = _mm512_dpbf16_ps(acc[m][3], xv, w3);
        }
    }
    for (int m = 0; m < MB; m++) _mm_storeu_ps(y + m * N, v_sum4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]));
}

static void matmul_bf16(const float *x, const uint16_t *w, float *y, int64_t M, int64_t N, int64_t K, int threads) {
    uint16_t *xb = malloc(M * K * sizeof(uint16_t));
    for (int64_t k = 0; k < M * K; k += 16)
        _mm256_storeu_si256((__m256i *)(xb + k), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + k)));
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N - 3; n += 4)
        for (int64_t m = 0; m < M; m += 4) {
            const uint16_t *xm = xb + m * K, *wn = w + n * K;
            float *ym = y + m * N + n;
            switch (M - m < 4 ? M - m : 4) {
            case 1: tile_bf16_dot(xm, wn, ym, N, K, 1); break;
            case 2: tile_bf16_dot(xm, wn, ym, N, K, 2); break;
            case 3: tile_bf16_dot(xm, wn, ym, N, K, 3); break;
            default: tile_bf16_dot(xm, wn, ym, N, K, 4); break;
            }
        }
    for (int64_t n = N - N % 4; n < N; n++)  /* the last rows, one at a time */
        for (int64_t m = 0; m < M; m++) {
            __m512 a = _mm512_setzero_ps();
            for (int64_t k = 0; k < K; k += 32)
                a = _mm512_dpbf16_ps(a, (__m512bh)_mm512_loadu_si512(xb + m * K + k),
                                     (__m512bh)_mm512_loadu_si512(w + n * K + k));
            y[m * N + n] = v_sum(a);
        }
    free(xb);
}
int bf16_batches(void) { return 1; }
#else
MATMUL(matmul_bf16, uint16_t, tile_bf16, dot_bf16)
int bf16_batches(void) { return 0; }  /* widening every weight: torch's batches are faster */
#endif

/* The products' activations, outputs, biases and row scales are read and written in the dtype torch holds
   them in: float32, float16 or bfloat16 (F32, F16, BF16), so that a layer's call makes no copies around
   the product (torch ops converting x, the output and the fp16 row scales, and adding the bias, cost a
   small model's step a noticeable share of its time). */
enum { F32, F16, BF16 };
static inline float load1(const void *p, int64_t i, int kind) {
    if (kind == F32) return ((const float *)p)[i];
    uint16_t bits = ((const uint16_t *)p)[i];
    if (kind == F16) return _cvtsh_ss(bits);
    uint32_t widened = (uint32_t)bits << 16;
    float value;
    memcpy(&value, &widened, 4);
    return value;
}
static inline void store1(void *p, int64_t i, float a, int kind) {
    if (kind == F32) {
        ((float *)p)[i] = a;
    } else if (kind == F16) {
        ((uint16_t *)p)[i] = _cvtss_sh(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    } else {
        uint32_t bits;
        memcpy(&bits, &a, 4);
        ((uint16_t *)p)[i] = isnan(a) ? 0x7FC0 : (uint16_t)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
    }
}
static inline vf v_load(const void *p, int64_t i, int kind) {
    if (kind == F32) return v_f32((const float *)p + i);
    return kind == F16 ? v_f16((const uint16_t *)p + i) : v_bf16((const uint16_t *)p + i);
}
static inline void v_store_kind(void *p, int64_t i, vf a, int kind) {
    if (kind == F32) v_store((float *)p + i, a);
    else if (kind == F16) v_store_f16((uint16_t *)p + i, a);
    else v_store_bf16((uint16_t *)p + i, a);
}
/* a rounded to `kind` and back */
static inline vf v_rounded(vf a, int kind) {
    uint16_t narrow[VL];
    if (kind == F32) return a;
    v_store_kind(narrow, 0, a, kind);
    return v_load(narrow, 0, kind);
}
static inline float rounded1(float a, int kind) {
    float narrow;  /* room for one value of any kind */
    store1(&narrow, 0, a, kind);
    return load1(&narrow, 0, kind);
}
/* four row scales of a tile */
static inline __m128 scales4(const void *scale, int64_t n, int kind) {
    if (kind == F32) return _mm_loadu_ps((const float *)scale + n);
    __m128i bits = _mm_loadl_epi64((const __m128i *)((const uint16_t *)scale + n));
    if (kind == F16) return _mm_cvtph_ps(bits);
    return _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(bits), 16));
}

/* Integer weights are read in row tiles: each four rows [4, W] bytes (W = a row's bytes, a multiple of 64)
   are stored as their first 64 bytes of rows 0, 1, 2, 3, then their next 64 bytes of rows 0..3, and so on,
   so a tile is one sequential stream; the last N % 4 rows follow as they are. Rows of a few KB read side by
   side are too short a stream for the hardware prefetcher, and prefetching the next tile's rows in software
   did not make up for it; one stream per tile brings the integer products close to a plain read's
   bandwidth. TILED(b, r) is where byte b of a tile's row r lies. */
#define TILED(b, r) ((((b) & ~(int64_t)63) << 2) + (r) * 64 + ((b) & 63))

/* INT8 weights: x is rounded to int16 in blocks of I8_BLOCK values, each with its own step (its largest
   |value| / 32767: an outlier coarsens only its own block), so the products are integer multiply-adds,
   a third of the instructions of widening every weight to float; each block's int32 sums (at most
   I8_BLOCK * 127 * 32767, no overflow) are scaled into float accumulators; y is times the row scales. */
#define I8_BLOCK 128
static void round_to_int16(const float *x, int64_t K, int16_t *xq, float *steps) {
    for (int64_t b = 0; b < K / I8_BLOCK; b++) {
        const float *xb = x + b * I8_BLOCK;
        float top = 0;
        int finite = 1;
        for (int k = 0; k < I8_BLOCK; k++) top = fmaxf(top, fabsf(xb[k])), finite &= isfinite(xb[k]);
        steps[b] = finite ? (top > 0 ? top / 32767 : 1) : NAN;  /* inf or NaN in x: NaN out */
        for (int k = 0; k < I8_BLOCK; k++) xq[b * I8_BLOCK + k] = finite ? (int16_t)lrintf(xb[k] / steps[b]) : 0;
    }
}

/* Four INT8 rows times MB rounded tokens, as TILE does for float weights. */
static inline __attribute__((always_inline)) void tile_i8(const int16_t *xq, const float *steps, const int8_t *w,
                                                          __m128 scales, float *y, int64_t N, int64_t K,
                                                          const int MB) {
    vf f[2][4];  /* MB <= 2 */
    for (int m = 0; m < MB; m++)
        for (int r = 0; r < 4; r++) f[m][r] = v_zero();
    for (int64_t k0 = 0; k0 < K; k0 += I8_BLOCK) {
        vi a[2][4];
        for (int m = 0; m < MB; m++)
            for (int r = 0; r < 4; r++) a[m][r] = i_zero();
        for (int64_t k = k0; k < k0 + I8_BLOCK; k += IL) {
            vi w0 = i_i8(w + TILED(k, 0)), w1 = i_i8(w + TILED(k, 1)), w2 = i_i8(w + TILED(k, 2));
            vi w3 = i_i8(w + TILED(k, 3));
            for (int m = 0; m < MB; m++) {
                vi xv = i_i16(xq + m * K + k);
                a[m][0] = i_dot_add(a[m][0], w0, xv), a[m][1] = i_dot_add(a[m][1], w1, xv);
                a[m][2] = i_dot_add(a[m][2], w2, xv), a[m][3] = i_dot_add(a[m][3], w3, xv);
            }
        }
        for (int m = 0; m < MB; m++) {
            vf step = v_set(steps[m * (K / I8_BLOCK) + k0 / I8_BLOCK]);
            for (int r = 0; r < 4; r++) f[m][r] = v_fma(i_float(a[m][r]), step, f[m][r]);
        }
    }
    for (int m = 0; m < MB; m++)
        _mm_storeu_ps(y + m * N, _mm_mul_ps(v_sum4(f[m][0], f[m][1], f[m][2], f[m][3]), scales));
}

static void matmul_i8(const float *x, const int8_t *w, const void *scale, int scale_kind, float *y, int64_t M,
                      int64_t N, int64_t K, int threads) {
    int16_t *xq = malloc(M * K * sizeof(int16_t));
    float *steps = malloc(M * (K / I8_BLOCK) * sizeof(float));
    for (int64_t m = 0; m < M; m++) round_to_int16(x + m * K, K, xq + m * K, steps + m * (K / I8_BLOCK));
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N - 3; n += 4)
        for (int64_t m = 0; m < M; m += I8_MB_MAX) {
            const int16_t *xm = xq + m * K;
            const float *sm = steps + m * (K / I8_BLOCK);
            __m128 scales = scales4(scale, n, scale_kind);
            if (M - m >= 2 && I8_MB_MAX >= 2) tile_i8(xm, sm, w + n * K, scales, y + m * N + n, N, K, 2);
            else tile_i8(xm, sm, w + n * K, scales, y + m * N + n, N, K, 1);
        }
    for (int64_t n = N - N % 4; n < N; n++)  /* the last rows, one at a time */
        for (int64_t m = 0; m < M; m++) {
            float sum = 0;
            for (int64_t k0 = 0; k0 < K; k0 += I8_BLOCK) {
                int32_t block = 0;
                for (int64_t k = k0; k < k0 + I8_BLOCK; k++) block += w[n * K + k] * xq[m * K + k];
                sum += block * steps[m * (K / I8_BLOCK) + k0 / I8_BLOCK];
            }
            y[m * N + n] = sum * load1(scale, n, scale_kind);
        }
    free(steps);
    free(xq);
}

/* INT4 weights, the original's packed bytes (in row tiles): byte j of a row holds w[2j] in its high nibble and
   w[2j + 1] in its low one (two's complement). x is rounded to int8 and laid out chunk by chunk (I4_CHUNK
   values: the weights of one vector load of a row's bytes) as the chunk's even positions, then its odd ones.
   The high nibbles of a load then meet the even x, and the low nibbles the odd x, in one unsigned-by-signed
   byte dot product each, whose int32 lane i sums positions 8i..8i+7 of the chunk. The lanes add up over a
   span of I4_SPAN chunks before one conversion to float, so x is rounded in groups of 8 values at the same
   place of each chunk of a span (32 values), each group with its own step (its largest |value| / 127). The
   nibbles are read as w + 8 (0..15: the dot products take unsigned bytes), and each token's
   8 * sum(rounded x) is taken off once at the end. */
#define I4_CHUNK (8 * VL)
#define I4_SPAN 4
static void round_for_i4(const float *x, int64_t K, int8_t *xq, float *steps, float *offset) {
    const int64_t chunks = K / I4_CHUNK;
    float total = 0;
    for (int64_t first = 0; first < chunks; first += I4_SPAN) {
        const int64_t last = first + I4_SPAN < chunks ? first + I4_SPAN : chunks;
        for (int lane = 0; lane < VL; lane++, steps++) {
            float top = 0;
            int finite = 1, sum = 0;
            for (int64_t c = first; c < last; c++)
                for (int k = 0; k < 8; k++) {
                    float value = x[c * I4_CHUNK + lane * 8 + k];
                    top = fmaxf(top, fabsf(value)), finite &= isfinite(value);
                }
            *steps = finite ? (top > 0 ? top / 127 : 1) : NAN;  /* inf or NaN in x: NaN out */
            for (int64_t c = first; c < last; c++) {
                int8_t *even = xq + c * I4_CHUNK + lane * 4, *odd = even + I4_CHUNK / 2;
                const float *xg = x + c * I4_CHUNK + lane * 8;
                for (int k = 0; k < 4; k++) {
                    even[k] = finite ? (int8_t)lrintf(xg[2 * k] / *steps) : 0;
                    odd[k] = finite ? (int8_t)lrintf(xg[2 * k + 1] / *steps) : 0;
                    sum += even[k] + odd[k];
                }
            }
            total += sum * *steps;
        }
    }
    *offset = 8 * total;
}

/* Four INT4 rows times MB rounded tokens: each load of a row's bytes is unpacked once for the MB tokens. */
static inline __attribute__((always_inline)) void tile_i4(const int8_t *xq, const float *steps, const float *offset,
                                                          const int8_t *w, __m128 scales, float *y, int64_t N,
                                                          int64_t K, const int MB) {
    const int64_t chunks = K / I4_CHUNK;
    const vi low = b_set(0x0F), eight = b_set(0x08);
    vf f[2][4];  /* MB <= 2 */
    for (int m = 0; m < MB; m++)
        for (int r = 0; r < 4; r++) f[m][r] = v_zero();
    for (int64_t c = 0, span = 0; c < chunks; span++) {
        vi a[2][4];
        for (int m = 0; m < MB; m++)
            for (int r = 0; r < 4; r++) a[m][r] = i_zero();
        for (const int64_t last = c + I4_SPAN < chunks ? c + I4_SPAN : chunks; c < last; c++)
            for (int r = 0; r < 4; r++) {
                vi bytes = b_load(w + TILED(c * (I4_CHUNK / 2), r));
                /* 4 KB ahead in the tile stream: unpacking keeps the core busy enough that the hardware
                   prefetcher alone falls behind (INT8, with less to unpack, gains nothing from it) */
                _mm_prefetch((const char *)(w + TILED(c * (I4_CHUNK / 2), r) + 4096), _MM_HINT_T0);
                vi high_w = b_xor(b_high_nibbles(bytes), eight), low_w = b_xor(b_and(bytes, low), eight);  /* w + 8 */
                for (int m = 0; m < MB; m++) {
                    const int8_t *xc = xq + m * K + c * I4_CHUNK;
                    a[m][r] = u8_dot_add(u8_dot_add(a[m][r], high_w, b_load(xc)), low_w, b_load(xc + I4_CHUNK / 2));
                }
            }
        for (int m = 0; m < MB; m++) {
            vf step = v_f32(steps + m * (K / 8) + span * VL);
            for (int r = 0; r < 4; r++) f[m][r] = v_fma(i_float(a[m][r]), step, f[m][r]);
        }
    }
    for (int m = 0; m < MB; m++)
        _mm_storeu_ps(y + m * N, _mm_mul_ps(_mm_sub_ps(v_sum4(f[m][0], f[m][1], f[m][2], f[m][3]),
                                                       _mm_set1_ps(offset[m])), scales));
}

static void matmul_i4(const float *x, const int8_t *w, const void *scale, int scale_kind, float *y, int64_t M,
                      int64_t N, int64_t K, int threads) {
    int8_t *xq = malloc(M * K);
    float *steps = malloc(M * (K / 8) * sizeof(float)), *offset = malloc(M * sizeof(float));  /* K / 8 >= steps */
    for (int64_t m = 0; m < M; m++) round_for_i4(x + m * K, K, xq + m * K, steps + m * (K / 8), offset + m);
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N - 3; n += 4)
        for (int64_t m = 0; m < M; m += I4_MB_MAX) {
            const int8_t *xm = xq + m * K, *wn = w + n * (K / 2);
            const float *sm = steps + m * (K / 8), *om = offset + m;
            float *ym = y + m * N + n;
            __m128 scales = scales4(scale, n, scale_kind);
            if (M - m >= 2 && I4_MB_MAX >= 2) tile_i4(xm, sm, om, wn, scales, ym, N, K, 2);
            else tile_i4(xm, sm, om, wn, scales, ym, N, K, 1);
        }
    for (int64_t n = N - N % 4; n < N; n++)  /* the last rows, eight signed values at a time */
        for (int64_t m = 0; m < M; m++) {
            float sum = 0;
            for (int64_t g = 0; g < K / 8; g++) {  /* positions 8g..8g+7: lane g % VL of chunk g / VL */
                int64_t chunk = g / VL, lane = g % VL;
                const int8_t *even = xq + m * K + chunk * I4_CHUNK + lane * 4, *odd = even + I4_CHUNK / 2;
                int run = 0;
                for (int k = 0; k < 4; k++) {
                    int8_t byte = w[n * (K / 2) + g * 4 + k];
                    run += (byte >> 4) * even[k] + ((int8_t)(byte << 4) >> 4) * odd[k];
                }
                sum += run * steps[m * (K / 8) + chunk / I4_SPAN * VL + lane];
            }
            y[m * N + n] = sum * load1(scale, n, scale_kind);
        }
    free(offset);
    free(steps);
    free(xq);
}

/* A layer's product: y[M, N] = x[M, K] @ w[N, K]^T (times the row scales of an INT8/INT4 weight) + bias[N],
   with x, y and the bias (or NULL) of kind `x_kind`/`x_kind`/`bias_kind`. y is the float32 sum rounded
   once, as F.linear, or (`round_first`) the product rounded and then the bias added and rounded again, as
   the original's quantized layers add their bias to their output. */
enum { W_F32, W_F16, W_BF16, W_I8, W_I4 };
void linear(int w_kind, const void *x, int x_kind, const void *w, const void *scale, int scale_kind,
            const void *bias, int bias_kind, int round_first, void *y, int64_t M, int64_t N, int64_t K,
            int threads) {
    float *x32 = x_kind == F32 ? (float *)x : malloc(M * K * sizeof(float));
    float *y32 = x_kind == F32 ? (float *)y : malloc(M * N * sizeof(float));
    if (x_kind != F32)
        for (int64_t i = 0; i < M * K; i += VL) v_store(x32 + i, v_load(x, i, x_kind));  /* K in whole vectors */
    switch (w_kind) {
    case W_F32: matmul_f32(x32, w, y32, M, N, K, threads); break;
    case W_F16: matmul_f16(x32, w, y32, M, N, K, threads); break;
    case W_BF16: matmul_bf16(x32, w, y32, M, N, K, threads); break;
    case W_I8: matmul_i8(x32, w, scale, scale_kind, y32, M, N, K, threads); break;
    default: matmul_i4(x32, w, scale, scale_kind, y32, M, N, K, threads); break;
    }
    for (int64_t m = 0; m < M; m++) {
        const float *p = y32 + m * N;
        const int64_t row = m * N;
        int64_t n = 0;
        for (; n + VL <= N; n += VL) {
            vf a = v_f32(p + n);
            if (bias) a = v_add(round_first ? v_rounded(a, x_kind) : a, v_load(bias, n, bias_kind));
            v_store_kind(y, row + n, a, x_kind);
        }
        for (; n < N; n++) {
            float a = p[n];
            if (bias) a = (round_first ? rounded1(a, x_kind) : a) + load1(bias, n, bias_kind);
            store1(y, row + n, a, x_kind);
        }
    }
    if (x_kind != F32) free(x32), free(y32);
}

/* Rotary position embedding of queries and keys, in place, rounded as torch's ops round it: x is [tokens,
   heads, 3, D] (each head's q, k and v, as the fused projection lays them out) and cos, sin are [tokens, D],
   all of kind `kind`. In each of the `parts` slices [x1 | x2] of a head's q and k, x becomes
   x * cos + [-x2 | x1] * sin: both products are rounded to `kind`, then their sum, as torch's three ops
   round them (a + (-b) is a - b exactly). */
static inline vf v_product(const void *x, int64_t i, const void *table, int64_t j, int kind) {
    return v_rounded(v_mul(v_load(x, i, kind), v_load(table, j, kind)), kind);
}
static inline float product1(const void *x, int64_t i, const void *table, int64_t j, int kind) {
    return rounded1(load1(x, i, kind) * load1(table, j, kind), kind);
}
void rotate_qk(void *x, const void *cos, const void *sin, int kind, int64_t tokens, int64_t heads, int64_t D,
               int parts, int threads) {
    const int64_t half = D / parts / 2;
    #pragma omp parallel for schedule(static) num_threads(threads) if (tokens * heads >= 256)
    for (int64_t th = 0; th < tokens * heads; th++) {
        const int64_t t = (th / heads) * D;
        for (int64_t row = th * 3 * D; row < th * 3 * D + 2 * D; row += D)  /* q, then k */
            for (int64_t start = 0; start < D; start += 2 * half) {  /* each part: x1, then x2, half wide each */
                int64_t a = start, b = start + half;
                for (; a + VL <= start + half; a += VL, b += VL) {
                    vf first = v_sub(v_product(x, row + a, cos, t + a, kind), v_product(x, row + b, sin, t + a, kind));
                    vf second = v_add(v_product(x, row + b, cos, t + b, kind), v_product(x, row + a, sin, t + b, kind));
                    v_store_kind(x, row + a, first, kind), v_store_kind(x, row + b, second, kind);
                }
                for (; a < start + half; a++, b++) {
                    float first = product1(x, row + a, cos, t + a, kind) - product1(x, row + b, sin, t + a, kind);
                    float second = product1(x, row + b, cos, t + b, kind) + product1(x, row + a, sin, t + b, kind);
                    store1(x, row + a, first, kind), store1(x, row + b, second, kind);
                }
            }
    }
}

/* The values of count bytes of an integer weight, exactly, as T: INT8 one value a byte, INT4 two. */
static inline uint16_t bf16_bits(float a) {
    uint32_t bits;
    memcpy(&bits, &a, 4);
    return bits >> 16;
}
static inline float f32_value(float a) { return a; }
#define EXPAND(NAME, T, CONVERT)                                                                         \
static inline void NAME(const int8_t *w, T *out, int64_t count, int int4) {                             \
    if (int4)                                                                                           \
        for (int64_t j = 0; j < count; j++)                                                             \
            out[2 * j] = CONVERT(w[j] >> 4), out[2 * j + 1] = CONVERT((int8_t)(w[j] << 4) >> 4);        \
    else                                                                                                \
        for (int64_t j = 0; j < count; j++) out[j] = CONVERT(w[j]);                                     \
}                                                                                                       \
/* The values of an integer weight in row tiles [N, W] bytes as T [N, K] (exact), in row order: the     \
   weight that long prompts multiply with F.linear. */                                                  \
void NAME##_tiles(const int8_t *w, T *out, int64_t N, int64_t W, int int4, int threads) {               \
    const int64_t K = int4 ? 2 * W : W, per_byte = int4 ? 2 : 1;                                        \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                                   \
    for (int64_t t = 0; t < N / 4; t++)                                                                 \
        for (int64_t b = 0; b < W; b += 64)                                                             \
            for (int r = 0; r < 4; r++)                                                                 \
                NAME(w + 4 * t * W + TILED(b, r), out + (4 * t + r) * K + b * per_byte, 64, int4);      \
    for (int64_t n = N - N % 4; n < N; n++) NAME(w + n * W, out + n * K, W, int4);                      \
}
EXPAND(expand_bf16, uint16_t, bf16_bits)
EXPAND(expand_f32, float, f32_value)

/* One query per (batch, head) over L cached positions: out = softmax(scale * q.k_j) @ v, summed in float32.
   q is [batch, heads, D] with the given strides (a view of the fused projection's output), out [batch,
   heads, D] contiguous, both of T. k and v are [batch, heads, L, D] with rows of D contiguous and the given
   batch and head strides (a view of a cache buffer longer than L); scores is scratch of batch * heads * L
   floats. mask (or NULL) is [batch, L], 0 where a row's query may not look (left padding of a batch):
   those positions weigh 0. The keys and values 16 positions ahead are prefetched: a head's rows are too
   short a stream for the hardware prefetcher alone. */
#define ATTEND(NAME, T, LOAD, STORE)                                                                     \
void NAME(const T *q, int64_t q_stride_b, int64_t q_stride_h, const T *k, const T *v, T *out,            \
          float *scores, const uint8_t *mask, int64_t batch, int64_t heads, int64_t L, int64_t D,        \
          int64_t stride_b, int64_t stride_h, float scale, int threads) {                               \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                                   \
    for (int64_t bh = 0; bh < batch * heads; bh++) {                                                    \
        const T *kh = k + (bh / heads) * stride_b + (bh % heads) * stride_h;                            \
        const T *vh = v + (bh / heads) * stride_b + (bh % heads) * stride_h;                            \
        const uint8_t *seen = mask ? mask + (bh / heads) * L : NULL;                                    \
        float qh[256];                                                                                  \
        for (int64_t d = 0; d < D; d += VL)                                                             \
            v_store(qh + d, LOAD(q + (bh / heads) * q_stride_b + (bh % heads) * q_stride_h + d));       \
        float *s = scores + bh * L, top = -INFINITY;                                                    \
        int64_t j = 0;                                                                                  \
        for (; j + 4 <= L; j += 4) {  /* four positions at a time, summed together */                   \
            const T *kj = kh + j * D;                                                                   \
            for (int64_t b = 0; b < 4 * D * (int64_t)sizeof(T); b += 64)  /* 16 positions ahead */        \
                _mm_prefetch((const char *)(kj + 16 * D) + b, _MM_HINT_T0);                             \
            vf a0 = v_zero(), a1 = a0, a2 = a0, a3 = a0;                                                \
            for (int64_t d = 0; d < D; d += VL) {                                                       \
                vf qv = v_f32(qh + d);                                                                  \
                a0 = v_fma(qv, LOAD(kj + d), a0), a1 = v_fma(qv, LOAD(kj + D + d), a1);                 \
                a2 = v_fma(qv, LOAD(kj + 2 * D + d), a2), a3 = v_fma(qv, LOAD(kj + 3 * D + d), a3);     \
            }                                                                                           \
            _mm_storeu_ps(s + j, _mm_mul_ps(v_sum4(a0, a1, a2, a3), _mm_set1_ps(scale)));               \
        }                                                                                               \
        for (; j < L; j++) {                                                                            \
            vf a = v_zero();                                                                            \
            for (int64_t d = 0; d < D; d += VL) a = v_fma(v_f32(qh + d), LOAD(kh + j * D + d), a);     \
            s[j] = scale * v_sum(a);                                                                    \
        }                                                                                               \
        for (j = 0; j < L; j++) {                                                                       \
            if (seen && !seen[j]) s[j] = -INFINITY;                                                     \
            top = s[j] > top ? s[j] : top;                                                              \
        }                                                                                               \
        vf totals = v_zero();                                                                           \
        for (j = 0; j + VL <= L; j += VL) {                                                             \
            vf e = v_exp(v_add(v_f32(s + j), v_set(-top)));                                             \
            v_store(s + j, e);                                                                          \
            totals = v_add(totals, e);                                                                  \
        }                                                                                               \
        float total = v_sum(totals);                                                                    \
        for (; j < L; j++) total += s[j] = expf(s[j] - top);                                            \
        vf acc[256 / VL];                                                                               \
        for (int64_t c = 0; c < D / VL; c++) acc[c] = v_zero();                                         \
        for (j = 0; j < L; j++) {                                                                       \
            if (seen && !seen[j]) continue;  /* weight 0; its value may be anything */                  \
            vf p = v_set(s[j] / total);                                                                 \
            for (int64_t b = 0; b < D * (int64_t)sizeof(T); b += 64)                                    \
                _mm_prefetch((const char *)(vh + (j + 16) * D) + b, _MM_HINT_T0);                       \
            for (int64_t c = 0; c < D / VL; c++) acc[c] = v_fma(p, LOAD(vh + j * D + c * VL), acc[c]);  \
        }                                                                                               \
        for (int64_t c = 0; c < D / VL; c++) STORE(out + bh * D + c * VL, acc[c]);                      \
    }                                                                                                   \
}
ATTEND(attend_f32, float, v_f32, v_store)
ATTEND(attend_bf16, uint16_t, v_bf16, v_store_bf16)
ATTEND(attend_f16, uint16_t, v_f16, v_store_f16)
