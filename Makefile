# pKVM-style guest_memfd shareability hypervisor: build, run and test on QEMU.
#
#   make run     boot QEMU: hyp at EL2, host shim at EL1, the default demo (exit 0 = demo passed)
#   make test    host unit tests, Miri, then on-target tests in QEMU
#
# Every QEMU run has a timeout. `make run LOG=debug` shows a trace of every host call and exit.

SHELL := /bin/bash
.DEFAULT_GOAL := run

TARGET      := aarch64-unknown-none-softfloat
OUT         := target/$(TARGET)/release
IMG         := target/images
CARGO_XT    := cargo build --release --target $(TARGET)
HOST_TRIPLE  = $(shell rustc -vV | sed -n 's/^host: //p')
OBJCOPY      = $(shell rustc --print sysroot)/lib/rustlib/$(HOST_TRIPLE)/bin/llvm-objcopy
MIRI_TOOLCHAIN := nightly-2026-05-20

LOG         ?= info
FAULT_PAD   ?= 0
TEST_LOG    ?= warn
QEMU_MEM_MIB ?= 512
TIMEOUT     ?= 60
DEBUG_TIMEOUT ?= 3600
QEMU        := qemu-system-aarch64
QEMU_BASE   := -M virt,virtualization=on,gic-version=3 -cpu max -m $(QEMU_MEM_MIB)M \
               -nographic -no-reboot
QEMU_FLAGS  := $(QEMU_BASE) -semihosting
QEMU_RUN     = timeout --foreground $(TIMEOUT) $(QEMU) $(QEMU_FLAGS)
# The host shim reads its mode and files from the semihosting command line.
semi_args    = -semihosting-config enable=on,target=native,arg=hyp$(subst $(space),,$(patsubst %,$(comma)arg=%,$(1)))
comma       := ,
space       := $(subst ,, )
SCENARIOS   ?= $(sort $(wildcard scenarios/*.scn))

HOST_CRATES   := -p abi -p board -p hyp-core -p hyp-mem -p scenario
TARGET_CRATES := -p abi -p board -p hyp-core -p hyp-mem -p scenario -p hyp -p host-shim -p guests -p ontarget \
                 -p target-tests-el1 -p target-tests-el2

.PHONY: run test test-host miri test-target debug lint clean setup images test-images guest-image \
        bench bench-pad-check bench-host selfcheck scenario scenarios scenario-selfcheck table table-check table-swap-test

## ---- set-up: everything a fresh machine lacks ------------------------------------------------
setup:
	@command -v $(QEMU) >/dev/null 2>&1 || { \
	  echo "== installing qemu-system-arm (apt-get)"; \
	  apt-get update && apt-get install -y qemu-system-arm; }
	@rustup toolchain install >/dev/null 2>&1 || rustup show active-toolchain >/dev/null
	@test -x "$(OBJCOPY)" || rustup component add llvm-tools

## ---- images -----------------------------------------------------------------------------------
GUEST_ENV = GUEST_IMAGE=$(abspath $(IMG)/step-guest.bin)

guest-image: setup
	$(CARGO_XT) -p guests
	@mkdir -p $(IMG)
	$(OBJCOPY) -O binary $(OUT)/step-guest $(IMG)/step-guest.bin

images: guest-image
	$(GUEST_ENV) HOST_LOG=$(LOG) $(CARGO_XT) -p host-shim
	@mkdir -p $(IMG)
	$(OBJCOPY) -O binary $(OUT)/host-shim $(IMG)/host-shim.bin
	HOST_IMAGE=$(abspath $(IMG)/host-shim.bin) HYP_LOG=$(LOG) FAULT_PAD=$(FAULT_PAD) $(CARGO_XT) -p hyp

test-images: guest-image
	$(GUEST_ENV) HOST_LOG=$(TEST_LOG) $(CARGO_XT) -p target-tests-el1
	@mkdir -p $(IMG)
	$(OBJCOPY) -O binary $(OUT)/host-tests $(IMG)/host-tests.bin
	HOST_TEST_IMAGE=$(abspath $(IMG)/host-tests.bin) QEMU_MEM_MIB=$(QEMU_MEM_MIB) \
	  HYP_LOG=$(TEST_LOG) $(CARGO_XT) -p target-tests-el2

## ---- run --------------------------------------------------------------------------------------
run: images
	$(QEMU_RUN) -kernel $(OUT)/hyp

# One scenario file: exits 0 only if every statement held. CHECK=1 runs the hyp's ownership
# invariant checker after every statement.
SCN_MODE = $(if $(filter 1,$(CHECK)),scenario-check,scenario)
scenario: images
	@test -n "$(FILE)" || { echo "usage: make scenario FILE=path/to/file.scn [CHECK=1]"; exit 2; }
	timeout --foreground $(TIMEOUT) $(QEMU) $(QEMU_BASE) $(call semi_args,$(SCN_MODE) $(FILE)) \
	  -kernel $(OUT)/hyp

# Every file in scenarios/ (one boot, one VM per file).
scenarios: images
	timeout --foreground $(TIMEOUT) $(QEMU) $(QEMU_BASE) $(call semi_args,scenario-check $(SCENARIOS)) \
	  -kernel $(OUT)/hyp

# The runner must be able to fail: a wrong expectation and a parse error.
scenario-selfcheck: images
	@echo "== scenario self-check: a wrong expectation and a parse error must fail"
	@set +e; timeout --foreground $(TIMEOUT) $(QEMU) $(QEMU_BASE) \
	  $(call semi_args,scenario tests/scenarios/wrong-expectation.scn) -kernel $(OUT)/hyp \
	  > target/scn-wrong.log 2>&1; st=$$?; sed 's/^/    wrong| /' target/scn-wrong.log | grep -v INFO; \
	  [ $$st -ne 0 ] && grep -q '^FAIL   6: host read g offset=0 expect=0x5b .*expected 0x5b .*got 0x5a' target/scn-wrong.log || \
	  { echo "FAIL: a wrong expectation was not reported"; exit 1; }
	@set +e; timeout --foreground $(TIMEOUT) $(QEMU) $(QEMU_BASE) \
	  $(call semi_args,scenario tests/scenarios/parse-error.scn) -kernel $(OUT)/hyp \
	  > target/scn-parse.log 2>&1; st=$$?; sed 's/^/    parse| /' target/scn-parse.log | grep -v INFO; \
	  [ $$st -ne 0 ] && grep -q 'line 5: ' target/scn-parse.log && ! grep -q '^ok ' target/scn-parse.log || \
	  { echo "FAIL: a parse error was not reported, or statements ran"; exit 1; }
	@echo "== scenario self-check: both failed as they must"

# The seed's table, inferred from probes on QEMU; one configuration file per row.
CONFIGS ?= scenarios/table
TABLE_ROWS = legacy pkvm coco-option1 coco-option2 noncoco-gmem noncoco-uaddr
table: images
	@set -o pipefail; timeout --foreground $(TIMEOUT) $(QEMU) $(QEMU_BASE) \
	  $(call semi_args,table $(foreach r,$(TABLE_ROWS),$(CONFIGS)/$(r).scn)) -kernel $(OUT)/hyp \
	  | tee target/table.log | grep -v '^SEED-TABLE-JSON '
	@grep '^SEED-TABLE-JSON ' target/table.log | sed 's/^SEED-TABLE-JSON //' | tr -d '\r' > target/seed-table.json
	@echo "wrote target/seed-table.json"

# make table must reproduce the seed's table.
table-check: table
	python3 tests/table-check.py target/seed-table.json tests/seed-table.expected.json

# The configurations are data: giving a row another row's configuration gives it that row's cells.
table-swap-test: images
	bash tests/table-swap.sh

debug: images
	@echo "QEMU waits for gdb on :1234. In another shell:"
	@echo "  gdb-multiarch $(OUT)/hyp -ex 'target remote :1234'"
	@echo "  (add-symbol-file $(OUT)/host-shim for the host shim)"
	timeout --foreground $(DEBUG_TIMEOUT) $(QEMU) $(QEMU_FLAGS) -s -S -kernel $(OUT)/hyp

## ---- tests ------------------------------------------------------------------------------------
test: test-host miri test-target scenario-selfcheck scenarios table-check table-swap-test

test-host: setup
	cargo test $(HOST_CRATES)

miri: setup
	@rustup toolchain list | grep -q '^$(MIRI_TOOLCHAIN)' || \
	  rustup toolchain install $(MIRI_TOOLCHAIN) --profile minimal --component miri,rust-src
	MIRIFLAGS=-Zmiri-disable-isolation CARGO_TARGET_DIR=target/miri \
	  cargo +$(MIRI_TOOLCHAIN) miri test $(HOST_CRATES)

# The self-check image must FAIL (proves the harness can), then the real suite must pass.
selfcheck: test-images
	@echo "== harness self-check: a deliberately failing image must report failure"
	@set +e; $(QEMU_RUN) -kernel $(OUT)/selfcheck-fail > target/selfcheck.log 2>&1; st=$$?; \
	  sed 's/^/    selfcheck| /' target/selfcheck.log; \
	  if [ $$st -eq 0 ]; then echo "FAIL: the self-check image exited 0"; exit 1; fi; \
	  grep -q '^test selfcheck_a_passes ... ok' target/selfcheck.log && \
	  grep -q '^test selfcheck_b_fails_an_assertion ... FAILED' target/selfcheck.log && \
	  grep -q '^test selfcheck_c_traps_at_el2 ... FAILED: exception' target/selfcheck.log && \
	  grep -q '^1 passed, 2 failed' target/selfcheck.log || \
	  { echo "FAIL: the self-check image did not report its failures as expected"; exit 1; }; \
	  echo "== harness self-check: failed as it must (status $$st)"

test-target: selfcheck
	$(QEMU_RUN) -kernel $(OUT)/hyp-tests

## ---- benchmarks -------------------------------------------------------------------------------
bench-host: setup
	cargo bench -p bench-host

# Instruction counts on QEMU: -icount shift=0 makes INST_RETIRED exact. FAULT_PAD=N builds the hyp
# with N extra nops on the stage-2 fault path (fault_4k_el2 must rise by exactly N).
BENCH_MEM_MIB := 2048
bench: setup
	@test -s target/convert_1g_host_ns || $(MAKE) bench-host
	$(MAKE) images FAULT_PAD=$(FAULT_PAD)
	@set -o pipefail; timeout --foreground 600 $(QEMU) $(subst -m $(QEMU_MEM_MIB)M,-m $(BENCH_MEM_MIB)M,$(QEMU_BASE)) \
	  -icount shift=0,sleep=off $(call semi_args,bench target/convert_1g_host_ns) -kernel $(OUT)/hyp \
	  | tee target/bench.log | grep -v '^BENCH-JSON '
	@grep '^BENCH-JSON ' target/bench.log | sed 's/^BENCH-JSON //' | tr -d '\r' > target/bench.json
	@echo "wrote target/bench.json"

# Proves the fault count: with FAULT_PAD=64 fault_4k_el2 must be exactly 64 more.
bench-pad-check: setup
	$(MAKE) bench FAULT_PAD=0 && cp target/bench.json target/bench-pad0.json
	$(MAKE) bench FAULT_PAD=64 && cp target/bench.json target/bench-pad64.json
	python3 -c 'import json; a=json.load(open("target/bench-pad0.json"))["fault_4k_el2"]; b=json.load(open("target/bench-pad64.json"))["fault_4k_el2"]; print(f"fault_4k_el2: {a} -> {b} with FAULT_PAD=64"); exit(0 if b - a == 64 else 1)'
	$(MAKE) images FAULT_PAD=0

## ---- lint -------------------------------------------------------------------------------------
lint: images test-images
	cargo fmt --all -- --check
	cargo clippy $(HOST_CRATES) -p bench-host --all-targets -- -D warnings
	$(GUEST_ENV) HOST_IMAGE=$(abspath $(IMG)/host-shim.bin) \
	  HOST_TEST_IMAGE=$(abspath $(IMG)/host-tests.bin) QEMU_MEM_MIB=$(QEMU_MEM_MIB) \
	  cargo clippy --release --target $(TARGET) $(TARGET_CRATES) -- -D warnings

clean:
	cargo clean

## ---- the hostile suite (scenarios/hostile-*.scn) -----------------------------------------------
# Each file of the hostile suite in a boot of its own, so a hyp crash or hang fails that file
# only; the invariant checker runs after every statement. First a self-check: a `repeat` with a
# wrong expectation and wrong alternatives must fail. Logs: target/hostile-<file>.log.
HOSTILE ?= $(sort $(wildcard scenarios/hostile-*.scn))
HOSTILE_TIMEOUT ?= 60
# `make scenarios` (one boot for every file) keeps to the conformance files: the hostile files
# run here, one boot each.
SCENARIOS := $(filter-out $(HOSTILE),$(SCENARIOS))
.PHONY: hostile hostile-selfcheck
hostile: hostile-selfcheck
	@set +e; failed=""; n=0; \
	for f in $(HOSTILE); do \
	  n=$$((n + 1)); log=target/$$(basename $$f .scn).log; \
	  $(MAKE) --no-print-directory -o images scenario FILE=$$f CHECK=1 TIMEOUT=$(HOSTILE_TIMEOUT) \
	    > $$log 2>&1; st=$$?; \
	  sum=$$(grep -a "^   $$f: " $$log | sed 's/^ *//'); \
	  if [ $$st -eq 0 ]; then echo "ok     $$sum"; \
	  else echo "FAIL   $${sum:-$$f: no verdict (crash or timeout, status $$st)}"; \
	    grep -a '^FAIL' $$log | sed 's/^/         /'; failed="$$failed $$f"; fi; \
	done; \
	if [ -n "$$failed" ]; then echo "hostile: $$(echo $$failed | wc -w) of $$n files failed:$$failed"; exit 1; fi; \
	echo "hostile: all $$n files passed"

hostile-selfcheck: images
	@set +e; mkdir -p target; $(MAKE) --no-print-directory -o images scenario \
	  FILE=tests/scenarios/wrong-repeat.scn CHECK=1 > target/hostile-selfcheck.log 2>&1; st=$$?; \
	  [ $$st -ne 0 ] && grep -aq '^FAIL   8: repeat 3 .* got 0x00 (1), 0x5a (2); ok (3) ' target/hostile-selfcheck.log && \
	  grep -aq '^ok     9: ' target/hostile-selfcheck.log && grep -aq '^FAIL  10: ' target/hostile-selfcheck.log && \
	  grep -aq '^3 passed, 2 failed' target/hostile-selfcheck.log || \
	  { sed 's/^/    selfcheck| /' target/hostile-selfcheck.log; \
	    echo "FAIL: a wrong repeat or wrong alternatives were not reported"; exit 1; }; \
	  echo "== hostile self-check: a wrong repeat and wrong alternatives failed as they must"
