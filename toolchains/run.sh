#!/usr/bin/env bash
# Sets up a fresh Debian machine, builds kvsketch (native Release) and runs the
# main job. Extra arguments replace the default subcommand.
set -euo pipefail
cd "$(dirname "$0")/.."
bash toolchains/install-deps.sh >&2
cmake --preset release >/dev/null
cmake --build --preset release >&2
if [ "$#" -eq 0 ]; then set -- targets; fi
exec build/release/kvsketch "$@"
