#!/usr/bin/env python3
"""The exported symbols of libmla.so are exactly the functions the public headers declare with
MLA_API, and the linker map lists the same set. Prints TAP."""
import pathlib
import re
import subprocess
import sys

lib, include_dir, map_file = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])

declared = set()
for header in sorted(include_dir.glob("*.h")):
    text = re.sub(r"/\*.*?\*/", "", header.read_text(), flags=re.S)
    declared |= set(re.findall(r"MLA_API\s+[^;{]*?\b(mla_\w+)\s*\(", text))

mapped = set(re.findall(r"^\s+(mla_\w+);", map_file.read_text(), flags=re.M))

nm = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True, check=True)
exported = set()
for line in nm.stdout.splitlines():
    parts = line.split()
    if len(parts) == 3 and parts[1] in "TtDdBbRrWwVvi":
        exported.add(parts[2].split("@")[0])

checks = [
    (declared == exported, "exported == declared",
     f"exported but not declared: {sorted(exported - declared)}; "
     f"declared but not exported: {sorted(declared - exported)}"),
    (declared == mapped, "libmla.map == declared",
     f"mapped but not declared: {sorted(mapped - declared)}; "
     f"declared but not mapped: {sorted(declared - mapped)}"),
    (all(s.startswith("mla_") for s in exported), "every exported symbol starts with mla_",
     str(sorted(s for s in exported if not s.startswith("mla_")))),
    (len(declared) > 0, f"headers declare {len(declared)} functions", "none found"),
]
for i, (ok, what, detail) in enumerate(checks, 1):
    print(f"{'ok' if ok else 'not ok'} {i} - {what}")
    if not ok:
        print(f"#   {detail}")
print(f"1..{len(checks)}")
sys.exit(0 if all(c[0] for c in checks) else 1)
