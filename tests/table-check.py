#!/usr/bin/env python3
"""Compares a seed-table JSON written by `make table` with the expected one (the seed's table in
the vocabulary of issue 6), optionally with two rows' expected cells swapped.

usage: table-check.py ACTUAL EXPECTED [ROW_A ROW_B]
"""
import json
import sys

actual = json.load(open(sys.argv[1]))
expected = json.load(open(sys.argv[2]))
exp = {r["use_case"]: r["cells"] for r in expected["rows"]}
if len(sys.argv) == 5:
    a, b = sys.argv[3], sys.argv[4]
    exp[a], exp[b] = exp[b], exp[a]
order = [r["use_case"] for r in expected["rows"]]
got_order = [r["use_case"] for r in actual["rows"]]
bad = 0
if got_order != order:
    print(f"rows out of order: {got_order} != {order}")
    bad += 1
for r in actual["rows"]:
    want = exp.get(r["use_case"])
    if r["cells"] != want:
        print(f"row {r['use_case']}: got {r['cells']}, want {want}")
        bad += 1
print(f"table: {len(actual['rows']) - bad} rows as expected, {bad} differ")
sys.exit(1 if bad else 0)
