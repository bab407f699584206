#!/bin/sh
# Install libmla into a scratch directory and build the examples against it with pkg-config only,
# the way a user's project would. Prints TAP.
set -u
build=$1
src=$2
dest=$(mktemp -d)
trap 'rm -rf "$dest"' EXIT
n=0
fail=0
point() { # ok|not-ok description
    n=$((n + 1))
    if [ "$1" = ok ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fail=1; fi
}

if meson install -C "$build" --destdir "$dest" --no-rebuild --quiet >"$dest/install.log" 2>&1; then
    point ok "meson install into a scratch destdir"
else
    point not-ok "meson install into a scratch destdir"; sed 's/^/# /' "$dest/install.log"
    echo "1..$n"; exit 1
fi
pc=$(find "$dest" -name mla.pc | head -n 1)
[ -n "$pc" ] && point ok "mla.pc installed" || { point not-ok "mla.pc installed"; echo "1..$n"; exit 1; }
export PKG_CONFIG_PATH="$(dirname "$pc")"
export PKG_CONFIG_SYSROOT_DIR="$dest"
libdir=$(pkg-config --variable=libdir mla)
case "$libdir" in "$dest"*) ;; *) libdir="$dest$libdir" ;; esac  # pkgconf adds the sysroot, pkg-config may not
flags=$(pkg-config --cflags --libs mla) && point ok "pkg-config --cflags --libs mla: $flags" \
    || point not-ok "pkg-config --cflags --libs mla"
expected=$(pkg-config --modversion mla)
# With -Db_sanitize the installed library needs the sanitizer runtime first in the program.
san=
case "${MLA_SANITIZE:-none}" in none|'') ;; *) san="-fsanitize=$MLA_SANITIZE" ;; esac

for ex in hello.c hello.cpp; do
    case $ex in *.cpp) comp=${CXX:-c++} std=-std=c++11 ;; *) comp=${CC:-cc} std=-std=c11 ;; esac
    out="$dest/${ex%.*}_${ex##*.}"
    if $comp $std $san -Wall -Wextra -Werror "$src/examples/$ex" -o "$out" $flags 2>"$dest/cc.log"; then
        point ok "$ex builds against the installed library"
    else
        point not-ok "$ex builds against the installed library"; sed 's/^/# /' "$dest/cc.log"; continue
    fi
    got=$(LD_LIBRARY_PATH="$libdir" "$out" 2>&1)
    status=$?
    case "$got" in
    *"libmla $expected"*) [ $status -eq 0 ] && point ok "$ex runs and reports version $expected" \
                          || point not-ok "$ex exit status $status" ;;
    *) point not-ok "$ex reports version $expected"; echo "$got" | sed 's/^/# /' ;;
    esac
done
echo "1..$n"
exit $fail
