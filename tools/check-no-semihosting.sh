#!/usr/bin/env bash
# Trust rule 11, statically: the product images use no semihosting.
#   - no code of the `semihosting` crate or of `board::semihost` in any product ELF;
#   - no HLT instruction (the semihosting trap) in the product hyp images;
#   - in the product host shim, HLT only inside the deliberate hostile-host probes
#     (functions named `semihost_hlt`, or `regs::exec` for `host exec semihost`).
# usage: check-no-semihosting.sh LLVM_BIN_DIR HOST_SHIM_ELF HYP_ELF...
set -euo pipefail
bin=$1 host=$2
shift 2
fail=0
for elf in "$host" "$@"; do
  if "$bin/llvm-nm" -C "$elf" | grep -E ' (semihosting::|board::semihost::)' | head -3 | grep -q .; then
    echo "FAIL: $elf contains semihosting code:"
    "$bin/llvm-nm" -C "$elf" | grep -E ' (semihosting::|board::semihost::)' | head -3
    fail=1
  fi
done
for elf in "$@"; do
  n=$("$bin/llvm-objdump" -d "$elf" | grep -cE '\shlt\s' || true)
  if [ "$n" -ne 0 ]; then
    echo "FAIL: $elf contains $n HLT instruction(s)"
    fail=1
  fi
done
# Every HLT of the host shim, with the function it lies in.
bad=$("$bin/llvm-objdump" -d --demangle "$host" | awk '
  /^[0-9a-f]+ <.*>:$/ { fn = $0 }
  /\thlt\t/ { if (fn !~ /semihost_hlt|regs::exec/) print fn ": " $0 }')
if [ -n "$bad" ]; then
  echo "FAIL: HLT outside the hostile-host probes in $host:"
  echo "$bad"
  fail=1
fi
if [ $fail -eq 0 ]; then
  echo "no semihosting in the product images: $host $*"
fi
exit $fail
