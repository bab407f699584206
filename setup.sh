#!/usr/bin/env bash
# Set up libmla on a fresh Debian 12 machine: install every system and Python dependency, configure
# and build, then run the main job (tools/mla demo). Safe to run again.
#   MLA_SKIP_INSTALL=1  skip apt-get/pip (dependencies already present)
#   MLA_WERROR=1        warnings are errors (CI sets it)
#   MLA_BUILD_DIR=dir   build directory (default: build)
set -euo pipefail
cd "$(dirname "$0")"
build=${MLA_BUILD_DIR:-build}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if [ "${MLA_SKIP_INSTALL:-0}" != 1 ]; then
    echo "== installing system packages (apt-get)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        build-essential g++ clang libclang-rt-14-dev meson ninja-build pkg-config \
        libblis-dev liblapacke-dev libjansson-dev libsimde-dev valgrind abigail-tools python3 python3-pip >/dev/null
    if ! command -v cargo >/dev/null 2>&1; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cargo >/dev/null
    fi
    echo "== installing Python packages (pip)"
    python3 -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt \
        || python3 -m pip install --quiet --break-system-packages -r requirements-dev.txt
fi

werror=false
if [ "${MLA_WERROR:-0}" = 1 ]; then werror=true; fi
echo "== configuring ($build, werror=$werror)"
if [ -d "$build" ]; then
    meson setup --reconfigure "$build" -Dwerror=$werror >/dev/null
else
    meson setup "$build" -Dwerror=$werror >/dev/null
fi
echo "== building"
ninja -C "$build"

echo "== main job: tools/mla demo"
"$build/tools/mla" demo
