# Front door for gofin. Everything goes through CMakePresets.json; build trees
# live in build/<preset>/.
#
#   make            build the release preset
#   make run        build the demo (release), run it with a gctrace and a GC timeline file
#   make test       build release, run ctest --preset release
#   (each target first installs the Debian packages it needs: scripts/setup.sh)
#   make debug      build + test the debug preset
#   make asan       build + test with AddressSanitizer + UBSan
#   make tsan       build + test with ThreadSanitizer
#   make bench      build release, run every bench/bench_* (and bench/compare/run.sh)
#   make soak       run the oracle soak test for $(SECONDS) seconds
#   make install    build release, install into $(PREFIX) (default /usr/local)
#   make docs       the HTML API reference (Doxygen) in build/docs/html/index.html
#   make format     clang-format -i on all sources
#   make tidy       clang-tidy over src/ (uses build/release/compile_commands.json)
#   make clean      remove build/

JOBS         ?= 2
SECONDS      ?= 60
CMAKE        ?= cmake
CTEST        ?= ctest
CLANG_FORMAT ?= clang-format
CLANG_TIDY   ?= clang-tidy

RELEASE_DIR := build/release
DEMO_BIN    := $(RELEASE_DIR)/demo/gofin_demo
ORACLE_BIN  := $(RELEASE_DIR)/tests/oracle/gofin_oracle
SOURCE_DIRS := $(wildcard include src tests bench demo)

# ThreadSanitizer (gcc 12 / clang 14) cannot cope with high-entropy ASLR on new
# kernels; run the tsan tests with randomisation off when the system allows it.
TSAN_WRAP := $(shell setarch $$(uname -m) -R true >/dev/null 2>&1 && echo "setarch $$(uname -m) -R")

SETUP := bash scripts/setup.sh
PREFIX ?= /usr/local

.PHONY: all build configure run test install debug asan tsan bench soak format tidy clean help docs

all: build

help:
	@sed -n '4,/^$$/s/^# \{0,1\}//p' Makefile

# The API reference: the public headers and the guides (docs/*.md, README.md as the main page).
docs:
	@$(SETUP) docs
	@mkdir -p build/docs
	doxygen docs/Doxyfile
	@echo "API reference: $(CURDIR)/build/docs/html/index.html"

configure:
	@$(SETUP) test
	$(CMAKE) --preset release

build: configure
	$(CMAKE) --build --preset release -j $(JOBS)
	@ln -sfn $(RELEASE_DIR)/compile_commands.json compile_commands.json

run:
	@$(SETUP) run
	$(CMAKE) --preset release
	$(CMAKE) --build --preset release -j $(JOBS) --target gofin_demo
	@test -x $(DEMO_BIN) || { echo "error: $(DEMO_BIN) was not built (demo/demo.cpp missing or GOFIN_BUILD_DEMO=OFF)" >&2; exit 1; }
	GOFIN_DEBUG=gctrace=1 GOFIN_TRACE=$(DEMO_BIN).trace.json ./$(DEMO_BIN)
	@echo "GC timeline: $(DEMO_BIN).trace.json (open it at ui.perfetto.dev or chrome://tracing)"

test: build
	$(CTEST) --preset release

install: build
	$(CMAKE) --install $(RELEASE_DIR) --prefix $(PREFIX)

debug:
	@$(SETUP) test
	$(CMAKE) --preset debug
	$(CMAKE) --build --preset debug -j $(JOBS)
	$(CTEST) --preset debug

asan:
	@$(SETUP) test
	$(CMAKE) --preset asan
	$(CMAKE) --build --preset asan -j $(JOBS)
	$(CTEST) --preset asan

tsan:
	@$(SETUP) test
	$(CMAKE) --preset tsan
	$(CMAKE) --build --preset tsan -j $(JOBS)
	$(TSAN_WRAP) $(CTEST) --preset tsan

bench:
	@$(SETUP) bench
	@$(MAKE) --no-print-directory build
	@set -e; n=0; \
	for b in $$(find $(RELEASE_DIR)/bench -maxdepth 1 -type f -name 'bench_*' -perm -u+x 2>/dev/null | sort); do \
	  echo "==> $$b"; "$$b"; n=$$((n + 1)); \
	done; \
	if [ -f bench/compare/run.sh ]; then \
	  echo "==> bench/compare/run.sh"; \
	  bash bench/compare/run.sh "$(CURDIR)/$(RELEASE_DIR)"; n=$$((n + 1)); \
	fi; \
	if [ $$n -eq 0 ]; then echo "error: no benchmarks found in $(RELEASE_DIR)/bench" >&2; exit 1; fi

soak: build
	@if [ -x $(ORACLE_BIN) ]; then \
	  echo "==> $(ORACLE_BIN) --seconds $(SECONDS)"; \
	  ./$(ORACLE_BIN) --seconds $(SECONDS); \
	else \
	  echo "error: the oracle isn't built ($(ORACLE_BIN) does not exist; it comes from tests/oracle/)" >&2; \
	  exit 1; \
	fi

format:
	find $(SOURCE_DIRS) -type f \( -name '*.hpp' -o -name '*.cpp' -o -name '*.h' -o -name '*.cc' \) -print0 \
	  | xargs -0 -r $(CLANG_FORMAT) -i

tidy: configure
	find src -type f -name '*.cpp' -print0 \
	  | xargs -0 -r -n 4 -P $(JOBS) $(CLANG_TIDY) -p $(RELEASE_DIR) --quiet

clean:
	rm -rf build
	@if [ -L compile_commands.json ]; then rm -f compile_commands.json; fi
