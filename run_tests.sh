#!/usr/bin/env bash
# Run every test suite of libmla: the C tests (meson test), the Python tests (pytest, numpy
# references and the Python binding) and the Rust binding's tests (cargo test). Ends with one line
# "N passed, N failed" summing all suites; exits non-zero if anything failed.
#   MLA_BUILD_DIR=dir  the build to test (default: build, made by ./setup.sh)
set -uo pipefail
cd "$(dirname "$0")"
root=$(pwd)
build=${MLA_BUILD_DIR:-build}
if [ ! -f "$build/build.ninja" ]; then
    echo "run_tests.sh: no build in '$build': run ./setup.sh first" >&2
    exit 2
fi
build=$(cd "$build" && pwd)   # relative to the root or absolute, as setup.sh takes it
ninja -C "$build" >/dev/null || { echo "run_tests.sh: build failed" >&2; exit 2; }

passed=0
failed=0
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# --- C: one meson test per program; each program checks many TAP points.
echo "== C tests (meson test)"
meson test -C "$build" --print-errorlogs --no-rebuild 2>&1 | tee "$logs/meson.txt" | grep -E '^ *[0-9]+/[0-9]+ ' || true
c_ok=$(python3 - "$build/meson-logs/testlog.json" <<'PY'
import json, sys
ok = bad = 0
for line in open(sys.argv[1]):
    r = json.loads(line).get("result")
    if r in ("OK", "EXPECTEDFAIL", "SKIP"):
        ok += r != "SKIP"
    else:
        bad += 1
print(ok, bad)
PY
)
set -- $c_ok
passed=$((passed + $1)); failed=$((failed + $2))
echo "C: $1 passed, $2 failed"

# --- Python: numpy references and the ctypes binding, against this build's library.
echo "== Python tests (pytest)"
export MLA_LIBRARY="$build/lib/libmla.so"
export MLA_INCLUDE="$root/include:$build/include"   # for the tests that compile C
export CC=${CC:-cc}
export PYTHONPATH="$root/bindings/python${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pytest -q -p no:cacheprovider tests/python --junitxml="$logs/pytest.xml" 2>&1 | tail -n 25
py=$(python3 - "$logs/pytest.xml" <<'PY'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception:
    print(0, 1); sys.exit()
suites = [root] if root.tag == "testsuite" else list(root)
t = sum(int(s.get("tests", 0)) for s in suites)
f = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
sk = sum(int(s.get("skipped", 0)) for s in suites)
print(t - f - sk, f)
PY
)
set -- $py
passed=$((passed + $1)); failed=$((failed + $2))
echo "Python: $1 passed, $2 failed"

# --- Rust: the FFI crate, linked against this build's library.
echo "== Rust tests (cargo test)"
export MLA_LIB_DIR="$build/lib"
if cargo test --offline --quiet --manifest-path bindings/rust/Cargo.toml \
        --target-dir "$build/rust-target" >"$logs/cargo.txt" 2>&1; then :; fi
grep -E '^test result:|^error|panicked' "$logs/cargo.txt" || tail -n 20 "$logs/cargo.txt"
rs=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
          END { print p + 0, f + 0 }' "$logs/cargo.txt")
set -- $rs
if ! grep -q '^test result:' "$logs/cargo.txt"; then
    set -- 0 1   # the crate did not build: count it as a failure
    tail -n 30 "$logs/cargo.txt"
fi
passed=$((passed + $1)); failed=$((failed + $2))
echo "Rust: $1 passed, $2 failed"

echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
