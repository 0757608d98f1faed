#!/usr/bin/env bash
# Sets up a fresh Debian machine and runs kvsketch's whole test suite:
# formatting, native Release, ASan+UBSan, aarch64 under QEMU (NEON and SVE2)
# and armv7 under QEMU. Prints every test runner's summary and the time each
# stage took; exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -a STAGES=()
CURRENT=""
# Any failing command ends the script (set -e); say which stage it was.
trap 'echo "::: stage ${CURRENT} FAILED"' ERR
stage() {  # stage NAME COMMAND...  (not called in an `if`, so -e applies)
  CURRENT=$1; shift
  local t0=$SECONDS
  echo "::: stage ${CURRENT}"
  "$@"
  STAGES+=("$(printf '%-22s %5d s' "$CURRENT" $((SECONDS - t0)))")
}

show_targets() {  # which SIMD targets the last ctest run exercised
  grep -ah "exercised targets\|^chosen:" "build/$1/Testing/Temporary/LastTest.log" |
    sort -u | sed "s/^/  [$2] /" || true
}

format_check() {
  local files
  files=$(git ls-files '*.h' '*.cc' '*.c' '*.hpp' '*.cpp' 2>/dev/null ||
    find arch engine tests bench -name '*.h' -o -name '*.cc' -o -name '*.c')
  # shellcheck disable=SC2086
  clang-format-14 --dry-run -Werror $files
  echo "format: $(echo "$files" | wc -w) files clean"
}

native() {  # native PRESET
  cmake --preset "$1" >/dev/null
  cmake --build --preset "$1"
  ctest --preset "$1"
  show_targets "$1" "$1"
}

# `cmake --install` of the release build, then consumers built against the
# installed tree: find_package(kvsketch) from C and C++, and pkg-config.
install_consumer() {
  local prefix=build/install consumer=build/consumer
  rm -rf "$prefix" "$consumer"
  cmake --install build/release --prefix "$prefix" >/dev/null
  cmake -S tests/consumer -B "$consumer" -G Ninja \
    -DCMAKE_PREFIX_PATH="$PWD/$prefix" >/dev/null
  cmake --build "$consumer"
  "$consumer/consumer_c"
  "$consumer/consumer_cxx"
  # shellcheck disable=SC2046
  cc tests/consumer/main.c -o "$consumer/consumer_pkgconfig" \
    $(PKG_CONFIG_PATH="$PWD/$prefix/lib/pkgconfig" pkg-config --cflags --libs --static kvsketch)
  "$consumer/consumer_pkgconfig"
  echo "install-consumer: 3 passed, 0 failed"
}

# The README's Python install on this machine, offline: a venv that sees
# Debian's numpy, `pip install --no-build-isolation ./python` (the project's
# CMake builds the module), then the package used from outside the tree.
python_install() {
  local venv=build/python-venv
  rm -rf "$venv" python/build python/kvsketch.egg-info
  /usr/bin/python3 -m venv --system-site-packages "$venv"
  "$venv/bin/pip" install -q --no-build-isolation ./python
  rm -rf python/build python/kvsketch.egg-info
  (cd / && "$OLDPWD/$venv/bin/python" -c '
import numpy as np, kvsketch
rng = np.random.default_rng(0)
q = rng.standard_normal((4, 300, 16)).astype(np.float32)
k = rng.standard_normal((2, 300, 16)).astype(np.float32)
v = rng.standard_normal((2, 300, 16)).astype(np.float32)
r = kvsketch.evaluate(q, k, v, method="risk", budget_tokens=64)
assert 0 < r["mean_rel_err"] < 1 and r["positions"] > 0, r
print("python-install: kvsketch", kvsketch.__version__, "from", kvsketch.__file__)
print("python-install: 1 passed, 0 failed")')
}

# libFuzzer (clang 14, ASan + UBSan) on every loader of outside data, a
# bounded time each, starting from the small corpus kept in fuzz/corpus.
fuzz_one() {  # fuzz_one TARGET: one bounded libFuzzer run
  local t=$1 work seeds
  work=$(mktemp -d)
  seeds="fuzz/corpus/$t"
  if [ "$t" = state ]; then  # a state of every method and storage
    seeds=$(mktemp -d)
    build/fuzz/fuzz/state_corpus "$seeds"
  fi
  "build/fuzz/fuzz/fuzz_$t" "$work" "$seeds" -max_total_time="${FUZZ_SECONDS:-30}" \
    -max_len="$([ "$t" = state ] && echo 65536 || echo 4096)" -artifact_prefix="build/fuzz/crash-$t-" 2>&1 | grep -E "^Done|ERROR|SUMMARY"
  rm -rf "$work"
}

fuzz() {
  cmake --preset fuzz >/dev/null
  cmake --build --preset fuzz
  # Two fuzzers at a time (one per core), each to its own log.
  local t pids=() names=() passed=0 failed=0 i
  for t in npy trace_json state checkpoint tokenizer; do
    fuzz_one "$t" >"build/fuzz/log-$t" 2>&1 &
    pids+=($!)
    names+=("$t")
    if [ "${#pids[@]}" -eq 2 ] || [ "$t" = tokenizer ]; then
      for i in "${!pids[@]}"; do
        if wait "${pids[$i]}"; then
          passed=$((passed + 1))
        else
          failed=$((failed + 1))
          echo "fuzz_${names[$i]} FAILED"
        fi
        sed "s/^/  [${names[$i]}] /" "build/fuzz/log-${names[$i]}"
      done
      pids=()
      names=()
    fi
  done
  echo "fuzz: $passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}

cross_aarch64() {
  cmake --preset aarch64 >/dev/null
  cmake --build --preset aarch64
  ctest --preset aarch64-neon
  show_targets aarch64 "qemu-aarch64 -cpu cortex-a72"
  ctest --preset aarch64-sve
  show_targets aarch64 "qemu-aarch64 -cpu max"
}

cross_armv7() {
  cmake --preset armv7 >/dev/null
  cmake --build --preset armv7
  ctest --preset armv7
  show_targets armv7 "qemu-arm"
}

T0=$SECONDS
stage install-deps bash toolchains/install-deps.sh
stage format format_check
stage native-release native release
stage install-consumer install_consumer
stage python-install python_install
stage native-asan-ubsan native asan
stage fuzz fuzz
stage aarch64-qemu cross_aarch64
stage armv7-qemu cross_armv7

echo "::: stage timings"
printf '  %s\n' "${STAGES[@]}"
echo "  total                  $((SECONDS - T0)) s"
echo "::: all stages passed"
