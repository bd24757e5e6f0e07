#!/usr/bin/env bash
# The six configurations are data: giving the pKVM row the non-coco-uaddr configuration (and the
# other way round) must give each the other's cells, with the probes unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp scenarios/table/*.scn "$tmp/"
cp scenarios/table/pkvm.scn "$tmp/noncoco-uaddr.scn"
cp scenarios/table/noncoco-uaddr.scn "$tmp/pkvm.scn"
make -s table CONFIGS="$tmp" > "$tmp/out.log"
grep '^|' "$tmp/out.log"
python3 tests/table-check.py target/seed-table.json tests/seed-table.expected.json pkvm noncoco-uaddr
echo "table swap: the swapped rows followed their configurations"
