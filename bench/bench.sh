#!/usr/bin/env bash
# confreg benchmark: figures and ratios measured in one run on this machine.
#   bench/bench.sh [--quick] [--llama-bench PATH] [--shared DIR] [--work DIR]
# Prints one table (markdown) on stdout; progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0; LLAMA=""; SHARED=../shared; WORK=${TMPDIR:-/tmp}/confreg-bench
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --llama-bench) LLAMA=$2; shift ;;
        --shared) SHARED=$2; shift ;;
        --work) WORK=$2; shift ;;
        *) echo "bench.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
C=./confreg
[ -x $C ] || make -s confreg
mkdir -p "$WORK"
log() { echo "bench: $*" >&2; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
field() { grep -o "\"$1\": [-0-9.e+]*" | head -1 | awk '{print $2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }'; }
rows=()
row() { rows+=("| $1 | $2 | $3 | $4 |"); }

if [ $QUICK = 1 ]; then P=128; N=16; REPS=1; ROWS=4; else P=512; N=128; REPS=3; ROWS=16; fi
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; $(date -u +%Y-%m-%d); confreg $($C --version | cut -d' ' -f2-)"
echo

# A GPT-2-small-shaped model with random weights and the real GPT-2 vocabulary (so llama.cpp can load it).
TOK=""
[ -f "$SHARED/tokenizers/gpt2/vocab.bpe" ] && TOK="--tokenizer $SHARED/tokenizers/gpt2"
if [ ! -f "$WORK/gpt2s-f32.gguf" ]; then
    log "writing GPT-2-small-shaped models"
    $C synth --preset gpt2-small $TOK -o "$WORK/gpt2s-f32.gguf" >/dev/null
    $C convert "$WORK/gpt2s-f32.gguf" --dtype f16 -o "$WORK/gpt2s-f16.gguf" 2>/dev/null
    $C convert "$WORK/gpt2s-f32.gguf" --dtype q8_0 -o "$WORK/gpt2s-q8_0.gguf" 2>/dev/null
fi

for dt in f32 f16 q8_0; do
    for t in 1 2; do
        log "speed $dt, $t thread(s)"
        out=$($C speed "$WORK/gpt2s-$dt.gguf" -p $P -n $N --threads $t --reps $REPS --json)
        pp=$(echo "$out" | field pp_tokens_per_s); tg=$(echo "$out" | field tg_tokens_per_s)
        lpp=""; ltg=""
        if [ -n "$LLAMA" ]; then
            log "llama-bench $dt, $t thread(s)"
            lj=$("$LLAMA" -m "$WORK/gpt2s-$dt.gguf" -t $t -p $P -n $N -r $REPS -o json 2>/dev/null || true)
            lpp=$(echo "$lj" | tr -d '\n ' | grep -o '"n_prompt":'$P',"n_gen":0[^}]*"avg_ts":[0-9.e+]*' | grep -o '"avg_ts":[0-9.e+]*' | cut -d: -f2 | head -1)
            ltg=$(echo "$lj" | tr -d '\n ' | grep -o '"n_prompt":0,"n_gen":'$N'[^}]*"avg_ts":[0-9.e+]*' | grep -o '"avg_ts":[0-9.e+]*' | cut -d: -f2 | head -1)
        fi
        row "prompt $P tokens, GPT-2 small, ${dt^^}, $t thr" "$pp tok/s" "${lpp:+$lpp tok/s}" "${lpp:+$(ratio "$pp" "$lpp")}"
        row "decode $N tokens, GPT-2 small, ${dt^^}, $t thr" "$tg tok/s" "${ltg:+$ltg tok/s}" "${ltg:+$(ratio "$tg" "$ltg")}"
    done
done

for t in 1 2; do
    log "Q8_0 matrix-vector bandwidth, $t thread(s)"
    mib=1024; [ $QUICK = 1 ] && mib=256
    gbs=$($C speed --matvec-mib $mib --threads $t --reps $REPS --json | field gb_per_s_per_thread)
    row "Q8_0 matrix-vector, $mib MiB, $t thr" "$gbs GB/s per thread" "" ""
done

TEXT=data/tinystories-heldout.txt
ABL_MODEL="$WORK/gpt2s-q8_0.gguf"
if [ -n "$TOK" ]; then
    log "full final-layer ablation of GPT-2 small ($ROWS rows): TE + DE + KL"
    out=$($C ablate "$ABL_MODEL" $TEXT --rows $ROWS --json --no-weights --no-freq-mediation)
    secs=$(echo "$out" | field seconds); toks=$(echo "$out" | field tokens)
    row "ablate 3072 neurons x $toks tokens, GPT-2 small Q8_0, 2 thr: TE + DE + KL" "$secs s" "" "target <= 120 s"
    log "the same with the frequency-mediated effect (a third exponential per entry)"
    fout=$($C ablate "$ABL_MODEL" $TEXT --rows $ROWS --json --no-weights)
    row "the same plus de_freq / freq_frac" "$(echo "$fout" | field seconds) s" "" ""
    if [ $QUICK = 0 ]; then
        log "brute-force recompute of 2 neurons, for comparison"
        bout=$($C ablate "$ABL_MODEL" $TEXT --rows $ROWS --json --no-weights --no-freq-mediation --neurons 11.0,11.1 --exact-recompute)
        bsecs=$(echo "$bout" | field seconds)
        est=$(awk -v s="$bsecs" 'BEGIN { printf "%.0f", s / 2 * 3072 }')
        row "brute force, same scan (2 neurons, x 3072/2)" "$est s (estimated)" "" "fast path $(ratio "$est" "$secs")x faster"
    fi
fi
log "full final-layer ablation of the default model ($ROWS rows)"
out=$($C ablate data/gpt2-tiny-q8_0.gguf $TEXT --rows $ROWS --json --no-weights)
row "ablate 512 neurons x $(echo "$out" | field tokens) tokens, default model, 2 thr" "$(echo "$out" | field seconds) s" "" ""
if [ $QUICK = 0 ]; then
    bout=$($C ablate data/gpt2-tiny-q8_0.gguf $TEXT --rows $ROWS --json --no-weights --neurons 3.0,3.1,3.2,3.3 --exact-recompute)
    est=$(awk -v s="$(echo "$bout" | field seconds)" 'BEGIN { printf "%.1f", s / 4 * 512 }')
    row "brute force, same scan (4 neurons, x 512/4)" "$est s (estimated)" "" "fast path $(ratio "$est" "$(echo "$out" | field seconds)")x faster"
fi

log "peak memory of eval"
for dt in q8_0 f16; do
    rss=$($C eval "$WORK/gpt2s-$dt.gguf" $TEXT --rows 2 --json | field peak_rss_mib)
    size=$(stat -c %s "$WORK/gpt2s-$dt.gguf")
    limit=$(awk -v s="$size" 'BEGIN { printf "%.0f", (1.2 * s + 64 * 1048576) / 1048576 }')
    row "eval peak RSS, GPT-2 small ${dt^^} ($((size / 1048576)) MiB file)" "$rss MiB" "" "target <= $limit MiB"
done

echo "| measurement | confreg | llama.cpp | ratio / note |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
