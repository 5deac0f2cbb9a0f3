/* confreg.h -- public interface of confreg, the confidence-regulation neuron toolkit.
 *
 * Vendoring: copy confreg.c and confreg.h into your tree and compile confreg.c with
 * -DCONFREG_NO_MAIN (otherwise it also contains the command-line program). C11, libc + libm;
 * OpenMP is used when the compiler enables it.
 *
 * Conventions: every handle is opaque and has an open/close pair; every function that can fail
 * returns a cr_status and fills the caller's cr_err with a one-line message; the library keeps
 * no global mutable state, never exits and never prints. One handle may be used by one thread at
 * a time; a cr_model may be shared read-only by many sessions on many threads.
 */
#ifndef CONFREG_H
#define CONFREG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CONFREG_VERSION "0.1.0"

/* ---- errors ---------------------------------------------------------------------------- */
typedef enum cr_status {
    CR_OK = 0,
    CR_EIO = 1,          /* a file could not be opened, read, mapped or written */
    CR_EFORMAT = 2,      /* a file's contents are malformed or inconsistent */
    CR_EINVAL = 3,       /* a bad argument (id out of range, invalid UTF-8, ...) */
    CR_ENOMEM = 4,
    CR_ERANGE = 5,       /* a size or count beyond what is supported or what the file holds */
    CR_EUNSUPPORTED = 6, /* a valid but unsupported feature (architecture, dtype, ...) */
    CR_EINTR = 7         /* stopped at the caller's request (a long scan's hook) */
} cr_status;

typedef struct cr_err { char msg[512]; } cr_err;

/* ---- tensors and dtypes ---------------------------------------------------------------- */
typedef enum cr_dtype { CR_F32 = 0, CR_F16 = 1, CR_BF16 = 2, CR_Q8_0 = 3 } cr_dtype;
const char *cr_dtype_name(int dtype);

/* ---- tokenizer ------------------------------------------------------------------------- */
typedef struct cr_tokenizer cr_tokenizer;
enum cr_tok_kind { CR_TOK_BYTE_BPE = 1, CR_TOK_SPM = 2 };
enum cr_pretok { CR_PRE_GPT2 = 0, CR_PRE_LLAMA3 = 1, CR_PRE_QWEN2 = 2 };

typedef struct cr_tokenizer_spec {
    int kind;                    /* cr_tok_kind */
    int pretok;                  /* cr_pretok (byte-level BPE only) */
    int32_t n_vocab;
    const char *const *tokens;   /* [n_vocab] as stored: "Ġthe" (byte BPE), "▁the"/"<0x0A>" (SPM) */
    const uint32_t *token_lens;  /* [n_vocab] byte lengths */
    const float *scores;         /* [n_vocab] or NULL: SPM merge priority, higher first */
    const int32_t *token_types;  /* [n_vocab] or NULL: 1 normal 2 unknown 3 control 4 user 5 unused 6 byte */
    int32_t n_merges;
    const char *const *merges;   /* [n_merges] "left right", rank = index */
    const uint32_t *merge_lens;  /* [n_merges] */
    int32_t bos_id, eos_id, unk_id;  /* -1 when absent */
    int add_space_prefix;        /* SPM: prepend "▁" (Llama-2 does) */
} cr_tokenizer_spec;

int  cr_tokenizer_open(const cr_tokenizer_spec *spec, cr_tokenizer **out, cr_err *err);
/* Reads tokenizer.json, a directory holding it or encoder.json + vocab.bpe, a llama2.c
 * tokenizer.bin (n_vocab from the model, or 0 to read to the end) or a GGUF's metadata. */
int  cr_tokenizer_open_file(const char *path, int32_t n_vocab, cr_tokenizer **out, cr_err *err);
void cr_tokenizer_close(cr_tokenizer *tok);
/* ids_out is malloc'ed; invalid UTF-8 is CR_EINVAL naming the byte offset. */
int  cr_tokenizer_encode(const cr_tokenizer *tok, const char *text, size_t len, int add_bos,
                         int32_t **ids_out, size_t *n_out, cr_err *err);
int  cr_tokenizer_decode(const cr_tokenizer *tok, const int32_t *ids, size_t n,
                         char **text_out, size_t *len_out, cr_err *err);
int  cr_tokenizer_token_bytes(const cr_tokenizer *tok, int32_t id, char *buf, size_t cap, size_t *len);
int32_t cr_tokenizer_n_vocab(const cr_tokenizer *tok);
int32_t cr_tokenizer_bos(const cr_tokenizer *tok);
int32_t cr_tokenizer_eos(const cr_tokenizer *tok);
int32_t cr_tokenizer_newline(const cr_tokenizer *tok); /* id of "\n" alone, or -1 */

/* ---- models ---------------------------------------------------------------------------- */
typedef enum cr_arch {
    CR_ARCH_GPT2 = 0, CR_ARCH_LLAMA, CR_ARCH_MISTRAL, CR_ARCH_QWEN2, CR_ARCH_GEMMA,
    CR_ARCH_GPT_NEOX, CR_ARCH_PHI, CR_ARCH_COUNT
} cr_arch;
const char *cr_arch_name(int arch);

typedef struct cr_config {
    int arch;                 /* cr_arch */
    int n_layers, d_model, n_heads, n_kv_heads, head_dim, d_mlp, n_vocab, n_ctx;
    int rms_norm;             /* 1: RMSNorm, 0: LayerNorm */
    float norm_eps;
    int gated_mlp;            /* act(gate)*up (llama family, gemma) */
    int act;                  /* 0 gelu (erf), 1 gelu_tanh, 2 silu */
    int parallel_block;       /* attention and MLP read the same residual (NeoX, Phi) */
    int rotary_dims;          /* 0: learned absolute positions (GPT-2) */
    float rope_theta;
    int rope_interleaved;     /* 1: pairs (2i,2i+1) (llama2.c, llama.cpp llama GGUF); 0: rotate-half */
    int tied_embeddings;
    int32_t bos_id, eos_id;   /* -1 when unknown */
    const char *source_format;/* "safetensors", "gguf", "llama2c" */
    int sliding_window;       /* keys per query (Mistral); 0 = the whole prefix */
} cr_config;

typedef struct cr_model cr_model;

/* path: a Hugging Face directory (config.json + safetensors), a .gguf file, or a llama2.c .bin.
 * tokenizer_path: NULL to look beside the model (tokenizer.json, encoder.json + vocab.bpe,
 * tokenizer.bin, GGUF metadata); a model without a tokenizer still loads. */
int  cr_model_open(const char *path, const char *tokenizer_path, cr_model **out, cr_err *err);
void cr_model_close(cr_model *m);
const cr_config *cr_model_config(const cr_model *m);
const cr_tokenizer *cr_model_tokenizer(const cr_model *m);  /* NULL when none */
size_t cr_model_weight_bytes(const cr_model *m);              /* bytes of mapped weights */
/* Dtype census: counts of matrices per dtype, indexed by cr_dtype. */
void cr_model_dtype_counts(const cr_model *m, int counts[4]);

/* Writes the model (and its tokenizer, and optional unigram counts) as GGUF v3, atomically.
 * dtype: CR_F32, CR_F16 or CR_Q8_0 (matrices whose rows are not a multiple of 32 stay F16).
 * flags: CR_GGUF_TIED stores a tied GPT-2 unembedding once (by default it is written twice,
 * because llama.cpp's gpt2 loader requires output.weight). */
#define CR_GGUF_TIED 1
typedef struct cr_unigram cr_unigram;
int cr_model_write_gguf(const cr_model *m, const char *path, int dtype, int flags,
                        const cr_unigram *unigram, cr_err *err);   /* unigram: NULL = the model's own */
const cr_unigram *cr_model_unigram(const cr_model *m);   /* counts carried in a GGUF, or NULL */

/* ---- forward pass ---------------------------------------------------------------------- */
typedef struct cr_session cr_session;

/* Everything the caller wants recorded or changed during one cr_forward call. Buffers are
 * caller-owned; NULL means "not wanted". n = number of positions in the call. */
typedef struct cr_capture {
    float *logits;            /* [n, n_vocab] */
    float *resid_final;       /* [n, d_model]  input of the final norm */
    float *norm_scale;        /* [n]           sqrt(var+eps) (LayerNorm) or rms (RMSNorm) */
    float **mlp_post;         /* [n_layers] of NULL or [n, d_mlp]: activations after the nonlinearity */
    float **attn;             /* [n_layers] of NULL or [n_heads, n, pos0+n]: attention probabilities */
    /* Called after a layer's MLP activations are computed, before the down projection:
     * act is [n, d_mlp] and may be edited in place. */
    void (*mlp_edit)(void *user, int layer, int pos0, int n, int d_mlp, float *act);
    /* Called after a layer's attention softmax: probs [n_heads, n, n_keys] may be edited. */
    void (*attn_edit)(void *user, int layer, int pos0, int n, int n_keys, int n_heads, float *probs);
    void *user;
    int logits_last_only;     /* 1: logits is [1, n_vocab], for the last position only */
} cr_capture;

/* A session holds the scratch buffers and key/value cache for sequences of up to max_pos
 * positions (<= n_ctx). n_threads <= 0 means all available. */
int  cr_session_open(const cr_model *m, int max_pos, int n_threads, cr_session **out, cr_err *err);
void cr_session_close(cr_session *s);
/* precise=1 keeps activations in float for Q8_0 weights (default: quantized like llama.cpp). */
void cr_session_set_precise(cr_session *s, int precise);
/* Runs positions pos0..pos0+n-1 (earlier positions must have been run in this session). */
int  cr_forward(cr_session *s, const int32_t *ids, int n, int pos0, const cr_capture *cap, cr_err *err);

/* ---- output statistics ------------------------------------------------------------------ */
/* log-sum-exp and entropy (nats) of softmax(z) over n entries, in one pass. */
void cr_logits_stats(const float *z, int n, double *lse, double *entropy);

/* ---- unigram counts ---------------------------------------------------------------------- */
int  cr_unigram_open_empty(int32_t n_vocab, cr_unigram **out, cr_err *err);
/* Reads a counts file written by cr_unigram_save; n_vocab > 0 demands exactly that width. */
int  cr_unigram_open(const char *path, int32_t n_vocab, cr_unigram **out, cr_err *err);
void cr_unigram_close(cr_unigram *u);
int  cr_unigram_add_text(cr_unigram *u, const cr_tokenizer *tok, const char *text, size_t len, cr_err *err);
int  cr_unigram_save(const cr_unigram *u, const char *path, cr_err *err);
int32_t cr_unigram_n_vocab(const cr_unigram *u);
uint64_t cr_unigram_total(const cr_unigram *u);
const uint64_t *cr_unigram_counts(const cr_unigram *u);

/* ---- files ------------------------------------------------------------------------------ */
/* Writes a float32 C-order .npy array (ndim 1 or 2) atomically (temporary name + rename). */
int cr_write_npy(const char *path, const float *data, int ndim, const int64_t *shape, cr_err *err);

#ifdef __cplusplus
}
#endif
#endif /* CONFREG_H */
