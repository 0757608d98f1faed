#!/bin/sh
# A full accuracy sweep and its plots: bench on the bundled traces (or the
# synthetic workload when ../shared is absent) and kvsketch lm KL per method
# and budget. Usage: bench/sweep.sh [build dir] [output dir] [--quick]
# (--quick: two methods, two budgets, one context window of text; the test
# suite runs it end to end).
set -eu
build=${1:-build/release}
out=${2:-build/plots}
kv="$build/kvsketch"
s=../shared/data/stories260K
methods=window,uniform,balance,taylor,hashed,h2o,tova,risk,blurry
budgets="16 32 64 128 256"
lm_extra=""
if [ "${3:-}" = "--quick" ]; then
  methods=window,risk
  budgets="32 64"
  lm_extra="--max-windows 1"
fi
budget_list=$(echo $budgets | tr ' ' ,)
mkdir -p "$out"
if [ -d "$s/traces" ]; then
  "$kv" bench -q --csv --trace "$s/traces" --method "$methods" \
    --budget-tokens "$budget_list" > "$out/bench.csv"
  for m in $(echo $methods | tr , ' '); do
    for b in $budgets; do
      # shellcheck disable=SC2086
      "$kv" lm -q --csv --model "$s/stories260K.bin" --tokenizer "$s/tok512.bin" \
        --eval "$s/tinystories_valid_excerpt.txt" --method "$m" --budget-tokens "$b" $lm_extra ||
        echo "sweep: lm $m at $b tokens failed (see above)" >&2
    done
  done > "$out/lm.csv"
  /usr/bin/python3 bench/plot.py --bench "$out/bench.csv" --lm "$out/lm.csv" --out "$out"
else
  "$kv" bench -q --csv --method "$methods" --budget-tokens "$budget_list" > "$out/bench.csv"
  /usr/bin/python3 bench/plot.py --bench "$out/bench.csv" --out "$out"
fi
