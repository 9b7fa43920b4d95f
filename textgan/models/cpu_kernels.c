/* CPU kernels for RelGAN's discriminator: convolution + max-over-time, forward and backward.
 *
 * Compiled on first use by textgan/models/cpu_kernels.py (cc -O3 -march=native -shared) and
 * called through ctypes on contiguous tensors; each call handles batch rows [b0, b1), so the
 * caller can split a batch over threads. No OpenMP, no libtorch headers.
 *
 * Shapes (row-major, contiguous):
 *   emb  (B, L, R, d)   the embedded sequence: R representations of d dims each
 *   wt   (K, np)        one filter size's weight, transposed: K = f d window elements (j, e) in
 *                       order j d + e, np >= n columns (the filters), zero-padded to a multiple
 *                       of the vector width
 *   out  (B, R, ldo)    pooled scores, written at columns [0, n) of the pointer given
 *   idx  (B, R, ldo)    int32: the time step t* of the maximum (the last NaN wins, as in
 *                       max_pool2d; otherwise the first maximum)
 *
 * score[b, t, r, c] = sum_k wt[k, c] * emb[b, t + k / d, r, k % d]; out = max_t score.
 * Backward: gemb[b, t* + k/d, r, k%d] += g[b, r, c] wt[k, c]; gwt[k, c] += g[b, r, c] * (the
 * same window element). gemb and gwt are accumulated (+=) and may be NULL.
 */
#include <stdint.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))

#define DEFINE_KERNELS(T, SUF, LANES)                                                       \
    typedef T vec_##SUF __attribute__((vector_size(LANES * sizeof(T)), aligned(sizeof(T))));   \
    typedef int##SUF##_t mask_##SUF __attribute__((vector_size(LANES * sizeof(T))));        \
                                                                                            \
    /* one (b, r): max over the T' windows of xs (L d values) for all filters */           \
    AI void fwd_row_##SUF(const T *xs, int64_t Tp, int64_t d, int64_t K, const T *wt,       \
                          int64_t n, int64_t np, T *o, int32_t *oi) {                       \
        for (int64_t c0 = 0; c0 < np; c0 += LANES) {                                        \
            vec_##SUF w[16];                                                                \
            for (int64_t k = 0; k < K; k++) w[k] = *(const vec_##SUF *)(wt + k * np + c0);  \
            vec_##SUF best = w[0] * xs[0];                                                  \
            for (int64_t k = 1; k < K; k++) best += w[k] * xs[k];                           \
            mask_##SUF arg = {0};                                                           \
            for (int64_t t = 1; t < Tp; t++) {                                              \
                const T *x = xs + t * d;                                                    \
                vec_##SUF s = w[0] * x[0];                                                  \
                for (int64_t k = 1; k < K; k++) s += w[k] * x[k];                           \
                mask_##SUF take = (s > best) | (s != s);                                    \
                best = (vec_##SUF)(((mask_##SUF)s & take) | ((mask_##SUF)best & ~take));    \
                arg = (arg & ~take) | ((int##SUF##_t)t & take);                 \
            }                                                                               \
            const int64_t m = n - c0 < LANES ? n - c0 : LANES;                              \
            for (int64_t l = 0; l < m; l++) {                                               \
                o[c0 + l] = best[l];                                                        \
                oi[c0 + l] = (int32_t)arg[l];                                               \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
                                                                                            \
    AI void load_row_##SUF(const T *emb, int64_t b, int64_t r, int64_t L, int64_t R,        \
                           int64_t d, T *xs) {                                              \
        for (int64_t t = 0; t < L; t++)                                                     \
            memcpy(xs + t * d, emb + ((b * L + t) * R + r) * d, d * sizeof(T));              \
    }                                                                                       \
                                                                                            \
    void textgan_conv_max_fwd_##SUF(const T *emb, int64_t b0, int64_t b1, int64_t L,        \
                                    int64_t R, int64_t d, const T *wt, int64_t n, int64_t np,  \
                                    int64_t f, T *out, int32_t *idx, int64_t ldo) {         \
        const int64_t Tp = L - f + 1, K = f * d;                                            \
        T xs[L * d];                                                                        \
        for (int64_t b = b0; b < b1; b++)                                                   \
            for (int64_t r = 0; r < R; r++) {                                               \
                load_row_##SUF(emb, b, r, L, R, d, xs);                                     \
                T *o = out + (b * R + r) * ldo;                                             \
                int32_t *oi = idx + (b * R + r) * ldo;                                      \
                switch (K) { /* constant K: the window loop unrolls, weights stay in registers */ \
                case 2: fwd_row_##SUF(xs, Tp, d, 2, wt, n, np, o, oi); break;               \
                case 3: fwd_row_##SUF(xs, Tp, d, 3, wt, n, np, o, oi); break;               \
                case 4: fwd_row_##SUF(xs, Tp, d, 4, wt, n, np, o, oi); break;               \
                case 5: fwd_row_##SUF(xs, Tp, d, 5, wt, n, np, o, oi); break;               \
                default: fwd_row_##SUF(xs, Tp, d, K, wt, n, np, o, oi);                     \
                }                                                                           \
            }                                                                               \
    }                                                                                       \
                                                                                            \
    AI void bwd_row_##SUF(const T *xs, T *gx, int64_t d, int64_t K, const T *wt, int64_t n, \
                          int64_t np, const T *g, const int32_t *ix, T *gwt) {              \
        if (gwt)                                                                            \
            for (int64_t k = 0; k < K; k++)                                                 \
                for (int64_t c = 0; c < n; c++) gwt[k * np + c] += g[c] * xs[ix[c] * d + k];   \
        if (gx)                                                                             \
            for (int64_t c = 0; c < n; c++) {                                               \
                const T gc = g[c];                                                          \
                T *p = gx + ix[c] * d;                                                      \
                for (int64_t k = 0; k < K; k++) p[k] += gc * wt[k * np + c];                \
            }                                                                               \
    }                                                                                       \
                                                                                            \
    void textgan_conv_max_bwd_##SUF(const T *emb, int64_t b0, int64_t b1, int64_t L,        \
                                    int64_t R, int64_t d, const T *wt, int64_t n, int64_t np,  \
                                    int64_t f, const T *g, const int32_t *idx, int64_t ldg, \
                                    T *gemb, T *gwt) {                                      \
        const int64_t K = f * d;                                                            \
        T xs[L * d], gxs[L * d];                                                            \
        T *gx = gemb ? gxs : 0;                                                             \
        for (int64_t b = b0; b < b1; b++)                                                   \
            for (int64_t r = 0; r < R; r++) {                                               \
                load_row_##SUF(emb, b, r, L, R, d, xs);                                     \
                memset(gxs, 0, sizeof(gxs));                                                \
                const T *gr = g + (b * R + r) * ldg;                                        \
                const int32_t *ir = idx + (b * R + r) * ldg;                                \
                switch (K) {                                                                \
                case 2: bwd_row_##SUF(xs, gx, d, 2, wt, n, np, gr, ir, gwt); break;         \
                case 3: bwd_row_##SUF(xs, gx, d, 3, wt, n, np, gr, ir, gwt); break;         \
                case 4: bwd_row_##SUF(xs, gx, d, 4, wt, n, np, gr, ir, gwt); break;         \
                case 5: bwd_row_##SUF(xs, gx, d, 5, wt, n, np, gr, ir, gwt); break;         \
                default: bwd_row_##SUF(xs, gx, d, K, wt, n, np, gr, ir, gwt);               \
                }                                                                           \
                if (gemb)                                                                   \
                    for (int64_t t = 0; t < L; t++)                                         \
                        for (int64_t e = 0; e < d; e++)                                     \
                            gemb[((b * L + t) * R + r) * d + e] += gxs[t * d + e];          \
            }                                                                               \
    }

DEFINE_KERNELS(float, 32, 16)
DEFINE_KERNELS(double, 64, 8)
