"""C kernels for the memory-bound work of one decoding step on CPU: a one-token product with a float or
INT8 weight, and one query attending over the KV cache.

Decoding one token reads every weight once and does two flops per weight read, so its speed is the
memory bandwidth the kernel reaches. With 2 threads, torch's one-token products reach about 65% of it in
bfloat16 and 50% in float32 (its float32 matrix-vector product runs on one core), and its CPU attention
for a bfloat16 cache is 3x slower than reading that cache. These kernels stream the weight once with
SIMD loads and float32 accumulation (80% and more).

The C source below is compiled once per machine with the system compiler (`cc -O3 -march=native
-fopenmp`, as the original ChatGLM-6B compiled its CPU INT4 kernels) into a cache folder, and called
through ctypes, which releases the GIL. Without a compiler, or on a CPU without AVX2/FMA/F16C (or
AVX-512), every product stays with torch: same answers, slower. CHATGLM_CPU_KERNELS=0 turns them off.
"""

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile

import torch

logger = logging.getLogger(__name__)

# Below these sizes the data is cache-resident, a step's time is dispatch, and torch is as fast.
MIN_WEIGHT_VALUES = 1 << 20
MIN_CACHE_VALUES = 1 << 18
# Rows are taken four at a time (sharing each load of x); K in whole INT8 blocks, the head size in whole
# AVX-512 vectors.
ROW_MULTIPLE, K_MULTIPLE, HEAD_DIM_MULTIPLE, MAX_HEAD_DIM = 4, 128, 16, 256

SOURCE = r"""
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

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
static inline float v_sum(vf a) { return _mm512_reduce_add_ps(a); }
#define IL 32  /* int16 lanes */
typedef __m512i vi;
static inline vi i_zero(void) { return _mm512_setzero_si512(); }
static inline vi i_i16(const int16_t *p) { return _mm512_loadu_si512(p); }
static inline vi i_i8(const int8_t *p) { return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)p)); }
static inline vf i_float(vi a) { return _mm512_cvtepi32_ps(a); }
#if defined(__AVX512VNNI__)
static inline vi i_dot_add(vi acc, vi a, vi b) { return _mm512_dpwssd_epi32(acc, a, b); }
#else
static inline vi i_dot_add(vi acc, vi a, vi b) { return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b)); }
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
#define IL 16
typedef __m256i vi;
static inline vi i_zero(void) { return _mm256_setzero_si256(); }
static inline vi i_i16(const int16_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline vi i_i8(const int8_t *p) { return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)p)); }
static inline vf i_float(vi a) { return _mm256_cvtepi32_ps(a); }
static inline vi i_dot_add(vi acc, vi a, vi b) { return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)); }
#else
#error "the CPU kernels need AVX2, FMA and F16C, or AVX-512"
#endif

/* y[r] = sum_k x[k] * w[r, k] for four rows r: they share each load of x, so a long x (K = 16384 floats
   is more than L1) is read from cache once per four rows. */
#define DOT4(NAME, T, LOAD)                                                                              \
static inline void NAME(const float *x, const T *w, int64_t K, float *y) {                               \
    vf a0 = v_zero(), a1 = v_zero(), a2 = v_zero(), a3 = v_zero();                                      \
    for (int64_t k = 0; k < K; k += VL) {                                                               \
        vf xv = v_f32(x + k);                                                                           \
        a0 = v_fma(xv, LOAD(w + k), a0);                                                                \
        a1 = v_fma(xv, LOAD(w + K + k), a1);                                                            \
        a2 = v_fma(xv, LOAD(w + 2 * K + k), a2);                                                        \
        a3 = v_fma(xv, LOAD(w + 3 * K + k), a3);                                                        \
    }                                                                                                   \
    y[0] = v_sum(a0), y[1] = v_sum(a1), y[2] = v_sum(a2), y[3] = v_sum(a3);                              \
}
DOT4(dot4_f32, float, v_f32)
DOT4(dot4_bf16, uint16_t, v_bf16)
DOT4(dot4_f16, uint16_t, v_f16)

/* y[N] = x[K] @ w[N, K]^T for a float weight. N a multiple of 4, K of VL. */
#define MATVEC(NAME, T, DOT4_FN)                                                                         \
void NAME(const float *x, const T *w, float *y, int64_t N, int64_t K, int threads) {                     \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                                   \
    for (int64_t n = 0; n < N; n += 4) DOT4_FN(x, w + n * K, K, y + n);                                  \
}
MATVEC(matvec_f32, float, dot4_f32)
#if defined(__AVX512BF16__)
/* bfloat16 weights: x is rounded to bfloat16 once (it already is in a bfloat16 model), then each
   instruction multiplies 32 pairs exactly and adds them in float32; a third of the work of widening. */
void matvec_bf16(const float *x, const uint16_t *w, float *y, int64_t N, int64_t K, int threads) {
    uint16_t *xb = malloc(K * sizeof(uint16_t));
    for (int64_t k = 0; k < K; k += 16)
        _mm256_storeu_si256((__m256i *)(xb + k), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + k)));
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n += 4) {
        const uint16_t *row = w + n * K;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t k = 0; k < K; k += 32) {
            __m512bh xv = (__m512bh)_mm512_loadu_si512(xb + k);
            a0 = _mm512_dpbf16_ps(a0, xv, (__m512bh)_mm512_loadu_si512(row + k));
            a1 = _mm512_dpbf16_ps(a1, xv, (__m512bh)_mm512_loadu_si512(row + K + k));
            a2 = _mm512_dpbf16_ps(a2, xv, (__m512bh)_mm512_loadu_si512(row + 2 * K + k));
            a3 = _mm512_dpbf16_ps(a3, xv, (__m512bh)_mm512_loadu_si512(row + 3 * K + k));
        }
        y[n] = v_sum(a0), y[n + 1] = v_sum(a1), y[n + 2] = v_sum(a2), y[n + 3] = v_sum(a3);
    }
    free(xb);
}
#else
MATVEC(matvec_bf16, uint16_t, dot4_bf16)
#endif
MATVEC(matvec_f16, uint16_t, dot4_f16)

/* INT8 weights: x is rounded to int16 in blocks of I8_BLOCK values, each with its own step (its largest
   |value| / 32767: an outlier coarsens only its own block), so the products are integer multiply-adds,
   a third of the instructions of widening every weight to float; each block's int32 sums (at most
   I8_BLOCK * 127 * 32767, no overflow) are scaled into float accumulators; y is times the fp16 row scales. */
#define I8_BLOCK 128
void matvec_i8(const float *x, const int8_t *w, const uint16_t *scale, float *y, int64_t N, int64_t K,
               int threads) {
    int16_t *xq = malloc(K * sizeof(int16_t));
    float *steps = malloc(K / I8_BLOCK * sizeof(float));
    for (int64_t b = 0; b < K / I8_BLOCK; b++) {
        const float *xb = x + b * I8_BLOCK;
        float top = 0;
        int finite = 1;
        for (int k = 0; k < I8_BLOCK; k++) top = fmaxf(top, fabsf(xb[k])), finite &= isfinite(xb[k]);
        steps[b] = finite ? (top > 0 ? top / 32767 : 1) : NAN;  /* inf or NaN in x: NaN out */
        for (int k = 0; k < I8_BLOCK; k++) xq[b * I8_BLOCK + k] = finite ? (int16_t)lrintf(xb[k] / steps[b]) : 0;
    }
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n += 4) {
        const int8_t *row = w + n * K;
        vf f0 = v_zero(), f1 = f0, f2 = f0, f3 = f0;
        for (int64_t k0 = 0; k0 < K; k0 += I8_BLOCK) {
            vi a0 = i_zero(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t k = k0; k < k0 + I8_BLOCK; k += IL) {
                vi xv = i_i16(xq + k);
                a0 = i_dot_add(a0, i_i8(row + k), xv);
                a1 = i_dot_add(a1, i_i8(row + K + k), xv);
                a2 = i_dot_add(a2, i_i8(row + 2 * K + k), xv);
                a3 = i_dot_add(a3, i_i8(row + 3 * K + k), xv);
            }
            vf step = v_set(steps[k0 / I8_BLOCK]);
            f0 = v_fma(i_float(a0), step, f0), f1 = v_fma(i_float(a1), step, f1);
            f2 = v_fma(i_float(a2), step, f2), f3 = v_fma(i_float(a3), step, f3);
        }
        float sums[4] = {v_sum(f0), v_sum(f1), v_sum(f2), v_sum(f3)};
        for (int r = 0; r < 4; r++) y[n + r] = sums[r] * _cvtsh_ss(scale[n + r]);
    }
    free(steps);
    free(xq);
}

/* One query per (batch, head) over L cached positions: out = softmax(scale * q.k_j) @ v, in float32.
   k and v are [batch, heads, L, D] with rows of D contiguous and the given batch and head strides
   (a view of a cache buffer longer than L); scores is scratch of batch * heads * L floats. */
#define ATTEND(NAME, T, LOAD)                                                                            \
void NAME(const float *q, const T *k, const T *v, float *out, float *scores, int64_t batch, int64_t heads, \
          int64_t L, int64_t D, int64_t stride_b, int64_t stride_h, float scale, int threads) {           \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                                   \
    for (int64_t bh = 0; bh < batch * heads; bh++) {                                                    \
        const T *kh = k + (bh / heads) * stride_b + (bh % heads) * stride_h;                            \
        const T *vh = v + (bh / heads) * stride_b + (bh % heads) * stride_h;                            \
        const float *qh = q + bh * D;                                                                   \
        float *s = scores + bh * L, top = -INFINITY, total = 0;                                         \
        for (int64_t j = 0; j < L; j++) {                                                               \
            vf a = v_zero();                                                                            \
            for (int64_t d = 0; d < D; d += VL) a = v_fma(v_f32(qh + d), LOAD(kh + j * D + d), a);     \
            s[j] = scale * v_sum(a);                                                                    \
            top = s[j] > top ? s[j] : top;                                                              \
        }                                                                                               \
        for (int64_t j = 0; j < L; j++) total += s[j] = expf(s[j] - top);                               \
        vf acc[256 / VL];                                                                               \
        for (int64_t c = 0; c < D / VL; c++) acc[c] = v_zero();                                         \
        for (int64_t j = 0; j < L; j++) {                                                               \
            vf p = v_set(s[j] / total);                                                                 \
            for (int64_t c = 0; c < D / VL; c++) acc[c] = v_fma(p, LOAD(vh + j * D + c * VL), acc[c]);  \
        }                                                                                               \
        for (int64_t c = 0; c < D / VL; c++) v_store(out + bh * D + c * VL, acc[c]);                    \
    }                                                                                                   \
}
ATTEND(attend_f32, float, v_f32)
ATTEND(attend_bf16, uint16_t, v_bf16)
ATTEND(attend_f16, uint16_t, v_f16)
"""

SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16", torch.int8: "i8"}
COMPILE_FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC")


def _cache_dir():
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "chatglm", "cpu_kernels")


def _cpu_id():
    """What -march=native compiles for: a cache shared between machines must not mix their builds."""
    try:
        with open("/proc/cpuinfo") as info:
            return "".join(line for line in info if line.startswith(("model name", "flags")))
    except OSError:
        return platform.processor()


def _compile(compiler, flags, target):
    with tempfile.TemporaryDirectory() as scratch:
        source = os.path.join(scratch, "cpu_kernels.c")
        with open(source, "w") as f:
            f.write(SOURCE)
        built = os.path.join(scratch, "cpu_kernels.so")
        subprocess.run([compiler, *flags, source, "-o", built, "-lm"], check=True, capture_output=True,
                       text=True)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        partial = f"{target}.{os.getpid()}.tmp"
        shutil.copyfile(built, partial)
        os.replace(partial, target)  # atomic: a concurrent loader sees no half-written library


@functools.cache
def library():
    """The compiled kernels as a ctypes library, or None where they cannot be built here."""
    if os.environ.get("CHATGLM_CPU_KERNELS", "1") == "0" or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        logger.warning("no C compiler found: CPU decoding uses torch's kernels (slower); install gcc to speed it up")
        return None
    # CHATGLM_CPU_KERNELS_MARCH builds for another (older) CPU than this one, e.g. haswell for AVX2
    flags = (*COMPILE_FLAGS, f"-march={os.environ.get('CHATGLM_CPU_KERNELS_MARCH', 'native')}")
    key = hashlib.sha256("\0".join((SOURCE, compiler, *flags, _cpu_id())).encode()).hexdigest()[:16]
    path = os.path.join(_cache_dir(), f"cpu_kernels-{key}.so")
    try:
        if not os.path.exists(path):
            _compile(compiler, flags, path)
        lib = ctypes.CDLL(path)
    except (OSError, subprocess.CalledProcessError) as error:
        details = getattr(error, "stderr", "") or error
        logger.warning("CPU kernels could not be built, torch's kernels are used (slower): %s", details)
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    for suffix in SUFFIX.values():
        scaled = [pointer] if suffix == "i8" else []  # an INT8 weight's fp16 row scales
        getattr(lib, f"matvec_{suffix}").argtypes = [pointer, pointer, *scaled, pointer, size, size, ctypes.c_int]
    for suffix in ("f32", "bf16", "f16"):
        getattr(lib, f"attend_{suffix}").argtypes = [pointer] * 5 + [size] * 6 + [ctypes.c_float, ctypes.c_int]
    return lib


def _inference(*tensors):
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def takes_matvec(x, weight):
    """Whether x [..., K] @ weight[N, K]^T is one token on CPU that the kernels compute (float weights, or
    INT8 values whose row scales are applied by `matvec`)."""
    rows, columns = weight.shape
    return (x.device.type == "cpu" and weight.device.type == "cpu" and x.numel() == columns
            and weight.dtype in SUFFIX and weight.is_contiguous() and weight.numel() >= MIN_WEIGHT_VALUES
            and rows % ROW_MULTIPLE == 0 and columns % K_MULTIPLE == 0 and _inference(x, weight)
            and library() is not None)


def matvec(x, weight, scale=None):
    """float32 [..., N]: x [..., K] (one token, any float dtype) times weight [N, K]^T; an INT8 weight
    comes with its fp16 row scales [N]. Check `takes_matvec` first. A bfloat16 weight may take x rounded
    to bfloat16 (exact in a bfloat16 model; F.linear would need x in bfloat16 too)."""
    rows, columns = weight.shape
    if (weight.dtype == torch.int8) != (scale is not None):
        raise ValueError("an INT8 weight needs its row scales, a float weight has none")
    x32 = x.reshape(columns).float().contiguous()
    out = torch.empty(rows, dtype=torch.float32)
    scaled = [] if scale is None else [scale.contiguous().data_ptr()]
    getattr(library(), f"matvec_{SUFFIX[weight.dtype]}")(
        x32.data_ptr(), weight.data_ptr(), *scaled, out.data_ptr(), rows, columns, torch.get_num_threads())
    return out.view(*x.shape[:-1], rows)


def takes_attention(q, k, v, attention_mask):
    """Whether the kernels compute this attention: one unmasked query per head on CPU, over keys and
    values [batch, heads, L, D] whose rows are contiguous (a cache buffer's view is)."""
    return (q.device.type == "cpu" and q.shape[2] == 1 and attention_mask is None and k.dtype == v.dtype
            and k.dtype in (torch.float32, torch.bfloat16, torch.float16) and k.stride() == v.stride()
            and k.stride()[2:] == (k.shape[3], 1) and k.shape[3] % HEAD_DIM_MULTIPLE == 0
            and k.shape[3] <= MAX_HEAD_DIM and k.numel() >= MIN_CACHE_VALUES and _inference(q, k, v)
            and library() is not None)


def attend(q, k, v, scale):
    """softmax(scale * q k^T) v for q [batch, heads, 1, D]: [batch, heads, 1, D] in q's dtype."""
    batch, heads, length, head_dim = k.shape
    q32 = q.float().contiguous()
    out = torch.empty(batch, heads, 1, head_dim, dtype=torch.float32)
    scores = torch.empty(batch * heads * length, dtype=torch.float32)
    getattr(library(), f"attend_{SUFFIX[k.dtype]}")(
        q32.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), scores.data_ptr(), batch, heads, length,
        head_dim, k.stride(0), k.stride(1), scale, torch.get_num_threads())
    return out.to(q.dtype)
