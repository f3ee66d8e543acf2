/* The scan's CPU pass: one call per batch updates every accumulator of every layer the scan
 * keeps.
 *
 * Compiled by kernels.py with the machine's C compiler on first use and cached on disk; it is
 * called through ctypes, which lets other Python threads run meanwhile. Each thread takes
 * blocks of BLOCK neurons of any layer (one parallel loop for them all: fewer threads left
 * waiting at its end than with a loop per layer) and reads the block's activations once
 * (`block_one_pass`): each window's max, the extremes, the power sums about the running mean
 * and the bins under the histograms as they were, a neuron whose values left its histogram
 * counted again once it has grown. The first batch, whose centre is the middle of its range,
 * and a batch too long for the block's uint16 counts take two passes: the extremes, then the
 * histograms grown to cover them, the power sums and the bins. Then the block's top windows
 * and band samples are merged neuron by neuron. The rules are those of the torch
 * path in accumulators.py, which the tests hold this to: maxima are the float32 values
 * themselves, a bin is floor(x * 2**-e) (exact in float32), power sums are taken per window
 * in float32 and summed in float64, top-k and band samples keep exactly what torch keeps.
 *
 * Arrays are C-contiguous; shapes are in the comments. int64 for every index, uint8 for every
 * flag. A function returns 0, OUT_OF_MEMORY or NOT_FINITE_STATUS (an activation was NaN or
 * infinite: the layer's `not_finite` is set, some accumulators updated and others not).
 */

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define OUT_OF_MEMORY -1
#define NOT_FINITE_STATUS -2
/* Neurons per task, by the size of a core's L2 (L2_BYTES, from the build; 0 unknown). A
 * block's part of a default batch (32 x 64 tokens) is 512 KiB with 64: on a machine with
 * 512 KiB of L2 a core it stays there from the extremes pass to the sums pass. The 4-layer
 * model's batch update (4 x 1,024 neurons), sizes alternating batch by batch in one process:
 * there 14.1-14.5 ms with 64, 15.9-17.5 ms with 128, 14.4 with 48, 14.7 with 96, 16.7 with 32
 * (a demo model's 512 neurons: 2.5 ms, against 3.0 with 128); on one with 2 MiB, 8.8 ms with
 * 64, 7.7 with 128, 8.1 with 256 (demo-gelu-1l 1.22 and 1.09 ms). */
#ifndef L2_BYTES
#define L2_BYTES 0
#endif
#define BLOCK (L2_BYTES >= (1 << 20) ? 128 : 64)
#define EMPTY_PRIORITY INT64_MAX
/* Rows ahead that the extremes pass (from memory) and the sums pass (from L2) ask the cache
 * for. A block's rows lie a whole layer's width apart (4 KiB for 1,024 neurons), each on a
 * page of its own, where the hardware's prefetchers do not follow. On a machine with 2 MiB
 * of L2 a core, the 4-layer model's batch update, alternating batch by batch in one process:
 * 12.2-12.8 ms without, 8.1 ms with 16 and 8 (8.3-8.5 with 8 and 8, 8.6 with the sums pass's
 * alone, 12.6 with the extremes pass's alone; demo-gelu-1l 1.38 against 1.22 ms). The one
 * pass (from memory) asks as the extremes pass does: 6.7 ms with 16, 6.6 with 8, 6.8 with 24,
 * 7.5 with 32. */
#define EXTREMES_AHEAD 16
#define SUMS_AHEAD 8

typedef struct {
    const float *x; /* [batch, width, n]: window b's tokens are rows skip .. skip + lengths[b] */
    int64_t batch, width, n, skip;
    const int64_t *lengths;      /* [batch] */
    float *window_max;           /* [batch, n] */
    const int64_t *window_index; /* [batch] */
    const int64_t *window_hash;  /* [batch] */
} Batch;

typedef struct { /* TopWindows: slots [k, n], acts [k, n, ctx] */
    int64_t k, ctx;
    float *values;
    int64_t *argmax, *window, *hash;
    float *acts;
} Top;

typedef struct { /* a TopWindows and the batch rows that may enter it, in stream order */
    Top top;
    const int64_t *rows;
    int64_t row_count;
    uint8_t *repeated; /* [batch], filled by scan_layers: the text of an earlier row of `rows` */
} TopPart;

typedef struct { /* BandSample: exponent [n], slots [m * bins, n], acts [slots, n, ctx] */
    int64_t m, slots, ctx;
    int64_t *exponent, *priority;
    float *values;
    int64_t *argmax, *window;
    float *acts;
} Bands;

typedef struct { /* AdaptiveHistogram: inverse_width, first [n], counts [n, bins] */
    int64_t bins;
    float *inverse_width;
    int64_t *first, *counts;
} Histogram;

typedef struct { /* Moments, float64 [n] each, merged in place (Pebay's update) */
    double count;  /* tokens before this batch; 0: the centre is the batch's mid-range */
    double tokens; /* in this batch */
    double *mean, *m2, *m3, *m4, *positive, *min, *max;
} MomentState;

typedef struct {
    Batch batch;
    int64_t extremes_only;        /* 1: only window maxima and the batch's min and max */
    float *batch_min, *batch_max; /* [n] */
    Histogram histogram;
    MomentState moments;
    TopPart *parts; /* the layer's top windows (every row), then each subset's */
    int64_t part_count;
    Bands bands;                  /* m == 0: none */
    const int64_t *band_priority; /* [batch] */
    uint8_t *entered;             /* [blocks, batch]: rows some neuron of the block kept */
    int64_t not_finite;           /* out: 1 if an activation was NaN or infinite */
} Layer;

typedef struct { /* the layers of one call, whose blocks it numbers in order */
    const Layer *layers;
    int64_t count;
} Layers;

static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

static int64_t blocks_of(int64_t n) { return (n + BLOCK - 1) / BLOCK; }

/* Ask for a block's part of the row `ahead` rows on. Past the batch's end the address is
 * harmless (a prefetch never faults); it is made as an integer, since a pointer may not point
 * there. */
static inline void prefetch_row(const float *row, int64_t ahead, int64_t n, int64_t width) {
    uintptr_t at = (uintptr_t)row + (uintptr_t)(ahead * n) * sizeof(float);
    for (int64_t j = 0; j < width; j += 16)
        __builtin_prefetch((const void *)(at + (uintptr_t)j * sizeof(float)));
}

/* Each window's max over its real tokens and the batch's min and max, for neurons lo:hi.
 * Returns 1 if a value is NaN or infinite (it could be neither ranked nor binned), else 0. */
static int block_extremes(const Layer *a, int64_t lo, int64_t hi) {
    const Batch *s = &a->batch;
    int64_t width = hi - lo;
    float low[BLOCK], high[BLOCK], top[BLOCK];
    float bad[BLOCK]; /* 1 once a value was NaN or infinite (float: as cheap as the rest) */
    for (int64_t j = 0; j < width; j++) {
        low[j] = INFINITY;
        high[j] = -INFINITY;
        bad[j] = 0.0f;
    }
    for (int64_t b = 0; b < s->batch; b++) {
        for (int64_t j = 0; j < width; j++) top[j] = -INFINITY;
        for (int64_t t = s->skip; t < s->skip + s->lengths[b]; t++) {
            const float *row = s->x + (b * s->width + t) * s->n + lo;
            prefetch_row(row, EXTREMES_AHEAD, s->n, width);
            for (int64_t j = 0; j < width; j++) {
                top[j] = row[j] > top[j] ? row[j] : top[j];
                low[j] = row[j] < low[j] ? row[j] : low[j];
                bad[j] = fabsf(row[j]) <= FLT_MAX ? bad[j] : 1.0f;
            }
        }
        for (int64_t j = 0; j < width; j++) {
            s->window_max[b * s->n + lo + j] = top[j];
            high[j] = top[j] > high[j] ? top[j] : high[j];
        }
    }
    int flags = 0;
    for (int64_t j = 0; j < width; j++) {
        a->batch_min[lo + j] = low[j];
        a->batch_max[lo + j] = high[j];
        flags |= bad[j] != 0.0f;
    }
    return flags;
}

/* AdaptiveHistogram.cover for one neuron: double the bin width until the bins take
 * [low, high], anchoring old counts low when growing up and high when growing down. */
static void cover(const Histogram *h, int64_t neuron, float low, float high, int64_t *merged) {
    int64_t bins = h->bins;
    int64_t *counts = h->counts + neuron * bins;
    for (;;) {
        float scale = h->inverse_width[neuron];
        int64_t first = h->first[neuron];
        int below = (int64_t)floorf(low * scale) < first;
        int above = (int64_t)floorf(high * scale) >= first + bins;
        if (!(below || above)) return;
        int64_t aligned = floor_div(first, 2); /* in units of the new width */
        int64_t shift = first - 2 * aligned;   /* 0 or 1: where old bin 0 sits in its new bin */
        int64_t lift = below ? bins / 2 - 1 : 0;
        memset(merged, 0, (size_t)bins * sizeof(int64_t));
        for (int64_t i = 0; i < bins; i++) merged[(i + shift) / 2 + lift] += counts[i];
        memcpy(counts, merged, (size_t)bins * sizeof(int64_t));
        h->inverse_width[neuron] = scale / 2.0f;
        h->first[neuron] = aligned - lift;
    }
}

/* Merge a batch's power sums s[p] of (x - shift)**(p + 1) and positives into a neuron's
 * moments, as Moments.add_sums does. Not inlined: inlined into the one pass and the two, the
 * compiler contracted its arithmetic differently in each, and their moments differed in the
 * last bits; as one function they are the same bit for bit. */
__attribute__((noinline)) static void merge_moments(const MomentState *m, int64_t c,
                                                    float shift, const double s[4],
                                                    double positive, float low, float high) {
    double nb = m->tokens, na = m->count, n = na + nb;
    double a = s[0] / nb; /* batch mean minus shift */
    double m2_b = s[1] - nb * a * a;
    double m3_b = s[2] - 3 * a * s[1] + 2 * nb * a * a * a;
    double m4_b = s[3] - 4 * a * s[2] + 6 * a * a * s[1] - 3 * nb * a * a * a * a;
    double delta = (double)shift + a - m->mean[c];
    double m2_a = m->m2[c], m3_a = m->m3[c], d2 = delta * delta;
    m->m4[c] += m4_b + d2 * d2 * na * nb * (na * na - na * nb + nb * nb) / (n * n * n) +
                6 * d2 * (na * na * m2_b + nb * nb * m2_a) / (n * n) +
                4 * delta * (na * m3_b - nb * m3_a) / n;
    m->m3[c] = m3_a + m3_b + d2 * delta * na * nb * (na - nb) / (n * n) +
               3 * delta * (na * m2_b - nb * m2_a) / n;
    m->m2[c] = m2_a + m2_b + d2 * na * nb / n;
    m->mean[c] += delta * nb / n;
    m->positive[c] += positive;
    m->min[c] = (double)low < m->min[c] ? (double)low : m->min[c];
    m->max[c] = (double)high > m->max[c] ? (double)high : m->max[c];
}

/* Add a block's counts to its neurons' histograms, and empty them. */
static void add_counts(const Histogram *h, int64_t lo, int64_t width, uint16_t *local) {
    for (int64_t j = 0; j < width; j++) {
        int64_t *counts = h->counts + (lo + j) * h->bins;
        for (int64_t q = 0; q < h->bins; q++) counts[q] += local[j * h->bins + q];
    }
    memset(local, 0, (size_t)(width * h->bins) * sizeof(uint16_t));
}

/* A window's power sums: each token's powers of (x - centre) taken in float32 (`add_powers`)
 * and the window's totals added in float64 (`end_window`). Both ways through a block take
 * them with these, so their moments are the same bit for bit. */
typedef struct {
    float part[4][BLOCK], ones[BLOCK];
} WindowSums;

static inline void start_window(WindowSums *w, int64_t width) {
    for (int64_t j = 0; j < width; j++) {
        w->part[0][j] = w->part[1][j] = w->part[2][j] = w->part[3][j] = 0.0f;
        w->ones[j] = 0.0f;
    }
}

static inline void add_powers(WindowSums *w, int64_t j, float v, float centre) {
    float y = v - centre;
    float y2 = y * y;
    w->part[0][j] += y;
    w->part[1][j] += y2;
    w->part[2][j] += y2 * y;
    w->part[3][j] += y2 * y2;
    w->ones[j] += v > 0.0f ? 1.0f : 0.0f;
}

static inline void end_window(const WindowSums *w, int64_t width, double total[4][BLOCK],
                              double *above) {
    for (int64_t j = 0; j < width; j++) {
        for (int p = 0; p < 4; p++) total[p][j] += w->part[p][j];
        above[j] += w->ones[j];
    }
}

/* Power sums of (x - centre)**1..4 and positives for neurons lo:hi, merged into the moments;
 * their bins added to the counts (which must take the block's range: a bin is monotonic in
 * the value, so covering the min and max covers every value). The centre is Moments.shift's:
 * the running mean, or on the first batch the middle of its range. `local` holds width * bins
 * uint16 counts: half the cache of int32, where the scattered increments are most of the
 * pass; added to the histogram before any can overflow. */
static void block_sums_and_counts(const Layer *a, int64_t lo, int64_t hi, uint16_t *local) {
    const Batch *s = &a->batch;
    const Histogram *h = &a->histogram;
    int64_t bins = h->bins, width = hi - lo, n = s->n;
    const MomentState *m = &a->moments;
    float centre[BLOCK];
    for (int64_t j = 0; j < width; j++)
        centre[j] = m->count > 0 ? (float)m->mean[lo + j]
                                 : (a->batch_min[lo + j] + a->batch_max[lo + j]) / 2.0f;
    const float *scale = h->inverse_width + lo;
    /* Flat bin = floor(x / w) - first + j * bins: floor of a float32 times a power of two is
     * an exact integer, and the rest is integer arithmetic. */
    int64_t base[BLOCK];
    int32_t base32[BLOCK], at[BLOCK];
    /* In int32 when every scaled value and bin offset is well inside its range (it vectorises;
     * float to int64 does not on most CPUs), else in int64. */
    int narrow = 1;
    double total[4][BLOCK], above[BLOCK];
    WindowSums window;
    for (int64_t j = 0; j < width; j++) {
        base[j] = h->first[lo + j] - j * bins;
        base32[j] = (int32_t)base[j];
        narrow &= fabsf(a->batch_min[lo + j] * scale[j]) < 0x1p30f &&
                  fabsf(a->batch_max[lo + j] * scale[j]) < 0x1p30f && llabs(base[j]) < (1LL << 30);
        above[j] = 0.0;
        for (int p = 0; p < 4; p++) total[p][j] = 0.0;
    }
    memset(local, 0, (size_t)(width * bins) * sizeof(uint16_t));
    int64_t counted = 0; /* token rows in `local` */
    for (int64_t b = 0; b < s->batch; b++) {
        start_window(&window, width);
        for (int64_t t = s->skip; t < s->skip + s->lengths[b]; t++) {
            const float *row = s->x + (b * s->width + t) * n + lo;
            prefetch_row(row, SUMS_AHEAD, n, width);
            for (int64_t j = 0; j < width; j++) add_powers(&window, j, row[j], centre[j]);
            if (narrow) {
                for (int64_t j = 0; j < width; j++)
                    at[j] = (int32_t)floorf(row[j] * scale[j]) - base32[j];
                for (int64_t j = 0; j < width; j++) local[at[j]] += 1;
            } else {
                for (int64_t j = 0; j < width; j++)
                    local[(int64_t)floorf(row[j] * scale[j]) - base[j]] += 1;
            }
            if (++counted == UINT16_MAX) {
                add_counts(h, lo, width, local);
                counted = 0;
            }
        }
        end_window(&window, width, total, above);
    }
    for (int64_t j = 0; j < width; j++) {
        double sums[4] = {total[0][j], total[1][j], total[2][j], total[3][j]};
        merge_moments(m, lo + j, centre[j], sums, above[j], a->batch_min[lo + j],
                      a->batch_max[lo + j]);
    }
    add_counts(h, lo, width, local);
}

/* Whether a block can take the batch in one pass (`block_one_pass`): a batch after the first
 * (the power sums' centre, the running mean, is known before it), fewer token rows than a
 * uint16 count holds (nothing reaches the histograms before the whole batch is read), and bin
 * offsets a float32 holds exactly. */
static int one_pass_fits(const Layer *a, int64_t lo, int64_t hi) {
    const Batch *s = &a->batch;
    if (a->moments.count <= 0) return 0;
    int64_t rows = 0;
    for (int64_t b = 0; b < s->batch; b++) rows += s->lengths[b];
    if (rows >= UINT16_MAX) return 0;
    for (int64_t c = lo; c < hi; c++)
        if (llabs(a->histogram.first[c]) + a->histogram.bins >= (1LL << 24)) return 0;
    return 1;
}

/* A neuron's counts in `counts` (bins of them, emptied first) from its column of the batch,
 * under its histogram as it is now. */
static void count_column(const Layer *a, int64_t c, uint16_t *counts) {
    const Batch *s = &a->batch;
    const Histogram *h = &a->histogram;
    float scale = h->inverse_width[c];
    int64_t first = h->first[c];
    memset(counts, 0, (size_t)h->bins * sizeof(uint16_t));
    for (int64_t b = 0; b < s->batch; b++)
        for (int64_t t = s->skip; t < s->skip + s->lengths[b]; t++)
            counts[(int64_t)floorf(s->x[(b * s->width + t) * s->n + c] * scale) - first] += 1;
}

/* The extremes, the power sums and the bins of neurons lo:hi in one pass over the block's rows,
 * for a batch `one_pass_fits`: each value is binned under its neuron's histogram as it was
 * before the batch, and a neuron with a value outside it has its histogram grown to the
 * batch's range and its bins counted again from its column (after the first batches, few do).
 * Everything is merged only after the whole block was read: returns 1, with nothing merged,
 * if a value is NaN or infinite, else 0. The same results as the two passes. */
static int block_one_pass(const Layer *a, int64_t lo, int64_t hi, uint16_t *local,
                          int64_t *merged) {
    const Batch *s = &a->batch;
    const Histogram *h = &a->histogram;
    int64_t bins = h->bins, width = hi - lo, n = s->n;
    const MomentState *m = &a->moments;
    const float *scale = h->inverse_width + lo;
    float centre[BLOCK], low[BLOCK], high[BLOCK], top[BLOCK], bad[BLOCK], outside[BLOCK];
    float start[BLOCK], end[BLOCK]; /* each neuron's bins as floor(x * scale) */
    int32_t base[BLOCK], at[BLOCK];
    double total[4][BLOCK], above[BLOCK];
    WindowSums window;
    for (int64_t j = 0; j < width; j++) {
        centre[j] = (float)m->mean[lo + j];
        low[j] = INFINITY;
        high[j] = -INFINITY;
        bad[j] = outside[j] = 0.0f;
        start[j] = (float)h->first[lo + j];
        end[j] = (float)(h->first[lo + j] + bins);
        base[j] = (int32_t)(h->first[lo + j] - j * bins);
        above[j] = 0.0;
        for (int p = 0; p < 4; p++) total[p][j] = 0.0;
    }
    memset(local, 0, (size_t)(width * bins) * sizeof(uint16_t));
    for (int64_t b = 0; b < s->batch; b++) {
        for (int64_t j = 0; j < width; j++) top[j] = -INFINITY;
        start_window(&window, width);
        for (int64_t t = s->skip; t < s->skip + s->lengths[b]; t++) {
            const float *row = s->x + (b * s->width + t) * n + lo;
            prefetch_row(row, EXTREMES_AHEAD, n, width);
            for (int64_t j = 0; j < width; j++) {
                float v = row[j];
                top[j] = v > top[j] ? v : top[j];
                low[j] = v < low[j] ? v : low[j];
                bad[j] = fabsf(v) <= FLT_MAX ? bad[j] : 1.0f;
                add_powers(&window, j, v, centre[j]);
                float bin = floorf(v * scale[j]);
                int inside = bin >= start[j] && bin < end[j]; /* false for NaN */
                outside[j] = inside ? outside[j] : 1.0f;
                at[j] = inside ? (int32_t)bin - base[j] : (int32_t)(j * bins);
            }
            for (int64_t j = 0; j < width; j++) local[at[j]] += 1;
        }
        for (int64_t j = 0; j < width; j++) {
            s->window_max[b * n + lo + j] = top[j];
            high[j] = top[j] > high[j] ? top[j] : high[j];
        }
        end_window(&window, width, total, above);
    }
    int flags = 0;
    for (int64_t j = 0; j < width; j++) {
        a->batch_min[lo + j] = low[j];
        a->batch_max[lo + j] = high[j];
        flags |= bad[j] != 0.0f;
    }
    if (flags) return 1;
    for (int64_t j = 0; j < width; j++) {
        if (outside[j] == 0.0f) continue;
        cover(h, lo + j, low[j], high[j], merged);
        count_column(a, lo + j, local + j * bins);
    }
    for (int64_t j = 0; j < width; j++) {
        double sums[4] = {total[0][j], total[1][j], total[2][j], total[3][j]};
        merge_moments(m, lo + j, centre[j], sums, above[j], low[j], high[j]);
    }
    add_counts(h, lo, width, local);
    return 0;
}

/* A window that entered a slot: its per-token values are copied once the whole block has been
 * merged, row by row (`copy_windows`), instead of one neuron at a time down a column of the
 * batch, a cache miss per token. A slot refilled within the batch is copied once. */
typedef struct {
    float *out;      /* the slot's ctx values */
    int64_t *argmax; /* the slot's argmax */
    int64_t ctx, row, column;
} Copy;

typedef struct {
    Copy *items;
    int64_t count;
} Copies;

static void copy_later(Copies *copies, float *out, int64_t *argmax, int64_t ctx, int64_t row,
                       int64_t column) {
    copies->items[copies->count++] = (Copy){out, argmax, ctx, row, column};
}

/* Each copy's window values into its slot (zeros after the window) and the position of its max
 * (the first, as torch's argmax), a batch row's copies together, 16 tokens at a time: the
 * row's 16 token rows stay in cache while each copy fills one cache line of its slot. `order`
 * holds copies->count + batch + 1 int64, `best` and `where` copies->count each. */
static void copy_windows(const Batch *s, const Copies *copies, int64_t *order, float *best,
                         int64_t *where) {
    int64_t *start = order + copies->count; /* [batch + 1]: where each row's copies begin */
    for (int64_t r = 0; r <= s->batch; r++) start[r] = 0;
    for (int64_t i = 0; i < copies->count; i++) start[copies->items[i].row + 1]++;
    for (int64_t r = 0; r < s->batch; r++) start[r + 1] += start[r];
    for (int64_t i = 0; i < copies->count; i++) order[start[copies->items[i].row]++] = i;
    for (int64_t r = s->batch; r > 0; r--) start[r] = start[r - 1]; /* back to the beginnings */
    start[0] = 0;
    for (int64_t r = 0; r < s->batch; r++) {
        int64_t first = start[r], last = start[r + 1], length = s->lengths[r];
        if (first == last) continue;
        const float *x = s->x + (r * s->width + s->skip) * s->n;
        for (int64_t i = first; i < last; i++) {
            best[i] = x[copies->items[order[i]].column];
            where[i] = 0;
        }
        for (int64_t t0 = 0; t0 < length; t0 += 16) {
            int64_t t1 = t0 + 16 < length ? t0 + 16 : length;
            for (int64_t i = first; i < last; i++) {
                const Copy *copy = &copies->items[order[i]];
                const float *column = x + copy->column;
                float top = best[i];
                int64_t at = where[i];
                for (int64_t t = t0; t < t1; t++) {
                    float v = column[t * s->n];
                    copy->out[t] = v;
                    if (v > top) {
                        top = v;
                        at = t;
                    }
                }
                best[i] = top;
                where[i] = at;
            }
        }
        for (int64_t i = first; i < last; i++) {
            const Copy *copy = &copies->items[order[i]];
            for (int64_t t = length; t < copy->ctx; t++) copy->out[t] = 0.0f;
            *copy->argmax = where[i];
        }
    }
}

/* Per neuron lo:lo+width, the highest window max among a part's rows (`rows` NULL: every
 * row), as a running max from the first row (a NaN there stays: it enters nothing). */
static void rows_max(const Batch *s, const int64_t *rows, int64_t count, int64_t lo,
                     int64_t width, float *out) {
    if (count == 0) {
        for (int64_t j = 0; j < width; j++) out[j] = -INFINITY;
        return;
    }
    const float *first = s->window_max + (rows ? rows[0] : 0) * s->n + lo;
    for (int64_t j = 0; j < width; j++) out[j] = first[j];
    for (int64_t i = 1; i < count; i++) {
        const float *row = s->window_max + (rows ? rows[i] : i) * s->n + lo;
        for (int64_t j = 0; j < width; j++) out[j] = row[j] > out[j] ? row[j] : out[j];
    }
}

/* Per neuron lo:lo+width, the lowest max its top-k keeps (-inf while a slot is empty; NaN if
 * a slot holds NaN, so that nothing is ruled out). */
static void lowest_kept(const Top *top, int64_t n, int64_t lo, int64_t width, float *out) {
    for (int64_t j = 0; j < width; j++) out[j] = INFINITY;
    for (int64_t slot = 0; slot < top->k; slot++) {
        const float *values = top->values + slot * n + lo;
        for (int64_t j = 0; j < width; j++)
            out[j] = (values[j] < out[j] || values[j] != values[j]) ? values[j] : out[j];
    }
}

/* The top-k slot to give up: the lowest max, on a tie the later window (empty: -inf, -1). */
static int64_t worst_slot(const Top *top, int64_t c, int64_t n) {
    int64_t worst = 0;
    for (int64_t s = 1; s < top->k; s++) {
        float v = top->values[s * n + c], w = top->values[worst * n + c];
        if (v < w || (v == w && top->window[s * n + c] > top->window[worst * n + c])) worst = s;
    }
    return worst;
}

/* TopWindows.update for neuron c: the part's batch rows (in stream order) enter one by one
 * where they beat the worst kept window; `entered` [batch] marks the rows that did. */
static void column_top(const Batch *s, const TopPart *part, int64_t c, uint8_t *entered,
                       Copies *copies) {
    const Top *top = &part->top;
    int64_t n = s->n, k = top->k;
    if (k == 0) return; /* no slots (ScanParams allows top_k 0; the CLI does not) */
    int64_t worst = worst_slot(top, c, n);
    int64_t old_hashes[k], entrant[k]; /* per slot: the batch row that took it, or -1 */
    for (int64_t slot = 0; slot < k; slot++) {
        old_hashes[slot] = top->hash[slot * n + c];
        entrant[slot] = -1;
    }
    for (int64_t i = 0; i < part->row_count; i++) {
        int64_t r = part->rows[i];
        float v = s->window_max[r * n + c];
        /* Strictly above: rows come in stream order, so on a tie the kept window stays. */
        if (part->repeated[r] || !(v > top->values[worst * n + c])) continue;
        int seen = 0; /* its text is kept already (checked against the slots as they were) */
        for (int64_t slot = 0; slot < k; slot++) seen |= old_hashes[slot] == s->window_hash[r];
        if (seen) continue;
        int64_t at = worst * n + c;
        top->values[at] = v;
        top->window[at] = s->window_index[r];
        top->hash[at] = s->window_hash[r];
        entrant[worst] = r;
        entered[r] = 1;
        worst = worst_slot(top, c, n);
    }
    for (int64_t slot = 0; slot < k; slot++) {
        int64_t at = slot * n + c;
        if (entrant[slot] >= 0)
            copy_later(copies, top->acts + at * top->ctx, top->argmax + at, top->ctx,
                       entrant[slot], c);
    }
}

/* 1 / 2**exponent in float32, the exponent clamped as accumulators.band_bin clamps it. */
static float inverse_width(int64_t exponent) {
    int64_t e = exponent < -126 ? -126 : (exponent > 126 ? 126 : exponent);
    return ldexpf(1.0f, (int)-e);
}

/* accumulators.band_bin for one value: floor(value / 2**exponent) in float32, clamped. */
static int64_t band_of(float value, float inverse, int64_t bins) {
    int64_t k = (int64_t)floorf(value * inverse);
    return k < 0 ? 0 : (k > bins - 1 ? bins - 1 : k);
}

static void move_slot(const Bands *d, int64_t n, int64_t c, int64_t to, int64_t from,
                      int64_t *source) {
    d->priority[to * n + c] = d->priority[from * n + c];
    d->values[to * n + c] = d->values[from * n + c];
    d->argmax[to * n + c] = d->argmax[from * n + c];
    d->window[to * n + c] = d->window[from * n + c];
    memcpy(d->acts + (to * n + c) * d->ctx, d->acts + (from * n + c) * d->ctx,
           (size_t)d->ctx * sizeof(float));
    source[to] = source[from];
}

/* Whether the batch's max (`column_max`) needs a neuron's band grid, of bins 2**exponent wide,
 * widened. */
static int band_grid_too_narrow(float column_max, int64_t exponent) {
    int needed;
    frexpf(column_max, &needed);
    return column_max > 0 && needed - 3 > exponent;
}

/* Per neuron lo:lo+width, whether `column_bands` may change its band samples: its grid needs
 * widening, or some window's priority beats the m-th of the bin its max falls in as the bins
 * are before the batch. Inserting only lowers a bin's m-th priority, so a window that does not
 * beat it now never will in this batch: the other neurons (in a long scan, nearly all) are
 * passed over after one look at each row, side by side, not one neuron down its column. */
static void band_candidates(const Batch *s, const int64_t *batch_priority, const Bands *d,
                            int64_t lo, int64_t width, const float *column_max,
                            uint8_t *candidate) {
    int64_t n = s->n, m = d->m, bins = d->slots / m;
    float inverse[BLOCK];
    for (int64_t j = 0; j < width; j++) {
        candidate[j] = (uint8_t)band_grid_too_narrow(column_max[j], d->exponent[lo + j]);
        inverse[j] = inverse_width(d->exponent[lo + j]);
    }
    for (int64_t r = 0; r < s->batch; r++) {
        const float *row = s->window_max + r * n + lo;
        const int64_t *mth = d->priority + (m - 1) * n + lo; /* bin 0's m-th, per neuron */
        int64_t p = batch_priority[r];
        for (int64_t j = 0; j < width; j++) {
            if (!(row[j] > 0)) continue;
            int64_t bin = band_of(row[j], inverse[j], bins);
            candidate[j] |= p < mth[bin * m * n + j];
        }
    }
}

/* BandSample.update for neuron c: widen the grid if the batch's max (`column_max`) needs it
 * (re-binning the kept windows, bottom m per new bin), then insert each window whose priority
 * beats its bin's m-th, keeping every bin in priority order; `entered` [batch] marks the rows
 * kept. `scratch` holds 6 * slots int64 and slots * ctx floats. */
static void column_bands(const Batch *s, const int64_t *batch_priority, const Bands *d,
                         int64_t c, float column_max, uint8_t *entered, int64_t *scratch,
                         float *old_acts, Copies *copies) {
    int64_t n = s->n, m = d->m, slots = d->slots, bins = slots / m, ctx = d->ctx;
    int64_t *source = scratch, *old_priority = scratch + slots, *old_argmax = scratch + 2 * slots;
    int64_t *old_window = scratch + 3 * slots, *filled = scratch + 4 * slots;
    float *old_values = (float *)(scratch + 5 * slots);
    for (int64_t slot = 0; slot < slots; slot++) source[slot] = -1;
    if (band_grid_too_narrow(column_max, d->exponent[c])) {
        int needed;
        frexpf(column_max, &needed);
        d->exponent[c] = needed - 3;
        for (int64_t slot = 0; slot < slots; slot++) {
            int64_t at = slot * n + c;
            old_priority[slot] = d->priority[at];
            old_values[slot] = d->values[at];
            old_argmax[slot] = d->argmax[at];
            old_window[slot] = d->window[at];
            memcpy(old_acts + slot * ctx, d->acts + at * ctx, (size_t)ctx * sizeof(float));
            d->priority[at] = EMPTY_PRIORITY;
            d->values[at] = 0.0f;
            d->argmax[at] = 0;
            d->window[at] = -1;
        }
        for (int64_t bin = 0; bin < bins; bin++) filled[bin] = 0;
        float inverse = inverse_width(d->exponent[c]);
        for (int64_t i = 0; i < slots; i++) { /* the kept windows in priority order */
            int64_t best = -1;
            for (int64_t slot = 0; slot < slots; slot++) {
                if (old_window[slot] >= 0 &&
                    (best < 0 || old_priority[slot] < old_priority[best]))
                    best = slot;
            }
            if (best < 0) break;
            int64_t bin = band_of(old_values[best], inverse, bins);
            if (filled[bin] < m) {
                int64_t at = (bin * m + filled[bin]) * n + c;
                filled[bin]++;
                d->priority[at] = old_priority[best];
                d->values[at] = old_values[best];
                d->argmax[at] = old_argmax[best];
                d->window[at] = old_window[best];
                memcpy(d->acts + at * ctx, old_acts + best * ctx, (size_t)ctx * sizeof(float));
            }
            old_window[best] = -1;
        }
    }
    float inverse = inverse_width(d->exponent[c]);
    for (int64_t r = 0; r < s->batch; r++) {
        float v = s->window_max[r * n + c];
        if (!(v > 0)) continue;
        int64_t bin = band_of(v, inverse, bins);
        int64_t p = batch_priority[r];
        int64_t last = bin * m + m - 1;
        if (!(p < d->priority[last * n + c])) continue; /* the bin holds m smaller priorities */
        int64_t at = bin * m;
        while (d->priority[at * n + c] < p) at++;
        if (d->priority[at * n + c] == p) continue; /* the same tokens, kept already */
        for (int64_t slot = last; slot > at; slot--) move_slot(d, n, c, slot, slot - 1, source);
        int64_t to = at * n + c;
        d->priority[to] = p;
        d->values[to] = v;
        d->window[to] = s->window_index[r];
        source[at] = r; /* its values are copied later: moving the slot moves this mark */
    }
    for (int64_t slot = 0; slot < slots; slot++) {
        int64_t at = slot * n + c;
        if (source[slot] >= 0 && d->window[at] >= 0) {
            entered[source[slot]] = 1;
            copy_later(copies, d->acts + at * ctx, d->argmax + at, ctx, source[slot], c);
        }
    }
}

/* Run `block` for every block on `threads` threads. With OpenMP the threads are the ones
 * torch's own runtime keeps (the same libgomp, loaded once): a second pool would compete with
 * torch's threads, which spin for a while after each of the forward pass's parallel regions.
 * Without OpenMP (a compiler without it) the blocks run on this thread. */
static int run_blocks(int (*block)(const void *, int64_t, void *), const void *args,
                      int64_t blocks, size_t scratch_bytes, int64_t threads) {
    int status = 0;
    (void)threads;
#pragma omp parallel num_threads(threads)
    {
        void *scratch = scratch_bytes ? malloc(scratch_bytes) : NULL;
        int ready = !scratch_bytes || scratch != NULL;
#pragma omp for schedule(dynamic)
        for (int64_t i = 0; i < blocks; i++) {
            int code = ready ? block(args, i, scratch) : OUT_OF_MEMORY;
            if (code != 0) {
#pragma omp atomic write
                status = code;
            }
        }
        free(scratch);
    }
    return status;
}

/* A thread's scratch for a block: histogram counts, band re-binning, the deferred copies. */
typedef struct {
    uint16_t *local;
    int64_t *merged, *band, *order, *where;
    float *old_acts, *best;
    Copy *copies;
} Scratch;

static size_t copy_capacity(const Layer *a) {
    int64_t per_neuron = a->bands.m ? a->bands.slots : 0;
    for (int64_t i = 0; i < a->part_count; i++) per_neuron += a->parts[i].top.k;
    return (size_t)BLOCK * per_neuron;
}

static size_t scratch_bytes(const Layer *a) {
    int64_t bins = a->histogram.bins, slots = a->bands.m ? a->bands.slots : 0;
    size_t copies = copy_capacity(a);
    return (size_t)BLOCK * bins * sizeof(uint16_t) + (size_t)bins * sizeof(int64_t) +
           (size_t)6 * slots * sizeof(int64_t) + (size_t)slots * a->bands.ctx * sizeof(float) +
           copies * (sizeof(Copy) + 2 * sizeof(int64_t) + sizeof(float)) +
           (size_t)(a->batch.batch + 1) * sizeof(int64_t);
}

static Scratch carve(const Layer *a, void *memory) {
    int64_t bins = a->histogram.bins, slots = a->bands.m ? a->bands.slots : 0;
    size_t copies = copy_capacity(a);
    Scratch s;
    s.copies = memory; /* the widest items first, each part aligned for what follows */
    s.merged = (int64_t *)(s.copies + copies);
    s.band = s.merged + bins;
    s.order = s.band + 6 * slots;
    s.where = s.order + copies + a->batch.batch + 1;
    s.local = (uint16_t *)(s.where + copies);
    s.old_acts = (float *)(s.local + BLOCK * bins);
    s.best = s.old_acts + slots * a->bands.ctx;
    return s;
}

static int layer_block(const void *args, int64_t block, void *memory) {
    const Layers *all = args;
    const Layer *a = all->layers;
    while (block >= blocks_of(a->batch.n)) block -= blocks_of((a++)->batch.n);
    int64_t lo = block * BLOCK;
    int64_t hi = lo + BLOCK < a->batch.n ? lo + BLOCK : a->batch.n;
    Scratch scratch = a->extremes_only ? (Scratch){0} : carve(a, memory);
    int one_pass = !a->extremes_only && one_pass_fits(a, lo, hi);
    if (one_pass ? block_one_pass(a, lo, hi, scratch.local, scratch.merged)
                 : block_extremes(a, lo, hi)) { /* before anything is binned */
        ((Layer *)a)->not_finite = 1; /* a plain store: any block finding one writes 1 */
        return NOT_FINITE_STATUS;
    }
    if (a->extremes_only) return 0;
    if (!one_pass) {
        for (int64_t c = lo; c < hi; c++)
            cover(&a->histogram, c, a->batch_min[c], a->batch_max[c], scratch.merged);
        block_sums_and_counts(a, lo, hi, scratch.local);
    }
    uint8_t *entered = a->entered + block * a->batch.batch;
    Copies copies = {scratch.copies, 0};
    /* A row enters a top-k only strictly above the lowest max it keeps: a neuron whose rows
     * are all at or below it is passed over (in a long scan, nearly every neuron). */
    float best[BLOCK], lowest[BLOCK];
    for (int64_t i = 0; i < a->part_count; i++) {
        const TopPart *part = &a->parts[i];
        rows_max(&a->batch, part->rows, part->row_count, lo, hi - lo, best);
        lowest_kept(&part->top, a->batch.n, lo, hi - lo, lowest);
        for (int64_t c = lo; c < hi; c++)
            if (!(best[c - lo] <= lowest[c - lo]))
                column_top(&a->batch, part, c, entered, &copies);
    }
    if (a->bands.m) {
        uint8_t candidate[BLOCK];
        rows_max(&a->batch, NULL, a->batch.batch, lo, hi - lo, best);
        band_candidates(&a->batch, a->band_priority, &a->bands, lo, hi - lo, best, candidate);
        for (int64_t c = lo; c < hi; c++)
            if (candidate[c - lo])
                column_bands(&a->batch, a->band_priority, &a->bands, c, best[c - lo], entered,
                             scratch.band, scratch.old_acts, &copies);
    }
    copy_windows(&a->batch, &copies, scratch.order, scratch.best, scratch.where);
    return 0;
}

/* Per row of a part: whether an earlier row of the part has the same text (it never enters:
 * the first one stands for it). */
static void find_repeats(const Batch *s, TopPart *part) {
    memset(part->repeated, 0, (size_t)s->batch);
    for (int64_t i = 0; i < part->row_count; i++) {
        for (int64_t j = 0; j < i; j++) {
            if (s->window_hash[part->rows[j]] == s->window_hash[part->rows[i]]) {
                part->repeated[part->rows[i]] = 1;
                break;
            }
        }
    }
}

/* BLOCK, for the caller's per-block arrays. */
int64_t block_neurons(void) { return BLOCK; }

/* The batch's update of `count` layers, their blocks shared among `threads` threads. */
int scan_layers(Layer *layers, int64_t count, int64_t threads) {
    int64_t blocks = 0;
    size_t scratch = 0;
    for (int64_t l = 0; l < count; l++) {
        Layer *a = &layers[l];
        for (int64_t i = 0; i < a->part_count; i++) find_repeats(&a->batch, &a->parts[i]);
        a->not_finite = 0;
        blocks += blocks_of(a->batch.n);
        size_t bytes = a->extremes_only ? 0 : scratch_bytes(a);
        scratch = bytes > scratch ? bytes : scratch;
    }
    Layers all = {layers, count};
    return run_blocks(layer_block, &all, blocks, scratch, threads);
}
