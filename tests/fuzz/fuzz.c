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
 * Files are written under a per-process temporary directory, since the loaders read paths. */
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
#else
#error "define one FUZZ_<TARGET>"
#endif
    return 0;
}
