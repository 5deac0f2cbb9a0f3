#!/usr/bin/env bash
# Regenerates the fuzzing seed corpora in tests/fuzz/seeds/ from files confreg writes itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
S=tests/fuzz/seeds
C=./confreg
rm -rf $S && mkdir -p $S/{safetensors,config,gguf,llama2c,tokjson,gpt2vocab,tokbin,unigram,json,encode,scanstate,indstate}
T=$(mktemp -d)
$C synth -o $S/gguf/gpt2.gguf --layers 1 --d 16 --heads 2 --d-mlp 32 --vocab 300 --ctx 16 --dtype q8_0 >/dev/null
$C synth -o $S/gguf/llama.gguf --arch llama --layers 1 --d 16 --heads 2 --d-mlp 32 --vocab 300 --ctx 16 --dtype f16 >/dev/null
$C synth -o $T/s.gguf --layers 1 --d 16 --heads 2 --d-mlp 32 --vocab 300 --ctx 16 --unigram-out $S/unigram/counts.bin >/dev/null
printf 'the cat sat on the mat\n' > $T/t.txt
# safetensors + config: a tiny GPT-2 in Hugging Face layout, written by a small C helper below.
cat > $T/st.c <<'CEOF'
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    const char *names[] = {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias", "h.0.ln_1.weight", "h.0.ln_1.bias", "h.0.attn.c_attn.weight", "h.0.attn.c_attn.bias",
        "h.0.attn.c_proj.weight", "h.0.attn.c_proj.bias", "h.0.ln_2.weight", "h.0.ln_2.bias", "h.0.mlp.c_fc.weight", "h.0.mlp.c_fc.bias", "h.0.mlp.c_proj.weight", "h.0.mlp.c_proj.bias"};
    int shape[16][2] = {{4, 8}, {4, 8}, {8, 0}, {8, 0}, {8, 0}, {8, 0}, {8, 24}, {24, 0}, {8, 8}, {8, 0}, {8, 0}, {8, 0}, {8, 32}, {32, 0}, {32, 8}, {8, 0}};
    char h[4096]; int n = sprintf(h, "{"); long off = 0;
    for (int i = 0; i < 16; i++) {
        long numel = shape[i][0] * (shape[i][1] ? shape[i][1] : 1);
        if (shape[i][1]) n += sprintf(h + n, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%d,%d],\"data_offsets\":[%ld,%ld]}", i ? "," : "", names[i], shape[i][0], shape[i][1], off, off + 4 * numel);
        else n += sprintf(h + n, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[%ld,%ld]}", i ? "," : "", names[i], shape[i][0], off, off + 4 * numel);
        off += 4 * numel;
    }
    n += sprintf(h + n, "}");
    while (n % 8) h[n++] = ' ';
    FILE *f = fopen(argv[1], "wb");
    unsigned long long hl = (unsigned long long)n;
    fwrite(&hl, 8, 1, f); fwrite(h, 1, (size_t)n, f);
    for (long i = 0; i < off / 4; i++) { float v = (float)((i * 37 % 17) - 8) / 16.0f; fwrite(&v, 4, 1, f); }
    fclose(f);
    return 0;
}
CEOF
cc -o $T/st $T/st.c && $T/st $S/safetensors/model.safetensors
printf '{"model_type": "gpt2", "n_embd": 8, "n_layer": 1, "n_head": 2, "n_positions": 4, "vocab_size": 4}' > $S/config/gpt2.json
printf '{"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 16, "max_position_embeddings": 8, "vocab_size": 4, "rope_parameters": {"rope_theta": 10000.0}}' > $S/config/llama.json
printf '{"model_type": "gpt_neox", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 8, "vocab_size": 4, "rotary_pct": 0.5}' > $S/config/neox.json
# llama2.c checkpoint: header + zeros of the right size (dim 8, hidden 16, 1 layer, 2/1 heads, vocab 4, seq 4, shared)
python3 - "$S/llama2c/tiny.bin" <<'PEOF'
import struct, sys
dim, hid, L, H, K, V, S = 8, 16, 1, 2, 1, 4, 4
kv = dim // H * K
n = V*dim + L*dim + L*dim*dim + 2*L*kv*dim + L*dim*dim + L*dim + 3*L*hid*dim + dim + S*(dim//H)
open(sys.argv[1], 'wb').write(struct.pack('<7i', dim, hid, L, H, K, V, S) + struct.pack('<%df' % n, *[((i*7) % 11 - 5) / 10 for i in range(n)]))
PEOF
printf '{"added_tokens": [{"id": 6, "content": "<|endoftext|>", "special": true}], "pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": {"h": 0, "i": 1, "\\u0120": 2, "hi": 3, "\\u0120hi": 4, "!": 5, "<|endoftext|>": 6}, "merges": ["h i", "\\u0120 hi"]}}' > $S/tokjson/bpe.json
printf '{"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\\u2581"}]}, "model": {"type": "BPE", "byte_fallback": true, "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x21>": 3, "\\u2581": 4, "a": 5, "b": 6, "\\u2581a": 7}, "merges": [["\\u2581", "a"]]}}' > $S/tokjson/spm.json
printf '{"h": 0, "i": 1, "\\u0120": 2, "hi": 3, "<|endoftext|>": 4}\0#version: 0.2\nh i\n' > $S/gpt2vocab/tiny
python3 - "$S/tokbin/tok.bin" <<'PEOF'
import struct, sys
toks = [b'<unk>', b'\n<s>\n', b'\n</s>\n'] + [('<0x%02X>' % b).encode() for b in range(256)] + [b' ', b'a', b' a', b'ab']
out = struct.pack('<i', 8)
for i, t in enumerate(toks): out += struct.pack('<fi', -float(i), len(t)) + t
open(sys.argv[1], 'wb').write(out)
PEOF
printf '{"a": [1, 2.5e-3, true, false, null, "x\\u00e9\\ud83d\\ude00"], "b": {"c": {}}}' > $S/json/a.json
printf 'Hello, world! \xc3\xa9\xe4\xb8\xad \xf0\x9f\xa6\x99 12345\n\n  tabs\tand spaces ' > $S/encode/text.txt
# Checkpoints of the analysis the state targets resume (a 2-layer model with 32 neurons, 3 rows of 9).
$C synth -o $T/tiny.gguf --layers 2 --d 16 --heads 2 --d-mlp 32 --vocab 300 --ctx 16 >/dev/null
for i in 1 2 3 4 5 6; do printf 'the cat sat on the mat. ' >> $T/long.txt; done
$C ablate $T/tiny.gguf $T/long.txt --rows 3 --ctx 9 --checkpoint $S/scanstate/ablate.state >/dev/null
$C freq $T/tiny.gguf $T/long.txt --rows 3 --ctx 9 --top 5 --checkpoint $S/scanstate/freq.state >/dev/null
$C ablate $T/tiny.gguf $T/long.txt --rows 3 --ctx 9 --neurons 1.3,1.7 --exact-recompute --shard 2/3 --checkpoint $S/scanstate/brute-shard.state >/dev/null
$C induction $T/tiny.gguf $T/long.txt -N 4 --seqs 2 --neurons 1.0,1.1 --bos-ablate 0.1 --checkpoint $S/indstate/done.state >/dev/null
rm -rf $T
echo "seeds written to $S"
