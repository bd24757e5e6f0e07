# pKVM-style guest_memfd shareability hypervisor: build, run and test on QEMU.
#
#   make run     boot QEMU: hyp at EL2, host shim at EL1, the default demo (exit 0 = demo passed)
#   make test    host unit tests, Miri, then on-target tests in QEMU
#
# Every QEMU run has a timeout. `make run LOG=debug` shows a trace of every host call and exit.
#
# Product runs (run, scenarios, table, bench) have no semihosting (Trust rule 11): the host
# shim's mode and files reach it as a blob that QEMU's generic loader puts into host RAM
# (tools/mkblob.py), and the verdict leaves as one console line that tools/qemu-run.py turns
# into the exit status. Only test images, whose every EL1 is trusted test code, use semihosting.

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
SMP         ?= 2
QEMU        := qemu-system-aarch64
# The machine: no ITS, no NIC, no PCIe device, and no LPIs: QEMU 7.2's redistributors of the
# current virt machine type implement LPIs even with its=off (GICR_TYPER.PLPIS = 1), reading and
# writing pending and property tables at addresses the host programs, behind every stage-2. The
# virt-6.1 machine type predates TCG LPI support (PLPIS = 0: no tables at all); nothing else it
# changes matters here (-smp counts sockets rather than cores; the high-memory layout above
# 4 GiB). tests/el1 checks PLPIS = 0 on every redistributor.
QEMU_MACHINE ?= virt-6.1
QEMU_BASE   := -M $(QEMU_MACHINE),virtualization=on,gic-version=3,its=off -cpu max -smp $(SMP) \
               -m $(QEMU_MEM_MIB)M -nographic -no-reboot -nic none
# Test images only (every EL1 is trusted test code): the verdict is semihosting's exit status.
QEMU_FLAGS  := $(QEMU_BASE) -semihosting
QEMU_RUN     = timeout --foreground $(TIMEOUT) $(QEMU) $(QEMU_FLAGS)
comma       := ,
space       := $(subst ,, )

# ---- product runs: no semihosting ----
# The two hyp images: hyp-run.elf (make run: no introspection host calls) and hyp.elf (scenarios,
# table, benchmarks, the hostile suite: with them).
HYP_RUN     := $(IMG)/hyp-run.elf
HYP_INTRO   := $(IMG)/hyp.elf
HYP_UNFENCED := $(IMG)/hyp-unfenced.elf
# board::layout::HOST_INPUT_BASE: where the generic loader puts the host input blob.
HOST_INPUT_ADDR := 0x4a000000
BLOBS       := target/blobs
# fw_cfg item for `host dma-write`: 256 bytes holding 0..255.
DMA_BYTES   := target/dma-bytes.bin
PRODUCT_DEVICES = -fw_cfg name=opt/dma-bytes,file=$(DMA_BYTES)
QEMU_WRAP    = python3 tools/qemu-run.py --timeout $(TIMEOUT)
# $(call blob,<name>,<mode and operands>): builds $(BLOBS)/<name>.blob (operands that are files
# are embedded).
blob         = mkdir -p $(BLOBS) && python3 tools/mkblob.py -o $(BLOBS)/$(1).blob $(2)
# $(call product_run,<hyp image>,<blob name or empty>[,<more QEMU flags>]): one product boot
# under the wrapper (timeout, verdict line -> exit status, no semihosting).
product_run  = $(QEMU_WRAP) -- $(QEMU) $(QEMU_BASE) $(PRODUCT_DEVICES) $(3) \
               $(if $(2),-device loader$(comma)file=$(BLOBS)/$(2).blob$(comma)addr=$(HOST_INPUT_ADDR)$(comma)force-raw=on) \
               -kernel $(1)
LLVM_BIN     = $(shell rustc --print sysroot)/lib/rustlib/$(HOST_TRIPLE)/bin
SCENARIOS   ?= $(sort $(wildcard scenarios/*.scn))

HOST_CRATES   := -p abi -p board -p hyp-core -p hyp-mem -p hyp-calls -p scenario -p trap-frame
# Miri where `unsafe` is and host tests reach it: `hyp-mem` (its stage-2 tables and pools over raw
# pointers), all of its tests. `hyp-calls` forbids `unsafe`: under Miri it runs the tests that drive
# hyp-mem's tables and pools through the fault path, the exits and their completion, and the
# guest's conversions (`MIRI_CALLS_TESTS`); its argument checks run natively (`test-host`), where
# Miri would add a minute per test and find nothing.
# `abi`, `hyp-core` and `scenario` forbid `unsafe`; `board`'s is MMIO that only the bare-metal
# images run. `-Zmiri-permissive-provenance`: a VM heap finds a page's header from an object's
# address through the page's exposed pointer (hyp-mem/src/heap.rs), which Miri checks that way.
MIRI_CRATES   := -p hyp-mem
# Since per-VM heaps (the tests' global allocator routes to them) each of these takes ~35 s under
# Miri: the exits and the guest's conversions and relinquish.
MIRI_CALLS_TESTS := tests::exits tests::guest_calls::mem_share_is_validated_at_el2 \
                    tests::guest_calls::relinquish
TARGET_CRATES := -p abi -p board -p hyp-core -p hyp-mem -p hyp-calls -p scenario -p hyp -p host-shim -p guests -p ontarget \
                 -p target-tests-el1 -p target-tests-el2

.PHONY: storm storm-target fuzz run test test-host miri test-target debug lint clean setup images test-images guest-image \
        bench bench-pad-check bench-host selfcheck scenario scenarios scenario-selfcheck table table-check table-swap-test \
        trust-checks qemu-run-selfcheck semihost-check introspection-check dma-check

## ---- set-up: everything a fresh machine lacks ------------------------------------------------
setup:
	@command -v $(QEMU) >/dev/null 2>&1 || { \
	  echo "== installing qemu-system-arm (apt-get)"; \
	  apt-get update && apt-get install -y qemu-system-arm; }
	@rustup toolchain install >/dev/null 2>&1 || rustup show active-toolchain >/dev/null
	@test -x "$(OBJCOPY)" || rustup component add llvm-tools

## ---- images -----------------------------------------------------------------------------------
GUEST_ENV = GUEST_IMAGE=$(abspath $(IMG)/step-guest.bin)

# $(call flat,<elf>,<bin>): objcopy to a flat binary, touching <bin> only when it changed (the
# images that include it are then not rebuilt for nothing).
flat = $(OBJCOPY) -O binary $(1) $(2).new && { cmp -s $(2).new $(2) && rm $(2).new || mv $(2).new $(2); }

guest-image: setup
	$(CARGO_XT) -p guests
	@mkdir -p $(IMG)
	@$(call flat,$(OUT)/step-guest,$(IMG)/step-guest.bin)

HYP_ENV = HOST_IMAGE=$(abspath $(IMG)/host-shim.bin) HYP_LOG=$(LOG) FAULT_PAD=$(FAULT_PAD)

# One host shim, two hyps around it (cargo keeps both feature sets' builds, so neither is rebuilt
# when the other was built last).
images: guest-image $(DMA_BYTES)
	$(GUEST_ENV) HOST_LOG=$(LOG) $(CARGO_XT) -p host-shim
	@mkdir -p $(IMG)
	@$(call flat,$(OUT)/host-shim,$(IMG)/host-shim.bin)
	cp $(OUT)/host-shim $(IMG)/host-shim.elf
	$(HYP_ENV) $(CARGO_XT) -p hyp
	cp $(OUT)/hyp $(HYP_RUN)
	$(HYP_ENV) $(CARGO_XT) -p hyp --features introspection
	cp $(OUT)/hyp $(HYP_INTRO)

# Only for `make dma-check`: a hyp that maps every device for the host, as it once did.
$(HYP_UNFENCED): images
	$(HYP_ENV) $(CARGO_XT) -p hyp --features introspection,unfenced-devices
	cp $(OUT)/hyp $(HYP_UNFENCED)

$(DMA_BYTES):
	@mkdir -p $(dir $@)
	python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(256)))' > $@

test-images: guest-image
	$(GUEST_ENV) HOST_LOG=$(TEST_LOG) $(CARGO_XT) -p target-tests-el1 $(if $(EL1_FEATURES),--features $(EL1_FEATURES))
	@mkdir -p $(IMG)
	@$(call flat,$(OUT)/host-tests,$(IMG)/host-tests.bin)
	HOST_TEST_IMAGE=$(abspath $(IMG)/host-tests.bin) QEMU_MEM_MIB=$(QEMU_MEM_MIB) \
	  HYP_LOG=$(TEST_LOG) $(CARGO_XT) -p target-tests-el2

## ---- run --------------------------------------------------------------------------------------
run: images
	$(call product_run,$(HYP_RUN),)

# One scenario file: exits 0 only if every statement held. CHECK=1 runs the hyp's ownership
# invariant checker after every statement.
SCN_MODE = $(if $(filter 1,$(CHECK)),scenario-check,scenario)
scenario: images
	@test -n "$(FILE)" || { echo "usage: make scenario FILE=path/to/file.scn [CHECK=1]"; exit 2; }
	@$(call blob,scenario,$(SCN_MODE) $(FILE))
	$(call product_run,$(HYP_INTRO),scenario)

# Every file in scenarios/ (one boot, one VM per file).
scenarios: images
	@$(call blob,scenarios,scenario-check $(SCENARIOS))
	$(call product_run,$(HYP_INTRO),scenarios)

# The runner must be able to fail: a wrong expectation and a parse error.
scenario-selfcheck: images
	@echo "== scenario self-check: a wrong expectation and a parse error must fail"
	@$(call blob,scn-wrong,scenario tests/scenarios/wrong-expectation.scn)
	@set +e; $(call product_run,$(HYP_INTRO),scn-wrong) > target/scn-wrong.log 2>&1; st=$$?; sed 's/^/    wrong| /' target/scn-wrong.log | grep -v INFO; \
	  [ $$st -ne 0 ] && grep -q '^FAIL   6: host read g offset=0 expect=0x5b .*expected 0x5b .*got 0x5a' target/scn-wrong.log || \
	  { echo "FAIL: a wrong expectation was not reported"; exit 1; }
	@$(call blob,scn-parse,scenario tests/scenarios/parse-error.scn)
	@set +e; $(call product_run,$(HYP_INTRO),scn-parse) > target/scn-parse.log 2>&1; st=$$?; sed 's/^/    parse| /' target/scn-parse.log | grep -v INFO; \
	  [ $$st -ne 0 ] && grep -q 'line 5: ' target/scn-parse.log && ! grep -q '^ok ' target/scn-parse.log || \
	  { echo "FAIL: a parse error was not reported, or statements ran"; exit 1; }
	@echo "== scenario self-check: both failed as they must"

# The seed's table, inferred from probes on QEMU; one configuration file per row.
CONFIGS ?= scenarios/table
TABLE_ROWS = legacy pkvm coco-option1 coco-option2 noncoco-gmem noncoco-uaddr
table: images
	@$(call blob,table,table $(foreach r,$(TABLE_ROWS),$(CONFIGS)/$(r).scn))
	@set -o pipefail; $(call product_run,$(HYP_INTRO),table) \
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
	@echo "  gdb-multiarch $(HYP_RUN) -ex 'target remote :1234'"
	@echo "  (add-symbol-file $(OUT)/host-shim for the host shim)"
	timeout --foreground $(DEBUG_TIMEOUT) $(QEMU) $(QEMU_BASE) $(PRODUCT_DEVICES) -s -S -kernel $(HYP_RUN)

## ---- tests ------------------------------------------------------------------------------------
test: test-host miri test-target trust-checks scenario-selfcheck scenarios table-check table-swap-test hostile storm-target

## ---- trust checks (rules 10 and 11) --------------------------------------------------------
trust-checks: qemu-run-selfcheck run semihost-check introspection-check dma-check

# The wrapper must fail a run that crashed, gave no verdict, failed, timed out, or was started
# with semihosting, and pass only a PASS verdict.
qemu-run-selfcheck:
	@w="python3 tools/qemu-run.py --timeout 1 --"; \
	  $$w sh -c 'echo "HOST VERDICT: PASS"' >/dev/null 2>&1 || { echo "FAIL: qemu-run failed a PASS"; exit 1; }; \
	  for bad in 'echo "*** hyp: panic: x"; echo "HOST VERDICT: PASS"' 'echo "*** host: panic: x"' \
	             'echo no verdict' 'echo "HOST VERDICT: FAIL (status 3)"' 'echo "HOST VERDICT: PASS"; exit 1' \
	             'sleep 5; echo "HOST VERDICT: PASS"'; do \
	    if $$w sh -c "$$bad" >/dev/null 2>&1; then echo "FAIL: qemu-run passed: $$bad"; exit 1; fi; done; \
	  if $$w sh -c 'echo "HOST VERDICT: PASS"' -semihosting >/dev/null 2>&1; then \
	    echo "FAIL: qemu-run ran a command line with semihosting"; exit 1; fi; \
	  echo "== qemu-run: only a clean PASS verdict passes (crash, no verdict, FAIL, timeout, semihosting fail)"

# No semihosting in the product: (1) no product QEMU command line has it; (2) no product image
# contains semihosting code (the host shim's deliberate attack probe aside); (3) a host that
# asks semihosting to print a marker and create a file gets an undefined instruction, and
# neither the marker nor the file appears; (4) the same run with -semihosting added (a negative
# control) does print the marker or create the file, so the check can fail.
SEMI_MARKER := semihost-probe-marker-7f3a9c
SEMI_FILE   := target/semihost-probe-created.txt
semihost-check: images
	@echo "== product command lines: no semihosting; its=off, -nic none, no PCIe device"
	@$(MAKE) -s -n run scenario FILE=x.scn scenarios table bench storm-target 2>/dev/null | grep -- '$(QEMU) -M' > target/product-cmdlines.txt; \
	  n=$$(wc -l < target/product-cmdlines.txt); [ $$n -ge 5 ] || { echo "FAIL: found $$n product command lines"; exit 1; }; \
	  ! grep -qE -- '-semihosting|-device (virtio|pci|e1000|nvme)|-netdev' target/product-cmdlines.txt && \
	  [ $$(grep -c -- 'its=off' target/product-cmdlines.txt) -eq $$n ] && \
	  [ $$(grep -c -- '-nic none' target/product-cmdlines.txt) -eq $$n ] || \
	  { echo "FAIL: a product QEMU command line enables semihosting or a device the host could use"; \
	    cat target/product-cmdlines.txt; exit 1; }
	@echo "== no semihosting: product images"
	@bash tools/check-no-semihosting.sh $(LLVM_BIN) $(IMG)/host-shim.elf $(HYP_RUN) $(HYP_INTRO)
	@echo "== no semihosting: a host that tries it"
	@rm -f $(SEMI_FILE); $(call blob,semihost,semihost-probe $(SEMI_MARKER) $(SEMI_FILE))
	@$(call product_run,$(HYP_INTRO),semihost) > target/semihost-probe.log 2>&1; st=$$?; \
	  sed 's/^/    probe| /' target/semihost-probe.log | grep -v INFO; \
	  [ $$st -eq 0 ] && ! grep -q '$(SEMI_MARKER)' target/semihost-probe.log && [ ! -e $(SEMI_FILE) ] || \
	  { echo "FAIL: semihosting reached QEMU (status $$st)"; exit 1; }
	@rm -f $(SEMI_FILE); set +e; $(QEMU_WRAP) --allow-semihosting -- $(QEMU) $(QEMU_BASE) -semihosting \
	  -device loader,file=$(BLOBS)/semihost.blob,addr=$(HOST_INPUT_ADDR),force-raw=on -kernel $(HYP_INTRO) \
	  > target/semihost-control.log 2>&1; \
	  if grep -q '$(SEMI_MARKER)' target/semihost-control.log || [ -e $(SEMI_FILE) ]; then \
	    echo "== negative control: with -semihosting the same host reaches QEMU's files and console, as the check detects"; \
	  else echo "FAIL: the negative control did not reach semihosting: the check proves nothing"; exit 1; fi; \
	  rm -f $(SEMI_FILE)

# The make-run hyp answers every introspection call ENOSYS; the scenario hyp does not (control).
introspection-check: images
	@$(call blob,enosys,introspection-enosys)
	@echo "== the make-run hyp answers every introspection call ENOSYS"
	@$(call product_run,$(HYP_RUN),enosys) > target/enosys.log 2>&1; st=$$?; \
	  sed 's/^/    run| /' target/enosys.log | grep -v INFO; [ $$st -eq 0 ] || { echo "FAIL (status $$st)"; exit 1; }
	@set +e; $(call product_run,$(HYP_INTRO),enosys) > target/enosys-control.log 2>&1; st=$$?; \
	  [ $$st -ne 0 ] && grep -q 'answered otherwise' target/enosys-control.log || \
	  { echo "FAIL: the introspection hyp also answered ENOSYS: the check proves nothing"; exit 1; }; \
	  echo "== control: the scenario hyp ($(HYP_INTRO)) answers them (status $$st)"

# fw_cfg DMA: on this system the host's first touch of fw_cfg takes the hyp's abort; on a hyp
# built without the fence, the same code really writes the bytes (so `host dma-write` detects a
# regression).
dma-check: images $(HYP_UNFENCED)
	@$(call blob,dma-fenced,dma-probe fenced)
	@$(call blob,dma-unfenced,dma-probe unfenced)
	@echo "== fw_cfg DMA, fenced: the first access takes the stage-2 abort"
	@$(call product_run,$(HYP_INTRO),dma-fenced) > target/dma-fenced.log 2>&1; st=$$?; \
	  sed 's/^/    fenced| /' target/dma-fenced.log | grep -v INFO; [ $$st -eq 0 ] || { echo "FAIL (status $$st)"; exit 1; }
	@echo "== fw_cfg DMA, unfenced hyp: the same code writes the bytes"
	@$(call product_run,$(HYP_UNFENCED),dma-unfenced) > target/dma-unfenced.log 2>&1; st=$$?; \
	  sed 's/^/    unfenced| /' target/dma-unfenced.log | grep -v INFO; [ $$st -eq 0 ] || { echo "FAIL (status $$st)"; exit 1; }

test-host: setup
	cargo test $(HOST_CRATES) --features hyp-calls/introspection

miri: setup
	@rustup toolchain list | grep -q '^$(MIRI_TOOLCHAIN)' || \
	  rustup toolchain install $(MIRI_TOOLCHAIN) --profile minimal --component miri,rust-src
	MIRIFLAGS="-Zmiri-disable-isolation -Zmiri-permissive-provenance" CARGO_TARGET_DIR=target/miri \
	  cargo +$(MIRI_TOOLCHAIN) miri test $(MIRI_CRATES)
	MIRIFLAGS="-Zmiri-disable-isolation -Zmiri-permissive-provenance" CARGO_TARGET_DIR=target/miri \
	  cargo +$(MIRI_TOOLCHAIN) miri test -p hyp-calls --lib -- $(MIRI_CALLS_TESTS)

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

## ---- storms (long runs, not in `make test`) --------------------------------------------------
# The host storm of `hyp-calls` (tests::storm) with many more cases than `make test`'s 64: random
# host calls and guest exits, after every step the invariant checker, the reference model
# (tests::model) and the page accounting. A failure prints its seed and the shrunk case;
# `make storm STORM_SEED=<seed>` (or STORM_SEED=<seed> cargo test ...) replays that one storm.
STORM_CASES ?= 20000
storm: setup
	PROPTEST_CASES=$(STORM_CASES) $(if $(STORM_SEED),STORM_SEED=$(STORM_SEED)) \
	  cargo test -p hyp-calls --features introspection --lib -- tests::storm

# The same storm under libFuzzer (`fuzz/`, cargo-fuzz on a nightly toolchain; not in `make test`
# or CI): the input bytes decode into the storm's op sequences, with the same checks. Installs
# cargo-fuzz on first use. FUZZ_SECONDS=300 by default; a crash is kept in
# fuzz/artifacts/storm/ and replays with `cd fuzz && cargo +nightly fuzz run storm <file>`.
FUZZ_TOOLCHAIN ?= nightly
FUZZ_SECONDS ?= 300
fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	@rustup run $(FUZZ_TOOLCHAIN) rustc --version >/dev/null 2>&1 || \
	  rustup toolchain install $(FUZZ_TOOLCHAIN) --profile minimal
	cd fuzz && cargo +$(FUZZ_TOOLCHAIN) fuzz run storm -- \
	  -max_total_time=$(FUZZ_SECONDS) -max_len=2048 -timeout=30

# The storm on target (host-shim/src/storm.rs): N random host calls and guest steps from SEED
# against the real hyp (the introspection build), from the host shim, the invariant checker and
# the page census every 100 calls and at the end. A failure prints the seed and the call index
# (make storm-target SEED=<seed> N=<index + 1> replays it); a hyp crash or hang fails the run
# through the wrapper, after the last progress line. `make test` runs N=10000.
SEED ?= 1
N ?= 10000
# The invariant checker and the census every EVERY calls from call FROM on (every 100 before):
# EVERY=1 FROM=<the failing check's call - 100> finds the call that broke one.
EVERY ?= 100
FROM ?= 0
STORM_TIMEOUT ?= $(shell echo $$(( 60 + $(N) / 100 )))
storm-target: images
	@$(call blob,storm-target,storm $(SEED) $(N) $(EVERY) $(FROM))
	@set -o pipefail; python3 tools/qemu-run.py --timeout $(STORM_TIMEOUT) -- $(QEMU) $(QEMU_BASE) $(PRODUCT_DEVICES) \
	  -device loader,file=$(BLOBS)/storm-target.blob,addr=$(HOST_INPUT_ADDR),force-raw=on -kernel $(HYP_INTRO) \
	  2>&1 | tee target/storm-target.log | grep -av 'INFO'; st=$$?; \
	  if [ $$st -ne 0 ]; then \
	    grep -aq '^storm-target: FAIL at call' target/storm-target.log || \
	      echo "storm-target: FAIL (status $$st): the hyp crashed or hung after the last progress line above (seed $(SEED)); log: target/storm-target.log"; \
	    exit 1; fi; \
	  grep -aq '^storm-target: $(N) calls, seed $(SEED), 0 violations' target/storm-target.log || \
	    { echo "storm-target: FAIL: no final line"; exit 1; }

## ---- benchmarks -------------------------------------------------------------------------------
bench-host: setup
	cargo bench -p bench-host

# Instruction counts on QEMU: -icount shift=0 makes INST_RETIRED exact. FAULT_PAD=N builds the hyp
# with N extra nops on the stage-2 fault path (fault_4k_el2 must rise by exactly N).
BENCH_MEM_MIB := 2048
bench: setup
	@test -s target/convert_1g_host_ns || $(MAKE) bench-host
	$(MAKE) images FAULT_PAD=$(FAULT_PAD)
	@$(call blob,bench,bench target/convert_1g_host_ns)
	@set -o pipefail; python3 tools/qemu-run.py --timeout 600 -- $(QEMU) $(subst -m $(QEMU_MEM_MIB)M,-m $(BENCH_MEM_MIB)M,$(QEMU_BASE)) \
	  $(PRODUCT_DEVICES) -icount shift=0,sleep=off \
	  -device loader,file=$(BLOBS)/bench.blob,addr=$(HOST_INPUT_ADDR),force-raw=on -kernel $(HYP_INTRO) \
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
	python3 tests/house.py
	cargo fmt --all -- --check
	cargo clippy $(HOST_CRATES) -p bench-host --all-targets -- -D warnings
	cargo clippy -p hyp-calls --all-targets --features introspection -- -D warnings
	$(GUEST_ENV) HOST_IMAGE=$(abspath $(IMG)/host-shim.bin) \
	  HOST_TEST_IMAGE=$(abspath $(IMG)/host-tests.bin) QEMU_MEM_MIB=$(QEMU_MEM_MIB) \
	  cargo clippy --release --target $(TARGET) $(TARGET_CRATES) -- -D warnings
	# The product crates alone, as `make run` builds them (no introspection, no semihosting).
	$(GUEST_ENV) HOST_IMAGE=$(abspath $(IMG)/host-shim.bin) \
	  cargo clippy --release --target $(TARGET) -p hyp -p host-shim -- -D warnings

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
