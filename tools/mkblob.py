#!/usr/bin/env python3
"""Builds the host input blob: the host shim's mode, its operands and the files it reads.

QEMU's generic loader puts the blob into host RAM before any CPU starts
(`-device loader,file=BLOB,addr=0x4a000000,force-raw=on`), so the host shim needs no
semihosting to learn what to do (Trust rule 11). The format is `board/src/hostinput.rs`'s:

  0x00 magic "HSHMBLOB" | 0x08 version u32 = 1 | 0x0c total_len u32 | 0x10 nargs u32
  0x14 nfiles u32 | 0x18 checksum u32 (FNV-1a of bytes [0x20, total_len)) | 0x1c reserved u32
  then nargs x {len u32, bytes, pad to 4}
  then nfiles x {name_len u32, data_len u32, name, pad to 4, data, pad to 4}
  (little-endian)

usage: mkblob.py -o OUT MODE [OPERAND...] [--file PATH...]

Every OPERAND that names an existing file is also embedded under that name (so
`mkblob.py -o b scenario scenarios/a.scn` carries a.scn); --file embeds more.
"""
import argparse
import os
import struct
import sys

MAGIC = b"HSHMBLOB"
VERSION = 1
HEADER_LEN = 0x20
MAX_LEN = 16 << 20  # board::layout::HOST_INPUT_MAX


def fnv1a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def pad(b: bytearray) -> None:
    while len(b) % 4:
        b.append(0)


def encode(args, files) -> bytes:
    body = bytearray()
    for a in args:
        a = a.encode()
        body += struct.pack("<I", len(a)) + a
        pad(body)
    for name, data in files:
        name = name.encode()
        body += struct.pack("<II", len(name), len(data)) + name
        pad(body)
        body += data
        pad(body)
    total = HEADER_LEN + len(body)
    header = MAGIC + struct.pack("<IIIIII", VERSION, total, len(args), len(files), fnv1a(body), 0)
    return bytes(header) + bytes(body)


def main() -> int:
    p = argparse.ArgumentParser(description="build the host shim's input blob")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--file", action="append", default=[], help="embed this file as well")
    p.add_argument("mode")
    p.add_argument("operands", nargs="*")
    o = p.parse_args()
    args = [o.mode] + o.operands
    names = [a for a in o.operands if os.path.isfile(a)] + o.file
    files, seen = [], set()
    for n in names:
        if n in seen:
            continue
        seen.add(n)
        with open(n, "rb") as f:
            files.append((n, f.read()))
    blob = encode(args, files)
    if len(blob) > MAX_LEN:
        print(f"mkblob: {len(blob)} bytes is over the {MAX_LEN}-byte host input area", file=sys.stderr)
        return 1
    with open(o.output, "wb") as f:
        f.write(blob)
    return 0


if __name__ == "__main__":
    sys.exit(main())
