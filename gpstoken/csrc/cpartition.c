/* Native CPU path of the entropy-driven partition (docs/algorithms.md section 1).
 *
 * The pure-torch path in gpstoken/partition/ (greedy.py) is the reference this file is tested against
 * (tests/test_partition.py runs both on every official fixture and on random cells). Every
 * step repeats the official arithmetic bit for bit:
 *   - bilinear resize to 64x64, columns first, each pass the float32 fma(b - a, t, a)
 *     evaluated in double (the product of two floats is exact in double) and rounded once;
 *   - 3x3 Sobel with replicated borders in double with the official operation order;
 *     magnitude sqrt(gx*gx + gy*gy) (no fused multiply-add: built with -ffp-contract=off);
 *   - numpy histogram binning of [-5.5, 5.5] into 512 bins, decided with exact comparisons;
 *   - entropy terms p * log2(p + 1e-10) with libm log2 and numpy's pairwise summation;
 *   - complexity pow(E, weight) * h * w + the bias sum read off a float64 integral image.
 * The greedy loop keeps the official list order as the order of (-complexity, insertion
 * number): a heap of splittable cells, children appended with increasing numbers.
 *
 * Exported (buffers are C-contiguous; the GIL is released while computing):
 *   partition(grey, P, H, W, integral|None, n, min_size, weight, threads, out)
 *       grey float32 [P,H,W] in [0,1] (= (g+1)/2), integral float64 [P,H+1,W+1],
 *       out int32 [P,n,4] cells (x0, y0, x1, y1) inclusive, official order.
 *   complexities(grey, P, H, W, integral|None, cells, K, weight, threads, out)
 *       cells int32 [K,5] (patch, y0, x0, h, w), out float64 [K].
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The per-cell work (cell_complexity and what it inlines) is compiled for AVX-512 and AVX2 too and picked at load time (x86-64
 * Linux): the same IEEE operations, only wider. Built with -ffp-contract=off. */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MULTIVERSION
#endif

#define INLINE static inline __attribute__((always_inline))

#define RS 64          /* resized side */
#define NPIX (RS * RS) /* resized pixels per cell */
#define NBINS 256      /* upper half of the 512 bins: magnitudes are >= 0 */

typedef struct {
    const float *grey;       /* [P,H,W] */
    const double *integral;  /* [P,H+1,W+1] or NULL */
    int H, W;
    double weight;
    const double *full_terms; /* [NPIX+1]: entropy term of count c when all NPIX are binned */
} source_t;

typedef struct { /* per-thread scratch */
    float *rows;   /* [max(H,64), 64]: after the column pass */
    float *img;    /* [64,64] resized cell */
    double *d, *s; /* [64,64] horizontal Sobel parts */
    int32_t *bin;  /* [64*64] bin per pixel, NBINS = above 5.5 */
} scratch_t;

/* OpenCV INTER_LINEAR taps of one axis n -> 64: indices i0, i1 and the float32 weight. */
static void resize_taps(int n, int *i0, int *i1, double *wt) {
    double scale = 1.0 / ((double)RS / (double)n);
    for (int d = 0; d < RS; d++) {
        float f = (float)((d + 0.5) * scale - 0.5);
        int s = (int)floor((double)f);
        f = (float)((double)f - (double)s);
        if (s < 0) { s = 0; f = 0.0f; }
        if (s >= n - 1) { s = n - 1; f = 0.0f; }
        i0[d] = s;
        i1[d] = s + 1 < n ? s + 1 : n - 1;
        wt[d] = (double)f;
    }
}

INLINE float lerp32(float a, float b, double t) {
    float diff = b - a;
    return (float)((double)a + (double)diff * t);
}

/* Histogram entropy (bits) of a cell's 256 upper-bin counts, as numpy computes it. */
static double entropy(const int32_t *counts, const double *full_terms) {
    double terms[NBINS];
    int total = 0;
    for (int q = 0; q < NBINS; q++) total += counts[q];
    if (total == NPIX) {
        for (int q = 0; q < NBINS; q++) terms[q] = full_terms[counts[q]];
    } else {
        double denom = (double)total + 1e-5;
        for (int q = 0; q < NBINS; q++) {
            double p = (double)counts[q] / denom;
            terms[q] = p * log2(p + 1e-10);
        }
    }
    /* numpy pairwise sum of 512 terms: the lower 256 are -0.0 and change nothing; each block
     * of 128 is summed with 8 running accumulators, blocks are added as a tree. */
    double blk[2];
    for (int b = 0; b < 2; b++) {
        const double *a = terms + 128 * b;
        double r[8];
        for (int j = 0; j < 8; j++) r[j] = a[j];
        for (int i = 8; i < 128; i += 8)
            for (int j = 0; j < 8; j++) r[j] += a[i + j];
        blk[b] = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    }
    return -(blk[0] + blk[1]);
}

/* Resize one cell to 64x64 into sc->img. */
INLINE void resize_cell(const float *v, int W, int y0, int x0, int h, int w, scratch_t *sc) {
    int ci0[RS], ci1[RS], ri0[RS], ri1[RS];
    double cw[RS], rw[RS];
    resize_taps(w, ci0, ci1, cw);
    resize_taps(h, ri0, ri1, rw);
    for (int y = 0; y < h; y++) {
        const float *restrict row = v + (size_t)(y0 + y) * W + x0;
        float *restrict out = sc->rows + (size_t)y * RS;
        for (int d = 0; d < RS; d++) out[d] = lerp32(row[ci0[d]], row[ci1[d]], cw[d]);
    }
    for (int d = 0; d < RS; d++) {
        const float *restrict a = sc->rows + (size_t)ri0[d] * RS;
        const float *restrict b = sc->rows + (size_t)ri1[d] * RS;
        float *restrict out = sc->img + d * RS;
        double t = rw[d];
        for (int e = 0; e < RS; e++) out[e] = lerp32(a[e], b[e], t);
    }
}

/* Bins of the Sobel magnitudes of sc->img into sc->bin (loops written to vectorise). */
INLINE void sobel_bins(scratch_t *sc) {
    for (int i = 0; i < RS; i++) { /* horizontal parts: D = right - left, S = (left + 2 mid) + right */
        const float *r = sc->img + i * RS;
        double *d = sc->d + i * RS, *s = sc->s + i * RS;
        double r0 = r[0], r1 = r[1], rl = r[RS - 1], rl1 = r[RS - 2];
        d[0] = r1 - r0;
        s[0] = (r0 + 2.0 * r0) + r1;
        for (int j = 1; j < RS - 1; j++) {
            double l = r[j - 1], m = r[j], rt = r[j + 1];
            d[j] = rt - l;
            s[j] = (l + 2.0 * m) + rt;
        }
        d[RS - 1] = rl - rl1;
        s[RS - 1] = (rl1 + 2.0 * rl) + rl;
    }
    const double inv11 = 1.0 / 11.0;
    for (int i = 0; i < RS; i++) {
        const double *du = sc->d + (i > 0 ? i - 1 : 0) * RS, *dm = sc->d + i * RS;
        const double *dd = sc->d + (i < RS - 1 ? i + 1 : RS - 1) * RS;
        const double *su = sc->s + (i > 0 ? i - 1 : 0) * RS;
        const double *sd = sc->s + (i < RS - 1 ? i + 1 : RS - 1) * RS;
        int32_t *bin = sc->bin + i * RS;
        for (int j = 0; j < RS; j++) {
            double gx = 2.0 * dm[j] + (dd[j] + du[j]);
            double gy = sd[j] - su[j];
            double t = sqrt(gx * gx + gy * gy) * 512.0;
            /* bin = largest q with 11 q <= t: an estimate, then two exact corrections */
            double tc = t < 2816.0 ? t : 2816.0;
            double q = floor(tc * inv11);
            q = q * 11.0 > tc ? q - 1.0 : q;
            q = (q + 1.0) * 11.0 <= tc ? q + 1.0 : q;
            q = q < NBINS - 1.0 ? q : NBINS - 1.0; /* 5.5 itself falls in the closed last bin */
            q = t <= 2816.0 ? q : (double)NBINS;   /* above 5.5 (or NaN): the dropped bin */
            bin[j] = (int32_t)q;
        }
    }
}

MULTIVERSION static double cell_complexity(const source_t *src, int patch, int y0, int x0, int h, int w, scratch_t *sc) {
    const float *v = src->grey + (size_t)patch * src->H * src->W;
    resize_cell(v, src->W, y0, x0, h, w, sc);
    sobel_bins(sc);
    int32_t c4[4][NBINS + 1];
    memset(c4, 0, sizeof(c4));
    for (int k = 0; k < NPIX; k += 4) {
        c4[0][sc->bin[k]]++;
        c4[1][sc->bin[k + 1]]++;
        c4[2][sc->bin[k + 2]]++;
        c4[3][sc->bin[k + 3]]++;
    }
    int32_t counts[NBINS];
    for (int q = 0; q < NBINS; q++) counts[q] = c4[0][q] + c4[1][q] + c4[2][q] + c4[3][q];
    double c = pow(entropy(counts, src->full_terms), src->weight) * h * w;
    if (src->integral) {
        const double *ii = src->integral + (size_t)patch * (src->H + 1) * (src->W + 1);
        size_t st = (size_t)src->W + 1;
        c = c + ((ii[(y0 + h) * st + x0 + w] - ii[y0 * st + x0 + w]) - (ii[(y0 + h) * st + x0] - ii[y0 * st + x0]));
    }
    return c;
}

static int scratch_init(scratch_t *sc, int H) {
    int rows = H > RS ? H : RS;
    sc->rows = malloc(sizeof(float) * (size_t)rows * RS);
    sc->img = malloc(sizeof(float) * NPIX);
    sc->d = malloc(sizeof(double) * NPIX);
    sc->s = malloc(sizeof(double) * NPIX);
    sc->bin = malloc(sizeof(int32_t) * NPIX);
    return sc->rows && sc->img && sc->d && sc->s && sc->bin;
}

static void scratch_free(scratch_t *sc) {
    free(sc->rows);
    free(sc->img);
    free(sc->d);
    free(sc->s);
    free(sc->bin);
}

/* ------------------------------------------------------------------ greedy loop per patch */
typedef struct {
    int y0, x0, h, w;
    double c;
    int seq; /* insertion number; -1 for a computed but unused split */
} cell_t;

/* official order: larger complexity first, then earlier insertion */
static inline int before(const cell_t *a, const cell_t *b) {
    return a->c > b->c || (a->c == b->c && a->seq < b->seq);
}

static int cmp_cells(const void *pa, const void *pb) {
    const cell_t *a = pa, *b = pb;
    return before(a, b) ? -1 : (before(b, a) ? 1 : 0);
}

static void heap_push(int *heap, int *len, const cell_t *cells, int idx) {
    int i = (*len)++;
    heap[i] = idx;
    while (i > 0) {
        int parent = (i - 1) / 2;
        if (!before(&cells[heap[i]], &cells[heap[parent]])) break;
        int t = heap[i]; heap[i] = heap[parent]; heap[parent] = t;
        i = parent;
    }
}

static int heap_pop(int *heap, int *len, const cell_t *cells) {
    int top = heap[0];
    heap[0] = heap[--(*len)];
    int i = 0;
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < *len && before(&cells[heap[l]], &cells[heap[m]])) m = l;
        if (r < *len && before(&cells[heap[r]], &cells[heap[m]])) m = r;
        if (m == i) break;
        int t = heap[i]; heap[i] = heap[m]; heap[m] = t;
        i = m;
    }
    return top;
}

static inline int splittable(const cell_t *c, int min_size) {
    return c->h - 1 > min_size || c->w - 1 > min_size;
}

/* Returns 0, or -1 when no splittable cell is left before n cells (the caller validates n). */
static int partition_patch(const source_t *src, int patch, int n, int min_size, scratch_t *sc,
                           cell_t *cells, int *heap, int *alive, int32_t *out) {
    int ncells = 0, hlen = 0, count = 1, seq = 0, last = -1;
    cell_t root = {0, 0, src->H, src->W, 0.0, seq++};
    if (n > 1) root.c = cell_complexity(src, patch, 0, 0, src->H, src->W, sc);
    cells[ncells] = root;
    alive[ncells] = 1;
    if (splittable(&root, min_size)) heap_push(heap, &hlen, cells, ncells);
    ncells++;
    while (count < n) {
        if (!hlen) return -1;
        int pick = heap_pop(heap, &hlen, cells);
        alive[pick] = 0;
        cell_t p = cells[pick];
        cell_t lr[2] = {{p.y0, p.x0, p.h, p.w / 2, 0.0, 0}, {p.y0, p.x0 + p.w / 2, p.h, p.w - p.w / 2, 0.0, 0}};
        cell_t tb[2] = {{p.y0, p.x0, p.h / 2, p.w, 0.0, 0}, {p.y0 + p.h / 2, p.x0, p.h - p.h / 2, p.w, 0.0, 0}};
        cell_t *kids = p.w > p.h ? lr : tb;
        for (int k = 0; k < 2; k++)
            kids[k].c = cell_complexity(src, patch, kids[k].y0, kids[k].x0, kids[k].h, kids[k].w, sc);
        if (p.w == p.h) {
            for (int k = 0; k < 2; k++)
                lr[k].c = cell_complexity(src, patch, lr[k].y0, lr[k].x0, lr[k].h, lr[k].w, sc);
            if (fmin(lr[0].c, lr[1].c) < fmin(tb[0].c, tb[1].c)) kids = lr;
        }
        last = ncells;
        for (int k = 0; k < 2; k++) {
            kids[k].seq = seq++;
            cells[ncells] = kids[k];
            alive[ncells] = 1;
            if (splittable(&kids[k], min_size)) heap_push(heap, &hlen, cells, ncells);
            ncells++;
        }
        count++;
    }
    /* final order: every cell alive before the last pick, sorted, then the last pick's halves */
    int m = 0;
    cell_t *rest = cells + ncells; /* spare room after the used cells */
    for (int i = 0; i < ncells; i++)
        if (alive[i] && (last < 0 || i < last)) rest[m++] = cells[i];
    qsort(rest, (size_t)m, sizeof(cell_t), cmp_cells);
    if (last >= 0) {
        rest[m++] = cells[last];
        rest[m++] = cells[last + 1];
    }
    for (int i = 0; i < m; i++) {
        int32_t *o = out + 4 * (size_t)i;
        o[0] = rest[i].x0;
        o[1] = rest[i].y0;
        o[2] = rest[i].x0 + rest[i].w - 1;
        o[3] = rest[i].y0 + rest[i].h - 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ threads */
typedef struct {
    const source_t *src;
    int mode; /* 0 partition, 1 complexities */
    int items, n, min_size;
    const int32_t *cells_in; /* complexities: [K,5] */
    int32_t *cells_out;      /* partition: [P,n,4] */
    double *values_out;      /* complexities: [K] */
    int next;                /* next item to take */
    int status;              /* 0 ok, -1 no splittable cell, -2 out of memory */
    pthread_mutex_t lock;
} job_t;

static int job_take(job_t *job) {
    pthread_mutex_lock(&job->lock);
    int i = job->status == 0 && job->next < job->items ? job->next++ : -1;
    pthread_mutex_unlock(&job->lock);
    return i;
}

static void job_fail(job_t *job, int status) {
    pthread_mutex_lock(&job->lock);
    if (job->status == 0) job->status = status;
    pthread_mutex_unlock(&job->lock);
}

static void *worker(void *arg) {
    job_t *job = arg;
    scratch_t sc;
    int cap = 2 * job->n + 4;
    cell_t *cells = job->mode == 0 ? malloc(sizeof(cell_t) * (size_t)cap * 2) : NULL;
    int *heap = job->mode == 0 ? malloc(sizeof(int) * (size_t)cap) : NULL;
    int *alive = job->mode == 0 ? malloc(sizeof(int) * (size_t)cap) : NULL;
    if (!scratch_init(&sc, job->src->H) || (job->mode == 0 && !(cells && heap && alive))) {
        job_fail(job, -2);
    } else {
        int i;
        while ((i = job_take(job)) >= 0) {
            if (job->mode == 0) {
                if (partition_patch(job->src, i, job->n, job->min_size, &sc, cells, heap, alive,
                                    job->cells_out + (size_t)i * job->n * 4))
                    job_fail(job, -1);
            } else {
                const int32_t *c = job->cells_in + 5 * (size_t)i;
                job->values_out[i] = cell_complexity(job->src, c[0], c[1], c[2], c[3], c[4], &sc);
            }
        }
    }
    free(cells);
    free(heap);
    free(alive);
    scratch_free(&sc);
    return NULL;
}

static int run_job(job_t *job, int threads) {
    if (threads > job->items) threads = job->items;
    if (threads < 1) threads = 1;
    pthread_mutex_init(&job->lock, NULL);
    pthread_t *ids = malloc(sizeof(pthread_t) * (size_t)threads);
    int started = 0;
    if (ids)
        for (; started < threads - 1; started++)
            if (pthread_create(&ids[started], NULL, worker, job)) break;
    worker(job); /* the calling thread works too */
    for (int t = 0; t < started; t++) pthread_join(ids[t], NULL);
    free(ids);
    pthread_mutex_destroy(&job->lock);
    return job->status;
}

static double *full_terms_table(void) {
    double *t = malloc(sizeof(double) * (NPIX + 1));
    if (!t) return NULL;
    double denom = (double)NPIX + 1e-5;
    for (int c = 0; c <= NPIX; c++) {
        double p = (double)c / denom;
        t[c] = p * log2(p + 1e-10);
    }
    return t;
}

/* ------------------------------------------------------------------ Python bindings */
static int need(Py_buffer *b, Py_ssize_t bytes, const char *name) {
    if (b->len != bytes) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd bytes, got %zd", name, bytes, b->len);
        return 0;
    }
    return 1;
}

static int get_integral(PyObject *obj, Py_buffer *buf, Py_ssize_t bytes) {
    if (obj == Py_None) {
        buf->buf = NULL;
        buf->obj = NULL;
        return 1;
    }
    if (PyObject_GetBuffer(obj, buf, PyBUF_C_CONTIGUOUS) < 0) return 0;
    if (!need(buf, bytes, "integral")) {
        PyBuffer_Release(buf);
        return 0;
    }
    return 1;
}

/* Runs a job on the buffers with the GIL released: None, or NULL with the error set. */
static PyObject *execute(job_t *job, const Py_buffer *grey, const Py_buffer *integral, int H, int W, double weight,
                         int threads) {
    double *table = full_terms_table();
    if (!table) return PyErr_NoMemory();
    source_t src = {grey->buf, integral->buf, H, W, weight, table};
    job->src = &src;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = run_job(job, threads);
    Py_END_ALLOW_THREADS
    free(table);
    if (status == -1) {
        PyErr_SetString(PyExc_ValueError, "n_tokens: no splittable cell left (more tokens than the patch allows)");
        return NULL;
    }
    if (status == -2) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_partition(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer grey, out, integral = {0};
    PyObject *integral_obj, *result = NULL;
    int P, H, W, n, min_size, threads;
    double weight;
    if (!PyArg_ParseTuple(args, "y*iiiOiidiw*", &grey, &P, &H, &W, &integral_obj, &n, &min_size, &weight,
                          &threads, &out))
        return NULL;
    if (P < 0 || H < 1 || W < 1 || n < 1) {
        PyErr_SetString(PyExc_ValueError, "partition: P >= 0, H, W, n >= 1 required");
    } else if (need(&grey, (Py_ssize_t)P * H * W * 4, "grey") && need(&out, (Py_ssize_t)P * n * 16, "out") &&
               get_integral(integral_obj, &integral, (Py_ssize_t)P * (H + 1) * (W + 1) * 8)) {
        job_t job = {.mode = 0, .items = P, .n = n, .min_size = min_size, .cells_out = out.buf};
        result = execute(&job, &grey, &integral, H, W, weight, threads);
        if (integral.obj) PyBuffer_Release(&integral);
    }
    PyBuffer_Release(&grey);
    PyBuffer_Release(&out);
    return result;
}

static int check_cells(const int32_t *c, int K, int P, int H, int W) {
    for (int i = 0; i < K; i++, c += 5)
        if (c[0] < 0 || c[0] >= P || c[1] < 0 || c[2] < 0 || c[3] < 1 || c[4] < 1 || c[1] + c[3] > H ||
            c[2] + c[4] > W) {
            PyErr_Format(PyExc_ValueError, "cells[%d]: outside the %dx%d patch or empty", i, H, W);
            return 0;
        }
    return 1;
}

static PyObject *py_complexities(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer grey, cells, out, integral = {0};
    PyObject *integral_obj, *result = NULL;
    int P, H, W, K, threads;
    double weight;
    if (!PyArg_ParseTuple(args, "y*iiiOy*idiw*", &grey, &P, &H, &W, &integral_obj, &cells, &K, &weight,
                          &threads, &out))
        return NULL;
    if (need(&grey, (Py_ssize_t)P * H * W * 4, "grey") && need(&cells, (Py_ssize_t)K * 20, "cells") &&
        need(&out, (Py_ssize_t)K * 8, "out") && check_cells(cells.buf, K, P, H, W) &&
        get_integral(integral_obj, &integral, (Py_ssize_t)P * (H + 1) * (W + 1) * 8)) {
        job_t job = {.mode = 1, .items = K, .cells_in = cells.buf, .values_out = out.buf};
        result = execute(&job, &grey, &integral, H, W, weight, threads);
        if (integral.obj) PyBuffer_Release(&integral);
    }
    PyBuffer_Release(&grey);
    PyBuffer_Release(&cells);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"partition", py_partition, METH_VARARGS, "Greedy partition of float32 [P,H,W] patches (see file header)."},
    {"complexities", py_complexities, METH_VARARGS, "Complexities of int32 [K,5] cells (see file header)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cpartition", "Native CPU entropy partition.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__cpartition(void) { return PyModule_Create(&module); }
