#!/usr/bin/env python3
"""Line coverage of lib/ in a meson build set up with -Db_coverage=true, after its tests ran.

Usage: tests/coverage.py BUILD_DIR [--all]

A line counts as run when any compile unit ran it. Some sources are compiled twice (the
library's AVX-512 and AMX kernels natively, and again over SIMDe and emulated tiles for the
suite `emulated`, doc/testing.md); gcovr 8 keeps a line once for each function it is compiled
into, so the natively compiled copy that never runs here counts as a second, uncovered line.
This merges gcov's own per-unit counts by file and line instead. Prints files under 100% (all
with --all) and the total.
"""
import collections
import glob
import json
import os
import subprocess
import sys


def main():
    args = [a for a in sys.argv[1:] if a != '--all']
    if len(args) != 1 or not os.path.isdir(args[0]):
        sys.exit('usage: tests/coverage.py BUILD_DIR [--all]')
    build = os.path.abspath(args[0])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    gcdas = glob.glob(os.path.join(build, '**', '*.gcda'), recursive=True)
    if not gcdas:
        sys.exit(f'{build}: no .gcda files (set up with -Db_coverage=true, then run the tests)')
    counts = collections.defaultdict(dict)
    for gcda in gcdas:
        run = subprocess.run(['gcov', '--json-format', '--stdout', '-o', os.path.dirname(gcda),
                              gcda], cwd=build, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f'gcov failed on {gcda}: {run.stderr.strip()}')
        for doc in run.stdout.splitlines():
            if not doc.strip():
                continue
            for f in json.loads(doc)['files']:
                path = os.path.relpath(os.path.normpath(os.path.join(build, f['file'])), root)
                if not path.startswith('lib' + os.sep):
                    continue
                for line in f['lines']:
                    n = line['line_number']
                    counts[path][n] = counts[path].get(n, 0) + line['count']
    total = run_lines = 0
    for path in sorted(counts):
        lines = counts[path]
        ran = sum(1 for c in lines.values() if c > 0)
        total += len(lines)
        run_lines += ran
        if ran < len(lines) or '--all' in sys.argv:
            missed = sorted(n for n, c in lines.items() if c == 0)
            shown = ','.join(map(str, missed[:12])) + (',…' if len(missed) > 12 else '')
            print(f'{path:42s} {ran:5d}/{len(lines):5d} {100 * ran / len(lines):6.1f}%  {shown}')
    print(f'{"total":42s} {run_lines:5d}/{total:5d} {100 * run_lines / max(total, 1):6.1f}%')


if __name__ == '__main__':
    main()
