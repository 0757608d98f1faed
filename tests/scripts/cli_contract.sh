#!/bin/sh
# The CLI's contracts end to end: every output mode of every subcommand
# works; hostile inputs end in a clear error and a small non-zero status
# (never a signal: no abort, no crash, no hang); bench/sweep.sh + plot.py.
# Usage: cli_contract.sh KVSKETCH SOURCE_DIR
set -u
kv="$1"
src="$2"
s="$src/../shared/data/stories260K"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fails=0 passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

# expect_ok REGEX ARGS...: status 0 and stdout matching REGEX.
expect_ok() {
  re=$1; shift
  if out=$(timeout 300 "$kv" "$@" 2>"$work/err"); then
    if printf '%s\n' "$out" | grep -Eq -- "$re"; then ok; else
      bad "$* : output lacks /$re/"; fi
  else
    bad "$* : status $? ($(head -c 300 "$work/err"))"
  fi
}
# expect_err REGEX ARGS...: status 1..127 (no signal) and stderr matching.
expect_err() {
  re=$1; shift
  timeout 60 "$kv" "$@" >/dev/null 2>"$work/err"
  st=$?
  if [ "$st" -eq 0 ] || [ "$st" -ge 124 ]; then
    bad "$* : status $st, want a clean error"
  elif ! grep -Eq -- "$re" "$work/err"; then
    bad "$* : stderr lacks /$re/: $(head -c 300 "$work/err")"
  else ok; fi
}

# Every output mode of every subcommand.
expect_ok "chosen:" targets
expect_ok "GB/s|gram" speed --quick --reps 1
expect_ok '"kernel":"gram"' speed --quick --reps 1 --json
expect_ok '^\| risk \| 32 ' bench -q --length 300 --method window,risk --budget-tokens 32
# The needle workload evaluates only its 16 late questions per head.
expect_ok '^\| window \| 32 \| 16384 \| 16384 \| 64.0 \| [0-9.]* \| [0-9.]* \| [0-9.]* \| [0-9]* \| [0-9]* \| 32 \|' bench -q --synthetic needle --length 1024 --kv-heads 1 --method window --budget-tokens 32
expect_err "at least 512 tokens" bench -q --synthetic needle --length 300
# The error / best table: exactly one method at 1.00 per budget, none below.
expect_ok '^\| error / best \| 32 \| 48 \|' bench -q --length 300 --method exact,window,risk --budget-tokens 32,48
out=$("$kv" bench -q --length 300 --method exact,window,risk,blurry --budget-tokens 32 2>/dev/null |
  sed -n '/^| error \/ best/,$p' | grep -E '^\| (window|risk|blurry) \|' | awk -F'|' '{print $3}')
if [ "$(printf '%s\n' "$out" | grep -c ' 1.00 ')" -ge 1 ] &&
  [ -z "$(printf '%s\n' "$out" | awk '$1 < 1.0')" ] && [ "$(printf '%s\n' "$out" | wc -l)" -eq 3 ]; then ok; else
  bad "bench error / best column: $out"; fi
expect_ok '"method":"risk"' bench -q --length 300 --method window,risk --budget-tokens 32 --json
expect_ok '^synthetic:default,uniform,f16,risk,32,' bench -q --length 300 --method window,risk --budget-tokens 32 --csv
expect_ok 'Spearman|spearman' analyze --length 300 --kv-heads 2 --budget-tokens 32
expect_ok '"summary":true' analyze --length 300 --kv-heads 2 --budget-tokens 32 --json
expect_ok 'clairvoyant' oracle --length 300 --kv-heads 2 --budget-tokens 32
expect_ok '"clairvoyant":' oracle --length 300 --kv-heads 2 --budget-tokens 32 --json
if [ -f "$s/stories260K.bin" ]; then
  lm="lm -q --model $s/stories260K.bin --tokenizer $s/tok512.bin"
  # shellcheck disable=SC2086
  {
    expect_ok 'summary:.*ppl full' $lm --eval "$s/tinystories_valid_excerpt.txt" --max-windows 1 --budget-tokens 32
    expect_ok '"kl_p99"' $lm --eval "$s/tinystories_valid_excerpt.txt" --max-windows 1 --budget-tokens 32 --json
    expect_ok '^prefill \(16 tokens per Session::Prefill\): ppl risk' $lm --eval "$s/tinystories_valid_excerpt.txt" --max-windows 1 --budget-tokens 32 --prefill-block 16
    expect_ok '"tokens_per_s_prefill"' $lm --eval "$s/tinystories_valid_excerpt.txt" --max-windows 1 --budget-tokens 32 --json
    expect_ok '^risk,f16,32,0,[0-9]+,' $lm --eval "$s/tinystories_valid_excerpt.txt" --max-windows 1 --budget-tokens 32 --csv
    expect_ok '^Once' $lm --prompt "Once" -n 8 --temperature 0
    # --chat: a turn, a regenerate (Truncate), the memory line, a reset.
    chat_out=$(printf 'Once upon a time\n/regenerate\n/reset\n/quit\n' | "$kv" $lm --chat -n 6 --temperature 0.8 --budget-tokens 256 2>&1)
    if printf '%s\n' "$chat_out" | grep -q '^\[kv: 11 tokens' && [ "$(printf '%s\n' "$chat_out" | grep -c '^\[kv: 11 tokens')" = 2 ] && printf '%s\n' "$chat_out" | grep -q '^\[reset\]'; then ok; else bad "lm --chat: $chat_out"; fi
    expect_err "exactly one of" $lm --chat --prompt x
  }
  # The CSV header and row have the same number of fields.
  # shellcheck disable=SC2086
  "$kv" $lm --eval "$s/tinystories_valid_excerpt.txt" --max-windows 1 --budget-tokens 32 --csv > "$work/lm.csv"
  if [ "$(head -1 "$work/lm.csv" | tr -cd , | wc -c)" = "$(tail -1 "$work/lm.csv" | tr -cd , | wc -c)" ]; then ok; else bad "lm --csv header and row differ"; fi
  # Hostile checkpoints: a header whose implied size wraps 64 bits, a FIFO.
  python3 - "$work" <<'PY'
import struct, sys, os
d = sys.argv[1]
with open(d + "/wrap.bin", "wb") as f:  # dim, hidden, layers, heads, kv, vocab, seq
    f.write(struct.pack("<7i", 1 << 20, 1 << 20, 1 << 20, 1 << 12, 1 << 12, 512, 512))
    f.write(b"\0" * 4096)
os.mkfifo(d + "/fifo.bin")
PY
  expect_err "header implies|does not match" lm --model "$work/wrap.bin" --tokenizer "$s/tok512.bin" --prompt a
  expect_err "not a regular file" lm --model "$work/fifo.bin" --tokenizer "$s/tok512.bin" --prompt a
  expect_err "not a regular file" lm --model "$s/stories260K.bin" --tokenizer "$s/tok512.bin" --eval /dev/zero
fi

# Hostile options.
expect_err "at least 1" bench --budget-tokens 0
expect_err "measured nothing" bench -q --length 300 --sinks 100000000
expect_err "needs about .* GB" bench --length 1000000000
expect_err "needs about .* GB" bench --kv-heads 4096
expect_err "block must be in" bench -q --length 300 --block 100000000000
expect_err ">= 1" bench --eval-max 0
expect_err ">= 1" analyze --eval-max 0
expect_err ">= 1" oracle --eval-max 0
expect_err "at least 2" bench --length 1
expect_err "unknown storage 'q3'" bench -q --length 300 --storage q3
expect_err "not supported" bench -q --length 300 --storage-k f32 --storage-v q8
expect_err "on or off|not in" bench -q --length 300 --storage q8 --rotate maybe
expect_ok "q8/q4\+rot" bench -q --csv --length 300 --method window --budget-tokens 16 --storage-k q8 --storage-v q4
expect_ok "q4 \(4.50 bits per element, rotated\)" bench -q --length 300 --method window --budget-tokens 16 --storage q4
expect_ok "speedup_vs_f16" speed --quick --reps 1 --json --n 256 --d 64 --storage q8
expect_err "row counts" speed --n 0

# Hostile traces.
(cd "$work" && python3 "$src/tests/scripts/hostile_traces.py")
expect_ok '^\| window \| 16 ' bench -q --trace "$work/ok" --budget-tokens 16 --method window
for sub in bench analyze oracle; do
  expect_err "at least 2" $sub --trace "$work/seq0" --budget-tokens 16
  expect_err "at least 2" $sub --trace "$work/seq1" --budget-tokens 16
  expect_err "head dimensions" $sub --trace "$work/dk0" --budget-tokens 16
  expect_err "head dimensions" $sub --trace "$work/dk4096" --budget-tokens 16
  expect_err "rope theta" $sub --trace "$work/theta_neg" --budget-tokens 16
  expect_err "rope theta" $sub --trace "$work/theta_huge" --budget-tokens 16
  expect_err "rope dims" $sub --trace "$work/dims_odd" --budget-tokens 16
  expect_err "scale" $sub --trace "$work/scale_neg" --budget-tokens 16
  expect_err "input range" $sub --trace "$work/big" --budget-tokens 16 --storage f32
  expect_err "query heads" $sub --trace "$work/group" --budget-tokens 16
  expect_err "more than half" $sub --trace "$work/sparse" --budget-tokens 16
  expect_err "not a regular file" $sub --trace "$work/fifo" --budget-tokens 16
done

# kvsketch decode on a tiny model shape: every output mode, bad input.
dec="decode --layers 2 --heads 4 --kv-heads 2 --head-dim 16 --contexts 64,192 --steps 4 --budget-tokens 32 --method window,exact,risk --threads 1"
expect_ok "^\| risk \| 32 \| 1 \| 192 \|" $dec
expect_ok '"method":"exact".*"context":192' $dec --json
expect_ok "^window,32,1,192," $dec --csv
expect_ok "qwen2.5-0.5b \| layers 3 \| heads 14/2 .* rope theta 1000000" decode --preset qwen2.5-0.5b --layers 3 --contexts 32 --steps 2 --method window --budget-tokens 8 --threads 1
expect_ok '"rope_theta":0,' $dec --json --rope-theta 0
expect_err "decode --rope-theta: rope theta -1 must be 0" decode --rope-theta -1
expect_err "unknown --preset 'nope'" decode --preset nope
expect_err "not a multiple of --kv-heads" decode --heads 6 --kv-heads 4
expect_err "steps" decode --contexts 8 --steps 8
expect_err "unknown method|method" decode --method nope --contexts 64 --steps 2 --layers 1
expect_err "storage" decode --storage f8 --contexts 64 --steps 2 --layers 1
if python3 -c "import matplotlib" 2>/dev/null; then
  "$kv" $dec --csv >"$work/decode.csv" 2>/dev/null
  if python3 "$src/bench/plot.py" --decode "$work/decode.csv" --out "$work/dplots" >/dev/null 2>"$work/err" &&
    head -c 8 "$work/dplots/decode_time.png" | grep -q PNG; then ok; else
    bad "plot.py --decode: $(head -c 300 "$work/err")"; fi
fi

# bench/sweep.sh + plot.py end to end (quick: two methods, two budgets).
if python3 -c "import matplotlib" 2>/dev/null; then
  if (cd "$src" && sh bench/sweep.sh "$(dirname "$kv")" "$work/plots" --quick >/dev/null 2>"$work/err"); then
    for f in error_vs_budget attend_vs_retained; do
      if head -c 8 "$work/plots/$f.png" 2>/dev/null | grep -q PNG; then ok; else bad "sweep: no $f.png"; fi
    done
    if [ -f "$s/stories260K.bin" ]; then
      if head -c 8 "$work/plots/kl_vs_budget.png" 2>/dev/null | grep -q PNG; then ok; else bad "sweep: no kl_vs_budget.png"; fi
    fi
  else
    bad "bench/sweep.sh --quick failed: $(head -c 300 "$work/err")"
  fi
fi

echo "cli contract: $passes passed, $fails failed"
[ "$fails" -eq 0 ] && echo "cli contract: OK"
