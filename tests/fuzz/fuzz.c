/* libFuzzer targets for every parser in confreg.  One file; the target is chosen at compile
 * time with -DFUZZ_<NAME> (see the Makefile's fuzz rule):
 *   SAFETENSORS  a model directory whose model.safetensors is the input (config fixed)
 *   CONFIG       config.json (with a fixed valid safetensors beside it)
 *   GGUF         a .gguf model file (header, metadata, tensor infos, data)
 *   LLAMA2C      a llama2.c checkpoint
 *   TOKJSON      tokenizer.json
 *   GPT2VOCAB    encoder.json + vocab.bpe (the input is split at its first NUL byte)
 *   TOKBIN       llama2.c tokenizer.bin
 *   UNIGRAM      a unigram counts file
 *   JSON         the JSON parser on arbitrary bytes
 *   ENCODE       tokenizer encode/decode on arbitrary bytes (byte-level BPE and SentencePiece)
 *   SCANSTATE    an ablate/freq checkpoint (CRSCAN01), resumed on a tiny model, merged
 *   INDSTATE     an induction checkpoint (CRINDU01), resumed on a tiny model
 * The two state targets repair the trailing checksum first, so that mutations reach the
 * parser and the resume logic instead of stopping at the checksum.  * Files are written under a per-process temporary directory, since the loaders read paths. */
#define CONFREG_NO_MAIN
#include "../../confreg.c"

static char fz_dir[64];

static const char *fz_path(const char *name) {
    static char p[128];
    if (!fz_dir[0]) {
        snprintf(fz_dir, sizeof fz_dir, "/tmp/confreg-fuzz.%ld", (long)getpid());
        mkdir(fz_dir, 0700);
    }
    snprintf(p, sizeof p, "%s/%s", fz_dir, name);
    return p;
}

static void fz_write(const char *name, const void *data, size_t n) {
    FILE *f = fopen(fz_path(name), "wb");
    if (!f) abort();
    if (n && fwrite(data, 1, n, f) != n) abort();
    fclose(f);
}

static void fz_model(const char *path) {
    cr_model *m = NULL;
    cr_err e;
    if (cr_model_open(path, NULL, &m, &e) == CR_OK) {
        /* A model that loads must also run. */
        cr_session *s;
        if (cr_session_open(m, 2, 1, &s, &e) == CR_OK) {
            int32_t ids[2] = {0, m->tok_embd.rows > 1 ? 1 : 0};
            float *lg = malloc((size_t)2 * (size_t)m->cfg.n_vocab * sizeof *lg);
            cr_capture cap = {0};
            cap.logits = lg;
            if (lg) cr_forward(s, ids, 2, 0, &cap, &e);
            free(lg);
            cr_session_close(s);
        }
        cr_model_close(m);
    }
}

static const char fz_config[] = "{\"model_type\": \"gpt2\", \"n_embd\": 8, \"n_layer\": 1, \"n_head\": 2, \"n_positions\": 4, \"vocab_size\": 4}";

/* The state files end in an FNV-1a checksum of everything before it: recompute it. */
static unsigned char *fz_fix_checksum(const uint8_t *data, size_t size) {
    unsigned char *b = malloc(size ? size : 1);
    if (!b) abort();
    memcpy(b, data, size);
    if (size >= 16) {
        uint64_t h = cr_fnv64(b, size - 8, 0xcbf29ce484222325ull);
        for (int k = 0; k < 8; k++) b[size - 8 + (size_t)k] = (unsigned char)(h >> (8 * k));
    }
    return b;
}

/* The tiny model and rows the state targets resume on (seeds: tests/fuzz/make_seeds.sh). */
static cr_model *fz_tiny_model(void) {
    static cr_model *m;
    if (!m) {
        cr_err e;
        cr_synth_spec sp = {CR_ARCH_GPT2, 2, 16, 2, 32, 300, 16, 1, NULL, 5, 6};
        if (cr_synth(&sp, &m, &e)) abort();
    }
    return m;
}

static void fz_tiny_rows(cr_rows *rows) {
    int32_t stream[24];
    for (int i = 0; i < 24; i++) stream[i] = 3 + (i * 7) % 250;
    cr_err e;
    if (cr_rows_make(rows, stream, 24, 9, fz_tiny_model()->cfg.bos_id, 0, &e)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cr_err e;
#if defined(FUZZ_SAFETENSORS)
    mkdir(fz_path("m"), 0700);
    fz_write("m/config.json", fz_config, sizeof fz_config - 1);
    fz_write("m/model.safetensors", data, size);
    fz_model(fz_path("m"));
#elif defined(FUZZ_CONFIG)
    mkdir(fz_path("c"), 0700);
    fz_write("c/config.json", data, size);
    static const unsigned char empty_st[16] = {8, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '};
    fz_write("c/model.safetensors", empty_st, sizeof empty_st);
    fz_model(fz_path("c"));
#elif defined(FUZZ_GGUF)
    fz_write("m.gguf", data, size);
    fz_model(fz_path("m.gguf"));
#elif defined(FUZZ_LLAMA2C)
    fz_write("m.bin", data, size);
    fz_model(fz_path("m.bin"));
#elif defined(FUZZ_TOKJSON) || defined(FUZZ_TOKBIN)
#if defined(FUZZ_TOKJSON)
    fz_write("tokenizer.json", data, size);
    const char *p = fz_path("tokenizer.json");
#else
    fz_write("tokenizer.bin", data, size);
    const char *p = fz_path("tokenizer.bin");
#endif
    cr_tokenizer *t = NULL;
    if (cr_tokenizer_open_file(p, 0, &t, &e) == CR_OK) {
        int32_t *ids = NULL;
        size_t n = 0;
        char *back = NULL;
        size_t bl = 0;
        if (cr_tokenizer_encode(t, "Hello, world!\n  x", 17, 0, &ids, &n, &e) == CR_OK) cr_tokenizer_decode(t, ids, n, &back, &bl, &e);
        free(ids), free(back);
        cr_tokenizer_close(t);
    }
#elif defined(FUZZ_GPT2VOCAB)
    const uint8_t *nul = memchr(data, 0, size);
    size_t a = nul ? (size_t)(nul - data) : size;
    mkdir(fz_path("v"), 0700);
    fz_write("v/encoder.json", data, a);
    fz_write("v/vocab.bpe", nul ? nul + 1 : data, nul ? size - a - 1 : 0);
    cr_tokenizer *t = NULL;
    if (cr_tokenizer_open_file(fz_path("v"), 0, &t, &e) == CR_OK) {
        int32_t *ids = NULL;
        size_t n = 0;
        cr_tokenizer_encode(t, "the cat sat", 11, 0, &ids, &n, &e);
        free(ids);
        cr_tokenizer_close(t);
    }
#elif defined(FUZZ_UNIGRAM)
    fz_write("u.bin", data, size);
    cr_unigram *u = NULL;
    if (cr_unigram_open(fz_path("u.bin"), 0, &u, &e) == CR_OK) cr_unigram_close(u);
#elif defined(FUZZ_JSON)
    js_doc d;
    if (js_parse(&d, (const char *)data, size, "fuzz", &e) == CR_OK) {
        (void)js_get(&d, js_at(&d, 0), "model_type");
        (void)js_subtree_has(&d, js_at(&d, 0), "x", 0);
        js_free(&d);
    }
#elif defined(FUZZ_ENCODE)
    static cr_tokenizer *bpe, *spm;
    if (!bpe) {
        cr_synth_tokenizer(300, &bpe, &e);
        /* A small SentencePiece vocabulary: bytes, a few pieces with scores. */
        static const char *toks[] = {"<unk>", "<s>", "</s>", "\xe2\x96\x81", "a", "b", "\xe2\x96\x81" "a", "ab", "\xe2\x96\x81" "ab", "<0x0A>", "<0x41>", "<0xE2>", "<0x96>", "<0x81>"};
        static uint32_t lens[14];
        static float scores[14];
        for (int i = 0; i < 14; i++) lens[i] = (uint32_t)strlen(toks[i]), scores[i] = (float)-i;
        cr_tokenizer_spec sp = {CR_TOK_SPM, 0, 14, toks, lens, scores, NULL, 0, NULL, NULL, 1, 2, 0, 1};
        cr_tokenizer_open(&sp, &spm, &e);
    }
    cr_tokenizer *ts[2] = {bpe, spm};
    for (int k = 0; k < 2; k++) {
        if (!ts[k]) continue;
        int32_t *ids = NULL;
        size_t n = 0;
        char *back = NULL;
        size_t bl = 0;
        if (cr_tokenizer_encode(ts[k], (const char *)data, size, 1, &ids, &n, &e) == CR_OK) {
            if (cr_tokenizer_decode(ts[k], ids, n, &back, &bl, &e) == CR_OK && k == 0 && (bl != size || memcmp(back, data, size) != 0))
                abort(); /* byte-level BPE must round-trip any valid UTF-8 exactly */
        }
        free(ids), free(back);
    }
#elif defined(FUZZ_SCANSTATE)
    unsigned char *b = fz_fix_checksum(data, size);
    fz_write("s.state", b, size);
    free(b);
    cr_scan st;
    if (cr_scan_load(&st, fz_path("s.state"), &e) == CR_OK) {
        cr_neuron_row *rows_out = calloc((size_t)st.n_neurons, sizeof *rows_out);
        if (rows_out) cr_scan_results(&st, 1, rows_out);
        free(rows_out);
        cr_scan *parts[2] = {&st, &st};
        const char *names[2] = {"a", "b"};
        cr_scan merged;
        if (cr_scan_merge(parts, names, 2, &merged, &e) == CR_OK) cr_scan_free(&merged);
        /* A state that fits the tiny model's layer and rows must resume without harm. */
        cr_model *m = fz_tiny_model();
        cr_rows rows;
        fz_tiny_rows(&rows);
        cr_freqdir fd;
        if (cr_freqdir_make(&fd, m->unigram, &e) == CR_OK) {
            cr_ablate_spec sp = {st.layer, st.neurons, st.n_neurons, NULL, &fd, -1, (int)(st.fingerprint & 1), 1, 64, (int)(st.fingerprint >> 1 & 1)};
            (void)cr_scan_run(m, &rows, &sp, &st, NULL, NULL, &e);
            cr_freqdir_free(&fd);
        }
        cr_rows_free(&rows);
        cr_scan_free(&st);
    }
#elif defined(FUZZ_INDSTATE)
    unsigned char *b = fz_fix_checksum(data, size);
    fz_write("i.state", b, size);
    cr_model *m = fz_tiny_model();
    /* The seeds' analysis: N = 4, 2 sequences, neurons 1.0 and 1.1, BOS-ablated head 0.1. */
    const cr_ind_dims dims = {9, 2, 4, 1};
    uint64_t fp = size >= 16 ? cr_rd64(b + 8) : 0;
    free(b);
    cr_induction_result res;
    if (cr_induction_load(&res, &dims, fp, fz_path("i.state"), &e) == CR_OK) {
        int32_t seqs[8] = {10, 11, 12, 13, 20, 21, 22, 23};
        int neurons[2] = {0, 1}, heads[2] = {0, 1};
        cr_induction_spec sp = {4, 2, seqs, seqs, 2, neurons, 2, heads, 1, 1};
        if (cr_induction(m, &sp, &res, NULL, NULL, &e) == CR_OK) cr_induction_result_free(&res);
    }
#else
#error "define one FUZZ_<TARGET>"
#endif
    return 0;
}
