#!/bin/sh
# bench --csv -> bench/plot.py -> PNG files (matplotlib from Debian).
set -eu
kv="$1"
src="$2"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$kv" bench -q --csv --length 500 --method window,uniform,risk --budget-tokens 32,64 > "$out/bench.csv"
/usr/bin/python3 "$src/bench/plot.py" --bench "$out/bench.csv" --out "$out"
for f in error_vs_budget attend_vs_retained; do
  [ -s "$out/$f.png" ] || { echo "missing $f.png"; exit 1; }
  head -c 8 "$out/$f.png" | grep -q PNG || { echo "$f.png is not a PNG"; exit 1; }
done
echo "plots: OK"
