#!/bin/sh
# The ABI of the built libmla.so equals the reviewed dump lib/libmla.abi (abigail's abidiff), so
# any change to a public function or struct shows up in review. After an intended change, refresh
# the dump with `ninja -C build abi-update` and commit it. Prints TAP.
set -u
lib=$1 dump=$2
# What the exported functions reach, as the dump holds it (lib/meson.build, abi-update). The dump
# carries no source locations: abidiff counts those differences as harmless and filters them.
out=$(abidiff --exported-interfaces-only "$dump" "$lib" 2>&1)
rc=$?
if [ $rc -eq 0 ]; then
    echo "ok 1 - the library's ABI equals lib/libmla.abi"
else
    echo "not ok 1 - the library's ABI differs from lib/libmla.abi (abidiff status $rc)"
    echo "$out" | sed 's/^/# /'
    echo "# if the change is intended: ninja -C <build> abi-update, and commit lib/libmla.abi"
fi
echo "1..1"
[ $rc -eq 0 ]
