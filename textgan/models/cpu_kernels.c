/* CPU kernels for the CNN discriminators: RelGAN's convolution + max-over-time, and the head
 * after the highway's matrix product, forward and backward.
 *
 * Compiled on first use by textgan/models/cpu_kernels.py (cc -O3 -march=native -shared) and
 * called through ctypes on contiguous tensors; each call handles rows [b0, b1) (batch rows, or
 * the head's rows [i0, i1)), so the caller can split a batch over threads. No OpenMP, no
 * libtorch headers.
 *
 * Convolution + max-over-time + bias + ReLU, one filter size per call (row-major, contiguous):
 *   emb  (B, L, R, d)   the embedded sequence: R representations of d dims each
 *   wt   (K, np)        the filters' weight, transposed: K = f d window elements (j, e) in order
 *                       j d + e, np >= n columns (the filters), zero-padded to a multiple of 16
 *   bias (n,)
 *   out  (B, R, ldo)    relu(max_t score + bias), written at columns [0, n) of the pointer given
 *   idx  (B, R, ldo)    int16: the time step t* of the maximum (the first maximum; NaN
 *                       propagates and the last NaN wins, as in max_pool2d)
 * score[b, t, r, c] = sum_k wt[k, c] * emb[b, t + k / d, r, k % d]. Backward, from the gradient
 * g of out and out itself: gbias[c] += g'; gemb[b, t* + k/d, r, k%d]
 * += g' wt[k, c]; gwt[k, c] += g' * (the same window element), with g' = g [!(out <= 0)]
 * (ReLU's gradient passes NaN, as in PyTorch). The
 * gradients are accumulated (+=); gemb and gwt may be NULL.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))

#define DEFINE_KERNELS(T, SUF, LANES)                                                          \
    typedef T vec_##SUF __attribute__((vector_size(LANES * sizeof(T)), aligned(sizeof(T))));   \
    typedef int##SUF##_t mask_##SUF __attribute__((vector_size(LANES * sizeof(T))));           \
                                                                                               \
    /* one (b, r): max over the T' windows of xs (L d values) for all filters */               \
    AI void fwd_row_##SUF(const T *xs, int64_t Tp, int64_t d, int64_t K, const T *wt,          \
                          int64_t n, int64_t np, const T *bias, T *o, int16_t *oi) {           \
        for (int64_t c0 = 0; c0 < np; c0 += LANES) {                                           \
            vec_##SUF w[16];                                                                   \
            for (int64_t k = 0; k < K; k++) w[k] = *(const vec_##SUF *)(wt + k * np + c0);     \
            vec_##SUF best = w[0] * xs[0];                                                     \
            for (int64_t k = 1; k < K; k++) best += w[k] * xs[k];                              \
            mask_##SUF arg = {0};                                                              \
            for (int64_t t = 1; t < Tp; t++) {                                                 \
                const T *x = xs + t * d;                                                       \
                vec_##SUF s = w[0] * x[0];                                                     \
                for (int64_t k = 1; k < K; k++) s += w[k] * x[k];                              \
                mask_##SUF take = (s > best) | (s != s);                                       \
                best = (vec_##SUF)(((mask_##SUF)s & take) | ((mask_##SUF)best & ~take));       \
                arg = (arg & ~take) | ((int##SUF##_t)t & take);                                \
            }                                                                                  \
            const int64_t m = n - c0 < LANES ? n - c0 : LANES;                                 \
            for (int64_t l = 0; l < m; l++) {                                                  \
                const T y = best[l] + bias[c0 + l];                                            \
                o[c0 + l] = y > 0 || y != y ? y : (T)0;                                        \
                oi[c0 + l] = (int16_t)arg[l];                                                  \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    AI void load_row_##SUF(const T *emb, int64_t b, int64_t r, int64_t L, int64_t R,           \
                           int64_t d, T *xs) {                                                 \
        for (int64_t t = 0; t < L; t++)                                                        \
            memcpy(xs + t * d, emb + ((b * L + t) * R + r) * d, d * sizeof(T));                \
    }                                                                                          \
                                                                                               \
    int textgan_conv_max_fwd_##SUF(const T *emb, int64_t b0, int64_t b1, int64_t L,           \
                                    int64_t R, int64_t d, const T *wt, int64_t n, int64_t np,  \
                                    int64_t f, const T *bias, T *out, int16_t *idx,            \
                                    int64_t ldo) {                                             \
        const int64_t Tp = L - f + 1, K = f * d;                                               \
        T *xs = malloc(L * d * sizeof(T)); /* the heap: pool threads may have small stacks */ \
        if (!xs) return 1; /* out of memory: the caller raises */                              \
        for (int64_t b = b0; b < b1; b++)                                                      \
            for (int64_t r = 0; r < R; r++) {                                                  \
                load_row_##SUF(emb, b, r, L, R, d, xs);                                        \
                T *o = out + (b * R + r) * ldo;                                                \
                int16_t *oi = idx + (b * R + r) * ldo;                                         \
                switch (K) { /* constant K: the window loop unrolls, weights in registers */   \
                case 2: fwd_row_##SUF(xs, Tp, d, 2, wt, n, np, bias, o, oi); break;            \
                case 3: fwd_row_##SUF(xs, Tp, d, 3, wt, n, np, bias, o, oi); break;            \
                case 4: fwd_row_##SUF(xs, Tp, d, 4, wt, n, np, bias, o, oi); break;            \
                case 5: fwd_row_##SUF(xs, Tp, d, 5, wt, n, np, bias, o, oi); break;            \
                default: fwd_row_##SUF(xs, Tp, d, K, wt, n, np, bias, o, oi);                  \
                }                                                                              \
            }                                                                                  \
        free(xs);                                                                              \
        return 0;                                                                              \
    }                                                                                          \
                                                                                               \
    /* one (b, r): gradients of the pooled features through their winning windows; the
     * weight's gradient in vector blocks of columns (a gather of the window elements), the
     * input's one column at a time (a scatter) */                                             \
    AI void bwd_row_##SUF(const T *xs, T *gx, int64_t d, int64_t K, const T *wt, int64_t n,    \
                          int64_t np, const T *g, const T *y, const int16_t *ix, T *gwt,       \
                          T *gb, T *gc) {                                                      \
        for (int64_t c = 0; c < n; c++) {                                                      \
            gc[c] = y[c] <= 0 ? (T)0 : g[c]; /* as PyTorch: NaN passes */                  \
            gb[c] += gc[c];                                                                    \
        }                                                                                      \
        for (int64_t c = n; c < np; c++) gc[c] = 0; /* padding: no gradient */                 \
        if (gwt)                                                                               \
            for (int64_t c0 = 0; c0 < np; c0 += LANES) {                                       \
                const vec_##SUF gv = *(const vec_##SUF *)(gc + c0);                            \
                int32_t base[LANES];                                                           \
                for (int64_t l = 0; l < LANES; l++)                                            \
                    base[l] = c0 + l < n ? (int32_t)ix[c0 + l] * (int32_t)d : 0;               \
                for (int64_t k = 0; k < K; k++) {                                              \
                    vec_##SUF xg;                                                              \
                    for (int64_t l = 0; l < LANES; l++) xg[l] = xs[base[l] + k];               \
                    *(vec_##SUF *)(gwt + k * np + c0) += gv * xg;                              \
                }                                                                              \
            }                                                                                  \
        if (gx)                                                                                \
            for (int64_t c = 0; c < n; c++) {                                                  \
                T *p = gx + ix[c] * d;                                                         \
                for (int64_t k = 0; k < K; k++) p[k] += gc[c] * wt[k * np + c];                \
            }                                                                                  \
    }                                                                                          \
                                                                                               \
    int textgan_conv_max_bwd_##SUF(const T *emb, int64_t b0, int64_t b1, int64_t L,           \
                                    int64_t R, int64_t d, const T *wt, int64_t n, int64_t np,  \
                                    int64_t f, const T *g, const T *out, const int16_t *idx,   \
                                    int64_t ldg, T *gemb, T *gwt, T *gbias) {                  \
        const int64_t K = f * d;                                                               \
        T *xs = malloc((2 * L * d + np) * sizeof(T)); /* heap, as in the forward */            \
        if (!xs) return 1; /* out of memory: the caller raises */                              \
        T *gxs = xs + L * d, *gc = gxs + L * d;                                                \
        T *gx = gemb ? gxs : 0;                                                                \
        for (int64_t b = b0; b < b1; b++)                                                      \
            for (int64_t r = 0; r < R; r++) {                                                  \
                load_row_##SUF(emb, b, r, L, R, d, xs);                                        \
                memset(gxs, 0, L * d * sizeof(T));                                             \
                const int64_t row = (b * R + r) * ldg;                                         \
                const T *gr = g + row, *yr = out + row;                                        \
                const int16_t *ir = idx + row;                                                 \
                switch (d == 1 ? K : 0) { /* RelGAN's d = 1 with constant K: unrolled */       \
                case 2: bwd_row_##SUF(xs, gx, 1, 2, wt, n, np, gr, yr, ir, gwt, gbias, gc); break; \
                case 3: bwd_row_##SUF(xs, gx, 1, 3, wt, n, np, gr, yr, ir, gwt, gbias, gc); break; \
                case 4: bwd_row_##SUF(xs, gx, 1, 4, wt, n, np, gr, yr, ir, gwt, gbias, gc); break; \
                case 5: bwd_row_##SUF(xs, gx, 1, 5, wt, n, np, gr, yr, ir, gwt, gbias, gc); break; \
                default: bwd_row_##SUF(xs, gx, d, K, wt, n, np, gr, yr, ir, gwt, gbias, gc); \
                }                                                                              \
                if (gemb)                                                                      \
                    for (int64_t t = 0; t < L; t++)                                            \
                        for (int64_t e = 0; e < d; e++)                                        \
                            gemb[((b * L + t) * R + r) * d + e] += gxs[t * d + e];             \
            }                                                                                  \
        free(xs);                                                                              \
        return 0;                                                                              \
    }

DEFINE_KERNELS(float, 32, 16)
DEFINE_KERNELS(double, 64, 8)

/* The head after the highway's matrix product:
 *
 *   y = x + sigmoid(g) * (relu(h) - x)   highway (shared: g = h = H[i, :F]; else h = H[i, :F],
 *                                         g = H[i, F:]); NaN propagates, as in PyTorch
 *   z = y * m                             dropout: m = scale if keep[i, k] >= thr else 0
 *                                         (keep NULL: m = 1)
 *   out[i] = sum_k v[k] z[i, k]           the linear layers, folded into one vector v
 *
 * for rows [i0, i1) of x (N, F) and H (N, ldh). The backward kernel gives, for the gradient
 * go (N,) of out: gH (N, ldh) (the gradient of the highway's product), gx (N, F) (the gradient
 * of x through the highway's mix, not through the product) and gv (F,) += sum_i go[i] z[i, :].
 * Columns run in vector blocks (the last one zero-padded); out sums the blocks' lanes in a fixed
 * order. sigmoid(g) = 1 / (1 + exp(-g)); float32's exp is a Cephes-style polynomial (within a
 * few ulp of expf, arguments clamped to [-87, 88]), float64's is libm's, lane by lane.
 */
#include <math.h>

#define DEFINE_HEAD(T, SUF, LANES, IT)                                                         \
    typedef T hv_##SUF __attribute__((vector_size(LANES * sizeof(T)), aligned(sizeof(T))));    \
    typedef IT hm_##SUF __attribute__((vector_size(LANES * sizeof(T))));                       \
    typedef uint8_t hb_##SUF __attribute__((vector_size(LANES)));                              \
                                                                                               \
    AI hv_##SUF sigmoid_##SUF(hv_##SUF g) { return 1 / (1 + vexp_##SUF(-g)); }                 \
                                                                                               \
    AI hv_##SUF relu_##SUF(hv_##SUF h) { return (hv_##SUF)((hm_##SUF)h & ~(h <= 0)); }           \
                                                                                               \
    /* the dropout multipliers of LANES columns (bytes padded by the caller) */               \
    AI hv_##SUF mult_##SUF(const uint8_t *kp, int64_t thr, T scale) {                          \
        hv_##SUF one = {0};                                                                    \
        one += (T)1;                                                                           \
        if (!kp) return one;                                                                   \
        hb_##SUF b;                                                                            \
        memcpy(&b, kp, LANES);                                                                 \
        hm_##SUF on = __builtin_convertvector(b, hm_##SUF) >= (IT)thr;                         \
        return (hv_##SUF)(on & (hm_##SUF)(one * scale));                                       \
    }                                                                                          \
                                                                                               \
    /* LANES columns starting at k of row i, zero-padded past F (v = 0 there) */              \
    AI int64_t load_##SUF(const T *h, const T *g, const T *x, const uint8_t *kp, const T *v,   \
                          int64_t k, int64_t F, hv_##SUF *hv, hv_##SUF *gv, hv_##SUF *xv,      \
                          hv_##SUF *vv, uint8_t *kb) {                                         \
        const int64_t m = F - k < LANES ? F - k : LANES;                                       \
        if (m == LANES) {                                                                      \
            *hv = *(const hv_##SUF *)(h + k); *gv = *(const hv_##SUF *)(g + k);                \
            *xv = *(const hv_##SUF *)(x + k); *vv = *(const hv_##SUF *)(v + k);                \
            if (kp) memcpy(kb, kp + k, LANES);                                                 \
        } else {                                                                               \
            hv_##SUF z = {0};                                                                  \
            *hv = *gv = *xv = *vv = z;                                                         \
            memset(kb, 0, LANES);                                                              \
            for (int64_t l = 0; l < m; l++) {                                                  \
                (*hv)[l] = h[k + l]; (*gv)[l] = g[k + l]; (*xv)[l] = x[k + l];                 \
                (*vv)[l] = v[k + l];                                                           \
                if (kp) kb[l] = kp[k + l];                                                     \
            }                                                                                  \
        }                                                                                      \
        return m;                                                                              \
    }                                                                                          \
                                                                                               \
    void textgan_head_fwd_##SUF(const T *H, const T *x, const uint8_t *keep, int64_t thr,      \
                                T scale, const T *v, int64_t i0, int64_t i1, int64_t F,        \
                                int64_t ldh, int64_t shared, T *out) {                         \
        for (int64_t i = i0; i < i1; i++) {                                                    \
            const T *h = H + i * ldh, *g = h + (shared ? 0 : F), *xi = x + i * F;              \
            const uint8_t *ki = keep ? keep + i * F : 0;                                       \
            hv_##SUF acc = {0}, hb, gb, xb, vb;                                                \
            uint8_t kb[LANES];                                                                 \
            for (int64_t k = 0; k < F; k += LANES) {                                           \
                load_##SUF(h, g, xi, ki, v, k, F, &hb, &gb, &xb, &vb, kb);                     \
                const hv_##SUF y = xb + sigmoid_##SUF(gb) * (relu_##SUF(hb) - xb);             \
                acc += vb * (mult_##SUF(ki ? kb : 0, thr, scale) * y);                         \
            }                                                                                  \
            T sum = 0;                                                                         \
            for (int l = 0; l < LANES; l++) sum += acc[l];                                     \
            out[i] = sum;                                                                      \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    void textgan_head_bwd_##SUF(const T *H, const T *x, const uint8_t *keep, int64_t thr,      \
                                T scale, const T *v, const T *gout, int64_t i0, int64_t i1,    \
                                int64_t F, int64_t ldh, int64_t shared, T *gH, T *gx, T *gv) { \
        for (int64_t i = i0; i < i1; i++) {                                                    \
            const T *h = H + i * ldh, *g = h + (shared ? 0 : F), *xi = x + i * F;              \
            T *gh = gH + i * ldh, *gg = gh + (shared ? 0 : F), *gxi = gx + i * F;              \
            const uint8_t *ki = keep ? keep + i * F : 0;                                       \
            const T gi = gout[i];                                                              \
            hv_##SUF hb, gb, xb, vb;                                                           \
            uint8_t kb[LANES];                                                                 \
            for (int64_t k = 0; k < F; k += LANES) {                                           \
                const int64_t m = load_##SUF(h, g, xi, ki, v, k, F, &hb, &gb, &xb, &vb, kb);   \
                const hv_##SUF s = sigmoid_##SUF(gb), mu = mult_##SUF(ki ? kb : 0, thr, scale); \
                const hv_##SUF diff = relu_##SUF(hb) - xb;                                     \
                const hv_##SUF z = mu * (xb + s * diff), gy = (gi * vb) * mu;                  \
                const hv_##SUF dh = (hv_##SUF)((hm_##SUF)(gy * s) & ~(hb <= 0));               \
                const hv_##SUF dg = gy * diff * s * (1 - s), dx = gy * (1 - s);                \
                if (m == LANES) {                                                              \
                    *(hv_##SUF *)(gv + k) += gi * z;                                           \
                    *(hv_##SUF *)(gxi + k) = dx;                                               \
                    if (shared) *(hv_##SUF *)(gh + k) = dh + dg;                               \
                    else { *(hv_##SUF *)(gh + k) = dh; *(hv_##SUF *)(gg + k) = dg; }           \
                } else for (int64_t l = 0; l < m; l++) {                                       \
                    gv[k + l] += gi * z[l];                                                    \
                    gxi[k + l] = dx[l];                                                        \
                    if (shared) gh[k + l] = dh[l] + dg[l];                                     \
                    else { gh[k + l] = dh[l]; gg[k + l] = dg[l]; }                             \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }

typedef float ev_32 __attribute__((vector_size(64), aligned(4)));
typedef int32_t ei_32 __attribute__((vector_size(64)));
typedef double ev_64 __attribute__((vector_size(64), aligned(8)));

AI ev_32 select_32(ei_32 mask, ev_32 a, ev_32 b) {
    return (ev_32)(((ei_32)a & mask) | ((ei_32)b & ~mask));
}

AI ev_32 vexp_32(ev_32 x) {
    /* 2^n p(r) with x = n ln2 + r, |r| <= ln2 / 2 (n rounded to nearest by the 1.5 * 2^23
     * trick; no -ffast-math, so it is not folded away); NaN stays NaN */
    const ev_32 zero = {0};
    const ev_32 c = select_32(x > 88.0f, zero + 88.0f, select_32(x < -87.0f, zero - 87.0f, x));
    const ev_32 n = (c * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const ev_32 r = (c - n * 0.693359375f) + n * 2.12194440e-4f;
    ev_32 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const ev_32 e = (ev_32)((ei_32)p + (__builtin_convertvector(n, ei_32) << 23));
    return select_32(x != x, x, e);
}

AI ev_64 vexp_64(ev_64 x) {
    for (int l = 0; l < 8; l++) x[l] = exp(x[l]);
    return x;
}

DEFINE_HEAD(float, 32, 16, int32_t)
DEFINE_HEAD(double, 64, 8, int64_t)
