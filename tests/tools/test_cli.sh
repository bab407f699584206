#!/usr/bin/env bash
# The `mla` command line as a user meets it (TAP): help, the version line, refused commands and
# options with their messages and exit codes, and one short demo run whose own checks (the
# full-rank identity, the restored snapshot) pass. Usage: test_cli.sh MLA VERSION
set -u
mla=$1
version=$2
n=0
fails=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# check DESCRIPTION WANT_RC STREAM PATTERN -- ARGS...: run mla ARGS, expect exit code WANT_RC and
# PATTERN (grep -E) in STREAM (out or err).
check() {
    local what=$1 want=$2 stream=$3 pattern=$4
    shift 5
    "$mla" "$@" >"$tmp/out" 2>"$tmp/err"
    local rc=$?
    n=$((n + 1))
    if [ "$rc" -eq "$want" ] && grep -Eq -- "$pattern" "$tmp/$stream"; then
        echo "ok $n - $what"
    else
        echo "not ok $n - $what (exit $rc, want $want; $stream lacks /$pattern/)"
        sed 's/^/# /' "$tmp/out" "$tmp/err" | head -n 20
        fails=$((fails + 1))
    fi
}

check "mla help lists the commands" 0 out '^  demo ' -- help
check "mla with no command prints the same help" 0 out '^  info ' --
check "mla --help" 0 out '^usage: mla <command>' -- --help
check "mla -h" 0 out '^usage: mla <command>' -- -h
check "an unknown command: exit 2, named" 2 err "unknown command 'frobnicate'" -- frobnicate
check "mla info: the library's version, as the build says" 0 out "^libmla $version \(headers $version\)$" -- info
check "mla info names the attention kernels" 0 out 'attention kernels: ' -- info
check "mla demo --help: usage on stdout, exit 0" 0 out '^usage: mla demo ' -- demo --help
check "a word for a number is refused, naming the option" 2 err "^mla demo: --rope-dim 'four' is not an integer$" -- demo --rope-dim four
check "trailing characters are refused" 2 err "^mla demo: --tokens '64k' is not an integer$" -- demo --tokens 64k
check "a number out of range is refused with the range" 2 err '^mla demo: --tokens 99999999999 is out of range \(2 \.\. 1048576\)$' -- demo --tokens 99999999999
check "an option without its value" 2 err '^mla demo: --d-kv needs a value$' -- demo --d-kv
check "an unknown option" 2 err "^mla demo: unknown option '--fast'$" -- demo --fast
check "what the library refuses, the library explains (odd rope_dim)" 1 err 'rope_dim is 3, must be even' -- demo --tokens 16 --rope-dim 3
check "a short demo passes its own checks" 0 out 'differs by 0\.0e\+00 between original and restored' -- demo --tokens 48 --rope-dim 4 --d-kv 8

echo "1..$n"
[ "$fails" -eq 0 ]
