/* confreg.c -- find and measure the neurons with which language models regulate their own
 * confidence (Stolfo et al., "Confidence Regulation Neurons in Language Models", NeurIPS 2024),
 * on a CPU, from one file.  See confreg.h for the library interface and README.md for the
 * command-line program, which is compiled unless CONFREG_NO_MAIN is defined.
 *
 * Contents (read top to bottom):
 *   1. Errors and utilities        checked arithmetic, messages, file mapping, half floats
 *   2. JSON                        a small DOM parser for config.json, tokenizer.json, headers
 *   3. File formats                safetensors, GGUF (read and write), llama2.c checkpoints
 *   4. Quantization and kernels    Q8_0, F16/BF16, dot products and matrix products
 *   5. Models and forward pass     configs per architecture, weights, the transformer
 *   6. Tokenizers                  byte-level BPE and SentencePiece-style BPE
 *   7. Analyses                    loss, entropy, evaluation rows
 *   8. Reports                     .npy and table output
 *   9. Command-line program        subcommands
 */
#define _POSIX_C_SOURCE 200809L
#define _FILE_OFFSET_BITS 64
#include "confreg.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && defined(__F16C__) && !defined(CONFREG_PORTABLE)
#include <immintrin.h>
#define CR_AVX2 1
#endif
#if defined(__ARM_NEON) && !defined(CONFREG_PORTABLE)
#include <arm_neon.h>
#define CR_NEON 1
#endif

/* ============================================================================================
 * 1. Errors and utilities
 * ============================================================================================ */

/* Hard limits on what any file may claim, checked before anything is allocated. */
#define CR_MAX_DIMS 4
#define CR_MAX_TENSORS 100000
#define CR_MAX_NAME 1024
#define CR_MAX_STRING (64u << 20)
#define CR_MAX_ARRAY (64u << 20)
#define CR_MAX_KV 100000
#define CR_MAX_JSON_DEPTH 64
#define CR_MAX_LAYERS 1024
#define CR_MAX_DIM (1 << 20)
#define CR_MAX_VOCAB (1 << 22)
#define CR_MAX_CTX (1 << 20)
#define CR_MAX_SHARDS 1024
/* Multiply-adds below which a loop stays on one thread: forking costs microseconds, and on a
 * shared machine idle OpenMP threads spin. */
#define CR_PAR_MIN (1 << 16)

/* Scalar twins of SIMD kernels are compiled in every build, for tests and `selftest`. */
#if defined(__GNUC__)
#define CR_UNUSED __attribute__((unused))
#else
#define CR_UNUSED
#endif

static int cr_fail(cr_err *e, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static int cr_fail(cr_err *e, int code, const char *fmt, ...) {
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* Prefixes an existing message with context ("file: message"). */
static int cr_wrap(cr_err *e, int code, const char *prefix) {
    if (e) {
        char tmp[sizeof e->msg];
        snprintf(tmp, sizeof tmp, "%.200s: %.300s", prefix, e->msg);
        memcpy(e->msg, tmp, sizeof tmp);
    }
    return code;
}

static int cr_mul_ok(uint64_t a, uint64_t b, uint64_t *out) {
    if (a != 0 && b > UINT64_MAX / a) return 0;
    *out = a * b;
    return 1;
}

static void *cr_calloc(size_t n, size_t size) {
    if (n == 0 || size == 0) return calloc(1, 1);
    if (n > SIZE_MAX / size) return NULL;
    return calloc(n, size);
}

static void *cr_malloc(size_t n, size_t size) {
    if (n == 0 || size == 0) return malloc(1);
    if (n > SIZE_MAX / size) return NULL;
    return malloc(n * size);
}

static char *cr_strndup(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

static char *cr_path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t k = a;
    if (a && dir[a - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}

static int cr_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int cr_is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int cr_ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* A read-only memory map of a whole file.  Empty files map to a static empty buffer. */
typedef struct cr_map {
    const unsigned char *data;
    size_t size;
    int mapped;
} cr_map;

static int cr_map_open(cr_map *map, const char *path, cr_err *err) {
    memset(map, 0, sizeof *map);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return cr_fail(err, CR_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return cr_fail(err, CR_EIO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX) {
        close(fd);
        return cr_fail(err, CR_ERANGE, "%s: file too large for this machine", path);
    }
    map->size = (size_t)st.st_size;
    if (map->size == 0) {
        close(fd);
        map->data = (const unsigned char *)"";
        return CR_OK;
    }
    void *p = mmap(NULL, map->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return cr_fail(err, CR_EIO, "%s: cannot map: %s", path, strerror(errno));
    map->data = p;
    map->mapped = 1;
    return CR_OK;
}

static void cr_map_close(cr_map *map) {
    if (map->mapped) munmap((void *)map->data, map->size);
    memset(map, 0, sizeof *map);
}

/* Reads a whole (small) file into a NUL-terminated heap buffer. */
static int cr_read_file(const char *path, char **out, size_t *len, cr_err *err) {
    cr_map m;
    int rc = cr_map_open(&m, path, err);
    if (rc) return rc;
    char *buf = malloc(m.size + 1);
    if (!buf) {
        size_t size = m.size;
        cr_map_close(&m);
        return cr_fail(err, CR_ENOMEM, "%s: out of memory reading %zu bytes", path, size);
    }
    memcpy(buf, m.data, m.size);
    buf[m.size] = 0;
    *out = buf;
    if (len) *len = m.size;
    cr_map_close(&m);
    return CR_OK;
}

/* Writes to "path.tmp.PID" and renames, so a crash never leaves a half-written result. */
typedef struct cr_outfile {
    FILE *f;
    char *final_path, *tmp_path;
} cr_outfile;

static int cr_outfile_open(cr_outfile *o, const char *path, cr_err *err) {
    memset(o, 0, sizeof *o);
    size_t n = strlen(path) + 32;
    o->final_path = cr_strndup(path, strlen(path));
    o->tmp_path = malloc(n);
    if (!o->final_path || !o->tmp_path) {
        free(o->final_path);
        free(o->tmp_path);
        return cr_fail(err, CR_ENOMEM, "%s: out of memory", path);
    }
    snprintf(o->tmp_path, n, "%s.tmp.%ld", path, (long)getpid());
    o->f = fopen(o->tmp_path, "wb");
    if (!o->f) {
        int rc = cr_fail(err, CR_EIO, "%s: cannot create: %s", o->tmp_path, strerror(errno));
        free(o->final_path);
        free(o->tmp_path);
        return rc;
    }
    return CR_OK;
}

/* ok=0 abandons the file (removes the temporary). */
static int cr_outfile_close(cr_outfile *o, int ok, cr_err *err) {
    int rc = CR_OK;
    if (o->f) {
        if (ferror(o->f)) ok = 0, rc = cr_fail(err, CR_EIO, "%s: write error", o->final_path);
        /* On disk before the rename, so that even a power cut leaves the old file or the new. */
        if (ok && (fflush(o->f) != 0 || fsync(fileno(o->f)) != 0)) ok = 0, rc = cr_fail(err, CR_EIO, "%s: write error: %s", o->final_path, strerror(errno));
        if (fclose(o->f) != 0 && ok) ok = 0, rc = cr_fail(err, CR_EIO, "%s: write error: %s", o->final_path, strerror(errno));
    }
    if (ok) {
        if (rename(o->tmp_path, o->final_path) != 0)
            rc = cr_fail(err, CR_EIO, "%s: cannot rename into place: %s", o->final_path, strerror(errno));
    } else {
        remove(o->tmp_path);
    }
    free(o->final_path);
    free(o->tmp_path);
    memset(o, 0, sizeof *o);
    return rc;
}

/* IEEE half and bfloat16 conversions, exact, without relying on compiler extensions. */
static float cr_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalize */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) man <<= 1, exp--;
            man &= 0x3ff;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Round to nearest even. */
static uint16_t cr_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 : 0));
    if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520: inf */
    if (absx < 0x38800000u) {                                  /* subnormal or zero in half */
        if (absx < 0x33000000u) return (uint16_t)sign;
        uint32_t man = (absx & 0x7fffff) | 0x800000;
        int shift = 126 - (int)(absx >> 23);                   /* 14..24 */
        uint32_t half = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = ((absx >> 13) - ((127 - 15) << 10));
    uint32_t rem = absx & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

static float cr_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* A double from a file as a float: out-of-range values saturate instead of being undefined. */
static float cr_to_float(double v) {
    if (v != v) return NAN;
    return v > FLT_MAX ? INFINITY : v < -FLT_MAX ? -INFINITY : (float)v;
}

static uint16_t cr_rd16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t cr_rd32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t cr_rd64(const unsigned char *p) { return cr_rd32(p) | ((uint64_t)cr_rd32(p + 4) << 32); }

/* Threads to use: n when positive, else every available core. */
static int cr_threads(int n) {
#ifdef _OPENMP
    return n > 0 ? n : omp_get_max_threads();
#else
    (void)n;
    return 1;
#endif
}

static double cr_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* splitmix64: a small, seedable generator with no global state. */
static uint64_t cr_rng_next(uint64_t *st) {
    uint64_t z = (*st += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Valid UTF-8 check; returns the offset of the first bad byte, or len when all is valid. */
static size_t cr_utf8_check(const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t n;
        uint32_t cp;
        if (c < 0x80) { i++; continue; }
        else if ((c & 0xe0) == 0xc0) n = 2, cp = c & 0x1f;
        else if ((c & 0xf0) == 0xe0) n = 3, cp = c & 0x0f;
        else if ((c & 0xf8) == 0xf0) n = 4, cp = c & 0x07;
        else return i;
        if (i + n > len) return i;
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return i;
        i += n;
    }
    return len;
}

/* A growable byte buffer for small binary files (checkpoints), written atomically in one go,
 * and a bounds-checked reader for them: every read past the end sets `bad` and yields zeros. */
typedef struct cr_bw { unsigned char *p; size_t n, cap; int failed; } cr_bw;

static void cr_bw_bytes(cr_bw *b, const void *src, size_t n) {
    if (b->failed || !n) return;
    if (n > SIZE_MAX / 2 - b->n) { b->failed = 1; return; }
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n) cap *= 2;
        unsigned char *np = realloc(b->p, cap);
        if (!np) { b->failed = 1; return; }
        b->p = np, b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void cr_bw_u32(cr_bw *b, uint32_t v) {
    unsigned char x[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16), (unsigned char)(v >> 24)};
    cr_bw_bytes(b, x, 4);
}
static void cr_bw_u64(cr_bw *b, uint64_t v) { cr_bw_u32(b, (uint32_t)v), cr_bw_u32(b, (uint32_t)(v >> 32)); }
static void cr_bw_f64(cr_bw *b, double v) { uint64_t x; memcpy(&x, &v, 8); cr_bw_u64(b, x); }
static void cr_bw_str(cr_bw *b, const char *s) { size_t n = s ? strlen(s) : 0; cr_bw_u32(b, (uint32_t)n), cr_bw_bytes(b, s, n); }

typedef struct cr_br { const unsigned char *p; size_t pos, size; int bad; } cr_br;

static const unsigned char *cr_br_take(cr_br *r, uint64_t n) {
    if (r->bad || n > r->size - r->pos) { r->bad = 1; return NULL; }
    const unsigned char *q = r->p + r->pos;
    r->pos += (size_t)n;
    return q;
}
static uint32_t cr_br_u32(cr_br *r) { const unsigned char *q = cr_br_take(r, 4); return q ? cr_rd32(q) : 0; }
static uint64_t cr_br_u64(cr_br *r) { const unsigned char *q = cr_br_take(r, 8); return q ? cr_rd64(q) : 0; }
static double cr_br_f64(cr_br *r) { uint64_t x = cr_br_u64(r); double v; memcpy(&v, &x, 8); return v; }
/* A u32 that must not exceed max (a count the reader is about to allocate for). */
static uint32_t cr_br_count(cr_br *r, uint32_t max) { uint32_t v = cr_br_u32(r); if (v > max) r->bad = 1; return r->bad ? 0 : v; }
static char *cr_br_str(cr_br *r) {
    uint32_t n = cr_br_count(r, 1u << 16);
    const unsigned char *q = cr_br_take(r, n);
    return q ? cr_strndup((const char *)q, n) : NULL;
}

/* 64-bit FNV-1a, for checksums of small files. */
static uint64_t cr_fnv64(const void *p, size_t n, uint64_t h) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* Appends the FNV-1a checksum of the buffer, writes it to path atomically and frees it. */
static int cr_bw_commit(cr_bw *b, const char *path, cr_err *err) {
    cr_bw_u64(b, cr_fnv64(b->p, b->n, 0xcbf29ce484222325ull));
    int rc;
    cr_outfile o;
    if (b->failed) rc = cr_fail(err, CR_ENOMEM, "%s: out of memory", path);
    else if (!(rc = cr_outfile_open(&o, path, err))) {
        int ok = fwrite(b->p, 1, b->n, o.f) == b->n;
        rc = cr_outfile_close(&o, ok, err);
        if (!ok && !rc) rc = cr_fail(err, CR_EIO, "%s: write error", path);
    }
    free(b->p);
    memset(b, 0, sizeof *b);
    return rc;
}

/* A fast 64-bit content hash for large data (model files): four independent multiply-mix
 * lanes over 8-byte words, so it runs at memory speed.  An identity check, not cryptography. */
static uint64_t cr_hash64(const void *p, size_t n, uint64_t seed) {
    const unsigned char *b = p;
    const uint64_t K = 0x9fb21c651e98df25ull;
    uint64_t h[4] = {seed ^ 0x243f6a8885a308d3ull, seed ^ 0x13198a2e03707344ull, seed ^ 0xa4093822299f31d0ull, seed ^ 0x082efa98ec4e6c89ull};
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++) {
            uint64_t w = cr_rd64(b + i + 8 * (size_t)k);
            h[k] = (h[k] ^ w) * K;
            h[k] ^= h[k] >> 29;
        }
    uint64_t out = cr_fnv64(b + i, n - i, (uint64_t)n * K);
    for (int k = 0; k < 4; k++) out = (out ^ h[k]) * K, out ^= out >> 32;
    return out;
}

/* ============================================================================================
 * 2. JSON
 *
 * A DOM parser: all nodes live in one array, children are linked by index.  Strings are
 * unescaped into one arena.  Depth and sizes are bounded, so hostile input cannot exhaust the
 * stack or memory beyond a small multiple of its own size.
 * ============================================================================================ */

enum { JS_NULL, JS_FALSE, JS_TRUE, JS_NUM, JS_STR, JS_ARR, JS_OBJ };

typedef struct js_node {
    int type;
    int32_t first_child, next;  /* -1 terminated; for objects, children alternate key, value */
    int32_t count;              /* arrays: elements; objects: pairs */
    double num;
    uint32_t str, len;          /* offset into arena, byte length */
} js_node;

typedef struct js_doc {
    js_node *nodes;
    int32_t n_nodes, cap_nodes;
    char *arena;
    size_t arena_len, arena_cap;
} js_doc;

typedef struct js_parser {
    const char *s;
    size_t i, n;
    js_doc *doc;
    cr_err *err;
    const char *what;
} js_parser;

static int js_error(js_parser *p, const char *msg) {
    size_t line = 1;
    for (size_t k = 0; k < p->i && k < p->n; k++) line += p->s[k] == '\n';
    return cr_fail(p->err, CR_EFORMAT, "%s: malformed JSON at line %zu (byte %zu): %s", p->what, line, p->i, msg);
}

static void js_skip_ws(js_parser *p) {
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r')) p->i++;
}

static int32_t js_new_node(js_parser *p, int type) {
    js_doc *d = p->doc;
    if (d->n_nodes == d->cap_nodes) {
        int32_t cap = d->cap_nodes ? d->cap_nodes * 2 : 256;
        if (cap < d->cap_nodes || cap > (1 << 28)) return -1;
        js_node *nn = realloc(d->nodes, (size_t)cap * sizeof *nn);
        if (!nn) return -1;
        d->nodes = nn;
        d->cap_nodes = cap;
    }
    js_node *nd = &d->nodes[d->n_nodes];
    memset(nd, 0, sizeof *nd);
    nd->type = type;
    nd->first_child = nd->next = -1;
    return d->n_nodes++;
}

static int js_arena_put(js_doc *d, const char *src, size_t len) {
    if (d->arena_len + len + 1 > d->arena_cap) {
        size_t cap = d->arena_cap ? d->arena_cap : 4096;
        while (cap < d->arena_len + len + 1) cap *= 2;
        char *na = realloc(d->arena, cap);
        if (!na) return 0;
        d->arena = na;
        d->arena_cap = cap;
    }
    memcpy(d->arena + d->arena_len, src, len);
    d->arena_len += len;
    return 1;
}

static int js_hex4(js_parser *p, uint32_t *out) {
    if (p->i + 4 > p->n) return 0;
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p->s[p->i + k];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return 0;
    }
    p->i += 4;
    *out = v;
    return 1;
}

static int js_utf8_put(js_doc *d, uint32_t cp) {
    char b[4];
    size_t n;
    if (cp < 0x80) b[0] = (char)cp, n = 1;
    else if (cp < 0x800) b[0] = (char)(0xc0 | (cp >> 6)), b[1] = (char)(0x80 | (cp & 0x3f)), n = 2;
    else if (cp < 0x10000) b[0] = (char)(0xe0 | (cp >> 12)), b[1] = (char)(0x80 | ((cp >> 6) & 0x3f)), b[2] = (char)(0x80 | (cp & 0x3f)), n = 3;
    else b[0] = (char)(0xf0 | (cp >> 18)), b[1] = (char)(0x80 | ((cp >> 12) & 0x3f)), b[2] = (char)(0x80 | ((cp >> 6) & 0x3f)), b[3] = (char)(0x80 | (cp & 0x3f)), n = 4;
    return js_arena_put(d, b, n);
}

static int js_parse_string(js_parser *p, int32_t node) {
    js_doc *d = p->doc;
    p->i++; /* opening quote */
    size_t start = d->arena_len;
    if (start > UINT32_MAX - 1) return js_error(p, "document too large");
    for (;;) {
        size_t run = p->i;
        while (p->i < p->n && p->s[p->i] != '"' && p->s[p->i] != '\\' && (unsigned char)p->s[p->i] >= 0x20) p->i++;
        if (p->i > run && !js_arena_put(d, p->s + run, p->i - run)) return cr_fail(p->err, CR_ENOMEM, "%s: out of memory", p->what);
        if (p->i >= p->n) return js_error(p, "unterminated string");
        char c = p->s[p->i];
        if (c == '"') { p->i++; break; }
        if ((unsigned char)c < 0x20) return js_error(p, "control character in string");
        p->i++; /* backslash */
        if (p->i >= p->n) return js_error(p, "unterminated escape");
        c = p->s[p->i++];
        char out;
        switch (c) {
        case '"': out = '"'; break;
        case '\\': out = '\\'; break;
        case '/': out = '/'; break;
        case 'b': out = '\b'; break;
        case 'f': out = '\f'; break;
        case 'n': out = '\n'; break;
        case 'r': out = '\r'; break;
        case 't': out = '\t'; break;
        case 'u': {
            uint32_t cp;
            if (!js_hex4(p, &cp)) return js_error(p, "bad \\u escape");
            if (cp >= 0xd800 && cp <= 0xdbff) {
                uint32_t lo;
                if (p->i + 2 <= p->n && p->s[p->i] == '\\' && p->s[p->i + 1] == 'u') {
                    p->i += 2;
                    if (!js_hex4(p, &lo) || lo < 0xdc00 || lo > 0xdfff) return js_error(p, "bad surrogate pair");
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                } else {
                    return js_error(p, "lone surrogate");
                }
            } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                return js_error(p, "lone surrogate");
            }
            if (!js_utf8_put(d, cp)) return cr_fail(p->err, CR_ENOMEM, "%s: out of memory", p->what);
            continue;
        }
        default: return js_error(p, "bad escape");
        }
        if (!js_arena_put(d, &out, 1)) return cr_fail(p->err, CR_ENOMEM, "%s: out of memory", p->what);
    }
    if (d->arena_len - start > CR_MAX_STRING) return js_error(p, "string too long");
    if (!js_arena_put(d, "", 1)) return cr_fail(p->err, CR_ENOMEM, "%s: out of memory", p->what);
    d->nodes[node].str = (uint32_t)start;
    d->nodes[node].len = (uint32_t)(d->arena_len - 1 - start);
    return CR_OK;
}

static int js_parse_value(js_parser *p, int depth, int32_t *out);

static int js_parse_number(js_parser *p, int32_t node) {
    size_t st = p->i;
    if (p->i < p->n && p->s[p->i] == '-') p->i++;
    if (p->i >= p->n || !(p->s[p->i] >= '0' && p->s[p->i] <= '9')) return js_error(p, "bad number");
    while (p->i < p->n && ((p->s[p->i] >= '0' && p->s[p->i] <= '9') || p->s[p->i] == '.' || p->s[p->i] == 'e' ||
                           p->s[p->i] == 'E' || p->s[p->i] == '+' || p->s[p->i] == '-'))
        p->i++;
    char tmp[64];
    size_t len = p->i - st;
    if (len >= sizeof tmp) return js_error(p, "number too long");
    memcpy(tmp, p->s + st, len);
    tmp[len] = 0;
    char *end;
    double v = strtod(tmp, &end);
    if (*end) return js_error(p, "bad number");
    p->doc->nodes[node].num = v;
    return CR_OK;
}

static int js_parse_container(js_parser *p, int depth, int32_t node, int is_obj) {
    char close = is_obj ? '}' : ']';
    p->i++;
    js_skip_ws(p);
    int32_t last = -1, count = 0;
    if (p->i < p->n && p->s[p->i] == close) { p->i++; return CR_OK; }
    for (;;) {
        int32_t key = -1, val;
        int rc;
        js_skip_ws(p);
        if (is_obj) {
            if (p->i >= p->n || p->s[p->i] != '"') return js_error(p, "expected a string key");
            key = js_new_node(p, JS_STR);
            if (key < 0) return cr_fail(p->err, CR_ENOMEM, "%s: too many JSON nodes", p->what);
            if ((rc = js_parse_string(p, key))) return rc;
            js_skip_ws(p);
            if (p->i >= p->n || p->s[p->i] != ':') return js_error(p, "expected ':'");
            p->i++;
        }
        if ((rc = js_parse_value(p, depth + 1, &val))) return rc;
        js_node *nodes = p->doc->nodes;
        int32_t head = is_obj ? key : val;
        if (is_obj) nodes[key].next = val;
        if (last < 0) nodes[node].first_child = head;
        else nodes[last].next = head;
        last = val;
        if (count == INT32_MAX) return js_error(p, "too many elements");
        count++;
        js_skip_ws(p);
        if (p->i < p->n && p->s[p->i] == ',') { p->i++; continue; }
        if (p->i < p->n && p->s[p->i] == close) { p->i++; break; }
        return js_error(p, is_obj ? "expected ',' or '}'" : "expected ',' or ']'");
    }
    p->doc->nodes[node].count = count;
    return CR_OK;
}

static int js_parse_value(js_parser *p, int depth, int32_t *out) {
    if (depth > CR_MAX_JSON_DEPTH) return js_error(p, "nesting too deep");
    js_skip_ws(p);
    if (p->i >= p->n) return js_error(p, "unexpected end of input");
    char c = p->s[p->i];
    int type = c == '{' ? JS_OBJ : c == '[' ? JS_ARR : c == '"' ? JS_STR : (c == '-' || (c >= '0' && c <= '9')) ? JS_NUM
             : c == 't' ? JS_TRUE : c == 'f' ? JS_FALSE : c == 'n' ? JS_NULL : -1;
    if (type < 0) return js_error(p, "unexpected character");
    int32_t node = js_new_node(p, type);
    if (node < 0) return cr_fail(p->err, CR_ENOMEM, "%s: too many JSON nodes", p->what);
    *out = node;
    switch (type) {
    case JS_OBJ: return js_parse_container(p, depth, node, 1);
    case JS_ARR: return js_parse_container(p, depth, node, 0);
    case JS_STR: return js_parse_string(p, node);
    case JS_NUM: return js_parse_number(p, node);
    default: {
        const char *word = type == JS_TRUE ? "true" : type == JS_FALSE ? "false" : "null";
        size_t wl = strlen(word);
        if (p->i + wl > p->n || memcmp(p->s + p->i, word, wl) != 0) return js_error(p, "unknown literal");
        p->i += wl;
        return CR_OK;
    }
    }
}

static void js_free(js_doc *d) {
    free(d->nodes);
    free(d->arena);
    memset(d, 0, sizeof *d);
}

/* what: the file name, for messages.  The root is node 0. */
static int js_parse(js_doc *d, const char *s, size_t n, const char *what, cr_err *err) {
    memset(d, 0, sizeof *d);
    js_parser p = {s, 0, n, d, err, what};
    int32_t root;
    int rc = js_parse_value(&p, 0, &root);
    if (!rc) {
        js_skip_ws(&p);
        if (p.i != p.n) rc = js_error(&p, "trailing characters after the document");
    }
    if (rc) js_free(d);
    return rc;
}

static const js_node *js_at(const js_doc *d, int32_t i) { return i >= 0 ? &d->nodes[i] : NULL; }
static const char *js_str(const js_doc *d, const js_node *n) { return n && n->type == JS_STR ? d->arena + n->str : NULL; }

static const js_node *js_get(const js_doc *d, const js_node *obj, const char *key) {
    if (!obj || obj->type != JS_OBJ) return NULL;
    size_t kl = strlen(key);
    for (int32_t k = obj->first_child; k >= 0;) {
        const js_node *kn = &d->nodes[k];
        if (kn->len == kl && memcmp(d->arena + kn->str, key, kl) == 0) return js_at(d, kn->next);
        k = d->nodes[kn->next].next;
    }
    return NULL;
}

/* Numeric member as int, with a default when absent or null; -2 range check by caller. */
static int js_get_num(const js_doc *d, const js_node *obj, const char *key, double *out) {
    const js_node *n = js_get(d, obj, key);
    if (!n || n->type != JS_NUM) return 0;
    *out = n->num;
    return 1;
}

static int js_get_bool(const js_doc *d, const js_node *obj, const char *key, int dflt) {
    const js_node *n = js_get(d, obj, key);
    if (!n) return dflt;
    if (n->type == JS_TRUE) return 1;
    if (n->type == JS_FALSE) return 0;
    return dflt;
}

/* Whether any string inside the subtree contains needle (exact=1: equals it). */
static int js_subtree_has(const js_doc *d, const js_node *n, const char *needle, int exact) {
    if (!n) return 0;
    if (n->type == JS_STR) return exact ? strcmp(d->arena + n->str, needle) == 0 : strstr(d->arena + n->str, needle) != NULL;
    if (n->type != JS_ARR && n->type != JS_OBJ) return 0;
    for (int32_t k = n->first_child; k >= 0; k = d->nodes[k].next)
        if (js_subtree_has(d, &d->nodes[k], needle, exact)) return 1;
    return 0;
}

/* ============================================================================================
 * 3. File formats
 *
 * Every format is read into one table of raw tensors (name, dtype, shape in PyTorch order,
 * pointer into a mapped file).  The model builder (section 5) then finds tensors by their
 * canonical names, which are GGUF's ("blk.3.attn_q.weight"); Hugging Face names are
 * translated on the way in.  Nothing is trusted: every offset and size is checked against the
 * file before it is used.
 * ============================================================================================ */

const char *cr_dtype_name(int dtype) {
    switch (dtype) {
    case CR_F32: return "F32";
    case CR_F16: return "F16";
    case CR_BF16: return "BF16";
    case CR_Q8_0: return "Q8_0";
    default: return "unsupported";
    }
}

#define CR_QK 32                 /* Q8_0 block: 32 int8 values and one fp16 scale */
#define CR_Q8_BLOCK_BYTES 34

/* Bytes of a row of `cols` elements, or 0 when the dtype cannot hold such a row. */
static uint64_t cr_row_bytes(int dtype, uint64_t cols) {
    switch (dtype) {
    case CR_F32: return cols * 4;
    case CR_F16: case CR_BF16: return cols * 2;
    case CR_Q8_0: return cols % CR_QK ? 0 : cols / CR_QK * CR_Q8_BLOCK_BYTES;
    default: return 0;
    }
}

typedef struct cr_tinfo {
    char *name;                   /* canonical (GGUF-style) name */
    int dtype;                    /* cr_dtype, or -1 for a dtype confreg does not read */
    int ndim;
    int64_t shape[CR_MAX_DIMS];   /* PyTorch order: shape[0] is the slowest dimension */
    const unsigned char *data;
    uint64_t nbytes;
    int transposed;               /* stored as [in, out] (GPT-2 Conv1D) */
    int file;                     /* index of the file it lives in */
} cr_tinfo;

typedef struct cr_ttable {
    cr_tinfo *t;
    int n, cap;
    cr_map *maps;
    char **map_paths;
    int n_maps;
} cr_ttable;

static void cr_ttable_free(cr_ttable *tt) {
    for (int i = 0; i < tt->n; i++) free(tt->t[i].name);
    free(tt->t);
    for (int i = 0; i < tt->n_maps; i++) cr_map_close(&tt->maps[i]), free(tt->map_paths[i]);
    free(tt->maps);
    free(tt->map_paths);
    memset(tt, 0, sizeof *tt);
}

static int cr_ttable_add_map(cr_ttable *tt, const char *path, cr_err *err) {
    cr_map *nm = realloc(tt->maps, (size_t)(tt->n_maps + 1) * sizeof *nm);
    if (!nm) return cr_fail(err, CR_ENOMEM, "out of memory");
    tt->maps = nm;
    char **np = realloc(tt->map_paths, (size_t)(tt->n_maps + 1) * sizeof *np);
    if (!np) return cr_fail(err, CR_ENOMEM, "out of memory");
    tt->map_paths = np;
    int rc = cr_map_open(&tt->maps[tt->n_maps], path, err);
    if (rc) return rc;
    tt->map_paths[tt->n_maps] = cr_strndup(path, strlen(path));
    tt->n_maps++;
    return CR_OK;
}

static cr_tinfo *cr_ttable_push(cr_ttable *tt, const char *name, size_t name_len, cr_err *err) {
    if (tt->n >= CR_MAX_TENSORS) { cr_fail(err, CR_ERANGE, "more than %d tensors", CR_MAX_TENSORS); return NULL; }
    if (tt->n == tt->cap) {
        int cap = tt->cap ? tt->cap * 2 : 64;
        cr_tinfo *nt = realloc(tt->t, (size_t)cap * sizeof *nt);
        if (!nt) { cr_fail(err, CR_ENOMEM, "out of memory"); return NULL; }
        tt->t = nt;
        tt->cap = cap;
    }
    cr_tinfo *t = &tt->t[tt->n];
    memset(t, 0, sizeof *t);
    t->name = cr_strndup(name, name_len);
    if (!t->name) { cr_fail(err, CR_ENOMEM, "out of memory"); return NULL; }
    tt->n++;
    return t;
}

static const cr_tinfo *cr_ttable_find(const cr_ttable *tt, const char *name) {
    for (int i = 0; i < tt->n; i++)
        if (strcmp(tt->t[i].name, name) == 0) return &tt->t[i];
    return NULL;
}

/* Checks that tensors of one file do not overlap (a lying header could alias them). */
static int cr_tinfo_cmp_data(const void *a, const void *b) {
    const cr_tinfo *x = *(const cr_tinfo *const *)a, *y = *(const cr_tinfo *const *)b;
    return x->data < y->data ? -1 : x->data > y->data;
}

static int cr_ttable_check_overlap(cr_ttable *tt, int first, const char *path, cr_err *err) {
    int n = tt->n - first;
    if (n <= 1) return CR_OK;
    const cr_tinfo **v = cr_malloc((size_t)n, sizeof *v);
    if (!v) return cr_fail(err, CR_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) v[i] = &tt->t[first + i];
    qsort(v, (size_t)n, sizeof *v, cr_tinfo_cmp_data);
    int rc = CR_OK;
    for (int i = 1; i < n; i++)
        if (v[i - 1]->nbytes && v[i - 1]->data + v[i - 1]->nbytes > v[i]->data) {
            rc = cr_fail(err, CR_EFORMAT, "%s: tensors '%s' and '%s' overlap", path, v[i - 1]->name, v[i]->name);
            break;
        }
    free(v);
    return rc;
}

/* ---- safetensors ---------------------------------------------------------------------------
 * 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then
 * the data; offsets are relative to the end of the header. */

static int cr_st_dtype(const char *s, int *elsize) {
    if (!strcmp(s, "F32")) return *elsize = 4, CR_F32;
    if (!strcmp(s, "F16")) return *elsize = 2, CR_F16;
    if (!strcmp(s, "BF16")) return *elsize = 2, CR_BF16;
    if (!strcmp(s, "F64") || !strcmp(s, "I64") || !strcmp(s, "U64")) return *elsize = 8, -1;
    if (!strcmp(s, "I32") || !strcmp(s, "U32")) return *elsize = 4, -1;
    if (!strcmp(s, "I16") || !strcmp(s, "U16")) return *elsize = 2, -1;
    if (!strcmp(s, "I8") || !strcmp(s, "U8") || !strcmp(s, "BOOL") || !strncmp(s, "F8", 2)) return *elsize = 1, -1;
    return *elsize = 0, -2;
}

static int cr_safetensors_load(cr_ttable *tt, const char *path, cr_err *err) {
    int rc = cr_ttable_add_map(tt, path, err);
    if (rc) return rc;
    int file = tt->n_maps - 1;
    const cr_map *m = &tt->maps[file];
    if (m->size < 8) return cr_fail(err, CR_EFORMAT, "%s: truncated safetensors file (%zu bytes, no header)", path, m->size);
    uint64_t hlen = cr_rd64(m->data);
    if (hlen > m->size - 8) return cr_fail(err, CR_EFORMAT, "%s: header length %llu runs past the end of the file (%zu bytes)", path, (unsigned long long)hlen, m->size);
    if (hlen > (100u << 20)) return cr_fail(err, CR_ERANGE, "%s: header length %llu exceeds the 100 MiB limit", path, (unsigned long long)hlen);
    js_doc doc;
    if ((rc = js_parse(&doc, (const char *)m->data + 8, (size_t)hlen, path, err))) return rc;
    const js_node *root = js_at(&doc, 0);
    const unsigned char *base = m->data + 8 + hlen;
    uint64_t avail = m->size - 8 - hlen;
    int first = tt->n;
    if (root->type != JS_OBJ) { rc = cr_fail(err, CR_EFORMAT, "%s: header is not a JSON object", path); goto done; }
    for (int32_t k = root->first_child; k >= 0; k = doc.nodes[doc.nodes[k].next].next) {
        const js_node *kn = &doc.nodes[k], *v = &doc.nodes[kn->next];
        const char *name = doc.arena + kn->str;
        if (!strcmp(name, "__metadata__")) continue;
        if (kn->len > CR_MAX_NAME) { rc = cr_fail(err, CR_EFORMAT, "%s: tensor name longer than %d bytes", path, CR_MAX_NAME); goto done; }
        const char *dts = js_str(&doc, js_get(&doc, v, "dtype"));
        const js_node *shape = js_get(&doc, v, "shape"), *offs = js_get(&doc, v, "data_offsets");
        if (!dts || !shape || shape->type != JS_ARR || !offs || offs->type != JS_ARR || offs->count != 2) {
            rc = cr_fail(err, CR_EFORMAT, "%s: tensor '%s' lacks dtype, shape or data_offsets", path, name);
            goto done;
        }
        int elsize, dtype = cr_st_dtype(dts, &elsize);
        if (dtype == -2) { rc = cr_fail(err, CR_EFORMAT, "%s: tensor '%s' has unknown dtype '%s'", path, name, dts); goto done; }
        if (shape->count > CR_MAX_DIMS) { rc = cr_fail(err, CR_EUNSUPPORTED, "%s: tensor '%s' has %d dimensions (max %d)", path, name, shape->count, CR_MAX_DIMS); goto done; }
        cr_tinfo *t = cr_ttable_push(tt, name, kn->len, err);
        if (!t) { rc = CR_ENOMEM; goto done; }
        t->dtype = dtype;
        t->file = file;
        t->ndim = shape->count;
        uint64_t numel = 1;
        int d = 0;
        for (int32_t c = shape->first_child; c >= 0; c = doc.nodes[c].next, d++) {
            const js_node *cn = &doc.nodes[c];
            if (cn->type != JS_NUM || cn->num < 0 || cn->num > 4e12 || cn->num != floor(cn->num)) {
                rc = cr_fail(err, CR_EFORMAT, "%s: tensor '%s' has an invalid shape", path, name);
                goto done;
            }
            t->shape[d] = (int64_t)cn->num;
            if (!cr_mul_ok(numel, (uint64_t)t->shape[d], &numel)) { rc = cr_fail(err, CR_EFORMAT, "%s: tensor '%s' shape overflows", path, name); goto done; }
        }
        const js_node *b = js_at(&doc, offs->first_child), *e = js_at(&doc, b->next);
        if (b->type != JS_NUM || e->type != JS_NUM || b->num < 0 || e->num < b->num || e->num > 1.8e19 ||
            b->num != floor(b->num) || e->num != floor(e->num)) {
            rc = cr_fail(err, CR_EFORMAT, "%s: tensor '%s' has invalid data_offsets", path, name);
            goto done;
        }
        uint64_t ob = (uint64_t)b->num, oe = (uint64_t)e->num, want = 0;
        if (oe > avail) { rc = cr_fail(err, CR_EFORMAT, "%s: tensor '%s' data [%llu, %llu) runs past the end of the file (%llu data bytes)", path, name, (unsigned long long)ob, (unsigned long long)oe, (unsigned long long)avail); goto done; }
        if (!cr_mul_ok(numel, (uint64_t)elsize, &want) || want != oe - ob) {
            rc = cr_fail(err, CR_EFORMAT, "%s: tensor '%s' holds %llu bytes but its shape and dtype need %llu", path, name, (unsigned long long)(oe - ob), (unsigned long long)want);
            goto done;
        }
        t->data = base + ob;
        t->nbytes = oe - ob;
    }
    rc = cr_ttable_check_overlap(tt, first, path, err);
done:
    js_free(&doc);
    return rc;
}

/* A sharded checkpoint: model.safetensors.index.json maps tensor names to shard files. */
static int cr_safetensors_load_index(cr_ttable *tt, const char *dir, const char *index_path, cr_err *err) {
    char *buf;
    size_t len;
    int rc = cr_read_file(index_path, &buf, &len, err);
    if (rc) return rc;
    js_doc doc;
    rc = js_parse(&doc, buf, len, index_path, err);
    free(buf);
    if (rc) return rc;
    const js_node *wm = js_get(&doc, js_at(&doc, 0), "weight_map");
    if (!wm || wm->type != JS_OBJ) {
        js_free(&doc);
        return cr_fail(err, CR_EFORMAT, "%s: no \"weight_map\" object", index_path);
    }
    /* Load each distinct shard once, in the order first seen. */
    const char **seen = cr_calloc((size_t)wm->count + 1, sizeof *seen);
    int n_seen = 0;
    if (!seen) { js_free(&doc); return cr_fail(err, CR_ENOMEM, "out of memory"); }
    for (int32_t k = wm->first_child; k >= 0 && !rc; k = doc.nodes[doc.nodes[k].next].next) {
        const char *file = js_str(&doc, js_at(&doc, doc.nodes[k].next));
        if (!file) { rc = cr_fail(err, CR_EFORMAT, "%s: weight_map values must be file names", index_path); break; }
        if (strchr(file, '/') || !strcmp(file, "..")) { rc = cr_fail(err, CR_EFORMAT, "%s: shard name '%s' is not a plain file name", index_path, file); break; }
        int dup = 0;
        for (int i = 0; i < n_seen; i++) dup |= !strcmp(seen[i], file);
        if (dup) continue;
        if (n_seen >= CR_MAX_SHARDS) { rc = cr_fail(err, CR_ERANGE, "%s: more than %d shards", index_path, CR_MAX_SHARDS); break; }
        seen[n_seen++] = file;
        char *p = cr_path_join(dir, file);
        if (!p) { rc = cr_fail(err, CR_ENOMEM, "out of memory"); break; }
        rc = cr_safetensors_load(tt, p, err);
        free(p);
    }
    free(seen);
    js_free(&doc);
    return rc;
}

/* ---- GGUF ------------------------------------------------------------------------------------
 * "GGUF", version, tensor count, metadata count, metadata (key, type, value), tensor infos
 * (name, dims (fastest first), type, offset), padding to general.alignment, data. */

enum { GG_U8, GG_I8, GG_U16, GG_I16, GG_U32, GG_I32, GG_F32, GG_BOOL, GG_STR, GG_ARR, GG_U64, GG_I64, GG_F64, GG_NTYPES };
enum { GGML_F32 = 0, GGML_F16 = 1, GGML_Q8_0 = 8, GGML_BF16 = 30 };

typedef struct cr_gguf_kv {
    const char *key;              /* points into the map; not NUL-terminated */
    uint64_t key_len;
    int type;
    int arr_type;                 /* for arrays */
    uint64_t count;               /* for arrays */
    const unsigned char *val;     /* start of the value (for arrays: of the elements) */
} cr_gguf_kv;

typedef struct cr_gguf {
    const unsigned char *data;
    size_t size;
    const char *path;
    uint32_t version;
    cr_gguf_kv *kv;
    uint64_t n_kv, n_tensors;
    uint64_t alignment;
} cr_gguf;

static const int cr_gg_size[GG_NTYPES] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

typedef struct cr_rd { const unsigned char *p; size_t pos, size; } cr_rd;

static int cr_rd_need(cr_rd *r, uint64_t n) { return n <= r->size - r->pos; }

/* Reads a GGUF string (u64 length + bytes) without copying. */
static int cr_gg_str(cr_rd *r, const char **s, uint64_t *len) {
    if (!cr_rd_need(r, 8)) return 0;
    uint64_t l = cr_rd64(r->p + r->pos);
    if (l > CR_MAX_STRING || !cr_rd_need(r, 8 + l)) return 0;
    *s = (const char *)r->p + r->pos + 8;
    *len = l;
    r->pos += 8 + l;
    return 1;
}

/* Skips one value of `type`; arrays are checked element by element for strings. */
static int cr_gg_skip(cr_rd *r, int type, int depth) {
    if (type < 0 || type >= GG_NTYPES) return 0;
    if (type == GG_STR) { const char *s; uint64_t l; return cr_gg_str(r, &s, &l); }
    if (type == GG_ARR) {
        if (depth > 2 || !cr_rd_need(r, 12)) return 0;
        uint32_t at = cr_rd32(r->p + r->pos);
        uint64_t n = cr_rd64(r->p + r->pos + 4);
        r->pos += 12;
        if (at >= GG_NTYPES || n > CR_MAX_ARRAY) return 0;
        if (at != GG_STR && at != GG_ARR) {
            uint64_t b;
            if (!cr_mul_ok(n, (uint64_t)cr_gg_size[at], &b) || !cr_rd_need(r, b)) return 0;
            r->pos += b;
            return 1;
        }
        for (uint64_t i = 0; i < n; i++)
            if (!cr_gg_skip(r, (int)at, depth + 1)) return 0;
        return 1;
    }
    if (!cr_rd_need(r, (uint64_t)cr_gg_size[type])) return 0;
    r->pos += (size_t)cr_gg_size[type];
    return 1;
}

static const cr_gguf_kv *cr_gguf_find(const cr_gguf *g, const char *key) {
    size_t kl = strlen(key);
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key_len == kl && memcmp(g->kv[i].key, key, kl) == 0) return &g->kv[i];
    return NULL;
}

/* Scalar metadata as double (any numeric or bool type); 0 when absent or not numeric. */
static int cr_gguf_num(const cr_gguf *g, const char *key, double *out) {
    const cr_gguf_kv *kv = cr_gguf_find(g, key);
    if (!kv) return 0;
    const unsigned char *v = kv->val;
    switch (kv->type) {
    case GG_U8: *out = v[0]; return 1;
    case GG_I8: *out = (int8_t)v[0]; return 1;
    case GG_BOOL: *out = v[0] != 0; return 1;
    case GG_U16: *out = cr_rd16(v); return 1;
    case GG_I16: *out = (int16_t)cr_rd16(v); return 1;
    case GG_U32: *out = cr_rd32(v); return 1;
    case GG_I32: *out = (int32_t)cr_rd32(v); return 1;
    case GG_U64: *out = (double)cr_rd64(v); return 1;
    case GG_I64: *out = (double)(int64_t)cr_rd64(v); return 1;
    case GG_F32: { uint32_t b = cr_rd32(v); float f; memcpy(&f, &b, 4); *out = f; return 1; }
    case GG_F64: { uint64_t b = cr_rd64(v); double f; memcpy(&f, &b, 8); *out = f; return 1; }
    default: return 0;
    }
}

/* String metadata copied into buf (truncated to cap-1); 0 when absent. */
static int cr_gguf_strval(const cr_gguf *g, const char *key, char *buf, size_t cap) {
    const cr_gguf_kv *kv = cr_gguf_find(g, key);
    if (!kv || kv->type != GG_STR) return 0;
    uint64_t l = cr_rd64(kv->val);
    size_t n = l < cap - 1 ? (size_t)l : cap - 1;
    memcpy(buf, kv->val + 8, n);
    buf[n] = 0;
    return 1;
}

static int cr_gguf_parse(cr_gguf *g, cr_ttable *tt, int file, const char *path, cr_err *err) {
    const cr_map *m = &tt->maps[file];
    memset(g, 0, sizeof *g);
    g->data = m->data;
    g->size = m->size;
    g->path = path;
    cr_rd r = {m->data, 0, m->size};
    if (m->size < 24 || memcmp(m->data, "GGUF", 4) != 0)
        return cr_fail(err, CR_EFORMAT, "%s: not a GGUF file (bad magic or shorter than a header)", path);
    g->version = cr_rd32(m->data + 4);
    if (g->version != 2 && g->version != 3) return cr_fail(err, CR_EUNSUPPORTED, "%s: GGUF version %u is not supported (2 or 3)", path, g->version);
    g->n_tensors = cr_rd64(m->data + 8);
    g->n_kv = cr_rd64(m->data + 16);
    r.pos = 24;
    if (g->n_tensors > CR_MAX_TENSORS) return cr_fail(err, CR_ERANGE, "%s: claims %llu tensors (limit %d)", path, (unsigned long long)g->n_tensors, CR_MAX_TENSORS);
    if (g->n_kv > CR_MAX_KV) return cr_fail(err, CR_ERANGE, "%s: claims %llu metadata entries (limit %d)", path, (unsigned long long)g->n_kv, CR_MAX_KV);
    /* Each entry needs at least 12 bytes, so a count the file cannot hold is caught early. */
    if (g->n_kv * 12 > m->size || g->n_tensors * 24 > m->size)
        return cr_fail(err, CR_EFORMAT, "%s: claims %llu metadata entries and %llu tensors, more than its %zu bytes can hold", path, (unsigned long long)g->n_kv, (unsigned long long)g->n_tensors, m->size);
    g->kv = cr_calloc((size_t)g->n_kv, sizeof *g->kv);
    if (!g->kv) return cr_fail(err, CR_ENOMEM, "out of memory");
    g->alignment = 32;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        cr_gguf_kv *kv = &g->kv[i];
        if (!cr_gg_str(&r, &kv->key, &kv->key_len) || !cr_rd_need(&r, 4))
            return cr_fail(err, CR_EFORMAT, "%s: metadata entry %llu is truncated or has an impossible key length", path, (unsigned long long)i);
        kv->type = (int)cr_rd32(r.p + r.pos);
        r.pos += 4;
        if (kv->type < 0 || kv->type >= GG_NTYPES)
            return cr_fail(err, CR_EFORMAT, "%s: metadata '%.*s' has unknown type %d", path, (int)(kv->key_len > 200 ? 200 : kv->key_len), kv->key, kv->type);
        size_t at = r.pos;
        if (!cr_gg_skip(&r, kv->type, 0))
            return cr_fail(err, CR_EFORMAT, "%s: metadata '%.*s' is truncated or has an impossible length", path, (int)(kv->key_len > 200 ? 200 : kv->key_len), kv->key);
        if (kv->type == GG_ARR) {
            kv->arr_type = (int)cr_rd32(r.p + at);
            kv->count = cr_rd64(r.p + at + 4);
            kv->val = r.p + at + 12;
        } else {
            kv->val = r.p + at;
        }
    }
    double al;
    if (cr_gguf_num(g, "general.alignment", &al)) {
        if (al < 1 || al > 65536 || ((uint64_t)al & ((uint64_t)al - 1)))
            return cr_fail(err, CR_EFORMAT, "%s: general.alignment %g is not a power of two up to 65536", path, al);
        g->alignment = (uint64_t)al;
    }
    /* Tensor infos come first; the data section starts at the next aligned offset after them. */
    int first = tt->n;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const char *name;
        uint64_t nl;
        if (!cr_gg_str(&r, &name, &nl) || nl > CR_MAX_NAME || !cr_rd_need(&r, 4))
            return cr_fail(err, CR_EFORMAT, "%s: tensor info %llu is truncated or has an impossible name length", path, (unsigned long long)i);
        uint32_t nd = cr_rd32(r.p + r.pos);
        r.pos += 4;
        if (nd < 1 || nd > CR_MAX_DIMS || !cr_rd_need(&r, 8ull * nd + 12))
            return cr_fail(err, CR_EFORMAT, "%s: tensor '%.*s' has %u dimensions or is truncated", path, (int)nl, name, nd);
        cr_tinfo *t = cr_ttable_push(tt, name, (size_t)nl, err);
        if (!t) return CR_ENOMEM;
        t->file = file;
        t->ndim = (int)nd;
        uint64_t numel = 1;
        for (uint32_t d = 0; d < nd; d++) {
            uint64_t ne = cr_rd64(r.p + r.pos + 8 * d);
            if (ne > (1ull << 40) || !cr_mul_ok(numel, ne, &numel))
                return cr_fail(err, CR_EFORMAT, "%s: tensor '%s' has an absurd dimension %llu", path, t->name, (unsigned long long)ne);
            t->shape[nd - 1 - d] = (int64_t)ne; /* GGUF lists the fastest dimension first */
        }
        r.pos += 8ull * nd;
        uint32_t gt = cr_rd32(r.p + r.pos);
        uint64_t off = cr_rd64(r.p + r.pos + 4);
        r.pos += 12;
        t->dtype = gt == GGML_F32 ? CR_F32 : gt == GGML_F16 ? CR_F16 : gt == GGML_BF16 ? CR_BF16 : gt == GGML_Q8_0 ? CR_Q8_0 : -1;
        uint64_t rowb = t->dtype >= 0 ? cr_row_bytes(t->dtype, (uint64_t)t->shape[nd - 1]) : 0;
        if (t->dtype >= 0 && rowb == 0)
            return cr_fail(err, CR_EFORMAT, "%s: tensor '%s' is Q8_0 but its row length %lld is not a multiple of 32", path, t->name, (long long)t->shape[nd - 1]);
        if (t->dtype >= 0 && !cr_mul_ok(rowb, numel / (uint64_t)(t->shape[nd - 1] ? t->shape[nd - 1] : 1), &t->nbytes))
            return cr_fail(err, CR_EFORMAT, "%s: tensor '%s' size overflows", path, t->name);
        if (t->shape[nd - 1] == 0) t->nbytes = 0;
        /* Stash the relative offset; resolved below. */
        t->data = (const unsigned char *)(uintptr_t)off;
        if (off % g->alignment)
            return cr_fail(err, CR_EFORMAT, "%s: tensor '%s' offset %llu is not aligned to %llu", path, t->name, (unsigned long long)off, (unsigned long long)g->alignment);
    }
    uint64_t data_start = (r.pos + g->alignment - 1) / g->alignment * g->alignment;
    if (g->n_tensors && data_start > m->size)
        return cr_fail(err, CR_EFORMAT, "%s: data section starts past the end of the file", path);
    for (int i = first; i < tt->n; i++) {
        cr_tinfo *t = &tt->t[i];
        uint64_t off = (uint64_t)(uintptr_t)t->data;
        if (t->dtype < 0) { t->data = NULL; continue; } /* unknown types are fine until used */
        if (off > m->size - data_start || t->nbytes > m->size - data_start - off)
            return cr_fail(err, CR_EFORMAT, "%s: tensor '%s' data (offset %llu, %llu bytes) runs past the end of the file", path, t->name, (unsigned long long)off, (unsigned long long)t->nbytes);
        t->data = m->data + data_start + off;
    }
    return cr_ttable_check_overlap(tt, first, path, err);
}

static void cr_gguf_free(cr_gguf *g) {
    free(g->kv);
    memset(g, 0, sizeof *g);
}

/* ---- GGUF writer -------------------------------------------------------------------------- */

typedef struct cr_gw {
    FILE *f;
    uint64_t pos;
    int failed;
} cr_gw;

static void cr_gw_bytes(cr_gw *w, const void *p, size_t n) {
    if (n && fwrite(p, 1, n, w->f) != n) w->failed = 1;
    w->pos += n;
}
static void cr_gw_u32(cr_gw *w, uint32_t v) {
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16), (unsigned char)(v >> 24)};
    cr_gw_bytes(w, b, 4);
}
static void cr_gw_u64(cr_gw *w, uint64_t v) { cr_gw_u32(w, (uint32_t)v), cr_gw_u32(w, (uint32_t)(v >> 32)); }
static void cr_gw_f32(cr_gw *w, float f) { uint32_t b; memcpy(&b, &f, 4); cr_gw_u32(w, b); }
static void cr_gw_str(cr_gw *w, const char *s, size_t n) { cr_gw_u64(w, n), cr_gw_bytes(w, s, n); }
static void cr_gw_key(cr_gw *w, const char *key, int type) { cr_gw_str(w, key, strlen(key)), cr_gw_u32(w, (uint32_t)type); }
static void cr_gw_kv_u32(cr_gw *w, const char *key, uint32_t v) { cr_gw_key(w, key, GG_U32), cr_gw_u32(w, v); }
static void cr_gw_kv_f32(cr_gw *w, const char *key, float v) { cr_gw_key(w, key, GG_F32), cr_gw_f32(w, v); }
static void cr_gw_kv_bool(cr_gw *w, const char *key, int v) { unsigned char b = (unsigned char)(v != 0); cr_gw_key(w, key, GG_BOOL), cr_gw_bytes(w, &b, 1); }
static void cr_gw_kv_str(cr_gw *w, const char *key, const char *v) { cr_gw_key(w, key, GG_STR), cr_gw_str(w, v, strlen(v)); }
static void cr_gw_pad(cr_gw *w, uint64_t align) {
    static const unsigned char zeros[64];
    while (w->pos % align) cr_gw_bytes(w, zeros, (size_t)((align - w->pos % align) < 64 ? (align - w->pos % align) : 64));
}

/* ---- llama2.c checkpoints -------------------------------------------------------------------
 * Seven int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size (negative: separate
 * classifier), seq_len), then float32 arrays in a fixed order.  The tensors get canonical names
 * directly. */

typedef struct cr_l2c_header { int dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len, shared; } cr_l2c_header;

static int cr_llama2c_load(cr_ttable *tt, const char *path, cr_l2c_header *h, cr_err *err) {
    int rc = cr_ttable_add_map(tt, path, err);
    if (rc) return rc;
    const cr_map *m = &tt->maps[tt->n_maps - 1];
    if (m->size < 28) return cr_fail(err, CR_EFORMAT, "%s: truncated llama2.c checkpoint (%zu bytes, header needs 28)", path, m->size);
    int32_t v[7];
    for (int i = 0; i < 7; i++) v[i] = (int32_t)cr_rd32(m->data + 4 * i);
    h->dim = v[0], h->hidden = v[1], h->n_layers = v[2], h->n_heads = v[3], h->n_kv_heads = v[4];
    h->shared = v[5] > 0;
    h->vocab = v[5] < 0 ? (v[5] == INT32_MIN ? -1 : -v[5]) : v[5];
    h->seq_len = v[6];
    if (h->dim <= 0 || h->dim > CR_MAX_DIM || h->hidden <= 0 || h->hidden > CR_MAX_DIM || h->n_layers <= 0 ||
        h->n_layers > CR_MAX_LAYERS || h->n_heads <= 0 || h->n_kv_heads <= 0 || h->n_kv_heads > h->n_heads ||
        h->n_heads % h->n_kv_heads || h->dim % h->n_heads || (h->dim / h->n_heads) % 2 || h->vocab <= 0 ||
        h->vocab > CR_MAX_VOCAB || h->seq_len <= 0 || h->seq_len > CR_MAX_CTX)
        return cr_fail(err, CR_EFORMAT, "%s: implausible llama2.c header (dim %d, hidden %d, layers %d, heads %d/%d, vocab %d, seq_len %d)",
                       path, h->dim, h->hidden, h->n_layers, h->n_heads, h->n_kv_heads, v[5], h->seq_len);
    uint64_t d = (uint64_t)h->dim, hd = (uint64_t)h->hidden, L = (uint64_t)h->n_layers, V = (uint64_t)h->vocab;
    uint64_t kv = d / (uint64_t)h->n_heads * (uint64_t)h->n_kv_heads, hs = d / (uint64_t)h->n_heads;
    uint64_t pos = 28;
    char name[64];
    struct { const char *fmt; uint64_t rows, cols; int per_layer; } parts[] = {
        {"token_embd.weight", V, d, 0},
        {"blk.%d.attn_norm.weight", 1, d, 1},
        {"blk.%d.attn_q.weight", d, d, 1},
        {"blk.%d.attn_k.weight", kv, d, 1},
        {"blk.%d.attn_v.weight", kv, d, 1},
        {"blk.%d.attn_output.weight", d, d, 1},
        {"blk.%d.ffn_norm.weight", 1, d, 1},
        {"blk.%d.ffn_gate.weight", hd, d, 1},
        {"blk.%d.ffn_down.weight", d, hd, 1},
        {"blk.%d.ffn_up.weight", hd, d, 1},
        {"output_norm.weight", 1, d, 0},
        {NULL, (uint64_t)h->seq_len, hs, 0}, /* freq_cis real and imaginary halves: skipped */
        {"output.weight", V, d, 0},
    };
    for (size_t p = 0; p < sizeof parts / sizeof parts[0]; p++) {
        if (!parts[p].fmt) { pos += 4 * parts[p].rows * parts[p].cols; continue; }
        if (p == sizeof parts / sizeof parts[0] - 1 && h->shared) break;
        for (uint64_t l = 0; l < (parts[p].per_layer ? L : 1); l++) {
            uint64_t nb = 4 * parts[p].rows * parts[p].cols;
            if (pos > m->size || nb > m->size - pos)
                return cr_fail(err, CR_EFORMAT, "%s: file is %zu bytes but the header needs at least %llu (truncated, or the header lies)", path, m->size, (unsigned long long)(pos + nb));
            snprintf(name, sizeof name, parts[p].fmt, (int)l);
            cr_tinfo *t = cr_ttable_push(tt, name, strlen(name), err);
            if (!t) return CR_ENOMEM;
            t->dtype = CR_F32;
            t->file = tt->n_maps - 1;
            t->ndim = parts[p].rows == 1 ? 1 : 2;
            if (t->ndim == 1) t->shape[0] = (int64_t)parts[p].cols;
            else t->shape[0] = (int64_t)parts[p].rows, t->shape[1] = (int64_t)parts[p].cols;
            t->data = m->data + pos;
            t->nbytes = nb;
            pos += nb;
        }
    }
    if (pos != m->size)
        return cr_fail(err, CR_EFORMAT, "%s: file is %zu bytes but the header describes %llu (truncated, or the header lies)", path, m->size, (unsigned long long)pos);
    return CR_OK;
}

/* ============================================================================================
 * 4. Quantization and kernels
 *
 * A weight matrix is `rows` outputs by `cols` inputs.  Q8_0 stores each row as blocks of 32
 * int8 values with one fp16 scale (llama.cpp's layout, so GGUF files are used in place).
 * Every SIMD kernel has a scalar twin with the same name and a _scalar suffix; the tests and
 * `confreg selftest` compare them.
 * ============================================================================================ */

typedef struct cr_mat {
    int dtype;
    int64_t rows, cols;           /* logical [out, in] */
    const unsigned char *data;
    int trans;                    /* storage is [cols, rows] (GPT-2 Conv1D); F32/F16/BF16 only */
} cr_mat;

/* Quantizes n floats (n % 32 == 0) into n/32 Q8_0 blocks: round to nearest, clamp to ±127,
 * and a zero block gets scale 0 instead of a division by zero. */
CR_UNUSED static void cr_quantize_q8_0_scalar(const float *x, unsigned char *out, int64_t n) {
    for (int64_t b = 0; b < n / CR_QK; b++) {
        const float *xb = x + b * CR_QK;
        unsigned char *ob = out + b * CR_Q8_BLOCK_BYTES;
        float amax = 0;
        for (int i = 0; i < CR_QK; i++) amax = fmaxf(amax, fabsf(xb[i]));
        float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
        uint16_t dh = cr_f32_to_f16(d);
        ob[0] = (unsigned char)dh, ob[1] = (unsigned char)(dh >> 8);
        for (int i = 0; i < CR_QK; i++) {
            float v = roundf(xb[i] * id);
            v = v > 127 ? 127 : v < -127 ? -127 : v;
            if (v != v) v = 0; /* NaN (from NaN or infinite input) has no int8 value */
            ob[2 + i] = (unsigned char)(int8_t)v;
        }
    }
}

/* The same bytes 16 lanes at a time: roundf (half away from zero) is trunc plus the sign
 * where the exact remainder is at least a half; NaN becomes 0 as above. */
#if defined(__AVX512F__) && defined(__AVX512BW__) && !defined(CONFREG_PORTABLE)
static void cr_quantize_q8_0(const float *x, unsigned char *out, int64_t n) {
    const __m512 absm = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff)), half = _mm512_set1_ps(0.5f);
    const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    for (int64_t b = 0; b < n / CR_QK; b++) {
        const float *xb = x + b * CR_QK;
        unsigned char *ob = out + b * CR_Q8_BLOCK_BYTES;
        const __m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16);
        /* max(|x|, m) keeps m where x is NaN, as fmaxf does */
        __m512 m = _mm512_max_ps(_mm512_and_ps(v0, absm), _mm512_setzero_ps());
        m = _mm512_max_ps(_mm512_and_ps(v1, absm), m);
        float amax = _mm512_reduce_max_ps(m);
        float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
        uint16_t dh = cr_f32_to_f16(d);
        ob[0] = (unsigned char)dh, ob[1] = (unsigned char)(dh >> 8);
        const __m512 vid = _mm512_set1_ps(id);
        for (int h = 0; h < 2; h++) {
            __m512 v = _mm512_mul_ps(h ? v1 : v0, vid);
            __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            __mmask16 up = _mm512_cmp_ps_mask(_mm512_and_ps(_mm512_sub_ps(v, t), absm), half, _CMP_GE_OQ);
            t = _mm512_mask_add_ps(t, up, t, _mm512_or_ps(_mm512_set1_ps(1.0f), _mm512_andnot_ps(absm, v)));
            __mmask16 nan = _mm512_cmp_ps_mask(t, t, _CMP_UNORD_Q);
            t = _mm512_min_ps(_mm512_max_ps(t, lo), hi);
            t = _mm512_mask_mov_ps(t, nan, _mm512_setzero_ps());
            _mm_storeu_si128((__m128i *)(void *)(ob + 2 + 16 * h), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(t)));
        }
    }
}
#else
#define cr_quantize_q8_0 cr_quantize_q8_0_scalar
#endif

static void cr_dequantize_q8_0(const unsigned char *q, float *out, int64_t n) {
    for (int64_t b = 0; b < n / CR_QK; b++) {
        const unsigned char *qb = q + b * CR_Q8_BLOCK_BYTES;
        float d = cr_f16_to_f32(cr_rd16(qb));
        for (int i = 0; i < CR_QK; i++) out[b * CR_QK + i] = d * (float)(int8_t)qb[2 + i];
    }
}

/* Half-to-float inside kernels: the hardware instruction where there is one. */
#if defined(CR_AVX2)
#define cr_f16_fast(h) _cvtsh_ss(h)
#elif defined(CR_NEON)
static inline float cr_f16_fast(uint16_t h) { return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0); }
#else
#define cr_f16_fast(h) cr_f16_to_f32(h)
#endif

/* ---- dot products: scalar twins ---- */
CR_UNUSED static float cr_dot_f32_scalar(const float *a, const float *b, int64_t n) {
    float s[4] = {0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++) s[k] += a[i + k] * b[i + k];
    for (; i < n; i++) s[0] += a[i] * b[i];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

CR_UNUSED static float cr_dot_f16_scalar(const uint16_t *w, const float *x, int64_t n) {
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += cr_f16_to_f32(w[i]) * x[i];
    return s;
}

CR_UNUSED static float cr_dot_bf16_scalar(const uint16_t *w, const float *x, int64_t n) {
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += cr_bf16_to_f32(w[i]) * x[i];
    return s;
}

/* Q8_0 weights against Q8_0 activations (the default, llama.cpp's arithmetic). */
CR_UNUSED static float cr_dot_q8_scalar(const unsigned char *w, const unsigned char *x, int64_t n) {
    float s = 0;
    for (int64_t b = 0; b < n / CR_QK; b++) {
        const unsigned char *wb = w + b * CR_Q8_BLOCK_BYTES, *xb = x + b * CR_Q8_BLOCK_BYTES;
        int32_t acc = 0;
        for (int i = 0; i < CR_QK; i++) acc += (int8_t)wb[2 + i] * (int8_t)xb[2 + i];
        s += cr_f16_to_f32(cr_rd16(wb)) * cr_f16_to_f32(cr_rd16(xb)) * (float)acc;
    }
    return s;
}

CR_UNUSED static void cr_dot_q8_x4_scalar(const unsigned char *w, size_t stride, const unsigned char *x, int64_t n, float *out) {
    for (int k = 0; k < 4; k++) out[k] = cr_dot_q8_scalar(w + (size_t)k * stride, x, n);
}

/* Q8_0 weights against float activations (precise mode). */
CR_UNUSED static float cr_dot_q8f_scalar(const unsigned char *w, const float *x, int64_t n) {
    float s = 0;
    for (int64_t b = 0; b < n / CR_QK; b++) {
        const unsigned char *wb = w + b * CR_Q8_BLOCK_BYTES;
        float acc = 0;
        for (int i = 0; i < CR_QK; i++) acc += (float)(int8_t)wb[2 + i] * x[b * CR_QK + i];
        s += cr_f16_to_f32(cr_rd16(wb)) * acc;
    }
    return s;
}

/* ---- dot products: SIMD ---- */
#if defined(CR_AVX2)
static inline float cr_hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    return _mm_cvtss_f32(lo);
}
static float cr_dot_f32(const float *a, const float *b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = cr_hsum256(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}
static float cr_dot_f16(const uint16_t *w, const float *x, int64_t n) {
    __m256 s0 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i))), _mm256_loadu_ps(x + i), s0);
    float s = cr_hsum256(s0);
    for (; i < n; i++) s += cr_f16_to_f32(w[i]) * x[i];
    return s;
}
static float cr_dot_bf16(const uint16_t *w, const float *x, int64_t n) {
    __m256 s0 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i v = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + i))), 16);
        s0 = _mm256_fmadd_ps(_mm256_castsi256_ps(v), _mm256_loadu_ps(x + i), s0);
    }
    float s = cr_hsum256(s0);
    for (; i < n; i++) s += cr_bf16_to_f32(w[i]) * x[i];
    return s;
}
/* Sum of 32 int8 products per 32-bit lane group.  maddubs (and VNNI's dpbusd) multiply
 * unsigned by signed bytes, so take |w| and move w's sign onto x. */
static inline __m256i cr_i8dot(__m256i qw, __m256i qx) {
    __m256i aw = _mm256_sign_epi8(qw, qw), sx = _mm256_sign_epi8(qx, qw);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), aw, sx);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), _mm256_set1_epi16(1));
#endif
}
static float cr_dot_q8(const unsigned char *w, const unsigned char *x, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / CR_QK; b++) {
        const unsigned char *wb = w + b * CR_Q8_BLOCK_BYTES, *xb = x + b * CR_Q8_BLOCK_BYTES;
        __m256i p32 = cr_i8dot(_mm256_loadu_si256((const __m256i *)(wb + 2)), _mm256_loadu_si256((const __m256i *)(xb + 2)));
        float d = cr_f16_fast(cr_rd16(wb)) * cr_f16_fast(cr_rd16(xb));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(p32), acc);
    }
    return cr_hsum256(acc);
}
/* Four weight rows (stride bytes apart) against one activation row: each activation block
 * is loaded once for four rows. */
#define CR_Q8_PREFETCH 16384   /* bytes; 8-32 KiB measured best for decoding (Zen 5) */
static void cr_dot_q8_x4(const unsigned char *w, size_t stride, const unsigned char *x, int64_t n, float *out) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t b = 0; b < n / CR_QK; b++) {
        const unsigned char *xb = x + b * CR_Q8_BLOCK_BYTES, *wb = w + b * CR_Q8_BLOCK_BYTES;
        const __m256i qx = _mm256_loadu_si256((const __m256i *)(xb + 2));
        const float dx = cr_f16_fast(cr_rd16(xb));
        /* The hardware prefetcher does not follow four interleaved streams of short rows
         * (768 columns: 816 bytes each), and decoding stalled on loads at a third of memory
         * bandwidth.  cr_matmul's four rows are adjacent (stride = row bytes), one span
         * consumed 4 blocks per step, so fetch that span CR_Q8_PREFETCH bytes ahead (past
         * the matrix's end a prefetch is harmless). */
        const unsigned char *pf = w + CR_Q8_PREFETCH + 4 * CR_Q8_BLOCK_BYTES * b;
        _mm_prefetch((const char *)pf, _MM_HINT_T0);
        _mm_prefetch((const char *)(pf + 64), _MM_HINT_T0);
        _mm_prefetch((const char *)(pf + 128), _MM_HINT_T0);
#define CR_ROW(k, acc) do { const unsigned char *wr = wb + (k) * stride; \
            __m256i p = cr_i8dot(_mm256_loadu_si256((const __m256i *)(wr + 2)), qx); \
            acc = _mm256_fmadd_ps(_mm256_set1_ps(dx * cr_f16_fast(cr_rd16(wr))), _mm256_cvtepi32_ps(p), acc); } while (0)
        CR_ROW(0, a0); CR_ROW(1, a1); CR_ROW(2, a2); CR_ROW(3, a3);
#undef CR_ROW
    }
    out[0] = cr_hsum256(a0), out[1] = cr_hsum256(a1), out[2] = cr_hsum256(a2), out[3] = cr_hsum256(a3);
}
static float cr_dot_q8f(const unsigned char *w, const float *x, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / CR_QK; b++) {
        const unsigned char *wb = w + b * CR_Q8_BLOCK_BYTES;
        __m256 s = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(wb + 2 + 8 * k))));
            s = _mm256_fmadd_ps(q, _mm256_loadu_ps(x + b * CR_QK + 8 * k), s);
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(cr_f16_fast(cr_rd16(wb))), s, acc);
    }
    return cr_hsum256(acc);
}
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define CR_KERNEL_ISA "avx2+vnni"
#else
#define CR_KERNEL_ISA "avx2"
#endif
#elif defined(CR_NEON)
static float cr_dot_f32(const float *a, const float *b, int64_t n) {
    float32x4_t s0 = vdupq_n_f32(0), s1 = vdupq_n_f32(0);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
        s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
    }
    float s = vaddvq_f32(vaddq_f32(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}
static float cr_dot_f16(const uint16_t *w, const float *x, int64_t n) {
    float32x4_t s0 = vdupq_n_f32(0);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        s0 = vfmaq_f32(s0, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(w + i))), vld1q_f32(x + i));
    float s = vaddvq_f32(s0);
    for (; i < n; i++) s += cr_f16_to_f32(w[i]) * x[i];
    return s;
}
static float cr_dot_bf16(const uint16_t *w, const float *x, int64_t n) {
    float32x4_t s0 = vdupq_n_f32(0);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        s0 = vfmaq_f32(s0, vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(w + i), 16)), vld1q_f32(x + i));
    float s = vaddvq_f32(s0);
    for (; i < n; i++) s += cr_bf16_to_f32(w[i]) * x[i];
    return s;
}
static float cr_dot_q8(const unsigned char *w, const unsigned char *x, int64_t n) {
    float32x4_t acc = vdupq_n_f32(0);
    for (int64_t b = 0; b < n / CR_QK; b++) {
        const unsigned char *wb = w + b * CR_Q8_BLOCK_BYTES, *xb = x + b * CR_Q8_BLOCK_BYTES;
        int8x16_t w0 = vld1q_s8((const int8_t *)wb + 2), w1 = vld1q_s8((const int8_t *)wb + 18);
        int8x16_t x0 = vld1q_s8((const int8_t *)xb + 2), x1 = vld1q_s8((const int8_t *)xb + 18);
#if defined(__ARM_FEATURE_DOTPROD)
        int32x4_t p = vdotq_s32(vdotq_s32(vdupq_n_s32(0), w0, x0), w1, x1);
#else
        int16x8_t a = vmull_s8(vget_low_s8(w0), vget_low_s8(x0));
        a = vmlal_s8(a, vget_high_s8(w0), vget_high_s8(x0));
        int16x8_t c = vmull_s8(vget_low_s8(w1), vget_low_s8(x1));
        c = vmlal_s8(c, vget_high_s8(w1), vget_high_s8(x1));
        int32x4_t p = vaddq_s32(vpaddlq_s16(a), vpaddlq_s16(c));
#endif
        float d = cr_f16_fast(cr_rd16(wb)) * cr_f16_fast(cr_rd16(xb));
        acc = vmlaq_n_f32(acc, vcvtq_f32_s32(p), d);
    }
    return vaddvq_f32(acc);
}
static float cr_dot_q8f(const unsigned char *w, const float *x, int64_t n) { return cr_dot_q8f_scalar(w, x, n); }
static void cr_dot_q8_x4(const unsigned char *w, size_t stride, const unsigned char *x, int64_t n, float *out) {
    for (int k = 0; k < 4; k++) out[k] = cr_dot_q8(w + (size_t)k * stride, x, n);
}
#if defined(__ARM_FEATURE_DOTPROD)
#define CR_KERNEL_ISA "neon+dotprod"
#else
#define CR_KERNEL_ISA "neon"
#endif
#else
#define cr_dot_f32 cr_dot_f32_scalar
#define cr_dot_f16 cr_dot_f16_scalar
#define cr_dot_bf16 cr_dot_bf16_scalar
#define cr_dot_q8 cr_dot_q8_scalar
#define cr_dot_q8_x4 cr_dot_q8_x4_scalar
#define cr_dot_q8f cr_dot_q8f_scalar
#define CR_KERNEL_ISA "scalar"
#endif

/* ---- Q8_0 matrix-matrix product (prompt processing) -----------------------------------------
 * y[t, r] for a tile of 4 rows x 8 tokens at once: 32 (row, token) accumulators stay in
 * registers, so each weight block is loaded once per 8 tokens instead of once per token.
 * Every result is bit-identical to cr_dot_q8_x4's: per block the same exact int32 sums of
 * 4 products in 8 lanes, the same float scale dx*dw, one fmadd into that (row, token)'s 8-lane
 * accumulator in block order, and the same horizontal sum.  So prompt processing and one-token
 * decoding agree bit for bit and nothing depends on how rows or tokens are tiled.
 *
 * The AVX-512 VNNI kernel puts two tokens in one 512-bit register.  dpbusd multiplies
 * unsigned by signed bytes; activations are stored as x+128 (unsigned) and each lane starts
 * from -128 * (sum of its 4 weights), which makes the sum exactly sum w*x without the
 * per-pair sign instructions of the 256-bit kernels. */

/* Scratch for the tiled product, owned by a session (no allocation in the forward pass). */
typedef struct cr_gemm_buf {
    unsigned char *xp;  /* [max_tok/8 tiles, max_nb, 4 token pairs, 128]: x+128 of both tokens, then 16 floats dx */
    unsigned char *wt;  /* [n_threads, max_nb, 4 rows, 64]: 32 weights, then 8 int32 -128*(sum of 4 weights) */
    float *dws;         /* [n_threads, max_nb, 4] weight scales */
    int max_tok, n_threads;
    int64_t max_nb;
} cr_gemm_buf;

#define CR_GEMM_TOK 8            /* tokens per tile */
#define CR_GEMM_XP 128           /* packed bytes per token pair and block */
#define CR_GEMM_MAX_TOK 512      /* tokens packed at once (bounds the scratch) */

static void cr_gemm_buf_free(cr_gemm_buf *g) {
    free(g->xp), free(g->wt), free(g->dws);
    memset(g, 0, sizeof *g);
}

/* Scratch for up to max_tok tokens (more go in slices) and rows of up to max_nb blocks;
 * 64-byte aligned for the tile kernel.  Returns 0 or CR_ENOMEM. */
CR_UNUSED static int cr_gemm_buf_init(cr_gemm_buf *g, int max_tok, int64_t max_nb, int n_threads) {
    memset(g, 0, sizeof *g);
    g->max_tok = max_tok < CR_GEMM_MAX_TOK ? max_tok : CR_GEMM_MAX_TOK;
    g->max_nb = max_nb > 0 ? max_nb : 1;
    g->n_threads = n_threads > 0 ? n_threads : 1;
    size_t ntile = (size_t)(g->max_tok + CR_GEMM_TOK - 1) / CR_GEMM_TOK, nbm = (size_t)g->max_nb;
    if (nbm > SIZE_MAX / 4 / CR_GEMM_XP / (ntile + (size_t)g->n_threads)) return CR_ENOMEM;
    g->xp = aligned_alloc(64, ntile * nbm * 4 * CR_GEMM_XP);
    g->wt = aligned_alloc(64, (size_t)g->n_threads * nbm * 256);
    g->dws = aligned_alloc(64, ((size_t)g->n_threads * nbm * 16 + 63) / 64 * 64);
    if (!g->xp || !g->wt || !g->dws) { cr_gemm_buf_free(g); return CR_ENOMEM; }
    return CR_OK;
}

/* The scalar twin: each (row, token) from the scalar dot product. */
CR_UNUSED static void cr_gemm_q8_scalar(const unsigned char *w, uint64_t rb, int64_t rows, const unsigned char *xq, uint64_t xqb, int n, int64_t cols, float *y, int64_t ldy) {
    for (int t = 0; t < n; t++)
        for (int64_t r = 0; r < rows; r++) y[(int64_t)t * ldy + r] = cr_dot_q8_scalar(w + (uint64_t)r * rb, xq + (uint64_t)t * xqb, cols);
}

#if defined(CR_AVX2) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define CR_GEMM_Q8 1
#define CR_GEMM_ISA "avx512vnni"
/* Packs token tile tt (tokens 8tt..8tt+7; those at or past n become zeros). */
static void cr_gemm_pack_x(const unsigned char *xq, uint64_t xqb, int n, int64_t nb, int tt, unsigned char *dst) {
    const __m256i k80 = _mm256_set1_epi8((char)0x80);
    for (int64_t b = 0; b < nb; b++)
        for (int j = 0; j < CR_GEMM_TOK; j++) {
            int t = tt * CR_GEMM_TOK + j;
            unsigned char *d = dst + ((uint64_t)b * 4 + (uint64_t)(j / 2)) * CR_GEMM_XP;
            __m256i q = k80;
            float dx = 0;
            if (t < n) {
                const unsigned char *src = xq + (uint64_t)t * xqb + (uint64_t)b * CR_Q8_BLOCK_BYTES;
                q = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(src + 2)), k80);
                dx = cr_f16_fast(cr_rd16(src));
            }
            _mm256_store_si256((__m256i *)(d + 32 * (j & 1)), q);
            _mm256_store_ps((float *)(void *)(d + 64 + 32 * (j & 1)), _mm256_set1_ps(dx));
        }
}
/* Packs 4 weight rows: blocks interleaved by row, with each lane's -128*(sum of 4 weights). */
static void cr_gemm_pack_w(const unsigned char *w, uint64_t rb, int64_t nb, unsigned char *wt, float *dws) {
    const __m256i k80 = _mm256_set1_epi8((char)0x80), z = _mm256_setzero_si256();
    for (int64_t b = 0; b < nb; b++)
        for (int k = 0; k < 4; k++) {
            const unsigned char *src = w + (uint64_t)k * rb + (uint64_t)b * CR_Q8_BLOCK_BYTES;
            __m256i q = _mm256_loadu_si256((const __m256i *)(src + 2));
            unsigned char *d = wt + ((uint64_t)b * 4 + (uint64_t)k) * 64;
            _mm256_store_si256((__m256i *)d, q);
            _mm256_store_si256((__m256i *)(d + 32), _mm256_sub_epi32(z, _mm256_dpbusd_epi32(z, k80, q)));
            dws[b * 4 + k] = cr_f16_fast(cr_rd16(src));
        }
}
/* One tile: 4 packed rows against 8 packed tokens; out[k][j] for row k, token j. */
static void cr_gemm_q8_tile(const unsigned char *wt, const float *dws, const unsigned char *xp, int64_t nb, float out[4][CR_GEMM_TOK]) {
    __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    __m512 a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00, a33 = a00;
    for (int64_t b = 0; b < nb; b++) {
        const unsigned char *xb = xp + (uint64_t)b * 4 * CR_GEMM_XP, *wb = wt + (uint64_t)b * 256;
        const __m512i x0 = _mm512_load_si512(xb), x1 = _mm512_load_si512(xb + 128), x2 = _mm512_load_si512(xb + 256), x3 = _mm512_load_si512(xb + 384);
#define CR_DX(p) _mm512_load_ps((const float *)(const void *)(xb + 128 * (p) + 64))
#define CR_PAIR(acc, xv, p) acc = _mm512_fmadd_ps(_mm512_mul_ps(dw, CR_DX(p)), _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(cv, xv, wv)), acc)
#define CR_ROWK(k, c0, c1, c2, c3) do { \
            const __m512i wv = _mm512_broadcast_i64x4(_mm256_load_si256((const __m256i *)(wb + 64 * (k)))); \
            const __m512i cv = _mm512_broadcast_i64x4(_mm256_load_si256((const __m256i *)(wb + 64 * (k) + 32))); \
            const __m512 dw = _mm512_set1_ps(dws[b * 4 + (k)]); \
            CR_PAIR(c0, x0, 0); CR_PAIR(c1, x1, 1); CR_PAIR(c2, x2, 2); CR_PAIR(c3, x3, 3); } while (0)
        CR_ROWK(0, a00, a01, a02, a03);
        CR_ROWK(1, a10, a11, a12, a13);
        CR_ROWK(2, a20, a21, a22, a23);
        CR_ROWK(3, a30, a31, a32, a33);
#undef CR_ROWK
#undef CR_PAIR
#undef CR_DX
    }
#define CR_OUT(k, p, acc) out[k][2 * (p)] = cr_hsum256(_mm512_castps512_ps256(acc)), \
        out[k][2 * (p) + 1] = cr_hsum256(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)))
    CR_OUT(0, 0, a00); CR_OUT(0, 1, a01); CR_OUT(0, 2, a02); CR_OUT(0, 3, a03);
    CR_OUT(1, 0, a10); CR_OUT(1, 1, a11); CR_OUT(1, 2, a12); CR_OUT(1, 3, a13);
    CR_OUT(2, 0, a20); CR_OUT(2, 1, a21); CR_OUT(2, 2, a22); CR_OUT(2, 3, a23);
    CR_OUT(3, 0, a30); CR_OUT(3, 1, a31); CR_OUT(3, 2, a32); CR_OUT(3, 3, a33);
#undef CR_OUT
}

/* y[t, r] (+ bias) for rows r < R/4*4 and t < n (n <= CR_GEMM_MAX_TOK); xq is [n, nb] Q8_0. */
static void cr_gemm_q8(const cr_mat *w, const unsigned char *xq, int n, float *y, const float *bias, int n_threads, const cr_gemm_buf *gb) {
    const int64_t R = w->rows, nb = w->cols / CR_QK, nrt = R / 4;
    const uint64_t rb = cr_row_bytes(CR_Q8_0, (uint64_t)w->cols);
    const int ntt = (n + CR_GEMM_TOK - 1) / CR_GEMM_TOK;
    /* Token tiles per pass over a thread's weight rows: their packed activations (~384 KiB)
     * stay in L2 while the rows stream past. */
    int chunk = (int)(393216 / (nb * 4 * CR_GEMM_XP));
    if (chunk < 1) chunk = 1;
    int nth = cr_threads(n_threads);
    if (nth > gb->n_threads) nth = gb->n_threads;
#pragma omp parallel num_threads(nth) if (R * w->cols * n >= CR_PAR_MIN)
    {
#ifdef _OPENMP
        const int tid = omp_get_thread_num(), nthr = omp_get_num_threads();
#else
        const int tid = 0, nthr = 1;
#endif
#pragma omp for schedule(static)
        for (int tt = 0; tt < ntt; tt++) cr_gemm_pack_x(xq, rb, n, nb, tt, gb->xp + (uint64_t)tt * (uint64_t)nb * 4 * CR_GEMM_XP);
        const int64_t per = (nrt + nthr - 1) / nthr, rt0 = tid * per, rt1 = rt0 + per < nrt ? rt0 + per : nrt;
        unsigned char *wt = gb->wt + (uint64_t)tid * (uint64_t)gb->max_nb * 256;
        float *dws = gb->dws + (uint64_t)tid * (uint64_t)gb->max_nb * 4;
        for (int c0 = 0; c0 < ntt; c0 += chunk) {
            const int c1 = c0 + chunk < ntt ? c0 + chunk : ntt;
            for (int64_t rt = rt0; rt < rt1; rt++) {
                cr_gemm_pack_w(w->data + (uint64_t)rt * 4 * rb, rb, nb, wt, dws);
                for (int tt = c0; tt < c1; tt++) {
                    float o[4][CR_GEMM_TOK];
                    cr_gemm_q8_tile(wt, dws, gb->xp + (uint64_t)tt * (uint64_t)nb * 4 * CR_GEMM_XP, nb, o);
                    for (int j = 0; j < CR_GEMM_TOK && tt * CR_GEMM_TOK + j < n; j++)
                        for (int k = 0; k < 4; k++) {
                            const int64_t r = rt * 4 + k;
                            y[(int64_t)(tt * CR_GEMM_TOK + j) * R + r] = o[k][j] + (bias ? bias[r] : 0.0f);
                        }
                }
            }
        }
    }
}
#else
#define CR_GEMM_ISA "none (four rows, one token at a time)"
#endif

/* ---- the fused ablation kernel --------------------------------------------------------------
 * For one (token, neuron) pair and a chunk of the vocabulary, with a = z0 + delta g:
 *   TE logits  zt = a inv_t + b,   DE logits  zd = a inv_d + b,   frequency-restored zf = zt + cf v,
 * it accumulates S = sum exp(z - shift) and E = sum exp(z - shift) (z - shift) for zt and zd, and
 * S for zf.  Each shift is an upper bound of its variant's maximum fixed before the pass (so
 * the vocabulary can be split into cache-sized chunks); then lse = shift + log S and
 * H = log S - E / S.  The exponential is exp(x) = 2^n p(r) with x = n ln2 + r, |r| <= ln2/2, and
 * p the degree-6 Taylor polynomial: relative error below 3e-7 (2.2e-7 measured by `selftest`
 * over [-87, 0], mostly the final float rounding). */

typedef struct cr_fused_par { float delta, inv_t, inv_d, cf, shift_t, shift_d, shift_f; int has_f; } cr_fused_par;

#define CR_LN2_HI 0.693359375f
#define CR_LN2_LO (-2.12194440e-4f)
#define CR_LOG2E 1.44269504088896341f

static float cr_exp_poly(float x) {
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    float n = nearbyintf(x * CR_LOG2E);
    float r = fmaf(-n, CR_LN2_HI, x);
    r = fmaf(-n, CR_LN2_LO, r);
    float p = 1.0f / 720;
    p = fmaf(p, r, 1.0f / 120), p = fmaf(p, r, 1.0f / 24), p = fmaf(p, r, 1.0f / 6), p = fmaf(p, r, 0.5f), p = fmaf(p, r, 1.0f), p = fmaf(p, r, 1.0f);
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &bits, 4);
    return p * s;
}

CR_UNUSED static void cr_fused_chunk_scalar(const float *z0, const float *g, const float *b, const float *v, int n, const cr_fused_par *p, double *acc) {
    double st = 0, et = 0, sd = 0, ed = 0, sf = 0;
    for (int t = 0; t < n; t++) {
        float a = fmaf(p->delta, g[t], z0[t]);
        float zt = fmaf(a, p->inv_t, b[t]) - p->shift_t, zd = fmaf(a, p->inv_d, b[t]) - p->shift_d;
        float xt = cr_exp_poly(zt), xd = cr_exp_poly(zd);
        st += xt, et += (double)xt * zt, sd += xd, ed += (double)xd * zd;
        if (p->has_f) sf += cr_exp_poly(fmaf(p->cf, v[t], zt) + (p->shift_t - p->shift_f));
    }
    acc[0] += st, acc[1] += et, acc[2] += sd, acc[3] += ed, acc[4] += sf;
}

#if defined(CR_AVX2) && defined(__AVX512F__)
/* The kernel's arguments are at most 0 (each shift bounds its maximum), so only the lower
 * clamp matters; it keeps n >= -126, where scalef's 2^n equals the scalar twin's exponent bits. */
static inline __m512 cr_exp16(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(CR_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(CR_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(CR_LN2_LO), r);
    __m512 q = _mm512_set1_ps(1.0f / 720);
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.0f / 120)), q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.0f / 24));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.0f / 6)), q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(0.5f));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.0f)), q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(q, n);
}
static inline double cr_hsum512d(__m512 v) {
    __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v)), hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
}
static void cr_fused_chunk(const float *z0, const float *g, const float *b, const float *v, int n, const cr_fused_par *p, double *acc) {
    const __m512 dl = _mm512_set1_ps(p->delta), it = _mm512_set1_ps(p->inv_t), id = _mm512_set1_ps(p->inv_d), cf = _mm512_set1_ps(p->cf);
    const __m512 sht = _mm512_set1_ps(p->shift_t), shd = _mm512_set1_ps(p->shift_d), dft = _mm512_set1_ps(p->shift_t - p->shift_f);
    int t = 0;
    /* Float partial sums over at most 16 vectors, then into double: keeps the sums exact to ~1e-7. */
    while (t + 16 <= n) {
        __m512 st = _mm512_setzero_ps(), et = st, sd = st, ed = st, sf = st;
        int end = t + 256 <= n ? t + 256 : n - (n - t) % 16;
        for (; t < end; t += 16) {
            __m512 a = _mm512_fmadd_ps(dl, _mm512_loadu_ps(g + t), _mm512_loadu_ps(z0 + t)), bb = _mm512_loadu_ps(b + t);
            __m512 zt = _mm512_sub_ps(_mm512_fmadd_ps(a, it, bb), sht), zd = _mm512_sub_ps(_mm512_fmadd_ps(a, id, bb), shd);
            __m512 xt = cr_exp16(zt), xd = cr_exp16(zd);
            st = _mm512_add_ps(st, xt), et = _mm512_fmadd_ps(xt, zt, et), sd = _mm512_add_ps(sd, xd), ed = _mm512_fmadd_ps(xd, zd, ed);
            if (p->has_f) sf = _mm512_add_ps(sf, cr_exp16(_mm512_add_ps(_mm512_fmadd_ps(cf, _mm512_loadu_ps(v + t), zt), dft)));
        }
        acc[0] += cr_hsum512d(st), acc[1] += cr_hsum512d(et), acc[2] += cr_hsum512d(sd), acc[3] += cr_hsum512d(ed), acc[4] += cr_hsum512d(sf);
    }
    if (t < n) cr_fused_chunk_scalar(z0 + t, g + t, b + t, v ? v + t : NULL, n - t, p, acc);
}
#define CR_FUSED_ISA "avx512"
#elif defined(CR_AVX2)
static inline __m256 cr_exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(CR_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(CR_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(CR_LN2_LO), r);
    __m256 q = _mm256_set1_ps(1.0f / 720);
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0f / 120)), q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0f / 24));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0f / 6)), q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(0.5f));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0f)), q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(q, _mm256_castsi256_ps(e));
}
static inline double cr_hsum256d(__m256 v) {
    __m256d s = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}
static void cr_fused_chunk(const float *z0, const float *g, const float *b, const float *v, int n, const cr_fused_par *p, double *acc) {
    const __m256 dl = _mm256_set1_ps(p->delta), it = _mm256_set1_ps(p->inv_t), id = _mm256_set1_ps(p->inv_d), cf = _mm256_set1_ps(p->cf);
    const __m256 sht = _mm256_set1_ps(p->shift_t), shd = _mm256_set1_ps(p->shift_d), dft = _mm256_set1_ps(p->shift_t - p->shift_f);
    int t = 0;
    while (t + 8 <= n) {
        __m256 st = _mm256_setzero_ps(), et = st, sd = st, ed = st, sf = st;
        int end = t + 128 <= n ? t + 128 : n - (n - t) % 8;
        for (; t < end; t += 8) {
            __m256 a = _mm256_fmadd_ps(dl, _mm256_loadu_ps(g + t), _mm256_loadu_ps(z0 + t)), bb = _mm256_loadu_ps(b + t);
            __m256 zt = _mm256_sub_ps(_mm256_fmadd_ps(a, it, bb), sht), zd = _mm256_sub_ps(_mm256_fmadd_ps(a, id, bb), shd);
            __m256 xt = cr_exp8(zt), xd = cr_exp8(zd);
            st = _mm256_add_ps(st, xt), et = _mm256_fmadd_ps(xt, zt, et), sd = _mm256_add_ps(sd, xd), ed = _mm256_fmadd_ps(xd, zd, ed);
            if (p->has_f) sf = _mm256_add_ps(sf, cr_exp8(_mm256_add_ps(_mm256_fmadd_ps(cf, _mm256_loadu_ps(v + t), zt), dft)));
        }
        acc[0] += cr_hsum256d(st), acc[1] += cr_hsum256d(et), acc[2] += cr_hsum256d(sd), acc[3] += cr_hsum256d(ed), acc[4] += cr_hsum256d(sf);
    }
    if (t < n) cr_fused_chunk_scalar(z0 + t, g + t, b + t, v ? v + t : NULL, n - t, p, acc);
}
#define CR_FUSED_ISA "avx2"
#elif defined(CR_NEON)
static inline float32x4_t cr_exp4(float32x4_t x) {
    x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.0f)), vdupq_n_f32(88.0f));
    float32x4_t n = vrndnq_f32(vmulq_n_f32(x, CR_LOG2E));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(CR_LN2_HI));
    r = vfmsq_f32(r, n, vdupq_n_f32(CR_LN2_LO));
    float32x4_t q = vdupq_n_f32(1.0f / 720);
    q = vfmaq_f32(vdupq_n_f32(1.0f / 120), q, r), q = vfmaq_f32(vdupq_n_f32(1.0f / 24), q, r), q = vfmaq_f32(vdupq_n_f32(1.0f / 6), q, r);
    q = vfmaq_f32(vdupq_n_f32(0.5f), q, r), q = vfmaq_f32(vdupq_n_f32(1.0f), q, r), q = vfmaq_f32(vdupq_n_f32(1.0f), q, r);
    int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(q, vreinterpretq_f32_s32(e));
}
static inline double cr_hsum4d(float32x4_t v) { return vaddvq_f64(vaddq_f64(vcvt_f64_f32(vget_low_f32(v)), vcvt_high_f64_f32(v))); }
static void cr_fused_chunk(const float *z0, const float *g, const float *b, const float *v, int n, const cr_fused_par *p, double *acc) {
    int t = 0;
    while (t + 4 <= n) {
        float32x4_t st = vdupq_n_f32(0), et = st, sd = st, ed = st, sf = st;
        int end = t + 64 <= n ? t + 64 : n - (n - t) % 4;
        for (; t < end; t += 4) {
            float32x4_t a = vfmaq_n_f32(vld1q_f32(z0 + t), vld1q_f32(g + t), p->delta), bb = vld1q_f32(b + t);
            float32x4_t zt = vsubq_f32(vfmaq_n_f32(bb, a, p->inv_t), vdupq_n_f32(p->shift_t));
            float32x4_t zd = vsubq_f32(vfmaq_n_f32(bb, a, p->inv_d), vdupq_n_f32(p->shift_d));
            float32x4_t xt = cr_exp4(zt), xd = cr_exp4(zd);
            st = vaddq_f32(st, xt), et = vfmaq_f32(et, xt, zt), sd = vaddq_f32(sd, xd), ed = vfmaq_f32(ed, xd, zd);
            if (p->has_f) sf = vaddq_f32(sf, cr_exp4(vaddq_f32(vfmaq_n_f32(zt, vld1q_f32(v + t), p->cf), vdupq_n_f32(p->shift_t - p->shift_f))));
        }
        acc[0] += cr_hsum4d(st), acc[1] += cr_hsum4d(et), acc[2] += cr_hsum4d(sd), acc[3] += cr_hsum4d(ed), acc[4] += cr_hsum4d(sf);
    }
    if (t < n) cr_fused_chunk_scalar(z0 + t, g + t, b + t, v ? v + t : NULL, n - t, p, acc);
}
#define CR_FUSED_ISA "neon"
#else
#define cr_fused_chunk cr_fused_chunk_scalar
#define CR_FUSED_ISA "scalar"
#endif

/* ---- float matrix product for the analyses -------------------------------------------------
 * out[r, c] = sum_i A[r, i] W[i, c] for the unembedding products of the analyses (clean logits
 * of a token block, logit directions of a neuron block): A [m, k], W [k, ldw], out [m, ldo], all
 * row-major.  Each output element is one chain of fused multiply-adds over i in order, so the
 * SIMD tiles (4 rows x CR_GEMM_NC columns held in registers for the whole chain), the scalar
 * twin and any split of rows, columns or threads give the same bits. */
CR_UNUSED static void cr_gemm_f32_scalar(const float *A, int m, int k, const float *W, int64_t ldw, int c0, int c1, float *out, int64_t ldo) {
    for (int r = 0; r < m; r++)
        for (int c = c0; c < c1; c++) {
            float s = 0;
            for (int i = 0; i < k; i++) s = fmaf(A[(size_t)r * (size_t)k + (size_t)i], W[(size_t)i * (size_t)ldw + (size_t)c], s);
            out[(size_t)r * (size_t)ldo + (size_t)c] = s;
        }
}

#if defined(CR_AVX2) && defined(__AVX512F__)
#define CR_GEMM_NC 64
#define CR_GEMM_F32_ISA "avx512 4x64"
/* Four rows a[0..3] (length k) against the 64 columns of W starting at W, into o[0..3][0..64). */
static void cr_gemm_f32_tile(const float *const a[4], int k, const float *W, int64_t ldw, float *const o[4]) {
    __m512 s00 = _mm512_setzero_ps(), s01 = s00, s02 = s00, s03 = s00, s10 = s00, s11 = s00, s12 = s00, s13 = s00;
    __m512 s20 = s00, s21 = s00, s22 = s00, s23 = s00, s30 = s00, s31 = s00, s32 = s00, s33 = s00;
    for (int i = 0; i < k; i++) {
        const float *w = W + (size_t)i * (size_t)ldw;
        const __m512 w0 = _mm512_loadu_ps(w), w1 = _mm512_loadu_ps(w + 16), w2 = _mm512_loadu_ps(w + 32), w3 = _mm512_loadu_ps(w + 48);
        __m512 x = _mm512_set1_ps(a[0][i]);
        s00 = _mm512_fmadd_ps(x, w0, s00), s01 = _mm512_fmadd_ps(x, w1, s01), s02 = _mm512_fmadd_ps(x, w2, s02), s03 = _mm512_fmadd_ps(x, w3, s03);
        x = _mm512_set1_ps(a[1][i]);
        s10 = _mm512_fmadd_ps(x, w0, s10), s11 = _mm512_fmadd_ps(x, w1, s11), s12 = _mm512_fmadd_ps(x, w2, s12), s13 = _mm512_fmadd_ps(x, w3, s13);
        x = _mm512_set1_ps(a[2][i]);
        s20 = _mm512_fmadd_ps(x, w0, s20), s21 = _mm512_fmadd_ps(x, w1, s21), s22 = _mm512_fmadd_ps(x, w2, s22), s23 = _mm512_fmadd_ps(x, w3, s23);
        x = _mm512_set1_ps(a[3][i]);
        s30 = _mm512_fmadd_ps(x, w0, s30), s31 = _mm512_fmadd_ps(x, w1, s31), s32 = _mm512_fmadd_ps(x, w2, s32), s33 = _mm512_fmadd_ps(x, w3, s33);
    }
    _mm512_storeu_ps(o[0], s00), _mm512_storeu_ps(o[0] + 16, s01), _mm512_storeu_ps(o[0] + 32, s02), _mm512_storeu_ps(o[0] + 48, s03);
    _mm512_storeu_ps(o[1], s10), _mm512_storeu_ps(o[1] + 16, s11), _mm512_storeu_ps(o[1] + 32, s12), _mm512_storeu_ps(o[1] + 48, s13);
    _mm512_storeu_ps(o[2], s20), _mm512_storeu_ps(o[2] + 16, s21), _mm512_storeu_ps(o[2] + 32, s22), _mm512_storeu_ps(o[2] + 48, s23);
    _mm512_storeu_ps(o[3], s30), _mm512_storeu_ps(o[3] + 16, s31), _mm512_storeu_ps(o[3] + 32, s32), _mm512_storeu_ps(o[3] + 48, s33);
}
#elif defined(CR_AVX2)
#define CR_GEMM_NC 16
#define CR_GEMM_F32_ISA "avx2 4x16"
static void cr_gemm_f32_tile(const float *const a[4], int k, const float *W, int64_t ldw, float *const o[4]) {
    __m256 s00 = _mm256_setzero_ps(), s01 = s00, s10 = s00, s11 = s00, s20 = s00, s21 = s00, s30 = s00, s31 = s00;
    for (int i = 0; i < k; i++) {
        const float *w = W + (size_t)i * (size_t)ldw;
        const __m256 w0 = _mm256_loadu_ps(w), w1 = _mm256_loadu_ps(w + 8);
        __m256 x = _mm256_broadcast_ss(&a[0][i]);
        s00 = _mm256_fmadd_ps(x, w0, s00), s01 = _mm256_fmadd_ps(x, w1, s01);
        x = _mm256_broadcast_ss(&a[1][i]);
        s10 = _mm256_fmadd_ps(x, w0, s10), s11 = _mm256_fmadd_ps(x, w1, s11);
        x = _mm256_broadcast_ss(&a[2][i]);
        s20 = _mm256_fmadd_ps(x, w0, s20), s21 = _mm256_fmadd_ps(x, w1, s21);
        x = _mm256_broadcast_ss(&a[3][i]);
        s30 = _mm256_fmadd_ps(x, w0, s30), s31 = _mm256_fmadd_ps(x, w1, s31);
    }
    _mm256_storeu_ps(o[0], s00), _mm256_storeu_ps(o[0] + 8, s01), _mm256_storeu_ps(o[1], s10), _mm256_storeu_ps(o[1] + 8, s11);
    _mm256_storeu_ps(o[2], s20), _mm256_storeu_ps(o[2] + 8, s21), _mm256_storeu_ps(o[3], s30), _mm256_storeu_ps(o[3] + 8, s31);
}
#elif defined(CR_NEON)
#define CR_GEMM_NC 16
#define CR_GEMM_F32_ISA "neon 4x16"
static void cr_gemm_f32_tile(const float *const a[4], int k, const float *W, int64_t ldw, float *const o[4]) {
    float32x4_t s[4][4];
    for (int r = 0; r < 4; r++)
        for (int q = 0; q < 4; q++) s[r][q] = vdupq_n_f32(0);
    for (int i = 0; i < k; i++) {
        const float *w = W + (size_t)i * (size_t)ldw;
        const float32x4_t w0 = vld1q_f32(w), w1 = vld1q_f32(w + 4), w2 = vld1q_f32(w + 8), w3 = vld1q_f32(w + 12);
        for (int r = 0; r < 4; r++) {
            const float32x4_t x = vdupq_n_f32(a[r][i]);
            s[r][0] = vfmaq_f32(s[r][0], x, w0), s[r][1] = vfmaq_f32(s[r][1], x, w1), s[r][2] = vfmaq_f32(s[r][2], x, w2), s[r][3] = vfmaq_f32(s[r][3], x, w3);
        }
    }
    for (int r = 0; r < 4; r++)
        for (int q = 0; q < 4; q++) vst1q_f32(o[r] + 4 * q, s[r][q]);
}
#else
#define CR_GEMM_NC 16
#define CR_GEMM_F32_ISA "scalar 4x16"
static void cr_gemm_f32_tile(const float *const a[4], int k, const float *W, int64_t ldw, float *const o[4]) {
    float s[4][16] = {{0}};
    for (int i = 0; i < k; i++) {
        const float *w = W + (size_t)i * (size_t)ldw;
        for (int r = 0; r < 4; r++)
            for (int q = 0; q < 16; q++) s[r][q] = fmaf(a[r][i], w[q], s[r][q]);
    }
    for (int r = 0; r < 4; r++) memcpy(o[r], s[r], sizeof s[r]);
}
#endif

/* out [m, ldo] = A [m, k] x W [k, ldw] for columns [0, n): threads take column tiles, each
 * walks every row tile while its strip of W stays in cache. */
static void cr_gemm_f32(const float *A, int m, int k, const float *W, int64_t ldw, int n, float *out, int64_t ldo, int n_threads) {
    const int n_ct = n / CR_GEMM_NC;
    (void)n_threads;
#pragma omp parallel for num_threads(cr_threads(n_threads)) schedule(static) if ((int64_t)m * k * n >= CR_PAR_MIN)
    for (int ct = 0; ct < n_ct; ct++) {
        float spare[CR_GEMM_NC * 4];   /* where the missing rows of a last, partial row tile go */
        for (int r0 = 0; r0 < m; r0 += 4) {
            const float *a[4];
            float *o[4];
            for (int q = 0; q < 4; q++) {
                const int r = r0 + q < m ? r0 + q : r0;
                a[q] = A + (size_t)r * (size_t)k;
                o[q] = r0 + q < m ? out + (size_t)r * (size_t)ldo + (size_t)ct * CR_GEMM_NC : spare + q * CR_GEMM_NC;
            }
            cr_gemm_f32_tile(a, k, W + (size_t)ct * CR_GEMM_NC, ldw, o);
        }
    }
    if (n_ct * CR_GEMM_NC < n) cr_gemm_f32_scalar(A, m, k, W, ldw, n_ct * CR_GEMM_NC, n, out, ldo);
}


/* ---- attention kernels -----------------------------------------------------------------------
 * Four query-key dot products at once and the probability-weighted sum of value rows.  Both
 * do exactly the arithmetic of the one-at-a-time code they replace (cr_dot_f32 per key; per
 * element a rounded product, then a sum, over keys in order), so attention outputs keep every
 * bit; they only share loads and keep the output row in registers. */

/* out[k] = cr_dot_f32(q, kv + k*stride, n) for k < 4. */
#if defined(CR_AVX2)
static void cr_dot_f32_x4(const float *q, const float *kv, size_t stride, int64_t n, float *out) {
    const float *k0 = kv, *k1 = kv + stride, *k2 = kv + 2 * stride, *k3 = kv + 3 * stride;
    __m256 s00 = _mm256_setzero_ps(), s01 = s00, s10 = s00, s11 = s00, s20 = s00, s21 = s00, s30 = s00, s31 = s00;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 qa = _mm256_loadu_ps(q + i), qb = _mm256_loadu_ps(q + i + 8);
        s00 = _mm256_fmadd_ps(qa, _mm256_loadu_ps(k0 + i), s00), s01 = _mm256_fmadd_ps(qb, _mm256_loadu_ps(k0 + i + 8), s01);
        s10 = _mm256_fmadd_ps(qa, _mm256_loadu_ps(k1 + i), s10), s11 = _mm256_fmadd_ps(qb, _mm256_loadu_ps(k1 + i + 8), s11);
        s20 = _mm256_fmadd_ps(qa, _mm256_loadu_ps(k2 + i), s20), s21 = _mm256_fmadd_ps(qb, _mm256_loadu_ps(k2 + i + 8), s21);
        s30 = _mm256_fmadd_ps(qa, _mm256_loadu_ps(k3 + i), s30), s31 = _mm256_fmadd_ps(qb, _mm256_loadu_ps(k3 + i + 8), s31);
    }
    for (; i + 8 <= n; i += 8) {
        const __m256 qa = _mm256_loadu_ps(q + i);
        s00 = _mm256_fmadd_ps(qa, _mm256_loadu_ps(k0 + i), s00), s10 = _mm256_fmadd_ps(qa, _mm256_loadu_ps(k1 + i), s10);
        s20 = _mm256_fmadd_ps(qa, _mm256_loadu_ps(k2 + i), s20), s30 = _mm256_fmadd_ps(qa, _mm256_loadu_ps(k3 + i), s30);
    }
    float r0 = cr_hsum256(_mm256_add_ps(s00, s01)), r1 = cr_hsum256(_mm256_add_ps(s10, s11));
    float r2 = cr_hsum256(_mm256_add_ps(s20, s21)), r3 = cr_hsum256(_mm256_add_ps(s30, s31));
    for (; i < n; i++) r0 += q[i] * k0[i], r1 += q[i] * k1[i], r2 += q[i] * k2[i], r3 += q[i] * k3[i];
    out[0] = r0, out[1] = r1, out[2] = r2, out[3] = r3;
}
#else
static void cr_dot_f32_x4(const float *q, const float *kv, size_t stride, int64_t n, float *out) {
    for (int k = 0; k < 4; k++) out[k] = cr_dot_f32(q, kv + (size_t)k * stride, n);
}
#endif

/* out[i] = sum over j in [j0, j1] of p[j] * v[j*stride + i] for i < n, keys in order; with
 * skip_zero, keys of probability 0 are left out. */
CR_UNUSED static void cr_attn_pv_scalar(const float *p, const float *v, size_t stride, int j0, int j1, int n, int skip_zero, float *out) {
    memset(out, 0, (size_t)n * sizeof *out);
    for (int j = j0; j <= j1; j++) {
        if (skip_zero && p[j] == 0.0f) continue;
        const float *vj = v + (size_t)j * stride;
        for (int i = 0; i < n; i++) out[i] += p[j] * vj[i];
    }
}
#if defined(CR_AVX2) || defined(CR_NEON)
#if defined(CR_AVX2) && defined(__AVX512F__)
#define CR_PV_W 16
typedef __m512 cr_pv_vec;
#define cr_pv_zero() _mm512_setzero_ps()
#define cr_pv_step(acc, pj, vp) _mm512_add_ps(acc, _mm512_mul_ps(_mm512_set1_ps(pj), _mm512_loadu_ps(vp)))
#define cr_pv_store(dst, acc) _mm512_storeu_ps(dst, acc)
#elif defined(CR_AVX2)
#define CR_PV_W 8
typedef __m256 cr_pv_vec;
#define cr_pv_zero() _mm256_setzero_ps()
#define cr_pv_step(acc, pj, vp) _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(pj), _mm256_loadu_ps(vp)))
#define cr_pv_store(dst, acc) _mm256_storeu_ps(dst, acc)
#else
#define CR_PV_W 4
typedef float32x4_t cr_pv_vec;
#define cr_pv_zero() vdupq_n_f32(0)
#define cr_pv_step(acc, pj, vp) vaddq_f32(acc, vmulq_n_f32(vld1q_f32(vp), pj))
#define cr_pv_store(dst, acc) vst1q_f32(dst, acc)
#endif
static void cr_attn_pv(const float *p, const float *v, size_t stride, int j0, int j1, int n, int skip_zero, float *out) {
    int i = 0;
    /* four vectors of outputs per pass over the keys */
    for (; i + 4 * CR_PV_W <= n; i += 4 * CR_PV_W) {
        cr_pv_vec a0 = cr_pv_zero(), a1 = a0, a2 = a0, a3 = a0;
        for (int j = j0; j <= j1; j++) {
            const float pj = p[j];
            if (skip_zero && pj == 0.0f) continue;
            const float *vj = v + (size_t)j * stride + i;
            a0 = cr_pv_step(a0, pj, vj), a1 = cr_pv_step(a1, pj, vj + CR_PV_W);
            a2 = cr_pv_step(a2, pj, vj + 2 * CR_PV_W), a3 = cr_pv_step(a3, pj, vj + 3 * CR_PV_W);
        }
        cr_pv_store(out + i, a0), cr_pv_store(out + i + CR_PV_W, a1), cr_pv_store(out + i + 2 * CR_PV_W, a2), cr_pv_store(out + i + 3 * CR_PV_W, a3);
    }
    for (; i + CR_PV_W <= n; i += CR_PV_W) {
        cr_pv_vec a0 = cr_pv_zero();
        for (int j = j0; j <= j1; j++)
            if (!skip_zero || p[j] != 0.0f) a0 = cr_pv_step(a0, p[j], v + (size_t)j * stride + i);
        cr_pv_store(out + i, a0);
    }
    if (i < n) cr_attn_pv_scalar(p, v + i, stride, j0, j1, n - i, skip_zero, out + i);
}
#else
#define cr_attn_pv cr_attn_pv_scalar
#endif
/* One row of a matrix as floats (embedding lookups, weight analyses). */
static void cr_mat_row(const cr_mat *w, int64_t r, float *out) {
    if (w->trans) {
        for (int64_t c = 0; c < w->cols; c++) {
            const unsigned char *p = w->data + ((uint64_t)c * (uint64_t)w->rows + (uint64_t)r) * (w->dtype == CR_F32 ? 4 : 2);
            out[c] = w->dtype == CR_F32 ? ((const float *)(const void *)p)[0]
                   : w->dtype == CR_F16 ? cr_f16_to_f32(cr_rd16(p)) : cr_bf16_to_f32(cr_rd16(p));
        }
        return;
    }
    const unsigned char *p = w->data + (uint64_t)r * cr_row_bytes(w->dtype, (uint64_t)w->cols);
    switch (w->dtype) {
    case CR_F32: memcpy(out, p, (size_t)w->cols * 4); break;
    case CR_F16: for (int64_t c = 0; c < w->cols; c++) out[c] = cr_f16_to_f32(cr_rd16(p + 2 * c)); break;
    case CR_BF16: for (int64_t c = 0; c < w->cols; c++) out[c] = cr_bf16_to_f32(cr_rd16(p + 2 * c)); break;
    case CR_Q8_0: cr_dequantize_q8_0(p, out, w->cols); break;
    }
}

/* y[t, r] = sum_c W[r, c] x[t, c] (+ bias[r]) for t < n.  xq holds x quantized to Q8_0
 * (one row of cols/32 blocks per position) when W is Q8_0 and not precise.  Rows are split
 * across threads; each weight row is read once for all n positions. */
static void cr_matmul(const cr_mat *w, const float *x, const unsigned char *xq, int n, float *y,
                      const float *bias, int n_threads, int reference, const cr_gemm_buf *gb) {
    const int64_t R = w->rows, C = w->cols;
    (void)n_threads;
    if (w->trans) {
        /* [cols, rows] storage: accumulate scaled rows, splitting output columns over threads. */
        const int64_t chunk = 64;
#pragma omp parallel for num_threads(cr_threads(n_threads)) schedule(static) if (R * C * n >= CR_PAR_MIN)
        for (int64_t r0 = 0; r0 < R; r0 += chunk) {
            int64_t r1 = r0 + chunk < R ? r0 + chunk : R;
            for (int t = 0; t < n; t++) {
                float *yt = y + (int64_t)t * R;
                for (int64_t r = r0; r < r1; r++) yt[r] = bias ? bias[r] : 0.0f;
                for (int64_t c = 0; c < C; c++) {
                    float xv = x[(int64_t)t * C + c];
                    if (w->dtype == CR_F32) {
                        const float *wr = (const float *)(const void *)w->data + c * R;
                        for (int64_t r = r0; r < r1; r++) yt[r] += xv * wr[r];
                    } else {
                        const unsigned char *wr = w->data + 2 * (uint64_t)(c * R);
                        if (w->dtype == CR_F16)
                            for (int64_t r = r0; r < r1; r++) yt[r] += xv * cr_f16_to_f32(cr_rd16(wr + 2 * r));
                        else
                            for (int64_t r = r0; r < r1; r++) yt[r] += xv * cr_bf16_to_f32(cr_rd16(wr + 2 * r));
                    }
                }
            }
        }
        return;
    }
    const uint64_t rb = cr_row_bytes(w->dtype, (uint64_t)C);
    const uint64_t xqb = cr_row_bytes(CR_Q8_0, (uint64_t)C);
    if (w->dtype == CR_Q8_0 && xq && !reference) {
        const int64_t R4 = R / 4 * 4;
#if defined(CR_GEMM_Q8)
        /* Several tokens: the tiled product, in slices of at most CR_GEMM_MAX_TOK tokens. */
        if (gb && n >= 2 && C / CR_QK <= gb->max_nb) {
            for (int t0 = 0; t0 < n; t0 += gb->max_tok) {
                int nt = n - t0 < gb->max_tok ? n - t0 : gb->max_tok;
                cr_gemm_q8(w, xq + (uint64_t)t0 * xqb, nt, y + (int64_t)t0 * R, bias, n_threads, gb);
            }
        } else
#else
        (void)gb;
#endif
        /* Groups of four rows share every activation block they read. */
#pragma omp parallel for num_threads(cr_threads(n_threads)) schedule(static) if (R * C * n >= CR_PAR_MIN)
        for (int64_t r = 0; r < R4; r += 4) {
            const unsigned char *wr = w->data + (uint64_t)r * rb;
            for (int t = 0; t < n; t++) {
                float v[4];
                cr_dot_q8_x4(wr, (size_t)rb, xq + (uint64_t)t * xqb, C, v);
                for (int k = 0; k < 4; k++) y[(int64_t)t * R + r + k] = v[k] + (bias ? bias[r + k] : 0.0f);
            }
        }
        for (int64_t r = R4; r < R; r++)
            for (int t = 0; t < n; t++) y[(int64_t)t * R + r] = cr_dot_q8(w->data + (uint64_t)r * rb, xq + (uint64_t)t * xqb, C) + (bias ? bias[r] : 0.0f);
        return;
    }
#pragma omp parallel for num_threads(cr_threads(n_threads)) schedule(static) if (R * C * n >= CR_PAR_MIN)
    for (int64_t r = 0; r < R; r++) {
        const unsigned char *wr = w->data + (uint64_t)r * rb;
        float b = bias ? bias[r] : 0.0f;
        int t = 0;
        if (w->dtype == CR_F32 && !reference)
            for (; t + 4 <= n; t += 4) { /* four tokens share each load of the row, same bits as cr_dot_f32 */
                float v4[4];
                cr_dot_f32_x4((const float *)(const void *)wr, x + (int64_t)t * C, (size_t)C, C, v4);
                for (int k = 0; k < 4; k++) y[(int64_t)(t + k) * R + r] = v4[k] + b;
            }
        for (; t < n; t++) {
            const float *xt = x + (int64_t)t * C;
            float v;
            if (reference) { /* the scalar twins, for selftest */
                switch (w->dtype) {
                case CR_F32: v = cr_dot_f32_scalar((const float *)(const void *)wr, xt, C); break;
                case CR_F16: v = cr_dot_f16_scalar((const uint16_t *)(const void *)wr, xt, C); break;
                case CR_BF16: v = cr_dot_bf16_scalar((const uint16_t *)(const void *)wr, xt, C); break;
                default: v = xq ? cr_dot_q8_scalar(wr, xq + (uint64_t)t * xqb, C) : cr_dot_q8f_scalar(wr, xt, C); break;
                }
            } else {
                switch (w->dtype) {
                case CR_F32: v = cr_dot_f32((const float *)(const void *)wr, xt, C); break;
                case CR_F16: v = cr_dot_f16((const uint16_t *)(const void *)wr, xt, C); break;
                case CR_BF16: v = cr_dot_bf16((const uint16_t *)(const void *)wr, xt, C); break;
                default: v = xq ? cr_dot_q8(wr, xq + (uint64_t)t * xqb, C) : cr_dot_q8f(wr, xt, C); break;
                }
            }
            y[(int64_t)t * R + r] = v + b;
        }
    }
}

/* ============================================================================================
 * 5. Models and forward pass
 * ============================================================================================ */

static const char *const cr_arch_names[CR_ARCH_COUNT] = {"gpt2", "llama", "mistral", "qwen2", "gemma", "gpt_neox", "phi"};
/* llama.cpp's architecture names, used in GGUF files (mistral is stored as llama). */
static const char *const cr_arch_gguf[CR_ARCH_COUNT] = {"gpt2", "llama", "llama", "qwen2", "gemma", "gptneox", "phi2"};

const char *cr_arch_name(int arch) { return arch >= 0 && arch < CR_ARCH_COUNT ? cr_arch_names[arch] : "unknown"; }

/* Token counts of a corpus (section 7 builds and saves them; GGUF files can carry them). */
struct cr_unigram {
    int32_t n_vocab;
    uint64_t total;
    uint64_t *counts;            /* [n_vocab] */
};

typedef struct cr_layer {
    float *attn_norm_w, *attn_norm_b, *ffn_norm_w, *ffn_norm_b;   /* [d] (b: NULL for RMSNorm) */
    cr_mat wqkv;                                                   /* fused [(H+2K)*hd, d], or rows=0 */
    float *bqkv;
    cr_mat wq, wk, wv, wo;                                         /* [H*hd, d], [K*hd, d], [K*hd, d], [d, H*hd] */
    float *bq, *bk, *bv, *bo;
    cr_mat w_gate, w_up, w_down;                                   /* [f, d], [f, d], [d, f] */
    float *b_up, *b_down;
} cr_layer;

struct cr_model {
    cr_config cfg;
    cr_ttable tt;
    cr_layer *layers;              /* [n_layers] */
    cr_mat tok_embd;               /* [V, d] */
    cr_mat pos_embd;               /* [n_ctx, d] or rows=0 */
    cr_mat output;                 /* [V, d] (tok_embd when tied) */
    float *out_norm_w, *out_norm_b;/* [d] */
    float *b_out;                  /* [V] or NULL */
    int qkv_per_head;              /* fused qkv rows grouped per head as [q k v] (HF GPT-NeoX) */
    int sliding_window;            /* 0: none */
    cr_tokenizer *tok;
    cr_unigram *unigram;           /* counts carried in GGUF metadata, or NULL */
    void **owned;                  /* small float vectors and realigned copies */
    int n_owned, cap_owned;
    char *path;
};

static void *cr_model_own(cr_model *m, void *p) {
    if (!p) return NULL;
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? m->cap_owned * 2 : 64;
        void **no = realloc(m->owned, (size_t)cap * sizeof *no);
        if (!no) { free(p); return NULL; }
        m->owned = no;
        m->cap_owned = cap;
    }
    m->owned[m->n_owned++] = p;
    return p;
}

const cr_config *cr_model_config(const cr_model *m) { return &m->cfg; }
const cr_tokenizer *cr_model_tokenizer(const cr_model *m) { return m->tok; }
const cr_unigram *cr_model_unigram(const cr_model *m) { return m->unigram; }

size_t cr_model_weight_bytes(const cr_model *m) {
    size_t s = 0;
    for (int i = 0; i < m->tt.n; i++) s += (size_t)m->tt.t[i].nbytes;
    return s;
}

static void cr_count_mat(const cr_mat *w, int counts[4]) { if (w->rows && w->dtype >= 0 && w->dtype < 4) counts[w->dtype]++; }

void cr_model_dtype_counts(const cr_model *m, int counts[4]) {
    memset(counts, 0, 4 * sizeof *counts);
    cr_count_mat(&m->tok_embd, counts);
    cr_count_mat(&m->pos_embd, counts);
    if (m->output.data != m->tok_embd.data) cr_count_mat(&m->output, counts);
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const cr_layer *L = &m->layers[l];
        const cr_mat *ms[] = {&L->wqkv, &L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) cr_count_mat(ms[i], counts);
    }
}

void cr_model_close(cr_model *m) {
    if (!m) return;
    cr_tokenizer_close(m->tok);
    if (m->unigram) free(m->unigram->counts), free(m->unigram);
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    cr_ttable_free(&m->tt);
    free(m->path);
    free(m);
}

/* ---- Hugging Face names -> canonical names ---------------------------------------------------
 * One pattern per tensor; "%d" stands for the layer.  HF GPT-2 may carry a "transformer."
 * prefix, which is stripped before matching. */
typedef struct cr_name_map { const char *canon, *hf; } cr_name_map;

static const cr_name_map cr_names_gpt2[] = {
    {"token_embd.weight", "wte.weight"}, {"position_embd.weight", "wpe.weight"},
    {"output_norm.weight", "ln_f.weight"}, {"output_norm.bias", "ln_f.bias"}, {"output.weight", "lm_head.weight"},
    {"blk.%d.attn_norm.weight", "h.%d.ln_1.weight"}, {"blk.%d.attn_norm.bias", "h.%d.ln_1.bias"},
    {"blk.%d.attn_qkv.weight", "h.%d.attn.c_attn.weight"}, {"blk.%d.attn_qkv.bias", "h.%d.attn.c_attn.bias"},
    {"blk.%d.attn_output.weight", "h.%d.attn.c_proj.weight"}, {"blk.%d.attn_output.bias", "h.%d.attn.c_proj.bias"},
    {"blk.%d.ffn_norm.weight", "h.%d.ln_2.weight"}, {"blk.%d.ffn_norm.bias", "h.%d.ln_2.bias"},
    {"blk.%d.ffn_up.weight", "h.%d.mlp.c_fc.weight"}, {"blk.%d.ffn_up.bias", "h.%d.mlp.c_fc.bias"},
    {"blk.%d.ffn_down.weight", "h.%d.mlp.c_proj.weight"}, {"blk.%d.ffn_down.bias", "h.%d.mlp.c_proj.bias"},
    {NULL, NULL}};
static const cr_name_map cr_names_llama[] = {
    {"token_embd.weight", "model.embed_tokens.weight"}, {"output_norm.weight", "model.norm.weight"},
    {"output.weight", "lm_head.weight"},
    {"blk.%d.attn_norm.weight", "model.layers.%d.input_layernorm.weight"},
    {"blk.%d.attn_q.weight", "model.layers.%d.self_attn.q_proj.weight"}, {"blk.%d.attn_q.bias", "model.layers.%d.self_attn.q_proj.bias"},
    {"blk.%d.attn_k.weight", "model.layers.%d.self_attn.k_proj.weight"}, {"blk.%d.attn_k.bias", "model.layers.%d.self_attn.k_proj.bias"},
    {"blk.%d.attn_v.weight", "model.layers.%d.self_attn.v_proj.weight"}, {"blk.%d.attn_v.bias", "model.layers.%d.self_attn.v_proj.bias"},
    {"blk.%d.attn_output.weight", "model.layers.%d.self_attn.o_proj.weight"}, {"blk.%d.attn_output.bias", "model.layers.%d.self_attn.o_proj.bias"},
    {"blk.%d.ffn_norm.weight", "model.layers.%d.post_attention_layernorm.weight"},
    {"blk.%d.ffn_gate.weight", "model.layers.%d.mlp.gate_proj.weight"},
    {"blk.%d.ffn_up.weight", "model.layers.%d.mlp.up_proj.weight"},
    {"blk.%d.ffn_down.weight", "model.layers.%d.mlp.down_proj.weight"},
    {NULL, NULL}};
static const cr_name_map cr_names_neox[] = {
    {"token_embd.weight", "gpt_neox.embed_in.weight"}, {"output.weight", "embed_out.weight"},
    {"output_norm.weight", "gpt_neox.final_layer_norm.weight"}, {"output_norm.bias", "gpt_neox.final_layer_norm.bias"},
    {"blk.%d.attn_norm.weight", "gpt_neox.layers.%d.input_layernorm.weight"}, {"blk.%d.attn_norm.bias", "gpt_neox.layers.%d.input_layernorm.bias"},
    {"blk.%d.attn_qkv.weight", "gpt_neox.layers.%d.attention.query_key_value.weight"}, {"blk.%d.attn_qkv.bias", "gpt_neox.layers.%d.attention.query_key_value.bias"},
    {"blk.%d.attn_output.weight", "gpt_neox.layers.%d.attention.dense.weight"}, {"blk.%d.attn_output.bias", "gpt_neox.layers.%d.attention.dense.bias"},
    {"blk.%d.ffn_norm.weight", "gpt_neox.layers.%d.post_attention_layernorm.weight"}, {"blk.%d.ffn_norm.bias", "gpt_neox.layers.%d.post_attention_layernorm.bias"},
    {"blk.%d.ffn_up.weight", "gpt_neox.layers.%d.mlp.dense_h_to_4h.weight"}, {"blk.%d.ffn_up.bias", "gpt_neox.layers.%d.mlp.dense_h_to_4h.bias"},
    {"blk.%d.ffn_down.weight", "gpt_neox.layers.%d.mlp.dense_4h_to_h.weight"}, {"blk.%d.ffn_down.bias", "gpt_neox.layers.%d.mlp.dense_4h_to_h.bias"},
    {NULL, NULL}};
static const cr_name_map cr_names_phi[] = {
    {"token_embd.weight", "model.embed_tokens.weight"},
    {"output_norm.weight", "model.final_layernorm.weight"}, {"output_norm.bias", "model.final_layernorm.bias"},
    {"output.weight", "lm_head.weight"}, {"output.bias", "lm_head.bias"},
    {"blk.%d.attn_norm.weight", "model.layers.%d.input_layernorm.weight"}, {"blk.%d.attn_norm.bias", "model.layers.%d.input_layernorm.bias"},
    {"blk.%d.attn_q.weight", "model.layers.%d.self_attn.q_proj.weight"}, {"blk.%d.attn_q.bias", "model.layers.%d.self_attn.q_proj.bias"},
    {"blk.%d.attn_k.weight", "model.layers.%d.self_attn.k_proj.weight"}, {"blk.%d.attn_k.bias", "model.layers.%d.self_attn.k_proj.bias"},
    {"blk.%d.attn_v.weight", "model.layers.%d.self_attn.v_proj.weight"}, {"blk.%d.attn_v.bias", "model.layers.%d.self_attn.v_proj.bias"},
    {"blk.%d.attn_output.weight", "model.layers.%d.self_attn.dense.weight"}, {"blk.%d.attn_output.bias", "model.layers.%d.self_attn.dense.bias"},
    {"blk.%d.ffn_up.weight", "model.layers.%d.mlp.fc1.weight"}, {"blk.%d.ffn_up.bias", "model.layers.%d.mlp.fc1.bias"},
    {"blk.%d.ffn_down.weight", "model.layers.%d.mlp.fc2.weight"}, {"blk.%d.ffn_down.bias", "model.layers.%d.mlp.fc2.bias"},
    {NULL, NULL}};

static const cr_name_map *cr_names_for(int arch) {
    switch (arch) {
    case CR_ARCH_GPT2: return cr_names_gpt2;
    case CR_ARCH_GPT_NEOX: return cr_names_neox;
    case CR_ARCH_PHI: return cr_names_phi;
    default: return cr_names_llama;
    }
}

/* Matches name against a pattern with at most one "%d"; returns the layer (0 if none) or -1. */
static int cr_pattern_match(const char *pat, const char *name) {
    const char *pd = strstr(pat, "%d");
    if (!pd) return strcmp(pat, name) == 0 ? 0 : -1;
    size_t pre = (size_t)(pd - pat);
    if (strncmp(pat, name, pre) != 0) return -1;
    const char *p = name + pre;
    if (*p < '0' || *p > '9') return -1;
    long v = 0;
    while (*p >= '0' && *p <= '9') { v = v * 10 + (*p - '0'); if (v > CR_MAX_LAYERS) return -1; p++; }
    return strcmp(p, pd + 2) == 0 ? (int)v : -1;
}

static int cr_hf_canonicalize(cr_model *m, cr_err *err) {
    const cr_name_map *map = cr_names_for(m->cfg.arch);
    for (int i = 0; i < m->tt.n; i++) {
        cr_tinfo *t = &m->tt.t[i];
        const char *name = t->name;
        if (m->cfg.arch == CR_ARCH_GPT2 && !strncmp(name, "transformer.", 12)) name += 12;
        for (const cr_name_map *e = map; e->canon; e++) {
            int layer = cr_pattern_match(e->hf, name);
            if (layer < 0) continue;
            char buf[128];
            snprintf(buf, sizeof buf, e->canon, layer);
            char *nn = cr_strndup(buf, strlen(buf));
            if (!nn) return cr_fail(err, CR_ENOMEM, "out of memory");
            /* GPT-2's Conv1D stores [in, out]; the canonical form is [out, in]. */
            if (m->cfg.arch == CR_ARCH_GPT2 && t->ndim == 2 && strstr(buf, "blk.")) {
                int64_t a = t->shape[0];
                t->shape[0] = t->shape[1], t->shape[1] = a;
                t->transposed = 1;
            }
            free(t->name);
            t->name = nn;
            break;
        }
    }
    return CR_OK;
}

/* ---- config ------------------------------------------------------------------------------- */

static int cr_cfg_int(const js_doc *d, const js_node *o, const char *key, int *out, int lo, int hi, const char *path, cr_err *err) {
    double v;
    if (!js_get_num(d, o, key, &v)) return 0;
    if (v != floor(v) || v < lo || v > hi) { cr_fail(err, CR_EFORMAT, "%s: \"%s\" = %g is out of range [%d, %d]", path, key, v, lo, hi); return -1; }
    *out = (int)v;
    return 1;
}

static int cr_config_from_hf(cr_config *c, const char *path, const char *text, size_t len, cr_err *err) {
    js_doc doc;
    int rc = js_parse(&doc, text, len, path, err);
    if (rc) return rc;
    const js_node *root = js_at(&doc, 0);
    const char *mt = js_str(&doc, js_get(&doc, root, "model_type"));
    memset(c, 0, sizeof *c);
    c->arch = -1;
    for (int a = 0; mt && a < CR_ARCH_COUNT; a++)
        if (!strcmp(mt, cr_arch_names[a])) c->arch = a;
    if (c->arch < 0) {
        rc = cr_fail(err, CR_EUNSUPPORTED, "%s: unknown architecture \"%s\" (supported: gpt2, llama, mistral, qwen2, gemma, gpt_neox, phi)", path, mt ? mt : "(no model_type)");
        goto done;
    }
    const js_node *rp = js_get(&doc, root, "rope_parameters");
    if (!rp) rp = js_get(&doc, root, "rope_scaling");
    struct { const char *key; int *dst; int lo, hi; } ints_gpt2[] = {
        {"n_embd", &c->d_model, 1, CR_MAX_DIM}, {"n_layer", &c->n_layers, 1, CR_MAX_LAYERS}, {"n_head", &c->n_heads, 1, 4096},
        {"n_positions", &c->n_ctx, 1, CR_MAX_CTX}, {"vocab_size", &c->n_vocab, 1, CR_MAX_VOCAB}}, ints_std[] = {
        {"hidden_size", &c->d_model, 1, CR_MAX_DIM}, {"num_hidden_layers", &c->n_layers, 1, CR_MAX_LAYERS},
        {"num_attention_heads", &c->n_heads, 1, 4096}, {"max_position_embeddings", &c->n_ctx, 1, CR_MAX_CTX},
        {"vocab_size", &c->n_vocab, 1, CR_MAX_VOCAB}, {"intermediate_size", &c->d_mlp, 1, CR_MAX_DIM}};
    int is_gpt2 = c->arch == CR_ARCH_GPT2;
    size_t nints = is_gpt2 ? sizeof ints_gpt2 / sizeof ints_gpt2[0] : sizeof ints_std / sizeof ints_std[0];
    for (size_t i = 0; i < nints; i++) {
        int r = cr_cfg_int(&doc, root, is_gpt2 ? ints_gpt2[i].key : ints_std[i].key, is_gpt2 ? ints_gpt2[i].dst : ints_std[i].dst,
                           is_gpt2 ? ints_gpt2[i].lo : ints_std[i].lo, is_gpt2 ? ints_gpt2[i].hi : ints_std[i].hi, path, err);
        if (r < 0) { rc = CR_EFORMAT; goto done; }
        if (r == 0) { rc = cr_fail(err, CR_EFORMAT, "%s: missing \"%s\"", path, is_gpt2 ? ints_gpt2[i].key : ints_std[i].key); goto done; }
    }
    c->n_kv_heads = c->n_heads;
    if (cr_cfg_int(&doc, root, "num_key_value_heads", &c->n_kv_heads, 1, 4096, path, err) < 0) { rc = CR_EFORMAT; goto done; }
    if (c->d_model % c->n_heads) { rc = cr_fail(err, CR_EFORMAT, "%s: hidden size %d is not divisible by %d heads", path, c->d_model, c->n_heads); goto done; }
    c->head_dim = c->d_model / c->n_heads;
    if (cr_cfg_int(&doc, root, "head_dim", &c->head_dim, 1, 65536, path, err) < 0) { rc = CR_EFORMAT; goto done; }
    if (c->n_heads % c->n_kv_heads) { rc = cr_fail(err, CR_EFORMAT, "%s: %d heads are not divisible into %d key/value heads", path, c->n_heads, c->n_kv_heads); goto done; }
    double v;
    const char *act = js_str(&doc, js_get(&doc, root, "hidden_activation"));
    if (!act) act = js_str(&doc, js_get(&doc, root, "hidden_act"));
    if (!act) act = js_str(&doc, js_get(&doc, root, "activation_function"));
    c->bos_id = c->eos_id = -1;
    if (js_get_num(&doc, root, "bos_token_id", &v) && v >= 0 && v < c->n_vocab) c->bos_id = (int32_t)v;
    if (js_get_num(&doc, root, "eos_token_id", &v) && v >= 0 && v < c->n_vocab) c->eos_id = (int32_t)v;
    c->rope_theta = 10000.0f;
    if (js_get_num(&doc, root, "rope_theta", &v) || js_get_num(&doc, rp, "rope_theta", &v) || js_get_num(&doc, root, "rotary_emb_base", &v)) c->rope_theta = cr_to_float(v);
    const char *rtype = js_str(&doc, js_get(&doc, rp, "rope_type"));
    if (!rtype) rtype = js_str(&doc, js_get(&doc, rp, "type"));
    if (rtype && strcmp(rtype, "default") != 0) { rc = cr_fail(err, CR_EUNSUPPORTED, "%s: rope scaling type \"%s\" is not supported", path, rtype); goto done; }
    double partial = 1.0;
    if (js_get_num(&doc, root, "rotary_pct", &v) || js_get_num(&doc, rp, "partial_rotary_factor", &v) || js_get_num(&doc, root, "partial_rotary_factor", &v)) partial = v;
    if (partial <= 0 || partial > 1) { rc = cr_fail(err, CR_EFORMAT, "%s: partial rotary factor %g outside (0, 1]", path, partial); goto done; }
    c->tied_embeddings = js_get_bool(&doc, root, "tie_word_embeddings", c->arch == CR_ARCH_GPT2 || c->arch == CR_ARCH_GEMMA);
    switch (c->arch) {
    case CR_ARCH_GPT2: {
        c->d_mlp = 4 * c->d_model;
        if (cr_cfg_int(&doc, root, "n_inner", &c->d_mlp, 1, CR_MAX_DIM, path, err) < 0) { rc = CR_EFORMAT; goto done; }
        c->norm_eps = js_get_num(&doc, root, "layer_norm_epsilon", &v) ? cr_to_float(v) : 1e-5f;
        c->act = act && !strcmp(act, "gelu") ? 0 : 1;
        break;
    }
    case CR_ARCH_GPT_NEOX:
        c->norm_eps = js_get_num(&doc, root, "layer_norm_eps", &v) ? cr_to_float(v) : 1e-5f;
        c->parallel_block = js_get_bool(&doc, root, "use_parallel_residual", 1);
        c->rotary_dims = (int)(c->head_dim * partial);
        c->act = act && strcmp(act, "gelu") ? 1 : 0;
        break;
    case CR_ARCH_PHI:
        if (js_get_bool(&doc, root, "qk_layernorm", 0)) { rc = cr_fail(err, CR_EUNSUPPORTED, "%s: phi with qk_layernorm is not supported", path); goto done; }
        c->norm_eps = js_get_num(&doc, root, "layer_norm_eps", &v) ? cr_to_float(v) : 1e-5f;
        c->parallel_block = 1;
        c->rotary_dims = (int)(c->head_dim * partial);
        c->act = act && !strcmp(act, "gelu") ? 0 : 1;
        break;
    default: /* llama family and gemma */
        c->rms_norm = 1;
        c->gated_mlp = 1;
        c->norm_eps = js_get_num(&doc, root, "rms_norm_eps", &v) ? cr_to_float(v) : 1e-6f;
        c->rotary_dims = c->head_dim;
        c->act = c->arch == CR_ARCH_GEMMA ? 1 : 2;
        if (act && (!strcmp(act, "gelu_pytorch_tanh") || !strcmp(act, "gelu_new"))) c->act = 1;
        else if (act && !strcmp(act, "gelu")) c->act = 0;
        else if (act && strcmp(act, "silu")) { rc = cr_fail(err, CR_EUNSUPPORTED, "%s: activation \"%s\" is not supported", path, act); goto done; }
        /* Mistral's window always applies; Qwen2 only says so with use_sliding_window. */
        if ((c->arch == CR_ARCH_MISTRAL || (c->arch == CR_ARCH_QWEN2 && js_get_bool(&doc, root, "use_sliding_window", 0))) &&
            cr_cfg_int(&doc, root, "sliding_window", &c->sliding_window, 1, CR_MAX_CTX, path, err) < 0) { rc = CR_EFORMAT; goto done; }
        break;
    }
    if (c->rotary_dims % 2) { rc = cr_fail(err, CR_EFORMAT, "%s: rotary dimension %d is odd", path, c->rotary_dims); goto done; }
done:
    js_free(&doc);
    return rc;
}

/* GGUF hyperparameters, keyed by llama.cpp's architecture name. */
static int cr_config_from_gguf(cr_config *c, const cr_gguf *g, cr_err *err) {
    char arch[64], key[128];
    memset(c, 0, sizeof *c);
    if (!cr_gguf_strval(g, "general.architecture", arch, sizeof arch)) return cr_fail(err, CR_EFORMAT, "%s: no general.architecture", g->path);
    c->arch = -1;
    for (int a = 0; a < CR_ARCH_COUNT; a++)
        if (!strcmp(arch, cr_arch_gguf[a]) && c->arch < 0) c->arch = a;
    if (c->arch < 0) return cr_fail(err, CR_EUNSUPPORTED, "%s: unknown architecture \"%s\" (supported: gpt2, llama, qwen2, gemma, gptneox, phi2)", g->path, arch);
    double v;
    struct { const char *suffix; int *dst; int lo, hi, required; } ints[] = {
        {"embedding_length", &c->d_model, 1, CR_MAX_DIM, 1}, {"block_count", &c->n_layers, 1, CR_MAX_LAYERS, 1},
        {"attention.head_count", &c->n_heads, 1, 4096, 1}, {"context_length", &c->n_ctx, 1, CR_MAX_CTX, 1},
        {"feed_forward_length", &c->d_mlp, 1, CR_MAX_DIM, 1}, {"attention.head_count_kv", &c->n_kv_heads, 1, 4096, 0},
        {"attention.key_length", &c->head_dim, 1, 65536, 0}, {"rope.dimension_count", &c->rotary_dims, 0, 65536, 0},
        {"attention.sliding_window", &c->sliding_window, 0, CR_MAX_CTX, 0}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        snprintf(key, sizeof key, "%s.%s", arch, ints[i].suffix);
        if (!cr_gguf_num(g, key, &v)) {
            if (ints[i].required) return cr_fail(err, CR_EFORMAT, "%s: missing metadata %s", g->path, key);
            continue;
        }
        if (v != floor(v) || v < ints[i].lo || v > ints[i].hi) return cr_fail(err, CR_EFORMAT, "%s: metadata %s = %g is out of range", g->path, key, v);
        *ints[i].dst = (int)v;
    }
    if (!c->n_kv_heads) c->n_kv_heads = c->n_heads;
    if (!c->head_dim) {
        if (c->d_model % c->n_heads) return cr_fail(err, CR_EFORMAT, "%s: embedding length %d not divisible by %d heads", g->path, c->d_model, c->n_heads);
        c->head_dim = c->d_model / c->n_heads;
    }
    if (c->n_heads % c->n_kv_heads) return cr_fail(err, CR_EFORMAT, "%s: %d heads not divisible into %d key/value heads", g->path, c->n_heads, c->n_kv_heads);
    snprintf(key, sizeof key, "%s.rope.freq_base", arch);
    c->rope_theta = cr_gguf_num(g, key, &v) ? cr_to_float(v) : 10000.0f;
    c->rms_norm = c->arch == CR_ARCH_LLAMA || c->arch == CR_ARCH_QWEN2 || c->arch == CR_ARCH_GEMMA;
    snprintf(key, sizeof key, c->rms_norm ? "%s.attention.layer_norm_rms_epsilon" : "%s.attention.layer_norm_epsilon", arch);
    if (!cr_gguf_num(g, key, &v)) return cr_fail(err, CR_EFORMAT, "%s: missing metadata %s", g->path, key);
    c->norm_eps = cr_to_float(v);
    c->gated_mlp = c->rms_norm;
    c->act = c->arch == CR_ARCH_GEMMA || c->arch == CR_ARCH_GPT2 || c->arch == CR_ARCH_PHI ? 1 : c->arch == CR_ARCH_GPT_NEOX ? 0 : 2;
    c->parallel_block = c->arch == CR_ARCH_PHI;
    if (c->arch == CR_ARCH_GPT_NEOX) {
        snprintf(key, sizeof key, "%s.use_parallel_residual", arch);
        c->parallel_block = cr_gguf_num(g, key, &v) ? v != 0 : 1;
    }
    if (c->arch == CR_ARCH_GPT2) c->rotary_dims = 0;
    else if (!c->rotary_dims) c->rotary_dims = c->head_dim;
    if (c->rotary_dims > c->head_dim || c->rotary_dims % 2) return cr_fail(err, CR_EFORMAT, "%s: rope dimension %d does not fit head size %d", g->path, c->rotary_dims, c->head_dim);
    /* llama.cpp stores llama-arch q/k permuted for rotation of adjacent pairs. */
    c->rope_interleaved = c->arch == CR_ARCH_LLAMA;
    c->bos_id = c->eos_id = -1;
    if (cr_gguf_num(g, "tokenizer.ggml.bos_token_id", &v) && v >= 0 && v < CR_MAX_VOCAB) c->bos_id = (int32_t)v;
    if (cr_gguf_num(g, "tokenizer.ggml.eos_token_id", &v) && v >= 0 && v < CR_MAX_VOCAB) c->eos_id = (int32_t)v;
    return CR_OK;
}

/* ---- building the weights from the canonical tensor table ---------------------------------- */

static int cr_get_mat(cr_model *m, cr_mat *out, const char *name, int64_t rows, int64_t cols, int required, cr_err *err) {
    memset(out, 0, sizeof *out);
    const cr_tinfo *t = cr_ttable_find(&m->tt, name);
    if (!t) return required ? cr_fail(err, CR_EFORMAT, "%s: missing tensor '%s'", m->path, name) : CR_OK;
    if (t->dtype < 0) return cr_fail(err, CR_EUNSUPPORTED, "%s: tensor '%s' has a dtype confreg does not read", m->path, name);
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols)
        return cr_fail(err, CR_EFORMAT, "%s: tensor '%s' has shape [%lld, %lld] (ndim %d) but the config needs [%lld, %lld]", m->path, name,
                       (long long)t->shape[0], (long long)(t->ndim > 1 ? t->shape[1] : 0), t->ndim, (long long)rows, (long long)cols);
    out->dtype = t->dtype;
    out->rows = rows;
    out->cols = cols;
    out->trans = t->transposed;
    out->data = t->data;
    /* A misaligned float array (possible in safetensors) gets an aligned copy in its own dtype. */
    size_t align = t->dtype == CR_F32 ? 4 : t->dtype == CR_Q8_0 ? 1 : 2;
    if ((uintptr_t)t->data % align) {
        void *cp = cr_model_own(m, malloc((size_t)t->nbytes));
        if (!cp) return cr_fail(err, CR_ENOMEM, "out of memory");
        memcpy(cp, t->data, (size_t)t->nbytes);
        out->data = cp;
    }
    return CR_OK;
}

/* 1-D tensors (norms, biases) become small float arrays owned by the model. */
static int cr_get_vec(cr_model *m, float **out, const char *name, int64_t len, int required, float add, cr_err *err) {
    *out = NULL;
    const cr_tinfo *t = cr_ttable_find(&m->tt, name);
    if (!t) return required ? cr_fail(err, CR_EFORMAT, "%s: missing tensor '%s'", m->path, name) : CR_OK;
    if (t->dtype < 0 || t->dtype == CR_Q8_0) return cr_fail(err, CR_EUNSUPPORTED, "%s: vector '%s' has an unsupported dtype", m->path, name);
    if (t->ndim != 1 || t->shape[0] != len)
        return cr_fail(err, CR_EFORMAT, "%s: tensor '%s' has %d dims and %lld elements but the config needs %lld", m->path, name, t->ndim, (long long)t->shape[0], (long long)len);
    float *v = cr_model_own(m, cr_malloc((size_t)len, sizeof *v));
    if (!v) return cr_fail(err, CR_ENOMEM, "out of memory");
    for (int64_t i = 0; i < len; i++) {
        const unsigned char *p = t->data + i * (t->dtype == CR_F32 ? 4 : 2);
        float f;
        if (t->dtype == CR_F32) { uint32_t b = cr_rd32(p); memcpy(&f, &b, 4); }
        else f = t->dtype == CR_F16 ? cr_f16_to_f32(cr_rd16(p)) : cr_bf16_to_f32(cr_rd16(p));
        v[i] = f + add;
    }
    *out = v;
    return CR_OK;
}

static int cr_model_build(cr_model *m, int hf_gemma_norm, cr_err *err) {
    cr_config *c = &m->cfg;
    const cr_tinfo *te = cr_ttable_find(&m->tt, "token_embd.weight");
    if (!te) return cr_fail(err, CR_EFORMAT, "%s: missing tensor 'token_embd.weight' (token embeddings)", m->path);
    const cr_tinfo *to = cr_ttable_find(&m->tt, "output.weight");
    /* The unembedding's width is the vocabulary (padded columns included). */
    if (to && to->ndim == 2) c->n_vocab = (int)(to->shape[0] > CR_MAX_VOCAB ? -1 : to->shape[0]);
    else if (te->ndim == 2) c->n_vocab = (int)(te->shape[0] > CR_MAX_VOCAB ? -1 : te->shape[0]);
    if (c->n_vocab <= 0) return cr_fail(err, CR_EFORMAT, "%s: vocabulary size out of range", m->path);
    /* GGUF writers duplicate a tied unembedding for llama.cpp's gpt2 loader; identical bytes
     * mean the model is tied after all. */
    if (to && to->ndim == 2 && te->ndim == 2 && to->dtype == te->dtype && to->shape[0] == te->shape[0] &&
        to->shape[1] == te->shape[1] && to->nbytes == te->nbytes && to->transposed == te->transposed &&
        memcmp(to->data, te->data, (size_t)to->nbytes) == 0)
        to = NULL;
    c->tied_embeddings = to == NULL;
    int64_t d = c->d_model, f = c->d_mlp, V = c->n_vocab, H = c->n_heads, K = c->n_kv_heads, hd = c->head_dim;
    if (c->rotary_dims > hd) return cr_fail(err, CR_EFORMAT, "%s: rotary dimension %d exceeds head size %lld", m->path, c->rotary_dims, (long long)hd);
    int rc;
    /* The embedding may have fewer rows than the (padded) unembedding; ids index both. */
    if (te->ndim != 2 || te->shape[0] < 1 || te->shape[0] > V)
        return cr_fail(err, CR_EFORMAT, "%s: token_embd.weight must be [n_vocab, %lld] with n_vocab <= %lld", m->path, (long long)d, (long long)V);
    if ((rc = cr_get_mat(m, &m->tok_embd, "token_embd.weight", te->shape[0], d, 1, err))) return rc;
    if (c->tied_embeddings) m->output = m->tok_embd;
    else if ((rc = cr_get_mat(m, &m->output, "output.weight", V, d, 1, err))) return rc;
    if (c->arch == CR_ARCH_GPT2 && (rc = cr_get_mat(m, &m->pos_embd, "position_embd.weight", c->n_ctx, d, 1, err))) return rc;
    float norm_add = hf_gemma_norm ? 1.0f : 0.0f;
    if ((rc = cr_get_vec(m, &m->out_norm_w, "output_norm.weight", d, 1, norm_add, err))) return rc;
    if ((rc = cr_get_vec(m, &m->out_norm_b, "output_norm.bias", d, !c->rms_norm, 0, err))) return rc;
    if ((rc = cr_get_vec(m, &m->b_out, "output.bias", c->n_vocab, 0, 0, err))) return rc;
    m->layers = cr_calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) return cr_fail(err, CR_ENOMEM, "out of memory");
    char nm[128];
#define CR_NAME(fmt) (snprintf(nm, sizeof nm, fmt, l), nm)
    for (int l = 0; l < c->n_layers; l++) {
        cr_layer *L = &m->layers[l];
        int has_bias = !c->rms_norm;
        if ((rc = cr_get_vec(m, &L->attn_norm_w, CR_NAME("blk.%d.attn_norm.weight"), d, 1, norm_add, err))) return rc;
        if ((rc = cr_get_vec(m, &L->attn_norm_b, CR_NAME("blk.%d.attn_norm.bias"), d, has_bias, 0, err))) return rc;
        if (c->arch != CR_ARCH_PHI) {
            if ((rc = cr_get_vec(m, &L->ffn_norm_w, CR_NAME("blk.%d.ffn_norm.weight"), d, 1, norm_add, err))) return rc;
            if ((rc = cr_get_vec(m, &L->ffn_norm_b, CR_NAME("blk.%d.ffn_norm.bias"), d, has_bias, 0, err))) return rc;
        }
        if (cr_ttable_find(&m->tt, CR_NAME("blk.%d.attn_qkv.weight"))) {
            if ((rc = cr_get_mat(m, &L->wqkv, nm, (H + 2 * K) * hd, d, 1, err))) return rc;
            if ((rc = cr_get_vec(m, &L->bqkv, CR_NAME("blk.%d.attn_qkv.bias"), (H + 2 * K) * hd, 0, 0, err))) return rc;
        } else {
            if ((rc = cr_get_mat(m, &L->wq, CR_NAME("blk.%d.attn_q.weight"), H * hd, d, 1, err))) return rc;
            if ((rc = cr_get_mat(m, &L->wk, CR_NAME("blk.%d.attn_k.weight"), K * hd, d, 1, err))) return rc;
            if ((rc = cr_get_mat(m, &L->wv, CR_NAME("blk.%d.attn_v.weight"), K * hd, d, 1, err))) return rc;
            if ((rc = cr_get_vec(m, &L->bq, CR_NAME("blk.%d.attn_q.bias"), H * hd, 0, 0, err))) return rc;
            if ((rc = cr_get_vec(m, &L->bk, CR_NAME("blk.%d.attn_k.bias"), K * hd, 0, 0, err))) return rc;
            if ((rc = cr_get_vec(m, &L->bv, CR_NAME("blk.%d.attn_v.bias"), K * hd, 0, 0, err))) return rc;
        }
        if ((rc = cr_get_mat(m, &L->wo, CR_NAME("blk.%d.attn_output.weight"), d, H * hd, 1, err))) return rc;
        if ((rc = cr_get_vec(m, &L->bo, CR_NAME("blk.%d.attn_output.bias"), d, 0, 0, err))) return rc;
        if (c->gated_mlp && (rc = cr_get_mat(m, &L->w_gate, CR_NAME("blk.%d.ffn_gate.weight"), f, d, 1, err))) return rc;
        if ((rc = cr_get_mat(m, &L->w_up, CR_NAME("blk.%d.ffn_up.weight"), f, d, 1, err))) return rc;
        if ((rc = cr_get_mat(m, &L->w_down, CR_NAME("blk.%d.ffn_down.weight"), d, f, 1, err))) return rc;
        if ((rc = cr_get_vec(m, &L->b_up, CR_NAME("blk.%d.ffn_up.bias"), f, 0, 0, err))) return rc;
        if ((rc = cr_get_vec(m, &L->b_down, CR_NAME("blk.%d.ffn_down.bias"), d, 0, 0, err))) return rc;
    }
#undef CR_NAME
    return CR_OK;
}

/* Tokenizer loaders live in section 6. */
static int cr_tokenizer_from_gguf(const cr_gguf *g, cr_tokenizer **out, cr_err *err);

/* Final consistency checks that no format-specific reader can skip. */
static int cr_config_check(const cr_config *c, const char *path, cr_err *err) {
    if (c->n_layers < 1 || c->n_layers > CR_MAX_LAYERS || c->d_model < 1 || c->n_heads < 1 || c->n_kv_heads < 1 ||
        c->head_dim < 1 || c->d_mlp < 1 || c->n_ctx < 1 || c->n_heads % c->n_kv_heads || c->rotary_dims < 0 ||
        c->rotary_dims > c->head_dim || c->rotary_dims % 2 || !(c->norm_eps >= 0 && c->norm_eps < 1) ||
        (c->rotary_dims && !(c->rope_theta > 1 && c->rope_theta < 1e30f)))
        return cr_fail(err, CR_EFORMAT, "%s: inconsistent model configuration (layers %d, d %d, heads %d/%d, head_dim %d, d_mlp %d, ctx %d, eps %g, rope theta %g)",
                       path, c->n_layers, c->d_model, c->n_heads, c->n_kv_heads, c->head_dim, c->d_mlp, c->n_ctx, (double)c->norm_eps, (double)c->rope_theta);
    if ((uint64_t)c->n_heads * (uint64_t)c->head_dim > CR_MAX_DIM) return cr_fail(err, CR_ERANGE, "%s: attention width too large", path);
    return CR_OK;
}

static int cr_model_open_hf(cr_model *m, const char *dir, cr_err *err) {
    char *cfg_path = cr_path_join(dir, "config.json"), *text = NULL;
    size_t len;
    int rc = cr_read_file(cfg_path, &text, &len, err);
    if (!rc) rc = cr_config_from_hf(&m->cfg, cfg_path, text, len, err);
    free(text);
    free(cfg_path);
    if (rc) return rc;
    char *st = cr_path_join(dir, "model.safetensors"), *idx = cr_path_join(dir, "model.safetensors.index.json");
    if (cr_is_file(st)) rc = cr_safetensors_load(&m->tt, st, err);
    else if (cr_is_file(idx)) rc = cr_safetensors_load_index(&m->tt, dir, idx, err);
    else rc = cr_fail(err, CR_EIO, "%s: no model.safetensors or model.safetensors.index.json", dir);
    free(st);
    free(idx);
    if (rc) return rc;
    m->cfg.source_format = "safetensors";
    m->qkv_per_head = m->cfg.arch == CR_ARCH_GPT_NEOX;
    m->sliding_window = m->cfg.sliding_window;
    if ((rc = cr_hf_canonicalize(m, err))) return rc;
    return cr_model_build(m, m->cfg.arch == CR_ARCH_GEMMA, err);
}

static int cr_model_open_gguf(cr_model *m, const char *path, cr_err *err) {
    int rc = cr_ttable_add_map(&m->tt, path, err);
    if (rc) return rc;
    cr_gguf g;
    rc = cr_gguf_parse(&g, &m->tt, 0, path, err);
    if (!rc) rc = cr_config_from_gguf(&m->cfg, &g, err);
    if (!rc) {
        m->cfg.source_format = "gguf";
        m->sliding_window = m->cfg.sliding_window;
        rc = cr_model_build(m, 0, err);
    }
    if (!rc && cr_gguf_find(&g, "tokenizer.ggml.tokens")) rc = cr_tokenizer_from_gguf(&g, &m->tok, err);
    const cr_gguf_kv *uc = rc ? NULL : cr_gguf_find(&g, "confreg.unigram_counts");
    if (uc) {
        if (uc->type != GG_ARR || uc->arr_type != GG_U64 || uc->count != (uint64_t)m->cfg.n_vocab)
            rc = cr_fail(err, CR_EFORMAT, "%s: confreg.unigram_counts must be %d u64 counts", path, m->cfg.n_vocab);
        else if (!(m->unigram = calloc(1, sizeof *m->unigram)) || !(m->unigram->counts = cr_malloc((size_t)uc->count, 8)))
            rc = cr_fail(err, CR_ENOMEM, "out of memory");
        for (uint64_t i = 0; !rc && i < uc->count; i++) m->unigram->counts[i] = cr_rd64(uc->val + 8 * i), m->unigram->total += m->unigram->counts[i];
        if (!rc) m->unigram->n_vocab = m->cfg.n_vocab;
    }
    cr_gguf_free(&g);
    return rc;
}

static int cr_model_open_llama2c(cr_model *m, const char *path, cr_err *err) {
    cr_l2c_header h = {0};
    int rc = cr_llama2c_load(&m->tt, path, &h, err);
    if (rc) return rc;
    cr_config *c = &m->cfg;
    c->arch = CR_ARCH_LLAMA;
    c->n_layers = h.n_layers, c->d_model = h.dim, c->n_heads = h.n_heads, c->n_kv_heads = h.n_kv_heads;
    c->head_dim = h.dim / h.n_heads, c->d_mlp = h.hidden, c->n_vocab = h.vocab, c->n_ctx = h.seq_len;
    c->rms_norm = 1, c->norm_eps = 1e-5f, c->gated_mlp = 1, c->act = 2;
    c->rotary_dims = c->head_dim, c->rope_theta = 10000.0f, c->rope_interleaved = 1;
    c->bos_id = 1, c->eos_id = 2;
    c->source_format = "llama2c";
    return cr_model_build(m, 0, err);
}

static int cr_file_is_gguf(const char *path) {
    FILE *f = fopen(path, "rb");
    char magic[4] = {0};
    if (!f) return 0;
    size_t n = fread(magic, 1, 4, f);
    fclose(f);
    return n == 4 && memcmp(magic, "GGUF", 4) == 0;
}

int cr_model_open(const char *path, const char *tokenizer_path, cr_model **out, cr_err *err) {
    *out = NULL;
    cr_model *m = calloc(1, sizeof *m);
    if (!m) return cr_fail(err, CR_ENOMEM, "out of memory");
    m->path = cr_strndup(path, strlen(path));
    int rc;
    char *tok_guess = NULL;
    if (cr_is_dir(path)) {
        rc = cr_model_open_hf(m, path, err);
        if (!rc && !tokenizer_path) {
            char *a = cr_path_join(path, "tokenizer.json"), *b = cr_path_join(path, "vocab.bpe");
            if (cr_is_file(a) || cr_is_file(b)) tok_guess = cr_strndup(path, strlen(path));
            free(a), free(b);
        }
    } else if (!cr_is_file(path)) {
        rc = cr_fail(err, CR_EIO, "%s: no such file or directory", path);
    } else if (cr_file_is_gguf(path) || cr_ends_with(path, ".gguf")) {
        rc = cr_model_open_gguf(m, path, err);
    } else {
        rc = cr_model_open_llama2c(m, path, err);
        if (!rc && !tokenizer_path) {
            /* llama2.c keeps its tokenizer beside the checkpoint: tokenizer.bin or tok<vocab>.bin. */
            char dir[4096], name[64];
            const char *slash = strrchr(path, '/');
            size_t dl = slash ? (size_t)(slash - path) : 0;
            if (dl >= sizeof dir) dl = 0;
            memcpy(dir, path, dl);
            dir[dl] = 0;
            if (!dl) strcpy(dir, ".");
            snprintf(name, sizeof name, "tok%d.bin", m->cfg.n_vocab);
            const char *cands[] = {name, "tokenizer.bin"};
            for (int i = 0; i < 2 && !tok_guess; i++) {
                char *p = cr_path_join(dir, cands[i]);
                if (p && cr_is_file(p)) tok_guess = p;
                else free(p);
            }
        }
    }
    if (!rc) rc = cr_config_check(&m->cfg, path, err);
    const char *tp = tokenizer_path ? tokenizer_path : tok_guess;
    if (!rc && tp) {
        cr_tokenizer_close(m->tok);
        m->tok = NULL;
        rc = cr_tokenizer_open_file(tp, m->cfg.n_vocab, &m->tok, err);
    }
    if (!rc && m->tok && cr_tokenizer_n_vocab(m->tok) > m->cfg.n_vocab)
        rc = cr_fail(err, CR_EFORMAT, "%s: tokenizer has %d tokens but the model only %d", tp ? tp : path, cr_tokenizer_n_vocab(m->tok), m->cfg.n_vocab);
    if (!rc && m->tok) {
        if (m->cfg.bos_id < 0) m->cfg.bos_id = cr_tokenizer_bos(m->tok);
        if (m->cfg.eos_id < 0) m->cfg.eos_id = cr_tokenizer_eos(m->tok);
    }
    free(tok_guess);
    if (rc) {
        cr_model_close(m);
        return rc;
    }
    *out = m;
    return CR_OK;
}

/* ---- the forward pass ------------------------------------------------------------------------ */

struct cr_session {
    const cr_model *m;
    int max_pos, n_threads, precise, reference;
    /* Activations for up to max_pos positions at once: */
    float *x;        /* [P, d]        residual stream */
    float *h;        /* [P, d]        normalized input of a sub-block */
    float *h2;       /* [P, d]        second normalized input (parallel blocks) */
    float *qkv;      /* [P, (H+2K)*hd] fused projection output */
    float *q;        /* [P, H*hd] */
    float *att;      /* [P, H*hd]     attention output before the output projection */
    float *o;        /* [P, d] */
    float *up;       /* [P, f] */
    float *gate;     /* [P, f] */
    float *scale;    /* [P]           final-norm scale */
    float *probs;    /* [H, P, P] on demand, for attention capture and edits */
    size_t probs_cap;
    float *scores;   /* [n_threads, P] */
    unsigned char *xq; /* [P, max_cols/32*34] quantized activations */
    cr_gemm_buf gemm;  /* scratch of the tiled Q8_0 product (xp NULL: none) */
    float *kc, *vc;  /* [L, P, K*hd]  key/value cache */
    double *rope_cos, *rope_sin; /* [P, rotary_dims/2] */
};

void cr_session_close(cr_session *s) {
    if (!s) return;
    float *bufs[] = {s->x, s->h, s->h2, s->qkv, s->q, s->att, s->o, s->up, s->gate, s->scale, s->probs, s->scores, s->kc, s->vc};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(s->xq);
    cr_gemm_buf_free(&s->gemm);
    free(s->rope_cos);
    free(s->rope_sin);
    free(s);
}

void cr_session_set_precise(cr_session *s, int precise) { s->precise = precise; }
/* Scalar twins instead of SIMD kernels in matrix products and attention (selftest). */
static void cr_session_set_reference(cr_session *s, int reference) { s->reference = reference; }

int cr_session_open(const cr_model *m, int max_pos, int n_threads, cr_session **out, cr_err *err) {
    const cr_config *c = &m->cfg;
    *out = NULL;
    if (max_pos < 1 || max_pos > c->n_ctx) return cr_fail(err, CR_EINVAL, "session length %d outside [1, %d] (the model's context)", max_pos, c->n_ctx);
    cr_session *s = calloc(1, sizeof *s);
    if (!s) return cr_fail(err, CR_ENOMEM, "out of memory");
    s->m = m;
    s->max_pos = max_pos;
#ifdef _OPENMP
    s->n_threads = n_threads > 0 ? n_threads : omp_get_max_threads();
#else
    s->n_threads = 1;
    (void)n_threads;
#endif
    size_t P = (size_t)max_pos, d = (size_t)c->d_model, H = (size_t)c->n_heads, K = (size_t)c->n_kv_heads, hd = (size_t)c->head_dim;
    size_t f = (size_t)c->d_mlp, L = (size_t)c->n_layers;
    size_t maxc = d > f ? d : f;
    if (H * hd > maxc) maxc = H * hd;
    s->x = cr_malloc(P * d, 4), s->h = cr_malloc(P * d, 4), s->h2 = cr_malloc(P * d, 4);
    s->qkv = cr_malloc(P * (H + 2 * K) * hd, 4), s->q = cr_malloc(P * H * hd, 4), s->att = cr_malloc(P * H * hd, 4);
    s->o = cr_malloc(P * d, 4), s->up = cr_malloc(P * f, 4), s->gate = cr_malloc(P * f, 4), s->scale = cr_malloc(P, 4);
    s->scores = cr_malloc((size_t)s->n_threads * P, 4);
    s->xq = cr_malloc(P, (maxc + CR_QK - 1) / CR_QK * CR_Q8_BLOCK_BYTES);
    s->kc = cr_malloc(L * P, K * hd * 4), s->vc = cr_malloc(L * P, K * hd * 4);
#if defined(CR_GEMM_Q8)
    if (cr_gemm_buf_init(&s->gemm, max_pos, (int64_t)(maxc / CR_QK), s->n_threads)) {
        cr_session_close(s);
        return cr_fail(err, CR_ENOMEM, "out of memory allocating a session for %d positions", max_pos);
    }
#endif
    size_t nr = (size_t)(c->rotary_dims / 2);
    s->rope_cos = cr_malloc(P * (nr ? nr : 1), 8), s->rope_sin = cr_malloc(P * (nr ? nr : 1), 8);
    if (!s->x || !s->h || !s->h2 || !s->qkv || !s->q || !s->att || !s->o || !s->up || !s->gate || !s->scale || !s->scores ||
        !s->xq || !s->kc || !s->vc || !s->rope_cos || !s->rope_sin) {
        cr_session_close(s);
        return cr_fail(err, CR_ENOMEM, "out of memory allocating a session for %d positions", max_pos);
    }
    /* Angles in double, as the reference implementations' float32 tables are within 1e-7 of it. */
    for (size_t p = 0; p < P; p++)
        for (size_t i = 0; i < nr; i++) {
            double inv = pow((double)c->rope_theta, -2.0 * (double)i / (double)c->rotary_dims);
            double a = (double)(float)((float)p * (float)inv);
            s->rope_cos[p * nr + i] = cos(a), s->rope_sin[p * nr + i] = sin(a);
        }
    *out = s;
    return CR_OK;
}

/* Normalizes n rows of x into y; returns each row's scale (sqrt(var+eps) or rms) in scale. */
static void cr_norm(const cr_config *c, const float *x, float *y, int n, const float *w, const float *b, float *scale) {
    int64_t d = c->d_model;
    for (int t = 0; t < n; t++) {
        const float *xt = x + t * d;
        float *yt = y + t * d;
        double mean = 0, var = 0;
        if (!c->rms_norm) {
            for (int64_t i = 0; i < d; i++) mean += xt[i];
            mean /= (double)d;
        }
        for (int64_t i = 0; i < d; i++) var += ((double)xt[i] - mean) * ((double)xt[i] - mean);
        var /= (double)d;
        float s = (float)sqrt(var + (double)c->norm_eps), inv = 1.0f / s;
        if (scale) scale[t] = s;
        for (int64_t i = 0; i < d; i++) yt[i] = ((float)((double)xt[i] - mean) * inv) * w[i] + (b ? b[i] : 0.0f);
    }
}

static float cr_gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
static float cr_gelu_tanh(float x) { return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x))); }
static float cr_silu(float x) { return x / (1.0f + expf(-x)); }

/* The MLP activation of len values a into up (gated: times up; a may be up). */
static void cr_act_scalar(int act, const float *a, float *up, int64_t len, int gated) {
    for (int64_t i = 0; i < len; i++) {
        float v = a[i];
        v = act == 0 ? cr_gelu_erf(v) : act == 1 ? cr_gelu_tanh(v) : cr_silu(v);
        up[i] = gated ? v * up[i] : v;
    }
}
/* libm's tanhf (through expm1f) took a third of prompt processing.  The tanh GELU is
 * 0.5 x (1 + tanh u) = x / (1 + exp(-2u)) and SiLU x / (1 + exp(-x)); both here with the
 * polynomial exp (relative error < 3e-7), so within a few float ulps of the scalar twin but
 * not bit-identical to it.  The erf GELU stays on libm. */
#if defined(CR_AVX2) && defined(__AVX512F__)
static void cr_act(int act, const float *a, float *up, int64_t len, int gated) {
    int64_t i = 0;
    if (act == 1 || act == 2) {
        const __m512 one = _mm512_set1_ps(1.0f), k0 = _mm512_set1_ps(-2.0f * 0.7978845608028654f), k1 = _mm512_set1_ps(0.044715f);
        for (; i + 16 <= len; i += 16) {
            const __m512 x = _mm512_loadu_ps(a + i);
            const __m512 z = act == 1 ? _mm512_mul_ps(k0, _mm512_fmadd_ps(_mm512_mul_ps(k1, _mm512_mul_ps(x, x)), x, x)) : _mm512_sub_ps(_mm512_setzero_ps(), x);
            __m512 v = _mm512_div_ps(x, _mm512_add_ps(one, cr_exp16(z)));
            if (gated) v = _mm512_mul_ps(v, _mm512_loadu_ps(up + i));
            _mm512_storeu_ps(up + i, v);
        }
    }
    if (i < len) cr_act_scalar(act, a + i, up + i, len - i, gated);
}
#else
#define cr_act cr_act_scalar
#endif

static void cr_rope(const cr_session *s, float *v, int n_heads, int pos) {
    const cr_config *c = &s->m->cfg;
    int nr = c->rotary_dims / 2, hd = c->head_dim;
    const double *cs = s->rope_cos + (size_t)pos * (size_t)nr, *sn = s->rope_sin + (size_t)pos * (size_t)nr;
    for (int h = 0; h < n_heads; h++) {
        float *vh = v + h * hd;
        for (int i = 0; i < nr; i++) {
            int a = c->rope_interleaved ? 2 * i : i, b = c->rope_interleaved ? 2 * i + 1 : i + nr;
            float x0 = vh[a], x1 = vh[b], co = (float)cs[i], si = (float)sn[i];
            vh[a] = x0 * co - x1 * si;
            vh[b] = x1 * co + x0 * si;
        }
    }
}

static void cr_quantize_rows(cr_session *s, const float *x, int n, int64_t cols) {
    if (cols % CR_QK) return;
    uint64_t rb = cr_row_bytes(CR_Q8_0, (uint64_t)cols);
#pragma omp parallel for num_threads(s->n_threads) schedule(static) if ((int64_t)n * cols >= CR_PAR_MIN)
    for (int t = 0; t < n; t++) cr_quantize_q8_0(x + t * cols, s->xq + (uint64_t)t * rb, cols);
}

/* y = W x for n rows, quantizing x first when W is Q8_0. */
static void cr_linear(cr_session *s, const cr_mat *w, const float *x, int n, float *y, const float *bias) {
    const unsigned char *xq = NULL;
    if (w->dtype == CR_Q8_0 && !s->precise) {
        cr_quantize_rows(s, x, n, w->cols);
        xq = s->xq;
    }
    cr_matmul(w, x, xq, n, y, bias, s->n_threads, s->reference, s->gemm.xp ? &s->gemm : NULL);
}

/* Softmax attention of n new queries (positions pos0..) over all keys up to each query. */
static void cr_attention(cr_session *s, int layer, int pos0, int n, const cr_capture *cap) {
    const cr_config *c = &s->m->cfg;
    const int H = c->n_heads, K = c->n_kv_heads, hd = c->head_dim, group = H / K, n_keys = pos0 + n;
    const size_t kvw = (size_t)K * (size_t)hd;
    const float *kc = s->kc + (size_t)layer * (size_t)s->max_pos * kvw, *vc = s->vc + (size_t)layer * (size_t)s->max_pos * kvw;
    const float scale = 1.0f / sqrtf((float)hd);
    int hooked = cap && ((cap->attn && cap->attn[layer]) || cap->attn_edit);
    float *probs = hooked ? s->probs : NULL;
    const int win = s->m->sliding_window;
    const int par = (int64_t)H * n * n_keys * hd >= CR_PAR_MIN;
#pragma omp parallel for num_threads(s->n_threads) schedule(static) collapse(2) if (par)
    for (int h = 0; h < H; h++)
        for (int t = 0; t < n; t++) {
#ifdef _OPENMP
            float *sc = probs ? probs + ((size_t)h * (size_t)n + (size_t)t) * (size_t)n_keys : s->scores + (size_t)omp_get_thread_num() * (size_t)s->max_pos;
#else
            float *sc = probs ? probs + ((size_t)h * (size_t)n + (size_t)t) * (size_t)n_keys : s->scores;
#endif
            const float *qh = s->q + (size_t)t * (size_t)H * (size_t)hd + (size_t)h * (size_t)hd;
            int last = pos0 + t, first = win > 0 && last - win + 1 > 0 ? last - win + 1 : 0;
            float mx = -INFINITY;
            const float *kh = kc + (size_t)(h / group) * (size_t)hd, *vh = vc + (size_t)(h / group) * (size_t)hd;
            int jk = first;
            if (!s->reference) /* four keys at a time, each exactly as cr_dot_f32 */
                for (; jk + 3 <= last; jk += 4) {
                    float d4[4];
                    cr_dot_f32_x4(qh, kh + (size_t)jk * kvw, kvw, hd, d4);
                    for (int k = 0; k < 4; k++) sc[jk + k] = d4[k] * scale;
                }
            for (; jk <= last; jk++) {
                const float *kj = kh + (size_t)jk * kvw;
                sc[jk] = (s->reference ? cr_dot_f32_scalar(qh, kj, hd) : cr_dot_f32(qh, kj, hd)) * scale;
            }
            for (jk = first; jk <= last; jk++)
                if (sc[jk] > mx) mx = sc[jk];
            /* Masked keys get probability 0 and add nothing to the sum, so only the window
             * [first, last] is visited (half the keys of a causal prompt, on average). */
            double sum = 0;
            for (jk = first; jk <= last; jk++) {
                float e = expf(sc[jk] - mx);
                sc[jk] = e;
                sum += e;
            }
            float inv = (float)(1.0 / sum);
            for (jk = first; jk <= last; jk++) sc[jk] *= inv;
            for (jk = 0; jk < first; jk++) sc[jk] = 0.0f;
            for (jk = last + 1; jk < n_keys; jk++) sc[jk] = 0.0f;
            if (!probs) {
                float *out = s->att + (size_t)t * (size_t)H * (size_t)hd + (size_t)h * (size_t)hd;
                if (s->reference) cr_attn_pv_scalar(sc, vh, kvw, first, last, hd, 0, out);
                else cr_attn_pv(sc, vh, kvw, first, last, hd, 0, out);
            }
        }
    if (!probs) return;
    if (cap->attn_edit) cap->attn_edit(cap->user, layer, pos0, n, n_keys, H, probs);
    if (cap->attn && cap->attn[layer]) memcpy(cap->attn[layer], probs, (size_t)H * (size_t)n * (size_t)n_keys * sizeof *probs);
#pragma omp parallel for num_threads(s->n_threads) schedule(static) collapse(2) if (par)
    for (int h = 0; h < H; h++)
        for (int t = 0; t < n; t++) {
            const float *pr = probs + ((size_t)h * (size_t)n + (size_t)t) * (size_t)n_keys;
            float *out = s->att + (size_t)t * (size_t)H * (size_t)hd + (size_t)h * (size_t)hd;
            const float *vh = vc + (size_t)(h / group) * (size_t)hd;
            if (s->reference) cr_attn_pv_scalar(pr, vh, kvw, 0, n_keys - 1, hd, 1, out);
            else cr_attn_pv(pr, vh, kvw, 0, n_keys - 1, hd, 1, out);
        }
}

static void cr_mlp(cr_session *s, const cr_layer *L, int layer, const float *in, int n, int pos0, const cr_capture *cap, float *out) {
    const cr_config *c = &s->m->cfg;
    const int64_t f = c->d_mlp;
    cr_linear(s, &L->w_up, in, n, s->up, L->b_up);
    if (c->gated_mlp) cr_linear(s, &L->w_gate, in, n, s->gate, NULL);
    float *a = c->gated_mlp ? s->gate : s->up;
    /* Pieces of 1024 values aligned to each row, so which lanes take the SIMD path depends
     * only on the position in the row: one token alone and in a prompt get the same bits. */
    const int64_t npc = (f + 1023) / 1024;
#pragma omp parallel for num_threads(s->n_threads) schedule(static) if ((int64_t)n * f >= 2048)
    for (int64_t k = 0; k < n * npc; k++) {
        const int64_t off = k / npc * f + k % npc * 1024, len = f - k % npc * 1024 < 1024 ? f - k % npc * 1024 : 1024;
        if (s->reference) cr_act_scalar(c->act, a + off, s->up + off, len, c->gated_mlp);
        else cr_act(c->act, a + off, s->up + off, len, c->gated_mlp);
    }
    if (cap && cap->mlp_edit) cap->mlp_edit(cap->user, layer, pos0, n, (int)f, s->up);
    if (cap && cap->mlp_post && cap->mlp_post[layer]) memcpy(cap->mlp_post[layer], s->up, (size_t)n * (size_t)f * sizeof(float));
    cr_linear(s, &L->w_down, s->up, n, out, L->b_down);
}

int cr_forward(cr_session *s, const int32_t *ids, int n, int pos0, const cr_capture *cap, cr_err *err) {
    const cr_model *m = s->m;
    const cr_config *c = &m->cfg;
    const int64_t d = c->d_model, H = c->n_heads, K = c->n_kv_heads, hd = c->head_dim;
    if (n < 1 || pos0 < 0 || pos0 > s->max_pos - n)
        return cr_fail(err, CR_ERANGE, "sequence of %d positions from %d does not fit the context of %d", n, pos0, s->max_pos);
    for (int t = 0; t < n; t++)
        if (ids[t] < 0 || ids[t] >= m->tok_embd.rows)
            return cr_fail(err, CR_EINVAL, "token id %d at position %d is outside the vocabulary [0, %lld)", ids[t], pos0 + t, (long long)m->tok_embd.rows);
    int hooked_attn = cap && (cap->attn || cap->attn_edit);
    if (hooked_attn) {
        size_t need = (size_t)H * (size_t)n * (size_t)(pos0 + n);
        if (need > s->probs_cap) {
            float *np = realloc(s->probs, need * sizeof *np);
            if (!np) return cr_fail(err, CR_ENOMEM, "out of memory for attention probabilities");
            s->probs = np, s->probs_cap = need;
        }
    }
    /* Embeddings. */
    for (int t = 0; t < n; t++) {
        float *xt = s->x + t * d;
        cr_mat_row(&m->tok_embd, ids[t], xt);
        if (c->arch == CR_ARCH_GEMMA) {
            /* Gemma scales embeddings by sqrt(d), rounded to the activation dtype (float32). */
            float nrm = (float)sqrt((double)d);
            for (int64_t i = 0; i < d; i++) xt[i] *= nrm;
        }
        if (m->pos_embd.rows) {
            cr_mat_row(&m->pos_embd, pos0 + t, s->h);
            for (int64_t i = 0; i < d; i++) xt[i] += s->h[i];
        }
    }
    const size_t kvw = (size_t)K * (size_t)hd;
    for (int l = 0; l < c->n_layers; l++) {
        const cr_layer *L = &m->layers[l];
        float *kc = s->kc + (size_t)l * (size_t)s->max_pos * kvw, *vc = s->vc + (size_t)l * (size_t)s->max_pos * kvw;
        cr_norm(c, s->x, s->h, n, L->attn_norm_w, L->attn_norm_b, NULL);
        if (L->wqkv.rows) {
            cr_linear(s, &L->wqkv, s->h, n, s->qkv, L->bqkv);
            for (int t = 0; t < n; t++) {
                const float *row = s->qkv + (size_t)t * (size_t)(H + 2 * K) * (size_t)hd;
                float *qt = s->q + (size_t)t * (size_t)H * (size_t)hd, *kt = kc + (size_t)(pos0 + t) * kvw, *vt = vc + (size_t)(pos0 + t) * kvw;
                if (m->qkv_per_head) { /* GPT-NeoX: per head [q k v] (its heads are never grouped) */
                    for (int64_t h = 0; h < H; h++) {
                        memcpy(qt + h * hd, row + (3 * h + 0) * hd, (size_t)hd * 4);
                        memcpy(kt + h * hd, row + (3 * h + 1) * hd, (size_t)hd * 4);
                        memcpy(vt + h * hd, row + (3 * h + 2) * hd, (size_t)hd * 4);
                    }
                } else {
                    memcpy(qt, row, (size_t)(H * hd) * 4);
                    memcpy(kt, row + H * hd, kvw * 4);
                    memcpy(vt, row + H * hd + (int64_t)kvw, kvw * 4);
                }
            }
        } else {
            cr_linear(s, &L->wq, s->h, n, s->q, L->bq);
            /* k and v land in the cache rows of these positions. */
            cr_linear(s, &L->wk, s->h, n, kc + (size_t)pos0 * kvw, L->bk);
            cr_linear(s, &L->wv, s->h, n, vc + (size_t)pos0 * kvw, L->bv);
        }
        if (c->rotary_dims)
            for (int t = 0; t < n; t++) {
                cr_rope(s, s->q + (size_t)t * (size_t)H * (size_t)hd, (int)H, pos0 + t);
                cr_rope(s, kc + (size_t)(pos0 + t) * kvw, (int)K, pos0 + t);
            }
        cr_attention(s, l, pos0, n, cap);
        cr_linear(s, &L->wo, s->att, n, s->o, L->bo);
        if (c->parallel_block) {
            const float *mlp_in = s->h;
            if (L->ffn_norm_w) {
                cr_norm(c, s->x, s->h2, n, L->ffn_norm_w, L->ffn_norm_b, NULL);
                mlp_in = s->h2;
            }
            float *mo = s->h == mlp_in ? s->h2 : s->h;
            cr_mlp(s, L, l, mlp_in, n, pos0, cap, mo);
            for (int64_t i = 0; i < n * d; i++) s->x[i] += s->o[i] + mo[i];
        } else {
            for (int64_t i = 0; i < n * d; i++) s->x[i] += s->o[i];
            cr_norm(c, s->x, s->h, n, L->ffn_norm_w, L->ffn_norm_b, NULL);
            cr_mlp(s, L, l, s->h, n, pos0, cap, s->o);
            for (int64_t i = 0; i < n * d; i++) s->x[i] += s->o[i];
        }
    }
    if (cap && cap->resid_final) memcpy(cap->resid_final, s->x, (size_t)n * (size_t)d * sizeof(float));
    cr_norm(c, s->x, s->h, n, m->out_norm_w, m->out_norm_b, s->scale);
    if (cap && cap->norm_scale) memcpy(cap->norm_scale, s->scale, (size_t)n * sizeof(float));
    if (cap && cap->logits) {
        if (cap->logits_last_only) cr_linear(s, &m->output, s->h + (int64_t)(n - 1) * d, 1, cap->logits, m->b_out);
        else cr_linear(s, &m->output, s->h, n, cap->logits, m->b_out);
    }
    return CR_OK;
}

void cr_logits_stats(const float *z, int n, double *lse, double *entropy) {
    double mx = -INFINITY;
    for (int i = 0; i < n; i++) if (z[i] > mx) mx = z[i];
    double se = 0, sez = 0;
    const float fmx = (float)mx;
    for (int i = 0; i < n; i++) {
        float d = z[i] - fmx, e = expf(d);
        se += e;
        sez += (double)e * d;
    }
    double l = mx + log(se);
    if (lse) *lse = l;
    /* H = log Z - E[z] = log(se) - sez/se, in shifted coordinates. */
    if (entropy) *entropy = log(se) - sez / se;
}

/* ============================================================================================
 * 6. Tokenizers
 *
 * Byte-level BPE (GPT-2, Pythia, Llama-3, Qwen2) and SentencePiece-style BPE with byte
 * fallback (Llama-2, Mistral, Gemma).  The core works from a cr_tokenizer_spec (arrays of
 * token strings, scores, merges); the loaders below fill one from each file format.
 * ============================================================================================ */
/* ============================================================================================
 * 6. Tokenizers: byte-level BPE (GPT-2, Llama-3, Qwen2) and SentencePiece-style BPE (Llama-2)
 * ============================================================================================
 *
 * Public interface (belongs in confreg.h):
 *
 *   typedef struct cr_tokenizer cr_tokenizer;
 *   enum cr_tok_kind { CR_TOK_BYTE_BPE = 1, CR_TOK_SPM = 2 };
 *   enum cr_pretok { CR_PRE_GPT2 = 0, CR_PRE_LLAMA3 = 1, CR_PRE_QWEN2 = 2 };
 *   typedef struct cr_tokenizer_spec {
 *       int kind;                    cr_tok_kind
 *       int pretok;                  cr_pretok, byte-level BPE only
 *       int32_t n_vocab;
 *       const char *const *tokens;   [n_vocab] as stored: "Ġthe" (byte BPE), "▁the" "<0x0A>" (SPM)
 *       const uint32_t *token_lens;  [n_vocab] byte lengths (tokens need not be NUL-terminated)
 *       const float *scores;         [n_vocab] or NULL: SPM merge priority, higher merges first
 *       const int32_t *token_types;  [n_vocab] or NULL: 1 normal, 2 unknown, 3 control,
 *                                    4 user-defined, 5 unused, 6 byte
 *       int32_t n_merges;
 *       const char *const *merges;   [n_merges] "left right", rank = index, lower merges first
 *       const uint32_t *merge_lens;  [n_merges]
 *       int32_t bos_id, eos_id, unk_id;   -1 when absent
 *       int add_space_prefix;        SPM: prepend "▁" to non-empty text (Llama-2 does)
 *   } cr_tokenizer_spec;
 *
 *   int  cr_tokenizer_open(const cr_tokenizer_spec *spec, cr_tokenizer **out, cr_err *err);
 *   int  cr_tokenizer_open_llama2c(const unsigned char *buf, size_t size, int32_t n_vocab,
 *                                  cr_tokenizer **out, cr_err *err);
 *   void cr_tokenizer_close(cr_tokenizer *tok);
 *   int  cr_tokenizer_encode(const cr_tokenizer *tok, const char *text, size_t len, int add_bos,
 *                            int32_t **ids_out, size_t *n_out, cr_err *err);
 *   int  cr_tokenizer_decode(const cr_tokenizer *tok, const int32_t *ids, size_t n,
 *                            char **text_out, size_t *len_out, cr_err *err);
 *   int  cr_tokenizer_token_bytes(const cr_tokenizer *tok, int32_t id, char *buf, size_t cap,
 *                                 size_t *len);
 *   int32_t cr_tokenizer_n_vocab(const cr_tokenizer *tok);
 *   int32_t cr_tokenizer_bos(const cr_tokenizer *tok);
 *   int32_t cr_tokenizer_eos(const cr_tokenizer *tok);
 *   int32_t cr_tokenizer_newline(const cr_tokenizer *tok);
 *
 * The encoders reproduce llama.cpp (llm_tokenizer_bpe_session / llm_tokenizer_spm_session and
 * the hand-written pre-tokenizers of its unicode.cpp), without special-token partitioning: text
 * that spells "<s>" or "<|endoftext|>" is encoded as ordinary text.  Where llama.cpp would look
 * up a control, unknown, unused or byte token from plain text (it never happens with real
 * vocabularies), these tokens are treated as absent, as SentencePiece and Hugging Face do.
 * Merges are resolved to token ids once, at open; a merge whose halves or result are not in the
 * vocabulary can never apply and is dropped.
 */



/* No real vocabulary comes near this; the cap keeps every per-token loop and buffer bounded. */
#define TOK_MAX_TOKEN_LEN (1u << 20)
/* Symbol indices and lengths are 32-bit to halve the work arrays; SPM can triple the text. */
#define TOK_MAX_TEXT ((size_t)(UINT32_MAX / 4u))
#define TOK_NIL UINT32_MAX

enum { TOK_T_NORMAL = 1, TOK_T_UNKNOWN = 2, TOK_T_CONTROL = 3, TOK_T_USER = 4, TOK_T_UNUSED = 5,
       TOK_T_BYTE = 6 };
enum { TOK_A_MATCH = 1, TOK_A_NORMAL = 2 };          /* per-token attribute bits */
enum { TOK_C_OTHER = 0, TOK_C_LETTER = 1, TOK_C_NUMBER = 2, TOK_C_SPACE = 3 };

/* Generated by gen_unicode.py from Unicode 14.0.0.  Each entry starts a run of code
 * points: (first << 2) | class, class 0 other, 1 letter, 2 number, 3 space. */
static const uint32_t tok_uc_runs[1534] = {
0x0, 0x27, 0x38, 0x83, 0x84, 0xc2, 0xe8, 0x105, 0x16c, 0x185, 0x1ec, 0x217, 0x218, 0x283, 0x284,
0x2a9, 0x2ac, 0x2ca, 0x2d0, 0x2d5, 0x2d8, 0x2e6, 0x2e9, 0x2ec, 0x2f2, 0x2fc, 0x301, 0x35c, 0x361,
0x3dc, 0x3e1, 0xb08, 0xb19, 0xb48, 0xb81, 0xb94, 0xbb1, 0xbb4, 0xbb9, 0xbbc, 0xdc1, 0xdd4, 0xdd9,
0xde0, 0xde9, 0xdf8, 0xdfd, 0xe00, 0xe19, 0xe1c, 0xe21, 0xe2c, 0xe31, 0xe34, 0xe39, 0xe88, 0xe8d,
0xfd8, 0xfdd, 0x1208, 0x1229, 0x14c0, 0x14c5, 0x155c, 0x1565, 0x1568, 0x1581, 0x1624, 0x1741,
0x17ac, 0x17bd, 0x17cc, 0x1881, 0x192c, 0x1982, 0x19a8, 0x19b9, 0x19c0, 0x19c5, 0x1b50, 0x1b55,
0x1b58, 0x1b95, 0x1b9c, 0x1bb9, 0x1bc2, 0x1be9, 0x1bf4, 0x1bfd, 0x1c00, 0x1c41, 0x1c44, 0x1c49,
0x1cc0, 0x1d35, 0x1e98, 0x1ec5, 0x1ec8, 0x1f02, 0x1f29, 0x1fac, 0x1fd1, 0x1fd8, 0x1fe9, 0x1fec,
0x2001, 0x2058, 0x2069, 0x206c, 0x2091, 0x2094, 0x20a1, 0x20a4, 0x2101, 0x2164, 0x2181, 0x21ac,
0x21c1, 0x2220, 0x2225, 0x223c, 0x2281, 0x2328, 0x2411, 0x24e8, 0x24f5, 0x24f8, 0x2541, 0x2544,
0x2561, 0x2588, 0x259a, 0x25c0, 0x25c5, 0x2604, 0x2615, 0x2634, 0x263d, 0x2644, 0x264d, 0x26a4,
0x26a9, 0x26c4, 0x26c9, 0x26cc, 0x26d9, 0x26e8, 0x26f5, 0x26f8, 0x2739, 0x273c, 0x2771, 0x2778,
0x277d, 0x2788, 0x279a, 0x27c1, 0x27c8, 0x27d2, 0x27e8, 0x27f1, 0x27f4, 0x2815, 0x282c, 0x283d,
0x2844, 0x284d, 0x28a4, 0x28a9, 0x28c4, 0x28c9, 0x28d0, 0x28d5, 0x28dc, 0x28e1, 0x28e8, 0x2965,
0x2974, 0x2979, 0x297c, 0x299a, 0x29c0, 0x29c9, 0x29d4, 0x2a15, 0x2a38, 0x2a3d, 0x2a48, 0x2a4d,
0x2aa4, 0x2aa9, 0x2ac4, 0x2ac9, 0x2ad0, 0x2ad5, 0x2ae8, 0x2af5, 0x2af8, 0x2b41, 0x2b44, 0x2b81,
0x2b88, 0x2b9a, 0x2bc0, 0x2be5, 0x2be8, 0x2c15, 0x2c34, 0x2c3d, 0x2c44, 0x2c4d, 0x2ca4, 0x2ca9,
0x2cc4, 0x2cc9, 0x2cd0, 0x2cd5, 0x2ce8, 0x2cf5, 0x2cf8, 0x2d71, 0x2d78, 0x2d7d, 0x2d88, 0x2d9a,
0x2dc0, 0x2dc5, 0x2dca, 0x2de0, 0x2e0d, 0x2e10, 0x2e15, 0x2e2c, 0x2e39, 0x2e44, 0x2e49, 0x2e58,
0x2e65, 0x2e6c, 0x2e71, 0x2e74, 0x2e79, 0x2e80, 0x2e8d, 0x2e94, 0x2ea1, 0x2eac, 0x2eb9, 0x2ee8,
0x2f41, 0x2f44, 0x2f9a, 0x2fcc, 0x3015, 0x3034, 0x3039, 0x3044, 0x3049, 0x30a4, 0x30a9, 0x30e8,
0x30f5, 0x30f8, 0x3161, 0x316c, 0x3175, 0x3178, 0x3181, 0x3188, 0x319a, 0x31c0, 0x31e2, 0x31fc,
0x3201, 0x3204, 0x3215, 0x3234, 0x3239, 0x3244, 0x3249, 0x32a4, 0x32a9, 0x32d0, 0x32d5, 0x32e8,
0x32f5, 0x32f8, 0x3375, 0x337c, 0x3381, 0x3388, 0x339a, 0x33c0, 0x33c5, 0x33cc, 0x3411, 0x3434,
0x3439, 0x3444, 0x3449, 0x34ec, 0x34f5, 0x34f8, 0x3539, 0x353c, 0x3551, 0x355c, 0x3562, 0x357d,
0x3588, 0x359a, 0x35e4, 0x35e9, 0x3600, 0x3615, 0x365c, 0x3669, 0x36c8, 0x36cd, 0x36f0, 0x36f5,
0x36f8, 0x3701, 0x371c, 0x379a, 0x37c0, 0x3805, 0x38c4, 0x38c9, 0x38d0, 0x3901, 0x391c, 0x3942,
0x3968, 0x3a05, 0x3a0c, 0x3a11, 0x3a14, 0x3a19, 0x3a2c, 0x3a31, 0x3a90, 0x3a95, 0x3a98, 0x3a9d,
0x3ac4, 0x3ac9, 0x3ad0, 0x3af5, 0x3af8, 0x3b01, 0x3b14, 0x3b19, 0x3b1c, 0x3b42, 0x3b68, 0x3b71,
0x3b80, 0x3c01, 0x3c04, 0x3c82, 0x3cd0, 0x3d01, 0x3d20, 0x3d25, 0x3db4, 0x3e21, 0x3e34, 0x4001,
0x40ac, 0x40fd, 0x4102, 0x4128, 0x4141, 0x4158, 0x4169, 0x4178, 0x4185, 0x4188, 0x4195, 0x419c,
0x41b9, 0x41c4, 0x41d5, 0x4208, 0x4239, 0x423c, 0x4242, 0x4268, 0x4281, 0x4318, 0x431d, 0x4320,
0x4335, 0x4338, 0x4341, 0x43ec, 0x43f1, 0x4924, 0x4929, 0x4938, 0x4941, 0x495c, 0x4961, 0x4964,
0x4969, 0x4978, 0x4981, 0x4a24, 0x4a29, 0x4a38, 0x4a41, 0x4ac4, 0x4ac9, 0x4ad8, 0x4ae1, 0x4afc,
0x4b01, 0x4b04, 0x4b09, 0x4b18, 0x4b21, 0x4b5c, 0x4b61, 0x4c44, 0x4c49, 0x4c58, 0x4c61, 0x4d6c,
0x4da6, 0x4df4, 0x4e01, 0x4e40, 0x4e81, 0x4fd8, 0x4fe1, 0x4ff8, 0x5005, 0x59b4, 0x59bd, 0x5a03,
0x5a05, 0x5a6c, 0x5a81, 0x5bac, 0x5bba, 0x5bc5, 0x5be4, 0x5c01, 0x5c48, 0x5c7d, 0x5cc8, 0x5d01,
0x5d48, 0x5d81, 0x5db4, 0x5db9, 0x5dc4, 0x5e01, 0x5ed0, 0x5f5d, 0x5f60, 0x5f71, 0x5f74, 0x5f82,
0x5fa8, 0x5fc2, 0x5fe8, 0x6042, 0x6068, 0x6081, 0x61e4, 0x6201, 0x6214, 0x621d, 0x62a4, 0x62a9,
0x62ac, 0x62c1, 0x63d8, 0x6401, 0x647c, 0x651a, 0x6541, 0x65b8, 0x65c1, 0x65d4, 0x6601, 0x66b0,
0x66c1, 0x6728, 0x6742, 0x676c, 0x6801, 0x685c, 0x6881, 0x6954, 0x6a02, 0x6a28, 0x6a42, 0x6a68,
0x6a9d, 0x6aa0, 0x6c15, 0x6cd0, 0x6d15, 0x6d34, 0x6d42, 0x6d68, 0x6e0d, 0x6e84, 0x6eb9, 0x6ec2,
0x6ee9, 0x6f98, 0x7001, 0x7090, 0x7102, 0x7128, 0x7135, 0x7142, 0x7169, 0x71f8, 0x7201, 0x7224,
0x7241, 0x72ec, 0x72f5, 0x7300, 0x73a5, 0x73b4, 0x73b9, 0x73d0, 0x73d5, 0x73dc, 0x73e9, 0x73ec,
0x7401, 0x7700, 0x7801, 0x7c58, 0x7c61, 0x7c78, 0x7c81, 0x7d18, 0x7d21, 0x7d38, 0x7d41, 0x7d60,
0x7d65, 0x7d68, 0x7d6d, 0x7d70, 0x7d75, 0x7d78, 0x7d7d, 0x7df8, 0x7e01, 0x7ed4, 0x7ed9, 0x7ef4,
0x7ef9, 0x7efc, 0x7f09, 0x7f14, 0x7f19, 0x7f34, 0x7f41, 0x7f50, 0x7f59, 0x7f70, 0x7f81, 0x7fb4,
0x7fc9, 0x7fd4, 0x7fd9, 0x7ff4, 0x8003, 0x802c, 0x80a3, 0x80a8, 0x80bf, 0x80c0, 0x817f, 0x8180,
0x81c2, 0x81c5, 0x81c8, 0x81d2, 0x81e8, 0x81fd, 0x8202, 0x8228, 0x8241, 0x8274, 0x8409, 0x840c,
0x841d, 0x8420, 0x8429, 0x8450, 0x8455, 0x8458, 0x8465, 0x8478, 0x8491, 0x8494, 0x8499, 0x849c,
0x84a1, 0x84a4, 0x84a9, 0x84b8, 0x84bd, 0x84e8, 0x84f1, 0x8500, 0x8515, 0x8528, 0x8539, 0x853c,
0x8542, 0x860d, 0x8616, 0x8628, 0x9182, 0x9270, 0x93aa, 0x9400, 0x9dda, 0x9e50, 0xb001, 0xb394,
0xb3ad, 0xb3bc, 0xb3c9, 0xb3d0, 0xb3f6, 0xb3f8, 0xb401, 0xb498, 0xb49d, 0xb4a0, 0xb4b5, 0xb4b8,
0xb4c1, 0xb5a0, 0xb5bd, 0xb5c0, 0xb601, 0xb65c, 0xb681, 0xb69c, 0xb6a1, 0xb6bc, 0xb6c1, 0xb6dc,
0xb6e1, 0xb6fc, 0xb701, 0xb71c, 0xb721, 0xb73c, 0xb741, 0xb75c, 0xb761, 0xb77c, 0xb8bd, 0xb8c0,
0xc003, 0xc004, 0xc015, 0xc01e, 0xc020, 0xc086, 0xc0a8, 0xc0c5, 0xc0d8, 0xc0e2, 0xc0ed, 0xc0f4,
0xc105, 0xc25c, 0xc275, 0xc280, 0xc285, 0xc3ec, 0xc3f1, 0xc400, 0xc415, 0xc4c0, 0xc4c5, 0xc63c,
0xc64a, 0xc658, 0xc681, 0xc700, 0xc7c1, 0xc800, 0xc882, 0xc8a8, 0xc922, 0xc940, 0xc946, 0xc980,
0xca02, 0xca28, 0xcac6, 0xcb00, 0xd001, 0x13700, 0x13801, 0x29234, 0x29341, 0x293f8, 0x29401,
0x29834, 0x29841, 0x29882, 0x298a9, 0x298b0, 0x29901, 0x299bc, 0x299fd, 0x29a78, 0x29a81, 0x29b9a,
0x29bc0, 0x29c5d, 0x29c80, 0x29c89, 0x29e24, 0x29e2d, 0x29f2c, 0x29f41, 0x29f48, 0x29f4d, 0x29f50,
0x29f55, 0x29f68, 0x29fc9, 0x2a008, 0x2a00d, 0x2a018, 0x2a01d, 0x2a02c, 0x2a031, 0x2a08c, 0x2a0c2,
0x2a0d8, 0x2a101, 0x2a1d0, 0x2a209, 0x2a2d0, 0x2a342, 0x2a368, 0x2a3c9, 0x2a3e0, 0x2a3ed, 0x2a3f0,
0x2a3f5, 0x2a3fc, 0x2a402, 0x2a429, 0x2a498, 0x2a4c1, 0x2a51c, 0x2a581, 0x2a5f4, 0x2a611, 0x2a6cc,
0x2a73d, 0x2a742, 0x2a768, 0x2a781, 0x2a794, 0x2a799, 0x2a7c2, 0x2a7e9, 0x2a7fc, 0x2a801, 0x2a8a4,
0x2a901, 0x2a90c, 0x2a911, 0x2a930, 0x2a942, 0x2a968, 0x2a981, 0x2a9dc, 0x2a9e9, 0x2a9ec, 0x2a9f9,
0x2aac0, 0x2aac5, 0x2aac8, 0x2aad5, 0x2aadc, 0x2aae5, 0x2aaf8, 0x2ab01, 0x2ab04, 0x2ab09, 0x2ab0c,
0x2ab6d, 0x2ab78, 0x2ab81, 0x2abac, 0x2abc9, 0x2abd4, 0x2ac05, 0x2ac1c, 0x2ac25, 0x2ac3c, 0x2ac45,
0x2ac5c, 0x2ac81, 0x2ac9c, 0x2aca1, 0x2acbc, 0x2acc1, 0x2ad6c, 0x2ad71, 0x2ada8, 0x2adc1, 0x2af8c,
0x2afc2, 0x2afe8, 0x2b001, 0x35e90, 0x35ec1, 0x35f1c, 0x35f2d, 0x35ff0, 0x3e401, 0x3e9b8, 0x3e9c1,
0x3eb68, 0x3ec01, 0x3ec1c, 0x3ec4d, 0x3ec60, 0x3ec75, 0x3ec78, 0x3ec7d, 0x3eca4, 0x3eca9, 0x3ecdc,
0x3ece1, 0x3ecf4, 0x3ecf9, 0x3ecfc, 0x3ed01, 0x3ed08, 0x3ed0d, 0x3ed14, 0x3ed19, 0x3eec8, 0x3ef4d,
0x3f4f8, 0x3f541, 0x3f640, 0x3f649, 0x3f720, 0x3f7c1, 0x3f7f0, 0x3f9c1, 0x3f9d4, 0x3f9d9, 0x3fbf4,
0x3fc42, 0x3fc68, 0x3fc85, 0x3fcec, 0x3fd05, 0x3fd6c, 0x3fd99, 0x3fefc, 0x3ff09, 0x3ff20, 0x3ff29,
0x3ff40, 0x3ff49, 0x3ff60, 0x3ff69, 0x3ff74, 0x40001, 0x40030, 0x40035, 0x4009c, 0x400a1, 0x400ec,
0x400f1, 0x400f8, 0x400fd, 0x40138, 0x40141, 0x40178, 0x40201, 0x403ec, 0x4041e, 0x404d0, 0x40502,
0x405e4, 0x4062a, 0x40630, 0x40a01, 0x40a74, 0x40a81, 0x40b44, 0x40b86, 0x40bf0, 0x40c01, 0x40c82,
0x40c90, 0x40cb5, 0x40d06, 0x40d09, 0x40d2a, 0x40d2c, 0x40d41, 0x40dd8, 0x40e01, 0x40e78, 0x40e81,
0x40f10, 0x40f21, 0x40f40, 0x40f46, 0x40f58, 0x41001, 0x41278, 0x41282, 0x412a8, 0x412c1, 0x41350,
0x41361, 0x413f0, 0x41401, 0x414a0, 0x414c1, 0x41590, 0x415c1, 0x415ec, 0x415f1, 0x4162c, 0x41631,
0x4164c, 0x41651, 0x41658, 0x4165d, 0x41688, 0x4168d, 0x416c8, 0x416cd, 0x416e8, 0x416ed, 0x416f4,
0x41801, 0x41cdc, 0x41d01, 0x41d58, 0x41d81, 0x41da0, 0x41e01, 0x41e18, 0x41e1d, 0x41ec4, 0x41ec9,
0x41eec, 0x42001, 0x42018, 0x42021, 0x42024, 0x42029, 0x420d8, 0x420dd, 0x420e4, 0x420f1, 0x420f4,
0x420fd, 0x42158, 0x42162, 0x42181, 0x421dc, 0x421e6, 0x42201, 0x4227c, 0x4229e, 0x422c0, 0x42381,
0x423cc, 0x423d1, 0x423d8, 0x423ee, 0x42401, 0x4245a, 0x42470, 0x42481, 0x424e8, 0x42601, 0x426e0,
0x426f2, 0x426f9, 0x42702, 0x42740, 0x4274a, 0x42801, 0x42804, 0x42841, 0x42850, 0x42855, 0x42860,
0x42865, 0x428d8, 0x42902, 0x42924, 0x42981, 0x429f6, 0x429fc, 0x42a01, 0x42a76, 0x42a80, 0x42b01,
0x42b20, 0x42b25, 0x42b94, 0x42bae, 0x42bc0, 0x42c01, 0x42cd8, 0x42d01, 0x42d58, 0x42d62, 0x42d81,
0x42dcc, 0x42de2, 0x42e01, 0x42e48, 0x42ea6, 0x42ec0, 0x43001, 0x43124, 0x43201, 0x432cc, 0x43301,
0x433cc, 0x433ea, 0x43401, 0x43490, 0x434c2, 0x434e8, 0x43982, 0x439fc, 0x43a01, 0x43aa8, 0x43ac1,
0x43ac8, 0x43c01, 0x43c76, 0x43c9d, 0x43ca0, 0x43cc1, 0x43d18, 0x43d46, 0x43d54, 0x43dc1, 0x43e08,
0x43ec1, 0x43f16, 0x43f30, 0x43f81, 0x43fdc, 0x4400d, 0x440e0, 0x4414a, 0x441c0, 0x441c5, 0x441cc,
0x441d5, 0x441d8, 0x4420d, 0x442c0, 0x44341, 0x443a4, 0x443c2, 0x443e8, 0x4440d, 0x4449c, 0x444da,
0x44500, 0x44511, 0x44514, 0x4451d, 0x44520, 0x44541, 0x445cc, 0x445d9, 0x445dc, 0x4460d, 0x446cc,
0x44705, 0x44714, 0x44742, 0x44769, 0x4476c, 0x44771, 0x44774, 0x44786, 0x447d4, 0x44801, 0x44848,
0x4484d, 0x448b0, 0x44a01, 0x44a1c, 0x44a21, 0x44a24, 0x44a29, 0x44a38, 0x44a3d, 0x44a78, 0x44a7d,
0x44aa4, 0x44ac1, 0x44b7c, 0x44bc2, 0x44be8, 0x44c15, 0x44c34, 0x44c3d, 0x44c44, 0x44c4d, 0x44ca4,
0x44ca9, 0x44cc4, 0x44cc9, 0x44cd0, 0x44cd5, 0x44ce8, 0x44cf5, 0x44cf8, 0x44d41, 0x44d44, 0x44d75,
0x44d88, 0x45001, 0x450d4, 0x4511d, 0x4512c, 0x45142, 0x45168, 0x4517d, 0x45188, 0x45201, 0x452c0,
0x45311, 0x45318, 0x4531d, 0x45320, 0x45342, 0x45368, 0x45601, 0x456bc, 0x45761, 0x45770, 0x45801,
0x458c0, 0x45911, 0x45914, 0x45942, 0x45968, 0x45a01, 0x45aac, 0x45ae1, 0x45ae4, 0x45b02, 0x45b28,
0x45c01, 0x45c6c, 0x45cc2, 0x45cf0, 0x45d01, 0x45d1c, 0x46001, 0x460b0, 0x46281, 0x46382, 0x463cc,
0x463fd, 0x4641c, 0x46425, 0x46428, 0x46431, 0x46450, 0x46455, 0x4645c, 0x46461, 0x464c0, 0x464fd,
0x46500, 0x46505, 0x46508, 0x46542, 0x46568, 0x46681, 0x466a0, 0x466a9, 0x46744, 0x46785, 0x46788,
0x4678d, 0x46790, 0x46801, 0x46804, 0x4682d, 0x468cc, 0x468e9, 0x468ec, 0x46941, 0x46944, 0x46971,
0x46a28, 0x46a75, 0x46a78, 0x46ac1, 0x46be4, 0x47001, 0x47024, 0x47029, 0x470bc, 0x47101, 0x47104,
0x47142, 0x471b4, 0x471c9, 0x47240, 0x47401, 0x4741c, 0x47421, 0x47428, 0x4742d, 0x474c4, 0x47519,
0x4751c, 0x47542, 0x47568, 0x47581, 0x47598, 0x4759d, 0x475a4, 0x475a9, 0x47628, 0x47661, 0x47664,
0x47682, 0x476a8, 0x47b81, 0x47bcc, 0x47ec1, 0x47ec4, 0x47f02, 0x47f54, 0x48001, 0x48e68, 0x49002,
0x491bc, 0x49201, 0x49510, 0x4be41, 0x4bfc4, 0x4c001, 0x4d0bc, 0x51001, 0x5191c, 0x5a001, 0x5a8e4,
0x5a901, 0x5a97c, 0x5a982, 0x5a9a8, 0x5a9c1, 0x5aafc, 0x5ab02, 0x5ab28, 0x5ab41, 0x5abb8, 0x5ac01,
0x5acc0, 0x5ad01, 0x5ad10, 0x5ad42, 0x5ad68, 0x5ad6e, 0x5ad88, 0x5ad8d, 0x5ade0, 0x5adf5, 0x5ae40,
0x5b901, 0x5ba02, 0x5ba5c, 0x5bc01, 0x5bd2c, 0x5bd41, 0x5bd44, 0x5be4d, 0x5be80, 0x5bf81, 0x5bf88,
0x5bf8d, 0x5bf90, 0x5c001, 0x61fe0, 0x62001, 0x63358, 0x63401, 0x63424, 0x6bfc1, 0x6bfd0, 0x6bfd5,
0x6bff0, 0x6bff5, 0x6bffc, 0x6c001, 0x6c48c, 0x6c541, 0x6c54c, 0x6c591, 0x6c5a0, 0x6c5c1, 0x6cbf0,
0x6f001, 0x6f1ac, 0x6f1c1, 0x6f1f4, 0x6f201, 0x6f224, 0x6f241, 0x6f268, 0x74b82, 0x74bd0, 0x74d82,
0x74de4, 0x75001, 0x75154, 0x75159, 0x75274, 0x75279, 0x75280, 0x75289, 0x7528c, 0x75295, 0x7529c,
0x752a5, 0x752b4, 0x752b9, 0x752e8, 0x752ed, 0x752f0, 0x752f5, 0x75310, 0x75315, 0x75418, 0x7541d,
0x7542c, 0x75435, 0x75454, 0x75459, 0x75474, 0x75479, 0x754e8, 0x754ed, 0x754fc, 0x75501, 0x75514,
0x75519, 0x7551c, 0x75529, 0x75544, 0x75549, 0x75a98, 0x75aa1, 0x75b04, 0x75b09, 0x75b6c, 0x75b71,
0x75bec, 0x75bf1, 0x75c54, 0x75c59, 0x75cd4, 0x75cd9, 0x75d3c, 0x75d41, 0x75dbc, 0x75dc1, 0x75e24,
0x75e29, 0x75ea4, 0x75ea9, 0x75f0c, 0x75f11, 0x75f30, 0x75f3a, 0x76000, 0x77c01, 0x77c7c, 0x78401,
0x784b4, 0x784dd, 0x784f8, 0x78502, 0x78528, 0x78539, 0x7853c, 0x78a41, 0x78ab8, 0x78b01, 0x78bb0,
0x78bc2, 0x78be8, 0x79f81, 0x79f9c, 0x79fa1, 0x79fb0, 0x79fb5, 0x79fbc, 0x79fc1, 0x79ffc, 0x7a001,
0x7a314, 0x7a31e, 0x7a340, 0x7a401, 0x7a510, 0x7a52d, 0x7a530, 0x7a542, 0x7a568, 0x7b1c6, 0x7b2b0,
0x7b2b6, 0x7b2c0, 0x7b2c6, 0x7b2d4, 0x7b406, 0x7b4b8, 0x7b4be, 0x7b4f8, 0x7b801, 0x7b810, 0x7b815,
0x7b880, 0x7b885, 0x7b88c, 0x7b891, 0x7b894, 0x7b89d, 0x7b8a0, 0x7b8a5, 0x7b8cc, 0x7b8d1, 0x7b8e0,
0x7b8e5, 0x7b8e8, 0x7b8ed, 0x7b8f0, 0x7b909, 0x7b90c, 0x7b91d, 0x7b920, 0x7b925, 0x7b928, 0x7b92d,
0x7b930, 0x7b935, 0x7b940, 0x7b945, 0x7b94c, 0x7b951, 0x7b954, 0x7b95d, 0x7b960, 0x7b965, 0x7b968,
0x7b96d, 0x7b970, 0x7b975, 0x7b978, 0x7b97d, 0x7b980, 0x7b985, 0x7b98c, 0x7b991, 0x7b994, 0x7b99d,
0x7b9ac, 0x7b9b1, 0x7b9cc, 0x7b9d1, 0x7b9e0, 0x7b9e5, 0x7b9f4, 0x7b9f9, 0x7b9fc, 0x7ba01, 0x7ba28,
0x7ba2d, 0x7ba70, 0x7ba85, 0x7ba90, 0x7ba95, 0x7baa8, 0x7baad, 0x7baf0, 0x7c402, 0x7c434, 0x7efc2,
0x7efe8, 0x80001, 0xa9b80, 0xa9c01, 0xadce4, 0xadd01, 0xae078, 0xae081, 0xb3a88, 0xb3ac1, 0xbaf84,
0xbe001, 0xbe878, 0xc0001, 0xc4d2c,
};

struct tok_merge { uint64_t key; int32_t rank, result; };  /* rank < 0: empty slot */

struct cr_tokenizer {
    int kind, pretok, add_space_prefix;
    int rank_mode;                 /* merges decide (BPE, or SPM without scores); else scores */
    int32_t n_vocab, bos_id, eos_id, unk_id;
    char *text;   size_t *text_off;    /* token text as stored, offsets [n_vocab + 1] */
    char *piece;  size_t *piece_off;   /* bytes each token stands for in decoded text */
    uint8_t *attr;
    float *scores;                     /* SPM score mode only */
    int32_t *tmap;  size_t tmap_mask;  /* text -> id, open addressing, -1 empty */
    struct tok_merge *mmap; size_t mmap_mask;
    uint32_t max_len;
    int32_t byte_tok[256];   /* BPE: token of the byte's stand-in character; SPM: <0xXX> */
    uint16_t byte_cp[256];   /* GPT-2's bytes_to_unicode */
    uint8_t barrier[256];    /* 1: the byte occurs in no token text */
    int8_t *types;           /* [n_vocab] resolved token types, kept for export */
    float *given_scores;     /* [n_vocab] the spec's scores, kept for export, or NULL */
};

/* ---- small helpers ---------------------------------------------------------------------- */

static int tok_oom(cr_err *err) { return cr_fail(err, CR_ENOMEM, "tokenizer: out of memory"); }

static void *tok_alloc(size_t n, size_t size) {
    if (size && n > SIZE_MAX / size) return NULL;
    size_t bytes = n * size;
    return malloc(bytes ? bytes : 1);
}

/* Returns p grown to hold at least need elements (or p itself), NULL if that fails. */
static void *tok_grow(void *p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return p;
    size_t nc = *cap ? *cap : 64;
    while (nc < need) nc = nc > SIZE_MAX / 2 ? need : nc * 2;
    if (nc > SIZE_MAX / elem) return NULL;
    void *q = realloc(p, nc * elem);
    if (q) *cap = nc;
    return q;
}

static uint64_t tok_fnv(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ull;
    return h;
}

/* Open-addressing tables at most half full, so probes stay short and always end. */
static size_t tok_table_cap(size_t n) {
    size_t c = 16;
    while (c / 2 < n) {
        if (c > SIZE_MAX / 4) return 0;
        c *= 2;
    }
    return c;
}

static size_t tok_utf8_put(uint32_t cp, char *d) {
    if (cp < 0x80) { d[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        d[0] = (char)(0xC0 | (cp >> 6)); d[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        d[0] = (char)(0xE0 | (cp >> 12)); d[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        d[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    d[0] = (char)(0xF0 | (cp >> 18)); d[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    d[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); d[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Strict decoder (no overlongs, surrogates or values past U+10FFFF).  Returns the sequence
 * length, or 0 if s[0..n) does not start with a valid one. */
static size_t tok_utf8_get(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned c = s[0];
    size_t k;
    uint32_t v, min;
    if (c < 0x80) { *cp = c; return 1; }
    if ((c & 0xE0) == 0xC0) { k = 1; v = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { k = 2; v = c & 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { k = 3; v = c & 0x07; min = 0x10000; }
    else return 0;
    if (n <= k) return 0;
    for (size_t j = 1; j <= k; j++) {
        if ((s[j] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[j] & 0x3Fu);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return k + 1;
}

static int tok_uc_class(uint32_t cp) {
    size_t lo = 0, hi = sizeof tok_uc_runs / sizeof tok_uc_runs[0];
    while (hi - lo > 1) {               /* last run whose start is <= cp; run 0 starts at 0 */
        size_t mid = lo + (hi - lo) / 2;
        if ((tok_uc_runs[mid] >> 2) <= cp) lo = mid; else hi = mid;
    }
    return (int)(tok_uc_runs[lo] & 3u);
}

/* "<0xAB>" -> 0xAB, else -1. */
static int tok_parse_byte(const char *s, size_t n) {
    if (n != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10
              : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* ---- vocabulary lookups ----------------------------------------------------------------- */

/* The slot holding the token spelled s[0..n), or the empty slot where it would go. */
static size_t tok_slot(const cr_tokenizer *t, const char *s, size_t n) {
    size_t i = (size_t)tok_fnv(s, n) & t->tmap_mask;
    for (;;) {
        int32_t id = t->tmap[i];
        if (id < 0) return i;
        size_t o = t->text_off[id];
        if (t->text_off[id + 1] - o == n && memcmp(t->text + o, s, n) == 0) return i;
        i = (i + 1) & t->tmap_mask;
    }
}

static int32_t tok_find(const cr_tokenizer *t, const char *s, size_t n) {
    return t->tmap[tok_slot(t, s, n)];
}

/* Only tokens that plain text can turn into (not control, unknown, unused or byte tokens). */
static int32_t tok_find_text(const cr_tokenizer *t, const char *s, size_t n) {
    if (n > t->max_len) return -1;
    int32_t id = tok_find(t, s, n);
    return id >= 0 && (t->attr[id] & TOK_A_MATCH) ? id : -1;
}

static uint64_t tok_pair_key(int32_t a, int32_t b) {
    return (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
}

static size_t tok_merge_slot(const struct tok_merge *m, size_t mask, uint64_t key) {
    unsigned char k[8];
    for (int i = 0; i < 8; i++) k[i] = (unsigned char)(key >> (8 * i));
    size_t i = (size_t)tok_fnv(k, 8) & mask;
    while (m[i].rank >= 0 && m[i].key != key) i = (i + 1) & mask;
    return i;
}

static const struct tok_merge *tok_merge_find(const cr_tokenizer *t, int32_t a, int32_t b) {
    if (!t->mmap) return NULL;
    const struct tok_merge *m = &t->mmap[tok_merge_slot(t->mmap, t->mmap_mask, tok_pair_key(a, b))];
    return m->rank >= 0 ? m : NULL;
}

/* ---- open / close ----------------------------------------------------------------------- */

void cr_tokenizer_close(cr_tokenizer *t) {
    if (!t) return;
    free(t->text); free(t->text_off); free(t->piece); free(t->piece_off);
    free(t->attr); free(t->scores); free(t->tmap); free(t->mmap);
    free(t->types); free(t->given_scores);
    free(t);
}

static int tok_default_type(const cr_tokenizer *t, int32_t id, const char *s, size_t n) {
    if (id == t->bos_id || id == t->eos_id) return TOK_T_CONTROL;
    if (id == t->unk_id) return TOK_T_UNKNOWN;
    if (t->kind == CR_TOK_SPM && tok_parse_byte(s, n) >= 0) return TOK_T_BYTE;
    return TOK_T_NORMAL;
}

/* Writes the decoded bytes of token id into d (never longer than its stored text). */
static size_t tok_make_piece(cr_tokenizer *t, int32_t id, int type, const int16_t *inv, char *d) {
    const char *s = t->text + t->text_off[id];
    size_t n = t->text_off[id + 1] - t->text_off[id], m = 0;
    switch (type) {
    case TOK_T_UNKNOWN: case TOK_T_CONTROL: case TOK_T_UNUSED:
        t->attr[id] = 0;
        return 0;
    case TOK_T_BYTE: {
        int b = tok_parse_byte(s, n);
        t->attr[id] = 0;
        if (b < 0) return 0;
        d[0] = (char)b;
        return 1;
    }
    case TOK_T_USER:
        t->attr[id] = TOK_A_MATCH;
        memcpy(d, s, n);
        return n;
    default:
        break;
    }
    t->attr[id] = TOK_A_MATCH | TOK_A_NORMAL;
    for (size_t i = 0; i < n;) {
        uint32_t cp = 0;
        size_t k = tok_utf8_get((const unsigned char *)s + i, n - i, &cp);
        if (k == 0) { d[m++] = s[i++]; continue; }   /* keep stray bytes rather than lose them */
        if (t->kind == CR_TOK_SPM && cp == 0x2581) d[m++] = ' ';
        else if (t->kind == CR_TOK_BYTE_BPE && cp < 324 && inv[cp] >= 0) d[m++] = (char)inv[cp];
        else { memcpy(d + m, s + i, k); m += k; }
        i += k;
    }
    return m;
}

static int tok_build_merges(cr_tokenizer *t, const cr_tokenizer_spec *sp, cr_err *err) {
    size_t cap = tok_table_cap((size_t)sp->n_merges);
    if (!cap || !(t->mmap = tok_alloc(cap, sizeof *t->mmap)))
        return cr_fail(err, CR_ENOMEM, "tokenizer: out of memory for %d merges", sp->n_merges);
    t->mmap_mask = cap - 1;
    for (size_t i = 0; i < cap; i++) t->mmap[i].rank = -1;
    char *buf = NULL;
    size_t bufcap = 0;
    for (int32_t r = 0; r < sp->n_merges; r++) {
        const char *s = sp->merges[r];
        size_t n = sp->merge_lens[r], sep = 1;
        if (n && !s) {
            free(buf);
            return cr_fail(err, CR_EINVAL, "tokenizer: merge %d is NULL", r);
        }
        while (sep < n && s[sep] != ' ') sep++;   /* first space past byte 0, as llama.cpp */
        if (sep >= n) {
            free(buf);
            return cr_fail(err, CR_EFORMAT, "tokenizer: merge %d has no \"left right\" form", r);
        }
        if (n - 1 > t->max_len) continue;          /* its result cannot be a token */
        char *nb = tok_grow(buf, &bufcap, n, 1);
        if (!nb) { free(buf); return tok_oom(err); }
        buf = nb;
        memcpy(buf, s, sep);
        memcpy(buf + sep, s + sep + 1, n - sep - 1);
        int32_t a = tok_find(t, s, sep), b = tok_find(t, s + sep + 1, n - sep - 1);
        int32_t c = tok_find(t, buf, n - 1);
        if (a < 0 || b < 0 || c < 0) continue;
        struct tok_merge *m = &t->mmap[tok_merge_slot(t->mmap, t->mmap_mask, tok_pair_key(a, b))];
        if (m->rank >= 0) continue;               /* a repeated merge keeps its first rank */
        m->key = tok_pair_key(a, b);
        m->rank = r;
        m->result = c;
    }
    free(buf);
    return CR_OK;
}

static int tok_check_spec(const cr_tokenizer_spec *sp, cr_err *err) {
    if (sp->kind != CR_TOK_BYTE_BPE && sp->kind != CR_TOK_SPM)
        return cr_fail(err, CR_EINVAL, "tokenizer: unknown kind %d", sp->kind);
    if (sp->kind == CR_TOK_BYTE_BPE && (sp->pretok < CR_PRE_GPT2 || sp->pretok > CR_PRE_QWEN2))
        return cr_fail(err, CR_EINVAL, "tokenizer: unknown pre-tokenizer %d", sp->pretok);
    if (sp->n_vocab <= 0 || sp->n_vocab == INT32_MAX)
        return cr_fail(err, CR_EINVAL, "tokenizer: invalid vocabulary size %d", sp->n_vocab);
    if (!sp->tokens || !sp->token_lens)
        return cr_fail(err, CR_EINVAL, "tokenizer: missing token texts or lengths");
    if (sp->n_merges < 0 || (sp->n_merges > 0 && (!sp->merges || !sp->merge_lens)))
        return cr_fail(err, CR_EINVAL, "tokenizer: invalid merge list (%d merges)", sp->n_merges);
    const int32_t ids[3] = { sp->bos_id, sp->eos_id, sp->unk_id };
    static const char *const names[3] = { "BOS", "EOS", "UNK" };
    for (int i = 0; i < 3; i++)
        if (ids[i] < -1 || ids[i] >= sp->n_vocab)
            return cr_fail(err, CR_EINVAL, "tokenizer: %s id %d outside [0, %d)", names[i], ids[i],
                           sp->n_vocab);
    return CR_OK;
}

int cr_tokenizer_open(const cr_tokenizer_spec *sp, cr_tokenizer **out, cr_err *err) {
    if (!out) return cr_fail(err, CR_EINVAL, "tokenizer: NULL output pointer");
    *out = NULL;
    if (!sp) return cr_fail(err, CR_EINVAL, "tokenizer: NULL spec");
    int rc = tok_check_spec(sp, err);
    if (rc) return rc;
    size_t nv = (size_t)sp->n_vocab, total = 0;
    for (size_t i = 0; i < nv; i++) {
        uint32_t n = sp->token_lens[i];
        if (n > TOK_MAX_TOKEN_LEN)
            return cr_fail(err, CR_EFORMAT, "tokenizer: token %zu is %u bytes long", i, n);
        if (n && !sp->tokens[i]) return cr_fail(err, CR_EINVAL, "tokenizer: token %zu is NULL", i);
        if (total > SIZE_MAX - n) return cr_fail(err, CR_ERANGE, "tokenizer: vocabulary too large");
        total += n;
    }
    cr_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return tok_oom(err);
    t->kind = sp->kind;
    t->pretok = sp->kind == CR_TOK_BYTE_BPE ? sp->pretok : CR_PRE_GPT2;
    t->add_space_prefix = sp->kind == CR_TOK_SPM && sp->add_space_prefix;
    t->rank_mode = sp->kind == CR_TOK_BYTE_BPE || (!sp->scores && sp->n_merges > 0);
    t->n_vocab = sp->n_vocab;
    t->bos_id = sp->bos_id; t->eos_id = sp->eos_id; t->unk_id = sp->unk_id;
    size_t tcap = tok_table_cap(nv);
    t->text = tok_alloc(total, 1);
    t->piece = tok_alloc(total, 1);
    t->text_off = tok_alloc(nv + 1, sizeof *t->text_off);
    t->piece_off = tok_alloc(nv + 1, sizeof *t->piece_off);
    t->attr = tok_alloc(nv, 1);
    t->tmap = tcap ? tok_alloc(tcap, sizeof *t->tmap) : NULL;
    if (!t->rank_mode) t->scores = tok_alloc(nv, sizeof *t->scores);
    t->types = tok_alloc(nv, sizeof *t->types);
    if (sp->scores && (t->given_scores = tok_alloc(nv, sizeof *t->given_scores)))
        memcpy(t->given_scores, sp->scores, nv * sizeof *t->given_scores);
    if (!t->types || (sp->scores && !t->given_scores)) {
        cr_tokenizer_close(t);
        return cr_fail(err, CR_ENOMEM, "tokenizer: out of memory for %zu tokens", nv);
    }
    if (!t->text || !t->piece || !t->text_off || !t->piece_off || !t->attr || !t->tmap
        || (!t->rank_mode && !t->scores)) {
        cr_tokenizer_close(t);
        return cr_fail(err, CR_ENOMEM, "tokenizer: out of memory for %zu tokens", nv);
    }
    size_t o = 0;
    for (size_t i = 0; i < nv; i++) {
        uint32_t n = sp->token_lens[i];
        t->text_off[i] = o;
        if (n) memcpy(t->text + o, sp->tokens[i], n);
        o += n;
        if (n > t->max_len) t->max_len = n;
        if (t->scores) {
            float s = sp->scores ? sp->scores[i] : 0.0f;
            t->scores[i] = isnan(s) ? -INFINITY : s == 0.0f ? 0.0f : s;   /* heap needs an order */
        }
    }
    t->text_off[nv] = o;
    memset(t->barrier, 1, sizeof t->barrier);
    for (size_t i = 0; i < o; i++) t->barrier[(unsigned char)t->text[i]] = 0;
    t->tmap_mask = tcap - 1;
    for (size_t i = 0; i < tcap; i++) t->tmap[i] = -1;
    for (size_t id = 0; id < nv; id++)   /* a repeated text maps to its last id, as llama.cpp */
        t->tmap[tok_slot(t, t->text + t->text_off[id], t->text_off[id + 1] - t->text_off[id])] =
            (int32_t)id;

    int16_t inv[324];   /* GPT-2 stand-in code point -> byte */
    for (int i = 0; i < 324; i++) inv[i] = -1;
    for (int b = 0, extra = 0; b < 256; b++) {
        int printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        t->byte_cp[b] = (uint16_t)(printable ? b : 256 + extra++);
        inv[t->byte_cp[b]] = (int16_t)b;
    }
    for (int b = 0; b < 256; b++) {
        char s[8];
        if (t->kind == CR_TOK_BYTE_BPE) {
            t->byte_tok[b] = tok_find(t, s, tok_utf8_put(t->byte_cp[b], s));
        } else {
            snprintf(s, sizeof s, "<0x%02X>", (unsigned)b);
            t->byte_tok[b] = tok_find(t, s, 6);
            if (t->byte_tok[b] < 0) { s[0] = (char)b; t->byte_tok[b] = tok_find(t, s, 1); }
        }
    }

    o = 0;
    for (size_t id = 0; id < nv; id++) {
        const char *s = t->text + t->text_off[id];
        size_t n = t->text_off[id + 1] - t->text_off[id];
        int type = sp->token_types ? sp->token_types[id] : tok_default_type(t, (int32_t)id, s, n);
        t->types[id] = (int8_t)(type >= 1 && type <= 6 ? type : TOK_T_NORMAL);
        t->piece_off[id] = o;
        o += tok_make_piece(t, (int32_t)id, type, inv, t->piece + o);
    }
    t->piece_off[nv] = o;

    if (t->rank_mode && sp->n_merges > 0 && (rc = tok_build_merges(t, sp, err)) != CR_OK) {
        cr_tokenizer_close(t);
        return rc;
    }
    *out = t;
    return CR_OK;
}

/* ---- pre-tokenizers (llama.cpp unicode.cpp, one regex match per call) ----------------------
 * Each returns the end of the match starting at pos; cp/cl are code points and their classes. */

static size_t tok_contraction(const uint32_t *cp, size_t n, size_t pos, int fold) {
    uint32_t a = cp[pos + 1], b = pos + 2 < n ? cp[pos + 2] : 0;
    if (fold) {   /* (?i:) folds only ASCII here: nothing else lowercases to s, t, r, e, ... */
        if (a >= 'A' && a <= 'Z') a += 32;
        if (b >= 'A' && b <= 'Z') b += 32;
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

/* \s+(?!\S)|\s+, preceded for Llama-3 by \s*[\r\n]+ */
static size_t tok_split_space(const uint32_t *cp, const uint8_t *cl, size_t n, size_t pos,
                              int newlines) {
    size_t w = pos, last_nl = 0;
    while (w < n && cl[w] == TOK_C_SPACE) {
        if (newlines && (cp[w] == '\r' || cp[w] == '\n')) last_nl = w + 1;
        w++;
    }
    if (last_nl) return last_nl;
    if (w - pos > 1 && w < n) return w - 1;   /* leave one space to lead the next word */
    return w > pos ? w : pos + 1;
}

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static size_t tok_split_gpt2(const uint32_t *cp, const uint8_t *cl, size_t n, size_t pos) {
    if (cp[pos] == '\'' && pos + 1 < n) {
        size_t k = tok_contraction(cp, n, pos, 0);
        if (k) return pos + k;
    }
    size_t p = pos + (cp[pos] == ' ');
    if (p < n && cl[p] != TOK_C_SPACE) {
        uint8_t k = cl[p];
        do p++; while (p < n && cl[p] == k);
        return p;
    }
    return tok_split_space(cp, cl, n, pos, 0);
}

/* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
 * \s*[\r\n]+|\s+(?!\S)|\s+   (Qwen2: \p{N} alone, i.e. max_digits 1) */
static size_t tok_split_llama3(const uint32_t *cp, const uint8_t *cl, size_t n, size_t pos,
                               size_t max_digits) {
    uint32_t c = cp[pos];
    if (c == '\'' && pos + 1 < n) {
        size_t k = tok_contraction(cp, n, pos, 1);
        if (k) return pos + k;
    }
    if (c != '\r' && c != '\n' && cl[pos] != TOK_C_NUMBER
        && (cl[pos] == TOK_C_LETTER || (pos + 1 < n && cl[pos + 1] == TOK_C_LETTER))) {
        size_t p = pos + 1;
        while (p < n && cl[p] == TOK_C_LETTER) p++;
        return p;
    }
    if (cl[pos] == TOK_C_NUMBER) {
        size_t p = pos + 1;
        while (p < n && p - pos < max_digits && cl[p] == TOK_C_NUMBER) p++;
        return p;
    }
    size_t p = pos + (c == ' ');
    if (p < n && cl[p] == TOK_C_OTHER) {
        while (p < n && cl[p] == TOK_C_OTHER) p++;
        while (p < n && (cp[p] == '\r' || cp[p] == '\n')) p++;
        return p;
    }
    return tok_split_space(cp, cl, n, pos, 1);
}

/* ---- the merge loop shared by both kinds ------------------------------------------------
 * Symbols form a linked list over a byte string.  Candidate pairs wait in a max-heap ordered
 * by priority, then leftmost position (llama.cpp's comparators); it is 4-ary because SPM can
 * queue a long text and a shallower heap misses the cache less.  Symbols only ever grow, so a
 * candidate is stale exactly when its combined length no longer matches. */

struct tok_sym { uint32_t off, n, prev, next; int32_t id; };
struct tok_cand { uint32_t key, left, size; int32_t id; };

struct tok_work {
    struct tok_sym *sym;   size_t sym_cap;
    struct tok_cand *heap; size_t heap_n, heap_cap;
    uint32_t *cp;          size_t cp_cap;
    uint8_t *cl;           size_t cl_cap;
    char *buf;             size_t buf_cap;
    int32_t *ids;          size_t ids_n, ids_cap;
};

static int tok_before(const struct tok_cand *a, const struct tok_cand *b) {
    return a->key > b->key || (a->key == b->key && a->left < b->left);
}

static int tok_heap_push(struct tok_work *w, struct tok_cand c) {
    struct tok_cand *h = tok_grow(w->heap, &w->heap_cap, w->heap_n + 1, sizeof *h);
    if (!h) return CR_ENOMEM;
    w->heap = h;
    size_t i = w->heap_n++;
    while (i > 0 && tok_before(&c, &h[(i - 1) / 4])) { h[i] = h[(i - 1) / 4]; i = (i - 1) / 4; }
    h[i] = c;
    return CR_OK;
}

static struct tok_cand tok_heap_pop(struct tok_work *w) {
    struct tok_cand *h = w->heap, top = h[0], last = h[--w->heap_n];
    size_t i = 0, n = w->heap_n;
    for (;;) {
        size_t c = 4 * i + 1, e = c + 4 < n ? c + 4 : n;
        if (c >= n) break;
        for (size_t j = c + 1; j < e; j++)
            if (tok_before(&h[j], &h[c])) c = j;
        if (!tok_before(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (n) h[i] = last;
    return top;
}

/* Float scores map to unsigned keys with the same order, ranks to keys that fall as they grow. */
static uint32_t tok_score_key(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u & 0x80000000u ? ~u : u | 0x80000000u;
}

static int tok_try_pair(const cr_tokenizer *t, struct tok_work *w, const char *s, uint32_t a) {
    if (a == TOK_NIL) return CR_OK;
    const struct tok_sym *sa = &w->sym[a];
    if (sa->next == TOK_NIL) return CR_OK;
    const struct tok_sym *sb = &w->sym[sa->next];
    struct tok_cand c = { 0, a, sa->n + sb->n, -1 };
    if (t->rank_mode) {
        if (sa->id < 0 || sb->id < 0) return CR_OK;
        const struct tok_merge *m = tok_merge_find(t, sa->id, sb->id);
        if (!m) return CR_OK;
        c.key = UINT32_MAX - (uint32_t)m->rank;
        c.id = m->result;
    } else {
        c.id = tok_find_text(t, s + sa->off, c.size);
        if (c.id < 0) return CR_OK;
        c.key = tok_score_key(t->scores[c.id]);
    }
    return tok_heap_push(w, c);
}

static int tok_drain(const cr_tokenizer *t, struct tok_work *w, const char *s) {
    int rc = CR_OK;
    while (w->heap_n && !rc) {
        struct tok_cand c = tok_heap_pop(w);
        struct tok_sym *a = &w->sym[c.left];
        if (a->n == 0 || a->next == TOK_NIL || a->n + w->sym[a->next].n != c.size) continue;
        struct tok_sym *b = &w->sym[a->next];
        a->n = c.size;
        a->id = c.id;
        a->next = b->next;
        if (b->next != TOK_NIL) w->sym[b->next].prev = c.left;
        b->n = 0;
        rc = tok_try_pair(t, w, s, a->prev);
        if (!rc) rc = tok_try_pair(t, w, s, c.left);
    }
    return rc;
}

/* Merges a fresh chain of nsym symbols.  Some symbols can never join a pair: with merges, one
 * without a token; with scores, a one-byte symbol whose byte occurs in no token.  The runs
 * between them merge independently, so queueing one run at a time gives the same result as one
 * queue for the whole text, with a far smaller heap (SPM texts split at every newline). */
static int tok_merge_all(const cr_tokenizer *t, struct tok_work *w, const char *s, uint32_t nsym) {
    int rc = CR_OK;
    for (uint32_t i = 0, start = 0; i < nsym && !rc; i++) {
        const struct tok_sym *y = &w->sym[i];
        int cut = t->rank_mode ? y->id < 0 : y->n == 1 && t->barrier[(unsigned char)s[y->off]];
        if (i + 1 < nsym && !cut) continue;
        w->heap_n = 0;
        for (uint32_t j = start; j < i && !rc; j++) rc = tok_try_pair(t, w, s, j);
        if (!rc) rc = tok_drain(t, w, s);
        start = i + 1;
    }
    return rc;
}

static int tok_emit(struct tok_work *w, int32_t id) {
    int32_t *v = tok_grow(w->ids, &w->ids_cap, w->ids_n + 1, sizeof *v);
    if (!v) return CR_ENOMEM;
    w->ids = v;
    v[w->ids_n++] = id;
    return CR_OK;
}

/* Emits the symbol chain; a symbol with no token falls back to one token per byte. */
static int tok_emit_chain(const cr_tokenizer *t, struct tok_work *w, const char *s, cr_err *err) {
    for (uint32_t i = 0; i != TOK_NIL; i = w->sym[i].next) {
        const struct tok_sym *y = &w->sym[i];
        if (y->id >= 0) {
            if (tok_emit(w, y->id)) return tok_oom(err);
            continue;
        }
        for (uint32_t j = 0; j < y->n; j++) {
            unsigned char b = (unsigned char)s[y->off + j];
            int32_t id = t->byte_tok[b] >= 0 ? t->byte_tok[b] : t->unk_id;
            if (id < 0)
                return cr_fail(err, CR_EFORMAT,
                               "tokenizer: byte 0x%02X has no token and there is no UNK", b);
            if (tok_emit(w, id)) return tok_oom(err);
        }
    }
    return CR_OK;
}

static int tok_bpe_word(const cr_tokenizer *t, struct tok_work *w, const char *s, size_t n,
                        cr_err *err) {
    if (t->pretok == CR_PRE_LLAMA3) {   /* Llama-3 sets ignore_merges: a whole-word token wins */
        char *b = tok_grow(w->buf, &w->buf_cap, 2 * n, 1);
        if (!b) return tok_oom(err);
        w->buf = b;
        size_t m = 0;
        for (size_t i = 0; i < n; i++) m += tok_utf8_put(t->byte_cp[(unsigned char)s[i]], b + m);
        int32_t id = tok_find_text(t, b, m);
        if (id >= 0) return tok_emit(w, id) ? tok_oom(err) : 0;
    }
    struct tok_sym *y = tok_grow(w->sym, &w->sym_cap, n, sizeof *y);
    if (!y) return tok_oom(err);
    w->sym = y;
    for (size_t i = 0; i < n; i++) {
        y[i].off = (uint32_t)i;
        y[i].n = 1;
        y[i].prev = i ? (uint32_t)(i - 1) : TOK_NIL;
        y[i].next = i + 1 < n ? (uint32_t)(i + 1) : TOK_NIL;
        y[i].id = t->byte_tok[(unsigned char)s[i]];
    }
    if (tok_merge_all(t, w, s, (uint32_t)n)) return tok_oom(err);
    return tok_emit_chain(t, w, s, err);
}

static int tok_encode_bpe(const cr_tokenizer *t, struct tok_work *w, const char *text, size_t len,
                          cr_err *err) {
    if (len == 0) return CR_OK;
    uint32_t *cp = tok_grow(w->cp, &w->cp_cap, len, sizeof *cp);
    if (cp) w->cp = cp;
    uint8_t *cl = cp ? tok_grow(w->cl, &w->cl_cap, len, 1) : NULL;
    if (!cl) return tok_oom(err);
    w->cl = cl;
    size_t ncp = 0;
    for (size_t i = 0; i < len; ncp++) {   /* text was validated: every sequence decodes */
        i += tok_utf8_get((const unsigned char *)text + i, len - i, &cp[ncp]);
        cl[ncp] = (uint8_t)tok_uc_class(cp[ncp]);
    }
    size_t pos = 0, bpos = 0;
    while (pos < ncp) {
        size_t end = t->pretok == CR_PRE_GPT2 ? tok_split_gpt2(cp, cl, ncp, pos)
                   : tok_split_llama3(cp, cl, ncp, pos, t->pretok == CR_PRE_LLAMA3 ? 3 : 1);
        size_t bend = bpos;
        char tmp[4];
        for (size_t i = pos; i < end; i++) bend += tok_utf8_put(cp[i], tmp);
        int rc = tok_bpe_word(t, w, text + bpos, bend - bpos, err);
        if (rc) return rc;
        pos = end;
        bpos = bend;
    }
    return CR_OK;
}

static int tok_encode_spm(const cr_tokenizer *t, struct tok_work *w, const char *text, size_t len,
                          cr_err *err) {
    if (len == 0) return CR_OK;   /* no phantom space for empty text, as llama.cpp and HF */
    char *s = tok_grow(w->buf, &w->buf_cap, 3 * len + 3, 1);
    if (!s) return tok_oom(err);
    w->buf = s;
    size_t m = 0;
    if (t->add_space_prefix) { memcpy(s, "\xE2\x96\x81", 3); m = 3; }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') { memcpy(s + m, "\xE2\x96\x81", 3); m += 3; }
        else s[m++] = text[i];
    }
    struct tok_sym *y = tok_grow(w->sym, &w->sym_cap, m, sizeof *y);
    if (!y) return tok_oom(err);
    w->sym = y;
    uint32_t nsym = 0;
    for (size_t i = 0; i < m; nsym++) {
        uint32_t cp;
        size_t k = tok_utf8_get((const unsigned char *)s + i, m - i, &cp);
        y[nsym].off = (uint32_t)i;
        y[nsym].n = (uint32_t)k;
        y[nsym].prev = nsym ? nsym - 1 : TOK_NIL;
        y[nsym].next = nsym + 1;
        y[nsym].id = tok_find_text(t, s + i, k);
        i += k;
    }
    y[nsym - 1].next = TOK_NIL;
    if (tok_merge_all(t, w, s, nsym)) return tok_oom(err);
    return tok_emit_chain(t, w, s, err);
}

int cr_tokenizer_encode(const cr_tokenizer *t, const char *text, size_t len, int add_bos,
                        int32_t **ids_out, size_t *n_out, cr_err *err) {
    if (!t || !ids_out || !n_out) return cr_fail(err, CR_EINVAL, "tokenizer: NULL argument");
    *ids_out = NULL;
    *n_out = 0;
    if (len && !text) return cr_fail(err, CR_EINVAL, "tokenizer: NULL text");
    if (len > TOK_MAX_TEXT)
        return cr_fail(err, CR_ERANGE, "tokenizer: text of %zu bytes is too long", len);
    if (add_bos && t->bos_id < 0) return cr_fail(err, CR_EINVAL, "tokenizer: no BOS token");
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t k = tok_utf8_get((const unsigned char *)text + i, len - i, &cp);
        if (!k) return cr_fail(err, CR_EINVAL, "tokenizer: invalid UTF-8 at byte offset %zu", i);
        i += k;
    }
    struct tok_work w;
    memset(&w, 0, sizeof w);
    int rc = CR_OK;
    if (add_bos && tok_emit(&w, t->bos_id)) rc = tok_oom(err);
    if (!rc) rc = t->kind == CR_TOK_BYTE_BPE ? tok_encode_bpe(t, &w, text, len, err)
                                             : tok_encode_spm(t, &w, text, len, err);
    if (!rc && !w.ids && !(w.ids = malloc(sizeof *w.ids)))   /* callers may always free() */
        rc = tok_oom(err);
    free(w.sym); free(w.heap); free(w.cp); free(w.cl); free(w.buf);
    if (rc) { free(w.ids); return rc; }
    *ids_out = w.ids;
    *n_out = w.ids_n;
    return CR_OK;
}

/* ---- decoding --------------------------------------------------------------------------- */

int cr_tokenizer_token_bytes(const cr_tokenizer *t, int32_t id, char *buf, size_t cap,
                             size_t *len) {
    if (len) *len = 0;
    if (!t) return CR_EINVAL;
    if (id < 0 || id >= t->n_vocab) return CR_ERANGE;
    size_t o = t->piece_off[id], n = t->piece_off[id + 1] - o;
    if (buf && cap) memcpy(buf, t->piece + o, n < cap ? n : cap);
    if (len) *len = n;
    return CR_OK;
}

int cr_tokenizer_decode(const cr_tokenizer *t, const int32_t *ids, size_t n, char **text_out,
                        size_t *len_out, cr_err *err) {
    if (!t || !text_out || (n && !ids)) return cr_fail(err, CR_EINVAL, "tokenizer: NULL argument");
    *text_out = NULL;
    if (len_out) *len_out = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab)
            return cr_fail(err, CR_ERANGE, "tokenizer: id %d at position %zu outside [0, %d)",
                           ids[i], i, t->n_vocab);
        size_t k = t->piece_off[ids[i] + 1] - t->piece_off[ids[i]];
        if (k > SIZE_MAX - 1 - total)
            return cr_fail(err, CR_ERANGE, "tokenizer: decoded text too long");
        total += k;
    }
    /* Undo the phantom space: SentencePiece drops it from the first text token after BOS. */
    size_t first = n && t->bos_id >= 0 && ids[0] == t->bos_id ? 1 : 0, skip = 0;
    if (t->add_space_prefix && first < n) {
        int32_t id = ids[first];
        if ((t->attr[id] & TOK_A_NORMAL) && t->text_off[id + 1] - t->text_off[id] >= 3
            && memcmp(t->text + t->text_off[id], "\xE2\x96\x81", 3) == 0)
            skip = 1;
    }
    char *d = tok_alloc(total - skip + 1, 1);
    if (!d) return cr_fail(err, CR_ENOMEM, "tokenizer: out of memory for %zu bytes", total);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        size_t o = t->piece_off[ids[i]], k = t->piece_off[ids[i] + 1] - o;
        if (i == first && skip) { o++; k--; }
        memcpy(d + m, t->piece + o, k);
        m += k;
    }
    d[m] = '\0';
    *text_out = d;
    if (len_out) *len_out = m;
    return CR_OK;
}

int32_t cr_tokenizer_n_vocab(const cr_tokenizer *t) { return t ? t->n_vocab : 0; }
int32_t cr_tokenizer_bos(const cr_tokenizer *t) { return t ? t->bos_id : -1; }
int32_t cr_tokenizer_eos(const cr_tokenizer *t) { return t ? t->eos_id : -1; }

int32_t cr_tokenizer_newline(const cr_tokenizer *t) {
    if (!t) return -1;
    int32_t id = t->kind == CR_TOK_SPM ? tok_find_text(t, "\n", 1) : -1;
    return id >= 0 ? id : t->byte_tok['\n'];
}

/* ---- llama2.c tokenizer.bin -------------------------------------------------------------- */

static uint32_t tok_le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int cr_tokenizer_open_llama2c(const unsigned char *buf, size_t size, int32_t n_vocab,
                              cr_tokenizer **out, cr_err *err) {
    if (!out) return cr_fail(err, CR_EINVAL, "tokenizer.bin: NULL output pointer");
    *out = NULL;
    if (!buf && size) return cr_fail(err, CR_EINVAL, "tokenizer.bin: NULL buffer");
    if (n_vocab < 0)
        return cr_fail(err, CR_EINVAL, "tokenizer.bin: negative vocabulary size %d", n_vocab);
    if (size < 4) return cr_fail(err, CR_EFORMAT, "tokenizer.bin: truncated header");
    if (size > SIZE_MAX / 3)
        return cr_fail(err, CR_ERANGE, "tokenizer.bin: %zu bytes is too large", size);
    /* First pass: bounds and the converted size (each ' ' becomes the 3-byte "▁"). */
    size_t pos = 4, total = 0;
    int32_t n = 0;
    while (n_vocab ? n < n_vocab : pos < size) {
        if (n == INT32_MAX - 1) return cr_fail(err, CR_ERANGE, "tokenizer.bin: too many tokens");
        if (size - pos < 8)
            return cr_fail(err, CR_EFORMAT, "tokenizer.bin: truncated at token %d (offset %zu)", n,
                           pos);
        uint32_t len = tok_le32(buf + pos + 4);
        if (len > size - pos - 8 || len > TOK_MAX_TOKEN_LEN / 3)
            return cr_fail(err, CR_EFORMAT, "tokenizer.bin: token %d claims %u bytes at offset %zu",
                           n, len, pos);
        pos += 8;
        for (uint32_t i = 0; i < len; i++) total += buf[pos + i] == ' ' ? 3 : 1;
        pos += len;
        n++;
    }
    if (n == 0) return cr_fail(err, CR_EFORMAT, "tokenizer.bin: no tokens");
    size_t nv = (size_t)n;
    char *blob = tok_alloc(total, 1);
    const char **toks = tok_alloc(nv, sizeof *toks);
    uint32_t *lens = tok_alloc(nv, sizeof *lens);
    float *scores = tok_alloc(nv, sizeof *scores);
    int32_t *types = tok_alloc(nv, sizeof *types);
    int rc = CR_OK;
    if (!blob || !toks || !lens || !scores || !types) {
        rc = cr_fail(err, CR_ENOMEM, "tokenizer.bin: out of memory for %d tokens", n);
    } else {
        size_t o = 0;
        pos = 4;
        for (size_t i = 0; i < nv; i++) {
            uint32_t bits = tok_le32(buf + pos), len = tok_le32(buf + pos + 4);
            memcpy(&scores[i], &bits, sizeof bits);
            const unsigned char *s = buf + pos + 8;
            pos += 8 + (size_t)len;
            /* llama2.c wraps BOS/EOS in newlines ("\n<s>\n") to keep them apart when printed */
            if ((i == 1 || i == 2) && len >= 2 && s[0] == '\n' && s[len - 1] == '\n') {
                s++;
                len -= 2;
            }
            toks[i] = blob + o;
            for (uint32_t j = 0; j < len; j++) {
                if (s[j] == ' ') { memcpy(blob + o, "\xE2\x96\x81", 3); o += 3; }
                else blob[o++] = (char)s[j];
            }
            lens[i] = (uint32_t)(blob + o - toks[i]);
            int byte = i <= 258 && tok_parse_byte(toks[i], lens[i]) >= 0;
            types[i] = i == 0 ? TOK_T_UNKNOWN : i <= 2 ? TOK_T_CONTROL
                     : byte ? TOK_T_BYTE : TOK_T_NORMAL;
        }
        cr_tokenizer_spec sp;
        memset(&sp, 0, sizeof sp);
        sp.kind = CR_TOK_SPM;
        sp.n_vocab = n;
        sp.tokens = toks;
        sp.token_lens = lens;
        sp.scores = scores;
        sp.token_types = types;
        sp.unk_id = 0;
        sp.bos_id = n > 1 ? 1 : -1;
        sp.eos_id = n > 2 ? 2 : -1;
        sp.add_space_prefix = 1;
        rc = cr_tokenizer_open(&sp, out, err);
    }
    free(blob); free(toks); free(lens); free(scores); free(types);
    return rc;
}



/* Arrays that a loader fills and hands to cr_tokenizer_open; strings point into `pool` or a
 * mapped file that outlives the call. */
typedef struct cr_tokvec {
    cr_tokenizer_spec spec;
    const char **tokens;
    uint32_t *lens;
    float *scores;
    int32_t *types;
    const char **merges;
    uint32_t *merge_lens;
    char *pool;                 /* owned text for merges built from JSON pairs */
} cr_tokvec;

static int cr_cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void cr_tokvec_free(cr_tokvec *v) {
    free(v->tokens), free(v->lens), free(v->scores), free(v->types), free(v->merges), free(v->merge_lens), free(v->pool);
    memset(v, 0, sizeof *v);
}

static int cr_tokvec_alloc(cr_tokvec *v, int64_t n_vocab, int64_t n_merges, int with_scores, const char *path, cr_err *err) {
    memset(v, 0, sizeof *v);
    if (n_vocab < 1 || n_vocab > CR_MAX_VOCAB) return cr_fail(err, CR_EFORMAT, "%s: vocabulary size %lld out of range", path, (long long)n_vocab);
    if (n_merges < 0 || n_merges > CR_MAX_ARRAY) return cr_fail(err, CR_EFORMAT, "%s: merge count %lld out of range", path, (long long)n_merges);
    v->tokens = cr_calloc((size_t)n_vocab, sizeof *v->tokens);
    v->lens = cr_calloc((size_t)n_vocab, sizeof *v->lens);
    v->types = cr_calloc((size_t)n_vocab, sizeof *v->types);
    v->scores = with_scores ? cr_calloc((size_t)n_vocab, sizeof *v->scores) : NULL;
    v->merges = cr_calloc((size_t)n_merges, sizeof *v->merges);
    v->merge_lens = cr_calloc((size_t)n_merges, sizeof *v->merge_lens);
    if (!v->tokens || !v->lens || !v->types || (with_scores && !v->scores) || !v->merges || !v->merge_lens) {
        cr_tokvec_free(v);
        return cr_fail(err, CR_ENOMEM, "out of memory");
    }
    for (int64_t i = 0; i < n_vocab; i++) v->tokens[i] = "", v->types[i] = 1;
    v->spec.n_vocab = (int32_t)n_vocab;
    v->spec.n_merges = (int32_t)n_merges;
    v->spec.tokens = v->tokens, v->spec.token_lens = v->lens, v->spec.scores = v->scores, v->spec.token_types = v->types;
    v->spec.merges = v->merges, v->spec.merge_lens = v->merge_lens;
    v->spec.bos_id = v->spec.eos_id = v->spec.unk_id = -1;
    return CR_OK;
}

static int32_t cr_tokvec_find(const cr_tokvec *v, const char *s) {
    size_t l = strlen(s);
    for (int32_t i = 0; i < v->spec.n_vocab; i++)
        if (v->lens[i] == l && memcmp(v->tokens[i], s, l) == 0) return i;
    return -1;
}

/* The vocabulary of an open tokenizer as arrays (for writing GGUF); merges come back in rank
 * order, those that could never apply having been dropped at open.  Free with cr_tokvec_free. */
static int cr_tokenizer_export(const cr_tokenizer *t, cr_tokvec *v, cr_err *err) {
    int64_t n_merges = 0;
    for (size_t i = 0; t->mmap && i <= t->mmap_mask; i++) n_merges += t->mmap[i].rank >= 0;
    int rc = cr_tokvec_alloc(v, t->n_vocab, n_merges, t->given_scores != NULL, "tokenizer", err);
    if (rc) return rc;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        v->tokens[i] = t->text + t->text_off[i];
        v->lens[i] = (uint32_t)(t->text_off[i + 1] - t->text_off[i]);
        v->types[i] = t->types[i];
        if (t->given_scores) v->scores[i] = t->given_scores[i];
    }
    /* Each merge is "left right": at most the longest token twice plus a space. */
    v->pool = cr_malloc((size_t)n_merges, 2 * (size_t)t->max_len + 2);
    if (!v->pool) { cr_tokvec_free(v); return cr_fail(err, CR_ENOMEM, "out of memory"); }
    size_t pp = 0;
    /* Sort by rank: collect (rank, slot) pairs. */
    int64_t k = 0;
    int64_t *order = cr_malloc((size_t)n_merges + 1, sizeof *order);
    if (!order) { cr_tokvec_free(v); return cr_fail(err, CR_ENOMEM, "out of memory"); }
    for (size_t i = 0; t->mmap && i <= t->mmap_mask; i++)
        if (t->mmap[i].rank >= 0) order[k++] = ((int64_t)t->mmap[i].rank << 32) | (int64_t)i;
    qsort(order, (size_t)k, sizeof *order, cr_cmp_i64);
    for (int64_t j = 0; j < k; j++) {
        const struct tok_merge *m = &t->mmap[(uint32_t)order[j]];
        int32_t a = (int32_t)(m->key >> 32), b = (int32_t)(uint32_t)m->key;
        size_t la = t->text_off[a + 1] - t->text_off[a], lb = t->text_off[b + 1] - t->text_off[b];
        char *dst = v->pool + pp;
        memcpy(dst, t->text + t->text_off[a], la);
        dst[la] = ' ';
        memcpy(dst + la + 1, t->text + t->text_off[b], lb);
        v->merges[j] = dst;
        v->merge_lens[j] = (uint32_t)(la + 1 + lb);
        pp += la + 1 + lb;
    }
    free(order);
    v->spec.kind = t->kind;
    v->spec.pretok = t->pretok;
    v->spec.bos_id = t->bos_id, v->spec.eos_id = t->eos_id, v->spec.unk_id = t->unk_id;
    v->spec.add_space_prefix = t->add_space_prefix;
    return CR_OK;
}

/* Fills tokens from a JSON object {token: id}; every id must be in range and unique. */
static int cr_tokvec_from_vocab_obj(cr_tokvec *v, const js_doc *d, const js_node *vocab, int64_t n_vocab, int n_merges, const char *path, cr_err *err) {
    int rc = cr_tokvec_alloc(v, n_vocab, n_merges, 0, path, err);
    if (rc) return rc;
    unsigned char *seen = calloc((size_t)n_vocab, 1);
    if (!seen) return cr_fail(err, CR_ENOMEM, "out of memory");
    for (int32_t k = vocab->first_child; k >= 0; k = d->nodes[d->nodes[k].next].next) {
        const js_node *kn = &d->nodes[k], *vn = &d->nodes[kn->next];
        if (vn->type != JS_NUM || vn->num < 0 || vn->num >= (double)n_vocab || vn->num != floor(vn->num)) {
            free(seen);
            return cr_fail(err, CR_EFORMAT, "%s: token '%.40s' has an invalid id", path, d->arena + kn->str);
        }
        int32_t id = (int32_t)vn->num;
        if (seen[id]) { free(seen); return cr_fail(err, CR_EFORMAT, "%s: token id %d appears twice", path, id); }
        seen[id] = 1;
        v->tokens[id] = d->arena + kn->str;
        v->lens[id] = kn->len;
    }
    free(seen);
    return CR_OK;
}

/* Largest id + 1 in a vocab object plus added tokens. */
static int64_t cr_json_vocab_size(const js_doc *d, const js_node *vocab, const js_node *added) {
    int64_t n = 0;
    for (int32_t k = vocab ? vocab->first_child : -1; k >= 0; k = d->nodes[d->nodes[k].next].next) {
        const js_node *vn = &d->nodes[d->nodes[k].next];
        if (vn->type == JS_NUM && vn->num + 1 > (double)n && vn->num < CR_MAX_VOCAB) n = (int64_t)vn->num + 1;
    }
    for (int32_t k = added && added->type == JS_ARR ? added->first_child : -1; k >= 0; k = d->nodes[k].next) {
        double id;
        if (js_get_num(d, &d->nodes[k], "id", &id) && id + 1 > (double)n && id < CR_MAX_VOCAB) n = (int64_t)id + 1;
    }
    return n;
}

static int cr_tokenizer_from_json(const char *path, cr_tokenizer **out, cr_err *err) {
    char *text;
    size_t len;
    int rc = cr_read_file(path, &text, &len, err);
    if (rc) return rc;
    js_doc d;
    rc = js_parse(&d, text, len, path, err);
    free(text);
    if (rc) return rc;
    const js_node *root = js_at(&d, 0), *model = js_get(&d, root, "model");
    const js_node *vocab = js_get(&d, model, "vocab"), *merges = js_get(&d, model, "merges"), *added = js_get(&d, root, "added_tokens");
    const char *type = js_str(&d, js_get(&d, model, "type"));
    cr_tokvec v;
    memset(&v, 0, sizeof v);
    if (!type || strcmp(type, "BPE") != 0) { rc = cr_fail(err, CR_EUNSUPPORTED, "%s: tokenizer model type \"%s\" is not supported (BPE only)", path, type ? type : "?"); goto done; }
    if (!vocab || vocab->type != JS_OBJ || !merges || merges->type != JS_ARR) { rc = cr_fail(err, CR_EFORMAT, "%s: model.vocab or model.merges missing", path); goto done; }
    int64_t n_vocab = cr_json_vocab_size(&d, vocab, added);
    if ((rc = cr_tokvec_from_vocab_obj(&v, &d, vocab, n_vocab, merges->count, path, err))) goto done;
    /* Merges are either "a b" strings or ["a", "b"] pairs (newer files); pairs are joined. */
    size_t pool_len = 0;
    for (int32_t k = merges->first_child; k >= 0; k = d.nodes[k].next)
        if (d.nodes[k].type == JS_ARR && d.nodes[k].count == 2) {
            const js_node *a = js_at(&d, d.nodes[k].first_child), *b = js_at(&d, a->next);
            pool_len += (size_t)a->len + b->len + 2;
        }
    v.pool = malloc(pool_len + 1);
    if (!v.pool) { rc = cr_fail(err, CR_ENOMEM, "out of memory"); goto done; }
    size_t pp = 0;
    int32_t mi = 0;
    for (int32_t k = merges->first_child; k >= 0; k = d.nodes[k].next, mi++) {
        const js_node *mn = &d.nodes[k];
        if (mn->type == JS_STR) {
            v.merges[mi] = d.arena + mn->str, v.merge_lens[mi] = mn->len;
        } else if (mn->type == JS_ARR && mn->count == 2) {
            const js_node *a = js_at(&d, mn->first_child), *b = js_at(&d, a->next);
            if (a->type != JS_STR || b->type != JS_STR) { rc = cr_fail(err, CR_EFORMAT, "%s: merge %d is not a pair of strings", path, mi); goto done; }
            char *dst = v.pool + pp;
            memcpy(dst, d.arena + a->str, a->len);
            dst[a->len] = ' ';
            memcpy(dst + a->len + 1, d.arena + b->str, b->len);
            v.merges[mi] = dst, v.merge_lens[mi] = a->len + 1 + b->len;
            pp += (size_t)a->len + b->len + 2;
        } else {
            rc = cr_fail(err, CR_EFORMAT, "%s: merge %d is neither \"a b\" nor [a, b]", path, mi);
            goto done;
        }
    }
    for (int32_t k = added && added->type == JS_ARR ? added->first_child : -1; k >= 0; k = d.nodes[k].next) {
        double id;
        const char *content = js_str(&d, js_get(&d, &d.nodes[k], "content"));
        if (!js_get_num(&d, &d.nodes[k], "id", &id) || !content || id < 0 || id >= (double)n_vocab) continue;
        v.tokens[(int32_t)id] = content;
        v.lens[(int32_t)id] = (uint32_t)strlen(content);
        v.types[(int32_t)id] = js_get_bool(&d, &d.nodes[k], "special", 0) ? 3 : 4;
    }
    /* SentencePiece-style files say so with byte_fallback or a "▁" normalizer/pre-tokenizer. */
    int spm = js_get_bool(&d, model, "byte_fallback", 0);
    const js_node *norm = js_get(&d, root, "normalizer"), *pre = js_get(&d, root, "pre_tokenizer");
    if (!spm && js_subtree_has(&d, norm, "\xe2\x96\x81", 0)) spm = 1;
    v.spec.kind = spm ? CR_TOK_SPM : CR_TOK_BYTE_BPE;
    v.spec.pretok = js_subtree_has(&d, pre, "\\p{N}{1,3}", 0) ? CR_PRE_LLAMA3
                  : js_subtree_has(&d, pre, "[^\\r\\n\\p{L}\\p{N}]?\\p{L}+", 0) ? CR_PRE_QWEN2 : CR_PRE_GPT2;
    if (spm) {
        /* Llama-2's normalizer prepends "▁"; files without a Prepend step do not. */
        v.spec.add_space_prefix = 0;
        v.spec.add_space_prefix = js_subtree_has(&d, norm, "Prepend", 1);
        for (int32_t i = 0; i < v.spec.n_vocab; i++)
            if (v.lens[i] == 6 && !memcmp(v.tokens[i], "<0x", 3) && v.tokens[i][5] == '>') v.types[i] = 6;
    }
    const char *bos_names[] = {"<s>", "<|begin_of_text|>", "<bos>", "<|endoftext|>", NULL};
    const char *eos_names[] = {"</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>", NULL};
    for (int i = 0; bos_names[i] && v.spec.bos_id < 0; i++) v.spec.bos_id = cr_tokvec_find(&v, bos_names[i]);
    for (int i = 0; eos_names[i] && v.spec.eos_id < 0; i++) v.spec.eos_id = cr_tokvec_find(&v, eos_names[i]);
    v.spec.unk_id = cr_tokvec_find(&v, "<unk>");
    rc = cr_tokenizer_open(&v.spec, out, err);
    if (rc) rc = cr_wrap(err, rc, path);
done:
    cr_tokvec_free(&v);
    js_free(&d);
    return rc;
}

/* GPT-2's original files: encoder.json {token: id} and vocab.bpe (a version line, then merges). */
static int cr_tokenizer_from_gpt2_files(const char *enc_path, const char *bpe_path, cr_tokenizer **out, cr_err *err) {
    char *enc = NULL, *bpe = NULL;
    size_t enc_len, bpe_len;
    int rc = cr_read_file(enc_path, &enc, &enc_len, err);
    if (!rc) rc = cr_read_file(bpe_path, &bpe, &bpe_len, err);
    if (rc) { free(enc); return rc; }
    js_doc d;
    cr_tokvec v;
    memset(&v, 0, sizeof v);
    if ((rc = js_parse(&d, enc, enc_len, enc_path, err))) { free(enc), free(bpe); return rc; }
    const js_node *root = js_at(&d, 0);
    if (root->type != JS_OBJ) { rc = cr_fail(err, CR_EFORMAT, "%s: not a JSON object of token ids", enc_path); goto done; }
    if (cr_utf8_check((const unsigned char *)bpe, bpe_len) != bpe_len) { rc = cr_fail(err, CR_EFORMAT, "%s: not valid UTF-8", bpe_path); goto done; }
    int64_t n_merges = 0;
    for (size_t i = 0; i < bpe_len; i++) n_merges += bpe[i] == '\n';
    if ((rc = cr_tokvec_from_vocab_obj(&v, &d, root, cr_json_vocab_size(&d, root, NULL), (int)(n_merges + 1), enc_path, err))) goto done;
    int32_t mi = 0;
    for (char *line = bpe, *end; line < bpe + bpe_len; line = end + 1) {
        end = memchr(line, '\n', (size_t)(bpe + bpe_len - line));
        if (!end) end = bpe + bpe_len;
        size_t ll = (size_t)(end - line);
        if (ll && line[ll - 1] == '\r') ll--;
        if (ll == 0 || (line == bpe && line[0] == '#')) continue;
        const char *sp = memchr(line, ' ', ll);
        if (!sp || sp == line || sp == line + ll - 1) { rc = cr_fail(err, CR_EFORMAT, "%s: merge line %d is not \"left right\"", bpe_path, mi + 2); goto done; }
        v.merges[mi] = line, v.merge_lens[mi] = (uint32_t)ll;
        mi++;
    }
    v.spec.n_merges = mi;
    v.spec.kind = CR_TOK_BYTE_BPE;
    v.spec.pretok = CR_PRE_GPT2;
    v.spec.bos_id = v.spec.eos_id = cr_tokvec_find(&v, "<|endoftext|>");
    if (v.spec.bos_id >= 0) v.types[v.spec.bos_id] = 3;
    rc = cr_tokenizer_open(&v.spec, out, err);
done:
    cr_tokvec_free(&v);
    js_free(&d);
    free(enc);
    free(bpe);
    return rc;
}

/* GGUF metadata: tokenizer.ggml.{model, pre, tokens, scores, token_type, merges, *_token_id}. */
static int cr_tokenizer_from_gguf(const cr_gguf *g, cr_tokenizer **out, cr_err *err) {
    char model[32] = "", pre[64] = "";
    cr_gguf_strval(g, "tokenizer.ggml.model", model, sizeof model);
    cr_gguf_strval(g, "tokenizer.ggml.pre", pre, sizeof pre);
    int kind = !strcmp(model, "gpt2") ? CR_TOK_BYTE_BPE : !strcmp(model, "llama") ? CR_TOK_SPM : 0;
    if (!kind) return cr_fail(err, CR_EUNSUPPORTED, "%s: tokenizer model \"%s\" is not supported (gpt2 or llama)", g->path, model);
    const cr_gguf_kv *tk = cr_gguf_find(g, "tokenizer.ggml.tokens"), *sc = cr_gguf_find(g, "tokenizer.ggml.scores");
    const cr_gguf_kv *ty = cr_gguf_find(g, "tokenizer.ggml.token_type"), *mg = cr_gguf_find(g, "tokenizer.ggml.merges");
    if (!tk || tk->type != GG_ARR || tk->arr_type != GG_STR) return cr_fail(err, CR_EFORMAT, "%s: tokenizer.ggml.tokens is not a string array", g->path);
    if (sc && (sc->type != GG_ARR || sc->arr_type != GG_F32 || sc->count != tk->count)) return cr_fail(err, CR_EFORMAT, "%s: tokenizer.ggml.scores does not match the tokens", g->path);
    if (ty && (ty->type != GG_ARR || ty->arr_type != GG_I32 || ty->count != tk->count)) return cr_fail(err, CR_EFORMAT, "%s: tokenizer.ggml.token_type does not match the tokens", g->path);
    if (mg && (mg->type != GG_ARR || mg->arr_type != GG_STR)) return cr_fail(err, CR_EFORMAT, "%s: tokenizer.ggml.merges is not a string array", g->path);
    cr_tokvec v;
    int rc = cr_tokvec_alloc(&v, (int64_t)tk->count, mg ? (int64_t)mg->count : 0, sc != NULL, g->path, err);
    if (rc) return rc;
    /* String arrays were bounds-checked while parsing, so walking them is safe. */
    const unsigned char *p = tk->val;
    for (uint64_t i = 0; i < tk->count; i++) {
        uint64_t l = cr_rd64(p);
        v.tokens[i] = (const char *)p + 8, v.lens[i] = (uint32_t)l;
        p += 8 + l;
    }
    for (uint64_t i = 0; sc && i < sc->count; i++) { uint32_t b = cr_rd32(sc->val + 4 * i); memcpy(&v.scores[i], &b, 4); }
    for (uint64_t i = 0; ty && i < ty->count; i++) v.types[i] = (int32_t)cr_rd32(ty->val + 4 * i);
    p = mg ? mg->val : NULL;
    for (uint64_t i = 0; mg && i < mg->count; i++) {
        uint64_t l = cr_rd64(p);
        v.merges[i] = (const char *)p + 8, v.merge_lens[i] = (uint32_t)l;
        p += 8 + l;
    }
    v.spec.kind = kind;
    v.spec.pretok = !strcmp(pre, "llama3") || !strcmp(pre, "llama-bpe") || !strcmp(pre, "llama-v3") ? CR_PRE_LLAMA3 : !strcmp(pre, "qwen2") ? CR_PRE_QWEN2 : CR_PRE_GPT2;
    double x;
    if (cr_gguf_num(g, "tokenizer.ggml.bos_token_id", &x) && x >= 0 && x < (double)tk->count) v.spec.bos_id = (int32_t)x;
    if (cr_gguf_num(g, "tokenizer.ggml.eos_token_id", &x) && x >= 0 && x < (double)tk->count) v.spec.eos_id = (int32_t)x;
    if (cr_gguf_num(g, "tokenizer.ggml.unknown_token_id", &x) && x >= 0 && x < (double)tk->count) v.spec.unk_id = (int32_t)x;
    v.spec.add_space_prefix = kind == CR_TOK_SPM;
    if (cr_gguf_num(g, "tokenizer.ggml.add_space_prefix", &x)) v.spec.add_space_prefix = x != 0;
    rc = cr_tokenizer_open(&v.spec, out, err);
    if (rc) rc = cr_wrap(err, rc, g->path);
    cr_tokvec_free(&v);
    return rc;
}

int cr_tokenizer_open_file(const char *path, int32_t n_vocab, cr_tokenizer **out, cr_err *err) {
    *out = NULL;
    if (cr_is_dir(path)) {
        char *a = cr_path_join(path, "tokenizer.json"), *b = cr_path_join(path, "encoder.json"), *c = cr_path_join(path, "vocab.bpe");
        int rc;
        if (cr_is_file(a)) rc = cr_tokenizer_from_json(a, out, err);
        else if (cr_is_file(b) && cr_is_file(c)) rc = cr_tokenizer_from_gpt2_files(b, c, out, err);
        else rc = cr_fail(err, CR_EIO, "%s: no tokenizer.json or encoder.json + vocab.bpe in this directory", path);
        free(a), free(b), free(c);
        return rc;
    }
    if (cr_ends_with(path, ".json")) return cr_tokenizer_from_json(path, out, err);
    cr_ttable tt;
    memset(&tt, 0, sizeof tt);
    int rc = cr_ttable_add_map(&tt, path, err);
    if (rc) return rc;
    if (tt.maps[0].size >= 4 && !memcmp(tt.maps[0].data, "GGUF", 4)) {
        cr_gguf g;
        rc = cr_gguf_parse(&g, &tt, 0, path, err);
        if (!rc) rc = cr_tokenizer_from_gguf(&g, out, err);
        cr_gguf_free(&g);
    } else {
        rc = cr_tokenizer_open_llama2c(tt.maps[0].data, tt.maps[0].size, n_vocab, out, err);
        if (rc) rc = cr_wrap(err, rc, path);
    }
    cr_ttable_free(&tt);
    return rc;
}

/* ---- writing GGUF ----------------------------------------------------------------------------
 * Tensors are written in llama.cpp's layout for each architecture: GPT-2's Conv1D weights
 * transposed to [out, in], GPT-NeoX's per-head fused qkv regrouped as [q | k | v], and
 * Hugging Face Llama/Mistral q/k rows permuted so that llama.cpp's adjacent-pair RoPE
 * reproduces the rotate-half RoPE they were trained with. */

typedef struct cr_wtensor {
    char name[96];
    const cr_mat *mat;            /* 2-D source, or NULL */
    const float *vec;             /* 1-D source */
    int64_t len;                  /* vec length */
    int perm;                     /* 0 none, 1 rope permutation, 2 NeoX qkv regrouping */
    int dtype;                    /* output dtype */
    uint64_t offset, nbytes;
} cr_wtensor;

/* Source row for output row r under a permutation. */
static int64_t cr_perm_row(const cr_model *m, const cr_wtensor *t, int64_t r) {
    const cr_config *c = &m->cfg;
    if (t->perm == 1) { /* rotate-half -> adjacent pairs, within each head */
        int64_t hd = c->head_dim, h = r / hd, i = r % hd;
        return h * hd + (i % 2) * (hd / 2) + i / 2;
    }
    if (t->perm == 2) { /* [q|k|v] output from per-head [q k v] input */
        int64_t hd = c->head_dim, H = c->n_heads, part = r / (H * hd), h = (r % (H * hd)) / hd, i = r % hd;
        return (3 * h + part) * hd + i;
    }
    return r;
}

static int cr_wt_add(cr_wtensor *ts, int *n, int cap, const char *name, const cr_mat *mat, const float *vec, int64_t len, int perm, int dtype) {
    if (*n >= cap || (!mat && !vec) || (mat && !mat->rows)) return 0;
    cr_wtensor *t = &ts[(*n)++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->mat = mat, t->vec = vec, t->len = len, t->perm = perm;
    if (vec) t->dtype = CR_F32;
    else if (dtype == CR_Q8_0 && mat->cols % CR_QK) t->dtype = CR_F16;
    else t->dtype = dtype;
    t->nbytes = vec ? (uint64_t)len * 4 : (uint64_t)mat->rows * cr_row_bytes(t->dtype, (uint64_t)mat->cols);
    return 1;
}

static void cr_gw_tensor_data(cr_gw *w, const cr_model *m, const cr_wtensor *t, float *row, unsigned char *enc) {
    if (t->vec) {
        for (int64_t i = 0; i < t->len; i++) cr_gw_f32(w, t->vec[i]);
        return;
    }
    const cr_mat *a = t->mat;
    uint64_t rb = cr_row_bytes(t->dtype, (uint64_t)a->cols);
    for (int64_t r = 0; r < a->rows; r++) {
        int64_t src = cr_perm_row(m, t, r);
        if (a->dtype == t->dtype && !a->trans) { /* same encoding: copy the row untouched */
            cr_gw_bytes(w, a->data + (uint64_t)src * rb, (size_t)rb);
            continue;
        }
        cr_mat_row(a, src, row);
        if (t->dtype == CR_F32) {
            for (int64_t i = 0; i < a->cols; i++) cr_gw_f32(w, row[i]);
            continue;
        }
        if (t->dtype == CR_F16)
            for (int64_t i = 0; i < a->cols; i++) { uint16_t h = cr_f32_to_f16(row[i]); enc[2 * i] = (unsigned char)h, enc[2 * i + 1] = (unsigned char)(h >> 8); }
        else
            cr_quantize_q8_0(row, enc, a->cols);
        cr_gw_bytes(w, enc, (size_t)rb);
    }
}

/* "%s.x" patterns name per-architecture metadata keys. */
static void cr_arch_key(char *buf, size_t cap, const char *pat, const char *arch) {
    if (!strncmp(pat, "%s", 2)) snprintf(buf, cap, "%s%s", arch, pat + 2);
    else snprintf(buf, cap, "%s", pat);
}

/* Permuted bias vectors need their own storage. */
static float *cr_perm_vec(const cr_model *m, const cr_wtensor *proto, const float *v, int64_t len) {
    float *out = cr_malloc((size_t)len, sizeof *out);
    if (!out) return NULL;
    for (int64_t r = 0; r < len; r++) out[r] = v[cr_perm_row(m, proto, r)];
    return out;
}

int cr_model_write_gguf(const cr_model *m, const char *path, int dtype, int flags, const cr_unigram *unigram, cr_err *err) {
    const cr_config *c = &m->cfg;
    if (dtype != CR_F32 && dtype != CR_F16 && dtype != CR_Q8_0) return cr_fail(err, CR_EINVAL, "output dtype must be F32, F16 or Q8_0");
    const char *ga = cr_arch_gguf[c->arch];
    int cap = 16 + 24 * c->n_layers, n = 0, rc = CR_OK;
    cr_tokvec tv;
    memset(&tv, 0, sizeof tv);
    cr_wtensor *ts = cr_calloc((size_t)cap, sizeof *ts);
    float **tmp = cr_calloc((size_t)(4 * c->n_layers + 1), sizeof *tmp);
    int n_tmp = 0;
    float *row = cr_malloc((size_t)(c->d_model > c->d_mlp ? c->d_model : c->d_mlp) + (size_t)c->n_vocab + 64, sizeof *row);
    unsigned char *enc = cr_malloc((size_t)(c->d_model > c->d_mlp ? c->d_model : c->d_mlp) + 64, 4);
    if (!ts || !tmp || !row || !enc) { rc = cr_fail(err, CR_ENOMEM, "out of memory"); goto done; }
    int permute = (c->arch == CR_ARCH_LLAMA || c->arch == CR_ARCH_MISTRAL) && !c->rope_interleaved;
    char nm[96];
    cr_wt_add(ts, &n, cap, "token_embd.weight", &m->tok_embd, NULL, 0, 0, dtype);
    cr_wt_add(ts, &n, cap, "position_embd.weight", &m->pos_embd, NULL, 0, 0, dtype);
    cr_wt_add(ts, &n, cap, "output_norm.weight", NULL, m->out_norm_w, c->d_model, 0, dtype);
    cr_wt_add(ts, &n, cap, "output_norm.bias", NULL, m->out_norm_b, c->d_model, 0, dtype);
    /* llama.cpp's gpt2 loader insists on output.weight even when tied. */
    if (!c->tied_embeddings || (c->arch == CR_ARCH_GPT2 && !(flags & CR_GGUF_TIED))) cr_wt_add(ts, &n, cap, "output.weight", &m->output, NULL, 0, 0, dtype);
    cr_wt_add(ts, &n, cap, "output.bias", NULL, m->b_out, c->n_vocab, 0, dtype);
    for (int l = 0; l < c->n_layers; l++) {
        const cr_layer *L = &m->layers[l];
        int64_t qd = (int64_t)c->n_heads * c->head_dim, kd = (int64_t)c->n_kv_heads * c->head_dim;
#define CR_W(suffix, mat, perm) (snprintf(nm, sizeof nm, "blk.%d." suffix, l), cr_wt_add(ts, &n, cap, nm, mat, NULL, 0, perm, dtype))
#define CR_V(suffix, vec, len) (snprintf(nm, sizeof nm, "blk.%d." suffix, l), cr_wt_add(ts, &n, cap, nm, NULL, vec, len, 0, dtype))
        CR_V("attn_norm.weight", L->attn_norm_w, c->d_model);
        CR_V("attn_norm.bias", L->attn_norm_b, c->d_model);
        int qkv_perm = m->qkv_per_head ? 2 : 0;
        if (CR_W("attn_qkv.weight", &L->wqkv, qkv_perm)) {
            const float *b = L->bqkv;
            if (b && qkv_perm) {
                cr_wtensor proto = ts[n - 1];
                b = tmp[n_tmp++] = cr_perm_vec(m, &proto, b, qd + 2 * kd);
                if (!b) { rc = cr_fail(err, CR_ENOMEM, "out of memory"); goto done; }
            }
            CR_V("attn_qkv.bias", b, qd + 2 * kd);
        }
        const float *bq = L->bq, *bk = L->bk;
        if (CR_W("attn_q.weight", &L->wq, permute) && permute && bq) {
            bq = tmp[n_tmp++] = cr_perm_vec(m, &ts[n - 1], bq, qd);
            if (!bq) { rc = cr_fail(err, CR_ENOMEM, "out of memory"); goto done; }
        }
        if (CR_W("attn_k.weight", &L->wk, permute) && permute && bk) {
            bk = tmp[n_tmp++] = cr_perm_vec(m, &ts[n - 1], bk, kd);
            if (!bk) { rc = cr_fail(err, CR_ENOMEM, "out of memory"); goto done; }
        }
        CR_W("attn_v.weight", &L->wv, 0);
        CR_V("attn_q.bias", bq, qd);
        CR_V("attn_k.bias", bk, kd);
        CR_V("attn_v.bias", L->bv, kd);
        CR_W("attn_output.weight", &L->wo, 0);
        CR_V("attn_output.bias", L->bo, c->d_model);
        CR_V("ffn_norm.weight", L->ffn_norm_w, c->d_model);
        CR_V("ffn_norm.bias", L->ffn_norm_b, c->d_model);
        CR_W("ffn_gate.weight", &L->w_gate, 0);
        CR_W("ffn_up.weight", &L->w_up, 0);
        CR_V("ffn_up.bias", L->b_up, c->d_mlp);
        CR_W("ffn_down.weight", &L->w_down, 0);
        CR_V("ffn_down.bias", L->b_down, c->d_model);
#undef CR_W
#undef CR_V
    }
    const uint64_t align = 32;
    uint64_t off = 0;
    for (int i = 0; i < n; i++) ts[i].offset = off, off = (off + ts[i].nbytes + align - 1) / align * align;

    if (m->tok && (rc = cr_tokenizer_export(m->tok, &tv, err))) goto done;
    int has_tok = m->tok != NULL;
    const cr_tokenizer_spec tsp = tv.spec;
    char key[128];
    int n_kv = 0;
    cr_outfile of;
    if ((rc = cr_outfile_open(&of, path, err))) goto done;
    cr_gw w = {of.f, 0, 0};
    /* Header; the metadata count is patched in after the entries are written. */
    cr_gw_bytes(&w, "GGUF", 4);
    cr_gw_u32(&w, 3);
    cr_gw_u64(&w, (uint64_t)n);
    long kv_count_pos = 16;
    cr_gw_u64(&w, 0);
#define KEY(pat) (cr_arch_key(key, sizeof key, pat, ga), n_kv++, key)
    cr_gw_kv_str(&w, KEY("general.architecture"), ga);
    cr_gw_kv_str(&w, KEY("general.name"), "confreg export");
    cr_gw_kv_u32(&w, KEY("general.file_type"), dtype == CR_F32 ? 0u : dtype == CR_F16 ? 1u : 7u);
    cr_gw_kv_u32(&w, KEY("%s.context_length"), (uint32_t)c->n_ctx);
    cr_gw_kv_u32(&w, KEY("%s.embedding_length"), (uint32_t)c->d_model);
    cr_gw_kv_u32(&w, KEY("%s.feed_forward_length"), (uint32_t)c->d_mlp);
    cr_gw_kv_u32(&w, KEY("%s.block_count"), (uint32_t)c->n_layers);
    cr_gw_kv_u32(&w, KEY("%s.attention.head_count"), (uint32_t)c->n_heads);
    cr_gw_kv_u32(&w, KEY("%s.attention.head_count_kv"), (uint32_t)c->n_kv_heads);
    cr_gw_kv_f32(&w, KEY(c->rms_norm ? "%s.attention.layer_norm_rms_epsilon" : "%s.attention.layer_norm_epsilon"), c->norm_eps);
    if (c->head_dim * c->n_heads != c->d_model) {
        cr_gw_kv_u32(&w, KEY("%s.attention.key_length"), (uint32_t)c->head_dim);
        cr_gw_kv_u32(&w, KEY("%s.attention.value_length"), (uint32_t)c->head_dim);
    }
    if (c->rotary_dims) {
        cr_gw_kv_f32(&w, KEY("%s.rope.freq_base"), c->rope_theta);
        cr_gw_kv_u32(&w, KEY("%s.rope.dimension_count"), (uint32_t)c->rotary_dims);
    }
    if (c->arch == CR_ARCH_GPT_NEOX) cr_gw_kv_bool(&w, KEY("%s.use_parallel_residual"), c->parallel_block);
    if (c->sliding_window > 0) cr_gw_kv_u32(&w, KEY("%s.attention.sliding_window"), (uint32_t)c->sliding_window);
    if (has_tok) {
        int spm = tsp.kind == CR_TOK_SPM;
        cr_gw_kv_str(&w, KEY("tokenizer.ggml.model"), spm ? "llama" : "gpt2");
        cr_gw_kv_str(&w, KEY("tokenizer.ggml.pre"), spm ? "default" : tsp.pretok == CR_PRE_LLAMA3 ? "llama3" : tsp.pretok == CR_PRE_QWEN2 ? "qwen2" : "gpt-2");
        cr_gw_key(&w, KEY("tokenizer.ggml.tokens"), GG_ARR);
        cr_gw_u32(&w, GG_STR), cr_gw_u64(&w, (uint64_t)tsp.n_vocab);
        for (int32_t i = 0; i < tsp.n_vocab; i++) cr_gw_str(&w, tsp.tokens[i], tsp.token_lens[i]);
        if (tsp.scores) {
            cr_gw_key(&w, KEY("tokenizer.ggml.scores"), GG_ARR);
            cr_gw_u32(&w, GG_F32), cr_gw_u64(&w, (uint64_t)tsp.n_vocab);
            for (int32_t i = 0; i < tsp.n_vocab; i++) cr_gw_f32(&w, tsp.scores[i]);
        }
        if (tsp.token_types) {
            cr_gw_key(&w, KEY("tokenizer.ggml.token_type"), GG_ARR);
            cr_gw_u32(&w, GG_I32), cr_gw_u64(&w, (uint64_t)tsp.n_vocab);
            for (int32_t i = 0; i < tsp.n_vocab; i++) cr_gw_u32(&w, (uint32_t)tsp.token_types[i]);
        }
        if (tsp.n_merges) {
            cr_gw_key(&w, KEY("tokenizer.ggml.merges"), GG_ARR);
            cr_gw_u32(&w, GG_STR), cr_gw_u64(&w, (uint64_t)tsp.n_merges);
            for (int32_t i = 0; i < tsp.n_merges; i++) cr_gw_str(&w, tsp.merges[i], tsp.merge_lens[i]);
        }
        if (tsp.bos_id >= 0) cr_gw_kv_u32(&w, KEY("tokenizer.ggml.bos_token_id"), (uint32_t)tsp.bos_id);
        if (tsp.eos_id >= 0) cr_gw_kv_u32(&w, KEY("tokenizer.ggml.eos_token_id"), (uint32_t)tsp.eos_id);
        if (tsp.unk_id >= 0) cr_gw_kv_u32(&w, KEY("tokenizer.ggml.unknown_token_id"), (uint32_t)tsp.unk_id);
        if (spm) cr_gw_kv_bool(&w, KEY("tokenizer.ggml.add_space_prefix"), tsp.add_space_prefix);
        cr_gw_kv_bool(&w, KEY("tokenizer.ggml.add_bos_token"), spm);
    }
    if (!unigram) unigram = m->unigram;
    if (unigram && unigram->n_vocab == c->n_vocab) {
        cr_gw_key(&w, KEY("confreg.unigram_counts"), GG_ARR);
        cr_gw_u32(&w, GG_U64), cr_gw_u64(&w, (uint64_t)unigram->n_vocab);
        for (int32_t i = 0; i < unigram->n_vocab; i++) cr_gw_u64(&w, unigram->counts[i]);
    }
#undef KEY
    for (int i = 0; i < n; i++) {
        cr_wtensor *t = &ts[i];
        cr_gw_str(&w, t->name, strlen(t->name));
        int nd = t->vec ? 1 : 2;
        cr_gw_u32(&w, (uint32_t)nd);
        if (t->vec) cr_gw_u64(&w, (uint64_t)t->len);
        else cr_gw_u64(&w, (uint64_t)t->mat->cols), cr_gw_u64(&w, (uint64_t)t->mat->rows);
        cr_gw_u32(&w, t->dtype == CR_F32 ? GGML_F32 : t->dtype == CR_F16 ? GGML_F16 : t->dtype == CR_BF16 ? GGML_BF16 : GGML_Q8_0);
        cr_gw_u64(&w, t->offset);
    }
    cr_gw_pad(&w, align);
    uint64_t base = w.pos;
    for (int i = 0; i < n && !w.failed; i++) {
        while (w.pos < base + ts[i].offset) cr_gw_pad(&w, align);
        cr_gw_tensor_data(&w, m, &ts[i], row, enc);
    }
    cr_gw_pad(&w, align);
    if (!w.failed && fseek(of.f, kv_count_pos, SEEK_SET) == 0) cr_gw_u64(&w, (uint64_t)n_kv);
    else w.failed = 1;
    rc = cr_outfile_close(&of, !w.failed, err);
    if (!rc && w.failed) rc = cr_fail(err, CR_EIO, "%s: write failed", path);
done:
    cr_tokvec_free(&tv);
    for (int i = 0; i < n_tmp; i++) free(tmp[i]);
    free(tmp), free(ts), free(row), free(enc);
    return rc;
}

/* ============================================================================================
 * 7. Analyses
 * ============================================================================================ */

/* Evaluation rows (SPEC §2): the corpus tokenized as one stream, cut into rows of ctx-1
 * tokens, BOS prepended to each.  A last, shorter row is kept when it has at least one token. */
typedef struct cr_rows {
    int32_t *ids;                 /* [n_rows, ctx] BOS first; row r has len[r] valid entries */
    int *len;                     /* [n_rows] */
    int n_rows, ctx;
} cr_rows;

static void cr_rows_free(cr_rows *r) { free(r->ids), free(r->len); memset(r, 0, sizeof *r); }

static int64_t cr_rows_tokens(const cr_rows *r) {
    int64_t n = 0;
    for (int i = 0; i < r->n_rows; i++) n += r->len[i];
    return n;
}

static int cr_rows_make(cr_rows *r, const int32_t *stream, size_t n, int ctx, int32_t bos, int max_rows, cr_err *err) {
    memset(r, 0, sizeof *r);
    if (ctx < 2) return cr_fail(err, CR_EINVAL, "context %d too short for evaluation rows", ctx);
    if (bos < 0) return cr_fail(err, CR_EINVAL, "the model has no BOS token to start rows with");
    size_t per = (size_t)ctx - 1, nr = (n + per - 1) / per;
    if (max_rows > 0 && nr > (size_t)max_rows) nr = (size_t)max_rows;
    if (nr == 0) return cr_fail(err, CR_EINVAL, "the text has no tokens to evaluate");
    if (nr > INT32_MAX / 2) return cr_fail(err, CR_ERANGE, "too many rows");
    r->ids = cr_malloc(nr * (size_t)ctx, sizeof *r->ids);
    r->len = cr_malloc(nr, sizeof *r->len);
    if (!r->ids || !r->len) { cr_rows_free(r); return cr_fail(err, CR_ENOMEM, "out of memory"); }
    for (size_t i = 0; i < nr; i++) {
        size_t start = i * per, take = n - start < per ? n - start : per;
        r->ids[i * (size_t)ctx] = bos;
        memcpy(r->ids + i * (size_t)ctx + 1, stream + start, take * sizeof *stream);
        r->len[i] = (int)take + 1;
    }
    r->n_rows = (int)nr;
    r->ctx = ctx;
    return CR_OK;
}

typedef struct cr_eval_result {
    double mean_loss, mean_entropy, perplexity, seconds, tokens_per_s;
    int64_t n_predicted, n_forward;
    int n_rows;
} cr_eval_result;

/* Loss and entropy of next-token prediction over every position of every row. */
static int cr_eval_rows(const cr_model *m, const cr_rows *rows, int n_threads, int precise, cr_eval_result *res, cr_err *err) {
    memset(res, 0, sizeof *res);
    cr_session *s;
    int rc = cr_session_open(m, rows->ctx, n_threads, &s, err);
    if (rc) return rc;
    cr_session_set_precise(s, precise);
    const int V = m->cfg.n_vocab;
    float *logits = cr_malloc((size_t)rows->ctx * (size_t)V, sizeof *logits);   /* [ctx, V] */
    double *pos_loss = cr_malloc((size_t)rows->ctx, sizeof *pos_loss), *pos_ent = cr_malloc((size_t)rows->ctx, sizeof *pos_ent); /* [ctx] */
    if (!logits || !pos_loss || !pos_ent) {
        free(logits), free(pos_loss), free(pos_ent);
        cr_session_close(s);
        return cr_fail(err, CR_ENOMEM, "out of memory for logits");
    }
    double sum_loss = 0, sum_ent = 0, t0 = cr_now();
    for (int r = 0; r < rows->n_rows && !rc; r++) {
        const int32_t *ids = rows->ids + (size_t)r * (size_t)rows->ctx;
        int n = rows->len[r];
        cr_capture cap = {0};
        cap.logits = logits;
        if ((rc = cr_forward(s, ids, n, 0, &cap, err))) break;
        res->n_forward += n;
        /* Per-position statistics in parallel, summed in position order so that the result
         * does not depend on the thread count. */
#pragma omp parallel for num_threads(s->n_threads) schedule(static) if ((int64_t)n * V >= CR_PAR_MIN)
        for (int t = 0; t < n - 1; t++) {
            double lse, ent;
            cr_logits_stats(logits + (size_t)t * (size_t)V, V, &lse, &ent);
            pos_loss[t] = lse - logits[(size_t)t * (size_t)V + (size_t)ids[t + 1]];
            pos_ent[t] = ent;
        }
        for (int t = 0; t < n - 1; t++) sum_loss += pos_loss[t], sum_ent += pos_ent[t], res->n_predicted++;
    }
    res->seconds = cr_now() - t0;
    res->n_rows = rows->n_rows;
    if (!rc && res->n_predicted) {
        res->mean_loss = sum_loss / (double)res->n_predicted;
        res->mean_entropy = sum_ent / (double)res->n_predicted;
        res->perplexity = exp(res->mean_loss);
        res->tokens_per_s = res->seconds > 0 ? (double)res->n_forward / res->seconds : 0;
    }
    free(logits), free(pos_loss), free(pos_ent);
    cr_session_close(s);
    return rc;
}

/* ---- unigram distribution ---------------------------------------------------------------------
 * Token counts over a corpus tokenized as the model sees it.  File format (little-endian):
 * "CRUNIGR1", u32 n_vocab, u32 0, u64 total, u64 counts[n_vocab], u64 FNV-1a of the counts. */

void cr_unigram_close(cr_unigram *u) {
    if (!u) return;
    free(u->counts);
    free(u);
}

int32_t cr_unigram_n_vocab(const cr_unigram *u) { return u->n_vocab; }
uint64_t cr_unigram_total(const cr_unigram *u) { return u->total; }
const uint64_t *cr_unigram_counts(const cr_unigram *u) { return u->counts; }

static int cr_unigram_new(int32_t n_vocab, cr_unigram **out, cr_err *err) {
    *out = NULL;
    if (n_vocab < 1 || n_vocab > CR_MAX_VOCAB) return cr_fail(err, CR_EINVAL, "unigram: vocabulary size %d out of range", n_vocab);
    cr_unigram *u = calloc(1, sizeof *u);
    if (!u || !(u->counts = cr_calloc((size_t)n_vocab, sizeof *u->counts))) {
        free(u);
        return cr_fail(err, CR_ENOMEM, "out of memory");
    }
    u->n_vocab = n_vocab;
    *out = u;
    return CR_OK;
}


/* Adds the tokens of UTF-8 text; ids at or beyond the count's vocabulary are an error. */
int cr_unigram_add_text(cr_unigram *u, const cr_tokenizer *tok, const char *text, size_t len, cr_err *err) {
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = cr_tokenizer_encode(tok, text, len, 0, &ids, &n, err);
    if (rc) return rc;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= u->n_vocab) { free(ids); return cr_fail(err, CR_EINVAL, "token id %d outside the count's vocabulary of %d", ids[i], u->n_vocab); }
        u->counts[ids[i]]++;
    }
    u->total += n;
    free(ids);
    return CR_OK;
}

int cr_unigram_open_empty(int32_t n_vocab, cr_unigram **out, cr_err *err) { return cr_unigram_new(n_vocab, out, err); }

int cr_unigram_save(const cr_unigram *u, const char *path, cr_err *err) {
    cr_outfile o;
    int rc = cr_outfile_open(&o, path, err);
    if (rc) return rc;
    cr_gw w = {o.f, 0, 0};
    cr_gw_bytes(&w, "CRUNIGR1", 8);
    cr_gw_u32(&w, (uint32_t)u->n_vocab);
    cr_gw_u32(&w, 0);
    cr_gw_u64(&w, u->total);
    uint64_t h = 0xcbf29ce484222325ull;
    for (int32_t i = 0; i < u->n_vocab; i++) {
        unsigned char b[8];
        for (int k = 0; k < 8; k++) b[k] = (unsigned char)(u->counts[i] >> (8 * k));
        h = cr_fnv64(b, 8, h);
        cr_gw_bytes(&w, b, 8);
    }
    cr_gw_u64(&w, h);
    return cr_outfile_close(&o, !w.failed, err);
}

/* n_vocab > 0: the counts must cover exactly this many columns. */
int cr_unigram_open(const char *path, int32_t n_vocab, cr_unigram **out, cr_err *err) {
    *out = NULL;
    cr_map m;
    int rc = cr_map_open(&m, path, err);
    if (rc) return rc;
    const unsigned char *p = m.data;
    if (m.size < 32 || memcmp(p, "CRUNIGR1", 8) != 0) {
        cr_map_close(&m);
        return cr_fail(err, CR_EFORMAT, "%s: not a confreg unigram file (bad magic or truncated)", path);
    }
    uint32_t nv = cr_rd32(p + 8);
    if (nv < 1 || nv > CR_MAX_VOCAB || m.size != 24 + 8ull * nv + 8) {
        size_t size = m.size;
        cr_map_close(&m);
        return cr_fail(err, CR_EFORMAT, "%s: claims %u counts (%llu bytes) but holds %zu bytes", path, nv, 32 + 8ull * nv, size);
    }
    if (n_vocab > 0 && (int32_t)nv != n_vocab) {
        cr_map_close(&m);
        return cr_fail(err, CR_EINVAL, "%s: counts cover %u tokens but the model's vocabulary is %d", path, nv, n_vocab);
    }
    if (cr_fnv64(p + 24, 8ull * nv, 0xcbf29ce484222325ull) != cr_rd64(p + 24 + 8ull * nv)) {
        cr_map_close(&m);
        return cr_fail(err, CR_EFORMAT, "%s: checksum mismatch (corrupted counts)", path);
    }
    if ((rc = cr_unigram_new((int32_t)nv, out, err))) { cr_map_close(&m); return rc; }
    uint64_t sum = 0;
    for (uint32_t i = 0; i < nv; i++) (*out)->counts[i] = cr_rd64(p + 24 + 8ull * i), sum += (*out)->counts[i];
    uint64_t total = cr_rd64(p + 16);
    (*out)->total = total;
    cr_map_close(&m);
    if (sum != total) {
        cr_unigram_close(*out);
        *out = NULL;
        return cr_fail(err, CR_EFORMAT, "%s: counts sum to %llu but the header says %llu", path, (unsigned long long)sum, (unsigned long long)total);
    }
    return CR_OK;
}

/* log P_freq (add-one smoothed over all columns), its centred version u and v = u/|u|. */
typedef struct cr_freqdir {
    int32_t V;
    double *logp;                /* [V] */
    float *p;                    /* [V] P_freq */
    float *v;                    /* [V] unit frequency direction in logit space */
    double plogp;                /* sum P log P */
} cr_freqdir;

static void cr_freqdir_free(cr_freqdir *f) { free(f->logp), free(f->p), free(f->v); memset(f, 0, sizeof *f); }

static int cr_freqdir_make(cr_freqdir *f, const cr_unigram *u, cr_err *err) {
    memset(f, 0, sizeof *f);
    int32_t V = u->n_vocab;
    f->V = V;
    f->logp = cr_malloc((size_t)V, sizeof *f->logp), f->p = cr_malloc((size_t)V, sizeof *f->p), f->v = cr_malloc((size_t)V, sizeof *f->v);
    if (!f->logp || !f->p || !f->v) { cr_freqdir_free(f); return cr_fail(err, CR_ENOMEM, "out of memory"); }
    double denom = (double)u->total + (double)V, mean = 0, norm = 0;
    for (int32_t t = 0; t < V; t++) {
        double pt = ((double)u->counts[t] + 1.0) / denom;
        f->p[t] = (float)pt;
        f->logp[t] = log(pt);
        f->plogp += pt * f->logp[t];
        mean += f->logp[t];
    }
    mean /= V;
    for (int32_t t = 0; t < V; t++) norm += (f->logp[t] - mean) * (f->logp[t] - mean);
    norm = sqrt(norm);
    for (int32_t t = 0; t < V; t++) f->v[t] = norm > 0 ? (float)((f->logp[t] - mean) / norm) : 0.0f;
    return CR_OK;
}

/* ---- weight processing (SPEC §2, TransformerLens' defaults) -------------------------------- */

/* The unembedding with the final norm folded in and centred: z = (x~/s) W + b reproduces the
 * model's logits up to a per-token constant, which no softmax quantity sees. */
typedef struct cr_unembed {
    int d, V;
    float *W;                    /* [d, V] */
    float *b;                    /* [V] */
    float *col_norm;             /* [V] |W[:, t]| */
} cr_unembed;

static void cr_unembed_free(cr_unembed *u) { free(u->W), free(u->b), free(u->col_norm); memset(u, 0, sizeof *u); }

static int cr_unembed_make(const cr_model *m, cr_unembed *u, cr_err *err) {
    const cr_config *c = &m->cfg;
    const int d = c->d_model, V = c->n_vocab;
    memset(u, 0, sizeof *u);
    u->d = d, u->V = V;
    u->W = cr_malloc((size_t)d * (size_t)V, sizeof *u->W);
    u->b = cr_malloc((size_t)V, sizeof *u->b);
    u->col_norm = cr_malloc((size_t)V, sizeof *u->col_norm);
    float *row = cr_malloc((size_t)d, sizeof *row);
    if (!u->W || !u->b || !u->col_norm || !row) { free(row); cr_unembed_free(u); return cr_fail(err, CR_ENOMEM, "out of memory for the %d x %d unembedding", d, V); }
    for (int t = 0; t < V; t++) {
        cr_mat_row(&m->output, t, row);
        double bias = m->b_out ? m->b_out[t] : 0.0, mean = 0;
        for (int i = 0; i < d; i++) {
            if (m->out_norm_b) bias += (double)m->out_norm_b[i] * row[i];
            row[i] *= m->out_norm_w[i];
            mean += row[i];
        }
        mean = c->rms_norm ? 0.0 : mean / d;
        for (int i = 0; i < d; i++) u->W[(size_t)i * (size_t)V + (size_t)t] = (float)(row[i] - mean);
        u->b[t] = (float)bias;
    }
    free(row);
    for (int i = 0; i < d; i++) {
        float *wr = u->W + (size_t)i * (size_t)V;
        double mean = 0;
        for (int t = 0; t < V; t++) mean += wr[t];
        mean /= V;
        for (int t = 0; t < V; t++) wr[t] = (float)(wr[t] - mean);
    }
    double bm = 0;
    for (int t = 0; t < V; t++) bm += u->b[t];
    bm /= V;
    for (int t = 0; t < V; t++) u->b[t] = (float)(u->b[t] - bm);
    for (int t = 0; t < V; t++) u->col_norm[t] = 0;
    for (int i = 0; i < d; i++)
        for (int t = 0; t < V; t++) u->col_norm[t] += u->W[(size_t)i * (size_t)V + (size_t)t] * u->W[(size_t)i * (size_t)V + (size_t)t];
    for (int t = 0; t < V; t++) u->col_norm[t] = sqrtf(u->col_norm[t]);
    return CR_OK;
}

/* out[m, V] = A[m, d] W[d, V], the register-tiled product of section 4. */
static void cr_times_unembed(const cr_unembed *u, const float *A, int m, float *out, int n_threads) {
    cr_gemm_f32(A, m, u->d, u->W, u->V, u->V, out, u->V, n_threads);
}

/* Output vectors of one layer's neurons, [f, d]: column i of the down projection, centred over
 * d for LayerNorm models (the norm removes that component anyway). */
static int cr_neuron_outputs(const cr_model *m, int layer, float **out, cr_err *err) {
    const cr_config *c = &m->cfg;
    const int d = c->d_model, f = c->d_mlp;
    float *w = cr_malloc((size_t)f * (size_t)d, sizeof *w), *row = cr_malloc((size_t)f, sizeof *row);
    if (!w || !row) { free(w), free(row); return cr_fail(err, CR_ENOMEM, "out of memory"); }
    for (int r = 0; r < d; r++) {
        cr_mat_row(&m->layers[layer].w_down, r, row);
        for (int i = 0; i < f; i++) w[(size_t)i * (size_t)d + (size_t)r] = row[i];
    }
    free(row);
    if (!c->rms_norm)
        for (int i = 0; i < f; i++) {
            float *wi = w + (size_t)i * (size_t)d;
            double mean = 0;
            for (int r = 0; r < d; r++) mean += wi[r];
            mean /= d;
            for (int r = 0; r < d; r++) wi[r] = (float)(wi[r] - mean);
        }
    *out = w;
    return CR_OK;
}

/* ============================================================================================
 * Symmetric eigensolver (double precision)
 * ============================================================================================
 *
 * Public interface (internal to confreg):
 *
 *   static int cr_eigh(double *a, int n, double *w);
 *
 * a is n x n row-major and symmetric up to rounding (the two triangles are averaged).  On
 * return row j of a is the unit eigenvector of w[j] and w is ascending.  Returns 0 on success,
 * 1 if the QR iteration did not converge (60 sweeps for one eigenvalue; non-finite input ends
 * here), 2 if the 2n doubles of scratch could not be allocated, 3 if n < 0.
 *
 * Method: Householder reduction to tridiagonal form, explicit accumulation of the reflectors,
 * implicit symmetric QR with Wilkinson shifts, selection sort.  Everything is arranged so that
 * the eigenvectors are the ROWS of the work matrix: the reflectors come from rows, and every
 * Givens rotation of the QR phase combines two adjacent rows, so all O(n^3) inner loops run
 * over contiguous memory.
 */



static double eigh_dot(const double *x, const double *y, size_t n) {
    /* Independent partial sums: one chain of dependent adds would be latency bound, and the
     * compiler may not reassociate floating point on its own. */
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t j = 0, n4 = n - n % 4;
    for (; j < n4; j += 4) {
        s0 += x[j] * y[j];
        s1 += x[j + 1] * y[j + 1];
        s2 += x[j + 2] * y[j + 2];
        s3 += x[j + 3] * y[j + 3];
    }
    for (; j < n; j++) s0 += x[j] * y[j];
    return (s0 + s1) + (s2 + s3);
}

/* y += alpha x.  Pairs of elements and restrict let gcc -O2 use packed SSE2 arithmetic. */
static void eigh_axpy(double *restrict y, const double *restrict x, size_t n, double alpha) {
    size_t j = 0;
    for (; j + 2 <= n; j += 2) {
        y[j] += alpha * x[j];
        y[j + 1] += alpha * x[j + 1];
    }
    if (j < n) y[j] += alpha * x[j];
}

/* Reduce the lower triangle to T = R A R^T, R = P_2 ... P_{n-1}, P_k = I - u u^T (|u|^2 = 2)
 * acting on indices 0..k-1.  u_k is left in row k, columns 0..k-1, where it was built from;
 * u_k[k-1] == 0 marks P_k = I (a real reflector always has that entry nonzero).
 * d: diagonal of T, e[i] = T[i][i+1].  p: n doubles of scratch. */
static void eigh_tridiag(double *a, size_t n, double *d, double *e, double *p) {
    for (size_t k = n - 1; k >= 2; k--) {
        double *u = a + k * n, scale = 0, s2 = 0;
        d[k] = u[k];
        for (size_t j = 0; j + 1 < k; j++) scale = fmax(scale, fabs(u[j]));
        if (scale == 0) {   /* row already tridiagonal: skipping also keeps diagonals exact */
            e[k - 1] = u[k - 1];
            u[k - 1] = 0;
            continue;
        }
        /* Work with x/scale so that squaring can neither overflow nor underflow. */
        scale = fmax(scale, fabs(u[k - 1]));
        for (size_t j = 0; j < k; j++) {
            u[j] /= scale;
            s2 += u[j] * u[j];
        }
        /* alpha takes the sign opposite to x[k-1] so that x[k-1] - alpha does not cancel. */
        double alpha = -copysign(sqrt(s2), u[k - 1]);
        double f = 1 / sqrt(s2 - alpha * u[k - 1]);   /* |x - alpha e|^2 = 2 (s2 - alpha x) */
        e[k - 1] = alpha * scale;
        u[k - 1] -= alpha;
        for (size_t j = 0; j < k; j++) u[j] *= f;
        /* p = B u with B the leading k x k block, read from its lower triangle only. */
        memset(p, 0, k * sizeof *p);
        for (size_t i = 0; i < k; i++) {
            const double *ai = a + i * n;
            double ui = u[i];
            eigh_axpy(p, ai, i, ui);
            p[i] += eigh_dot(ai, u, i) + ai[i] * ui;
        }
        /* P B P = B - u q^T - q u^T with q = p - (u.p / 2) u. */
        double half = 0.5 * eigh_dot(u, p, k);
        for (size_t j = 0; j < k; j++) p[j] -= half * u[j];
        for (size_t i = 0; i < k; i++) {
            eigh_axpy(a + i * n, p, i + 1, -u[i]);
            eigh_axpy(a + i * n, u, i + 1, -p[i]);
        }
    }
    d[0] = a[0];
    if (n > 1) {
        d[1] = a[n + 1];
        e[0] = a[n];
    }
}

/* Overwrite a with R = P_2 P_3 ... P_{n-1}, built as M <- M P_k for rising k.  M = P_2..P_{k-1}
 * only differs from I in its leading (k-1) x (k-1) block, so it can grow in the rows whose u
 * has already been consumed while u_k, one row further down, is still intact. */
static void eigh_accumulate(double *a, size_t n) {
    a[0] = 1;
    for (size_t m = 1; m < n; m++) {
        double *am = a + m * n;
        for (size_t i = 0; i < m; i++) {
            am[i] = 0;
            a[i * n + m] = 0;
        }
        am[m] = 1;
        if (m + 1 == n || a[(m + 1) * n + m] == 0) continue;
        const double *u = a + (m + 1) * n;
        for (size_t i = 0; i <= m; i++) {
            double *ai = a + i * n;
            eigh_axpy(ai, u, m + 1, -eigh_dot(ai, u, m + 1));
        }
    }
}

/* Rows x and y of the eigenvector matrix follow the rotation applied to T (paired like
 * eigh_axpy for packed arithmetic). */
static void eigh_rot(double *restrict x, double *restrict y, size_t n, double c, double s) {
    size_t j = 0;
    for (; j + 2 <= n; j += 2) {
        double x0 = x[j], x1 = x[j + 1], y0 = y[j], y1 = y[j + 1];
        x[j] = c * x0 + s * y0;
        x[j + 1] = c * x1 + s * y1;
        y[j] = c * y0 - s * x0;
        y[j + 1] = c * y1 - s * x1;
    }
    if (j < n) {
        double t = x[j];
        x[j] = c * t + s * y[j];
        y[j] = c * y[j] - s * t;
    }
}

/* One implicit QR step on the unreduced block l..m of T, chasing the bulge downwards; the
 * rotations are applied to rows of v (n columns). */
static void eigh_qr_step(double *d, double *e, double *v, size_t n, size_t l, size_t m) {
    /* Wilkinson shift: eigenvalue of the trailing 2 x 2 nearer d[m]; written as b * (b / den)
     * with |den| >= |b| so that no square can overflow. */
    double delta = 0.5 * (d[m - 1] - d[m]), b = e[m - 1];
    double mu = d[m] - b * (b / (delta + copysign(hypot(delta, b), delta)));
    double x = d[l] - mu, z = e[l];
    for (size_t k = l; k < m; k++) {
        double r = hypot(x, z), c = 1, s = 0;
        if (r != 0) {
            c = x / r;
            s = z / r;
        }
        if (k > l) e[k - 1] = r;
        double dk = d[k], ek = e[k], dk1 = d[k + 1];
        d[k] = c * c * dk + 2 * c * s * ek + s * s * dk1;
        d[k + 1] = s * s * dk - 2 * c * s * ek + c * c * dk1;
        e[k] = c * s * (dk1 - dk) + (c - s) * (c + s) * ek;
        if (k + 1 < m) {   /* the rotation spills e[k+1] into the bulge at (k, k+2) */
            z = s * e[k + 1];
            e[k + 1] *= c;
        }
        x = e[k];
        eigh_rot(v + k * n, v + (k + 1) * n, n, c, s);
    }
}

static int eigh_negligible(const double *d, const double *e, size_t i) {
    /* Relative to the neighbouring diagonal, which keeps small eigenvalues accurate; the
     * absolute floor stops subnormal couplings from being chased forever. */
    return fabs(e[i]) <= DBL_EPSILON * (fabs(d[i]) + fabs(d[i + 1])) || fabs(e[i]) < DBL_MIN;
}

static int cr_eigh(double *a, int n, double *w) {
    if (n < 0) return 3;
    if (n == 0) return 0;
    size_t N = (size_t)n;
    double *e = malloc(2 * N * sizeof *e);
    if (!e) return 2;
    for (size_t i = 0; i < N; i++)
        for (size_t j = 0; j < i; j++) a[i * N + j] = 0.5 * (a[i * N + j] + a[j * N + i]);
    eigh_tridiag(a, N, w, e, e + N);
    eigh_accumulate(a, N);
    int rc = 0;
    for (size_t m = N - 1; m > 0 && rc == 0; m--) {
        for (int iter = 0;; iter++) {
            size_t l = m;
            while (l > 0 && !eigh_negligible(w, e, l - 1)) l--;
            if (l == m) break;
            if (iter == 60) {
                rc = 1;
                break;
            }
            eigh_qr_step(w, e, a, N, l, m);
        }
    }
    free(e);
    /* Selection sort: O(n) row swaps, O(n^2) in total, negligible next to the rest. */
    for (size_t i = 0; i + 1 < N && rc == 0; i++) {
        size_t k = i;
        for (size_t j = i + 1; j < N; j++)
            if (w[j] < w[k]) k = j;
        if (k == i) continue;
        double t = w[i];
        w[i] = w[k];
        w[k] = t;
        for (size_t j = 0; j < N; j++) {
            t = a[i * N + j];
            a[i * N + j] = a[k * N + j];
            a[k * N + j] = t;
        }
    }
    return rc;
}

/* Default k for the null space: 12 for d = 768 (GPT-2 small's published choice), else 1%. */
static int cr_default_k(int d) { return d == 768 ? 12 : (int)ceil(0.01 * d) < 1 ? 1 : (int)ceil(0.01 * d); }


/* The k left singular vectors of W with the smallest singular values, [k, d], and all d
 * singular values in ascending order, from the eigenvectors of W W^T in double precision. */
static int cr_unembed_svd(const cr_unembed *u, int k, float **null_basis, double **svals, int n_threads, cr_err *err) {
    const int d = u->d, V = u->V;
    double *G = cr_calloc((size_t)d * (size_t)d, sizeof *G), *w = cr_malloc((size_t)d, sizeof *w);
    if (!G || !w) { free(G), free(w); return cr_fail(err, CR_ENOMEM, "out of memory for a %d x %d Gram matrix", d, d); }
    (void)n_threads;
#pragma omp parallel for num_threads(cr_threads(n_threads)) schedule(dynamic, 4)
    for (int i = 0; i < d; i++) {
        const float *wi = u->W + (size_t)i * (size_t)V;
        for (int j = 0; j <= i; j++) {
            const float *wj = u->W + (size_t)j * (size_t)V;
            double s = 0;
            for (int t = 0; t < V; t++) s += (double)wi[t] * wj[t];
            G[(size_t)i * (size_t)d + (size_t)j] = G[(size_t)j * (size_t)d + (size_t)i] = s;
        }
    }
    if (cr_eigh(G, d, w)) { free(G), free(w); return cr_fail(err, CR_ERANGE, "eigensolver did not converge on the %d x %d Gram matrix", d, d); }
    float *nb = cr_malloc((size_t)k * (size_t)d, sizeof *nb);
    if (!nb) { free(G), free(w); return cr_fail(err, CR_ENOMEM, "out of memory"); }
    for (int j = 0; j < k; j++)
        for (int i = 0; i < d; i++) nb[(size_t)j * (size_t)d + (size_t)i] = (float)G[(size_t)j * (size_t)d + (size_t)i];
    for (int i = 0; i < d; i++) w[i] = w[i] > 0 ? sqrt(w[i]) : 0.0;
    free(G);
    *null_basis = nb;
    *svals = w;
    return CR_OK;
}

/* ---- per-neuron weight metrics ------------------------------------------------------------ */

typedef struct cr_neuron_row {
    int layer, index;
    double norm, logit_var, rho, freq_cos, mean_act;
    double te, de, ln_frac, dloss_te, dloss_de, dH_te, dH_de, abs_dkl, de_freq, freq_frac;
    int has_weights, has_freq_cos, has_effects, has_freq_effects, has_freq_mediation;
    int64_t n_tokens;
} cr_neuron_row;

/* norm, LogitVar, rho and (with a frequency direction) freq_cos for every neuron of a layer. */
static int cr_weight_metrics(const cr_model *m, int layer, int k, const cr_unembed *u, const cr_freqdir *fd,
                             cr_neuron_row *rows, double **svals_out, int n_threads, cr_err *err) {
    const cr_config *c = &m->cfg;
    const int d = c->d_model, f = c->d_mlp, V = c->n_vocab;
    float *w = NULL, *nb = NULL;
    double *sv = NULL;
    int rc = cr_neuron_outputs(m, layer, &w, err);
    if (!rc) rc = cr_unembed_svd(u, k, &nb, &sv, n_threads, err);
    const int NB = 32;
    float *g = rc ? NULL : cr_malloc((size_t)NB * (size_t)V, sizeof *g);
    if (!rc && !g) rc = cr_fail(err, CR_ENOMEM, "out of memory");
    double fnorm = 0;
    if (fd) for (int t = 0; t < V; t++) fnorm += (double)fd->v[t] * fd->v[t];
    for (int i0 = 0; !rc && i0 < f; i0 += NB) {
        int nbk = i0 + NB < f ? NB : f - i0;
        cr_times_unembed(u, w + (size_t)i0 * (size_t)d, nbk, g, n_threads);
#pragma omp parallel for num_threads(cr_threads(n_threads)) schedule(static)
        for (int j = 0; j < nbk; j++) {
            const float *wi = w + (size_t)(i0 + j) * (size_t)d, *gi = g + (size_t)j * (size_t)V;
            cr_neuron_row *r = &rows[i0 + j];
            double n2 = 0;
            for (int i = 0; i < d; i++) n2 += (double)wi[i] * wi[i];
            double nrm = sqrt(n2), s1 = 0, s2 = 0, gv = 0, gg = 0, proj = 0;
            for (int t = 0; t < V; t++) {
                double cs = u->col_norm[t] > 0 && nrm > 0 ? gi[t] / (nrm * u->col_norm[t]) : 0.0;
                s1 += cs, s2 += cs * cs;
                if (fd) gv += (double)gi[t] * fd->v[t], gg += (double)gi[t] * gi[t];
            }
            for (int q = 0; q < k; q++) {
                double pq = 0;
                for (int i = 0; i < d; i++) pq += (double)nb[(size_t)q * (size_t)d + (size_t)i] * wi[i];
                proj += pq * pq;
            }
            r->layer = layer, r->index = i0 + j;
            r->norm = nrm;
            r->logit_var = V > 1 ? (s2 - s1 * s1 / V) / (V - 1) : 0.0;
            r->rho = nrm > 0 ? sqrt(proj) / nrm : 0.0;
            r->has_weights = 1;
            if (fd) r->freq_cos = gg > 0 && fnorm > 0 ? gv / sqrt(gg * fnorm) : 0.0, r->has_freq_cos = 1;
        }
    }
    free(w), free(nb), free(g);
    if (!rc && svals_out) *svals_out = sv;
    else free(sv);
    return rc;
}

/* ---- mean ablation of final-layer neurons (SPEC §2 and §3) ---------------------------------- */

/* Positions whose effects count: 3 <= pos <= ctx-2 with a next token in the row, and neither
 * the token nor the next one BOS, EOS or newline. */
static int cr_token_counts(const int32_t *ids, int n, int pos, int ctx, int32_t bos, int32_t eos, int32_t nl) {
    if (pos < 3 || pos > ctx - 2 || pos + 1 >= n) return 0;
    for (int k = 0; k < 2; k++) {
        int32_t t = ids[pos + k];
        if (t == bos || t == eos || (nl >= 0 && t == nl)) return 0;
    }
    return 1;
}

/* ---- exact sums ---------------------------------------------------------------------------
 * Every aggregate of a scan is a sum over tokens.  Each is kept exactly, as an integer number
 * of 2^-1074 (the smallest double) in 32-bit digits, so a sum does not depend on the order of
 * its terms: any thread count, any split of the corpus or the neurons into shards, and any
 * resume point give the same bits.  Rounding to double happens once, when the sum is read. */
#define CR_XS_DIGITS 68           /* 2^-1074 .. 2^1102: every finite double, with room for carries */

typedef struct cr_xsum {
    int64_t d[CR_XS_DIGITS];      /* value = sum d[i] 2^(32 i - 1074); below the top, d[i] in [0, 2^32) once normalized */
    uint32_t pending;             /* additions since the last normalization; each moves a digit by < 2^33 */
    uint32_t special;             /* 1: a NaN was added, 2: +inf, 4: -inf */
} cr_xsum;

/* Propagates carries so that every digit but the top one lies in [0, 2^32). */
static void cr_xs_norm(cr_xsum *x) {
    int64_t carry = 0;
    for (int i = 0; i < CR_XS_DIGITS - 1; i++) {
        int64_t v = x->d[i] + carry, lo = (int64_t)((uint64_t)v & 0xffffffffu);
        x->d[i] = lo;
        carry = (v - lo) / 4294967296;   /* exact: v - lo is a multiple of 2^32 */
    }
    x->d[CR_XS_DIGITS - 1] += carry;
    x->pending = 0;
}

static void cr_xs_add(cr_xsum *x, double v) {
    uint64_t b;
    memcpy(&b, &v, 8);
    int e = (int)(b >> 52 & 0x7ff);
    uint64_t m = b & 0xfffffffffffffull;
    if (e == 0x7ff) { x->special |= m ? 1u : (b >> 63) ? 4u : 2u; return; }
    if (e == 0 && m == 0) return;
    if (e) m |= 1ull << 52;
    int p = e ? e - 1 : 0, k = p >> 5, s = p & 31;   /* |v| = m 2^(p - 1074) */
    uint64_t lo = (m & 0xffffffffu) << s, hi = (m >> 32) << s;
    int64_t a0 = (int64_t)(lo & 0xffffffffu), a1 = (int64_t)(lo >> 32) + (int64_t)(hi & 0xffffffffu), a2 = (int64_t)(hi >> 32);
    if (b >> 63) x->d[k] -= a0, x->d[k + 1] -= a1, x->d[k + 2] -= a2;
    else x->d[k] += a0, x->d[k + 1] += a1, x->d[k + 2] += a2;
    if (++x->pending >= (1u << 29)) cr_xs_norm(x);
}

static void cr_xs_merge(cr_xsum *x, const cr_xsum *y) {
    cr_xsum t = *y;
    cr_xs_norm(x), cr_xs_norm(&t);
    for (int i = 0; i < CR_XS_DIGITS; i++) x->d[i] += t.d[i];
    x->special |= t.special;
    cr_xs_norm(x);
}

/* The sum rounded to the nearest double (ties to even). */
static double cr_xs_value(const cr_xsum *xin) {
    if ((xin->special & 1) || (xin->special & 6) == 6) return NAN;
    if (xin->special) return xin->special & 2 ? INFINITY : -INFINITY;
    cr_xsum x = *xin;
    cr_xs_norm(&x);
    int neg = x.d[CR_XS_DIGITS - 1] < 0;
    if (neg) {
        for (int i = 0; i < CR_XS_DIGITS; i++) x.d[i] = -x.d[i];
        cr_xs_norm(&x);
    }
    if (x.d[CR_XS_DIGITS - 1]) return neg ? -INFINITY : INFINITY;   /* >= 2^1070 */
    int h = CR_XS_DIGITS - 2;
    while (h >= 0 && !x.d[h]) h--;
    if (h < 0) return 0.0;
    uint64_t top = (uint64_t)x.d[h], d1 = h >= 1 ? (uint64_t)x.d[h - 1] : 0, d2 = h >= 2 ? (uint64_t)x.d[h - 2] : 0;
    int lb = 31;
    while (!(top >> lb & 1)) lb--;
    const int E = 32 * h + lb - 1074;   /* weight of the leading bit */
    if (E < -1022) {                    /* subnormal: fewer than 52 bits, all in d[0..1]: exact */
        double r = ldexp((double)((uint64_t)x.d[1] << 32 | (uint64_t)x.d[0]), -1074);
        return neg ? -r : r;
    }
    /* 64 bits with the leading one at bit 63, and whether anything below them is set. */
    const int sh = 31 - lb;
    uint64_t bits = (top << 32 | d1) << sh, sticky;
    if (sh) bits |= d2 >> (32 - sh), sticky = d2 & ((1ull << (32 - sh)) - 1);
    else sticky = d2;
    for (int i = h - 3; i >= 0 && !sticky; i--) sticky = (uint64_t)x.d[i];
    uint64_t mant = bits >> 11, rest = bits & 0x7ff;
    if (rest > 0x400 || (rest == 0x400 && (sticky || (mant & 1)))) mant++;
    double r = ldexp((double)mant, E - 52);   /* exact, or infinity past DBL_MAX */
    return neg ? -r : r;
}

/* Compact form for files: special, first digit, digit count, the digits. */
static void cr_xs_write(cr_bw *b, const cr_xsum *xin) {
    cr_xsum x = *xin;
    cr_xs_norm(&x);
    int lo = 0, hi = CR_XS_DIGITS - 1;
    while (lo <= hi && !x.d[lo]) lo++;
    while (hi >= lo && !x.d[hi]) hi--;
    int n = hi >= lo ? hi - lo + 1 : 0;
    cr_bw_u32(b, x.special), cr_bw_u32(b, (uint32_t)(n ? lo : 0)), cr_bw_u32(b, (uint32_t)n);
    for (int i = 0; i < n; i++) cr_bw_u64(b, (uint64_t)x.d[lo + i]);
}

static void cr_xs_read(cr_br *r, cr_xsum *x) {
    memset(x, 0, sizeof *x);
    x->special = cr_br_u32(r);
    uint32_t lo = cr_br_u32(r), n = cr_br_u32(r);
    if (x->special > 7 || lo > CR_XS_DIGITS || n > CR_XS_DIGITS - lo) { r->bad = 1; return; }
    for (uint32_t i = 0; i < n; i++) {
        int64_t v = (int64_t)cr_br_u64(r);
        /* Normalized digits only: a file cannot smuggle in a value that overflows later adds. */
        if ((lo + i < CR_XS_DIGITS - 1 && (v < 0 || v > 0xffffffffll)) || v > (1ll << 40) || v < -(1ll << 40)) { r->bad = 1; return; }
        x->d[lo + i] = v;
    }
}

typedef struct cr_ablate_spec {
    int layer;                   /* must be the final layer */
    const int *neurons;          /* [n_neurons] indices into d_mlp */
    int n_neurons;
    const double *mean_act;      /* [d_mlp] fixed means, or NULL to compute them from all the rows */
    const cr_freqdir *fd;        /* NULL: no KL or frequency-mediated columns */
    int32_t newline_id;          /* -1 if none */
    int exact_recompute;         /* brute force: patch and re-run, the test oracle */
    int n_threads;
    int token_block;             /* counted tokens per block of the fast path (default 512) */
    int no_freq_mediation;       /* with fd: skip the frequency-restored logits (de_freq, freq_frac), a third
                                    of the fast path's work; KL is still computed */
} cr_ablate_spec;

/* Sums per neuron over the counted tokens. */
enum { CR_ACC_ABS_TE, CR_ACC_ABS_DE, CR_ACC_TE, CR_ACC_DE, CR_ACC_DH_TE, CR_ACC_DH_DE, CR_ACC_ABS_DKL, CR_ACC_ABS_FREQ, CR_ACC_SUMS };
typedef struct cr_ablate_acc {
    cr_xsum s[CR_ACC_SUMS];
    int64_t n;
} cr_ablate_acc;

static void cr_acc_add(cr_ablate_acc *a, double dl_te, double dl_de, double dh_te, double dh_de, double dkl, double dl_f) {
    const double v[CR_ACC_SUMS] = {fabs(dl_te), fabs(dl_de), dl_te, dl_de, dh_te, dh_de, fabs(dkl), fabs(dl_f)};
    for (int k = 0; k < CR_ACC_SUMS; k++) cr_xs_add(&a->s[k], v[k]);
    a->n++;
}

/* flags: CR_RES_FREQ (KL columns), CR_RES_NO_FM (but no frequency-mediated columns). */
enum { CR_RES_FREQ = 1, CR_RES_NO_FM = 2 };
static void cr_acc_finish(const cr_ablate_acc *a, int flags, cr_neuron_row *r) {
    const int has_freq = flags & CR_RES_FREQ;
    double n = a->n ? (double)a->n : 1.0, v[CR_ACC_SUMS];
    for (int k = 0; k < CR_ACC_SUMS; k++) v[k] = cr_xs_value(&a->s[k]) / n;
    r->te = v[CR_ACC_ABS_TE], r->de = v[CR_ACC_ABS_DE];
    r->ln_frac = r->te > 0 ? 1.0 - r->de / r->te : 0.0;
    r->dloss_te = v[CR_ACC_TE], r->dloss_de = v[CR_ACC_DE], r->dH_te = v[CR_ACC_DH_TE], r->dH_de = v[CR_ACC_DH_DE];
    r->n_tokens = a->n;
    r->has_effects = 1;
    if (has_freq) {
        r->abs_dkl = v[CR_ACC_ABS_DKL];
        r->de_freq = v[CR_ACC_ABS_FREQ];
        r->freq_frac = r->te > 0 ? 1.0 - r->de_freq / r->te : 0.0;
        r->has_freq_effects = 1;
        r->has_freq_mediation = !(flags & CR_RES_NO_FM);
    }
}

/* Clean per-token entropy H and KL(P_freq || p) over the counted tokens: sums for their
 * correlation, which `freq` reports as the baseline link between the two. */
enum { CR_CORR_H, CR_CORR_KL, CR_CORR_HH, CR_CORR_KK, CR_CORR_HK, CR_CORR_SUMS };
typedef struct cr_corr_acc {
    cr_xsum s[CR_CORR_SUMS];
    int64_t n;
} cr_corr_acc;

static void cr_corr_add(cr_corr_acc *c, double h, double kl) {
    const double v[CR_CORR_SUMS] = {h, kl, h * h, kl * kl, h * kl};
    for (int k = 0; k < CR_CORR_SUMS; k++) cr_xs_add(&c->s[k], v[k]);
    c->n++;
}

static double cr_corr_value(const cr_corr_acc *c) {
    double n = c->n ? (double)c->n : 1.0, v[CR_CORR_SUMS];
    for (int k = 0; k < CR_CORR_SUMS; k++) v[k] = cr_xs_value(&c->s[k]);
    double cov = v[CR_CORR_HK] - v[CR_CORR_H] * v[CR_CORR_KL] / n;
    double vh = v[CR_CORR_HH] - v[CR_CORR_H] * v[CR_CORR_H] / n, vk = v[CR_CORR_KK] - v[CR_CORR_KL] * v[CR_CORR_KL] / n;
    return vh > 0 && vk > 0 ? cov / sqrt(vh * vk) : 0.0;
}

/* ---- scans: state, checkpoints, shards ---------------------------------------------------------
 * A scan ablates a list of neurons over the evaluation rows [r0, r1).  Its state is everything
 * it has accumulated and how far it has got; the state can be saved at any safe point, resumed,
 * and merged with the states of scans over other rows or other neurons.  Because every
 * aggregate is an exact sum, a resumed or merged scan equals an uninterrupted one bit for bit.
 * The means the neurons are set to come from all the rows, in row order (or from the caller),
 * so every shard ablates to the same values. */
enum { CR_SCAN_MEAN, CR_SCAN_EFFECTS, CR_SCAN_DONE };

typedef struct cr_scan {
    uint64_t fingerprint;        /* what two states must share to be resumed or merged (set by the caller) */
    int layer, d_mlp, n_rows;    /* n_rows: all the evaluation rows, of which this scan covers [r0, r1) */
    int r0, r1;
    int *neurons, n_neurons;     /* [n_neurons] */
    int phase;                   /* CR_SCAN_* */
    int row, block_end, group;   /* mean pass: rows [0,row) summed.  Effects: rows [r0,row) done for every
                                    neuron, and rows [row,block_end) done for neurons [0,group) */
    double *mean_sum;            /* [d_mlp] mean pass: activation sums over rows [0,row) */
    int64_t mean_count;
    double *mean;                /* [d_mlp] the values the neurons are set to */
    int64_t mean_tokens;         /* tokens behind the means (0 when the caller gave them) */
    cr_ablate_acc *acc;          /* [n_neurons] */
    cr_corr_acc corr;            /* needs unigram counts; zero otherwise */
    cr_neuron_row *wt;           /* [n_neurons] weight metrics carried for the caller, or NULL */
    char *meta;                  /* the caller's description, carried verbatim, or NULL */
    double seconds;              /* wall time, summed over resumed runs */
} cr_scan;

/* Called where the state is complete and may be saved; non-zero stops the scan (CR_EINTR). */
typedef int (*cr_scan_hook)(void *user, const cr_scan *st);

static void cr_scan_free(cr_scan *st) {
    free(st->neurons), free(st->mean_sum), free(st->mean), free(st->acc), free(st->wt), free(st->meta);
    memset(st, 0, sizeof *st);
}

static int cr_scan_alloc(cr_scan *st, int d_mlp, int n_neurons, cr_err *err) {
    st->d_mlp = d_mlp, st->n_neurons = n_neurons;
    st->neurons = cr_calloc((size_t)n_neurons + 1, sizeof *st->neurons);
    st->mean_sum = cr_calloc((size_t)d_mlp + 1, sizeof *st->mean_sum);
    st->mean = cr_calloc((size_t)d_mlp + 1, sizeof *st->mean);
    st->acc = cr_calloc((size_t)n_neurons + 1, sizeof *st->acc);
    if (!st->neurons || !st->mean_sum || !st->mean || !st->acc) { cr_scan_free(st); return cr_fail(err, CR_ENOMEM, "out of memory for the scan state"); }
    return CR_OK;
}

/* A fresh scan of rows [r0, r1) for sp's neurons; with sp->mean_act there is no mean pass. */
static int cr_scan_init(cr_scan *st, const cr_model *m, const cr_rows *rows, const cr_ablate_spec *sp, int r0, int r1, cr_err *err) {
    memset(st, 0, sizeof *st);
    const cr_config *c = &m->cfg;
    if (sp->n_neurons < 1) return cr_fail(err, CR_EINVAL, "no neurons to ablate");
    if (r0 < 0 || r1 > rows->n_rows || r0 > r1) return cr_fail(err, CR_EINVAL, "rows %d-%d are outside the %d evaluation rows", r0, r1 - 1, rows->n_rows);
    int rc = cr_scan_alloc(st, c->d_mlp, sp->n_neurons, err);
    if (rc) return rc;
    st->layer = sp->layer, st->n_rows = rows->n_rows, st->r0 = r0, st->r1 = r1;
    memcpy(st->neurons, sp->neurons, (size_t)sp->n_neurons * sizeof *st->neurons);
    st->row = st->block_end = 0;
    st->phase = CR_SCAN_MEAN;
    if (sp->mean_act) {
        memcpy(st->mean, sp->mean_act, (size_t)c->d_mlp * sizeof *st->mean);
        st->phase = CR_SCAN_EFFECTS, st->row = st->block_end = r0;
    }
    return CR_OK;
}

static void cr_scan_results(const cr_scan *st, int flags, cr_neuron_row *out) {
    for (int j = 0; j < st->n_neurons; j++) {
        memset(&out[j], 0, sizeof out[j]);
        if (st->wt) out[j] = st->wt[j];
        out[j].layer = st->layer, out[j].index = st->neurons[j];
        out[j].mean_act = st->mean[st->neurons[j]];
        cr_acc_finish(&st->acc[j], flags, &out[j]);
    }
}

/* The mean pass: activation sums over all rows in row order, resumable after any row. */
static int cr_scan_mean_pass(const cr_model *m, const cr_rows *rows, const cr_ablate_spec *sp, cr_scan *st, cr_scan_hook hook, void *user, cr_err *err) {
    const int f = m->cfg.d_mlp, L = st->layer;
    cr_session *s;
    int rc = cr_session_open(m, rows->ctx, sp->n_threads, &s, err);
    if (rc) return rc;
    float *act = cr_malloc((size_t)rows->ctx * (size_t)f, sizeof *act);   /* [ctx, f] */
    float **mlp = cr_calloc((size_t)m->cfg.n_layers, sizeof *mlp);
    if (!act || !mlp) { free(act), free(mlp); cr_session_close(s); return cr_fail(err, CR_ENOMEM, "out of memory"); }
    mlp[L] = act;
    for (; st->row < rows->n_rows && !rc; ) {
        cr_capture cap = {0};
        cap.mlp_post = mlp;
        int n = rows->len[st->row];
        if ((rc = cr_forward(s, rows->ids + (size_t)st->row * (size_t)rows->ctx, n, 0, &cap, err))) break;
        for (int t = 0; t < n; t++)
            for (int i = 0; i < f; i++) st->mean_sum[i] += act[(size_t)t * (size_t)f + (size_t)i];
        st->mean_count += n;
        st->row++;
        if (st->row < rows->n_rows && hook && hook(user, st)) rc = cr_fail(err, CR_EINTR, "interrupted");
    }
    if (!rc) {
        for (int i = 0; i < f; i++) st->mean[i] = st->mean_count ? st->mean_sum[i] / (double)st->mean_count : 0.0;
        st->mean_tokens = st->mean_count;
        st->phase = CR_SCAN_EFFECTS, st->row = st->block_end = st->r0, st->group = 0;
    }
    free(act), free(mlp);
    cr_session_close(s);
    return rc;
}

/* Two-pass log-sum-exp and entropy of z = a*inv + bias (+ cf*v) over the vocabulary for the
 * three variants an ablation needs: TE (inv_t), DE (inv_d) and frequency-restored TE. */
typedef struct cr_fused_out { double lse_t, h_t, lse_d, h_d, lse_f; } cr_fused_out;

static void cr_fused_ablation_scalar(const float *z0, const float *g, const float *b, const float *v, int V, float delta,
                                     float inv_t, float inv_d, float cf, cr_fused_out *o) {
    float mt = -INFINITY, md = -INFINITY, mf = -INFINITY;
    for (int t = 0; t < V; t++) {
        float a = z0[t] + delta * g[t], zt = a * inv_t + b[t], zd = a * inv_d + b[t];
        mt = fmaxf(mt, zt), md = fmaxf(md, zd);
        if (v) mf = fmaxf(mf, zt + cf * v[t]);
    }
    double st = 0, sd = 0, sf = 0, et = 0, ed = 0;
    for (int t = 0; t < V; t++) {
        float a = z0[t] + delta * g[t], zt = a * inv_t + b[t] - mt, zd = a * inv_d + b[t] - md;
        float xt = expf(zt), xd = expf(zd);
        st += xt, sd += xd, et += (double)xt * zt, ed += (double)xd * zd;
        if (v) sf += expf(zt + mt + cf * v[t] - mf);
    }
    o->lse_t = mt + log(st), o->h_t = log(st) - et / st;
    o->lse_d = md + log(sd), o->h_d = log(sd) - ed / sd;
    o->lse_f = v ? mf + log(sf) : 0;
}

/* Per-token quantities of the clean run, for the rank-1 identity. */
typedef struct cr_tok_state {
    float s, inv_s;              /* final-norm scale */
    double zmax, z0abs;          /* clean maximum logit, max |z0|: bounds for the kernel's shifts */
    int32_t target;
    double lse, h, zy, zv, zp;   /* clean log-sum-exp, entropy, target logit, <v,z>, <P,z> */
} cr_tok_state;

/* Counted tokens of a row. */
static int cr_row_counted(const cr_model *m, const cr_rows *rows, int r, int32_t nl) {
    const int32_t *ids = rows->ids + (size_t)r * (size_t)rows->ctx;
    int n = rows->len[r], k = 0;
    for (int t = 0; t < n; t++) k += cr_token_counts(ids, n, t, rows->ctx, m->cfg.bos_id, m->cfg.eos_id, nl);
    return k;
}

static int cr_ablate_fast(const cr_model *m, const cr_rows *rows, const cr_ablate_spec *sp, cr_scan *st, cr_scan_hook hook, void *user, cr_err *err) {
    const cr_config *c = &m->cfg;
    const int d = c->d_model, f = c->d_mlp, V = c->n_vocab, L = st->layer, NS = st->n_neurons;
    const int *neurons = st->neurons;
    const double *mean_act = st->mean;
    const int NB = 32;
    enum { TN = 4, TQ = 8, CH = 2048 };
    const cr_freqdir *fd = sp->fd;
    const int has_f = fd && !sp->no_freq_mediation;   /* the frequency-restored variant */
    /* Blocks are whole rows, so that a saved state names its block by rows.  A block holds
     * token_block counted tokens, or one longer row; a resumed block may come from a run with
     * another block size. */
    int TB = sp->token_block > 0 ? sp->token_block : 512;
    if (TB < rows->ctx) TB = rows->ctx;
    if (st->group > 0) {
        int k = 0;
        for (int r = st->row; r < st->block_end; r++) k += cr_row_counted(m, rows, r, sp->newline_id);
        if (TB < k) TB = k;
    }
    cr_unembed u;
    int rc = cr_unembed_make(m, &u, err);
    if (rc) return rc;
    float *wall = NULL;
    if ((rc = cr_neuron_outputs(m, L, &wall, err))) { cr_unembed_free(&u); return rc; }
    /* Selected neurons' output vectors and their constants. */
    float *w = cr_malloc((size_t)NS * (size_t)d, sizeof *w);                  /* [NS, d] */
    double *w2 = cr_malloc((size_t)NS, sizeof *w2);                           /* |w~|^2 */
    cr_session *s = NULL;
    float *X = cr_malloc((size_t)TB * (size_t)d, sizeof *X);                  /* [TB, d] centred residuals */
    float *A = cr_malloc((size_t)TB * (size_t)NS, sizeof *A);                 /* [TB, NS] activations */
    float *XW = cr_malloc((size_t)TB * (size_t)NS, sizeof *XW);               /* [TB, NS] <x~, w~> */
    float *Z0 = cr_malloc((size_t)TB * (size_t)V, sizeof *Z0);                /* [TB, V] */
    float *G = cr_malloc((size_t)NB * (size_t)V, sizeof *G);                  /* [NB, V] */
    double *kl0 = cr_malloc((size_t)TB, sizeof *kl0);                         /* [TB] clean KL(P_freq || p) */
    cr_tok_state *ts = cr_malloc((size_t)TB, sizeof *ts);                     /* [TB] */
    float *resid = cr_malloc((size_t)rows->ctx * (size_t)d, sizeof *resid);  /* [ctx, d] */
    float *scale = cr_malloc((size_t)rows->ctx, sizeof *scale);               /* [ctx] */
    float *act = cr_malloc((size_t)rows->ctx * (size_t)f, sizeof *act);       /* [ctx, f] */
    float **mlp = cr_calloc((size_t)c->n_layers, sizeof *mlp);
    if (!w || !w2 || !X || !A || !XW || !Z0 || !G || !kl0 || !ts || !resid || !scale || !act || !mlp) { rc = cr_fail(err, CR_ENOMEM, "out of memory for the ablation buffers (token block %d)", TB); goto done; }
    for (int j = 0; j < NS; j++) {
        memcpy(w + (size_t)j * (size_t)d, wall + (size_t)neurons[j] * (size_t)d, (size_t)d * sizeof *w);
        double q = 0;
        for (int i = 0; i < d; i++) q += (double)w[(size_t)j * d + i] * w[(size_t)j * d + i];
        w2[j] = q;
    }
    double vb = 0, pb = 0, vabs = 0;
    if (fd) for (int t = 0; t < V; t++) vb += (double)fd->v[t] * u.b[t], pb += (double)fd->p[t] * u.b[t], vabs = fmax(vabs, fabs(fd->v[t]));
    if ((rc = cr_session_open(m, rows->ctx, sp->n_threads, &s, err))) goto done;
    mlp[L] = act;
    const int32_t bos = c->bos_id, eos = c->eos_id;
    while (st->row < st->r1) {
        /* The block: rows [row, block_end). */
        if (st->group == 0) {
            int re = st->row, k = 0;
            while (re < st->r1) {
                int kr = cr_row_counted(m, rows, re, sp->newline_id);
                if (re > st->row && k + kr > TB) break;
                k += kr, re++;
            }
            st->block_end = re;
        }
        int nt = 0;
        for (int r = st->row; r < st->block_end; r++) {
            const int32_t *ids = rows->ids + (size_t)r * (size_t)rows->ctx;
            int n = rows->len[r];
            cr_capture cap = {0};
            cap.resid_final = resid, cap.norm_scale = scale, cap.mlp_post = mlp;
            if ((rc = cr_forward(s, ids, n, 0, &cap, err))) goto done;
            for (int t = 0; t < n; t++) {
                if (!cr_token_counts(ids, n, t, rows->ctx, bos, eos, sp->newline_id)) continue;
                float *xt = X + (size_t)nt * (size_t)d;
                double mean = 0;
                for (int i = 0; i < d; i++) mean += resid[(size_t)t * d + i];
                mean = c->rms_norm ? 0.0 : mean / d;
                for (int i = 0; i < d; i++) xt[i] = (float)(resid[(size_t)t * d + i] - mean);
                ts[nt].s = scale[t], ts[nt].inv_s = 1.0f / scale[t], ts[nt].target = ids[t + 1];
                for (int j = 0; j < NS; j++) A[(size_t)nt * NS + j] = act[(size_t)t * f + neurons[j]];
                nt++;
            }
        }
        if (nt == 0) {
            st->row = st->block_end, st->group = 0;
            if (hook && st->row < st->r1 && hook(user, st)) { rc = cr_fail(err, CR_EINTR, "interrupted"); goto done; }
            continue;
        }
        cr_times_unembed(&u, X, nt, Z0, sp->n_threads);
#pragma omp parallel for num_threads(cr_threads(sp->n_threads)) schedule(static)
        for (int q = 0; q < nt; q++) {
            const float *z0 = Z0 + (size_t)q * (size_t)V;
            cr_tok_state *tq = &ts[q];
            float mx = -INFINITY;
            for (int t = 0; t < V; t++) mx = fmaxf(mx, fmaf(z0[t], tq->inv_s, u.b[t]));
            double zv = 0, zp = 0;
            if (fd)
                for (int t = 0; t < V; t++) zv += (double)fd->v[t] * z0[t], zp += (double)fd->p[t] * z0[t];
            /* The clean statistics go through the same kernel as the ablated ones, so that the
             * exponential's own small error cancels in every difference. */
            cr_fused_par cp = {0.0f, tq->inv_s, tq->inv_s, 0.0f, mx, mx, mx, 0};
            double ca[5] = {0, 0, 0, 0, 0};
            for (int c0 = 0; c0 < V; c0 += CH) cr_fused_chunk(z0 + c0, z0 + c0, u.b + c0, NULL, c0 + CH < V ? CH : V - c0, &cp, ca);
            double se = ca[0], sez = ca[1];
            tq->lse = mx + log(se), tq->h = log(se) - sez / se;
            float za = 0;
            for (int t = 0; t < V; t++) za = fmaxf(za, fabsf(z0[t]));
            tq->zmax = mx, tq->z0abs = za;
            tq->zy = (double)z0[tq->target] * tq->inv_s + u.b[tq->target];
            tq->zv = zv, tq->zp = zp;   /* of z0; scaled per variant below */
            kl0[q] = fd ? fd->plogp - (zp * tq->inv_s + pb) + tq->lse : 0.0;
            for (int j = 0; j < NS; j++) XW[(size_t)q * NS + j] = cr_dot_f32(X + (size_t)q * d, w + (size_t)j * d, d);
        }
        /* A resumed block has its clean statistics counted already. */
        if (fd && st->group == 0)
            for (int q = 0; q < nt; q++) cr_corr_add(&st->corr, ts[q].h, kl0[q]);
        for (int j0 = st->group; j0 < NS; j0 += NB) {
            int nb = j0 + NB < NS ? NB : NS - j0;
            cr_times_unembed(&u, w + (size_t)j0 * (size_t)d, nb, G, sp->n_threads);
            /* Tiles of TN neurons x TQ tokens walk the vocabulary in cache-sized chunks, so each
             * chunk of z0 and g is loaded once for a whole tile.  Threads take whole neuron
             * tiles; each neuron's sums are exact, so nothing depends on the thread count. */
            const int n_tiles = (nb + TN - 1) / TN;
#pragma omp parallel for num_threads(cr_threads(sp->n_threads)) schedule(dynamic, 1)
            for (int tile = 0; tile < n_tiles; tile++) {
                const int ja = tile * TN, jb = ja + TN < nb ? ja + TN : nb;
                double gv[TN], gp[TN], gabs[TN];
                for (int j = ja; j < jb; j++) {
                    const float *g = G + (size_t)j * (size_t)V;
                    double sv = 0, spp = 0, mg = 0;
                    for (int t = 0; t < V; t++) {
                        if (fd) sv += (double)fd->v[t] * g[t], spp += (double)fd->p[t] * g[t];
                        mg = fmax(mg, fabs(g[t]));
                    }
                    gv[j - ja] = sv, gp[j - ja] = spp, gabs[j - ja] = mg;
                }
                for (int q0 = 0; q0 < nt; q0 += TQ) {
                    const int q1 = q0 + TQ < nt ? q0 + TQ : nt;
                    cr_fused_par par[TN * TQ];
                    double accs[TN * TQ][5], inv_t[TN * TQ], delta[TN * TQ], cfv[TN * TQ];
                    for (int j = ja; j < jb; j++)
                        for (int q = q0; q < q1; q++) {
                            const int k = (j - ja) * TQ + (q - q0), J = j0 + j;
                            const cr_tok_state *tq = &ts[q];
                            double dl = mean_act[neurons[J]] - A[(size_t)q * NS + J];
                            double s2t = (double)tq->s * tq->s + (2.0 * dl * XW[(size_t)q * NS + J] + dl * dl * w2[J]) / d;
                            double it = dl == 0 ? (double)tq->inv_s : 1.0 / sqrt(s2t), cf = 0;
                            if (fd) cf = (tq->zv * tq->inv_s + vb) - ((tq->zv + dl * gv[j - ja]) * it + vb);
                            double sh_t = tq->zmax + tq->z0abs * fabs(it - tq->inv_s) + fabs(dl) * gabs[j - ja] * it;
                            double sh_d = tq->zmax + fabs(dl) * gabs[j - ja] * tq->inv_s;
                            cr_fused_par pp = {(float)dl, (float)it, tq->inv_s, (float)cf, (float)sh_t, (float)sh_d, (float)(sh_t + fabs(cf) * vabs), has_f};
                            par[k] = pp;
                            inv_t[k] = it, delta[k] = dl, cfv[k] = cf;
                            for (int x = 0; x < 5; x++) accs[k][x] = 0;
                        }
                    for (int c0 = 0; c0 < V; c0 += CH) {
                        const int len = c0 + CH < V ? CH : V - c0;
                        for (int j = ja; j < jb; j++)
                            for (int q = q0; q < q1; q++) {
                                const int k = (j - ja) * TQ + (q - q0);
                                cr_fused_chunk(Z0 + (size_t)q * V + c0, G + (size_t)j * V + c0, u.b + c0, has_f ? fd->v + c0 : NULL, len, &par[k], accs[k]);
                            }
                    }
                    for (int j = ja; j < jb; j++)
                        for (int q = q0; q < q1; q++) {
                            const int k = (j - ja) * TQ + (q - q0), J = j0 + j;
                            const cr_tok_state *tq = &ts[q];
                            const float *z0 = Z0 + (size_t)q * V, *g = G + (size_t)j * V;
                            double *ac = accs[k];
                            double lse_t = par[k].shift_t + log(ac[0]), h_t = log(ac[0]) - ac[1] / ac[0];
                            double lse_d = par[k].shift_d + log(ac[2]), h_d = log(ac[2]) - ac[3] / ac[2];
                            double lse_f = has_f ? par[k].shift_f + log(ac[4]) : 0;
                            /* A bound far above the true maximum would leave only underflowed
                             * terms: redo such a pair with exact maxima. */
                            if (!(ac[0] > 1e-30 && ac[2] > 1e-30 && (!has_f || ac[4] > 1e-30))) {
                                cr_fused_out fo;
                                cr_fused_ablation_scalar(z0, g, u.b, has_f ? fd->v : NULL, V, par[k].delta, par[k].inv_t, par[k].inv_d, par[k].cf, &fo);
                                lse_t = fo.lse_t, h_t = fo.h_t, lse_d = fo.lse_d, h_d = fo.h_d, lse_f = fo.lse_f;
                            }
                            double ay = z0[tq->target] + delta[k] * g[tq->target];
                            double zty = ay * inv_t[k] + u.b[tq->target], zdy = ay * tq->inv_s + u.b[tq->target];
                            double l0 = tq->lse - tq->zy, lt = lse_t - zty, ld = lse_d - zdy, dkl = 0, lf = 0;
                            if (fd) {
                                double klt = fd->plogp - ((tq->zp + delta[k] * gp[j - ja]) * inv_t[k] + pb) + lse_t;
                                dkl = klt - kl0[q];
                                if (has_f) lf = lse_f - (zty + cfv[k] * fd->v[tq->target]);
                            }
                            cr_acc_add(&st->acc[J], lt - l0, ld - l0, h_t - tq->h, h_d - tq->h, dkl, has_f ? lf - l0 : 0);
                        }
                }
            }
            st->group = j0 + nb;
            if (st->group >= NS) st->row = st->block_end, st->group = 0;
            if (hook && st->row < st->r1 && hook(user, st)) { rc = cr_fail(err, CR_EINTR, "interrupted"); goto done; }
        }
    }
done:
    free(w), free(w2), free(X), free(A), free(XW), free(Z0), free(G), free(kl0), free(ts), free(resid), free(scale), free(act), free(mlp), free(wall);
    cr_session_close(s);
    cr_unembed_free(&u);
    return rc;
}

/* The brute-force oracle: set the neuron to its mean through the forward pass's edit hook,
 * re-run, and read every quantity off the recomputed logits. */
typedef struct cr_set_neuron { int layer, neuron; float value; } cr_set_neuron;
static void cr_set_neuron_hook(void *user, int layer, int pos0, int n, int d_mlp, float *act) {
    const cr_set_neuron *sn = user;
    (void)pos0;
    if (layer != sn->layer) return;
    for (int t = 0; t < n; t++) act[(size_t)t * (size_t)d_mlp + (size_t)sn->neuron] = sn->value;
}

static void cr_stats_of(const float *z, int V, const cr_freqdir *fd, double *lse, double *h, double *kl) {
    cr_logits_stats(z, V, lse, h);
    if (fd && kl) {
        double pz = 0;
        for (int t = 0; t < V; t++) pz += (double)fd->p[t] * z[t];
        *kl = fd->plogp - pz + *lse;
    }
}

static int cr_ablate_brute(const cr_model *m, const cr_rows *rows, const cr_ablate_spec *sp, cr_scan *st, cr_scan_hook hook, void *user, cr_err *err) {
    const cr_config *c = &m->cfg;
    const int d = c->d_model, V = c->n_vocab, P = rows->ctx;
    const cr_freqdir *fd = sp->fd;
    cr_session *s;
    int rc = cr_session_open(m, P, sp->n_threads, &s, err);
    if (rc) return rc;
    float *z0 = cr_malloc((size_t)P * (size_t)V, sizeof *z0), *z1 = cr_malloc((size_t)P * (size_t)V, sizeof *z1);   /* [P, V] */
    float *sc0 = cr_malloc((size_t)P, sizeof *sc0), *x1 = cr_malloc((size_t)P * (size_t)d, sizeof *x1);              /* [P], [P, d] */
    float *h = cr_malloc((size_t)d, sizeof *h), *zd = cr_malloc((size_t)V, sizeof *zd), *zf = cr_malloc((size_t)V, sizeof *zf);
    float *orow = cr_malloc((size_t)V * (size_t)d, sizeof *orow);                                                  /* [V, d] */
    double *clean = cr_malloc((size_t)P * 3, sizeof *clean);                                                       /* [P, 3] lse, H, KL */
    if (!z0 || !z1 || !sc0 || !x1 || !h || !zd || !zf || !orow || !clean) { rc = cr_fail(err, CR_ENOMEM, "out of memory"); goto done; }
    for (int t = 0; t < V; t++) cr_mat_row(&m->output, t, orow + (size_t)t * (size_t)d);
    while (st->row < st->r1 && !rc) {
        const int r = st->row;
        const int32_t *ids = rows->ids + (size_t)r * (size_t)rows->ctx;
        int n = rows->len[r];
        cr_capture cap = {0};
        cap.logits = z0, cap.norm_scale = sc0;
        if ((rc = cr_forward(s, ids, n, 0, &cap, err))) break;
        for (int t = 0; t < n; t++) {
            double *cl = clean + 3 * (size_t)t;
            cl[2] = 0;
            cr_stats_of(z0 + (size_t)t * V, V, fd, &cl[0], &cl[1], &cl[2]);
            /* A resumed row has its clean statistics counted already. */
            if (fd && st->group == 0 && cr_token_counts(ids, n, t, rows->ctx, c->bos_id, c->eos_id, sp->newline_id)) cr_corr_add(&st->corr, cl[1], cl[2]);
        }
        st->block_end = r + 1;
        for (int j = st->group; j < st->n_neurons && !rc; j++) {
            cr_set_neuron sn = {st->layer, st->neurons[j], (float)st->mean[st->neurons[j]]};
            cr_capture ce = {0};
            ce.logits = z1, ce.resid_final = x1, ce.mlp_edit = cr_set_neuron_hook, ce.user = &sn;
            if ((rc = cr_forward(s, ids, n, 0, &ce, err))) break;
            for (int t = 0; t < n; t++) {
                if (!cr_token_counts(ids, n, t, rows->ctx, c->bos_id, c->eos_id, sp->newline_id)) continue;
                const float *zc = z0 + (size_t)t * V, *zt = z1 + (size_t)t * V;
                int32_t y = ids[t + 1];
                const double lse0 = clean[3 * (size_t)t], h0 = clean[3 * (size_t)t + 1], kl0 = clean[3 * (size_t)t + 2];
                double lse1, h1, kl1 = 0, lsed, hd, lsef = 0, hf;
                cr_stats_of(zt, V, fd, &lse1, &h1, &kl1);
                /* Direct effect: recompute the final norm with the clean scale. */
                const float *xt = x1 + (size_t)t * d;
                double mean = 0;
                for (int i = 0; i < d; i++) mean += xt[i];
                mean = c->rms_norm ? 0.0 : mean / d;
                for (int i = 0; i < d; i++) h[i] = (float)((xt[i] - mean) / sc0[t]) * m->out_norm_w[i] + (m->out_norm_b ? m->out_norm_b[i] : 0.0f);
                for (int v = 0; v < V; v++) zd[v] = cr_dot_f32(orow + (size_t)v * d, h, d) + (m->b_out ? m->b_out[v] : 0.0f);
                cr_logits_stats(zd, V, &lsed, &hd);
                double lf = 0;
                if (fd && !sp->no_freq_mediation) {
                    double cv = 0, tv = 0;
                    for (int v = 0; v < V; v++) cv += (double)fd->v[v] * zc[v], tv += (double)fd->v[v] * zt[v];
                    for (int v = 0; v < V; v++) zf[v] = zt[v] + (float)(cv - tv) * fd->v[v];
                    cr_logits_stats(zf, V, &lsef, &hf);
                    lf = lsef - zf[y];
                }
                double l0 = lse0 - zc[y];
                cr_acc_add(&st->acc[j], (lse1 - zt[y]) - l0, (lsed - zd[y]) - l0, h1 - h0, hd - h0, kl1 - kl0, fd && !sp->no_freq_mediation ? lf - l0 : 0);
            }
            if (rc) break;
            st->group = j + 1;
            if (st->group >= st->n_neurons) st->row = r + 1, st->group = 0;
            if (hook && st->row < st->r1 && hook(user, st)) rc = cr_fail(err, CR_EINTR, "interrupted");
        }
    }
done:
    free(z0), free(z1), free(sc0), free(x1), free(h), free(zd), free(zf), free(orow), free(clean);
    cr_session_close(s);
    return rc;
}

/* Runs (or resumes) a scan to the end.  The hook, if any, is called at every safe point. */
static int cr_scan_run(const cr_model *m, const cr_rows *rows, const cr_ablate_spec *sp, cr_scan *st, cr_scan_hook hook, void *user, cr_err *err) {
    const cr_config *c = &m->cfg;
    if (st->layer != c->n_layers - 1)
        return cr_fail(err, CR_EINVAL, "layer %d: ablation acts through the final norm, so only final-layer (%d) neurons are supported", st->layer, c->n_layers - 1);
    for (int j = 0; j < st->n_neurons; j++)
        if (st->neurons[j] < 0 || st->neurons[j] >= c->d_mlp)
            return cr_fail(err, CR_EINVAL, "neuron %d.%d is out of range (layer %d has %d neurons)", st->layer, st->neurons[j], st->layer, c->d_mlp);
    if (sp->fd && sp->fd->V != c->n_vocab)
        return cr_fail(err, CR_EINVAL, "unigram counts cover %d tokens but the model's vocabulary is %d", sp->fd->V, c->n_vocab);
    if (st->d_mlp != c->d_mlp || st->n_rows != rows->n_rows || st->r1 > rows->n_rows)
        return cr_fail(err, CR_EINVAL, "the scan state does not fit this model and these rows");
    double t0 = cr_now();
    int rc = CR_OK;
    if (st->phase == CR_SCAN_MEAN) rc = cr_scan_mean_pass(m, rows, sp, st, hook, user, err);
    if (!rc && st->phase == CR_SCAN_EFFECTS) {
        rc = sp->exact_recompute ? cr_ablate_brute(m, rows, sp, st, hook, user, err) : cr_ablate_fast(m, rows, sp, st, hook, user, err);
        if (!rc) st->phase = CR_SCAN_DONE;
    }
    st->seconds += cr_now() - t0;
    return rc;
}

/* The whole scan in one call; out[j] receives neuron sp->neurons[j]'s effects and mean. */
CR_UNUSED static int cr_ablate(const cr_model *m, const cr_rows *rows, const cr_ablate_spec *sp, cr_neuron_row *out, int64_t *mean_tokens, cr_err *err) {
    cr_scan st;
    int rc = cr_scan_init(&st, m, rows, sp, 0, rows->n_rows, err);
    if (rc) return rc;
    if (!(rc = cr_scan_run(m, rows, sp, &st, NULL, NULL, err))) {
        cr_scan_results(&st, (sp->fd ? CR_RES_FREQ : 0) | (sp->no_freq_mediation ? CR_RES_NO_FM : 0), out);
        if (mean_tokens) *mean_tokens = st.mean_tokens;
    }
    cr_scan_free(&st);
    return rc;
}

/* State files, "CRSCAN01" (little-endian): u64 fingerprint; u32 layer, d_mlp, n_rows, r0, r1,
 * n_neurons, phase, row, block_end, group; u32 neurons[n_neurons]; f64 seconds; u64
 * mean_count; f64 mean_sum[d_mlp]; u64 mean_tokens; f64 mean[d_mlp]; per neuron u64 n and 8
 * exact sums; the correlation's u64 n and 5 exact sums; u32 has_weights and, if set, per
 * neuron f64 norm, logit_var, rho, freq_cos and u32 flags; the caller's text (u32 length,
 * bytes); u64 FNV-1a of everything before it. */
static int cr_scan_save(const cr_scan *st, const char *path, cr_err *err) {
    cr_bw b = {0};
    cr_bw_bytes(&b, "CRSCAN01", 8);
    cr_bw_u64(&b, st->fingerprint);
    const int hdr[10] = {st->layer, st->d_mlp, st->n_rows, st->r0, st->r1, st->n_neurons, st->phase, st->row, st->block_end, st->group};
    for (int i = 0; i < 10; i++) cr_bw_u32(&b, (uint32_t)hdr[i]);
    for (int j = 0; j < st->n_neurons; j++) cr_bw_u32(&b, (uint32_t)st->neurons[j]);
    cr_bw_f64(&b, st->seconds);
    cr_bw_u64(&b, (uint64_t)st->mean_count);
    for (int i = 0; i < st->d_mlp; i++) cr_bw_f64(&b, st->mean_sum[i]);
    cr_bw_u64(&b, (uint64_t)st->mean_tokens);
    for (int i = 0; i < st->d_mlp; i++) cr_bw_f64(&b, st->mean[i]);
    for (int j = 0; j < st->n_neurons; j++) {
        cr_bw_u64(&b, (uint64_t)st->acc[j].n);
        for (int k = 0; k < CR_ACC_SUMS; k++) cr_xs_write(&b, &st->acc[j].s[k]);
    }
    cr_bw_u64(&b, (uint64_t)st->corr.n);
    for (int k = 0; k < CR_CORR_SUMS; k++) cr_xs_write(&b, &st->corr.s[k]);
    cr_bw_u32(&b, st->wt != NULL);
    for (int j = 0; st->wt && j < st->n_neurons; j++) {
        const cr_neuron_row *w = &st->wt[j];
        cr_bw_f64(&b, w->norm), cr_bw_f64(&b, w->logit_var), cr_bw_f64(&b, w->rho), cr_bw_f64(&b, w->freq_cos);
        cr_bw_u32(&b, (uint32_t)(w->has_weights | w->has_freq_cos << 1));
    }
    cr_bw_str(&b, st->meta);
    return cr_bw_commit(&b, path, err);
}

static int cr_scan_load(cr_scan *st, const char *path, cr_err *err) {
    memset(st, 0, sizeof *st);
    cr_map mp;
    int rc = cr_map_open(&mp, path, err);
    if (rc) return rc;
    cr_br r = {mp.data, 0, mp.size, 0};
    if (mp.size < 16 || memcmp(mp.data, "CRSCAN01", 8)) { rc = cr_fail(err, CR_EFORMAT, "%s: not a confreg scan state (bad magic)", path); goto out; }
    if (cr_fnv64(mp.data, mp.size - 8, 0xcbf29ce484222325ull) != cr_rd64(mp.data + mp.size - 8)) {
        rc = cr_fail(err, CR_EFORMAT, "%s: scan state is corrupt or truncated (checksum mismatch)", path);
        goto out;
    }
    r.size = mp.size - 8;
    cr_br_take(&r, 8);
    uint64_t fp = cr_br_u64(&r);
    int hdr[10];
    for (int i = 0; i < 10; i++) hdr[i] = (int)cr_br_count(&r, INT32_MAX);
    int layer = hdr[0], f = hdr[1], nr = hdr[2], r0 = hdr[3], r1 = hdr[4], ns = hdr[5], ph = hdr[6], row = hdr[7], be = hdr[8], grp = hdr[9];
    if (r.bad || layer >= CR_MAX_LAYERS || f < 1 || f > CR_MAX_DIM || ns < 1 || ns > f || r0 > r1 || r1 > nr || ph > CR_SCAN_DONE ||
        (ph == CR_SCAN_MEAN && (row > nr || grp)) || (ph != CR_SCAN_MEAN && (row < r0 || row > r1 || be < row || be > r1 || grp >= ns || (grp && be == row))) ||
        (uint64_t)r.size < 8ull * (uint64_t)f * 2 + 4ull * (uint64_t)ns) {
        rc = cr_fail(err, CR_EFORMAT, "%s: scan state has inconsistent sizes or progress", path);
        goto out;
    }
    if ((rc = cr_scan_alloc(st, f, ns, err))) goto out;
    st->fingerprint = fp, st->layer = layer, st->n_rows = nr, st->r0 = r0, st->r1 = r1, st->phase = ph, st->row = row, st->block_end = be, st->group = grp;
    unsigned char *seen = cr_calloc((size_t)f, 1);
    if (!seen) { rc = cr_fail(err, CR_ENOMEM, "out of memory"); goto out; }
    for (int j = 0; j < ns; j++) {
        uint32_t v = cr_br_u32(&r);
        if (v >= (uint32_t)f || seen[v]) r.bad = 1;
        else seen[v] = 1, st->neurons[j] = (int)v;
    }
    free(seen);
    st->seconds = cr_br_f64(&r);
    st->mean_count = (int64_t)cr_br_u64(&r);
    for (int i = 0; i < f; i++) st->mean_sum[i] = cr_br_f64(&r);
    st->mean_tokens = (int64_t)cr_br_u64(&r);
    for (int i = 0; i < f; i++) st->mean[i] = cr_br_f64(&r);
    for (int j = 0; j < ns && !r.bad; j++) {
        st->acc[j].n = (int64_t)cr_br_u64(&r);
        for (int k = 0; k < CR_ACC_SUMS; k++) cr_xs_read(&r, &st->acc[j].s[k]);
        if (st->acc[j].n < 0) r.bad = 1;
    }
    st->corr.n = (int64_t)cr_br_u64(&r);
    for (int k = 0; k < CR_CORR_SUMS; k++) cr_xs_read(&r, &st->corr.s[k]);
    if (st->mean_count < 0 || st->mean_tokens < 0 || st->corr.n < 0) r.bad = 1;
    if (cr_br_u32(&r) && !r.bad) {
        if (!(st->wt = cr_calloc((size_t)ns, sizeof *st->wt))) { rc = cr_fail(err, CR_ENOMEM, "out of memory"); goto out; }
        for (int j = 0; j < ns; j++) {
            cr_neuron_row *w = &st->wt[j];
            w->norm = cr_br_f64(&r), w->logit_var = cr_br_f64(&r), w->rho = cr_br_f64(&r), w->freq_cos = cr_br_f64(&r);
            uint32_t fl = cr_br_u32(&r);
            w->has_weights = fl & 1, w->has_freq_cos = fl >> 1 & 1;
        }
    }
    st->meta = cr_br_str(&r);
    if (r.bad || r.pos != r.size) rc = cr_fail(err, CR_EFORMAT, "%s: scan state is malformed (bad counts, sums or trailing bytes)", path);
out:
    cr_map_close(&mp);
    if (rc) cr_scan_free(st);
    return rc;
}

/* Merges finished scans of the same fingerprint into one over every row: each neuron's parts
 * must cover the rows exactly once.  The correlation sums come from the parts of the first
 * neuron (every part holding a row range holds the same clean statistics for it). */
static int cr_scan_merge(cr_scan *const *parts, const char *const *names, int n_parts, cr_scan *out, cr_err *err) {
    memset(out, 0, sizeof *out);
    if (n_parts < 1) return cr_fail(err, CR_EINVAL, "nothing to merge");
    const cr_scan *p0 = parts[0];
    for (int i = 0; i < n_parts; i++) {
        const cr_scan *p = parts[i];
        if (p->phase != CR_SCAN_DONE)
            return cr_fail(err, CR_EINVAL, "%s: unfinished (rows %d-%d, %s): run its command again to finish it", names[i], p->r0, p->r1 - 1,
                           p->phase == CR_SCAN_MEAN ? "still computing the means" : "effects in progress");
        if (p->fingerprint != p0->fingerprint || p->layer != p0->layer || p->d_mlp != p0->d_mlp || p->n_rows != p0->n_rows)
            return cr_fail(err, CR_EINVAL, "%s and %s come from different scans (model, text, options or mean source differ)", names[0], names[i]);
        if (memcmp(p->mean, p0->mean, (size_t)p0->d_mlp * sizeof *p0->mean))
            return cr_fail(err, CR_EINVAL, "%s and %s ablated to different mean activations", names[0], names[i]);
        if ((p->wt != NULL) != (p0->wt != NULL))
            return cr_fail(err, CR_EINVAL, "%s and %s were made with different options", names[0], names[i]);
    }
    const int f = p0->d_mlp, R = p0->n_rows;
    int *owner = cr_malloc((size_t)f, sizeof *owner), n_out = 0, rc = CR_OK;   /* [f] index in out, or -1 */
    int *cover = cr_malloc((size_t)R + 1, sizeof *cover);                       /* [R] part covering each row */
    if (!owner || !cover) { free(owner), free(cover); return cr_fail(err, CR_ENOMEM, "out of memory"); }
    for (int i = 0; i < f; i++) owner[i] = -1;
    for (int i = 0; i < n_parts; i++)
        for (int j = 0; j < parts[i]->n_neurons; j++)
            if (owner[parts[i]->neurons[j]] < 0) owner[parts[i]->neurons[j]] = 0, n_out++;
    if ((rc = cr_scan_alloc(out, f, n_out, err))) { free(owner), free(cover); return rc; }
    /* Neurons in ascending order make the merged state independent of the order of parts. */
    for (int i = 0, k = 0; i < f; i++)
        if (owner[i] >= 0) out->neurons[k] = i, owner[i] = k++;
    out->fingerprint = p0->fingerprint, out->layer = p0->layer, out->n_rows = R, out->r0 = 0, out->r1 = R;
    out->phase = CR_SCAN_DONE, out->row = out->block_end = R;
    memcpy(out->mean, p0->mean, (size_t)f * sizeof *out->mean);
    out->mean_tokens = p0->mean_tokens;
    for (int i = 0; i < n_parts; i++) out->seconds += parts[i]->seconds;
    if (p0->meta && !(out->meta = cr_strndup(p0->meta, strlen(p0->meta)))) rc = cr_fail(err, CR_ENOMEM, "out of memory");
    if (!rc && p0->wt && !(out->wt = cr_calloc((size_t)n_out, sizeof *out->wt))) rc = cr_fail(err, CR_ENOMEM, "out of memory");
    for (int k = 0; !rc && k < n_out; k++) {
        const int neuron = out->neurons[k];
        for (int r = 0; r < R; r++) cover[r] = -1;
        for (int i = 0; !rc && i < n_parts; i++) {
            const cr_scan *p = parts[i];
            int j = 0;
            while (j < p->n_neurons && p->neurons[j] != neuron) j++;
            if (j == p->n_neurons) continue;
            for (int r = p->r0; r < p->r1 && !rc; r++) {
                if (cover[r] >= 0) rc = cr_fail(err, CR_EINVAL, "neuron %d.%d: row %d is in both %s and %s", out->layer, neuron, r, names[cover[r]], names[i]);
                cover[r] = i;
            }
            if (rc) break;
            for (int s = 0; s < CR_ACC_SUMS; s++) cr_xs_merge(&out->acc[k].s[s], &p->acc[j].s[s]);
            out->acc[k].n += p->acc[j].n;
            if (out->wt) out->wt[k] = p->wt[j];
            if (k == 0 && p->r1 > p->r0) {
                for (int s = 0; s < CR_CORR_SUMS; s++) cr_xs_merge(&out->corr.s[s], &p->corr.s[s]);
                out->corr.n += p->corr.n;
            }
        }
        for (int r = 0; !rc && r < R; r++)
            if (cover[r] < 0) {
                int e = r;
                while (e + 1 < R && cover[e + 1] < 0) e++;
                rc = cr_fail(err, CR_EINVAL, "neuron %d.%d: rows %d-%d of %d are in no part (a shard is missing)", out->layer, neuron, r, e, R);
            }
    }
    free(owner), free(cover);
    if (rc) cr_scan_free(out);
    return rc;
}

/* ---- synthetic models with planted neurons ------------------------------------------------------
 * A random GPT-2 or Llama-architecture model into which two final-layer neurons are planted:
 * an entropy neuron whose output vector lies in a subspace the unembedding cannot see (so it
 * acts only through the final norm's scale), and a token-frequency neuron whose output moves
 * every logit along the log-unigram direction of the model's own Zipf-like token distribution,
 * which is stored with the model.  Used by the tests, the benchmarks and the classroom. */

typedef struct cr_synth_spec {
    int arch;                    /* CR_ARCH_GPT2 or CR_ARCH_LLAMA */
    int n_layers, d_model, n_heads, d_mlp, n_vocab, n_ctx;
    uint64_t seed;
    const cr_tokenizer *tok;     /* its vocabulary is used when given; else a byte-level one */
    int entropy_neuron, freq_neuron;
} cr_synth_spec;

static double cr_gauss(uint64_t *st) {
    double u1 = ((double)(cr_rng_next(st) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    double u2 = (double)(cr_rng_next(st) >> 11) * (1.0 / 9007199254740992.0);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static float *cr_synth_gauss(cr_model *m, size_t n, double sd, uint64_t *st) {
    float *p = cr_model_own(m, cr_malloc(n, sizeof(float)));
    for (size_t i = 0; p && i < n; i++) p[i] = (float)(sd * cr_gauss(st));
    return p;
}

static float *cr_synth_const(cr_model *m, size_t n, float v) {
    float *p = cr_model_own(m, cr_malloc(n, sizeof(float)));
    for (size_t i = 0; p && i < n; i++) p[i] = v;
    return p;
}

static cr_mat cr_synth_mat(float *data, int64_t rows, int64_t cols) {
    cr_mat w = {CR_F32, rows, cols, (const unsigned char *)data, 0};
    return w;
}

/* Makes v (length d) a unit vector orthogonal to the n_basis unit rows of basis (and to the
 * all-ones direction when centre is set), by Gram-Schmidt twice for accuracy. */
static void cr_orthonormalize(double *v, int d, const double *basis, int n_basis, int centre) {
    for (int pass = 0; pass < 2; pass++) {
        if (centre) {
            double mean = 0;
            for (int i = 0; i < d; i++) mean += v[i];
            for (int i = 0; i < d; i++) v[i] -= mean / d;
        }
        for (int j = 0; j < n_basis; j++) {
            double p = 0;
            for (int i = 0; i < d; i++) p += v[i] * basis[(size_t)j * d + i];
            for (int i = 0; i < d; i++) v[i] -= p * basis[(size_t)j * d + i];
        }
    }
    double n2 = 0;
    for (int i = 0; i < d; i++) n2 += v[i] * v[i];
    for (int i = 0; i < d; i++) v[i] /= sqrt(n2);
}

/* A byte-level BPE vocabulary without merges: one token per byte (GPT-2's byte alphabet),
 * then <|endoftext|>, then padding up to n_vocab. */
static int cr_synth_tokenizer(int n_vocab, cr_tokenizer **out, cr_err *err) {
    cr_tokvec v;
    int rc = cr_tokvec_alloc(&v, n_vocab, 0, 0, "synth", err);
    if (rc) return rc;
    v.pool = cr_malloc((size_t)n_vocab, 24);
    if (!v.pool) { cr_tokvec_free(&v); return cr_fail(err, CR_ENOMEM, "out of memory"); }
    size_t pp = 0;
    for (int b = 0, extra = 0; b < 256; b++) {
        int printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
        uint32_t cp = printable ? (uint32_t)b : 256u + (uint32_t)extra++;
        char *dst = v.pool + pp;
        size_t n = cp < 0x80 ? 1 : 2;
        if (n == 1) dst[0] = (char)cp;
        else dst[0] = (char)(0xc0 | (cp >> 6)), dst[1] = (char)(0x80 | (cp & 0x3f));
        v.tokens[b] = dst, v.lens[b] = (uint32_t)n;
        pp += n;
    }
    v.tokens[256] = "<|endoftext|>", v.lens[256] = 13, v.types[256] = 3;
    for (int t = 257; t < n_vocab; t++) {
        char *dst = v.pool + pp;
        int n = snprintf(dst, 24, "<|pad%d|>", t);
        v.tokens[t] = dst, v.lens[t] = (uint32_t)n, v.types[t] = 5;
        pp += (size_t)n + 1;
    }
    v.spec.kind = CR_TOK_BYTE_BPE;
    v.spec.pretok = CR_PRE_GPT2;
    v.spec.bos_id = v.spec.eos_id = 256;
    rc = cr_tokenizer_open(&v.spec, out, err);
    cr_tokvec_free(&v);
    return rc;
}

static int cr_synth(const cr_synth_spec *sp, cr_model **out, cr_err *err) {
    *out = NULL;
    const int d = sp->d_model, f = sp->d_mlp, L = sp->n_layers, H = sp->n_heads;
    int V = sp->n_vocab;
    if (sp->arch != CR_ARCH_GPT2 && sp->arch != CR_ARCH_LLAMA) return cr_fail(err, CR_EINVAL, "synth: architecture must be gpt2 or llama");
    if (d < 8 || d > 8192 || f < 4 || f > 65536 || L < 1 || L > 64 || H < 1 || d % H || (d / H) % 2 || V > CR_MAX_VOCAB || sp->n_ctx < 8 || sp->n_ctx > 8192)
        return cr_fail(err, CR_EINVAL, "synth: implausible sizes (d %d, d_mlp %d, layers %d, heads %d, vocab %d, ctx %d)", d, f, L, H, V, sp->n_ctx);
    if (sp->tok && cr_tokenizer_n_vocab(sp->tok) > V) V = cr_tokenizer_n_vocab(sp->tok);
    if (!sp->tok && V < 257) V = 257;
    int e = sp->entropy_neuron, q = sp->freq_neuron;
    if (e < 0 || e >= f || q < 0 || q >= f || e == q) return cr_fail(err, CR_EINVAL, "synth: planted neurons %d and %d must be distinct and below d_mlp %d", e, q, f);
    cr_model *m = calloc(1, sizeof *m);
    if (!m) return cr_fail(err, CR_ENOMEM, "out of memory");
    m->path = cr_strndup("synth", 5);
    cr_config *c = &m->cfg;
    c->arch = sp->arch, c->n_layers = L, c->d_model = d, c->n_heads = H, c->n_kv_heads = H, c->head_dim = d / H;
    c->d_mlp = f, c->n_vocab = V, c->n_ctx = sp->n_ctx, c->tied_embeddings = 1, c->source_format = "synth";
    int gpt2 = sp->arch == CR_ARCH_GPT2;
    c->rms_norm = !gpt2, c->norm_eps = 1e-5f, c->gated_mlp = !gpt2, c->act = gpt2 ? 1 : 2;
    c->rotary_dims = gpt2 ? 0 : d / H, c->rope_theta = 10000.0f;
    uint64_t st = sp->seed ? sp->seed : 1;
    int rc = CR_OK;
    /* Zipf-like unigram distribution over a seeded permutation of the ids. */
    m->unigram = calloc(1, sizeof *m->unigram);
    int32_t *perm = cr_malloc((size_t)V, sizeof *perm);
    double *u = cr_malloc((size_t)V, sizeof *u);
    int k_null = cr_default_k(d) - (gpt2 ? 1 : 0);   /* LayerNorm adds the all-ones null direction */
    if (k_null < 1) k_null = 1;
    double *basis = cr_malloc((size_t)(k_null + 1) * (size_t)d, sizeof *basis), *vec = cr_malloc((size_t)d, sizeof *vec);
    if (!m->unigram || !(m->unigram->counts = cr_calloc((size_t)V, 8)) || !perm || !u || !basis || !vec) { rc = cr_fail(err, CR_ENOMEM, "out of memory"); goto done; }
    for (int t = 0; t < V; t++) perm[t] = t;
    for (int t = V - 1; t > 0; t--) { int j = (int)(cr_rng_next(&st) % (uint64_t)(t + 1)); int32_t x = perm[t]; perm[t] = perm[j]; perm[j] = x; }
    m->unigram->n_vocab = V;
    for (int r = 0; r < V; r++) {
        uint64_t cnt = (uint64_t)floor(1e7 / pow(r + 1.0, 1.1));
        m->unigram->counts[perm[r]] = cnt;
        m->unigram->total += cnt;
    }
    double um = 0, un = 0;
    for (int t = 0; t < V; t++) u[t] = log(((double)m->unigram->counts[t] + 1.0) / ((double)m->unigram->total + V)), um += u[t];
    for (int t = 0; t < V; t++) u[t] -= um / V, un += u[t] * u[t];
    un = sqrt(un / V);
    /* Null directions (rows 0..k_null-1) and the frequency direction (row k_null). */
    for (int j = 0; j <= k_null; j++) {
        for (int i = 0; i < d; i++) vec[i] = cr_gauss(&st);
        cr_orthonormalize(vec, d, basis, j, gpt2);
        memcpy(basis + (size_t)j * d, vec, (size_t)d * sizeof *vec);
    }
    const double se = 1.0 / sqrt(d);
    float *wte = cr_synth_gauss(m, (size_t)V * d, se, &st);
    if (!wte) { rc = cr_fail(err, CR_ENOMEM, "out of memory"); goto done; }
    const double *fdir = basis + (size_t)k_null * d;
    for (int t = 0; t < V; t++) {
        float *row = wte + (size_t)t * d;
        for (int j = 0; j < k_null; j++) {
            double p = 0;
            for (int i = 0; i < d; i++) p += row[i] * basis[(size_t)j * d + i];
            for (int i = 0; i < d; i++) row[i] -= (float)(p * basis[(size_t)j * d + i]);
        }
        /* The unembedding reads log-frequency along fdir. */
        for (int i = 0; i < d; i++) row[i] += (float)(3.0 * se * u[t] / un * fdir[i]);
    }
    m->tok_embd = cr_synth_mat(wte, V, d);
    m->output = m->tok_embd;
    if (gpt2) {
        float *wpe = cr_synth_gauss(m, (size_t)sp->n_ctx * d, 0.1 * se, &st);
        m->pos_embd = cr_synth_mat(wpe, sp->n_ctx, d);
    }
    m->out_norm_w = cr_synth_const(m, (size_t)d, 1.0f);
    if (gpt2) m->out_norm_b = cr_synth_const(m, (size_t)d, 0.0f);
    m->layers = cr_calloc((size_t)L, sizeof *m->layers);
    if (!m->layers) { rc = cr_fail(err, CR_ENOMEM, "out of memory"); goto done; }
    const double s_out = 0.5 / sqrt((double)f * L);
    for (int l = 0; l < L; l++) {
        cr_layer *Ly = &m->layers[l];
        Ly->attn_norm_w = cr_synth_const(m, (size_t)d, 1.0f), Ly->ffn_norm_w = cr_synth_const(m, (size_t)d, 1.0f);
        if (gpt2) Ly->attn_norm_b = cr_synth_const(m, (size_t)d, 0.0f), Ly->ffn_norm_b = cr_synth_const(m, (size_t)d, 0.0f);
        if (gpt2) { /* GPT-2 keeps q, k and v in one [3d, d] matrix, as llama.cpp expects */
            Ly->wqkv = cr_synth_mat(cr_synth_gauss(m, (size_t)3 * d * d, se, &st), 3 * d, d);
            Ly->bqkv = cr_synth_const(m, (size_t)3 * d, 0.0f);
            Ly->wq = Ly->wk = Ly->wv = Ly->wqkv; /* only for the allocation check below */
        } else {
            Ly->wq = cr_synth_mat(cr_synth_gauss(m, (size_t)d * d, se, &st), d, d);
            Ly->wk = cr_synth_mat(cr_synth_gauss(m, (size_t)d * d, se, &st), d, d);
            Ly->wv = cr_synth_mat(cr_synth_gauss(m, (size_t)d * d, se, &st), d, d);
        }
        Ly->wo = cr_synth_mat(cr_synth_gauss(m, (size_t)d * d, 0.5 / sqrt((double)d * L), &st), d, d);
        float *win = cr_synth_gauss(m, (size_t)f * d, se, &st), *wdown = cr_synth_gauss(m, (size_t)d * f, s_out, &st);
        Ly->w_up = cr_synth_mat(win, f, d);
        if (!gpt2) Ly->w_gate = cr_synth_mat(cr_synth_gauss(m, (size_t)f * d, se, &st), f, d);
        Ly->w_down = cr_synth_mat(wdown, d, f);
        if (gpt2) Ly->b_up = cr_synth_const(m, (size_t)f, 0.0f), Ly->b_down = cr_synth_const(m, (size_t)d, 0.0f), Ly->bo = cr_synth_const(m, (size_t)d, 0.0f);
        if (!win || !wdown || !Ly->wq.data || !Ly->wk.data || !Ly->wv.data || !Ly->wo.data || (!gpt2 && !Ly->w_gate.data)) { rc = cr_fail(err, CR_ENOMEM, "out of memory"); goto done; }
        if (gpt2) memset(&Ly->wq, 0, sizeof Ly->wq), memset(&Ly->wk, 0, sizeof Ly->wk), memset(&Ly->wv, 0, sizeof Ly->wv);
        if (l != L - 1) continue;
        /* Planting: large output vectors, inputs strong enough that the activations vary. */
        double typical = s_out * sqrt((double)d);
        for (int i = 0; i < d; i++) {
            wdown[(size_t)i * f + (size_t)e] = (float)(10.0 * typical * basis[i]);
            wdown[(size_t)i * f + (size_t)q] = (float)(6.0 * typical * fdir[i]);
        }
        for (int i = 0; i < d; i++) {
            win[(size_t)e * d + (size_t)i] *= 2.5f, win[(size_t)q * d + (size_t)i] *= 2.5f;
            if (!gpt2) {
                float *g = (float *)(uintptr_t)Ly->w_gate.data;
                g[(size_t)e * d + (size_t)i] *= 2.5f, g[(size_t)q * d + (size_t)i] *= 2.5f;
            }
        }
    }
    if (sp->tok) {
        cr_tokvec tv;
        if (!(rc = cr_tokenizer_export(sp->tok, &tv, err))) {
            rc = cr_tokenizer_open(&tv.spec, &m->tok, err);
            cr_tokvec_free(&tv);
        }
    } else {
        rc = cr_synth_tokenizer(V, &m->tok, err);
    }
    if (!rc) c->bos_id = cr_tokenizer_bos(m->tok), c->eos_id = cr_tokenizer_eos(m->tok);
done:
    free(perm), free(u), free(basis), free(vec);
    if (rc) cr_model_close(m);
    else *out = m;
    return rc;
}

/* ---- induction (SPEC §2) ---------------------------------------------------------------------
 * Sequences [BOS] + S + S.  Per position: entropy, loss and the selected neurons' activations;
 * clip ablation of each neuron towards its first-copy mean; induction-head scores on random
 * repeats; BOS ablation of chosen heads at each second-copy position, re-run exactly with the
 * key/value cache (positions before p are unaffected by an edit at p). */

typedef struct cr_induction_spec {
    int N;                       /* length of S */
    int n_seqs;
    const int32_t *seqs;         /* [n_seqs, N] the S of each sequence */
    const int32_t *random_seqs;  /* [n_random, N] random R for head scores */
    int n_random;
    const int *neurons;          /* final-layer neuron indices */
    int n_neurons;
    const int *bos_heads;        /* [n_bos_heads, 2] (layer, head) */
    int n_bos_heads;
    int n_threads;
} cr_induction_spec;

typedef struct cr_induction_result {
    int T;                       /* 1 + 2N positions */
    double *entropy, *loss;      /* [T] means over sequences (loss at T-1 is 0: nothing to predict) */
    double *act;                 /* [n_neurons, T] mean activations */
    int *rises;                  /* [n_neurons] 1 if the activation rises on the second copy */
    double *first_mean;          /* [n_neurons] clip value: mean over the first copy (BOS included) */
    double *h_ratio, *l_ratio;   /* [n_neurons, T] mean over sequences of H_after/H_before, L_after/L_before */
    double *clip_entropy;        /* [n_neurons, T] mean entropy after the clip */
    double *head_score;          /* [n_layers, n_heads] */
    /* BOS ablation, [n_bos_heads, 8]: clean and ablated means over second-copy positions of
     * activation of neuron 0, final-norm scale, entropy, loss. */
    double *bos;
    /* Progress, so that a run can be saved and resumed: pass 1 clean runs, 2 clip ablation,
     * 3 head scores, 4 BOS ablation, 5 done; seq and sub say where within the pass. */
    int pass, seq, sub;
    double bos_acc[8];           /* pass 4: sums for head `sub` over sequences [0, seq) */
    int64_t bos_cnt;
} cr_induction_result;

/* Called after every sequence (and every layer of pass 3); non-zero stops with CR_EINTR. */
typedef int (*cr_induction_hook)(void *user, const cr_induction_result *res);

static void cr_induction_result_free(cr_induction_result *r) {
    free(r->entropy), free(r->loss), free(r->act), free(r->rises), free(r->first_mean), free(r->h_ratio), free(r->l_ratio);
    free(r->clip_entropy), free(r->head_score), free(r->bos);
    memset(r, 0, sizeof *r);
}

typedef struct cr_clip_edit { int layer; const int *neurons; int n; int which; double value; int rises; } cr_clip_edit;
static void cr_clip_hook(void *user, int layer, int pos0, int n, int d_mlp, float *act) {
    const cr_clip_edit *ce = user;
    (void)pos0;
    if (layer != ce->layer) return;
    int i = ce->neurons[ce->which];
    for (int t = 0; t < n; t++) {
        float *a = &act[(size_t)t * (size_t)d_mlp + (size_t)i];
        *a = ce->rises ? fminf(*a, (float)ce->value) : fmaxf(*a, (float)ce->value);
    }
}

typedef struct cr_bos_edit { int layer, head; } cr_bos_edit;
static void cr_bos_hook(void *user, int layer, int pos0, int n, int n_keys, int n_heads, float *probs) {
    const cr_bos_edit *be = user;
    (void)pos0, (void)n_heads;
    if (layer != be->layer) return;
    for (int t = 0; t < n; t++) {
        float *row = probs + ((size_t)be->head * (size_t)n + (size_t)t) * (size_t)n_keys;
        for (int j = 0; j < n_keys; j++) row[j] = j == 0 ? 1.0f : 0.0f;
    }
}

static void cr_seq_stats(const float *logits, int V, const int32_t *ids, int T, double *h, double *l) {
    for (int t = 0; t < T; t++) {
        double lse, ent;
        cr_logits_stats(logits + (size_t)t * (size_t)V, V, &lse, &ent);
        h[t] = ent;
        l[t] = t + 1 < T ? lse - logits[(size_t)t * (size_t)V + (size_t)ids[t + 1]] : 0.0;
    }
}

/* Runs the analysis, or resumes it when res holds a saved state (res->pass > 0).  On any
 * error, res is freed (a loaded state too). */
static int cr_induction_run(const cr_model *m, const cr_induction_spec *sp, cr_induction_result *res, cr_induction_hook hook, void *user, cr_err *err);
static int cr_induction(const cr_model *m, const cr_induction_spec *sp, cr_induction_result *res, cr_induction_hook hook, void *user, cr_err *err) {
    int rc = cr_induction_run(m, sp, res, hook, user, err);
    if (rc) cr_induction_result_free(res);   /* also after the checks that return before any work */
    return rc;
}

static int cr_induction_run(const cr_model *m, const cr_induction_spec *sp, cr_induction_result *res, cr_induction_hook hook, void *user, cr_err *err) {
    const cr_config *c = &m->cfg;
    const int N = sp->N, T = 1 + 2 * N, V = c->n_vocab, f = c->d_mlp, Lf = c->n_layers - 1, NN = sp->n_neurons, H = c->n_heads;
    const int resume = res->pass > 0;
    if (!resume) memset(res, 0, sizeof *res);
    if (N < 2 || T > c->n_ctx) return cr_fail(err, CR_EINVAL, "induction: [BOS] + 2 x %d tokens does not fit the context of %d", N, c->n_ctx);
    if (c->bos_id < 0) return cr_fail(err, CR_EINVAL, "induction needs a BOS token");
    for (int j = 0; j < NN; j++)
        if (sp->neurons[j] < 0 || sp->neurons[j] >= f) return cr_fail(err, CR_EINVAL, "neuron %d.%d out of range", Lf, sp->neurons[j]);
    for (int j = 0; j < sp->n_bos_heads; j++)
        if (sp->bos_heads[2 * j] < 0 || sp->bos_heads[2 * j] >= c->n_layers || sp->bos_heads[2 * j + 1] < 0 || sp->bos_heads[2 * j + 1] >= H)
            return cr_fail(err, CR_EINVAL, "head %d.%d out of range (%d layers x %d heads)", sp->bos_heads[2 * j], sp->bos_heads[2 * j + 1], c->n_layers, H);
    if (resume && (res->T != T || res->pass > 5 || res->seq < 0 || res->sub < 0 || (res->pass <= 2 && (res->seq > sp->n_seqs || res->sub)) ||
                   (res->pass == 3 && (res->seq > sp->n_random || res->sub >= c->n_layers)) || (res->pass == 4 && (res->seq >= sp->n_seqs || res->sub > sp->n_bos_heads))))
        return cr_fail(err, CR_EINVAL, "induction: the saved state does not fit this analysis");
    if (!resume) {
        res->T = T, res->pass = 1;
        res->entropy = cr_calloc((size_t)T, 8), res->loss = cr_calloc((size_t)T, 8);
        res->act = cr_calloc((size_t)NN * T + 1, 8), res->rises = cr_calloc((size_t)NN + 1, sizeof(int)), res->first_mean = cr_calloc((size_t)NN + 1, 8);
        res->h_ratio = cr_calloc((size_t)NN * T + 1, 8), res->l_ratio = cr_calloc((size_t)NN * T + 1, 8), res->clip_entropy = cr_calloc((size_t)NN * T + 1, 8);
        res->head_score = cr_calloc((size_t)c->n_layers * H, 8), res->bos = cr_calloc((size_t)sp->n_bos_heads * 8 + 1, 8);
    }
    cr_session *s = NULL;
    int32_t *ids = cr_malloc((size_t)T, sizeof *ids);
    float *lg = cr_malloc((size_t)T * V, sizeof *lg), *lg2 = cr_malloc((size_t)T * V, sizeof *lg2), *act = cr_malloc((size_t)T * f, sizeof *act);
    float *pat = NULL, *sc = cr_malloc((size_t)T, sizeof *sc), *sc1 = cr_malloc(1, sizeof *sc1), *act1 = cr_malloc((size_t)f, sizeof *act1);
    double *h0 = cr_malloc((size_t)T, 8), *l0 = cr_malloc((size_t)T, 8), *h1 = cr_malloc((size_t)T, 8), *l1 = cr_malloc((size_t)T, 8);
    float **mlp = cr_calloc((size_t)c->n_layers, sizeof *mlp), **attn = cr_calloc((size_t)c->n_layers, sizeof *attn);
    int rc = CR_OK;
    if (!res->entropy || !res->loss || !res->act || !res->rises || !res->first_mean || !res->h_ratio || !res->l_ratio || !res->clip_entropy ||
        !res->head_score || !res->bos || !ids || !lg || !lg2 || !act || !sc || !sc1 || !act1 || !h0 || !l0 || !h1 || !l1 || !mlp || !attn) {
        rc = cr_fail(err, CR_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = cr_session_open(m, T, sp->n_threads, &s, err))) goto done;
#define CR_IND_STEP() do { if (hook && res->pass < 5 && hook(user, res)) { rc = cr_fail(err, CR_EINTR, "interrupted"); goto done; } } while (0)
    /* Pass 1: clean runs. */
    mlp[Lf] = act;
    while (res->pass == 1 && res->seq < sp->n_seqs) {
        const int q = res->seq;
        ids[0] = c->bos_id;
        memcpy(ids + 1, sp->seqs + (size_t)q * N, (size_t)N * 4);
        memcpy(ids + 1 + N, sp->seqs + (size_t)q * N, (size_t)N * 4);
        cr_capture cap = {0};
        cap.logits = lg, cap.mlp_post = mlp;
        if ((rc = cr_forward(s, ids, T, 0, &cap, err))) goto done;
        cr_seq_stats(lg, V, ids, T, h0, l0);
        for (int t = 0; t < T; t++) {
            res->entropy[t] += h0[t] / sp->n_seqs, res->loss[t] += l0[t] / sp->n_seqs;
            for (int j = 0; j < NN; j++) res->act[(size_t)j * T + t] += act[(size_t)t * f + sp->neurons[j]] / sp->n_seqs;
        }
        res->seq++;
        CR_IND_STEP();
    }
    /* The clip value: mean over the first copy (BOS included) of all sequences; the direction:
     * does the mean activation rise on the second copy? */
    for (int j = 0; j < NN && res->pass == 1; j++) {
        double a1 = 0, a2 = 0;
        for (int t = 0; t < 1 + N; t++) a1 += res->act[(size_t)j * T + t];
        for (int t = 1 + N; t < T; t++) a2 += res->act[(size_t)j * T + t];
        res->first_mean[j] = a1 / (1 + N);
        res->rises[j] = a2 / N > a1 / (1 + N);
    }
    if (res->pass == 1) res->pass = 2, res->seq = 0;
    /* Pass 2: clip ablation, one neuron at a time. */
    while (res->pass == 2 && res->seq < sp->n_seqs && NN) {
        const int q = res->seq;
        ids[0] = c->bos_id;
        memcpy(ids + 1, sp->seqs + (size_t)q * N, (size_t)N * 4);
        memcpy(ids + 1 + N, sp->seqs + (size_t)q * N, (size_t)N * 4);
        cr_capture cap = {0};
        cap.logits = lg;
        if ((rc = cr_forward(s, ids, T, 0, &cap, err))) goto done;
        cr_seq_stats(lg, V, ids, T, h0, l0);
        for (int j = 0; j < NN; j++) {
            cr_clip_edit ce = {Lf, sp->neurons, NN, j, res->first_mean[j], res->rises[j]};
            cr_capture ca = {0};
            ca.logits = lg2, ca.mlp_edit = cr_clip_hook, ca.user = &ce;
            if ((rc = cr_forward(s, ids, T, 0, &ca, err))) goto done;
            cr_seq_stats(lg2, V, ids, T, h1, l1);
            for (int t = 0; t < T; t++) {
                res->h_ratio[(size_t)j * T + t] += (h0[t] > 0 ? h1[t] / h0[t] : 1.0) / sp->n_seqs;
                res->l_ratio[(size_t)j * T + t] += (l0[t] > 0 ? l1[t] / l0[t] : 1.0) / sp->n_seqs;
                res->clip_entropy[(size_t)j * T + t] += h1[t] / sp->n_seqs;
            }
        }
        res->seq++;
        CR_IND_STEP();
    }
    if (res->pass == 2) res->pass = 3, res->seq = 0, res->sub = 0;
    /* Pass 3: induction-head scores on random repeats, one layer per step. */
    for (int l = 0; l < c->n_layers; l++) attn[l] = NULL;
    if (!(pat = cr_malloc((size_t)H * T * T, sizeof *pat))) { rc = cr_fail(err, CR_ENOMEM, "out of memory"); goto done; }   /* [H, T, T] */
    while (res->pass == 3 && res->seq < sp->n_random) {
        const int q = res->seq, l = res->sub;
        ids[0] = c->bos_id;
        memcpy(ids + 1, sp->random_seqs + (size_t)q * N, (size_t)N * 4);
        memcpy(ids + 1 + N, sp->random_seqs + (size_t)q * N, (size_t)N * 4);
        for (int k = 0; k < c->n_layers; k++) attn[k] = k == l ? pat : NULL;
        cr_capture cap = {0};
        cap.attn = attn;
        if ((rc = cr_forward(s, ids, T, 0, &cap, err))) goto done;
        for (int h = 0; h < H; h++) {
            double sum = 0;
            for (int p = 1 + N; p < T; p++) sum += pat[((size_t)h * T + p) * T + (size_t)(p - (N - 1))];
            res->head_score[(size_t)l * H + h] += sum / N / sp->n_random;
        }
        if (++res->sub == c->n_layers) res->sub = 0, res->seq++;
        CR_IND_STEP();
    }
    if (res->pass == 3) res->pass = 4, res->seq = 0, res->sub = 0, res->bos_cnt = 0, memset(res->bos_acc, 0, sizeof res->bos_acc);
    /* Pass 4: BOS ablation of chosen heads at each second-copy position; one sequence per step. */
    while (res->pass == 4 && res->sub < sp->n_bos_heads) {
        const int b = res->sub, q = res->seq;
        cr_bos_edit be = {sp->bos_heads[2 * b], sp->bos_heads[2 * b + 1]};
        double *acc = res->bos_acc;
        ids[0] = c->bos_id;
        memcpy(ids + 1, sp->seqs + (size_t)q * N, (size_t)N * 4);
        memcpy(ids + 1 + N, sp->seqs + (size_t)q * N, (size_t)N * 4);
        mlp[Lf] = act;
        cr_capture cap = {0};
        cap.logits = lg, cap.mlp_post = mlp, cap.norm_scale = sc;
        if ((rc = cr_forward(s, ids, T, 0, &cap, err))) goto done;
        cr_seq_stats(lg, V, ids, T, h0, l0);
        for (int p = 1 + N; p < T - 1; p++) {
            mlp[Lf] = act1;
            cr_capture ce = {0};
            ce.logits = lg2, ce.mlp_post = mlp, ce.norm_scale = sc1, ce.attn_edit = cr_bos_hook, ce.user = &be;
            if ((rc = cr_forward(s, ids + p, 1, p, &ce, err))) goto done;
            double lse, ent;
            cr_logits_stats(lg2, V, &lse, &ent);
            double la = lse - lg2[ids[p + 1]];
            int i0 = NN ? sp->neurons[0] : 0;
            acc[0] += act[(size_t)p * f + i0], acc[1] += act1[i0], acc[2] += sc[p], acc[3] += sc1[0];
            acc[4] += h0[p], acc[5] += ent, acc[6] += l0[p], acc[7] += la;
            res->bos_cnt++;
            /* Put the clean keys and values of position p back for the next position. */
            cr_capture cc = {0};
            if ((rc = cr_forward(s, ids + p, 1, p, &cc, err))) goto done;
        }
        if (++res->seq == sp->n_seqs) {
            for (int k = 0; k < 8; k++) res->bos[(size_t)b * 8 + k] = res->bos_cnt ? acc[k] / (double)res->bos_cnt : 0;
            res->sub++, res->seq = 0, res->bos_cnt = 0;
            memset(res->bos_acc, 0, sizeof res->bos_acc);
        }
        CR_IND_STEP();
    }
    if (res->pass == 4) res->pass = 5;
#undef CR_IND_STEP
done:
    free(pat);
    cr_session_close(s);
    free(ids), free(lg), free(lg2), free(act), free(sc), free(sc1), free(act1), free(h0), free(l0), free(h1), free(l1), free(mlp), free(attn);
    if (rc) cr_induction_result_free(res);
    return rc;
}

/* Induction state files, "CRINDU01" (little-endian): u64 fingerprint; u32 T, neurons, layers x
 * heads, BOS heads, pass, seq, sub; f64 bos_acc[8]; u64 bos_cnt; f64 entropy[T], loss[T],
 * act[neurons x T], first_mean[neurons], h_ratio, l_ratio, clip_entropy [neurons x T],
 * head_score[layers x heads], bos[BOS heads x 8]; u32 rises[neurons]; u64 FNV-1a of it all. */
typedef struct cr_ind_dims { int T, NN, LH, NB; } cr_ind_dims;

static void cr_ind_arrays(cr_induction_result *r, const cr_ind_dims *d, double **arr[9], size_t len[9]) {
    double **a[9] = {&r->entropy, &r->loss, &r->act, &r->first_mean, &r->h_ratio, &r->l_ratio, &r->clip_entropy, &r->head_score, &r->bos};
    const size_t l[9] = {(size_t)d->T, (size_t)d->T, (size_t)d->NN * d->T, (size_t)d->NN, (size_t)d->NN * d->T, (size_t)d->NN * d->T, (size_t)d->NN * d->T,
                         (size_t)d->LH, (size_t)d->NB * 8};
    for (int i = 0; i < 9; i++) arr[i] = a[i], len[i] = l[i];
}

static int cr_induction_save(const cr_induction_result *res, const cr_ind_dims *d, uint64_t fp, const char *path, cr_err *err) {
    cr_bw b = {0};
    cr_bw_bytes(&b, "CRINDU01", 8);
    cr_bw_u64(&b, fp);
    const int hdr[7] = {d->T, d->NN, d->LH, d->NB, res->pass, res->seq, res->sub};
    for (int i = 0; i < 7; i++) cr_bw_u32(&b, (uint32_t)hdr[i]);
    for (int k = 0; k < 8; k++) cr_bw_f64(&b, res->bos_acc[k]);
    cr_bw_u64(&b, (uint64_t)res->bos_cnt);
    double **arr[9];
    size_t len[9];
    cr_ind_arrays((cr_induction_result *)res, d, arr, len);
    for (int i = 0; i < 9; i++)
        for (size_t k = 0; k < len[i]; k++) cr_bw_f64(&b, (*arr[i])[k]);
    for (int j = 0; j < d->NN; j++) cr_bw_u32(&b, (uint32_t)res->rises[j]);
    return cr_bw_commit(&b, path, err);
}

/* Loads a state for exactly these dimensions and fingerprint into a fresh result. */
static int cr_induction_load(cr_induction_result *res, const cr_ind_dims *d, uint64_t fp, const char *path, cr_err *err) {
    memset(res, 0, sizeof *res);
    cr_map mp;
    int rc = cr_map_open(&mp, path, err);
    if (rc) return rc;
    if (mp.size < 16 || memcmp(mp.data, "CRINDU01", 8)) { rc = cr_fail(err, CR_EFORMAT, "%s: not a confreg induction state (bad magic)", path); goto out; }
    if (cr_fnv64(mp.data, mp.size - 8, 0xcbf29ce484222325ull) != cr_rd64(mp.data + mp.size - 8)) {
        rc = cr_fail(err, CR_EFORMAT, "%s: induction state is corrupt or truncated (checksum mismatch)", path);
        goto out;
    }
    cr_br r = {mp.data, 8, mp.size - 8, 0};
    if (cr_br_u64(&r) != fp) { rc = cr_fail(err, CR_EINVAL, "%s: checkpoint of a different induction run (model, text or options differ); remove it to start afresh", path); goto out; }
    int hdr[7];
    for (int i = 0; i < 7; i++) hdr[i] = (int)cr_br_count(&r, INT32_MAX);
    if (r.bad || hdr[0] != d->T || hdr[1] != d->NN || hdr[2] != d->LH || hdr[3] != d->NB || hdr[4] < 1 || hdr[4] > 5) {
        rc = cr_fail(err, CR_EFORMAT, "%s: induction state has inconsistent sizes", path);
        goto out;
    }
    res->T = d->T, res->pass = hdr[4], res->seq = hdr[5], res->sub = hdr[6];
    for (int k = 0; k < 8; k++) res->bos_acc[k] = cr_br_f64(&r);
    res->bos_cnt = (int64_t)cr_br_u64(&r);
    double **arr[9];
    size_t len[9];
    cr_ind_arrays(res, d, arr, len);
    for (int i = 0; i < 9 && !r.bad; i++) {
        if (!(*arr[i] = cr_calloc(len[i] + 1, sizeof **arr[i]))) { rc = cr_fail(err, CR_ENOMEM, "out of memory"); goto out; }
        for (size_t k = 0; k < len[i]; k++) (*arr[i])[k] = cr_br_f64(&r);
    }
    if (!(res->rises = cr_calloc((size_t)d->NN + 1, sizeof *res->rises))) { rc = cr_fail(err, CR_ENOMEM, "out of memory"); goto out; }
    for (int j = 0; j < d->NN; j++) res->rises[j] = cr_br_u32(&r) != 0;
    if (r.bad || r.pos != r.size || res->bos_cnt < 0) rc = cr_fail(err, CR_EFORMAT, "%s: induction state is malformed (truncated or trailing bytes)", path);
out:
    cr_map_close(&mp);
    if (rc) cr_induction_result_free(res);
    return rc;
}

/* ============================================================================================
 * 8. Reports
 * ============================================================================================ */

int cr_write_npy(const char *path, const float *data, int ndim, const int64_t *shape, cr_err *err) {
    if (ndim < 1 || ndim > 2) return cr_fail(err, CR_EINVAL, "%s: .npy arrays must have 1 or 2 dimensions", path);
    char hdr[128];
    int hl = ndim == 1 ? snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%lld,), }", (long long)shape[0])
                       : snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (%lld, %lld), }", (long long)shape[0], (long long)shape[1]);
    /* Magic (6) + version (2) + length (2) + header, padded with spaces to a multiple of 64. */
    int total = (10 + hl + 1 + 63) / 64 * 64, pad = total - 10 - hl - 1;
    cr_outfile o;
    int rc = cr_outfile_open(&o, path, err);
    if (rc) return rc;
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)((total - 10) & 0xff), (unsigned char)((total - 10) >> 8)};
    fwrite(pre, 1, 10, o.f);
    fwrite(hdr, 1, (size_t)hl, o.f);
    for (int i = 0; i < pad; i++) fputc(' ', o.f);
    fputc('\n', o.f);
    uint64_t count = (uint64_t)shape[0] * (uint64_t)(ndim == 2 ? shape[1] : 1);
    for (uint64_t i = 0; i < count; i++) {
        uint32_t b;
        memcpy(&b, &data[i], 4);
        unsigned char le[4] = {(unsigned char)b, (unsigned char)(b >> 8), (unsigned char)(b >> 16), (unsigned char)(b >> 24)};
        fwrite(le, 1, 4, o.f);
    }
    return cr_outfile_close(&o, 1, err);
}

/* ============================================================================================
 * 8b. SVG plots: scatter and line charts for the report folder
 * ============================================================================================
 *
 * One call, cr_plot_svg, writes one standalone SVG document (no scripts, no external fonts or
 * images), meant to be opened directly or embedded in index.html with <img>.  Output depends
 * only on the arguments: no clock, no locale (numbers are formatted here with integer
 * arithmetic, never with %f or %g), no global state, so identical input gives identical bytes.
 *
 * Conventions a caller should know:
 *   - A point is drawn when x and y are finite, |v| < 1e300 and, on a log axis, v > 0; the
 *     others are counted and reported in small text under the plot.  A point with a c array
 *     but a non-finite c[i] is drawn in grey.
 *   - Axis limits apply when min != 0 or max != 0 and they make a valid range; otherwise the
 *     range is automatic.  Data outside the limits is clipped to the plot frame.
 *   - width/height <= 0 mean 720 x 480; smaller than 320 x 240 is raised to that.  A title
 *     too wide for the canvas is set smaller, down to 12px.
 *   - Text is escaped; invalid UTF-8 becomes U+FFFD and control characters become spaces, so
 *     the document is well-formed whatever the caller passes.  Tokens should be made visible
 *     ("\n" -> "\\n") by the caller if that matters.
 *   - Markers are zero-length path segments with round caps: one <path> per series (per colour
 *     bin for colour-mapped series) keeps 50,000 points near 15 bytes each.
 */


typedef struct cr_plot_series {
    const char *label;        /* legend text, NULL for none */
    const double *x, *y;      /* [n] */
    const double *c;          /* [n] or NULL: values mapped to a colour scale (colour bar drawn) */
    const char *const *names; /* [n] or NULL: per-point annotation, drawn only where highlight[i] */
    const unsigned char *highlight; /* [n] or NULL: points drawn larger and annotated */
    int n;
    int style;                /* 0 points, 1 line, 2 line with points */
    const char *color;        /* CSS colour when c is NULL, e.g. "#1f77b4"; NULL = palette */
} cr_plot_series;

typedef struct cr_plot {
    const char *title, *xlabel, *ylabel, *clabel;  /* clabel: colour bar label */
    int logx, logy;           /* log10 axes (non-positive values are skipped and counted) */
    int width, height;        /* pixels; 0 -> 720 x 480 */
    double xmin, xmax, ymin, ymax; /* both 0 -> automatic with 5% padding and "nice" ticks */
    const double *hlines; int n_hlines; /* optional dashed horizontal reference lines */
    const char *note;         /* optional small text under the title (e.g. data source) */
} cr_plot;

static int cr_plot_svg(FILE *f, const cr_plot *p, const cr_plot_series *s, int n_series);

#define SVG_MAXT 96   /* ticks per axis; the generators never need more than about 60 */
#define SVG_BINS 64   /* colour-mapped markers are grouped into this many paths */

/* Every byte goes through one writer so that the first failed write is remembered. */
typedef struct svg_w { FILE *f; int err; } svg_w;

typedef struct svg_axis {
    int log;
    double lo, hi;            /* visible range in axis units (log10 of the value on log axes) */
    double a, b;              /* pixel positions of lo and hi */
    int n;
    double v[SVG_MAXT];       /* tick values in data units */
    char major[SVG_MAXT], lab[SVG_MAXT][32];   /* empty label: unlabelled minor tick */
} svg_axis;

typedef struct svg_box { double x0, y0, x1, y1; } svg_box;

static void svg_raw(svg_w *w, const char *s, size_t n) {
    if (n && fwrite(s, 1, n, w->f) != n) w->err = 1;
}

/* Markup characters are escaped; bytes that would make the file ill-formed XML (invalid or
 * overlong UTF-8, surrogates, C0 controls, U+FFFE/U+FFFF) are replaced instead of rejected,
 * because one odd token must not cost the whole report its plot. */
static void svg_text(svg_w *w, const char *str) {
    const unsigned char *p = (const unsigned char *)(str ? str : "");
    while (*p) {
        const unsigned char *q = p;
        while (*q >= 0x20 && *q < 0x80 && *q != '<' && *q != '>' && *q != '&' && *q != '"' &&
               *q != '\'') q++;
        svg_raw(w, (const char *)p, (size_t)(q - p));
        if (!*(p = q)) break;
        unsigned c = *p, cp;
        if (c < 0x80) {
            const char *e = c == '<' ? "&lt;" : c == '>' ? "&gt;" : c == '&' ? "&amp;" :
                            c == '"' ? "&quot;" : c == '\'' ? "&#39;" : " ";
            svg_raw(w, e, strlen(e));
            p++;
            continue;
        }
        int len = c >= 0xF5 ? 0 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0, ok = len > 0;
        cp = c & (0x7Fu >> len);
        for (int i = 1; ok && i < len; i++)
            if ((p[i] & 0xC0) != 0x80) ok = 0; else cp = cp << 6 | (p[i] & 0x3Fu);
        if (ok && ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
                   (cp >= 0xD800 && cp < 0xE000) || cp == 0xFFFE || cp == 0xFFFF)) ok = 0;
        svg_raw(w, ok ? (const char *)p : "\xEF\xBF\xBD", ok ? (size_t)len : 3);
        p += ok ? len : 1;
    }
}

/* A rough advance width: enough to keep labels apart and on the canvas, no font metrics. */
static double svg_textw(const char *s, double size) {
    double em = 0;
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++)
        if ((*p & 0xC0) != 0x80) em += *p >= 0xE2 ? 1.0 : 0.6;   /* CJK and symbols are wide */
    return em * size;
}

/* Pixel coordinates with one decimal: finer is invisible and only makes large plots larger. */
static void svg_px(char *b, double v) {
    if (!(v > -1e6)) v = -1e6;             /* also catches NaN; the clip path hides it */
    if (v > 1e6) v = 1e6;
    long long t = llround(v * 10);
    int n = 0;
    if (t < 0) b[n++] = '-', t = -t;
    n += snprintf(b + n, 24, "%lld", t / 10);
    if (t % 10) snprintf(b + n, 4, ".%d", (int)(t % 10));
}

/* A tiny printf: %s raw, %t escaped text, %f pixel value, %d int, %% percent.  Integers via
 * snprintf are locale-independent; floating point never goes through the C library here. */
static void svg_out(svg_w *w, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    for (const char *p = fmt; *p;) {
        const char *q = strchr(p, '%');
        char b[40];
        if (!q) q = p + strlen(p);
        svg_raw(w, p, (size_t)(q - p));
        if (!q[0] || !q[1]) break;
        switch (q[1]) {
        case 's': { const char *t = va_arg(ap, const char *); svg_raw(w, t, strlen(t)); break; }
        case 't': svg_text(w, va_arg(ap, const char *)); break;
        case 'f': svg_px(b, va_arg(ap, double)); svg_raw(w, b, strlen(b)); break;
        case 'd': snprintf(b, sizeof b, "%d", va_arg(ap, int)); svg_raw(w, b, strlen(b)); break;
        default: svg_raw(w, q + 1, 1);
        }
        p = q + 2;
    }
    va_end(ap);
}

/* Fixed-point decimal of |v| < 1e9 with dec <= 9 decimals, into b[32]. */
static void svg_fixed(char *b, double v, int dec) {
    unsigned long long p10 = 1;
    for (int i = 0; i < dec; i++) p10 *= 10;
    unsigned long long t = (unsigned long long)(fabs(v) * (double)p10 + 0.5);
    unsigned long long fr = t % p10;
    int n = snprintf(b, 22, "%s%llu", v < 0 && t ? "-" : "", t / p10);
    if (dec) b[n++] = '.';
    for (int i = dec - 1; i >= 0; i--) b[n + i] = (char)('0' + fr % 10), fr /= 10;
    b[n + dec] = 0;
}

static void svg_strip0(char *b) {
    if (!strchr(b, '.')) return;
    size_t n = strlen(b);
    while (b[n - 1] == '0') b[--n] = 0;
    if (b[n - 1] == '.') b[--n] = 0;
}

/* Scientific notation as "2.5e-7" (dec mantissa decimals, trailing zeros dropped). */
static void svg_sci(char *b, double v, int dec) {
    int e = (int)floor(log10(fabs(v)));
    double m = fabs(v) / pow(10, e), lim = 10 - 0.5 * pow(10, -dec);
    if (m < 1) m *= 10, e--;
    if (m >= lim) m /= 10, e++;             /* 9.996 would otherwise print as "10.00e..." */
    svg_fixed(b, v < 0 ? -m : m, dec);
    svg_strip0(b);
    snprintf(b + strlen(b), 8, "e%d", e);
}

/* About sig significant digits, the shortest readable form: colour bar values and the like. */
static void svg_g(char *b, double v, int sig) {
    int e = v == 0 ? 0 : (int)floor(log10(fabs(v)));
    if (v == 0) strcpy(b, "0");
    else if (e >= -4 && e < 6) svg_fixed(b, v, sig - 1 - e < 0 ? 0 : sig - 1 - e), svg_strip0(b);
    else svg_sci(b, v, sig - 1);
}

/* A tick at k*step prints with exactly the decimals of the step, so 0.1+0.2 reads "0.3". */
static void svg_label(char *b, double v, int k) {
    int e = v == 0 ? 0 : (int)floor(log10(fabs(v)));
    if (v == 0) strcpy(b, "0");
    else if (fabs(v) >= 1e-4 && fabs(v) < 1e6 && k >= -8) svg_fixed(b, v, k < 0 ? -k : 0);
    else svg_sci(b, v, e - k < 0 ? 0 : e - k > 6 ? 6 : e - k);
}

static double svg_tu(const svg_axis *ax, double v) { return ax->log ? log10(v) : v; }
static int svg_ok(const svg_axis *ax, double v) {
    return isfinite(v) && fabs(v) < 1e300 && (!ax->log || v > 0);
}
static double svg_map(const svg_axis *ax, double v) {
    return ax->a + (svg_tu(ax, v) - ax->lo) / (ax->hi - ax->lo) * (ax->b - ax->a);
}

/* lo > hi means no data.  A flat range is widened so that the data sits in the middle. */
static void svg_range(svg_axis *ax, double lo, double hi, double umin, double umax) {
    if ((umin != 0 || umax != 0) && svg_ok(ax, umin) && svg_ok(ax, umax) && umin < umax) {
        ax->lo = svg_tu(ax, umin), ax->hi = svg_tu(ax, umax);
        return;
    }
    if (!(lo <= hi)) lo = 0, hi = 1;
    else if (hi - lo <= 1e-9 * fmax(fabs(lo), fabs(hi))) {
        double d = ax->log ? 0.5 : lo != 0 ? fabs(lo) * 0.1 : 1;
        lo -= d, hi += d;
    }
    ax->lo = lo - 0.05 * (hi - lo), ax->hi = hi + 0.05 * (hi - lo);
}

/* Labels use U+2212 for minus: the hyphen is visibly too short next to digits. */
static void svg_minus(char *d, size_t cap, const char *s) {
    size_t n = 0;
    for (; s && *s && n + 4 < cap; s++)
        if (*s == '-') memcpy(d + n, "\xE2\x88\x92", 3), n += 3;
        else d[n++] = *s;
    d[n] = 0;
}

static void svg_tick(svg_axis *ax, double v, int major, const char *lab) {
    if (ax->n >= SVG_MAXT) return;
    ax->v[ax->n] = v, ax->major[ax->n] = (char)major;
    svg_minus(ax->lab[ax->n++], sizeof ax->lab[0], lab);
}

/* Steps of 1, 2 or 5 times a power of ten, about target ticks over [lo, hi] (data units). */
static void svg_lin_ticks(svg_axis *ax, double lo, double hi, int target) {
    double raw = (hi - lo) / target, mag, r, step;
    char b[32];
    if (!(raw > 0) || !isfinite(raw)) return;
    mag = pow(10, floor(log10(raw))), r = raw / mag;
    step = (r < 1.5 ? 1 : r < 3 ? 2 : r < 7 ? 5 : 10) * mag;
    int k = (int)floor(log10(step) + 1e-9);
    for (double i = ceil(lo / step - 1e-9); i <= floor(hi / step + 1e-9); i++) {
        double v = fabs(i) < 0.5 ? 0 : i * step;
        if (ax->log && v <= 0) continue;
        svg_label(b, v, k);
        svg_tick(ax, v, 1, b);
    }
}

/* Decades are labelled (every stride-th one on very wide ranges), 2..9 are minor ticks while
 * they stay sparse, and short ranges also label 2 and 5.  Labels read "0.001" unless a decade
 * beyond 1e-4..1e4 is shown; then all read "1e-3", so that one axis never mixes styles.  A
 * range inside one decade falls back to linear steps, so an axis always shows two numbers. */
static void svg_log_ticks(svg_axis *ax, int target) {
    double span = ax->hi - ax->lo;
    int d0 = (int)floor(ax->lo), d1 = (int)ceil(ax->hi), labelled = 0;
    int stride = span > target + 2 ? (int)ceil(span / target) : 1;
    int sci = ceil(ax->lo - 1e-9) < -4 || floor(ax->hi + 1e-9) > 4;   /* one style per axis */
    char b[32];
    for (int d = d0; d <= d1; d++)
        for (int m = 1; m <= 9; m++) {
            double t = d + log10(m);
            int lab = m == 1 ? d % stride == 0 : span < 2.2 && (m == 2 || m == 5);
            if (t < ax->lo - 1e-9 || t > ax->hi + 1e-9 || (m > 1 && span > 7)) continue;
            if (lab && !sci) svg_fixed(b, m * pow(10, d), d < 0 ? -d : 0);
            else if (lab) snprintf(b, sizeof b, "%de%d", m, d);
            svg_tick(ax, m * pow(10, d), m == 1 || lab, lab ? b : NULL);
            labelled += lab;
        }
    if (labelled < 2) ax->n = 0, svg_lin_ticks(ax, pow(10, ax->lo), pow(10, ax->hi), target);
}

/* About one labelled tick per `gap` pixels; log axes fit a few more, being less dense. */
static void svg_ticks(svg_axis *ax, double gap) {
    int target = (int)(fabs(ax->b - ax->a) / gap) < 3 ? 3 : (int)(fabs(ax->b - ax->a) / gap);
    if (ax->log) svg_log_ticks(ax, target + 2);
    else svg_lin_ticks(ax, ax->lo, ax->hi, target);
}

static void svg_cmap(char *b, double t) {
    static const unsigned char V[9][3] = {   /* viridis at 0, 1/8, ..., 1 */
        {68, 1, 84}, {71, 44, 122}, {59, 81, 139}, {44, 113, 142}, {33, 144, 141},
        {39, 173, 129}, {92, 200, 99}, {170, 220, 50}, {253, 231, 37}};
    if (!(t > 0)) t = 0;
    if (t > 1) t = 1;
    int i = t >= 1 ? 7 : (int)(t * 8);
    double u = t * 8 - i;
    snprintf(b, 8, "#%02x%02x%02x", (int)lround(V[i][0] + u * (V[i + 1][0] - V[i][0])),
             (int)lround(V[i][1] + u * (V[i + 1][1] - V[i][1])),
             (int)lround(V[i][2] + u * (V[i + 1][2] - V[i][2])));
}

/* Colour bin of c[i]: 0..SVG_BINS-1, or SVG_BINS for "no value" (drawn grey). */
static int svg_bin(double c, double clo, double chi) {
    if (!isfinite(c) || fabs(c) >= 1e300) return SVG_BINS;
    if (!(chi > clo)) return SVG_BINS / 2;
    return (int)lround((c - clo) / (chi - clo) * (SVG_BINS - 1));
}

/* Everything a drawing step needs, so that helpers take one argument instead of ten. */
typedef struct svg_ctx {
    svg_w w;
    const cr_plot *p;
    const cr_plot_series *s;
    int ns, W, H;
    double left, top, right, bot;   /* the plot frame in pixels */
    double clo, chi;                /* colour scale; clo > chi when no series has c values */
    svg_axis ax, ay;
} svg_ctx;

/* Pixel position of point i of q, or 0 when the point cannot be drawn. */
static int svg_pt(const svg_ctx *g, const cr_plot_series *q, int i, double *px, double *py) {
    if (!svg_ok(&g->ax, q->x[i]) || !svg_ok(&g->ay, q->y[i])) return 0;
    *px = svg_map(&g->ax, q->x[i]), *py = svg_map(&g->ay, q->y[i]);
    return 1;
}

/* The colour of point i of series k (i < 0: the series as a whole, for the legend). */
static const char *svg_color(const svg_ctx *g, int k, int i, char *b) {
    static const char *const pal[10] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                        "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
    const cr_plot_series *q = &g->s[k];
    if (!q->c) return q->color ? q->color : pal[k % 10];
    int bin = i < 0 ? SVG_BINS * 6 / 10 : svg_bin(q->c[i], g->clo, g->chi);
    if (bin == SVG_BINS) return "#aaaaaa";
    svg_cmap(b, bin / (double)(SVG_BINS - 1));
    return b;
}

static int svg_hit(svg_box a, svg_box b) {
    return a.x0 < b.x1 && b.x0 < a.x1 && a.y0 < b.y1 && b.y0 < a.y1;
}

static long svg_count_in(const svg_ctx *g, svg_box r) {
    long n = 0;
    double px, py;
    for (int k = 0; k < g->ns; k++)
        for (int i = 0; g->s[k].x && g->s[k].y && i < g->s[k].n; i++)
            n += svg_pt(g, &g->s[k], i, &px, &py) &&
                 px >= r.x0 && px <= r.x1 && py >= r.y0 && py <= r.y1;
    return n;
}

/* rot: rotated by -90 degrees about (x, y), for vertical axis labels. */
static void svg_tx(svg_w *w, double x, double y, int rot, const char *attrs, const char *s) {
    if (rot) svg_out(w, "<text transform=\"rotate(-90 %f %f)\" x=\"%f\" y=\"%f\" %s>%t</text>\n",
                     x, y, x, y, attrs, s);
    else svg_out(w, "<text x=\"%f\" y=\"%f\" %s>%t</text>\n", x, y, attrs, s);
}

/* pass 0: grid lines, 1: tick marks, 2: tick labels, of both axes. */
static void svg_axes(svg_ctx *g, int pass) {
    for (int d = 0; d < 2; d++) {
        const svg_axis *a = d ? &g->ay : &g->ax;
        for (int i = 0; i < a->n; i++) {
            double v = svg_map(a, a->v[i]);
            if (pass == 0 && a->major[i])   /* minor grid lines would turn the plot grey */
                svg_out(&g->w, "<path d=\"M%f %f%s%f\"/>\n", d ? g->left : v, d ? v : g->top,
                        d ? "H" : "V", d ? g->right : g->bot);
            if (pass == 1)
                svg_out(&g->w, "<path d=\"M%f %f%s%d\"/>\n", d ? g->left : v, d ? v : g->bot,
                        d ? "h" : "v", (a->major[i] ? 6 : 3) * (d ? -1 : 1));
            if (pass == 2 && a->lab[i][0])
                svg_tx(&g->w, d ? g->left - 9 : v, d ? v + 4.5 : g->bot + 21, 0,
                       d ? "text-anchor=\"end\"" : "text-anchor=\"middle\"", a->lab[i]);
        }
    }
}

/* One series: its line as a single path broken at unusable points, then its markers as one
 * path per colour.  Highlighted points are left out here and drawn on top later. */
static void svg_series(svg_ctx *g, int k) {
    const cr_plot_series *q = &g->s[k];
    double px, py, r = q->style == 2 ? 3 : q->n > 5000 ? 1.8 : q->n > 500 ? 2.6 : 3.4;
    char c[8];
    if (!q->x || !q->y || q->n <= 0) return;
    if (q->style == 1 || q->style == 2) {
        int m = 0, gap = 1;
        long long lx = 0, ly = 0;
        svg_out(&g->w, "<path fill=\"none\" stroke=\"%t\" stroke-width=\"%s\" stroke-linejoin="
                "\"round\" d=\"", q->c ? "#888" : svg_color(g, k, -1, c),
                q->n > 2000 ? "1.2" : "2");
        for (int i = 0; i < q->n; i++) {
            if (!svg_pt(g, q, i, &px, &py)) { gap = 1; continue; }
            if (!gap && llround(px * 10) == lx && llround(py * 10) == ly) continue;
            svg_out(&g->w, gap ? "M%f %f" : ++m % 12 ? "L%f %f" : "L%f %f\n", px, py);
            lx = llround(px * 10), ly = llround(py * 10), gap = 0;
        }
        svg_out(&g->w, "\"/>\n");
    }
    /* bins 0..SVG_BINS are colour-mapped (SVG_BINS: no value), SVG_BINS + 1 a plain series */
    for (int bin = q->c ? 0 : SVG_BINS + 1; q->style != 1 && bin <= SVG_BINS + 1; bin++) {
        const char *col = bin > SVG_BINS ? svg_color(g, k, -1, c) : bin == SVG_BINS ? "#aaaaaa"
                          : (svg_cmap(c, bin / (double)(SVG_BINS - 1)), c);
        int m = 0;
        for (int i = 0; i < q->n && (!q->c || bin <= SVG_BINS); i++) {
            if (!svg_pt(g, q, i, &px, &py) || (q->highlight && q->highlight[i])) continue;
            if (q->c && svg_bin(q->c[i], g->clo, g->chi) != bin) continue;
            if (!m) svg_out(&g->w, "<path fill=\"none\" stroke=\"%t\" stroke-width=\"%f\" "
                            "stroke-linecap=\"round\" d=\"", col, 2 * r);
            svg_out(&g->w, ++m % 12 ? "M%f %fh0" : "M%f %fh0\n", px, py);
        }
        if (m) svg_out(&g->w, "\"/>\n");
    }
}

/* A highlighted point, and its name at the first spot around it that stays inside the frame
 * and clear of the boxes in occ (legend, earlier names); failing that, anywhere on the canvas. */
static void svg_highlight(svg_ctx *g, int k, int i, svg_box *occ, int *n_occ) {
    static const signed char cand[8][2] = {{1, 0}, {-1, 0}, {1, -1}, {1, 1}, {-1, -1}, {-1, 1},
                                           {0, -1}, {0, 1}};
    const cr_plot_series *q = &g->s[k];
    const char *nm = q->names ? q->names[i] : NULL;
    double px, py, x = 0, y = 0, tw = svg_textw(nm, 14.5);   /* bold runs wider */
    char c[8];
    int fit = -1;
    if (!svg_pt(g, q, i, &px, &py) || px < g->left - 0.5 || px > g->right + 0.5 ||
        py < g->top - 0.5 || py > g->bot + 0.5) return;
    svg_out(&g->w, "<circle cx=\"%f\" cy=\"%f\" r=\"6\" fill=\"%t\" stroke=\"#111\" stroke-width="
            "\"1.6\"/>\n", px, py, svg_color(g, k, i, c));
    if (!nm || !*nm) return;
    for (int t = 0; t < 16 && fit < 0; t++) {
        const signed char *d = cand[t & 7];
        svg_box r, lim = {t < 8 ? g->left : 2, t < 8 ? g->top : 2, t < 8 ? g->right : g->W - 2,
                          t < 8 ? g->bot : g->H - 2};
        r.x0 = d[0] > 0 ? px + 9 : d[0] < 0 ? px - 9 - tw : px - tw / 2;
        r.y0 = d[1] > 0 ? py + 7 : d[1] < 0 ? py - 23 : py - 8;
        r.x1 = r.x0 + tw, r.y1 = r.y0 + 16;
        int ok = r.x0 >= lim.x0 && r.x1 <= lim.x1 && r.y0 >= lim.y0 && r.y1 <= lim.y1;
        for (int o = 0; ok && t < 8 && o < *n_occ; o++) ok = !svg_hit(r, occ[o]);
        if (ok) fit = t, x = r.x0, y = r.y0;
    }
    if (fit < 0) x = fmax(2, fmin(px + 9, g->W - 2 - tw)), y = fmax(2, py - 8);
    if (*n_occ < 64) occ[(*n_occ)++] = (svg_box){x, y, x + tw, y + 16};
    /* Anchored on the side facing the point, so a font wider than the estimate grows away
     * from the marker instead of over it. */
    int side = fit < 0 ? 1 : cand[fit & 7][0];
    svg_out(&g->w, "<text x=\"%f\" y=\"%f\" text-anchor=\"%s\" font-weight=\"bold\" stroke=\"#fff\""
            " stroke-width=\"3\" stroke-linejoin=\"round\" paint-order=\"stroke\">%t</text>\n",
            side > 0 ? x : side < 0 ? x + tw : x + tw / 2, y + 12.5,
            side > 0 ? "start" : side < 0 ? "end" : "middle", nm);
}

/* The legend goes into whichever corner of the frame hides the fewest points. */
static svg_box svg_legend_box(const svg_ctx *g, int n_leg, double textw) {
    double w = 58 + textw, h = 10 + 20 * n_leg;
    svg_box best = {0, 0, 0, 0};
    long nbest = -1;
    for (int c = 0; c < 4; c++) {
        svg_box r = {c & 1 ? g->left + 8 : g->right - 8 - w, c & 2 ? g->bot - 8 - h : g->top + 8,
                     0, 0};
        r.x1 = r.x0 + w, r.y1 = r.y0 + h;
        long n = svg_count_in(g, r);
        if (nbest < 0 || n < nbest) nbest = n, best = r;
    }
    return best;
}

static void svg_legend(svg_ctx *g, svg_box b) {
    char c[8];
    svg_out(&g->w, "<rect x=\"%f\" y=\"%f\" width=\"%f\" height=\"%f\" rx=\"3\" fill=\"#fff\" "
            "fill-opacity=\"0.9\" stroke=\"#bbb\"/>\n", b.x0, b.y0, b.x1 - b.x0, b.y1 - b.y0);
    for (int k = 0, row = 0; k < g->ns; k++) {
        const cr_plot_series *q = &g->s[k];
        const char *col = svg_color(g, k, -1, c);
        double y = b.y0 + 15 + 20 * row;
        if (!q->label || !*q->label) continue;
        if (q->style == 1 || q->style == 2)
            svg_out(&g->w, "<path stroke=\"%t\" stroke-width=\"2\" d=\"M%f %fh26\"/>\n",
                    q->c ? "#888" : col, b.x0 + 10, y);
        if (q->style != 1)
            svg_out(&g->w, "<circle cx=\"%f\" cy=\"%f\" r=\"4\" fill=\"%t\"/>\n", b.x0 + 23, y,
                    col);
        svg_tx(&g->w, b.x0 + 44, y + 4.5, 0, "", q->label);
        row++;
    }
}

static int cr_plot_svg(FILE *f, const cr_plot *p, const cr_plot_series *s, int n_series) {
    static const cr_plot none;
    svg_ctx g0, *g = &g0;
    double xlo = HUGE_VAL, xhi = -HUGE_VAL, ylo = HUGE_VAL, yhi = -HUGE_VAL, cw = 0, lw = 0;
    double legw = 0;
    long shown = 0, skipped = 0;
    int n_leg = 0;
    char b[160], cl[3][32];
    if (!f) return 1;
    memset(g, 0, sizeof *g);
    g->w.f = f, g->p = p = p ? p : &none, g->s = s, g->ns = s && n_series > 0 ? n_series : 0;
    g->ax.log = p->logx != 0, g->ay.log = p->logy != 0;
    g->W = p->width > 0 ? p->width : 720, g->H = p->height > 0 ? p->height : 480;
    g->W = g->W < 320 ? 320 : g->W, g->H = g->H < 240 ? 240 : g->H;
    g->clo = HUGE_VAL, g->chi = -HUGE_VAL;
    for (int k = 0; k < g->ns; k++) {
        const cr_plot_series *q = &s[k];
        if (q->label && *q->label) n_leg++, legw = fmax(legw, svg_textw(q->label, 13));
        for (int i = 0; q->x && q->y && i < q->n; i++) {
            double x = q->x[i], y = q->y[i];
            if (!svg_ok(&g->ax, x) || !svg_ok(&g->ay, y)) { skipped++; continue; }
            shown++;
            xlo = fmin(xlo, svg_tu(&g->ax, x)), xhi = fmax(xhi, svg_tu(&g->ax, x));
            ylo = fmin(ylo, svg_tu(&g->ay, y)), yhi = fmax(yhi, svg_tu(&g->ay, y));
            if (q->c && svg_bin(q->c[i], 0, 0) != SVG_BINS)
                g->clo = fmin(g->clo, q->c[i]), g->chi = fmax(g->chi, q->c[i]);
        }
    }
    for (int i = 0; p->hlines && i < p->n_hlines; i++)
        if (svg_ok(&g->ay, p->hlines[i])) {
            double t = svg_tu(&g->ay, p->hlines[i]);
            ylo = fmin(ylo, t), yhi = fmax(yhi, t);
        }
    int has_c = g->clo <= g->chi;

    /* Layout: the y tick labels decide the left margin, the colour bar labels the right one. */
    g->top = (p->title ? 46 : 22) + (p->note ? 18 : 0);
    g->bot = g->H - (p->xlabel ? 58 : 36) - (skipped ? 16 : 0);
    g->ay.a = g->bot, g->ay.b = g->top;
    svg_range(&g->ay, ylo, yhi, p->ymin, p->ymax);
    svg_ticks(&g->ay, 64);
    for (int i = 0; i < g->ay.n; i++) lw = fmax(lw, svg_textw(g->ay.lab[i], 13));
    for (int i = 0; has_c && i < 3; i++) {
        svg_g(b, i == 0 ? g->clo : i == 1 ? (g->clo + g->chi) / 2 : g->chi, 3);
        svg_minus(cl[i], sizeof cl[i], b);
        cw = fmax(cw, svg_textw(cl[i], 13));
    }
    g->left = floor(16 + (p->ylabel ? 22 : 0) + lw);
    g->right = g->W - 20 - (has_c ? floor(44 + cw + (p->clabel ? 24 : 0)) : 0);
    g->ax.a = g->left, g->ax.b = g->right;
    svg_range(&g->ax, xlo, xhi, p->xmin, p->xmax);
    svg_ticks(&g->ax, 100);
    svg_box occ[64], leg = n_leg ? svg_legend_box(g, n_leg, legw) : (svg_box){0, 0, 0, 0};
    int n_occ = 0;
    if (n_leg) occ[n_occ++] = leg;

    svg_out(&g->w, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/"
            "2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" font-family=\"sans-serif\""
            " font-size=\"13\" fill=\"#222\">\n", g->W, g->H, g->W, g->H);
    if (p->title) svg_out(&g->w, "<title>%t</title>\n", p->title);
    /* Ids are spelled from the geometry they define, so two plots inlined into one HTML page
     * can only share an id when the definitions are identical too. */
    char clip[64];
    snprintf(clip, sizeof clip, "cr-clip-%d-%d-%d-%d", (int)g->left, (int)g->top, (int)g->right,
             (int)g->bot);
    svg_out(&g->w, "<defs><clipPath id=\"%s\"><rect x=\"%f\" y=\"%f\" width=\"%f\" height=\"%f\"/>"
            "</clipPath>", clip, g->left, g->top, g->right - g->left, g->bot - g->top);
    if (has_c) svg_out(&g->w, "\n<linearGradient id=\"cr-viridis\" x1=\"0\" y1=\"1\" x2=\"0\" "
                       "y2=\"0\">");
    for (int i = 0; has_c && i <= 8; i++) {
        svg_cmap(b, i / 8.0);
        svg_out(&g->w, "<stop offset=\"%f%%\" stop-color=\"%s\"/>", i * 12.5, b);
    }
    svg_out(&g->w, "%s</defs>\n<rect width=\"%d\" height=\"%d\" fill=\"#fff\"/>\n",
            has_c ? "</linearGradient>" : "", g->W, g->H);
    if (p->title) {
        double size = fmax(12, fmin(18, 18 * (g->W - 16) / svg_textw(p->title, 19.8)));
        snprintf(b, sizeof b, "text-anchor=\"middle\" font-size=\"%d\" font-weight=\"bold\"",
                 (int)size);
        svg_tx(&g->w, g->W / 2.0, 30, 0, b, p->title);
    }
    if (p->note)
        svg_tx(&g->w, g->W / 2.0, p->title ? 50 : 18, 0, "text-anchor=\"middle\" font-size=\"12\" "
               "fill=\"#666\"", p->note);

    /* Grid, data clipped to the frame, highlights, then frame, ticks and labels on top. */
    svg_out(&g->w, "<g fill=\"none\" stroke=\"#e3e3e3\" shape-rendering=\"crispEdges\">\n");
    svg_axes(g, 0);
    svg_out(&g->w, "</g>\n<g clip-path=\"url(#%s)\">\n", clip);
    for (int i = 0; p->hlines && i < p->n_hlines; i++)
        if (svg_ok(&g->ay, p->hlines[i]))
            svg_out(&g->w, "<path fill=\"none\" stroke=\"#555\" stroke-width=\"1.3\" stroke-"
                    "dasharray=\"6 4\" d=\"M%f %fH%f\"/>\n", g->left, svg_map(&g->ay, p->hlines[i]),
                    g->right);
    for (int k = 0; k < g->ns; k++) svg_series(g, k);
    svg_out(&g->w, "</g>\n");
    for (int k = 0; k < g->ns; k++)
        for (int i = 0; s[k].highlight && s[k].x && s[k].y && i < s[k].n; i++)
            if (s[k].highlight[i]) svg_highlight(g, k, i, occ, &n_occ);
    svg_out(&g->w, "<g fill=\"none\" stroke=\"#444\" shape-rendering=\"crispEdges\">\n"
            "<rect x=\"%f\" y=\"%f\" width=\"%f\" height=\"%f\"/>\n", g->left, g->top,
            g->right - g->left, g->bot - g->top);
    svg_axes(g, 1);
    svg_out(&g->w, "</g>\n");
    svg_axes(g, 2);
    double cx = (g->left + g->right) / 2, cy = (g->top + g->bot) / 2;
    if (p->xlabel) svg_tx(&g->w, cx, g->bot + 45, 0, "text-anchor=\"middle\" font-size=\"15\"",
                          p->xlabel);
    if (p->ylabel) svg_tx(&g->w, 20, cy, 1, "text-anchor=\"middle\" font-size=\"15\"", p->ylabel);
    if (!shown) svg_tx(&g->w, cx, cy, 0, "text-anchor=\"middle\" font-size=\"16\" fill=\"#888\"",
                       "no data");
    if (skipped) {
        snprintf(b, sizeof b, "%ld point%s not shown (non-finite%s)", skipped,
                 skipped > 1 ? "s" : "",
                 g->ax.log || g->ay.log ? " or \xE2\x89\xA4 0 on a log axis" : "");
        svg_tx(&g->w, 8, g->H - 8, 0, "font-size=\"12\" fill=\"#777\"", b);
    }
    if (n_leg) svg_legend(g, leg);
    if (has_c) {   /* the colour bar spans the frame height, low values at the bottom */
        double bx = g->right + 16, flat = !(g->chi > g->clo);
        svg_out(&g->w, "<rect x=\"%f\" y=\"%f\" width=\"14\" height=\"%f\" fill=\"url(#cr-viridis)"
                "\" stroke=\"#444\" shape-rendering=\"crispEdges\"/>\n", bx, g->top,
                g->bot - g->top);
        for (int i = 0; i < (flat ? 1 : 3); i++) {
            double y = flat ? cy : g->bot - i * (g->bot - g->top) / 2;
            svg_out(&g->w, "<path stroke=\"#444\" d=\"M%f %fh4\"/>\n", bx + 14, y);
            svg_tx(&g->w, bx + 21, y + 4.5, 0, "", cl[i]);
        }
        if (p->clabel) svg_tx(&g->w, bx + 40 + cw, cy, 1, "text-anchor=\"middle\" font-size=\"15\"",
                              p->clabel);
    }
    svg_out(&g->w, "</svg>\n");
    if (fflush(f) != 0 || ferror(f)) g->w.err = 1;
    return g->w.err;
}

/* ============================================================================================
 * 9. Command-line program
 * ============================================================================================ */
#ifndef CONFREG_NO_MAIN

#define CR_DEFAULT_MODEL "data/gpt2-tiny-q8_0.gguf"
#define CR_DEFAULT_TEXT "data/tinystories-heldout.txt"

typedef struct cli_opt {
    const char *name;    /* "--ctx" */
    int takes_arg;
    const char **value;  /* set to the argument, or to "1" for flags */
    const char *help;
} cli_opt;

typedef struct cli_cmd {
    const char *name, *args, *summary;
    int (*run)(int argc, char **argv);
} cli_cmd;

static int cli_error(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
static int cli_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("confreg: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

static void cli_usage(const char *cmd, const char *args, const char *summary, const cli_opt *opts) {
    printf("usage: confreg %s %s\n\n%s\n", cmd, args, summary);
    if (opts && opts[0].name) printf("\noptions:\n");
    for (const cli_opt *o = opts; o && o->name; o++) printf("  %-22s %s\n", o->takes_arg ? o->name : o->name, o->help);
    printf("  %-22s %s\n", "--help", "show this help");
}

/* Returns 0 on success, 1 on error (printed), 2 when --help was asked for. */
static int cli_parse(int argc, char **argv, const cli_opt *opts, const char **pos, int max_pos, int *n_pos) {
    *n_pos = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) return 2;
        if (a[0] == '-' && a[1] && !(a[1] >= '0' && a[1] <= '9')) {
            const cli_opt *o = opts;
            for (; o && o->name; o++)
                if (!strcmp(o->name, a)) break;
            if (!o || !o->name) return cli_error("unknown option %s (see --help)", a), 1;
            if (o->takes_arg) {
                if (i + 1 >= argc) return cli_error("option %s needs a value", a), 1;
                *o->value = argv[++i];
            } else {
                *o->value = "1";
            }
            continue;
        }
        if (*n_pos >= max_pos) return cli_error("unexpected argument '%s' (see --help)", a), 1;
        pos[(*n_pos)++] = a;
    }
    return 0;
}

static int cli_int(const char *s, const char *what, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) return cli_error("%s must be an integer in [%ld, %ld], got '%s'", what, lo, hi, s), 0;
    *out = v;
    return 1;
}

static int cli_double(const char *s, const char *what, double lo, double hi, double *out) {
    char *end;
    double v = strtod(s, &end);
    if (*end || end == s || !(v >= lo && v <= hi)) return cli_error("%s must be a number in [%g, %g], got '%s'", what, lo, hi, s), 0;
    *out = v;
    return 1;
}

/* "5,17,3" -> ids; each must be a non-negative integer. */
static int cli_id_list(const char *s, int32_t **ids, size_t *n) {
    size_t cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    *ids = cr_malloc(cap, sizeof **ids);
    *n = 0;
    if (!*ids) return cli_error("out of memory"), 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX || (*end && *end != ',')) {
            free(*ids);
            *ids = NULL;
            return cli_error("bad id list '%s' (expected comma-separated non-negative integers)", s), 0;
        }
        (*ids)[(*n)++] = (int32_t)v;
        p = *end ? end + 1 : end;
    }
    if (!*n) { free(*ids); *ids = NULL; return cli_error("empty id list"), 0; }
    return 1;
}

static cr_model *cli_open_model(const char *path, const char *tok) {
    cr_model *m;
    cr_err err;
    if (cr_model_open(path, tok, &m, &err)) return cli_error("%s", err.msg), NULL;
    return m;
}

/* Reads a text file and tokenizes it (no BOS); names the file in every error. */
static int cli_tokenize_file(const cr_model *m, const char *path, int32_t **ids, size_t *n) {
    const cr_tokenizer *tok = cr_model_tokenizer(m);
    if (!tok) return cli_error("the model has no tokenizer (give one with --tokenizer)"), 0;
    char *text;
    size_t len;
    cr_err err;
    if (cr_read_file(path, &text, &len, &err)) return cli_error("%s", err.msg), 0;
    if (len == 0) { free(text); return cli_error("%s: empty text", path), 0; }
    size_t bad = cr_utf8_check((const unsigned char *)text, len);
    if (bad != len) { free(text); return cli_error("%s: invalid UTF-8 at byte %zu", path, bad), 0; }
    int rc = cr_tokenizer_encode(tok, text, len, 0, ids, n, &err);
    free(text);
    if (rc) return cli_error("%s: %s", path, err.msg), 0;
    if (*n == 0) { free(*ids); return cli_error("%s: the text has no tokens", path), 0; }
    return 1;
}

static const char *cli_dtype_summary(const cr_model *m, char *buf, size_t cap) {
    int counts[4];
    cr_model_dtype_counts(m, counts);
    buf[0] = 0;
    for (int d = 0; d < 4; d++)
        if (counts[d]) snprintf(buf + strlen(buf), cap - strlen(buf), "%s%s x%d", buf[0] ? ", " : "", cr_dtype_name(d), counts[d]);
    return buf;
}

/* ---- info ---- */
static int cmd_info(int argc, char **argv) {
    const char *tok = NULL, *json = NULL, *pos[1];
    int np;
    cli_opt opts[] = {{"--tokenizer", 1, &tok, "tokenizer file or directory"}, {"--json", 0, &json, "JSON output"}, {0}};
    int pr = cli_parse(argc, argv, opts, pos, 1, &np);
    if (pr == 2) return cli_usage("info", "MODEL", "Architecture, dimensions, dtypes and memory of a model.", opts), 0;
    if (pr) return 2;
    cr_model *m = cli_open_model(np ? pos[0] : CR_DEFAULT_MODEL, tok);
    if (!m) return 1;
    const cr_config *c = cr_model_config(m);
    char dt[128];
    cli_dtype_summary(m, dt, sizeof dt);
    const cr_tokenizer *tk = cr_model_tokenizer(m);
    double mib = (double)cr_model_weight_bytes(m) / (1024.0 * 1024.0);
    if (json) {
        printf("{\"path\": \"%s\", \"format\": \"%s\", \"arch\": \"%s\", \"n_layers\": %d, \"d_model\": %d, \"n_heads\": %d, "
               "\"n_kv_heads\": %d, \"head_dim\": %d, \"d_mlp\": %d, \"n_vocab\": %d, \"n_ctx\": %d, \"norm\": \"%s\", "
               "\"norm_eps\": %g, \"rotary_dims\": %d, \"rope_theta\": %g, \"tied_embeddings\": %s, \"bos\": %d, \"eos\": %d, "
               "\"weights_mib\": %.2f, \"dtypes\": \"%s\", \"tokenizer_vocab\": %d}\n",
               np ? pos[0] : CR_DEFAULT_MODEL, c->source_format, cr_arch_name(c->arch), c->n_layers, c->d_model, c->n_heads,
               c->n_kv_heads, c->head_dim, c->d_mlp, c->n_vocab, c->n_ctx, c->rms_norm ? "rmsnorm" : "layernorm",
               (double)c->norm_eps, c->rotary_dims, (double)c->rope_theta, c->tied_embeddings ? "true" : "false", c->bos_id,
               c->eos_id, mib, dt, tk ? cr_tokenizer_n_vocab(tk) : 0);
    } else {
        printf("%-16s %s\n", "path", np ? pos[0] : CR_DEFAULT_MODEL);
        printf("%-16s %s\n", "format", c->source_format);
        printf("%-16s %s\n", "architecture", cr_arch_name(c->arch));
        printf("%-16s %d layers, d_model %d, d_mlp %d\n", "dimensions", c->n_layers, c->d_model, c->d_mlp);
        printf("%-16s %d query heads, %d key/value heads, head_dim %d\n", "attention", c->n_heads, c->n_kv_heads, c->head_dim);
        printf("%-16s %d (unembedding width), context %d\n", "vocabulary", c->n_vocab, c->n_ctx);
        printf("%-16s %s, eps %g\n", "norm", c->rms_norm ? "RMSNorm" : "LayerNorm", (double)c->norm_eps);
        if (c->rotary_dims)
            printf("%-16s RoPE on %d of %d dims, theta %g, %s\n", "positions", c->rotary_dims, c->head_dim, (double)c->rope_theta,
                   c->rope_interleaved ? "adjacent pairs" : "rotate-half");
        else
            printf("%-16s learned absolute embeddings\n", "positions");
        printf("%-16s %s%s\n", "mlp", c->gated_mlp ? "gated, " : "", c->act == 0 ? "GELU" : c->act == 1 ? "GELU (tanh)" : "SiLU");
        printf("%-16s %s\n", "block", c->parallel_block ? "parallel attention + MLP" : "sequential");
        printf("%-16s %s\n", "embeddings", c->tied_embeddings ? "tied" : "untied");
        printf("%-16s %s\n", "weight dtypes", dt);
        printf("%-16s %.2f MiB mapped\n", "weights", mib);
        printf("%-16s BOS %d, EOS %d\n", "special ids", c->bos_id, c->eos_id);
        if (tk) printf("%-16s %d tokens\n", "tokenizer", cr_tokenizer_n_vocab(tk));
        else printf("%-16s none\n", "tokenizer");
    }
    cr_model_close(m);
    return 0;
}

/* ---- tokenize ---- */
static void cli_json_string(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch == '\n') fputs("\\n", f);
        else if (ch == '\t') fputs("\\t", f);
        else if (ch == '\r') fputs("\\r", f);
        else if (ch < 0x20 || ch == 0x7f) fprintf(f, "\\u%04x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
}

static int cmd_tokenize(int argc, char **argv) {
    const char *tokp = NULL, *text = NULL, *json = NULL, *bos = NULL, *pos[2];
    int np;
    cli_opt opts[] = {{"--text", 1, &text, "text to tokenize (instead of a file)"}, {"--tokenizer", 1, &tokp, "tokenizer file or directory"},
                      {"--bos", 0, &bos, "prepend BOS"}, {"--json", 0, &json, "JSON output: ids and pieces"}, {0}};
    int pr = cli_parse(argc, argv, opts, pos, 2, &np);
    if (pr == 2) return cli_usage("tokenize", "MODEL [FILE] [--text STR]", "Token ids (and pieces) of a text.", opts), 0;
    if (pr) return 2;
    if (np < 1) return cli_error("tokenize needs a MODEL (see --help)"), 2;
    if (!text && np < 2) return cli_error("tokenize needs a FILE or --text"), 2;
    cr_model *m = cli_open_model(pos[0], tokp);
    if (!m) return 1;
    const cr_tokenizer *tk = cr_model_tokenizer(m);
    int rc = 0;
    int32_t *ids = NULL;
    size_t n = 0;
    cr_err err;
    if (!tk) rc = cli_error("%s: the model has no tokenizer (give one with --tokenizer)", pos[0]);
    else if (text) {
        if (cr_tokenizer_encode(tk, text, strlen(text), bos != NULL, &ids, &n, &err)) rc = cli_error("--text: %s", err.msg);
    } else if (!cli_tokenize_file(m, pos[1], &ids, &n)) {
        rc = 1;
    }
    if (!rc) {
        if (json) printf("{\"n\": %zu, \"ids\": [", n);
        for (size_t i = 0; i < n; i++) printf(json ? "%s%d" : "%s%d", i ? (json ? ", " : " ") : "", ids[i]);
        if (json) {
            printf("], \"pieces\": [");
            for (size_t i = 0; i < n; i++) {
                char buf[256];
                size_t len = 0;
                cr_tokenizer_token_bytes(tk, ids[i], buf, sizeof buf, &len);
                if (i) printf(", ");
                cli_json_string(stdout, buf, len < sizeof buf ? len : sizeof buf);
            }
            printf("]}");
        }
        printf("\n");
    }
    free(ids);
    cr_model_close(m);
    return rc;
}

/* Peak resident set size of this process (Linux reports KiB). */
static double cli_peak_rss_mib(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (double)ru.ru_maxrss / 1024.0;
}

/* ---- eval ---- */
static int cmd_eval(int argc, char **argv) {
    const char *tokp = NULL, *ctxs = NULL, *rowss = NULL, *thr = NULL, *json = NULL, *precise = NULL, *pos[64];
    int np;
    cli_opt opts[] = {{"--ctx", 1, &ctxs, "row length incl. BOS (default min(256, model context))"},
                      {"--rows", 1, &rowss, "evaluate at most N rows"},
                      {"--threads", 1, &thr, "threads (default: all cores)"},
                      {"--precise", 0, &precise, "keep activations in float for Q8_0 weights"},
                      {"--tokenizer", 1, &tokp, "tokenizer file or directory"},
                      {"--json", 0, &json, "JSON output"}, {0}};
    int pr = cli_parse(argc, argv, opts, pos, 64, &np);
    if (pr == 2) return cli_usage("eval", "[MODEL [TEXT...]]", "Mean loss, entropy and perplexity over rows of ctx-1 tokens with BOS prepended.\n"
                                  "Defaults: " CR_DEFAULT_MODEL " and " CR_DEFAULT_TEXT ".", opts), 0;
    if (pr) return 2;
    const char *model_path = np ? pos[0] : CR_DEFAULT_MODEL;
    long ctx = 0, max_rows = 0, threads = 0;
    if (rowss && !cli_int(rowss, "--rows", 1, INT32_MAX, &max_rows)) return 2;
    if (thr && !cli_int(thr, "--threads", 1, 1024, &threads)) return 2;
    cr_model *m = cli_open_model(model_path, tokp);
    if (!m) return 1;
    const cr_config *c = cr_model_config(m);
    ctx = c->n_ctx < 256 ? c->n_ctx : 256;
    if (ctxs && !cli_int(ctxs, "--ctx", 2, c->n_ctx, &ctx)) { cr_model_close(m); return 2; }
    int32_t *stream = NULL;
    size_t n = 0;
    int rc = 0;
    for (int i = 1; i < (np > 1 ? np : 2) && !rc; i++) {
        int32_t *ids = NULL;
        size_t k = 0;
        if (!cli_tokenize_file(m, np > 1 ? pos[i] : CR_DEFAULT_TEXT, &ids, &k)) { rc = 1; break; }
        int32_t *ns = realloc(stream, (n + k) * sizeof *ns);
        if (!ns) { free(ids); rc = cli_error("out of memory"); break; }
        stream = ns;
        memcpy(stream + n, ids, k * sizeof *ids);
        n += k;
        free(ids);
    }
    cr_rows rows = {0};
    cr_eval_result res;
    cr_err err;
    if (!rc && cr_rows_make(&rows, stream, n, (int)ctx, c->bos_id, (int)max_rows, &err)) rc = cli_error("%s", err.msg);
    if (!rc && cr_eval_rows(m, &rows, (int)threads, precise != NULL, &res, &err)) rc = cli_error("%s", err.msg);
    if (!rc) {
        char dt[128];
        cli_dtype_summary(m, dt, sizeof dt);
        if (json)
            printf("{\"model\": \"%s\", \"dtypes\": \"%s\", \"rows\": %d, \"ctx\": %ld, \"tokens\": %lld, \"mean_loss\": %.6f, "
                   "\"perplexity\": %.4f, \"mean_entropy\": %.6f, \"seconds\": %.3f, \"tokens_per_s\": %.1f, \"peak_rss_mib\": %.1f}\n",
                   model_path, dt, res.n_rows, ctx, (long long)res.n_predicted, res.mean_loss, res.perplexity, res.mean_entropy,
                   res.seconds, res.tokens_per_s, cli_peak_rss_mib());
        else {
            printf("%-14s %s (%s)\n", "model", model_path, dt);
            printf("%-14s %d rows of up to %ld tokens (BOS + %ld), %lld predictions\n", "data", res.n_rows, ctx, ctx - 1, (long long)res.n_predicted);
            printf("%-14s %.4f nats/token\n", "mean loss", res.mean_loss);
            printf("%-14s %.3f\n", "perplexity", res.perplexity);
            printf("%-14s %.4f nats\n", "mean entropy", res.mean_entropy);
            printf("%-14s %.1f tokens/s (%.2f s)\n", "speed", res.tokens_per_s, res.seconds);
            printf("%-14s %.1f MiB peak resident\n", "memory", cli_peak_rss_mib());
        }
    }
    cr_rows_free(&rows);
    free(stream);
    cr_model_close(m);
    return rc;
}

/* ---- generate ---- */

static int32_t cr_sample(const float *z, int V, double temp, int top_k, uint64_t *rng, float *work) {
    int32_t best = 0;
    for (int i = 1; i < V; i++) if (z[i] > z[best]) best = i;
    if (temp <= 0) return best;
    /* Top-k by a threshold: the k-th largest logit (k small, so partial selection is enough). */
    double thresh = -INFINITY;
    if (top_k > 0 && top_k < V) {
        memcpy(work, z, (size_t)V * sizeof *work);
        for (int k = 0; k < top_k; k++) {
            int arg = k;
            for (int i = k + 1; i < V; i++) if (work[i] > work[arg]) arg = i;
            float t = work[k]; work[k] = work[arg]; work[arg] = t;
        }
        thresh = work[top_k - 1];
    }
    double sum = 0;
    for (int i = 0; i < V; i++) if (z[i] >= thresh) sum += exp(((double)z[i] - z[best]) / temp);
    double u = (double)(cr_rng_next(rng) >> 11) * (1.0 / 9007199254740992.0) * sum, acc = 0;
    for (int i = 0; i < V; i++) {
        if (z[i] < thresh) continue;
        acc += exp(((double)z[i] - z[best]) / temp);
        if (acc >= u) return i;
    }
    return best;
}

static int cmd_generate(int argc, char **argv) {
    const char *tokp = NULL, *prompt = NULL, *idss = NULL, *ns = NULL, *temps = NULL, *topks = NULL, *seeds = NULL, *thr = NULL;
    const char *nobos = NULL, *json = NULL, *pos[1];
    int np;
    cli_opt opts[] = {{"--prompt", 1, &prompt, "prompt text"}, {"--ids", 1, &idss, "prompt as token ids (5,17,...)"},
                      {"-n", 1, &ns, "tokens to generate (default 32)"}, {"--temp", 1, &temps, "temperature (default 0: greedy)"},
                      {"--top-k", 1, &topks, "sample from the k most likely (default 40)"}, {"--seed", 1, &seeds, "random seed (default 1)"},
                      {"--no-bos", 0, &nobos, "do not prepend BOS to a text prompt"}, {"--threads", 1, &thr, "threads"},
                      {"--tokenizer", 1, &tokp, "tokenizer file or directory"}, {"--json", 0, &json, "JSON output with ids"}, {0}};
    int pr = cli_parse(argc, argv, opts, pos, 1, &np);
    if (pr == 2) return cli_usage("generate", "[MODEL] [--prompt TEXT | --ids LIST]", "Continue a prompt, greedily or by seeded sampling.", opts), 0;
    if (pr) return 2;
    long n_gen = 32, top_k = 40, seed = 1, threads = 0;
    double temp = 0;
    if ((ns && !cli_int(ns, "-n", 0, CR_MAX_CTX, &n_gen)) || (topks && !cli_int(topks, "--top-k", 0, CR_MAX_VOCAB, &top_k)) ||
        (seeds && !cli_int(seeds, "--seed", 0, LONG_MAX, &seed)) || (temps && !cli_double(temps, "--temp", 0, 100, &temp)) ||
        (thr && !cli_int(thr, "--threads", 1, 1024, &threads)))
        return 2;
    cr_model *m = cli_open_model(np ? pos[0] : CR_DEFAULT_MODEL, tokp);
    if (!m) return 1;
    const cr_config *c = cr_model_config(m);
    const cr_tokenizer *tk = cr_model_tokenizer(m);
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = 0;
    cr_err err;
    if (idss) {
        if (!cli_id_list(idss, &ids, &n)) rc = 1;
    } else if (!tk) {
        rc = cli_error("the model has no tokenizer: give --ids or --tokenizer");
    } else {
        const char *p = prompt ? prompt : "";
        if (cr_utf8_check((const unsigned char *)p, strlen(p)) != strlen(p)) rc = cli_error("--prompt: invalid UTF-8");
        else if (cr_tokenizer_encode(tk, p, strlen(p), 0, &ids, &n, &err)) rc = cli_error("--prompt: %s", err.msg);
        else if (!nobos && c->bos_id >= 0) {
            int32_t *nb = realloc(ids, (n + 1) * sizeof *nb);
            if (!nb) rc = cli_error("out of memory");
            else ids = nb, memmove(ids + 1, ids, n * sizeof *ids), ids[0] = c->bos_id, n++;
        }
        if (!rc && n == 0) rc = cli_error("empty prompt and the model has no BOS token");
    }
    if (!rc && (long)n + n_gen > c->n_ctx) rc = cli_error("prompt (%zu tokens) + %ld new tokens exceeds the context of %d", n, n_gen, c->n_ctx);
    cr_session *s = NULL;
    float *logits = NULL, *work = NULL;
    int32_t *out = NULL;
    if (!rc && cr_session_open(m, (int)(n + (size_t)n_gen > 0 ? n + (size_t)n_gen : 1), (int)threads, &s, &err)) rc = cli_error("%s", err.msg);
    if (!rc) {
        logits = cr_malloc(n, (size_t)c->n_vocab * sizeof *logits);
        work = cr_malloc((size_t)c->n_vocab, sizeof *work);
        out = cr_malloc((size_t)n_gen + 1, sizeof *out);
        if (!logits || !work || !out) rc = cli_error("out of memory");
    }
    uint64_t rng = (uint64_t)seed;
    long produced = 0;
    if (!rc && n_gen > 0) {
        cr_capture cap = {0};
        cap.logits = logits;
        if (cr_forward(s, ids, (int)n, 0, &cap, &err)) rc = cli_error("%s", err.msg);
        const float *last = logits + (n - 1) * (size_t)c->n_vocab;
        for (long i = 0; !rc && i < n_gen; i++) {
            int32_t next = cr_sample(last, c->n_vocab, temp, (int)top_k, &rng, work);
            out[produced++] = next;
            if (i + 1 == n_gen) break;
            if (cr_forward(s, &next, 1, (int)n + (int)i, &cap, &err)) rc = cli_error("%s", err.msg);
            last = logits;
        }
    }
    if (!rc) {
        char *text = NULL;
        size_t tl = 0;
        if (tk && cr_tokenizer_decode(tk, out, (size_t)produced, &text, &tl, &err)) text = NULL;
        if (json) {
            printf("{\"prompt_ids\": [");
            for (size_t i = 0; i < n; i++) printf("%s%d", i ? ", " : "", ids[i]);
            printf("], \"ids\": [");
            for (long i = 0; i < produced; i++) printf("%s%d", i ? ", " : "", out[i]);
            printf("], \"text\": ");
            if (text) cli_json_string(stdout, text, tl);
            else printf("null");
            printf("}\n");
        } else if (text) {
            if (prompt) fputs(prompt, stdout);
            fwrite(text, 1, tl, stdout);
            printf("\n");
        } else {
            for (long i = 0; i < produced; i++) printf("%s%d", i ? " " : "", out[i]);
            printf("\n");
        }
        free(text);
    }
    free(ids), free(logits), free(work), free(out);
    cr_session_close(s);
    cr_model_close(m);
    return rc;
}

/* ---- convert ---- */
static int cmd_convert(int argc, char **argv) {
    const char *tokp = NULL, *outp = NULL, *dts = NULL, *tied = NULL, *unip = NULL, *pos[1];
    int np;
    cli_opt opts[] = {{"-o", 1, &outp, "output .gguf path (required)"}, {"--dtype", 1, &dts, "f32, f16 or q8_0 (default q8_0)"},
                      {"--unigram", 1, &unip, "embed these token counts (confreg.unigram_counts)"},
                      {"--tied", 0, &tied, "store a tied GPT-2 unembedding once (smaller; llama.cpp wants it twice)"},
                      {"--tokenizer", 1, &tokp, "tokenizer to embed (default: the model's own)"}, {0}};
    int pr = cli_parse(argc, argv, opts, pos, 1, &np);
    if (pr == 2) return cli_usage("convert", "MODEL -o OUT.gguf [--dtype q8_0]", "Write any loadable model as GGUF v3 (llama.cpp-compatible), tokenizer included.\n"
                                  "Matrices whose rows are not a multiple of 32 stay F16 under q8_0.", opts), 0;
    if (pr) return 2;
    if (!np || !outp) return cli_error("convert needs MODEL and -o OUT.gguf"), 2;
    int dtype = !dts || !strcmp(dts, "q8_0") || !strcmp(dts, "Q8_0") ? CR_Q8_0 : !strcmp(dts, "f16") || !strcmp(dts, "F16") ? CR_F16
              : !strcmp(dts, "f32") || !strcmp(dts, "F32") ? CR_F32 : -1;
    if (dtype < 0) return cli_error("--dtype must be f32, f16 or q8_0, got '%s'", dts), 2;
    cr_model *m = cli_open_model(pos[0], tokp);
    if (!m) return 1;
    cr_err err;
    int rc = 0;
    cr_unigram *ug = NULL;
    if (unip && cr_unigram_open(unip, m->cfg.n_vocab, &ug, &err)) { cr_model_close(m); return cli_error("%s", err.msg); }
    double t0 = cr_now();
    if (cr_model_write_gguf(m, outp, dtype, tied ? CR_GGUF_TIED : 0, ug, &err)) rc = cli_error("%s", err.msg);
    else {
        struct stat st;
        stat(outp, &st);
        fprintf(stderr, "wrote %s (%s, %.2f MiB) in %.2f s\n", outp, cr_dtype_name(dtype), (double)st.st_size / 1048576.0, cr_now() - t0);
    }
    cr_unigram_close(ug);
    cr_model_close(m);
    return rc;
}

/* ---- dump ---- */
static int cmd_dump(int argc, char **argv) {
    const char *tokp = NULL, *outd = NULL, *idss = NULL, *text = NULL, *layers = NULL, *bos = NULL, *precise = NULL, *pos[1];
    int np;
    cli_opt opts[] = {{"-o", 1, &outd, "output directory (created if missing)"}, {"--ids", 1, &idss, "token ids (5,17,...)"},
                      {"--text", 1, &text, "text to tokenize"}, {"--bos", 0, &bos, "prepend BOS to --text"},
                      {"--layers", 1, &layers, "also dump these layers' MLP activations (0,3,...)"},
                      {"--precise", 0, &precise, "float activations for Q8_0 weights"},
                      {"--tokenizer", 1, &tokp, "tokenizer file or directory"}, {0}};
    int pr = cli_parse(argc, argv, opts, pos, 1, &np);
    if (pr == 2) return cli_usage("dump", "MODEL (--ids LIST | --text STR) -o DIR", "Write logits.npy [n,V], resid_final.npy [n,d], ln_scale.npy [n] and\n"
                                  "mlp_post.<layer>.npy [n,d_mlp] (final layer, and --layers) as float32 .npy files.", opts), 0;
    if (pr) return 2;
    if (!np || !outd || (!idss && !text)) return cli_error("dump needs MODEL, --ids or --text, and -o DIR"), 2;
    cr_model *m = cli_open_model(pos[0], tokp);
    if (!m) return 1;
    const cr_config *c = cr_model_config(m);
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = 0;
    cr_err err;
    if (idss) {
        if (!cli_id_list(idss, &ids, &n)) rc = 1;
    } else if (!cr_model_tokenizer(m)) {
        rc = cli_error("the model has no tokenizer: give --ids or --tokenizer");
    } else if (cr_tokenizer_encode(cr_model_tokenizer(m), text, strlen(text), bos != NULL, &ids, &n, &err)) {
        rc = cli_error("--text: %s", err.msg);
    }
    if (!rc && n == 0) rc = cli_error("nothing to run: no tokens");
    if (!rc && n > (size_t)c->n_ctx) rc = cli_error("%zu tokens exceed the model's context of %d", n, c->n_ctx);
    unsigned char *want = cr_calloc((size_t)c->n_layers, 1);
    float **mlp = cr_calloc((size_t)c->n_layers, sizeof *mlp);
    if (!want || !mlp) rc = cli_error("out of memory");
    if (!rc) {
        want[c->n_layers - 1] = 1;
        for (const char *p = layers; p && *p && !rc;) {
            char *end;
            long l = strtol(p, &end, 10);
            if (end == p || l < 0 || l >= c->n_layers || (*end && *end != ',')) rc = cli_error("--layers: bad layer list '%s' (0..%d)", layers, c->n_layers - 1);
            else want[l] = 1, p = *end ? end + 1 : end;
        }
    }
    if (!rc && mkdir(outd, 0777) != 0 && errno != EEXIST) rc = cli_error("%s: cannot create directory: %s", outd, strerror(errno));
    cr_session *s = NULL;
    float *logits = NULL, *resid = NULL, *scale = NULL;
    if (!rc && cr_session_open(m, (int)n, 0, &s, &err)) rc = cli_error("%s", err.msg);
    if (!rc) {
        cr_session_set_precise(s, precise != NULL);
        logits = cr_malloc(n, (size_t)c->n_vocab * 4), resid = cr_malloc(n, (size_t)c->d_model * 4), scale = cr_malloc(n, 4);
        for (int l = 0; l < c->n_layers; l++) if (want[l] && !(mlp[l] = cr_malloc(n, (size_t)c->d_mlp * 4))) rc = 1;
        if (rc || !logits || !resid || !scale) rc = cli_error("out of memory");
    }
    if (!rc) {
        cr_capture cap = {0};
        cap.logits = logits, cap.resid_final = resid, cap.norm_scale = scale, cap.mlp_post = mlp;
        if (cr_forward(s, ids, (int)n, 0, &cap, &err)) rc = cli_error("%s", err.msg);
    }
    if (!rc) {
        char path[4096];
        int64_t sh[2];
        sh[0] = (int64_t)n;
        struct { const char *name; float *data; int64_t cols; } outs[] = {{"logits.npy", logits, c->n_vocab}, {"resid_final.npy", resid, c->d_model}, {"ln_scale.npy", scale, 0}};
        for (size_t i = 0; i < 3 && !rc; i++) {
            snprintf(path, sizeof path, "%s/%s", outd, outs[i].name);
            sh[1] = outs[i].cols;
            if (cr_write_npy(path, outs[i].data, outs[i].cols ? 2 : 1, sh, &err)) rc = cli_error("%s", err.msg);
        }
        for (int l = 0; l < c->n_layers && !rc; l++) {
            if (!want[l]) continue;
            snprintf(path, sizeof path, "%s/mlp_post.%d.npy", outd, l);
            sh[1] = c->d_mlp;
            if (cr_write_npy(path, mlp[l], 2, sh, &err)) rc = cli_error("%s", err.msg);
        }
        if (!rc) fprintf(stderr, "wrote %zu positions to %s\n", n, outd);
    }
    for (int l = 0; mlp && l < c->n_layers; l++) free(mlp[l]);
    free(mlp), free(want), free(ids), free(logits), free(resid), free(scale);
    cr_session_close(s);
    cr_model_close(m);
    return rc;
}

/* ---- neuron tables (neurons, ablate, freq) ---- */

/* Column names are an interface (README): keep them stable. */
enum { COL_NEURON, COL_NORM, COL_LOGIT_VAR, COL_RHO, COL_FREQ_COS, COL_MEAN_ACT, COL_TE, COL_DE, COL_LN_FRAC, COL_DLOSS_TE,
       COL_DLOSS_DE, COL_DH_TE, COL_DH_DE, COL_ABS_DKL, COL_DE_FREQ, COL_FREQ_FRAC, N_COLS };
static const char *const cli_col_names[N_COLS] = {"neuron", "norm", "logit_var", "rho", "freq_cos", "mean_act", "te", "de", "ln_frac",
                                                   "dloss_te", "dloss_de", "dH_te", "dH_de", "abs_dkl", "de_freq", "freq_frac"};

/* Value of a column, or NAN when its input was not given. */
static double cli_col_value(const cr_neuron_row *r, int col) {
    switch (col) {
    case COL_NORM: return r->has_weights ? r->norm : NAN;
    case COL_LOGIT_VAR: return r->has_weights ? r->logit_var : NAN;
    case COL_RHO: return r->has_weights ? r->rho : NAN;
    case COL_FREQ_COS: return r->has_freq_cos ? r->freq_cos : NAN;
    case COL_MEAN_ACT: return r->has_effects ? r->mean_act : NAN;
    case COL_TE: return r->has_effects ? r->te : NAN;
    case COL_DE: return r->has_effects ? r->de : NAN;
    case COL_LN_FRAC: return r->has_effects ? r->ln_frac : NAN;
    case COL_DLOSS_TE: return r->has_effects ? r->dloss_te : NAN;
    case COL_DLOSS_DE: return r->has_effects ? r->dloss_de : NAN;
    case COL_DH_TE: return r->has_effects ? r->dH_te : NAN;
    case COL_DH_DE: return r->has_effects ? r->dH_de : NAN;
    case COL_ABS_DKL: return r->has_freq_effects ? r->abs_dkl : NAN;
    case COL_DE_FREQ: return r->has_freq_mediation ? r->de_freq : NAN;
    case COL_FREQ_FRAC: return r->has_freq_mediation ? r->freq_frac : NAN;
    default: return NAN;
    }
}

static int cli_col_index(const char *name) {
    for (int c = 0; c < N_COLS; c++) if (!strcmp(name, cli_col_names[c])) return c;
    return -1;
}

/* Sorting: by a column, descending (|value| for signed columns, so the strongest come first);
 * NaN last; ties by neuron index so the order is deterministic. */
typedef struct cli_sort_ctx { const cr_neuron_row *rows; int col, ascending; } cli_sort_ctx;
static int cli_cmp_rows(const void *a, const void *b, void *ctxp) {
    const cli_sort_ctx *ctx = ctxp;
    const cr_neuron_row *x = &ctx->rows[*(const int *)a], *y = &ctx->rows[*(const int *)b];
    double vx = cli_col_value(x, ctx->col), vy = cli_col_value(y, ctx->col);
    int signed_col = ctx->col == COL_DLOSS_TE || ctx->col == COL_DLOSS_DE || ctx->col == COL_DH_TE || ctx->col == COL_DH_DE || ctx->col == COL_FREQ_COS || ctx->col == COL_MEAN_ACT;
    if (signed_col) vx = fabs(vx), vy = fabs(vy);
    if (isnan(vx) != isnan(vy)) return isnan(vx) ? 1 : -1;
    if (!isnan(vx) && vx != vy) return (ctx->ascending ? vx > vy : vx < vy) ? 1 : -1;
    return x->index - y->index;
}

/* A small merge sort (qsort has no context argument in C11). */
static void cli_sort(int *idx, int n, const cli_sort_ctx *ctx) {
    if (n < 2) return;
    int h = n / 2;
    cli_sort(idx, h, ctx);
    cli_sort(idx + h, n - h, ctx);
    int *tmp = cr_malloc((size_t)n, sizeof *tmp), i = 0, j = h, k = 0;
    if (!tmp) return;
    while (i < h && j < n) tmp[k++] = cli_cmp_rows(&idx[j], &idx[i], (void *)ctx) < 0 ? idx[j++] : idx[i++];
    while (i < h) tmp[k++] = idx[i++];
    while (j < n) tmp[k++] = idx[j++];
    memcpy(idx, tmp, (size_t)n * sizeof *idx);
    free(tmp);
}

static void cli_print_neurons(FILE *out, const cr_neuron_row *rows, int n, const int *cols, int n_cols, int sort_col, int ascending,
                              int limit, int format /* 0 table 1 csv 2 json */, const char *meta_json) {
    int *idx = cr_malloc((size_t)(n > 0 ? n : 1), sizeof *idx);
    if (!idx) return;
    for (int i = 0; i < n; i++) idx[i] = i;
    cli_sort_ctx ctx = {rows, sort_col, ascending};
    cli_sort(idx, n, &ctx);
    int shown = format == 0 && limit > 0 && limit < n ? limit : n;
    if (format == 2) fprintf(out, "{%s%s\"neurons\": [\n", meta_json ? meta_json : "", meta_json ? ", " : "");
    if (format == 1) {
        for (int c = 0; c < n_cols; c++) fprintf(out, "%s%s", c ? "," : "", cli_col_names[cols[c]]);
        fprintf(out, "\n");
    } else if (format == 0) {
        for (int c = 0; c < n_cols; c++) fprintf(out, c ? " %11s" : "%-9s", cli_col_names[cols[c]]);
        fprintf(out, "\n");
    }
    for (int k = 0; k < shown; k++) {
        const cr_neuron_row *r = &rows[idx[k]];
        if (format == 2) fprintf(out, "  {");
        for (int c = 0; c < n_cols; c++) {
            char name[32];
            snprintf(name, sizeof name, "%d.%d", r->layer, r->index);
            double v = cli_col_value(r, cols[c]);
            if (format == 2) {
                if (cols[c] == COL_NEURON) fprintf(out, "\"neuron\": \"%s\"", name);
                else if (isnan(v)) fprintf(out, ", \"%s\": null", cli_col_names[cols[c]]);
                else fprintf(out, ", \"%s\": %.9g", cli_col_names[cols[c]], v);
            } else if (format == 1) {
                if (cols[c] == COL_NEURON) fprintf(out, "%s", name);
                else if (isnan(v)) fprintf(out, ",");
                else fprintf(out, ",%.9g", v);
            } else {
                if (cols[c] == COL_NEURON) fprintf(out, "%-9s", name);
                else if (isnan(v)) fprintf(out, " %11s", "");
                else fprintf(out, fabs(v) >= 1e5 || (v != 0 && fabs(v) < 1e-3) ? " %11.3e" : " %11.5f", v);
            }
        }
        fprintf(out, format == 2 ? (k + 1 < shown ? "},\n" : "}\n") : "\n");
    }
    if (format == 2) fprintf(out, "]}\n");
    if (format == 0 && shown < n) fprintf(out, "(%d more; --limit 0 shows all, --csv/--json give all)\n", n - shown);
    free(idx);
}

/* "11.584,11.2378" -> indices of the given layer's neurons. */
static int cli_neuron_list(const char *s, int layer, int d_mlp, int **out, int *n) {
    int cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    *out = cr_malloc((size_t)cap, sizeof **out);
    *n = 0;
    if (!*out) return cli_error("out of memory"), 0;
    for (const char *p = s; *p;) {
        char *end;
        long l = strtol(p, &end, 10), i;
        if (end == p || *end != '.') return cli_error("bad neuron '%s': neurons are named LAYER.INDEX, e.g. %d.584", p, layer), 0;
        const char *q = end + 1;
        i = strtol(q, &end, 10);
        if (end == q || (*end && *end != ',')) return cli_error("bad neuron list '%s' (expected LAYER.INDEX,...)", s), 0;
        if (l != layer) return cli_error("neuron %ld.%ld: only layer %d (the final layer) can be ablated", l, i, layer), 0;
        if (i < 0 || i >= d_mlp) return cli_error("neuron %ld.%ld is out of range: layer %d has neurons 0..%d", l, i, layer, d_mlp - 1), 0;
        (*out)[(*n)++] = (int)i;
        p = *end ? end + 1 : end;
    }
    if (!*n) return cli_error("empty neuron list"), 0;
    return 1;
}

/* Rows of the paper's protocol from text files: one token stream, rows of ctx-1 tokens with
 * BOS, optionally shuffled (seeded Fisher-Yates), at most max_rows of them. */
static int cli_make_rows(const cr_model *m, const char *const *files, int n_files, long ctx, long max_rows, const char *shuffle, cr_rows *rows) {
    int32_t *stream = NULL;
    size_t n = 0;
    for (int i = 0; i < n_files; i++) {
        int32_t *ids = NULL;
        size_t k = 0;
        if (!cli_tokenize_file(m, files[i], &ids, &k)) { free(stream); return 0; }
        int32_t *ns = realloc(stream, (n + k) * sizeof *ns);
        if (!ns) { free(ids), free(stream); return cli_error("out of memory"), 0; }
        stream = ns;
        memcpy(stream + n, ids, k * sizeof *ids);
        n += k;
        free(ids);
    }
    cr_err err;
    int rc = cr_rows_make(rows, stream, n, (int)ctx, m->cfg.bos_id, 0, &err);
    free(stream);
    if (rc) return cli_error("%s", err.msg), 0;
    if (shuffle) {
        long seed;
        if (!cli_int(shuffle, "--shuffle", 0, LONG_MAX, &seed)) { cr_rows_free(rows); return 0; }
        uint64_t st = (uint64_t)seed;
        int32_t *tmp = cr_malloc((size_t)rows->ctx, sizeof *tmp);
        if (!tmp) { cr_rows_free(rows); return cli_error("out of memory"), 0; }
        for (int i = rows->n_rows - 1; i > 0; i--) {
            int j = (int)(cr_rng_next(&st) % (uint64_t)(i + 1));
            memcpy(tmp, rows->ids + (size_t)i * rows->ctx, (size_t)rows->ctx * 4);
            memcpy(rows->ids + (size_t)i * rows->ctx, rows->ids + (size_t)j * rows->ctx, (size_t)rows->ctx * 4);
            memcpy(rows->ids + (size_t)j * rows->ctx, tmp, (size_t)rows->ctx * 4);
            int l = rows->len[i]; rows->len[i] = rows->len[j]; rows->len[j] = l;
        }
        free(tmp);
    }
    if (max_rows > 0 && rows->n_rows > max_rows) rows->n_rows = (int)max_rows;
    return 1;
}

/* Mean activations file: "CRMEAN01", u32 layer, u32 d_mlp, u64 tokens, u32 description length,
 * the description (which rows the means came from), f64 means[d_mlp]. */
static int cli_mean_save(const char *path, int layer, int f, int64_t tokens, const char *desc, const double *mean) {
    cr_outfile o;
    cr_err err;
    if (cr_outfile_open(&o, path, &err)) return cli_error("%s", err.msg), 0;
    cr_gw w = {o.f, 0, 0};
    cr_gw_bytes(&w, "CRMEAN01", 8);
    cr_gw_u32(&w, (uint32_t)layer), cr_gw_u32(&w, (uint32_t)f), cr_gw_u64(&w, (uint64_t)tokens);
    cr_gw_u32(&w, (uint32_t)strlen(desc)), cr_gw_bytes(&w, desc, strlen(desc));
    for (int i = 0; i < f; i++) { uint64_t b; memcpy(&b, &mean[i], 8); cr_gw_u64(&w, b); }
    if (cr_outfile_close(&o, !w.failed, &err)) return cli_error("%s", err.msg), 0;
    return 1;
}

static int cli_mean_load(const char *path, int layer, int f, double *mean, char *desc, size_t desc_cap) {
    cr_map m;
    cr_err err;
    if (cr_map_open(&m, path, &err)) return cli_error("%s", err.msg), 0;
    const unsigned char *p = m.data;
    int ok = m.size >= 28 && !memcmp(p, "CRMEAN01", 8);
    uint32_t dl = ok ? cr_rd32(p + 24) : 0;
    if (!ok || dl > 4096 || m.size != 28 + (size_t)dl + 8ull * (uint64_t)cr_rd32(p + 12)) {
        cr_map_close(&m);
        return cli_error("%s: not a confreg mean-activation file (bad magic, truncated or wrong size)", path), 0;
    }
    if ((int)cr_rd32(p + 8) != layer || (int)cr_rd32(p + 12) != f) {
        unsigned fl = cr_rd32(p + 8), ff = cr_rd32(p + 12);
        cr_map_close(&m);
        return cli_error("%s: holds means for layer %u with %u neurons, but this scan needs layer %d with %d", path, fl, ff, layer, f), 0;
    }
    snprintf(desc, desc_cap, "%.*s (%llu tokens, loaded from %s)", (int)dl, (const char *)p + 28, (unsigned long long)cr_rd64(p + 16), path);
    for (int i = 0; i < f; i++) { uint64_t b = cr_rd64(p + 28 + dl + 8ull * (uint64_t)i); memcpy(&mean[i], &b, 8); }
    cr_map_close(&m);
    return 1;
}

/* Unigram counts: from --unigram FILE, else from the model's GGUF metadata, else none. */
static int cli_load_unigram(const cr_model *m, const char *path, cr_unigram **out) {
    *out = NULL;
    cr_err err;
    if (!path) {
        /* Counts carried in the model file are used when none are given. */
        const cr_unigram *mu = cr_model_unigram(m);
        if (!mu) return 1;
        if (cr_unigram_open_empty(mu->n_vocab, out, &err)) return cli_error("%s", err.msg), 0;
        memcpy((*out)->counts, mu->counts, (size_t)mu->n_vocab * sizeof *mu->counts);
        (*out)->total = mu->total;
        return 1;
    }
    if (cr_unigram_open(path, m->cfg.n_vocab, out, &err)) return cli_error("%s", err.msg), 0;
    return 1;
}

static int cli_format(const char *csv, const char *json) { return json ? 2 : csv ? 1 : 0; }

/* ---- neurons ---- */
static int cmd_neurons(int argc, char **argv) {
    const char *tokp = NULL, *layers = NULL, *ks = NULL, *unip = NULL, *svp = NULL, *sorts = NULL, *limits = NULL, *csv = NULL, *json = NULL, *thr = NULL, *pos[1];
    int np;
    cli_opt opts[] = {{"--layer", 1, &layers, "layer (default: the final layer)"}, {"--k", 1, &ks, "null-space dimensions (default 12 for d=768, else ceil(0.01 d))"},
                      {"--unigram", 1, &unip, "counts file (adds freq_cos)"}, {"--svals", 1, &svp, "write W_U's singular values to FILE ('-' prints them)"},
                      {"--sort", 1, &sorts, "column to rank by (default rho)"}, {"--limit", 1, &limits, "rows in the table (default 20, 0 = all)"},
                      {"--threads", 1, &thr, "threads"}, {"--tokenizer", 1, &tokp, "tokenizer file or directory"},
                      {"--csv", 0, &csv, "CSV output (all rows)"}, {"--json", 0, &json, "JSON output (all rows)"}, {0}};
    int pr = cli_parse(argc, argv, opts, pos, 1, &np);
    if (pr == 2) return cli_usage("neurons", "[MODEL]", "Weight metrics of a layer's MLP neurons, after TransformerLens-style weight processing:\n"
                                  "output norm, LogitVar, rho (fraction in W_U's effective null space) and freq_cos.", opts), 0;
    if (pr) return 2;
    cr_model *m = cli_open_model(np ? pos[0] : CR_DEFAULT_MODEL, tokp);
    if (!m) return 1;
    const cr_config *c = cr_model_config(m);
    long layer = c->n_layers - 1, k = cr_default_k(c->d_model), limit = 20, threads = 0;
    int sort_col = COL_RHO, rc = 0;
    if ((layers && !cli_int(layers, "--layer", 0, c->n_layers - 1, &layer)) || (ks && !cli_int(ks, "--k", 1, c->d_model, &k)) ||
        (limits && !cli_int(limits, "--limit", 0, INT32_MAX, &limit)) || (thr && !cli_int(thr, "--threads", 1, 1024, &threads)))
        rc = 2;
    if (!rc && sorts && (sort_col = cli_col_index(sorts)) < 0) rc = cli_error("--sort: unknown column '%s'", sorts) + 1;
    cr_unigram *ug = NULL;
    cr_freqdir fd = {0};
    cr_err err;
    if (!rc && !cli_load_unigram(m, unip, &ug)) rc = 1;
    if (!rc && ug && cr_freqdir_make(&fd, ug, &err)) rc = cli_error("%s", err.msg);
    cr_unembed u = {0};
    cr_neuron_row *rows = cr_calloc((size_t)c->d_mlp, sizeof *rows);
    double *sv = NULL;
    if (!rc && !rows) rc = cli_error("out of memory");
    if (!rc && cr_unembed_make(m, &u, &err)) rc = cli_error("%s", err.msg);
    if (!rc && cr_weight_metrics(m, (int)layer, (int)k, &u, ug ? &fd : NULL, rows, &sv, (int)threads, &err)) rc = cli_error("%s", err.msg);
    if (!rc) {
        int cols[] = {COL_NEURON, COL_NORM, COL_LOGIT_VAR, COL_RHO, COL_FREQ_COS};
        char meta[512];
        snprintf(meta, sizeof meta, "\"model\": \"%s\", \"layer\": %ld, \"k\": %ld, \"rho_random\": %.6f, \"unigram\": %s%s%s",
                 np ? pos[0] : CR_DEFAULT_MODEL, layer, k, sqrt((double)k / c->d_model), unip ? "\"" : "", unip ? unip : "null", unip ? "\"" : "");
        if (!json && !csv) printf("# layer %ld of %s: %d neurons; k = %ld null-space directions (a random direction has rho ~ %.3f)\n", layer,
                                  np ? pos[0] : CR_DEFAULT_MODEL, c->d_mlp, k, sqrt((double)k / c->d_model));
        cli_print_neurons(stdout, rows, c->d_mlp, cols, ug ? 5 : 4, sort_col, 0, (int)limit, cli_format(csv, json), meta);
        if (svp) {
            FILE *f = strcmp(svp, "-") ? fopen(svp, "w") : stdout;
            if (!f) rc = cli_error("%s: cannot write: %s", svp, strerror(errno));
            else {
                fprintf(f, "# singular values of the processed W_U, descending\n");
                for (int i = c->d_model - 1; i >= 0; i--) fprintf(f, "%d %.9g\n", c->d_model - 1 - i, sv[i]);
                if (f != stdout) fclose(f);
            }
        }
    }
    free(sv), free(rows);
    cr_unembed_free(&u);
    cr_freqdir_free(&fd);
    cr_unigram_close(ug);
    cr_model_close(m);
    return rc;
}

/* ---- unigram ---- */
static int cmd_unigram(int argc, char **argv) {
    const char *tokp = NULL, *outp = NULL, *pos[64];
    int np;
    cli_opt opts[] = {{"-o", 1, &outp, "output counts file (required)"}, {"--tokenizer", 1, &tokp, "tokenizer file or directory"}, {0}};
    int pr = cli_parse(argc, argv, opts, pos, 64, &np);
    if (pr == 2) return cli_usage("unigram", "MODEL CORPUS... -o COUNTS", "Count tokens over text files with the model's tokenizer. The counts file gives\n"
                                  "P_freq(t) = (c_t + 1) / sum(c_u + 1) for ablate/freq/neurons (--unigram).", opts), 0;
    if (pr) return 2;
    if (np < 2 || !outp) return cli_error("unigram needs MODEL, at least one CORPUS file and -o COUNTS"), 2;
    cr_model *m = cli_open_model(pos[0], tokp);
    if (!m) return 1;
    const cr_tokenizer *tk = cr_model_tokenizer(m);
    cr_unigram *u = NULL;
    cr_err err;
    int rc = 0;
    if (!tk) rc = cli_error("%s: the model has no tokenizer (give one with --tokenizer)", pos[0]);
    if (!rc && cr_unigram_open_empty(m->cfg.n_vocab, &u, &err)) rc = cli_error("%s", err.msg);
    for (int i = 1; i < np && !rc; i++) {
        char *text;
        size_t len;
        if (cr_read_file(pos[i], &text, &len, &err)) { rc = cli_error("%s", err.msg); break; }
        if (len == 0) rc = cli_error("%s: empty text", pos[i]);
        else if (cr_utf8_check((const unsigned char *)text, len) != len) rc = cli_error("%s: invalid UTF-8 at byte %zu", pos[i], cr_utf8_check((const unsigned char *)text, len));
        else if (cr_unigram_add_text(u, tk, text, len, &err)) rc = cli_error("%s: %s", pos[i], err.msg);
        free(text);
    }
    if (!rc && cr_unigram_save(u, outp, &err)) rc = cli_error("%s", err.msg);
    if (!rc) {
        int distinct = 0;
        for (int32_t t = 0; t < u->n_vocab; t++) distinct += u->counts[t] > 0;
        printf("%llu tokens, %d distinct of %d, written to %s\nmost frequent:", (unsigned long long)u->total, distinct, u->n_vocab, outp);
        /* top 10 by count, ties by id */
        int32_t top[10];
        int nt = 0;
        for (int32_t t = 0; t < u->n_vocab; t++) {
            int p = nt < 10 ? nt++ : 10;
            while (p > 0 && u->counts[top[p - 1]] < u->counts[t]) { if (p < 10) top[p] = top[p - 1]; p--; }
            if (p < 10) top[p] = t;
        }
        for (int k = 0; k < nt; k++) {
            char buf[64];
            size_t l = 0;
            cr_tokenizer_token_bytes(tk, top[k], buf, sizeof buf - 1, &l);
            buf[l < sizeof buf ? l : sizeof buf - 1] = 0;
            printf(" ");
            cli_json_string(stdout, buf, strlen(buf));
            printf(" %.4f", (double)u->counts[top[k]] / (double)(u->total ? u->total : 1));
        }
        printf("\n");
    }
    cr_unigram_close(u);
    cr_model_close(m);
    return rc;
}

/* ---- ablate and freq ---- */

/* ---- long runs: signals, checkpoints, shards ---------------------------------------------------
 * SIGINT and SIGTERM ask a running scan to stop at its next safe point, after saving its state
 * when --checkpoint is given; a second signal ends the program at once.  The flag belongs to
 * the program: the library only ever sees a hook that it calls at safe points. */
static volatile sig_atomic_t cli_stop_requested;

static void cli_on_signal(int sig) {
    if (cli_stop_requested) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    cli_stop_requested = 1;
}

static void cli_catch_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = cli_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

#define CLI_EXIT_INTERRUPTED 130

/* Saves the state every `every` seconds and when a stop is requested. */
typedef struct cli_ckpt {
    const char *path;            /* NULL: no checkpoint */
    double every, last, t_start, base_seconds;
    int failed;
    cr_err err;
} cli_ckpt;

static int cli_scan_hook(void *user, const cr_scan *st) {
    cli_ckpt *ck = user;
    const int stop = cli_stop_requested != 0;
    const double now = cr_now();
    if (ck->path && (stop || now - ck->last >= ck->every)) {
        cr_scan snap = *st;   /* shallow: only the running time differs */
        snap.seconds = ck->base_seconds + (now - ck->t_start);
        if (cr_scan_save(&snap, ck->path, &ck->err)) { ck->failed = 1; return 1; }
        ck->last = now;
    }
    return stop;
}

/* Content hash of a model: its configuration and every byte of its files. */
static uint64_t cli_model_hash(const cr_model *m) {
    const cr_config *c = &m->cfg;
    const double cf[] = {c->arch, c->n_layers, c->d_model, c->n_heads, c->n_kv_heads, c->head_dim, c->d_mlp, c->n_vocab, c->n_ctx, c->rms_norm, c->norm_eps,
                         c->gated_mlp, c->act, c->parallel_block, c->rotary_dims, c->rope_theta, c->rope_interleaved, c->tied_embeddings, c->bos_id, c->eos_id,
                         c->sliding_window};
    uint64_t h = cr_hash64(cf, sizeof cf, 0x636f6e66726567ull);
    for (int i = 0; i < m->tt.n_maps; i++) h = cr_hash64(m->tt.maps[i].data, m->tt.maps[i].size, h);
    return h;
}

static uint64_t cli_rows_hash(const cr_rows *rows, uint64_t h) {
    const int64_t dims[2] = {rows->n_rows, rows->ctx};
    h = cr_hash64(dims, sizeof dims, h);
    h = cr_hash64(rows->len, (size_t)rows->n_rows * sizeof *rows->len, h);
    return cr_hash64(rows->ids, (size_t)rows->n_rows * (size_t)rows->ctx * sizeof *rows->ids, h);
}

/* What a scan's output needs besides its sums, carried in the state as "key=value" lines so
 * that `merge` prints exactly what the scan itself would have printed. */
typedef struct cli_scan_meta {
    char model[1024], mean_desc[1024];
    int freq_mode, has_unigram, no_weights, exact, ctx;
    long k;
    int no_fm;                   /* --no-freq-mediation */
} cli_scan_meta;

static char *cli_meta_text(const cli_scan_meta *mt) {
    size_t n = strlen(mt->model) + strlen(mt->mean_desc) + 256;
    char *s = malloc(n);
    if (!s) return NULL;
    snprintf(s, n, "model=%s\nmean=%s\nfreq=%d\nunigram=%d\nno_weights=%d\nexact=%d\nctx=%d\nk=%ld\nno_fm=%d\n", mt->model, mt->mean_desc, mt->freq_mode,
             mt->has_unigram, mt->no_weights, mt->exact, mt->ctx, mt->k, mt->no_fm);
    return s;
}

static void cli_meta_get(const char *text, const char *key, char *out, size_t cap) {
    out[0] = 0;
    size_t kl = strlen(key);
    for (const char *p = text; p && *p;) {
        const char *e = strchr(p, '\n');
        size_t ll = e ? (size_t)(e - p) : strlen(p);
        if (ll > kl && !strncmp(p, key, kl) && p[kl] == '=') {
            snprintf(out, cap, "%.*s", (int)(ll - kl - 1), p + kl + 1);
            return;
        }
        p = e ? e + 1 : NULL;
    }
}

static int cli_meta_parse(const char *text, cli_scan_meta *mt) {
    char v[32];
    memset(mt, 0, sizeof *mt);
    if (!text || !strstr(text, "model=")) return 0;
    cli_meta_get(text, "model", mt->model, sizeof mt->model);
    cli_meta_get(text, "mean", mt->mean_desc, sizeof mt->mean_desc);
    cli_meta_get(text, "freq", v, sizeof v), mt->freq_mode = atoi(v) != 0;
    cli_meta_get(text, "unigram", v, sizeof v), mt->has_unigram = atoi(v) != 0;
    cli_meta_get(text, "no_weights", v, sizeof v), mt->no_weights = atoi(v) != 0;
    cli_meta_get(text, "exact", v, sizeof v), mt->exact = atoi(v) != 0;
    cli_meta_get(text, "ctx", v, sizeof v), mt->ctx = atoi(v);
    cli_meta_get(text, "k", v, sizeof v), mt->k = atol(v);
    cli_meta_get(text, "no_fm", v, sizeof v), mt->no_fm = atoi(v) != 0;
    return 1;
}

/* The table, CSV or JSON of a scan: shared by ablate, freq and merge. */
static int cli_scan_print(FILE *out, const cr_scan *st, const cli_scan_meta *mt, int sort_col, int limit, int format) {
    cr_neuron_row *res = cr_calloc((size_t)st->n_neurons, sizeof *res);
    if (!res) return cli_error("out of memory");
    cr_scan_results(st, (mt->has_unigram ? CR_RES_FREQ : 0) | (mt->no_fm ? CR_RES_NO_FM : 0), res);
    for (int j = 0; j < st->n_neurons; j++) res[j].has_weights &= !mt->no_weights, res[j].has_freq_cos &= !mt->no_weights;
    int cols[N_COLS], nc = 0;
    for (int cc = 0; cc < N_COLS; cc++) {
        if (!mt->has_unigram && (cc == COL_FREQ_COS || cc == COL_ABS_DKL || cc == COL_DE_FREQ || cc == COL_FREQ_FRAC)) continue;
        if (mt->no_fm && (cc == COL_DE_FREQ || cc == COL_FREQ_FRAC)) continue;
        if (mt->no_weights && (cc == COL_NORM || cc == COL_LOGIT_VAR || cc == COL_RHO || cc == COL_FREQ_COS)) continue;
        cols[nc++] = cc;
    }
    const int64_t ntok = res[0].n_tokens;
    const int partial = st->r0 != 0 || st->r1 != st->n_rows;
    const double corr = cr_corr_value(&st->corr);
    char meta[4096], range[64] = "";
    if (partial) snprintf(range, sizeof range, ", \"row_range\": [%d, %d]", st->r0, st->r1);
    snprintf(meta, sizeof meta, "\"model\": \"%s\", \"layer\": %d, \"rows\": %d, \"ctx\": %d, \"tokens\": %lld, \"mean_source\": \"%s\", "
             "\"method\": \"%s\", \"seconds\": %.3f, \"k\": %ld%s", mt->model, st->layer, st->r1 - st->r0, mt->ctx, (long long)ntok, mt->mean_desc,
             mt->exact ? "exact-recompute" : "rank-1 identity", st->seconds, mt->k, range);
    if (mt->freq_mode) snprintf(meta + strlen(meta), sizeof meta - strlen(meta), ", \"entropy_kl_corr\": %.6f", corr);
    if (format == 0) {
        fprintf(out, "# %s of %d final-layer neurons of %s over %d rows x %d (%lld counted tokens), %s, %.2f s\n", mt->exact ? "exact recompute" : "mean ablation",
                st->n_neurons, mt->model, st->r1 - st->r0, mt->ctx, (long long)ntok, mt->exact ? "patched re-runs" : "rank-1 identity", st->seconds);
        if (partial) fprintf(out, "# rows %d-%d of %d only: a shard (confreg merge combines the shards)\n", st->r0, st->r1 - 1, st->n_rows);
        fprintf(out, "# mean activations: %s\n", mt->mean_desc);
        if (mt->freq_mode) fprintf(out, "# baseline: correlation of per-token entropy with KL(P_freq || p) = %.4f over %lld tokens\n", corr, (long long)st->corr.n);
    }
    cli_print_neurons(out, res, st->n_neurons, cols, nc, sort_col, 0, limit, format, meta);
    free(res);
    return 0;
}

/* Writes to FILE atomically, or to stdout. */
static int cli_scan_output(const char *path, const cr_scan *st, const cli_scan_meta *mt, int sort_col, int limit, int format) {
    if (!path) return cli_scan_print(stdout, st, mt, sort_col, limit, format);
    cr_outfile o;
    cr_err err;
    if (cr_outfile_open(&o, path, &err)) return cli_error("%s", err.msg);
    int rc = cli_scan_print(o.f, st, mt, sort_col, limit, format);
    if (cr_outfile_close(&o, rc == 0, &err) && !rc) rc = cli_error("%s", err.msg);
    return rc;
}

/* A scan resumed from its checkpoint when one exists (and belongs to the same scan), else a
 * fresh one.  Returns 0, or 1 after printing an error. */
static int cli_scan_prepare(const cr_model *m, const cr_rows *rows, const cr_ablate_spec *sp, int r0, int r1, uint64_t fp, const char *ckp, cr_scan *st, int *resumed) {
    cr_err err;
    *resumed = 0;
    if (ckp && access(ckp, F_OK) == 0) {
        if (cr_scan_load(st, ckp, &err)) return cli_error("%s", err.msg);
        if (st->fingerprint != fp)
            return cli_error("%s: checkpoint of a different scan (the model, text, options, unigram counts or means differ); remove it to start afresh", ckp);
        if (st->r0 != r0 || st->r1 != r1)
            return cli_error("%s: checkpoint covers rows %d-%d, but this run asks for rows %d-%d (--shard differs); remove it to start afresh", ckp, st->r0, st->r1 - 1, r0, r1 - 1);
        if (st->n_neurons != sp->n_neurons || memcmp(st->neurons, sp->neurons, (size_t)sp->n_neurons * sizeof *sp->neurons))
            return cli_error("%s: checkpoint is for another set of neurons (--neurons/--top differ); remove it to start afresh", ckp);
        *resumed = 1;
        return 0;
    }
    if (cr_scan_init(st, m, rows, sp, r0, r1, &err)) return cli_error("%s", err.msg);
    st->fingerprint = fp;
    return 0;
}

/* Runs a prepared scan to its end, saving it in ckp (if given) every `every` seconds, on
 * SIGINT/SIGTERM and at the end.  Returns 0, 1 after an error, or CLI_EXIT_INTERRUPTED. */
static int cli_scan_execute(const cr_model *m, const cr_rows *rows, const cr_ablate_spec *sp, cr_scan *st, const char *ckp, double every, const char *what) {
    if (st->phase == CR_SCAN_DONE) return 0;
    cr_err err;
    if (ckp && st->row > 0 && isatty(2)) fprintf(stderr, "confreg: %s: resuming from %s at row %d\n", what, ckp, st->row);
    cli_ckpt ck = {ckp, every, cr_now(), cr_now(), st->seconds, 0, {{0}}};
    cli_catch_signals();
    int e = cr_scan_run(m, rows, sp, st, cli_scan_hook, &ck, &err);
    if (e == CR_EINTR && ck.failed) return cli_error("%s", ck.err.msg);
    if (e == CR_EINTR) {
        if (ckp) cli_error("interrupted: state saved in %s (%s, at row %d of rows %d-%d); run the same command again to resume", ckp,
                           st->phase == CR_SCAN_MEAN ? "mean pass" : "effects", st->row, st->r0, st->r1 - 1);
        else cli_error("interrupted (no --checkpoint given, nothing saved)");
        return CLI_EXIT_INTERRUPTED;
    }
    if (e) return cli_error("%s", err.msg);
    if (ckp && cr_scan_save(st, ckp, &err)) return cli_error("%s", err.msg);
    return 0;
}

/* "--shard I/N": the I-th (1-based) of N contiguous, near-equal row ranges. */
static int cli_shard(const char *s, int n_rows, int *r0, int *r1) {
    long i, n;
    char a[32], b[32];
    const char *sl = strchr(s, '/');
    if (!sl || sl == s || (size_t)(sl - s) >= sizeof a || strlen(sl + 1) >= sizeof b || !sl[1])
        return cli_error("--shard must be I/N with 1 <= I <= N (e.g. 3/8), got '%s'", s), 0;
    snprintf(a, sizeof a, "%.*s", (int)(sl - s), s);
    snprintf(b, sizeof b, "%s", sl + 1);
    if (!cli_int(b, "--shard N", 1, 1 << 20, &n) || !cli_int(a, "--shard I", 1, n, &i)) return 0;
    if (n > n_rows) return cli_error("--shard %ld/%ld: only %d evaluation rows to split (at most %d shards)", i, n, n_rows, n_rows), 0;
    *r0 = (int)((int64_t)(i - 1) * n_rows / n), *r1 = (int)((int64_t)i * n_rows / n);
    return 1;
}

static int cli_ablate_common(int argc, char **argv, int freq_mode) {
    const char *tokp = NULL, *neus = NULL, *tops = NULL, *bys = NULL, *rowss = NULL, *ctxs = NULL, *shuffle = NULL, *thr = NULL, *unip = NULL;
    const char *meanf = NULL, *means = NULL, *exact = NULL, *ks = NULL, *nowt = NULL, *sorts = NULL, *limits = NULL, *csv = NULL, *json = NULL, *tbs = NULL;
    const char *ckp = NULL, *everys = NULL, *shards = NULL, *outp = NULL, *nofm = NULL;
    const char *pos[64];
    int np;
    cli_opt opts[] = {{"--neurons", 1, &neus, "neurons to ablate, LAYER.INDEX,... (default: the whole final layer)"},
                      {"--top", 1, &tops, "ablate only the N neurons ranked first by --by"},
                      {"--by", 1, &bys, "weight criterion for --top: rho (default), norm, logit_var (lowest first), freq_cos"},
                      {"--rows", 1, &rowss, "evaluation rows (default 16)"}, {"--ctx", 1, &ctxs, "row length incl. BOS (default min(256, context))"},
                      {"--shuffle", 1, &shuffle, "shuffle the rows with this seed (default: corpus order)"},
                      {"--unigram", 1, &unip, freq_mode ? "counts file (default: counts carried in the model file)" : "counts file: adds abs_dkl, de_freq, freq_frac (default: the model's own, if any)"},
                      {"--mean-from", 1, &meanf, "load mean activations (from --mean-save) instead of computing them"},
                      {"--mean-save", 1, &means, "save the mean activations used"},
                      {"--exact-recompute", 0, &exact, "brute force: patch the neuron and re-run the model (slow; the oracle)"},
                      {"--no-freq-mediation", 0, &nofm, "skip de_freq and freq_frac (the frequency-restored logits: a third of the scan's work); KL stays"},
                      {"--k", 1, &ks, "null-space dimensions for rho"}, {"--no-weights", 0, &nowt, "skip the weight metrics"},
                      {"--sort", 1, &sorts, freq_mode ? "column to rank by (default abs_dkl)" : "column to rank by (default te)"},
                      {"--limit", 1, &limits, "rows in the table (default 20, 0 = all)"}, {"--threads", 1, &thr, "threads"},
                      {"--token-block", 1, &tbs, "counted tokens per block of the fast path (default 512)"},
                      {"--checkpoint", 1, &ckp, "save the scan's state in FILE at intervals and on SIGINT/SIGTERM; resume from it if it exists"},
                      {"--checkpoint-every", 1, &everys, "seconds between checkpoint saves (default 60)"},
                      {"--shard", 1, &shards, "scan only part I of N of the rows (1-based, e.g. 3/8); merge the parts' checkpoints"},
                      {"-o", 1, &outp, "write the result to FILE (atomically) instead of stdout"},
                      {"--tokenizer", 1, &tokp, "tokenizer file or directory"}, {"--csv", 0, &csv, "CSV output"}, {"--json", 0, &json, "JSON output"}, {0}};
    const char *name = freq_mode ? "freq" : "ablate";
    int pr = cli_parse(argc, argv, opts, pos, 64, &np);
    if (pr == 2)
        return cli_usage(name, "[MODEL [TEXT...]]", freq_mode ? "Token-frequency neurons: mean-ablate final-layer neurons and rank them by how much they move the\n"
                                                                "output towards the unigram distribution (abs_dkl, freq_frac). Also reports the correlation\n"
                                                                "between per-token entropy and KL(P_freq || p)."
                                                              : "Mean ablation of final-layer neurons (SPEC §2-3): total effect, direct effect with the final\n"
                                                                "norm's scale frozen, LN-mediated fraction, entropy changes, and with --unigram the KL and\n"
                                                                "frequency-mediated effects. Fast path: the exact rank-1 identity; --exact-recompute re-runs.", opts), 0;
    if (pr) return 2;
    if (shards && !ckp) return cli_error("--shard needs --checkpoint FILE: the finished checkpoint is the part that merge combines"), 2;
    cli_catch_signals();   /* from here on, Ctrl-C stops at the scan's next safe point */
    cr_model *m = cli_open_model(np ? pos[0] : CR_DEFAULT_MODEL, tokp);
    if (!m) return 1;
    const cr_config *c = cr_model_config(m);
    const int layer = c->n_layers - 1, f = c->d_mlp;
    long top = 0, max_rows = 16, ctx = c->n_ctx < 256 ? c->n_ctx : 256, threads = 0, k = cr_default_k(c->d_model), limit = 20, tb = 512;
    double every = 60;
    int rc = 0, sort_col = freq_mode ? COL_ABS_DKL : COL_TE, by = COL_RHO;
    if ((tops && !cli_int(tops, "--top", 1, f, &top)) || (rowss && !cli_int(rowss, "--rows", 1, INT32_MAX, &max_rows)) ||
        (ctxs && !cli_int(ctxs, "--ctx", 5, c->n_ctx, &ctx)) || (thr && !cli_int(thr, "--threads", 1, 1024, &threads)) ||
        (ks && !cli_int(ks, "--k", 1, c->d_model, &k)) || (limits && !cli_int(limits, "--limit", 0, INT32_MAX, &limit)) ||
        (tbs && !cli_int(tbs, "--token-block", 1, 1 << 20, &tb)) || (everys && !cli_double(everys, "--checkpoint-every", 0, 1e9, &every)))
        rc = 2;
    if (!rc && sorts && (sort_col = cli_col_index(sorts)) < 0) rc = cli_error("--sort: unknown column '%s'", sorts) + 1;
    if (!rc && bys && ((by = cli_col_index(bys)) < 0 || (by != COL_RHO && by != COL_NORM && by != COL_LOGIT_VAR && by != COL_FREQ_COS)))
        rc = cli_error("--by must be rho, norm, logit_var or freq_cos, got '%s'", bys) + 1;
    if (!rc && neus && tops) rc = cli_error("give --neurons or --top, not both") + 1;
    cr_unigram *ug = NULL;
    cr_freqdir fd = {0};
    cr_err err;
    cr_rows rows = {0};
    cr_scan st = {0};
    int *sel = NULL, n_sel = 0, r0 = 0, r1 = 0;
    cr_neuron_row *all = cr_calloc((size_t)f, sizeof *all);
    double *mean = cr_malloc((size_t)f, sizeof *mean);
    cli_scan_meta mt = {{0}, {0}, freq_mode, 0, nowt != NULL, exact != NULL, 0, k, nofm != NULL};
    snprintf(mt.model, sizeof mt.model, "%s", np ? pos[0] : CR_DEFAULT_MODEL);
    for (char *q = mt.model; *q; q++)   /* one line per field in the state's description */
        if (*q == '\n' || *q == '\r') *q = '?';
    if (!rc && (!all || !mean)) rc = cli_error("out of memory");
    if (!rc && !cli_load_unigram(m, unip, &ug)) rc = 1;
    if (!rc && freq_mode && !ug) rc = cli_error("freq needs unigram counts: --unigram COUNTS (make them with: confreg unigram MODEL CORPUS -o COUNTS)");
    if (!rc && ug && cr_freqdir_make(&fd, ug, &err)) rc = cli_error("%s", err.msg);
    mt.has_unigram = ug != NULL;
    const char *default_text[] = {CR_DEFAULT_TEXT};
    if (!rc && !cli_make_rows(m, np > 1 ? pos + 1 : default_text, np > 1 ? np - 1 : 1, ctx, max_rows, shuffle, &rows)) rc = 1;
    mt.ctx = rows.ctx;
    r1 = rows.n_rows;
    if (!rc && shards && !cli_shard(shards, rows.n_rows, &r0, &r1)) rc = 2;
    /* Weight metrics for the whole layer (they also rank --top). */
    if (!rc && (!nowt || tops)) {
        cr_unembed u;
        if (cr_unembed_make(m, &u, &err)) rc = cli_error("%s", err.msg);
        else {
            if (cr_weight_metrics(m, layer, (int)k, &u, ug ? &fd : NULL, all, NULL, (int)threads, &err)) rc = cli_error("%s", err.msg);
            cr_unembed_free(&u);
        }
    }
    if (!rc) {
        sel = cr_malloc((size_t)f, sizeof *sel);
        if (!sel) rc = cli_error("out of memory");
        else if (neus) {
            free(sel);
            sel = NULL;
            if (!cli_neuron_list(neus, layer, f, &sel, &n_sel)) rc = 1;
            for (int a = 0; !rc && a < n_sel; a++)
                for (int b = 0; b < a; b++)
                    if (sel[a] == sel[b]) { rc = cli_error("--neurons: %d.%d is listed twice", layer, sel[a]); break; }
        } else {
            for (int i = 0; i < f; i++) sel[i] = i, all[i].layer = layer, all[i].index = i;
            n_sel = f;
            if (top) {
                cli_sort_ctx sc = {all, by, by == COL_LOGIT_VAR};
                cli_sort(sel, f, &sc);
                n_sel = (int)top;
            }
        }
    }
    if (!rc && meanf && !cli_mean_load(meanf, layer, f, mean, mt.mean_desc, sizeof mt.mean_desc)) rc = 1;
    /* What a checkpoint or a part must agree on: model, rows, options, unigram and means. */
    uint64_t fp = 0;
    if (!rc) {
        const int64_t opt[] = {freq_mode, layer, k, nowt != NULL, exact != NULL, cr_model_tokenizer(m) ? cr_tokenizer_newline(cr_model_tokenizer(m)) : -1, ug != NULL, meanf != NULL,
                               nofm != NULL};
        fp = cr_hash64(opt, sizeof opt, cli_rows_hash(&rows, cli_model_hash(m)));
        if (ug) fp = cr_hash64(fd.p, (size_t)c->n_vocab * sizeof *fd.p, fp);
        if (meanf) fp = cr_hash64(mean, (size_t)f * sizeof *mean, fp);
    }
    cr_ablate_spec sp = {layer, sel, n_sel, meanf ? mean : NULL, ug ? &fd : NULL, cr_model_tokenizer(m) ? cr_tokenizer_newline(cr_model_tokenizer(m)) : -1,
                         exact != NULL, (int)threads, (int)tb, nofm != NULL};
    int resumed = 0;
    if (!rc) rc = cli_scan_prepare(m, &rows, &sp, r0, r1, fp, ckp, &st, &resumed);
    if (!rc && !resumed) {
        if (!nowt && !(st.wt = cr_calloc((size_t)n_sel, sizeof *st.wt))) rc = cli_error("out of memory");
        for (int j = 0; !rc && st.wt && j < n_sel; j++) st.wt[j] = all[sel[j]];
    }
    if (!rc && !meanf)
        snprintf(mt.mean_desc, sizeof mt.mean_desc, "mean over all %lld tokens of the %d evaluation rows (%s%s)", (long long)cr_rows_tokens(&rows), rows.n_rows,
                 shuffle ? "shuffled, seed " : "corpus order", shuffle ? shuffle : "");
    for (char *q = mt.mean_desc; *q; q++)
        if (*q == '\n' || *q == '\r') *q = '?';
    if (!rc && !st.meta && !(st.meta = cli_meta_text(&mt))) rc = cli_error("out of memory");
    if (!rc) rc = cli_scan_execute(m, &rows, &sp, &st, ckp, every, name);
    if (!rc && means && !cli_mean_save(means, layer, f, st.mean_tokens, mt.mean_desc, st.mean)) rc = 1;
    if (!rc) rc = cli_scan_output(outp, &st, &mt, sort_col, (int)limit, cli_format(csv, json));
    cr_scan_free(&st);
    free(sel), free(all), free(mean);
    cr_rows_free(&rows);
    cr_freqdir_free(&fd);
    cr_unigram_close(ug);
    cr_model_close(m);
    return rc;
}

static int cmd_ablate(int argc, char **argv) { return cli_ablate_common(argc, argv, 0); }
static int cmd_freq(int argc, char **argv) { return cli_ablate_common(argc, argv, 1); }

/* ---- merge ---- */
static int cmd_merge(int argc, char **argv) {
    const char *outp = NULL, *statep = NULL, *sorts = NULL, *limits = NULL, *csv = NULL, *json = NULL, *pos[4096];
    int np;
    cli_opt opts[] = {{"-o", 1, &outp, "write the result to FILE (atomically) instead of stdout"},
                      {"--save-state", 1, &statep, "also write the merged state (itself mergeable)"},
                      {"--sort", 1, &sorts, "column to rank by (default: te, or abs_dkl for freq scans)"}, {"--limit", 1, &limits, "rows in the table (default 20, 0 = all)"},
                      {"--csv", 0, &csv, "CSV output"}, {"--json", 0, &json, "JSON output"}, {0}};
    int pr = cli_parse(argc, argv, opts, pos, 4096, &np);
    if (pr == 2) return cli_usage("merge", "PART... [-o FILE]", "Combine the finished checkpoints of `ablate`/`freq` shards (--shard I/N, or separate --neurons\n"
                                  "ranges) into the result of one run over everything; the sums are exact, so it is the same\n"
                                  "result bit for bit. Every neuron's parts must cover every row exactly once.", opts), 0;
    if (pr) return 2;
    if (np < 1) return cli_error("merge needs at least one PART (checkpoint files of finished shards)"), 2;
    long limit = 20;
    if (limits && !cli_int(limits, "--limit", 0, INT32_MAX, &limit)) return 2;
    cr_scan **parts = cr_calloc((size_t)np, sizeof *parts), merged = {0};
    if (!parts) return cli_error("out of memory");
    cr_err err;
    int rc = 0;
    for (int i = 0; i < np && !rc; i++) {
        if (!(parts[i] = calloc(1, sizeof **parts))) rc = cli_error("out of memory");
        else if (cr_scan_load(parts[i], pos[i], &err)) rc = cli_error("%s", err.msg);
    }
    if (!rc && cr_scan_merge(parts, pos, np, &merged, &err)) rc = cli_error("%s", err.msg);
    cli_scan_meta mt;
    if (!rc && !cli_meta_parse(merged.meta, &mt)) rc = cli_error("%s: the state carries no description of its scan", pos[0]);
    int sort_col = mt.freq_mode ? COL_ABS_DKL : COL_TE;
    if (!rc && sorts && (sort_col = cli_col_index(sorts)) < 0) rc = cli_error("--sort: unknown column '%s'", sorts) + 1;
    if (!rc && statep && cr_scan_save(&merged, statep, &err)) rc = cli_error("%s", err.msg);
    if (!rc) rc = cli_scan_output(outp, &merged, &mt, sort_col, (int)limit, cli_format(csv, json));
    for (int i = 0; i < np; i++)
        if (parts[i]) cr_scan_free(parts[i]), free(parts[i]);
    free(parts);
    cr_scan_free(&merged);
    return rc;
}

/* ---- synth ---- */
static int cmd_synth(int argc, char **argv) {
    const char *outp = NULL, *archs = NULL, *ls = NULL, *ds = NULL, *hs = NULL, *fs = NULL, *vs = NULL, *cs = NULL, *seeds = NULL, *dts = NULL;
    const char *preset = NULL, *tokp = NULL, *uout = NULL, *pos[1];
    int np;
    cli_opt opts[] = {{"-o", 1, &outp, "output .gguf (required)"}, {"--arch", 1, &archs, "gpt2 (default) or llama"},
                      {"--layers", 1, &ls, "layers (default 2)"}, {"--d", 1, &ds, "d_model (default 128)"}, {"--heads", 1, &hs, "heads (default 4)"},
                      {"--d-mlp", 1, &fs, "MLP neurons (default 4 d)"}, {"--vocab", 1, &vs, "vocabulary (default 257: bytes + <|endoftext|>)"},
                      {"--ctx", 1, &cs, "context (default 256)"}, {"--seed", 1, &seeds, "random seed (default 1)"},
                      {"--dtype", 1, &dts, "f32 (default), f16 or q8_0"}, {"--preset", 1, &preset, "gpt2-small: GPT-2 small's shapes (12 x 768, 3072 neurons, 50257 tokens)"},
                      {"--tokenizer", 1, &tokp, "use this tokenizer's vocabulary (e.g. GPT-2's)"},
                      {"--unigram-out", 1, &uout, "also write the planted unigram counts to FILE"}, {0}};
    int pr = cli_parse(argc, argv, opts, pos, 0, &np);
    if (pr == 2) return cli_usage("synth", "-o OUT.gguf [--arch gpt2|llama] [--preset gpt2-small]",
                                  "Write a random model with a planted entropy neuron (output in W_U's null space, large norm) and a\n"
                                  "planted token-frequency neuron (output along the log-unigram direction). The unigram counts ride\n"
                                  "along in the GGUF, so ablate and freq find them without --unigram.", opts), 0;
    if (pr) return 2;
    if (!outp) return cli_error("synth needs -o OUT.gguf"), 2;
    cr_synth_spec sp = {CR_ARCH_GPT2, 2, 128, 4, 0, 257, 256, 1, NULL, 0, 0};
    if (preset) {
        if (strcmp(preset, "gpt2-small")) return cli_error("--preset: unknown preset '%s' (gpt2-small)", preset), 2;
        sp.n_layers = 12, sp.d_model = 768, sp.n_heads = 12, sp.d_mlp = 3072, sp.n_vocab = 50257, sp.n_ctx = 1024;
    }
    long v;
    if (archs) {
        if (!strcmp(archs, "gpt2")) sp.arch = CR_ARCH_GPT2;
        else if (!strcmp(archs, "llama")) sp.arch = CR_ARCH_LLAMA;
        else return cli_error("--arch must be gpt2 or llama, got '%s'", archs), 2;
    }
    struct { const char *s, *name; int *dst; long lo, hi; } ints[] = {{ls, "--layers", &sp.n_layers, 1, 64}, {ds, "--d", &sp.d_model, 8, 8192},
        {hs, "--heads", &sp.n_heads, 1, 256}, {fs, "--d-mlp", &sp.d_mlp, 4, 65536}, {vs, "--vocab", &sp.n_vocab, 2, CR_MAX_VOCAB}, {cs, "--ctx", &sp.n_ctx, 8, 8192}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        if (!ints[i].s) continue;
        if (!cli_int(ints[i].s, ints[i].name, ints[i].lo, ints[i].hi, &v)) return 2;
        *ints[i].dst = (int)v;
    }
    if (seeds) {
        if (!cli_int(seeds, "--seed", 0, LONG_MAX, &v)) return 2;
        sp.seed = (uint64_t)v;
    }
    if (!sp.d_mlp) sp.d_mlp = 4 * sp.d_model;
    int dtype = !dts || !strcmp(dts, "f32") ? CR_F32 : !strcmp(dts, "f16") ? CR_F16 : !strcmp(dts, "q8_0") ? CR_Q8_0 : -1;
    if (dtype < 0) return cli_error("--dtype must be f32, f16 or q8_0, got '%s'", dts), 2;
    sp.entropy_neuron = 584 % sp.d_mlp, sp.freq_neuron = 2378 % sp.d_mlp;
    if (sp.freq_neuron == sp.entropy_neuron) sp.freq_neuron = (sp.freq_neuron + 1) % sp.d_mlp;
    cr_err err;
    cr_tokenizer *tok = NULL;
    if (tokp && cr_tokenizer_open_file(tokp, 0, &tok, &err)) return cli_error("%s", err.msg);
    sp.tok = tok;
    cr_model *m = NULL;
    int rc = 0;
    double t0 = cr_now();
    if (cr_synth(&sp, &m, &err)) rc = cli_error("%s", err.msg);
    if (!rc && cr_model_write_gguf(m, outp, dtype, 0, NULL, &err)) rc = cli_error("%s", err.msg);
    if (!rc && uout && cr_unigram_save(m->unigram, uout, &err)) rc = cli_error("%s", err.msg);
    if (!rc) {
        printf("wrote %s: %s, %d layers, d %d, %d heads, %d neurons, vocab %d, ctx %d, %s, seed %llu (%.2f s)\n", outp, cr_arch_name(sp.arch),
               sp.n_layers, sp.d_model, sp.n_heads, sp.d_mlp, m->cfg.n_vocab, sp.n_ctx, cr_dtype_name(dtype), (unsigned long long)sp.seed, cr_now() - t0);
        printf("planted entropy neuron:   %d.%d (output in a %d-dimensional null space of W_U)\n", sp.n_layers - 1, sp.entropy_neuron,
               cr_default_k(sp.d_model) - (sp.arch == CR_ARCH_GPT2 ? 1 : 0) < 1 ? 1 : cr_default_k(sp.d_model) - (sp.arch == CR_ARCH_GPT2 ? 1 : 0));
        printf("planted frequency neuron: %d.%d (output along the log-unigram direction)\n", sp.n_layers - 1, sp.freq_neuron);
    }
    cr_model_close(m);
    cr_tokenizer_close(tok);
    return rc;
}

/* ---- induction ---- */
static int cli_head_list(const char *s, int n_layers, int n_heads, int **out, int *n) {
    int cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    *out = cr_malloc((size_t)cap * 2, sizeof **out);
    *n = 0;
    if (!*out) return cli_error("out of memory"), 0;
    for (const char *p = s; *p;) {
        char *end;
        long l = strtol(p, &end, 10), h;
        if (end == p || *end != '.') return cli_error("bad head '%s': heads are named LAYER.HEAD, e.g. 5.1", p), 0;
        const char *q = end + 1;
        h = strtol(q, &end, 10);
        if (end == q || (*end && *end != ',')) return cli_error("bad head list '%s'", s), 0;
        if (l < 0 || l >= n_layers || h < 0 || h >= n_heads) return cli_error("head %ld.%ld out of range (%d layers x %d heads)", l, h, n_layers, n_heads), 0;
        (*out)[2 * *n] = (int)l, (*out)[2 * *n + 1] = (int)h, (*n)++;
        p = *end ? end + 1 : end;
    }
    return 1;
}

typedef struct cli_induction {
    cr_induction_result res;
    int *neurons, n_neurons, *heads, n_heads, N, n_seqs, random;
} cli_induction;

/* Shared by `induction` and `report`: builds sequences and runs the analysis. */
typedef struct cli_ind_ckpt {
    cli_ckpt ck;
    cr_ind_dims dims;
    uint64_t fp;
} cli_ind_ckpt;

static int cli_induction_hook(void *user, const cr_induction_result *res) {
    cli_ind_ckpt *ic = user;
    const int stop = cli_stop_requested != 0;
    const double now = cr_now();
    if (ic->ck.path && (stop || now - ic->ck.last >= ic->ck.every)) {
        if (cr_induction_save(res, &ic->dims, ic->fp, ic->ck.path, &ic->ck.err)) { ic->ck.failed = 1; return 1; }
        ic->ck.last = now;
    }
    return stop;
}

/* Shared by `induction` and `report`: builds sequences and runs the analysis, saving its state
 * in ckpt (if not NULL) every `every` seconds and on SIGINT/SIGTERM, and resuming from it.
 * Returns 1 on success, 0 on error (printed), -1 when interrupted. */
static int cli_run_induction(const cr_model *m, const char *const *files, int n_files, long N, long n_seqs, int random, long seed,
                             const char *neus, const char *heads, int n_threads, const char *ckpt, double every, cli_induction *ci) {
    const cr_config *c = cr_model_config(m);
    memset(ci, 0, sizeof *ci);
    ci->N = (int)N, ci->n_seqs = (int)n_seqs, ci->random = random;
    int32_t *seqs = cr_malloc((size_t)n_seqs * (size_t)N, 4), *rnd = cr_malloc((size_t)n_seqs * (size_t)N, 4);
    if (!seqs || !rnd) { free(seqs), free(rnd); return cli_error("out of memory"), 0; }
    uint64_t st = (uint64_t)seed;
    /* Random tokens avoid the special ids so the repeat is all text. */
    for (long i = 0; i < n_seqs * N; i++) {
        int32_t t;
        do t = (int32_t)(cr_rng_next(&st) % (uint64_t)m->tok_embd.rows); while (t == c->bos_id || t == c->eos_id);
        rnd[i] = t;
    }
    int ok = 1;
    if (random) memcpy(seqs, rnd, (size_t)n_seqs * (size_t)N * 4);
    else {
        cr_rows rows = {0};
        if (!cli_make_rows(m, files, n_files, N + 1, n_seqs, NULL, &rows)) ok = 0;
        else if (rows.n_rows < n_seqs || rows.len[rows.n_rows - 1] < N + 1) {
            ok = cli_error("the text gives only %d full rows of %ld tokens; need %ld (lower --seqs or -N)", rows.n_rows - (rows.len[rows.n_rows - 1] < N + 1), N, n_seqs);
        } else {
            for (long q = 0; q < n_seqs; q++) memcpy(seqs + q * N, rows.ids + (size_t)q * rows.ctx + 1, (size_t)N * 4);
        }
        cr_rows_free(&rows);
    }
    if (ok && neus) ok = cli_neuron_list(neus, c->n_layers - 1, c->d_mlp, &ci->neurons, &ci->n_neurons);
    else if (ok) {
        /* Default: the three final-layer neurons with the highest rho. */
        cr_unembed u;
        cr_err err;
        cr_neuron_row *all = cr_calloc((size_t)c->d_mlp, sizeof *all);
        ci->neurons = cr_malloc(3, sizeof *ci->neurons);
        if (!all || !ci->neurons || cr_unembed_make(m, &u, &err)) ok = cli_error("%s", all && ci->neurons ? err.msg : "out of memory");
        else {
            if (cr_weight_metrics(m, c->n_layers - 1, cr_default_k(c->d_model), &u, NULL, all, NULL, n_threads, &err)) ok = cli_error("%s", err.msg);
            cr_unembed_free(&u);
            int *idx = cr_malloc((size_t)c->d_mlp, sizeof *idx);
            if (ok && idx) {
                for (int i = 0; i < c->d_mlp; i++) idx[i] = i;
                cli_sort_ctx sc = {all, COL_RHO, 0};
                cli_sort(idx, c->d_mlp, &sc);
                ci->n_neurons = c->d_mlp < 3 ? c->d_mlp : 3;
                memcpy(ci->neurons, idx, (size_t)ci->n_neurons * sizeof *idx);
            }
            free(idx);
        }
        free(all);
    }
    if (ok && heads && !cli_head_list(heads, c->n_layers, c->n_heads, &ci->heads, &ci->n_heads)) ok = 0;
    if (ok) {
        cr_induction_spec sp = {(int)N, (int)n_seqs, seqs, rnd, (int)n_seqs, ci->neurons, ci->n_neurons, ci->heads, ci->n_heads, n_threads};
        cr_err err;
        cli_ind_ckpt ic = {{ckpt, every, cr_now(), cr_now(), 0, 0, {{0}}}, {(int)(1 + 2 * N), ci->n_neurons, c->n_layers * c->n_heads, ci->n_heads}, 0};
        /* The fingerprint: model, sequences, neurons and heads. */
        const int64_t dims[4] = {N, n_seqs, ci->n_neurons, ci->n_heads};
        ic.fp = cr_hash64(dims, sizeof dims, cli_model_hash(m));
        ic.fp = cr_hash64(seqs, (size_t)n_seqs * (size_t)N * 4, ic.fp);
        ic.fp = cr_hash64(rnd, (size_t)n_seqs * (size_t)N * 4, ic.fp);
        ic.fp = cr_hash64(ci->neurons, (size_t)ci->n_neurons * sizeof *ci->neurons, ic.fp);
        if (ci->n_heads) ic.fp = cr_hash64(ci->heads, (size_t)ci->n_heads * 2 * sizeof *ci->heads, ic.fp);
        if (ckpt && access(ckpt, F_OK) == 0 && cr_induction_load(&ci->res, &ic.dims, ic.fp, ckpt, &err)) ok = cli_error("%s", err.msg);
        if (ok && ci->res.pass != 5) {
            cli_catch_signals();
            int e = cr_induction(m, &sp, &ci->res, cli_induction_hook, &ic, &err);
            if (e == CR_EINTR && ic.ck.failed) ok = cli_error("%s", ic.ck.err.msg);
            else if (e == CR_EINTR && ckpt) ok = -1, cli_error("interrupted: state saved in %s; run the same command again to resume", ckpt);
            else if (e == CR_EINTR) ok = -1, cli_error("interrupted (no --checkpoint given, nothing saved)");
            else if (e) ok = cli_error("%s", err.msg) - 1;
            else if (ckpt && cr_induction_save(&ci->res, &ic.dims, ic.fp, ckpt, &err)) ok = cli_error("%s", err.msg) - 1;
        }
    }
    free(seqs), free(rnd);
    return ok;
}

static void cli_induction_free(cli_induction *ci) {
    cr_induction_result_free(&ci->res);
    free(ci->neurons), free(ci->heads);
}

/* Means of a per-position array over the first copy (1..N) and the second (N+1..2N). */
static void cli_copy_means(const double *v, int N, double *first, double *second) {
    double a = 0, b = 0;
    for (int t = 1; t <= N; t++) a += v[t];
    for (int t = N + 1; t <= 2 * N; t++) b += v[t];
    *first = a / N, *second = b / N;
}

static void cli_print_induction(FILE *out, const cr_model *m, const cli_induction *ci, int format) {
    const cr_config *c = cr_model_config(m);
    const cr_induction_result *r = &ci->res;
    const int N = ci->N, T = r->T, Lf = c->n_layers - 1;
    double h1, h2, l1, l2;
    cli_copy_means(r->entropy, N, &h1, &h2);
    /* loss at the last position is undefined; average the second copy over N-1 positions */
    l1 = 0, l2 = 0;
    for (int t = 1; t <= N; t++) l1 += r->loss[t];
    for (int t = N + 1; t < T - 1; t++) l2 += r->loss[t];
    l1 /= N, l2 /= (N - 1);
    if (format == 2) {
        fprintf(out, "{\"N\": %d, \"sequences\": %d, \"random\": %s, \"entropy_first\": %.6f, \"entropy_second\": %.6f, \"loss_first\": %.6f, \"loss_second\": %.6f,\n",
                N, ci->n_seqs, ci->random ? "true" : "false", h1, h2, l1, l2);
        fprintf(out, " \"neurons\": [");
        for (int j = 0; j < ci->n_neurons; j++) {
            double a1, a2, hr = 0, lr = 0;
            cli_copy_means(r->act + (size_t)j * T, N, &a1, &a2);
            for (int t = N + 1; t < T - 1; t++) hr += r->h_ratio[(size_t)j * T + t], lr += r->l_ratio[(size_t)j * T + t];
            fprintf(out, "%s{\"neuron\": \"%d.%d\", \"act_first\": %.6f, \"act_second\": %.6f, \"clip_value\": %.6f, \"rises\": %s, \"h_ratio_second\": %.6f, \"l_ratio_second\": %.6f}",
                    j ? ", " : "", Lf, ci->neurons[j], a1, a2, r->first_mean[j], r->rises[j] ? "true" : "false", hr / (N - 1), lr / (N - 1));
        }
        fprintf(out, "],\n \"heads\": [");
        for (int l = 0, k = 0; l < c->n_layers; l++)
            for (int h = 0; h < c->n_heads; h++, k++) fprintf(out, "%s{\"head\": \"%d.%d\", \"score\": %.6f}", k ? ", " : "", l, h, r->head_score[(size_t)l * c->n_heads + h]);
        fprintf(out, "],\n \"bos_ablation\": [");
        for (int b = 0; b < ci->n_heads; b++) {
            const double *x = r->bos + (size_t)b * 8;
            fprintf(out, "%s{\"head\": \"%d.%d\", \"act_clean\": %.6f, \"act_ablated\": %.6f, \"scale_clean\": %.6f, \"scale_ablated\": %.6f, \"entropy_clean\": %.6f, \"entropy_ablated\": %.6f, \"loss_clean\": %.6f, \"loss_ablated\": %.6f}",
                    b ? ", " : "", ci->heads[2 * b], ci->heads[2 * b + 1], x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]);
        }
        fprintf(out, "],\n \"positions\": [");
        for (int t = 0; t < T; t++) {
            fprintf(out, "%s{\"pos\": %d, \"entropy\": %.6f, \"loss\": %.6f", t ? ",\n  " : "", t, r->entropy[t], r->loss[t]);
            for (int j = 0; j < ci->n_neurons; j++)
                fprintf(out, ", \"act_%d.%d\": %.6f, \"h_ratio_%d.%d\": %.6f, \"l_ratio_%d.%d\": %.6f", Lf, ci->neurons[j], r->act[(size_t)j * T + t], Lf, ci->neurons[j],
                        r->h_ratio[(size_t)j * T + t], Lf, ci->neurons[j], r->l_ratio[(size_t)j * T + t]);
            fprintf(out, "}");
        }
        fprintf(out, "]}\n");
        return;
    }
    if (format == 1) {
        fprintf(out, "pos,copy,entropy,loss");
        for (int j = 0; j < ci->n_neurons; j++) fprintf(out, ",act_%d.%d,h_ratio_%d.%d,l_ratio_%d.%d", Lf, ci->neurons[j], Lf, ci->neurons[j], Lf, ci->neurons[j]);
        fprintf(out, "\n");
        for (int t = 0; t < T; t++) {
            fprintf(out, "%d,%d,%.6f,%.6f", t, t == 0 ? 0 : t <= N ? 1 : 2, r->entropy[t], r->loss[t]);
            for (int j = 0; j < ci->n_neurons; j++) fprintf(out, ",%.6f,%.6f,%.6f", r->act[(size_t)j * T + t], r->h_ratio[(size_t)j * T + t], r->l_ratio[(size_t)j * T + t]);
            fprintf(out, "\n");
        }
        return;
    }
    fprintf(out, "# induction: %d sequences of [BOS] + S + S, |S| = %d (%s)\n", ci->n_seqs, N, ci->random ? "random tokens" : "natural text");
    fprintf(out, "%-22s %10s %10s\n", "", "1st copy", "2nd copy");
    fprintf(out, "%-22s %10.4f %10.4f\n", "mean entropy (nats)", h1, h2);
    fprintf(out, "%-22s %10.4f %10.4f\n", "mean loss (nats)", l1, l2);
    for (int j = 0; j < ci->n_neurons; j++) {
        double a1, a2;
        cli_copy_means(r->act + (size_t)j * T, N, &a1, &a2);
        char name[48];
        snprintf(name, sizeof name, "activation %d.%d", Lf, ci->neurons[j]);
        fprintf(out, "%-22s %10.4f %10.4f\n", name, a1, a2);
    }
    fprintf(out, "\n# clip ablation towards the first-copy mean (second copy, mean over positions)\n%-9s %10s %6s %14s %14s %12s\n", "neuron", "clip", "rises", "H_after/H_bef",
            "L_after/L_bef", "entropy cut");
    for (int j = 0; j < ci->n_neurons; j++) {
        double hr = 0, lr = 0;
        for (int t = N + 1; t < T - 1; t++) hr += r->h_ratio[(size_t)j * T + t], lr += r->l_ratio[(size_t)j * T + t];
        hr /= (N - 1), lr /= (N - 1);
        char name[32];
        snprintf(name, sizeof name, "%d.%d", Lf, ci->neurons[j]);
        fprintf(out, "%-9s %10.4f %6s %14.4f %14.4f %11.1f%%\n", name, r->first_mean[j], r->rises[j] ? "yes" : "no", hr, lr, 100 * (1 - hr));
    }
    fprintf(out, "\n# induction heads (score: mean attention from the second copy to the token after the earlier occurrence)\n");
    /* All heads above 0.7, and at least the five best. */
    int nh = c->n_layers * c->n_heads;
    int *order = cr_malloc((size_t)nh, sizeof *order);
    for (int i = 0; order && i < nh; i++) {
        int p = i;
        while (p > 0 && r->head_score[order[p - 1]] < r->head_score[i]) order[p] = order[p - 1], p--;
        order[p] = i;
    }
    for (int i = 0; order && i < nh; i++) {
        double sc = r->head_score[order[i]];
        if (i >= 5 && sc <= 0.7) break;
        fprintf(out, "%d.%-6d %.4f%s\n", order[i] / c->n_heads, order[i] % c->n_heads, sc, sc > 0.7 ? "  induction head" : "");
    }
    free(order);
    if (ci->n_heads) {
        fprintf(out, "\n# BOS ablation at each second-copy position (all attention of the head on BOS); neuron %d.%d\n%-8s %21s %21s %21s %21s\n",
                Lf, ci->n_neurons ? ci->neurons[0] : 0, "head", "activation", "norm scale", "entropy", "loss");
        for (int b = 0; b < ci->n_heads; b++) {
            const double *x = r->bos + (size_t)b * 8;
            char name[32];
            snprintf(name, sizeof name, "%d.%d", ci->heads[2 * b], ci->heads[2 * b + 1]);
            fprintf(out, "%-8s %9.4f -> %8.4f %9.4f -> %8.4f %9.4f -> %8.4f %9.4f -> %8.4f\n", name, x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]);
        }
    }
}

static int cmd_induction(int argc, char **argv) {
    const char *tokp = NULL, *Ns = NULL, *seqss = NULL, *rnd = NULL, *seeds = NULL, *neus = NULL, *heads = NULL, *thr = NULL, *csv = NULL, *json = NULL, *pos[64];
    const char *ckp = NULL, *everys = NULL, *outp = NULL;
    int np;
    cli_opt opts[] = {{"-N", 1, &Ns, "length of S (default 99, or what the context allows)"}, {"--seqs", 1, &seqss, "sequences (default 16)"},
                      {"--random", 0, &rnd, "S of random tokens instead of natural text"}, {"--seed", 1, &seeds, "seed for random tokens (default 1)"},
                      {"--neurons", 1, &neus, "final-layer neurons to follow (default: the 3 with the highest rho)"},
                      {"--bos-ablate", 1, &heads, "heads to BOS-ablate, LAYER.HEAD,..."}, {"--threads", 1, &thr, "threads"},
                      {"--checkpoint", 1, &ckp, "save the state in FILE at intervals and on SIGINT/SIGTERM; resume from it if it exists"},
                      {"--checkpoint-every", 1, &everys, "seconds between checkpoint saves (default 60)"},
                      {"-o", 1, &outp, "write the result to FILE (atomically) instead of stdout"},
                      {"--tokenizer", 1, &tokp, "tokenizer file or directory"}, {"--csv", 0, &csv, "per-position CSV"}, {"--json", 0, &json, "JSON"}, {0}};
    int pr = cli_parse(argc, argv, opts, pos, 64, &np);
    if (pr == 2) return cli_usage("induction", "[MODEL [TEXT...]]", "The induction case study: entropy, loss and neuron activations on [BOS]+S+S, clip ablation,\n"
                                  "induction-head scores, and BOS ablation of chosen heads.", opts), 0;
    if (pr) return 2;
    cli_catch_signals();
    cr_model *m = cli_open_model(np ? pos[0] : CR_DEFAULT_MODEL, tokp);
    if (!m) return 1;
    const cr_config *c = cr_model_config(m);
    long N = (c->n_ctx - 1) / 2 < 99 ? (c->n_ctx - 1) / 2 : 99, n_seqs = 16, seed = 1, threads = 0;
    double every = 60;
    int rc = 0;
    if ((Ns && !cli_int(Ns, "-N", 2, (c->n_ctx - 1) / 2, &N)) || (seqss && !cli_int(seqss, "--seqs", 1, 100000, &n_seqs)) ||
        (seeds && !cli_int(seeds, "--seed", 0, LONG_MAX, &seed)) || (thr && !cli_int(thr, "--threads", 1, 1024, &threads)) ||
        (everys && !cli_double(everys, "--checkpoint-every", 0, 1e9, &every)))
        rc = 2;
    const char *default_text[] = {CR_DEFAULT_TEXT};
    cli_induction ci;
    memset(&ci, 0, sizeof ci);
    if (!rc) {
        int ir = cli_run_induction(m, np > 1 ? pos + 1 : default_text, np > 1 ? np - 1 : 1, N, n_seqs, rnd != NULL, seed, neus, heads, (int)threads, ckp, every, &ci);
        if (ir < 0) rc = CLI_EXIT_INTERRUPTED;
        else if (ir == 0) rc = 1;
    }
    if (!rc) {
        cr_outfile o;
        cr_err err;
        if (!outp) cli_print_induction(stdout, m, &ci, cli_format(csv, json));
        else if (cr_outfile_open(&o, outp, &err)) rc = cli_error("%s", err.msg);
        else {
            cli_print_induction(o.f, m, &ci, cli_format(csv, json));
            if (cr_outfile_close(&o, 1, &err)) rc = cli_error("%s", err.msg);
        }
    }
    cli_induction_free(&ci);
    cr_model_close(m);
    return rc;
}

/* ---- report ---- */

static FILE *cli_report_open(cr_outfile *o, const char *dir, const char *name, int *rc) {
    char path[4096];
    cr_err err;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (cr_outfile_open(o, path, &err)) { *rc = cli_error("%s", err.msg); return NULL; }
    return o->f;
}

static void cli_report_close(cr_outfile *o, int *rc) {
    cr_err err;
    if (o->f && cr_outfile_close(o, 1, &err) && !*rc) *rc = cli_error("%s", err.msg);
}

static void cli_html_escape(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '<') fputs("&lt;", f);
        else if (*s == '>') fputs("&gt;", f);
        else if (*s == '&') fputs("&amp;", f);
        else if (*s == '"') fputs("&quot;", f);
        else fputc(*s, f);
    }
}

/* Progress goes to stderr only when a person is watching it. */
static void cli_progress(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
static void cli_progress(const char *fmt, ...) {
    if (!isatty(2)) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

static int cmd_report(int argc, char **argv) {
    const char *tokp = NULL, *outd = NULL, *rowss = NULL, *ctxs = NULL, *unip = NULL, *thr = NULL, *Ns = NULL, *seqss = NULL, *ks = NULL, *heads = NULL, *pos[64];
    const char *ckp = NULL, *everys = NULL;
    int np;
    cli_opt opts[] = {{"-o", 1, &outd, "output directory (required; created if missing)"}, {"--rows", 1, &rowss, "evaluation rows for the ablation (default 16)"},
                      {"--ctx", 1, &ctxs, "row length incl. BOS"}, {"--unigram", 1, &unip, "counts file (default: the model's own, else counted from TEXT)"},
                      {"-N", 1, &Ns, "induction: length of S (default 99 or what fits)"}, {"--seqs", 1, &seqss, "induction sequences (default 8)"},
                      {"--bos-ablate", 1, &heads, "induction: heads to BOS-ablate (default: the top induction head)"},
                      {"--k", 1, &ks, "null-space dimensions for rho"}, {"--threads", 1, &thr, "threads"}, {"--tokenizer", 1, &tokp, "tokenizer"},
                      {"--checkpoint", 1, &ckp, "save the ablation scan's state in FILE and the induction's in FILE.induction; resume from them"},
                      {"--checkpoint-every", 1, &everys, "seconds between checkpoint saves (default 60)"}, {0}};
    int pr = cli_parse(argc, argv, opts, pos, 64, &np);
    if (pr == 2) return cli_usage("report", "[MODEL [TEXT...]] -o DIR", "Run every analysis and write CSV, JSON and SVG plots with an index.html that explains them.", opts), 0;
    if (pr) return 2;
    if (!outd) return cli_error("report needs -o DIR"), 2;
    cli_catch_signals();
    const char *model_path = np ? pos[0] : CR_DEFAULT_MODEL;
    const char *default_text[] = {CR_DEFAULT_TEXT};
    const char *const *files = np > 1 ? pos + 1 : default_text;
    int n_files = np > 1 ? np - 1 : 1;
    cr_model *m = cli_open_model(model_path, tokp);
    if (!m) return 1;
    const cr_config *c = cr_model_config(m);
    const int f = c->d_mlp, d = c->d_model, layer = c->n_layers - 1;
    long max_rows = 16, ctx = c->n_ctx < 256 ? c->n_ctx : 256, threads = 0, N = (c->n_ctx - 1) / 2 < 99 ? (c->n_ctx - 1) / 2 : 99, n_seqs = 8, k = cr_default_k(d);
    double every = 60;
    int rc = 0;
    if ((rowss && !cli_int(rowss, "--rows", 1, INT32_MAX, &max_rows)) || (ctxs && !cli_int(ctxs, "--ctx", 5, c->n_ctx, &ctx)) ||
        (thr && !cli_int(thr, "--threads", 1, 1024, &threads)) || (Ns && !cli_int(Ns, "-N", 2, (c->n_ctx - 1) / 2, &N)) ||
        (seqss && !cli_int(seqss, "--seqs", 1, 100000, &n_seqs)) || (ks && !cli_int(ks, "--k", 1, d, &k)) ||
        (everys && !cli_double(everys, "--checkpoint-every", 0, 1e9, &every)))
        rc = 2;
    char ind_ckp[4096] = "";
    if (ckp && snprintf(ind_ckp, sizeof ind_ckp, "%s.induction", ckp) >= (int)sizeof ind_ckp) rc = cli_error("--checkpoint: path too long") + 1;
    if (!rc && mkdir(outd, 0777) != 0 && errno != EEXIST) rc = cli_error("%s: cannot create directory: %s", outd, strerror(errno));
    cr_err err;
    cr_unigram *ug = NULL;
    cr_freqdir fd = {0};
    const char *ug_source = unip ? unip : "the model file";
    if (!rc && !cli_load_unigram(m, unip, &ug)) rc = 1;
    if (!rc && !ug && cr_model_tokenizer(m)) {
        /* No counts anywhere: count the evaluation text itself. */
        ug_source = "counted from the evaluation text";
        if (cr_unigram_open_empty(c->n_vocab, &ug, &err)) rc = cli_error("%s", err.msg);
        for (int i = 0; !rc && i < n_files; i++) {
            char *text;
            size_t len;
            if (cr_read_file(files[i], &text, &len, &err)) { rc = cli_error("%s", err.msg); break; }
            if (cr_unigram_add_text(ug, cr_model_tokenizer(m), text, len, &err)) rc = cli_error("%s: %s", files[i], err.msg);
            free(text);
        }
    }
    if (!rc && ug && cr_freqdir_make(&fd, ug, &err)) rc = cli_error("%s", err.msg);
    cr_rows rows = {0};
    if (!rc && !cli_make_rows(m, files, n_files, ctx, max_rows, NULL, &rows)) rc = 1;
    cr_neuron_row *res = cr_calloc((size_t)f, sizeof *res), *w = cr_calloc((size_t)f, sizeof *w);
    int *all = cr_malloc((size_t)f, sizeof *all);
    double *sv = NULL, t_weights = 0, t_ablate = 0, t_ind = 0, corr = 0;
    int64_t mean_tokens = 0;
    if (!rc && (!res || !w || !all)) rc = cli_error("out of memory");
    double t0 = cr_now();
    if (!rc) {
        cli_progress("report: weight metrics of %d neurons...\n", f);
        cr_unembed u;
        if (cr_unembed_make(m, &u, &err)) rc = cli_error("%s", err.msg);
        else {
            if (cr_weight_metrics(m, layer, (int)k, &u, ug ? &fd : NULL, w, &sv, (int)threads, &err)) rc = cli_error("%s", err.msg);
            cr_unembed_free(&u);
        }
        t_weights = cr_now() - t0;
    }
    if (!rc) {
        cli_progress("report: mean ablation of %d neurons over %d rows...\n", f, rows.n_rows);
        for (int i = 0; i < f; i++) all[i] = i;
        int32_t nl = cr_model_tokenizer(m) ? cr_tokenizer_newline(cr_model_tokenizer(m)) : -1;
        cr_ablate_spec sp = {layer, all, f, NULL, ug ? &fd : NULL, nl, 0, (int)threads, 512, 0};
        const int64_t opt[] = {2, layer, nl, ug != NULL};
        uint64_t fp = cr_hash64(opt, sizeof opt, cli_rows_hash(&rows, cli_model_hash(m)));
        if (ug) fp = cr_hash64(fd.p, (size_t)c->n_vocab * sizeof *fd.p, fp);
        cr_scan st = {0};
        int resumed;
        t0 = cr_now();
        rc = cli_scan_prepare(m, &rows, &sp, 0, rows.n_rows, fp, ckp, &st, &resumed);
        if (!rc) rc = cli_scan_execute(m, &rows, &sp, &st, ckp, every, "report");
        t_ablate = cr_now() - t0;
        if (!rc) {
            cr_scan_results(&st, ug != NULL, res);
            mean_tokens = st.mean_tokens, corr = cr_corr_value(&st.corr);
        }
        cr_scan_free(&st);
        for (int i = 0; !rc && i < f; i++) {
            res[i].norm = w[i].norm, res[i].logit_var = w[i].logit_var, res[i].rho = w[i].rho, res[i].freq_cos = w[i].freq_cos;
            res[i].has_weights = 1, res[i].has_freq_cos = w[i].has_freq_cos;
        }
    }
    cli_induction ci;
    int have_ind = 0;
    if (!rc && cr_model_tokenizer(m)) {
        cli_progress("report: induction (%ld sequences of 2 x %ld tokens)...\n", n_seqs, N);
        t0 = cr_now();
        /* Heads to BOS-ablate default to the strongest induction head, found in a first pass. */
        cli_induction probe;
        const char *hl = heads;
        char hbuf[64];
        if (!hl && cli_run_induction(m, files, n_files, N, 2, 1, 1, NULL, NULL, (int)threads, NULL, 0, &probe) > 0) {
            int best = 0;
            for (int i = 1; i < c->n_layers * c->n_heads; i++) if (probe.res.head_score[i] > probe.res.head_score[best]) best = i;
            snprintf(hbuf, sizeof hbuf, "%d.%d", best / c->n_heads, best % c->n_heads);
            hl = hbuf;
            cli_induction_free(&probe);
        }
        int ir = cli_run_induction(m, files, n_files, N, n_seqs, 0, 1, NULL, hl, (int)threads, ckp ? ind_ckp : NULL, every, &ci);
        if (ir > 0) have_ind = 1;
        else rc = ir < 0 ? CLI_EXIT_INTERRUPTED : 1;
        t_ind = cr_now() - t0;
    }
    /* Highlights: entropy-neuron candidates (large TE mostly through the norm) and frequency
     * candidates (largest |dKL|). */
    unsigned char *hi_e = cr_calloc((size_t)f, 1), *hi_f = cr_calloc((size_t)f, 1);
    char **names = cr_calloc((size_t)f, sizeof *names);
    int top_e[3] = {-1, -1, -1}, top_f[3] = {-1, -1, -1};
    if (!rc && (!hi_e || !hi_f || !names)) rc = cli_error("out of memory");
    for (int i = 0; !rc && i < f; i++) {
        names[i] = malloc(32);
        if (names[i]) snprintf(names[i], 32, "%d.%d", layer, i);
        double se = res[i].te * fmax(res[i].ln_frac, 0), sfq = res[i].has_freq_effects ? res[i].abs_dkl : 0;
        for (int q = 0; q < 3; q++) {
            if (top_e[q] < 0 || se > res[top_e[q]].te * fmax(res[top_e[q]].ln_frac, 0)) { for (int r = 2; r > q; r--) top_e[r] = top_e[r - 1]; top_e[q] = i; break; }
        }
        for (int q = 0; ug && q < 3; q++) {
            if (top_f[q] < 0 || sfq > res[top_f[q]].abs_dkl) { for (int r = 2; r > q; r--) top_f[r] = top_f[r - 1]; top_f[q] = i; break; }
        }
    }
    for (int q = 0; !rc && q < 3; q++) { if (top_e[q] >= 0) hi_e[top_e[q]] = 1; if (top_f[q] >= 0) hi_f[top_f[q]] = 1; }
    cr_outfile o = {0};
    FILE *fp;
    /* neurons.csv / neurons.json */
    int cols[N_COLS];
    for (int cc = 0; cc < N_COLS; cc++) cols[cc] = cc;
    if (!rc && (fp = cli_report_open(&o, outd, "neurons.csv", &rc))) { cli_print_neurons(fp, res, f, cols, N_COLS, COL_TE, 0, 0, 1, NULL); cli_report_close(&o, &rc); }
    char meta[2048];
    snprintf(meta, sizeof meta, "\"model\": \"%s\", \"layer\": %d, \"rows\": %d, \"ctx\": %d, \"tokens\": %lld, \"k\": %ld, \"unigram\": \"%s\"", model_path, layer,
             rows.n_rows, rows.ctx, (long long)(f ? res[0].n_tokens : 0), k, ug ? ug_source : "none");
    if (!rc && (fp = cli_report_open(&o, outd, "neurons.json", &rc))) { cli_print_neurons(fp, res, f, cols, N_COLS, COL_TE, 0, 0, 2, meta); cli_report_close(&o, &rc); }
    if (!rc && (fp = cli_report_open(&o, outd, "svals.csv", &rc))) {
        fprintf(fp, "index,singular_value\n");
        for (int i = d - 1; i >= 0; i--) fprintf(fp, "%d,%.9g\n", d - 1 - i, sv[i]);
        cli_report_close(&o, &rc);
    }
    if (!rc && have_ind && (fp = cli_report_open(&o, outd, "induction.csv", &rc))) { cli_print_induction(fp, m, &ci, 1); cli_report_close(&o, &rc); }
    if (!rc && have_ind && (fp = cli_report_open(&o, outd, "induction.json", &rc))) { cli_print_induction(fp, m, &ci, 2); cli_report_close(&o, &rc); }
    if (!rc && have_ind && (fp = cli_report_open(&o, outd, "induction.txt", &rc))) { cli_print_induction(fp, m, &ci, 0); cli_report_close(&o, &rc); }
    /* Plots. */
    double *xs = cr_malloc((size_t)f + (size_t)d + 1, 8), *ys = cr_malloc((size_t)f + (size_t)d + 1, 8), *cs = cr_malloc((size_t)f + 1, 8);
    if (!rc && (!xs || !ys || !cs)) rc = cli_error("out of memory");
    char note[512];
    snprintf(note, sizeof note, "%s, final layer %d, %d neurons; %d rows x %d tokens", model_path, layer, f, rows.n_rows, rows.ctx);
    if (!rc && (fp = cli_report_open(&o, outd, "norm_logitvar.svg", &rc))) {
        for (int i = 0; i < f; i++) xs[i] = res[i].norm, ys[i] = res[i].logit_var;
        cr_plot_series s = {"final-layer neurons", xs, ys, NULL, (const char *const *)names, hi_e, f, 0, "#1f77b4"};
        cr_plot p = {"Output norm vs LogitVar", "weight norm |w_out| (processed)", "LogitVar (variance of cos(w_out, W_U[:,t]))", NULL, 0, 1, 0, 0, 0, 0, 0, 0, NULL, 0, note};
        if (cr_plot_svg(fp, &p, &s, 1)) rc = cli_error("%s/norm_logitvar.svg: write error", outd);
        cli_report_close(&o, &rc);
    }
    if (!rc && (fp = cli_report_open(&o, outd, "svals.svg", &rc))) {
        for (int i = 0; i < d; i++) xs[i] = i, ys[i] = sv[d - 1 - i] > 0 ? sv[d - 1 - i] : NAN;
        cr_plot_series s = {"singular values of W_U", xs, ys, NULL, NULL, NULL, d, 2, "#d62728"};
        cr_plot p = {"Singular values of the unembedding", "index (descending)", "singular value", NULL, 0, 1, 0, 0, 0, 0, 0, 0, NULL, 0, note};
        if (cr_plot_svg(fp, &p, &s, 1)) rc = cli_error("%s/svals.svg: write error", outd);
        cli_report_close(&o, &rc);
    }
    if (!rc && (fp = cli_report_open(&o, outd, "rho_lnfrac.svg", &rc))) {
        for (int i = 0; i < f; i++) xs[i] = res[i].ln_frac, ys[i] = res[i].rho, cs[i] = fabs(res[i].dH_te);
        cr_plot_series s = {NULL, xs, ys, cs, (const char *const *)names, hi_e, f, 0, NULL};
        cr_plot p = {"Null-space fraction vs LN-mediated fraction", "LN-mediated fraction 1 - DE/TE", "rho (fraction of w_out in W_U's null space)", "|dH| (nats)",
                     0, 0, 0, 0, 0, 0, 0, 0, NULL, 0, note};
        if (cr_plot_svg(fp, &p, &s, 1)) rc = cli_error("%s/rho_lnfrac.svg: write error", outd);
        cli_report_close(&o, &rc);
    }
    if (!rc && ug && (fp = cli_report_open(&o, outd, "dkl_freqfrac.svg", &rc))) {
        for (int i = 0; i < f; i++) xs[i] = res[i].freq_frac, ys[i] = res[i].abs_dkl;
        cr_plot_series s = {"final-layer neurons", xs, ys, NULL, (const char *const *)names, hi_f, f, 0, "#2ca02c"};
        cr_plot p = {"Token-frequency neurons", "frequency-mediated fraction 1 - DE_freq/TE", "mean |dKL(P_freq || p)| (nats)", NULL, 0, 1, 0, 0, 0, 0, 0, 0, NULL, 0, note};
        if (cr_plot_svg(fp, &p, &s, 1)) rc = cli_error("%s/dkl_freqfrac.svg: write error", outd);
        cli_report_close(&o, &rc);
    }
    if (!rc && have_ind && (fp = cli_report_open(&o, outd, "induction_entropy.svg", &rc))) {
        int T = ci.res.T;
        double *px = cr_malloc((size_t)T, 8);
        if (!px) rc = cli_error("out of memory");
        else {
            for (int t = 0; t < T; t++) px[t] = t;
            cr_plot_series s[4];
            char labels[3][64];
            int ns = 0;
            cr_plot_series s0 = {"clean", px, ci.res.entropy, NULL, NULL, NULL, T, 1, "#1f77b4"};
            s[ns++] = s0;
            static const char *const colors[3] = {"#d62728", "#ff7f0e", "#9467bd"};
            for (int j = 0; j < ci.n_neurons && j < 3; j++) {
                snprintf(labels[j], sizeof labels[j], "%d.%d clipped", layer, ci.neurons[j]);
                cr_plot_series sj = {labels[j], px, ci.res.clip_entropy + (size_t)j * T, NULL, NULL, NULL, T, 1, colors[j]};
                s[ns++] = sj;
            }
            char inote[256];
            snprintf(inote, sizeof inote, "[BOS] + S + S, |S| = %d, mean of %d natural-text sequences; the repeat starts at position %d", ci.N, ci.n_seqs, ci.N + 1);
            cr_plot p = {"Entropy per position under induction", "position", "entropy (nats)", NULL, 0, 0, 0, 0, 0, 0, 0, 0, NULL, 0, inote};
            if (cr_plot_svg(fp, &p, s, ns)) rc = cli_error("%s/induction_entropy.svg: write error", outd);
            free(px);
        }
        cli_report_close(&o, &rc);
    }
    /* summary.json and index.html */
    char mean_desc[256];
    snprintf(mean_desc, sizeof mean_desc, "mean over all %lld tokens of the %d evaluation rows", (long long)mean_tokens, rows.n_rows);
    if (!rc && (fp = cli_report_open(&o, outd, "summary.json", &rc))) {
        fprintf(fp, "{\"model\": \"%s\", \"arch\": \"%s\", \"n_layers\": %d, \"d_model\": %d, \"d_mlp\": %d, \"n_vocab\": %d, \"rows\": %d, \"ctx\": %d, "
                    "\"tokens\": %lld, \"mean_source\": \"%s\", \"unigram\": \"%s\", \"k\": %ld, \"entropy_kl_corr\": %.6f, \"seconds\": {\"weights\": %.3f, \"ablate\": %.3f, \"induction\": %.3f},\n",
                model_path, cr_arch_name(c->arch), c->n_layers, d, f, c->n_vocab, rows.n_rows, rows.ctx, (long long)(f ? res[0].n_tokens : 0), mean_desc,
                ug ? ug_source : "none", k, corr, t_weights, t_ablate, t_ind);
        fprintf(fp, " \"entropy_candidates\": [");
        for (int q = 0; q < 3 && top_e[q] >= 0; q++)
            fprintf(fp, "%s{\"neuron\": \"%d.%d\", \"rho\": %.6f, \"ln_frac\": %.6f, \"te\": %.6f, \"dH_te\": %.6f, \"norm\": %.6f}", q ? ", " : "", layer, top_e[q],
                    res[top_e[q]].rho, res[top_e[q]].ln_frac, res[top_e[q]].te, res[top_e[q]].dH_te, res[top_e[q]].norm);
        fprintf(fp, "],\n \"frequency_candidates\": [");
        for (int q = 0; q < 3 && top_f[q] >= 0; q++)
            fprintf(fp, "%s{\"neuron\": \"%d.%d\", \"abs_dkl\": %.6f, \"freq_frac\": %.6f, \"freq_cos\": %.6f, \"te\": %.6f}", q ? ", " : "", layer, top_f[q],
                    res[top_f[q]].abs_dkl, res[top_f[q]].freq_frac, res[top_f[q]].freq_cos, res[top_f[q]].te);
        fprintf(fp, "]}\n");
        cli_report_close(&o, &rc);
    }
    if (!rc && (fp = cli_report_open(&o, outd, "index.html", &rc))) {
        fprintf(fp, "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>confreg report: ");
        cli_html_escape(fp, model_path);
        fprintf(fp, "</title>\n<style>body{font-family:sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}"
                    "img{max-width:100%%;border:1px solid #ddd;margin:.5em 0}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}"
                    "th{background:#f4f4f4}code{background:#f4f4f4;padding:0 .2em}</style></head><body>\n<h1>Confidence-regulation neurons in ");
        cli_html_escape(fp, model_path);
        fprintf(fp, "</h1>\n<p>%s, %d layers, d<sub>model</sub> = %d, %d neurons per MLP, vocabulary %d. Final layer %d analysed over %d rows of %d tokens "
                    "(%lld counted tokens); mean activations: %s. Unigram counts: ",
                cr_arch_name(c->arch), c->n_layers, d, f, c->n_vocab, layer, rows.n_rows, rows.ctx, (long long)(f ? res[0].n_tokens : 0), mean_desc);
        cli_html_escape(fp, ug ? ug_source : "none");
        fprintf(fp, ". Made by confreg %s; the numbers are in <a href=\"neurons.csv\">neurons.csv</a>, <a href=\"neurons.json\">neurons.json</a>, "
                    "<a href=\"summary.json\">summary.json</a>%s.</p>\n", CONFREG_VERSION, have_ind ? ", <a href=\"induction.csv\">induction.csv</a>" : "");
        fprintf(fp, "<h2>Entropy-neuron candidates</h2>\n<table><tr><th>neuron</th><th>norm</th><th>rho</th><th>LogitVar</th><th>TE</th><th>LN-mediated</th><th>dH (TE)</th></tr>\n");
        for (int q = 0; q < 3 && top_e[q] >= 0; q++) {
            const cr_neuron_row *r = &res[top_e[q]];
            fprintf(fp, "<tr><td>%d.%d</td><td>%.4f</td><td>%.4f</td><td>%.3g</td><td>%.4f</td><td>%.3f</td><td>%+.4f</td></tr>\n", layer, top_e[q], r->norm, r->rho, r->logit_var, r->te, r->ln_frac, r->dH_te);
        }
        fprintf(fp, "</table>\n<p>An entropy neuron writes a large vector into the directions the unembedding barely reads (high rho, low LogitVar). It changes "
                    "almost no logit directly; instead it changes the norm of the residual stream, so the final norm rescales every logit together and the "
                    "prediction gets flatter or sharper. Its effect is therefore <em>mediated by the norm</em>: the LN-mediated fraction 1 - DE/TE is close to 1. "
                    "A random direction has rho about %.3f here.</p>\n", sqrt((double)k / d));
        fprintf(fp, "<h3>Output norm vs LogitVar</h3><img src=\"norm_logitvar.svg\" alt=\"norm vs LogitVar\">\n<p>Each dot is a final-layer neuron. Entropy "
                    "neurons sit at the bottom right: large output norm, but a logit effect that is the same for every token (low LogitVar).</p>\n");
        fprintf(fp, "<h3>Singular values of W<sub>U</sub></h3><img src=\"svals.svg\" alt=\"singular values\">\n<p>The last few singular values are much smaller than the "
                    "rest: those left singular vectors span the effective null space used to compute rho (k = %ld here).</p>\n", k);
        fprintf(fp, "<h3>rho vs LN-mediated fraction</h3><img src=\"rho_lnfrac.svg\" alt=\"rho vs LN fraction\">\n<p>Colour is the mean |change of entropy| when the "
                    "neuron is mean-ablated. Neurons top right act on confidence through the final norm.</p>\n");
        if (ug) {
            fprintf(fp, "<h2>Token-frequency neurons</h2>\n<table><tr><th>neuron</th><th>|dKL|</th><th>freq-mediated</th><th>freq_cos</th><th>TE</th></tr>\n");
            for (int q = 0; q < 3 && top_f[q] >= 0; q++) {
                const cr_neuron_row *r = &res[top_f[q]];
                fprintf(fp, "<tr><td>%d.%d</td><td>%.4f</td><td>%.3f</td><td>%+.3f</td><td>%.4f</td></tr>\n", layer, top_f[q], r->abs_dkl, r->freq_frac, r->freq_cos, r->te);
            }
            fprintf(fp, "</table>\n<p>A token-frequency neuron shifts every logit in proportion to the token's log unigram frequency, moving the prediction towards "
                        "(or away from) the unigram distribution. Mean ablation changes KL(P<sub>freq</sub> || p) a lot, and most of its effect on the loss "
                        "disappears when the logit change along the frequency direction is undone (high frequency-mediated fraction). Across tokens, "
                        "entropy and KL(P<sub>freq</sub> || p) correlate at %.3f.</p>\n<img src=\"dkl_freqfrac.svg\" alt=\"dKL vs freq fraction\">\n", corr);
        }
        if (have_ind) {
            double h1, h2;
            cli_copy_means(ci.res.entropy, ci.N, &h1, &h2);
            fprintf(fp, "<h2>Induction</h2>\n<p>On [BOS] + S + S the model can copy the second half, so it becomes confident: mean entropy %.3f nats on the first copy, "
                        "%.3f on the second. Entropy neurons may <em>hedge</em> that confidence. Clipping a neuron to its first-copy mean on the second copy "
                        "(below) shows how much entropy it adds.</p>\n<img src=\"induction_entropy.svg\" alt=\"entropy per position\">\n<table><tr><th>neuron</th>"
                        "<th>act. 1st copy</th><th>act. 2nd copy</th><th>H after/before (2nd copy)</th></tr>\n", h1, h2);
            for (int j = 0; j < ci.n_neurons; j++) {
                double a1, a2, hr = 0;
                cli_copy_means(ci.res.act + (size_t)j * ci.res.T, ci.N, &a1, &a2);
                for (int t = ci.N + 1; t < ci.res.T - 1; t++) hr += ci.res.h_ratio[(size_t)j * ci.res.T + t];
                fprintf(fp, "<tr><td>%d.%d</td><td>%.4f</td><td>%.4f</td><td>%.4f</td></tr>\n", layer, ci.neurons[j], a1, a2, hr / (ci.N - 1));
            }
            fprintf(fp, "</table>\n<p>Induction heads (score &gt; 0.7 on random repeats): ");
            int any = 0;
            for (int i = 0; i < c->n_layers * c->n_heads; i++)
                if (ci.res.head_score[i] > 0.7) fprintf(fp, "%s%d.%d (%.2f)", any++ ? ", " : "", i / c->n_heads, i % c->n_heads, ci.res.head_score[i]);
            if (!any) fprintf(fp, "none");
            fprintf(fp, ". Details: <a href=\"induction.txt\">induction.txt</a>.</p>\n");
        }
        fprintf(fp, "<p>Definitions follow Stolfo et al., <i>Confidence Regulation Neurons in Language Models</i> (NeurIPS 2024); see the confreg README for each column.</p>\n</body></html>\n");
        cli_report_close(&o, &rc);
    }
    if (!rc) fprintf(stderr, "report: wrote %s/index.html (weights %.1f s, ablation %.1f s, induction %.1f s)\n", outd, t_weights, t_ablate, t_ind);
    for (int i = 0; names && i < f; i++) free(names[i]);
    free(names), free(hi_e), free(hi_f), free(xs), free(ys), free(cs), free(res), free(w), free(all), free(sv);
    if (have_ind) cli_induction_free(&ci);
    cr_rows_free(&rows);
    cr_freqdir_free(&fd);
    cr_unigram_close(ug);
    cr_model_close(m);
    return rc;
}

/* ---- selftest ---- */
typedef struct cli_check { int pass, fail; } cli_check;
static void cli_report_check(cli_check *ck, int ok, const char *what, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
static void cli_report_check(cli_check *ck, int ok, const char *what, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%-4s %-34s ", ok ? "ok" : "FAIL", what);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (ok) ck->pass++;
    else ck->fail++;
}

static double cli_rel(double a, double b) { return fabs(a - b) / fmax(1e-30, fmax(fabs(a), fabs(b))); }

/* Logits of a fixed sequence through the dispatched kernels and through the scalar twins. */
static void cli_selftest_forward(cli_check *ck, const cr_model *m, const char *what) {
    cr_err err;
    const int n = 48, V = m->cfg.n_vocab;
    int32_t ids[48];
    for (int t = 0; t < n; t++) ids[t] = (t * 29 + 3) % V;
    float *a = cr_malloc((size_t)n * V, 4), *b = cr_malloc((size_t)n * V, 4);
    cr_session *s = NULL;
    int ok = a && b && !cr_session_open(m, n, 0, &s, &err);
    for (int ref = 0; ok && ref < 2; ref++) {
        cr_session_set_reference(s, ref);
        cr_capture cap = {0};
        cap.logits = ref ? b : a;
        ok = !cr_forward(s, ids, n, 0, &cap, &err);
    }
    double worst = 0, scale = 0;
    for (int64_t i = 0; ok && i < (int64_t)n * V; i++) worst = fmax(worst, fabs((double)a[i] - b[i])), scale = fmax(scale, fabs((double)b[i]));
    cli_report_check(ck, ok && worst <= 1e-5 * scale, what, "max |SIMD - scalar| %.2e of max |logit| %.3g", worst, scale);
    cr_session_close(s);
    free(a), free(b);
}

static int cmd_selftest(int argc, char **argv) {
    const char *pos[1];
    int np;
    cli_opt opts[] = {{0}};
    int pr = cli_parse(argc, argv, opts, pos, 0, &np);
    if (pr == 2) return cli_usage("selftest", "", "Check this build on this machine: every SIMD kernel against its scalar twin, the vectorized exp,\n"
                                  "Q8_0 quantization, and forward passes and an ablation scan of a small built-in model.", opts), 0;
    if (pr) return 2;
    cli_check ck = {0, 0};
    int threads = cr_threads(0);
    printf("confreg %s selftest: matrix kernels %s, ablation kernel %s, %d thread%s\n", CONFREG_VERSION, CR_KERNEL_ISA, CR_FUSED_ISA, threads, threads == 1 ? "" : "s");
    uint64_t st = 12345;
    enum { NMAX = 4096 };
    float *x = cr_malloc(NMAX, 4), *w = cr_malloc(NMAX, 4), *back = cr_malloc(NMAX, 4);
    uint16_t *h = cr_malloc(NMAX, 2), *bf = cr_malloc(NMAX, 2);
    unsigned char *qx = cr_malloc(NMAX / CR_QK, CR_Q8_BLOCK_BYTES), *qw = cr_malloc(NMAX / CR_QK, CR_Q8_BLOCK_BYTES);
    if (!x || !w || !back || !h || !bf || !qx || !qw) return cli_error("out of memory");
    for (int i = 0; i < NMAX; i++) {
        x[i] = (float)(cr_gauss(&st)), w[i] = (float)(0.1 * cr_gauss(&st));
        h[i] = cr_f32_to_f16(w[i]);
        uint32_t bits;
        memcpy(&bits, &w[i], 4);
        bf[i] = (uint16_t)(bits >> 16);
    }
    cr_quantize_q8_0(x, qx, NMAX), cr_quantize_q8_0(w, qw, NMAX);
    double worst[5] = {0};
    for (int n = 1; n <= NMAX; n = n * 3 + 1) {
        int nq = n / CR_QK * CR_QK;
        worst[0] = fmax(worst[0], cli_rel(cr_dot_f32(w, x, n), cr_dot_f32_scalar(w, x, n)));
        worst[1] = fmax(worst[1], cli_rel(cr_dot_f16(h, x, n), cr_dot_f16_scalar(h, x, n)));
        worst[2] = fmax(worst[2], cli_rel(cr_dot_bf16(bf, x, n), cr_dot_bf16_scalar(bf, x, n)));
        if (nq) worst[3] = fmax(worst[3], cli_rel(cr_dot_q8(qw, qx, nq), cr_dot_q8_scalar(qw, qx, nq)));
        if (nq) worst[4] = fmax(worst[4], cli_rel(cr_dot_q8f(qw, x, nq), cr_dot_q8f_scalar(qw, x, nq)));
    }
    /* The four-row Q8_0 kernel, rows taken from the weight buffer at a block stride. */
    double worst4 = 0;
    for (int n = CR_QK; n <= NMAX / 4; n += 3 * CR_QK) {
        float v4[4], v0[4];
        size_t stride = (size_t)(n / CR_QK) * CR_Q8_BLOCK_BYTES;
        cr_dot_q8_x4(qw, stride, qx, n, v4);
        cr_dot_q8_x4_scalar(qw, stride, qx, n, v0);
        for (int k = 0; k < 4; k++) worst4 = fmax(worst4, cli_rel(v4[k], v0[k]));
    }
    cli_report_check(&ck, worst4 < 1e-4, "dot q8_0 x q8_0, four rows", "max relative difference from the scalar twin %.2e", worst4);
    /* The tiled Q8_0 product must equal the four-row kernel bit for bit (13 rows x 11 tokens of
     * 256 columns, cut from the same buffers), and SIMD quantization the scalar bytes. */
    {
        enum { TR = 13, TT = 11, TC = 256 };
        float *y1 = cr_malloc(TR * TT, 4), *y0 = cr_malloc(TR * TT, 4);
        unsigned char *q2 = cr_malloc(NMAX / CR_QK, CR_Q8_BLOCK_BYTES);
        cr_gemm_buf gb;
        int ok = y1 && y0 && q2 && !cr_gemm_buf_init(&gb, 8, TC / CR_QK, threads), same = 0, qsame = 0;
        if (ok) {
            cr_mat tw = {CR_Q8_0, TR, TC, qw, 0};
            cr_matmul(&tw, NULL, qx, TT, y1, NULL, threads, 0, &gb);
            cr_matmul(&tw, NULL, qx, TT, y0, NULL, 1, 0, NULL);
            same = memcmp(y1, y0, TR * TT * 4) == 0;
            cr_quantize_q8_0_scalar(x, q2, NMAX);
            qsame = memcmp(q2, qx, (size_t)NMAX / CR_QK * CR_Q8_BLOCK_BYTES) == 0;
            cr_gemm_buf_free(&gb);
        }
        cli_report_check(&ck, ok && same, "q8_0 tiled product (" CR_GEMM_ISA ")", "%s", same ? "bit-identical to the four-row kernel" : "differs from the four-row kernel");
        cli_report_check(&ck, ok && qsame, "q8_0 quantization", "%s", qsame ? "SIMD bytes equal the scalar twin's" : "SIMD bytes differ from the scalar twin's");
        free(y1), free(y0), free(q2);
    }
    {
        /* The analyses' float product: odd sizes, columns past the last full tile. */
        enum { GM = 7, GK = 37, GN = 3 * CR_GEMM_NC + 5 };
        float *ga = cr_malloc(GM * GK, 4), *gw = cr_malloc(GK * GN, 4), *g1 = cr_malloc(GM * GN, 4), *g0 = cr_malloc(GM * GN, 4);
        int ok = ga && gw && g1 && g0, same = 0;
        if (ok) {
            uint64_t gs = 5;
            for (int i = 0; i < GM * GK; i++) ga[i] = (float)((double)(cr_rng_next(&gs) >> 11) / 9007199254740992.0 - 0.5);
            for (int i = 0; i < GK * GN; i++) gw[i] = (float)((double)(cr_rng_next(&gs) >> 11) / 9007199254740992.0 - 0.5);
            cr_gemm_f32(ga, GM, GK, gw, GN, GN, g1, GN, threads);
            cr_gemm_f32_scalar(ga, GM, GK, gw, GN, 0, GN, g0, GN);
            same = memcmp(g1, g0, (size_t)GM * GN * 4) == 0;
        }
        cli_report_check(&ck, ok && same, "f32 product (" CR_GEMM_F32_ISA ")", "%s", same ? "bit-identical to the scalar twin" : "differs from the scalar twin");
        free(ga), free(gw), free(g1), free(g0);
    }
    const char *names[5] = {"dot f32", "dot f16", "dot bf16", "dot q8_0 x q8_0", "dot q8_0 x f32"};
    for (int k = 0; k < 5; k++) cli_report_check(&ck, worst[k] < 1e-4, names[k], "max relative difference from the scalar twin %.2e", worst[k]);
    /* Quantization: round to nearest within half a step (plus the fp16 scale's rounding). */
    cr_dequantize_q8_0(qx, back, NMAX);
    double qerr = 0;
    for (int b = 0; b < NMAX / CR_QK; b++) {
        float amax = 0;
        for (int i = 0; i < CR_QK; i++) amax = fmaxf(amax, fabsf(x[b * CR_QK + i]));
        /* (an explicit comparison: gcc 12 for aarch64 crashes vectorizing this as an fmax reduction) */
        for (int i = 0; i < CR_QK; i++) {
            double e = fabs(back[b * CR_QK + i] - x[b * CR_QK + i]) / (amax / 127.0);
            if (e > qerr) qerr = e;
        }
    }
    cli_report_check(&ck, qerr <= 0.5 + 0.2, "q8_0 quantize round trip", "max error %.3f quantization steps", qerr);
    /* The vectorized exp against libm over the range the kernel uses. */
    double experr = 0;
    for (int i = 0; i <= 200000; i++) {
        float v = -87.0f + 87.0f * (float)i / 200000.0f;
        experr = fmax(experr, cli_rel(cr_exp_poly(v), exp((double)v)));
    }
    cli_report_check(&ck, experr < 3e-7, "exp (polynomial)", "max relative error %.2e over [-87, 0]", experr);
    /* The fused ablation kernel against its scalar twin. */
    {
        enum { V = 3001 };
        float *z0 = cr_malloc(V, 4), *g = cr_malloc(V, 4), *bb = cr_malloc(V, 4), *vv = cr_malloc(V, 4);
        double a1[5] = {0}, a0[5] = {0}, fw = 0;
        if (z0 && g && bb && vv) {
            for (int t = 0; t < V; t++) z0[t] = (float)(3 * cr_gauss(&st)), g[t] = (float)cr_gauss(&st), bb[t] = (float)(0.1 * cr_gauss(&st)), vv[t] = (float)(0.02 * cr_gauss(&st));
            cr_fused_par p = {0.7f, 0.9f, 1.1f, 0.3f, 20.0f, 22.0f, 21.0f, 1};
            cr_fused_chunk(z0, g, bb, vv, V, &p, a1);
            cr_fused_chunk_scalar(z0, g, bb, vv, V, &p, a0);
            for (int k = 0; k < 5; k++) fw = fmax(fw, cli_rel(a1[k], a0[k]));
        }
        cli_report_check(&ck, z0 && fw < 1e-5, "fused ablation kernel", "max relative difference of the 5 sums %.2e", fw);
        free(z0), free(g), free(bb), free(vv);
    }
    free(x), free(w), free(back), free(h), free(bf), free(qx), free(qw);
    /* A built-in model: forward passes in F32, F16 and Q8_0, SIMD against scalar. */
    cr_synth_spec sp = {CR_ARCH_GPT2, 2, 64, 4, 256, 257, 64, 7, NULL, 72, 74};
    cr_model *m = NULL;
    cr_err err;
    if (cr_synth(&sp, &m, &err)) return cli_error("%s", err.msg);
    cli_selftest_forward(&ck, m, "forward F32 (gpt2)");
    char tmpl[] = "/tmp/confreg-selftest-XXXXXX";
    int fd = mkstemp(tmpl);
    if (fd >= 0) close(fd);
    const int dts[2] = {CR_F16, CR_Q8_0};
    const char *what[2] = {"forward F16 (gpt2, mmap'ed GGUF)", "forward Q8_0 (gpt2, mmap'ed GGUF)"};
    for (int k = 0; fd >= 0 && k < 2; k++) {
        cr_model *q = NULL;
        if (cr_model_write_gguf(m, tmpl, dts[k], 0, NULL, &err) || cr_model_open(tmpl, NULL, &q, &err)) {
            cli_report_check(&ck, 0, what[k], "%s", err.msg);
            continue;
        }
        cli_selftest_forward(&ck, q, what[k]);
        cr_model_close(q);
    }
    if (fd >= 0) remove(tmpl);
    /* The analysis pipeline finds the planted neurons. */
    {
        cr_unembed u;
        cr_freqdir fdr;
        cr_neuron_row *rows = cr_calloc(256, sizeof *rows);
        int ok = rows && !cr_unembed_make(m, &u, &err);
        if (ok) {
            ok = !cr_freqdir_make(&fdr, m->unigram, &err);
            if (ok) {
                /* k = 2: the planted direction and LayerNorm's all-ones direction */
                ok = !cr_weight_metrics(m, 1, 2, &u, &fdr, rows, NULL, 0, &err);
                cr_freqdir_free(&fdr);
            }
            cr_unembed_free(&u);
        }
        int best = 0;
        for (int i = 1; ok && i < 256; i++) if (rows[i].rho > rows[best].rho) best = i;
        cli_report_check(&ck, ok && best == 72 && rows[72].rho > 0.99, "planted entropy neuron found", "rank-1 by rho: 1.%d (rho %.4f)", best, ok ? rows[best].rho : 0.0);
        free(rows);
    }
    cr_model_close(m);
    printf("%d passed, %d failed\n", ck.pass, ck.fail);
    return ck.fail ? 1 : 0;
}

/* ---- speed ---- */
static int cli_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int cmd_speed(int argc, char **argv) {
    const char *ps = NULL, *ns = NULL, *thr = NULL, *reps = NULL, *mvs = NULL, *json = NULL, *precise = NULL, *pos[1];
    int np;
    cli_opt opts[] = {{"-p", 1, &ps, "prompt tokens per run (default 512, at most the context)"}, {"-n", 1, &ns, "tokens decoded one at a time from an empty context (default 128)"},
                      {"--threads", 1, &thr, "threads"}, {"--reps", 1, &reps, "repetitions; the median is reported (default 3)"},
                      {"--matvec-mib", 1, &mvs, "instead: Q8_0 matrix-vector bandwidth on a random matrix of this many MiB"},
                      {"--precise", 0, &precise, "float activations for Q8_0"}, {"--json", 0, &json, "JSON output"}, {0}};
    int pr = cli_parse(argc, argv, opts, pos, 1, &np);
    if (pr == 2) return cli_usage("speed", "[MODEL] [-p 512] [-n 128] | --matvec-mib N", "Forward-pass speed: prompt processing (p tokens at once, logits of the last) and\n"
                                  "decoding (one token at a time with the key/value cache), median of --reps runs.", opts), 0;
    if (pr) return 2;
    long p = 512, n = 128, threads = 0, r = 3, mv = 0;
    if ((ps && !cli_int(ps, "-p", 1, CR_MAX_CTX, &p)) || (ns && !cli_int(ns, "-n", 0, CR_MAX_CTX, &n)) || (thr && !cli_int(thr, "--threads", 1, 1024, &threads)) ||
        (reps && !cli_int(reps, "--reps", 1, 1000, &r)) || (mvs && !cli_int(mvs, "--matvec-mib", 1, 1 << 20, &mv)))
        return 2;
    int nt = cr_threads((int)threads);
    if (mv) {
        /* A random Q8_0 matrix bigger than the caches, 4096 columns wide. */
        const int64_t cols = 4096, rb = cols / CR_QK * CR_Q8_BLOCK_BYTES, rows = (int64_t)mv * 1048576 / rb;
        unsigned char *W = cr_malloc((size_t)rows, (size_t)rb), *xq = cr_malloc(1, (size_t)rb);
        float *xf = cr_malloc((size_t)cols, 4), *y = cr_malloc((size_t)rows, 4);
        if (!W || !xq || !xf || !y) return cli_error("out of memory for a %ld MiB matrix", mv);
        uint64_t st = 1;
        for (int64_t i = 0; i < rows * rb; i++) W[i] = (unsigned char)cr_rng_next(&st);
        for (int64_t b = 0; b < rows * (cols / CR_QK); b++) { uint16_t hs = cr_f32_to_f16(0.01f); W[b * CR_Q8_BLOCK_BYTES] = (unsigned char)hs, W[b * CR_Q8_BLOCK_BYTES + 1] = (unsigned char)(hs >> 8); }
        for (int64_t i = 0; i < cols; i++) xf[i] = (float)cr_gauss(&st);
        cr_quantize_q8_0(xf, xq, cols);
        cr_mat w = {CR_Q8_0, rows, cols, W, 0};
        double *t = cr_malloc((size_t)r, 8);
        cr_matmul(&w, xf, xq, 1, y, NULL, nt, 0, NULL); /* warm-up: pages in, caches settled */
        for (long k = 0; k < r; k++) {
            double t0 = cr_now();
            cr_matmul(&w, xf, xq, 1, y, NULL, nt, 0, NULL);
            t[k] = cr_now() - t0;
        }
        qsort(t, (size_t)r, 8, cli_cmp_double);
        double gbs = (double)(rows * rb) / t[r / 2] / 1e9;
        if (json) printf("{\"matvec_mib\": %ld, \"threads\": %d, \"seconds\": %.6f, \"gb_per_s\": %.3f, \"gb_per_s_per_thread\": %.3f}\n", mv, nt, t[r / 2], gbs, gbs / nt);
        else printf("Q8_0 matrix-vector, %ld MiB of weights, %d thread%s: %.2f GB/s (%.2f GB/s per thread), median of %ld\n", mv, nt, nt == 1 ? "" : "s", gbs, gbs / nt, r);
        free(W), free(xq), free(xf), free(y), free(t);
        return 0;
    }
    cr_model *m = cli_open_model(np ? pos[0] : CR_DEFAULT_MODEL, NULL);
    if (!m) return 1;
    const cr_config *c = cr_model_config(m);
    if (p + n > c->n_ctx) { cr_model_close(m); return cli_error("-p %ld + -n %ld exceeds the context of %d", p, n, c->n_ctx), 2; }
    cr_session *s;
    cr_err err;
    if (cr_session_open(m, (int)(p + n), (int)threads, &s, &err)) { cr_model_close(m); return cli_error("%s", err.msg); }
    cr_session_set_precise(s, precise != NULL);
    int32_t *ids = cr_malloc((size_t)(p + n), sizeof *ids);
    float *lg = cr_malloc((size_t)c->n_vocab, 4);
    double *tp = cr_malloc((size_t)r, 8), *tg = cr_malloc((size_t)r, 8);
    int rc = 0;
    uint64_t st = 7;
    for (long i = 0; ids && i < p + n; i++) ids[i] = (int32_t)(cr_rng_next(&st) % (uint64_t)m->tok_embd.rows);
    if (!ids || !lg || !tp || !tg) rc = cli_error("out of memory");
    cr_capture cap = {0};
    cap.logits = lg, cap.logits_last_only = 1;
    for (long k = -1; !rc && k < r; k++) { /* k = -1 warms up */
        double t0 = cr_now();
        if (cr_forward(s, ids, (int)p, 0, &cap, &err)) { rc = cli_error("%s", err.msg); break; }
        double t1 = cr_now();
        /* Decoding starts from an empty context, as llama-bench's tg test does (after a long
         * prompt, attention over its keys would be part of the figure). */
        for (long i = 0; i < n && !rc; i++)
            if (cr_forward(s, ids + p + i, 1, (int)i, &cap, &err)) rc = cli_error("%s", err.msg);
        if (k >= 0) tp[k] = t1 - t0, tg[k] = cr_now() - t1;
    }
    if (!rc) {
        qsort(tp, (size_t)r, 8, cli_cmp_double);
        qsort(tg, (size_t)r, 8, cli_cmp_double);
        char dt[128];
        cli_dtype_summary(m, dt, sizeof dt);
        double pps = (double)p / tp[r / 2], tgs = n ? (double)n / tg[r / 2] : 0;
        if (json) printf("{\"model\": \"%s\", \"dtypes\": \"%s\", \"threads\": %d, \"p\": %ld, \"n\": %ld, \"pp_tokens_per_s\": %.2f, \"tg_tokens_per_s\": %.2f}\n",
                         np ? pos[0] : CR_DEFAULT_MODEL, dt, nt, p, n, pps, tgs);
        else printf("%s (%s), %d thread%s: prompt %ld tokens %.1f tokens/s, decode %ld tokens %.1f tokens/s (median of %ld)\n", np ? pos[0] : CR_DEFAULT_MODEL, dt, nt,
                    nt == 1 ? "" : "s", p, pps, n, tgs, r);
    }
    free(ids), free(lg), free(tp), free(tg);
    cr_session_close(s);
    cr_model_close(m);
    return rc;
}

static const cli_cmd cli_cmds[] = {
    {"info", "[MODEL]", "architecture, dimensions, dtypes, memory", cmd_info},
    {"tokenize", "MODEL [FILE] [--text STR]", "token ids of a text", cmd_tokenize},
    {"eval", "[MODEL [TEXT...]]", "loss, entropy, perplexity, tokens/s", cmd_eval},
    {"generate", "[MODEL] [--prompt TEXT]", "greedy or sampled continuation", cmd_generate},
    {"convert", "MODEL -o OUT.gguf", "write GGUF (F32, F16, Q8_0)", cmd_convert},
    {"dump", "MODEL --ids|--text -o DIR", "logits, residuals, norm scales, activations as .npy", cmd_dump},
    {"neurons", "[MODEL]", "weight metrics: norm, LogitVar, rho, freq_cos", cmd_neurons},
    {"unigram", "MODEL CORPUS... -o COUNTS", "token counts for P_freq", cmd_unigram},
    {"ablate", "[MODEL [TEXT...]]", "mean ablation: TE, DE, LN-mediated fraction, dH, dKL", cmd_ablate},
    {"freq", "[MODEL [TEXT...]] --unigram C", "token-frequency neurons", cmd_freq},
    {"merge", "PART... [-o FILE]", "combine the checkpoints of ablate/freq shards", cmd_merge},
    {"induction", "[MODEL [TEXT...]]", "induction case study: copies, clip ablation, heads", cmd_induction},
    {"report", "[MODEL [TEXT...]] -o DIR", "everything: CSV, JSON, SVG plots, index.html", cmd_report},
    {"synth", "-o OUT.gguf", "a model with planted entropy and frequency neurons", cmd_synth},
    {"selftest", "", "check the kernels of this build on this machine", cmd_selftest},
    {"speed", "[MODEL] [-p 512] [-n 128]", "forward-pass and matrix-vector speed", cmd_speed},
    {NULL, NULL, NULL, NULL}};

static void cli_main_usage(void) {
    printf("confreg %s -- confidence-regulation neurons in language models, on a CPU\n\nusage: confreg COMMAND [ARGS] [--help]\n\ncommands:\n", CONFREG_VERSION);
    for (const cli_cmd *c = cli_cmds; c->name; c++) printf("  %-10s %-30s %s\n", c->name, c->args, c->summary);
    printf("\nMODEL is a Hugging Face directory, a .gguf file or a llama2.c .bin (default %s).\n", CR_DEFAULT_MODEL);
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        cli_main_usage();
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) return printf("confreg %s (%s kernels)\n", CONFREG_VERSION, CR_KERNEL_ISA), 0;
    for (const cli_cmd *c = cli_cmds; c->name; c++)
        if (!strcmp(argv[1], c->name)) return c->run(argc - 2, argv + 2);
    return cli_error("unknown command '%s' (see confreg --help)", argv[1]), 2;
}
#endif /* CONFREG_NO_MAIN */
