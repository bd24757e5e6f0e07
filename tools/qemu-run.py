#!/usr/bin/env python3
"""Runs one product QEMU boot and turns its verdict line into the exit status.

The product has no semihosting (Trust rule 11), so QEMU's exit status says nothing: the host
shim prints one final `HOST VERDICT: PASS` or `HOST VERDICT: FAIL (status N)` line on the
console and powers the machine off (PSCI SYSTEM_OFF through the hyp). This wrapper

- refuses a command line that enables semihosting (unless --allow-semihosting, which only
  the negative control of `make semihost-check` uses);
- runs QEMU under a timeout (its whole process group is killed when it expires);
- passes QEMU's output (stdout and stderr, merged) through, and to --log if given;
- exits 0 only for a PASS verdict from a QEMU that exited cleanly; a hyp or host crash report
  (`*** hyp:` / `*** host:`), a missing verdict or a timeout is a failure (timeout: 124,
  FAIL (status N): N, anything else: 1).

usage: qemu-run.py [--timeout SECONDS] [--log FILE] [--allow-semihosting] -- QEMU [ARG...]
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import threading

VERDICT = re.compile(r"^HOST VERDICT: (PASS|FAIL \(status (\d+)\))\s*$")
CRASH = ("*** hyp:", "*** host:")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--log")
    p.add_argument("--allow-semihosting", action="store_true")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    o = p.parse_args()
    cmd = o.cmd[1:] if o.cmd[:1] == ["--"] else o.cmd
    if not cmd:
        p.error("no QEMU command given")
    if not o.allow_semihosting and any("semihosting" in a for a in cmd):
        print("qemu-run: refusing a product run with semihosting on its command line", file=sys.stderr)
        return 1

    log = open(o.log, "wb") if o.log else None
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    timed_out = threading.Event()

    def expire():
        timed_out.set()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(o.timeout, expire)
    timer.start()
    verdict, crash = None, None
    out = sys.stdout.buffer
    try:
        for raw in proc.stdout:
            out.write(raw)
            out.flush()
            if log:
                log.write(raw)
            line = raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", "")
            if crash is None and line.startswith(CRASH):
                crash = line
            m = VERDICT.match(line)
            if m:
                verdict = m
    finally:
        rc = proc.wait()
        timer.cancel()
        if log:
            log.close()

    if timed_out.is_set():
        print(f"qemu-run: timeout after {o.timeout:g} s", file=sys.stderr)
        return 124
    if crash is not None:
        print(f"qemu-run: crash report: {crash}", file=sys.stderr)
        return 1
    if verdict is None:
        print(f"qemu-run: no verdict line (QEMU exited with {rc})", file=sys.stderr)
        return 1
    if rc != 0:
        print(f"qemu-run: QEMU exited with {rc}", file=sys.stderr)
        return 1
    if verdict.group(1) == "PASS":
        return 0
    status = int(verdict.group(2))
    return status if 0 < status < 256 else 1


if __name__ == "__main__":
    sys.exit(main())
