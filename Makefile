# Performer protein LM service. `make` builds bin/performer and bin/performerd; `make test` runs
# every test; `make asan-test` runs them again under AddressSanitizer + UBSan.
CC      ?= cc
OPT     ?= -O3 -march=native
SAN     ?=
BIN     ?= bin
OBJ     ?= build/obj
FOPENMP ?= -fopenmp
CFLAGS  += $(OPT) $(SAN) -g -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror $(FOPENMP) -Imodel -Iserver
LDFLAGS += $(SAN) $(FOPENMP)
OPENBLAS_DIR ?= /usr/lib/x86_64-linux-gnu/openblas-openmp
LDLIBS_MODEL  = -L$(OPENBLAS_DIR) -Wl,-rpath,$(OPENBLAS_DIR) -lopenblas -ljansson -lcrypto -lm -lpthread
LDLIBS_SERVER = -lmicrohttpd -lsqlite3 $(LDLIBS_MODEL)

MODEL_SRC  := $(filter-out model/cli.c,$(wildcard model/*.c))
SERVER_SRC := $(filter-out server/main.c,$(wildcard server/*.c))
MODEL_OBJ  := $(MODEL_SRC:%.c=$(OBJ)/%.o)
SERVER_OBJ := $(SERVER_SRC:%.c=$(OBJ)/%.o)
UNIT_SRC   := $(wildcard tests/unit/test_*.c)
UNIT_BIN   := $(UNIT_SRC:tests/unit/%.c=$(BIN)/tests/%)
PROGS      := $(BIN)/performer $(if $(wildcard server/main.c),$(BIN)/performerd)

.PHONY: all test unit asan asan-test fixtures deps run data breakdown bench clean docker-test fuzz fuzz-build fuzz-run
all: $(PROGS) $(UNIT_BIN)

$(OBJ)/%.o: %.c $(wildcard model/*.h server/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# The CLI shares the task, submission and JSON code of the daemon (no HTTP, no SQLite in them).
CLI_SERVER_OBJ := $(addprefix $(OBJ)/server/,task.o predict.o batch.o util.o)

$(BIN)/performer: $(OBJ)/model/cli.o $(MODEL_OBJ) $(CLI_SERVER_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS_MODEL)

# server/page.c embeds server/page.html (assembler .incbin): rebuild it when the page changes.
$(OBJ)/server/page.o: server/page.html
$(OBJ)/server/openapi.o: server/openapi.json

$(BIN)/performerd: $(OBJ)/server/main.o $(SERVER_OBJ) $(MODEL_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS_SERVER)

$(BIN)/tests/%: tests/unit/%.c $(MODEL_OBJ) $(SERVER_OBJ) $(wildcard tests/unit/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit $< $(MODEL_OBJ) $(SERVER_OBJ) -o $@ $(LDFLAGS) $(LDLIBS_SERVER)

# The whole suite: unit + reference + end-to-end tests. Prints "N passed, N failed".
test: all
	BIN=$(BIN) bash tests/run.sh

asan:
	$(MAKE) BIN=build/asan/bin OBJ=build/asan/obj OPT="-O1 -fno-omit-frame-pointer" SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" all

asan-test: asan
	ASAN_OPTIONS=detect_leaks=1 PF_SANITIZED=1 BIN=build/asan/bin bash tests/run.sh

# Regenerates the PyTorch reference fixtures (needs Debian python3-torch).
fixtures:
	/usr/bin/python3 tests/reference/make_fixtures.py tests/fixtures

deps:
	bash .ci/deps.sh

weights/model.safetensors:
	$(MAKE) $(BIN)/performer
	$(BIN)/performer init --out $@ --seed 1

run: all weights/model.safetensors
	@mkdir -p var
	$(BIN)/performerd --weights weights/model.safetensors --db var/cache.sqlite

# ---- fuzzing (libFuzzer; Debian clang + libclang-rt-14-dev) ----
FUZZ_TARGETS := request tokenizer safetensors
FUZZ_SECONDS ?= 60
FUZZ_SAN = -fsanitize=address,undefined -fno-sanitize-recover=undefined
fuzz:
	$(MAKE) CC=clang FOPENMP=-fopenmp=libgomp OBJ=build/fuzz/obj BIN=build/fuzz/bin \
	    OPT="-O1 -fno-omit-frame-pointer" SAN="-fsanitize=fuzzer-no-link $(FUZZ_SAN)" fuzz-build

fuzz-build: $(FUZZ_TARGETS:%=$(BIN)/fuzz_%)

$(BIN)/fuzz_%: tests/fuzz/fuzz_%.c $(MODEL_OBJ) $(SERVER_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(MODEL_OBJ) $(SERVER_OBJ) -o $@ -fsanitize=fuzzer $(FUZZ_SAN) $(FOPENMP) $(LDLIBS_SERVER)

# Runs every fuzz target for FUZZ_SECONDS each from the committed seed corpora (new inputs go to
# build/fuzz/corpus, crashes to build/fuzz/crash-*); fails on the first crash.
fuzz-run: fuzz
	bash tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# ---- benchmarks (not part of `make test`; see bench/README.md) ----
$(BIN)/bench/bench_forward: bench/bench_forward.c $(MODEL_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(MODEL_OBJ) -o $@ $(LDFLAGS) $(LDLIBS_MODEL)

# Writes bench/RESULTS.md and bench/forward.png (14-30 minutes on 2 cores; run on an idle
# machine). WEIGHTS=file benchmarks other weights; SMOKE=1 is a seconds-long check of the pipeline.
bench: $(PROGS) $(BIN)/bench/bench_forward
	BIN=$(BIN) WEIGHTS=$(WEIGHTS) SMOKE=$(SMOKE) bash bench/run.sh

# Builds the training corpus from Debian's metastudent-data (see weights/DATA.md).
data:
	bash weights/make_data.sh

# Test-split quality by similarity to the training split and by length (weights/breakdown.sh; needs data).
breakdown: $(PROGS)
	BIN=$(BIN) bash weights/breakdown.sh $(WEIGHTS)

# Builds the container image with podman and runs it end to end (docker/test.sh).
docker-test:
	bash docker/test.sh

clean:
	rm -rf build bin
