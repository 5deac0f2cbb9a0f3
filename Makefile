# confreg -- build, test, check, install.  `make PORTABLE=1` builds with no ISA assumptions.
CC      ?= cc
PREFIX  ?= /usr/local
SHARED  ?= ../shared
CFLAGS  ?= -O2
WARN     = -std=c11 -Wall -Wextra -Wshadow -Wno-unknown-pragmas
OPENMP  := $(shell echo 'int main(void){return 0;}' | $(CC) -fopenmp -x c - -o /dev/null 2>/dev/null && echo -fopenmp)
ifeq ($(PORTABLE),1)
  ARCHFLAGS = -DCONFREG_PORTABLE
else
  ARCHFLAGS := $(shell echo 'int main(void){return 0;}' | $(CC) -march=native -x c - -o /dev/null 2>/dev/null && echo -march=native)
endif
ALLFLAGS = $(WARN) $(CFLAGS) $(ARCHFLAGS) $(OPENMP)
SAN      = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined

.PHONY: all test check clean install data bench bench-quick test-arm fuzz valgrind

all: confreg

confreg: confreg.c confreg.h
	$(CC) $(ALLFLAGS) -o $@ confreg.c -lm

tests/test_confreg: tests/test_confreg.c tests/*.inc confreg.c confreg.h
	$(CC) $(ALLFLAGS) -Wno-unused-function -Wno-format-truncation -o $@ tests/test_confreg.c -lm

test: confreg tests/test_confreg
	./tests/test_confreg ./confreg $(SHARED)

# The whole suite under AddressSanitizer and UndefinedBehaviorSanitizer (binary and library).
check: confreg.c confreg.h tests/test_confreg.c tests/*.inc
	$(CC) $(WARN) $(SAN) $(ARCHFLAGS) -o confreg-san confreg.c -lm
	$(CC) $(WARN) $(SAN) $(ARCHFLAGS) -Wno-unused-function -Wno-format-truncation -o tests/test_confreg-san tests/test_confreg.c -lm
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ./tests/test_confreg-san ./confreg-san $(SHARED)

# Rebuilds the embedded default model from ../shared (the result is committed in data/).
data: confreg
	./confreg convert $(SHARED)/models/gpt2-tiny --tokenizer $(SHARED)/tokenizers/gpt2 --dtype q8_0 --tied -o data/gpt2-tiny-q8_0.gguf

install: confreg
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/include
	install -m 755 confreg $(DESTDIR)$(PREFIX)/bin/confreg
	install -m 644 confreg.h $(DESTDIR)$(PREFIX)/include/confreg.h

clean:
	rm -f confreg confreg-san confreg-vg confreg-a76 confreg-a72 tests/test_confreg tests/test_confreg-san tests/test_confreg-a76 tests/test_confreg-a72

# Benchmarks (figures, not tests): `make bench LLAMA_BENCH=/path/to/llama-bench` adds llama.cpp.
LLAMA_BENCH ?=
bench: confreg
	bench/bench.sh --shared $(SHARED) $(if $(LLAMA_BENCH),--llama-bench $(LLAMA_BENCH))

bench-quick: confreg
	bench/bench.sh --quick --shared $(SHARED) $(if $(LLAMA_BENCH),--llama-bench $(LLAMA_BENCH))

# The suite on aarch64 under qemu-user, twice: Pi 5 (Cortex-A76, dotprod) and Pi 4 (Cortex-A72,
# no dotprod), so both NEON paths of every kernel run on every change.
ARM_CC ?= aarch64-linux-gnu-gcc
ARM_FLAGS = -std=c11 -O2 -Wall -Wextra -Wno-unknown-pragmas -fopenmp
test-arm:
	$(ARM_CC) $(ARM_FLAGS) -mcpu=cortex-a76 -o confreg-a76 confreg.c -lm
	$(ARM_CC) $(ARM_FLAGS) -fno-tree-vectorize -Wno-unused-function -Wno-format-truncation -mcpu=cortex-a76 -o tests/test_confreg-a76 tests/test_confreg.c -lm
	CONFREG_TEST_EMULATED=1 QEMU_LD_PREFIX=/usr/aarch64-linux-gnu qemu-aarch64 -cpu cortex-a76 tests/test_confreg-a76 "qemu-aarch64 -cpu cortex-a76 ./confreg-a76" $(SHARED)
	$(ARM_CC) $(ARM_FLAGS) -mcpu=cortex-a72 -o confreg-a72 confreg.c -lm
	$(ARM_CC) $(ARM_FLAGS) -fno-tree-vectorize -Wno-unused-function -Wno-format-truncation -mcpu=cortex-a72 -o tests/test_confreg-a72 tests/test_confreg.c -lm
	CONFREG_TEST_EMULATED=1 QEMU_LD_PREFIX=/usr/aarch64-linux-gnu qemu-aarch64 -cpu cortex-a72 tests/test_confreg-a72 "qemu-aarch64 -cpu cortex-a72 ./confreg-a72" $(SHARED)

# Coverage-guided fuzzing of every parser (clang's libFuzzer + ASan + UBSan).  Each target
# starts from tests/fuzz/seeds/<target> and runs FUZZ_SECONDS; crashes land in
# fuzz-out/<target>/ and belong in tests/fuzz/regressions/<target>/ once fixed.
FUZZ_TARGETS = safetensors config gguf llama2c tokjson gpt2vocab tokbin unigram json encode scanstate indstate
FUZZ_SECONDS ?= 60
FUZZ_SEED ?= 1
CLANG ?= clang
fuzz: $(FUZZ_TARGETS:%=fuzz-%)
fuzz-%: confreg.c confreg.h tests/fuzz/fuzz.c
	@mkdir -p fuzz-out/$* fuzz-out/$*-corpus
	$(CLANG) -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -DFUZZ_$(shell echo $* | tr a-z A-Z) -o fuzz-out/fuzz-$* tests/fuzz/fuzz.c -lm
	@if [ -d tests/fuzz/regressions/$* ]; then ./fuzz-out/fuzz-$* -runs=0 tests/fuzz/regressions/$*; fi
	@./fuzz-out/fuzz-$* -seed=$(FUZZ_SEED) -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
	    -artifact_prefix=fuzz-out/$*/ -print_final_stats=1 fuzz-out/$*-corpus tests/fuzz/seeds/$* > fuzz-out/$*.log 2>&1; \
	    status=$$?; grep -E "ERROR|SUMMARY|number_of_executed_units|Test unit written" fuzz-out/$*.log; \
	    echo "fuzz-$*: exit $$status"; exit $$status

# A representative command set under valgrind's memcheck (no leaks, no invalid accesses),
# including checkpointed shards and their merge.
VALGRIND = valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite
# valgrind knows AVX2 but not AVX-512, so this binary is built for x86-64-v3 (AVX2, FMA, F16C)
# where the compiler offers it, and with no ISA assumptions otherwise.
VG_ARCH := $(shell echo 'int main(void){return 0;}' | $(CC) -march=x86-64-v3 -x c - -o /dev/null 2>/dev/null && echo -march=x86-64-v3 || echo -DCONFREG_PORTABLE)
valgrind: confreg.c confreg.h
	$(CC) $(WARN) -O1 -g $(VG_ARCH) -o confreg-vg confreg.c -lm
	@rm -rf vg-out && mkdir -p vg-out
	$(VALGRIND) ./confreg-vg info data/gpt2-tiny-q8_0.gguf > /dev/null
	$(VALGRIND) ./confreg-vg tokenize data/gpt2-tiny-q8_0.gguf --text "Hello world, valgrind." > /dev/null
	$(VALGRIND) ./confreg-vg eval data/gpt2-tiny-q8_0.gguf data/tinystories-heldout.txt --rows 1 --ctx 32 --threads 1 > /dev/null
	$(VALGRIND) ./confreg-vg synth -o vg-out/s.gguf --layers 1 --d 32 --heads 2 --d-mlp 64 --ctx 64 --dtype q8_0 > /dev/null
	$(VALGRIND) ./confreg-vg ablate vg-out/s.gguf data/tinystories-heldout.txt --rows 1 --ctx 32 --threads 1 --csv > /dev/null
	$(VALGRIND) ./confreg-vg report vg-out/s.gguf data/tinystories-heldout.txt --rows 1 --ctx 32 -N 8 --seqs 2 --threads 1 -o vg-out/report
	$(VALGRIND) ./confreg-vg freq vg-out/s.gguf data/tinystories-heldout.txt --rows 2 --ctx 32 --threads 1 --shard 1/2 --checkpoint vg-out/p1.ckpt > /dev/null
	$(VALGRIND) ./confreg-vg freq vg-out/s.gguf data/tinystories-heldout.txt --rows 2 --ctx 32 --threads 1 --shard 2/2 --checkpoint vg-out/p2.ckpt > /dev/null
	$(VALGRIND) ./confreg-vg merge vg-out/p1.ckpt vg-out/p2.ckpt --json > /dev/null
	$(VALGRIND) ./confreg-vg induction vg-out/s.gguf data/tinystories-heldout.txt -N 8 --seqs 2 --threads 1 --checkpoint vg-out/i.ckpt > /dev/null
	$(VALGRIND) ./confreg-vg generate vg-out/s.gguf --prompt "ab" -n 4 --threads 1 > /dev/null
	@rm -rf vg-out
	@echo "valgrind: clean"
