#!/usr/bin/env bash
# Sets up a fresh Debian machine, builds kvsketch (native Release) and runs the
# main job: `kvsketch bench` comparing every method at a few budgets on the
# built-in synthetic workload. Extra arguments replace the default subcommand.
set -euo pipefail
cd "$(dirname "$0")/.."
bash toolchains/install-deps.sh >&2
cmake --preset release >/dev/null
cmake --build --preset release >&2
if [ "$#" -eq 0 ]; then set -- bench; fi
exec build/release/kvsketch "$@"
