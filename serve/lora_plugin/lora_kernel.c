// lorafleet's fused multi-LoRA linear for vLLM's CPU backend: one call per LoRA layer op.
//
// For every row i of the batch whose slot s = slots[i] is >= 0:
//     y[i, col0 : col0 + width] += concat_j( (scale * x[i] @ A_sj^T) @ B_sj^T )
// where j runs over the layer's output slices (q/k/v, gate/up, or one). Rows with a negative
// slot (base-model tokens) are never read nor written. x, y and the weights (restacked by
// serve/lora_plugin/stacked.py, in the model's dtype) are float32 or bfloat16; products accumulate
// in float32 and y is rounded once (round-to-nearest-even for bfloat16, like torch).
//
// Rows are sorted by slot and processed in tiles of up to TILE rows of one slot, so each
// adapter row of A and B is read once per tile rather than once per token.
//
// Built by serve/lora_plugin/native.py with: cc -O3 -march=native -fopenmp -shared -fPIC. Tiles run on
// OpenMP threads; the library links libgomp.so.1, the soname torch's own copy carries, so inside vLLM the
// loader reuses torch's runtime and its thread pool (vLLM binds those threads to the engine's cores).

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define TILE 4    // rows of one slot per tile: each weight row is read once per tile
#define CHUNK 64  // output columns per expand step: the tile's accumulators stay in L1

enum { F32 = 0, BF16 = 1 };

static inline float bf16_to_f32(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    // NaN becomes the quiet NaN torch writes; branch-free, so the row loops vectorize.
    return (bits & 0x7fffffffu) > 0x7f800000u ? 0x7fc0 : (uint16_t)rounded;
}

static void load_row(const void *x, int dtype, int64_t stride, int64_t row, int64_t n, float *out) {
    if (dtype == F32) {
        memcpy(out, (const float *)x + row * stride, (size_t)n * sizeof(float));
    } else {
        const uint16_t *src = (const uint16_t *)x + row * stride;
#pragma omp simd
        for (int64_t c = 0; c < n; c++) out[c] = bf16_to_f32(src[c]);
    }
}

static void add_row(void *y, int dtype, int64_t stride, int64_t row, int64_t col0, int64_t n, const float *acc) {
    if (dtype == F32) {
        float *dst = (float *)y + row * stride + col0;
#pragma omp simd
        for (int64_t c = 0; c < n; c++) dst[c] += acc[c];
    } else {
        uint16_t *dst = (uint16_t *)y + row * stride + col0;
#pragma omp simd
        for (int64_t c = 0; c < n; c++) dst[c] = f32_to_bf16(bf16_to_f32(dst[c]) + acc[c]);
    }
}

#define AS_F32(v) (v)
#define AS_BF16(v) bf16_to_f32(v)

// The weight loops, once per weight dtype (W: element type, LOAD: to float): weights stay in the model's
// dtype, so a bf16 engine streams half the bytes; bf16 -> float32 is exact, so results do not change.
#define WEIGHT_LOOPS(SUFFIX, W, LOAD)                                                                            \
    static inline float dot_##SUFFIX(const W *restrict a, const float *restrict b, int64_t n) {                   \
        float s = 0.0f;                                                                                         \
        _Pragma("omp simd reduction(+ : s)") for (int64_t c = 0; c < n; c++) s += LOAD(a[c]) * b[c];              \
        return s;                                                                                               \
    }                                                                                                           \
    /* h[t][k] = scale * dot(a[k], x[t]) for the tile's rows, four adapter rows per pass over x. */             \
    static void shrink_##SUFFIX(const W *a, const float *xs, float *h, int64_t nt, int64_t in, int64_t k_all,    \
                                float scale) {                                                                  \
        int64_t k = 0;                                                                                          \
        for (; k + 4 <= k_all; k += 4) {                                                                        \
            const W *a0 = a + k * in, *a1 = a0 + in, *a2 = a1 + in, *a3 = a2 + in;                              \
            for (int64_t t = 0; t < nt; t++) {                                                                  \
                const float *x = xs + t * in;                                                                   \
                float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;                                               \
                _Pragma("omp simd reduction(+ : s0, s1, s2, s3)") for (int64_t c = 0; c < in; c++) {            \
                    s0 += LOAD(a0[c]) * x[c];                                                                   \
                    s1 += LOAD(a1[c]) * x[c];                                                                   \
                    s2 += LOAD(a2[c]) * x[c];                                                                   \
                    s3 += LOAD(a3[c]) * x[c];                                                                   \
                }                                                                                               \
                float *ht = h + t * k_all + k;                                                                  \
                ht[0] = scale * s0, ht[1] = scale * s1, ht[2] = scale * s2, ht[3] = scale * s3;                 \
            }                                                                                                   \
        }                                                                                                       \
        for (; k < k_all; k++)                                                                                  \
            for (int64_t t = 0; t < nt; t++) h[t * k_all + k] = scale * dot_##SUFFIX(a + k * in, xs + t * in, in); \
    }                                                                                                           \
    /* acc[t][0:cw] = sum_k h[t][k] * b[k * stride + 0:cw] for one chunk of an output slice. */                 \
    static void expand_chunk_##SUFFIX(const W *b, int64_t stride, const float *h, int64_t k_all, int64_t rank,   \
                                      int64_t nt, int64_t cw, float *acc) {                                     \
        memset(acc, 0, (size_t)(TILE * CHUNK) * sizeof(float));                                                 \
        for (int64_t k = 0; k < rank; k++) {                                                                    \
            const W *restrict b_row = b + k * stride;                                                           \
            for (int64_t t = 0; t < nt; t++) {                                                                  \
                const float hv = h[t * k_all + k];                                                              \
                float *restrict dst = acc + t * CHUNK;                                                          \
                _Pragma("omp simd") for (int64_t c = 0; c < cw; c++) dst[c] += hv * LOAD(b_row[c]);             \
            }                                                                                                   \
        }                                                                                                       \
    }

WEIGHT_LOOPS(f32, float, AS_F32)
WEIGHT_LOOPS(bf16, uint16_t, AS_BF16)

// a:  (slots, nsl * rank, in) in w_dtype (float32 or bfloat16), slot-major: slot s's A rows for slice j at row j * rank.
// bt: (slots, rank * width) in w_dtype: slot s's B^T for slice j is a (rank, outs[j]) block
//     starting at rank * (outs[0] + ... + outs[j-1]).
// max_threads: OpenMP threads for the tiles (1: run on the calling thread only).
// Returns 0, or -1 for a slot index >= slots (nothing is written then), -2 when out of memory.
int lorafleet_lora_linear(const void *x, int x_dtype, int64_t x_stride, void *y, int y_dtype, int64_t y_stride,
                          int64_t col0, const int64_t *slots, int64_t rows, const void *a, const void *bt, int w_dtype,
                          int64_t num_slots, int64_t in, int64_t rank, int64_t nsl, const int64_t *outs,
                          float scale, int max_threads) {
    int64_t width = 0;
    for (int64_t j = 0; j < nsl; j++) width += outs[j];
    const int64_t k_all = nsl * rank;
    int64_t count[num_slots + 1];
    memset(count, 0, sizeof(count));
    for (int64_t i = 0; i < rows; i++) {
        if (slots[i] >= num_slots) return -1;
        if (slots[i] >= 0) count[slots[i] + 1]++;
    }
    for (int64_t s = 0; s < num_slots; s++) count[s + 1] += count[s];
    const int64_t used = count[num_slots];
    if (used == 0) return 0;
    int64_t n_tiles = 0;
    for (int64_t s = 0; s < num_slots; s++) n_tiles += (count[s + 1] - count[s] + TILE - 1) / TILE;
#ifdef _OPENMP
    const int threads = n_tiles > 1 && max_threads > 1 ? max_threads : 1;
#else
    const int threads = 1;
    (void)max_threads;
#endif
    const int64_t scratch = TILE * in + TILE * k_all + TILE * CHUNK;
    int64_t *order = malloc((size_t)(used + 3 * n_tiles) * sizeof(int64_t));
    float *xs_all = malloc((size_t)(threads * scratch) * sizeof(float));
    if (!order || !xs_all) {
        free(order);
        free(xs_all);
        return -2;
    }
    int64_t *tile_slot = order + used, *tile_first = tile_slot + n_tiles, *tile_nt = tile_first + n_tiles;
    int64_t fill[num_slots];
    memcpy(fill, count, sizeof(fill));
    for (int64_t i = 0; i < rows; i++)
        if (slots[i] >= 0) order[fill[slots[i]]++] = i;
    int64_t n = 0;
    for (int64_t s = 0; s < num_slots; s++)
        for (int64_t first = count[s]; first < count[s + 1]; first += TILE, n++) {
            tile_slot[n] = s;
            tile_first[n] = first;
            tile_nt[n] = count[s + 1] - first < TILE ? count[s + 1] - first : TILE;
        }

    // Tiles write disjoint rows of y, so they run in parallel on the OpenMP threads torch already has
    // (libgomp.so.1 is the runtime torch loads: one pool, no second runtime).
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
    for (int64_t tile = 0; tile < n_tiles; tile++) {
#ifdef _OPENMP
        float *xs = xs_all + omp_get_thread_num() * scratch;
#else
        float *xs = xs_all;
#endif
        float *h = xs + TILE * in, *acc = h + TILE * k_all;
        const int64_t s = tile_slot[tile], first = tile_first[tile], nt = tile_nt[tile];
        const int64_t a_off = s * k_all * in, bt_off = s * rank * width;
        for (int64_t t = 0; t < nt; t++) load_row(x, x_dtype, x_stride, order[first + t], in, xs + t * in);
        if (w_dtype == F32)
            shrink_f32((const float *)a + a_off, xs, h, nt, in, k_all, scale);
        else
            shrink_bf16((const uint16_t *)a + a_off, xs, h, nt, in, k_all, scale);
        int64_t col = 0;
        for (int64_t j = 0; j < nsl; j++) {
            const int64_t block = bt_off + rank * col;
            for (int64_t c0 = 0; c0 < outs[j]; c0 += CHUNK) {
                const int64_t cw = outs[j] - c0 < CHUNK ? outs[j] - c0 : CHUNK;
                if (w_dtype == F32)
                    expand_chunk_f32((const float *)bt + block + c0, outs[j], h + j * rank, k_all, rank, nt, cw, acc);
                else
                    expand_chunk_bf16((const uint16_t *)bt + block + c0, outs[j], h + j * rank, k_all, rank, nt, cw,
                                      acc);
                for (int64_t t = 0; t < nt; t++)
                    add_row(y, y_dtype, y_stride, order[first + t], col0 + col + c0, cw, acc + t * CHUNK);
            }
            col += outs[j];
        }
    }
    free(order);
    free(xs_all);
    return 0;
}
