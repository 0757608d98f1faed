#!/bin/sh
# Memory honesty: `kvsketch bench --budget 4MiB` runs under `prlimit --as`
# set to the address space of a 64 KiB-budget run plus the 4 MiB arena plus
# 8 MiB of slack, and its peak RSS grows by at most the budget (+ slack).
# A 64 MiB budget under the same cap fails with a clear arena error.
set -eu
kv="$1"
args="--method balance --threads 1 --length 16384 --eval-max 64 --json"
small=$("$kv" bench --budget 64KiB $args | tail -n 1)
vm=$(echo "$small" | sed -n 's/.*"peak_vm_bytes":\([0-9]*\).*/\1/p')
rss=$(echo "$small" | sed -n 's/.*"peak_rss_bytes":\([0-9]*\).*/\1/p')
[ -n "$vm" ] && [ "$vm" -gt 0 ] || { echo "no peak_vm_bytes: $small"; exit 1; }
mib=1048576
cap=$((vm + 4 * mib + 8 * mib))
echo "64KiB run: peak RSS $((rss / 1024)) KiB, peak VM $((vm / 1024)) KiB; cap $((cap / 1024)) KiB"
out=$(prlimit --as=$cap "$kv" bench --budget 4MiB $args)
echo "$out"
echo "$out" | grep -q '"method":"balance","storage":"f16","budget_tokens":0,"budget_bytes":4194304' ||
  { echo "4MiB run did not report"; exit 1; }
if echo "$out" | grep -q '"error"'; then echo "4MiB run failed under the cap"; exit 1; fi
rss4=$(echo "$out" | tail -n 1 | sed -n 's/.*"peak_rss_bytes":\([0-9]*\).*/\1/p')
echo "4MiB run: peak RSS $((rss4 / 1024)) KiB (64KiB run: $((rss / 1024)) KiB)"
[ "$rss4" -le $((rss + 4 * mib + 8 * mib)) ] || { echo "RSS grew beyond the budget"; exit 1; }
# Fails cleanly: the row names the arena, bench exits 3 (nothing measured).
status=0
big=$(prlimit --as=$cap "$kv" bench --budget 64MiB $args 2>&1) || status=$?
echo "$big" | grep -q 'arena: could not allocate' && [ "$status" -eq 3 ] ||
  { echo "64MiB run under the cap did not fail cleanly ($status): $big"; exit 1; }
echo "memory cap: OK"
