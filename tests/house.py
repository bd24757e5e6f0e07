#!/usr/bin/env python3
"""The rules of the house for the hyp crate (ARCHITECTURE-SKETCH.md, issue "One house"):
1. `hyp/src/arch/` is a leaf: nothing under it names a module of the hyp above it (`crate::X`
   for any X but `arch`), so it only decodes, switches and calls a handler it was given;
2. the hyp's top-level modules import each other without a circle.
Reads every `crate::<module>` path in `hyp/src` (in `use` lines and in code), prints the
graph, and exits 1 if a rule is broken."""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "hyp", "src")


def module_of(path):
    rel = os.path.relpath(path, ROOT)
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return parts[0] if parts else "crate"


def names(text):
    out = set()
    # crate::a::... and use crate::{a, b::c, ...}
    for m in re.finditer(r"\bcrate::(\w+)", text):
        out.add(m.group(1))
    for m in re.finditer(r"\bcrate::\{([^}]*)\}", text):
        for part in m.group(1).split(","):
            part = part.strip().split("::")[0].strip()
            if part:
                out.add(part)
    return out


def main():
    graph = {}
    arch_breaks = []
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            text = open(path, encoding="utf-8").read()
            # Drop comments, so a doc line naming a module is no import.
            text = re.sub(r"//[^\n]*", "", text)
            mod = module_of(path)
            used = {n for n in names(text) if n != mod}
            graph.setdefault(mod, set()).update(used)
            if mod == "arch":
                for n in sorted(used):
                    arch_breaks.append(f"{os.path.relpath(path, ROOT)} names crate::{n}")
    for mod in sorted(graph):
        print(f"{mod} -> {', '.join(sorted(graph[mod])) or '(nothing)'}")
    # Cycles among the top-level modules.
    cycles = []
    state = {}

    def visit(n, stack):
        state[n] = 1
        for m in sorted(graph.get(n, ())):
            if m not in graph:
                continue
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m, stack + [m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    ok = True
    for b in arch_breaks:
        print(f"FAIL: arch is not a leaf: {b}")
        ok = False
    for c in cycles:
        print(f"FAIL: import circle: {' -> '.join(c)}")
        ok = False
    print("house: arch is a leaf and there is no import circle" if ok else "house: broken")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
