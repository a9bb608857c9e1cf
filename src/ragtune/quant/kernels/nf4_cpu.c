/* ragtune's NF4 kernels for the CPU, built by ragtune/quant/kernels/native.py with the system
   C compiler (-O3 -march=native -ffp-contract=off) and called through ctypes.

   The decode: one pass per byte, reading its two codes, looking up their levels, scaling and
   writing them; with AVX-512 a permute looks up 16 levels from a table held in one register.
   The products are the same IEEE float32 products as the eager path's. Then the
   decode-and-multiply for NF4Linear's forward on few rows. Speeds: BENCHMARKS.md, "NF4 ...
   Speed on this CPU". */
#include <stdint.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

void nf4_decode(const uint8_t *restrict packed, const float *restrict absmax,
                const float *restrict table, float *restrict out,
                int64_t nbytes, int64_t blocksize) {
  const int64_t half = blocksize / 2;
#ifdef __AVX512F__
  const __m512 levels = _mm512_loadu_ps(table);
  const __m512i low = _mm512_set1_epi32(15);
  const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
#endif
  for (int64_t start = 0; start < nbytes; start += half) {
    const float s = absmax[start / half];
    const int64_t stop = start + half < nbytes ? start + half : nbytes;
    int64_t i = start;
#ifdef __AVX512F__
    const __m512 scale = _mm512_set1_ps(s);
    for (; i + 16 <= stop; i += 16) {
      const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(packed + i)));
      const __m512 hi = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), levels), scale);
      const __m512 lo = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_and_si512(v, low), levels), scale);
      _mm512_storeu_ps(out + 2 * i, _mm512_permutex2var_ps(hi, first, lo));
      _mm512_storeu_ps(out + 2 * i + 16, _mm512_permutex2var_ps(hi, second, lo));
    }
#endif
    for (; i < stop; ++i) {
      out[2 * i] = table[packed[i] >> 4] * s;
      out[2 * i + 1] = table[packed[i] & 15] * s;
    }
  }
}

/* Double quantization: absmax[i] = map[codes[i]] * scales[i / group] + offset, rounded after
   the product and after the sum, as the eager ops do (built with -ffp-contract=off). */
void dq_absmax(const uint8_t *restrict codes, const float *restrict map, const float *restrict scales,
               float offset, float *restrict out, int64_t n, int64_t group) {
  for (int64_t g0 = 0; g0 < n; g0 += group) {
    const float s = scales[g0 / group];
    const int64_t g1 = g0 + group < n ? g0 + group : n;
    for (int64_t i = g0; i < g1; ++i) out[i] = map[codes[i]] * s + offset;
  }
}

/* The forward of NF4Linear for few input rows: out[i, j] = sum_c x[i, c] * W[j, c] for the W
   rows j0 <= j < j1. W is decoded PANEL rows at a time into a buffer that stays in L2 and is
   multiplied there, KC columns at a time so that x's and the panel's slices stay in L1; the
   dense weight never exists. Hand-written because no PyTorch op multiplies while decoding:
   decode-then-torch.mm leaves one core idle (the decode is serial per tile) and writes the
   weight to memory once more. AVX2 and FMA only (x86-64-v3, both CPUs here); elsewhere it
   returns -1 and NF4Linear takes the tiled path. Returns -2 when the buffer cannot be had.
   The buffer (PANEL * k floats) stays allocated per calling thread for later calls.
   The caller checks k % blocksize == 0: each panel starts on a block boundary, and k is a
   multiple of 8 (blocks hold at least 32 weights), so no row has a partial vector. */
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#include <stdlib.h>
#define PANEL 16
#define KC 512

static inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/* acc[a][b] += x[a, c0:c1] . w[b, c0:c1] (8 lanes each) for mb <= 4 rows of x, nb <= 2 of w:
   8 accumulators and 4 + 2 loads per 8 FMAs, inlined with constant mb and nb. */
static inline __attribute__((always_inline)) void nf4_tile(const float *x, int64_t k, int mb,
    const float *w, int nb, int64_t c0, int64_t c1, __m256 *acc) {
  __m256 r[4][2];
  for (int a = 0; a < mb; ++a) for (int b = 0; b < nb; ++b) r[a][b] = acc[a * PANEL + b];
  for (int64_t c = c0; c < c1; c += 8) {
    __m256 wv[2];
    for (int b = 0; b < nb; ++b) wv[b] = _mm256_loadu_ps(w + b * k + c);
    for (int a = 0; a < mb; ++a) {
      const __m256 xv = _mm256_loadu_ps(x + a * k + c);
      for (int b = 0; b < nb; ++b) r[a][b] = _mm256_fmadd_ps(xv, wv[b], r[a][b]);
    }
  }
  for (int a = 0; a < mb; ++a) for (int b = 0; b < nb; ++b) acc[a * PANEL + b] = r[a][b];
}

static inline __attribute__((always_inline)) void nf4_rows_times_panel(const float *x, int64_t k,
    int mb, const float *panel, int64_t rows, float *out, int64_t ldo) {
  __m256 acc[4 * PANEL];
  for (int t = 0; t < 4 * PANEL; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t c0 = 0; c0 < k; c0 += KC) {
    const int64_t c1 = c0 + KC < k ? c0 + KC : k;
    int64_t r = 0;
    for (; r + 2 <= rows; r += 2) nf4_tile(x, k, mb, panel + r * k, 2, c0, c1, acc + r);
    if (r < rows) nf4_tile(x, k, mb, panel + r * k, 1, c0, c1, acc + r);
  }
  for (int a = 0; a < mb; ++a)
    for (int64_t r = 0; r < rows; ++r) out[a * ldo + r] = hsum256(acc[a * PANEL + r]);
}

int nf4_linear_available(void) { return 1; }

int nf4_linear(const float *restrict x, int64_t m, int64_t k, const uint8_t *restrict packed,
               const float *restrict absmax, const float *restrict table, int64_t blocksize,
               float *restrict out, int64_t ldo, int64_t j0, int64_t j1) {
  /* One decode buffer per thread, kept between calls, so no call pays its page faults. */
  static __thread float *panel = NULL;
  static __thread int64_t capacity = 0;
  if (capacity < PANEL * k) {
    free(panel);
    /* cache-line aligned: malloc's 16-byte alignment splits every other load over two
       lines, which BENCHMARKS.md measured as a slower kernel */
    panel = aligned_alloc(64, sizeof(float) * PANEL * k);
    capacity = panel == NULL ? 0 : PANEL * k;
    if (panel == NULL) return -2;
  }
  for (int64_t p0 = j0; p0 < j1; p0 += PANEL) {
    const int64_t rows = p0 + PANEL <= j1 ? PANEL : j1 - p0;
    const int64_t e0 = p0 * k;
    nf4_decode(packed + e0 / 2, absmax + e0 / blocksize, table, panel, rows * k / 2, blocksize);
    int64_t i = 0;
    for (; i + 4 <= m; i += 4) nf4_rows_times_panel(x + i * k, k, 4, panel, rows, out + i * ldo + p0, ldo);
    switch (m - i) {
      case 3: nf4_rows_times_panel(x + i * k, k, 3, panel, rows, out + i * ldo + p0, ldo); break;
      case 2: nf4_rows_times_panel(x + i * k, k, 2, panel, rows, out + i * ldo + p0, ldo); break;
      case 1: nf4_rows_times_panel(x + i * k, k, 1, panel, rows, out + i * ldo + p0, ldo); break;
    }
  }
  return 0;
}
#else
int nf4_linear_available(void) { return 0; }

int nf4_linear(const float *x, int64_t m, int64_t k, const uint8_t *packed, const float *absmax,
               const float *table, int64_t blocksize, float *out, int64_t ldo, int64_t j0, int64_t j1) {
  return -1;
}
#endif
