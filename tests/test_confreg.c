/* confreg test suite.  Includes the library itself so static kernels and parsers can be tested
 * directly, and runs the command-line binary for end-to-end and bad-input cases.
 * Usage: test_confreg [BINARY] [SHARED_DIR] [FILTER]; prints "N passed, M failed" last. */
#define CONFREG_NO_MAIN
#include "../confreg.c"

#include <sys/wait.h>

static int t_pass, t_fail, t_skip, t_cur_failed;
static const char *t_bin = "./confreg", *t_shared = "../shared", *t_filter = NULL;
static char t_tmp[256];

#define CHECK(cond, ...) do { if (!(cond)) { printf("    FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); t_cur_failed = 1; } } while (0)
#define CHECK_OK(expr, err) do { int rc_ = (expr); if (rc_) { printf("    FAIL %s:%d: %s -> %d: %s\n", __FILE__, __LINE__, #expr, rc_, (err).msg); t_cur_failed = 1; } } while (0)

static void t_skipped(const char *why) { printf("    skip: %s\n", why); t_skip++; }

static char *t_shared_path(const char *rel) {
    static char buf[8][1024];
    static int k;
    char *b = buf[k++ % 8];
    snprintf(b, 1024, "%s/%s", t_shared, rel);
    return b;
}
static int t_have(const char *rel) { return access(t_shared_path(rel), R_OK) == 0; }

static char *t_tmp_path(const char *name) {
    static char buf[8][1024];
    static int k;
    char *b = buf[k++ % 8];
    snprintf(b, 1024, "%s/%s", t_tmp, name);
    return b;
}

static void t_write(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) { printf("cannot write %s\n", path); exit(1); }
    fwrite(data, 1, n, f);
    fclose(f);
}

static float *t_read_f32(const char *path, size_t *n) {
    cr_map m;
    cr_err e;
    if (cr_map_open(&m, path, &e)) return NULL;
    *n = m.size / 4;
    float *v = malloc(m.size + 4);
    memcpy(v, m.data, m.size);
    cr_map_close(&m);
    return v;
}

/* Runs the CLI; returns the exit status and the first line of stderr in err_line. */
static int t_run(const char *args, char *err_line, size_t cap) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s %s >%s 2>%s", t_bin, args, t_tmp_path("stdout.txt"), t_tmp_path("stderr.txt"));
    int st = system(cmd);
    if (err_line) {
        err_line[0] = 0;
        FILE *f = fopen(t_tmp_path("stderr.txt"), "r");
        if (f) {
            if (!fgets(err_line, (int)cap, f)) err_line[0] = 0;
            fclose(f);
        }
        size_t l = strlen(err_line);
        if (l && err_line[l - 1] == '\n') err_line[l - 1] = 0;
    }
    if (!WIFEXITED(st)) return -1; /* killed by a signal: a crash */
    return WEXITSTATUS(st);
}

static char *t_stdout(void) {
    char *s;
    size_t n;
    cr_err e;
    if (cr_read_file(t_tmp_path("stdout.txt"), &s, &n, &e)) return calloc(1, 1);
    return s;
}

static double t_max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || d != d) m = d != d ? INFINITY : d;
    }
    return m;
}

/* ---- JSON helpers for the reference files ---- */
static unsigned char *t_slurp_any(const char *path, size_t *n) {
    char *s;
    cr_err e;
    if (cr_read_file(path, &s, n, &e)) return NULL;
    return (unsigned char *)s;
}

static uint32_t cr_f32_bits_t(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}

static int t_load_json(const char *path, js_doc *d) {
    char *s;
    size_t n;
    cr_err e;
    if (cr_read_file(path, &s, &n, &e)) return 0;
    int rc = js_parse(d, s, n, path, &e);
    free(s);
    return rc == 0;
}
static int t_json_ints(const js_doc *d, const js_node *arr, int32_t *out, int cap) {
    int n = 0;
    for (int32_t k = arr ? arr->first_child : -1; k >= 0 && n < cap; k = d->nodes[k].next) out[n++] = (int32_t)d->nodes[k].num;
    return n;
}

struct t_case { const char *name; void (*fn)(void); };
#define cr_rng_next_t cr_rng_next
#include "t_fixtures.inc"
#include "t_engine.inc"
#include "t_tokenizer.inc"
#include "t_badinput.inc"
#include "t_analysis.inc"
#include "t_robust.inc"

static const struct t_case t_cases[] = {
    T_ENGINE_CASES
    T_TOKENIZER_CASES
    T_BADINPUT_CASES
    T_ANALYSIS_CASES
    T_ROBUST_CASES
    {NULL, NULL}};

int main(int argc, char **argv) {
    if (argc > 1) t_bin = argv[1];
    if (argc > 2) t_shared = argv[2];
    if (argc > 3) t_filter = argv[3];
    snprintf(t_tmp, sizeof t_tmp, "/tmp/confreg-test.%ld", (long)getpid());
    mkdir(t_tmp, 0777);
    if (access(t_shared, R_OK) != 0) printf("note: %s not found; tests that need it are skipped\n", t_shared);
    for (const struct t_case *c = t_cases; c->name; c++) {
        if (t_filter && !strstr(c->name, t_filter)) continue;
        printf("%s\n", c->name);
        fflush(stdout);
        t_cur_failed = 0;
        int skips = t_skip;
        double t0 = cr_now();
        c->fn();
        if (t_cur_failed) t_fail++;
        else if (t_skip == skips) t_pass++;
        printf("    %s (%.2f s)\n", t_cur_failed ? "FAILED" : t_skip > skips ? "skipped" : "ok", cr_now() - t0);
        fflush(stdout);
    }
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf %s", t_tmp);
    if (system(cmd) != 0) printf("note: could not remove %s\n", t_tmp);
    printf("%d passed, %d failed, %d skipped\n", t_pass, t_fail, t_skip);
    return t_fail ? 1 : 0;
}
