"""mla/_ffi.py mirrors include/mla/*.h: every function, signature, enum value, struct layout."""
import ctypes
import ctypes.util
import os
import re
import subprocess
import sys

import pytest

import mla
from mla import _ffi
from util import ROOT, compile_c

HEADERS = sorted((ROOT / "include" / "mla").glob("*.h"))


def _header_text():
    text = "\n".join(h.read_text() for h in HEADERS)
    return re.sub(r"/\*.*?\*/", " ", text, flags=re.S)


def _declarations():
    """{name: (return type, [parameter types])} of every MLA_API function."""
    out = {}
    for m in re.finditer(r"MLA_API\s+([^;{()]*?)\b(mla_\w+)\s*\(([^)]*)\)\s*;", _header_text()):
        ret, name, params = m.group(1), m.group(2), " ".join(m.group(3).split())
        types = []
        if params != "void":
            for p in params.split(","):
                p = p.strip()
                types.append(re.match(r"^(.*?)\s*\b\w+$", p).group(1))  # drop the name
        out[name] = (ret.strip(), types)
    return out


_SCALARS = {"mla_status": ctypes.c_int, "mla_dtype": ctypes.c_int, "int": ctypes.c_int,
            "int32_t": ctypes.c_int32, "int64_t": ctypes.c_int64, "size_t": ctypes.c_size_t,
            "float": ctypes.c_float, "double": ctypes.c_double}


def _ctype_of(c_type):
    """The ctypes type a C parameter or return type must be declared as."""
    stars = c_type.count("*")
    base = re.sub(r"\b(const|struct)\b|\*", " ", c_type).split()
    assert len(base) == 1, c_type
    base = base[0]
    if base == "void":
        return None if stars == 0 else (ctypes.c_void_p if stars == 1 else None)
    if base == "char" and stars == 1:
        return ctypes.c_char_p
    t = _SCALARS.get(base) or getattr(_ffi, base)
    for _ in range(stars):
        t = ctypes.POINTER(t)
    return t


def test_every_header_function_is_declared_and_nothing_else():
    declared = set(_declarations())
    assert len(declared) > 40
    assert declared == set(_ffi.FUNCTIONS), (
        f"missing in _ffi: {sorted(declared - set(_ffi.FUNCTIONS))}; "
        f"not in headers: {sorted(set(_ffi.FUNCTIONS) - declared)}")


@pytest.mark.parametrize("name", sorted(_declarations()))
def test_signature_matches_header(name):
    ret, params = _declarations()[name]
    restype, argtypes = _ffi.FUNCTIONS[name]
    assert restype is _ctype_of(ret), f"{name} returns {ret}"
    assert len(argtypes) == len(params), f"{name}: {len(params)} parameters in the header"
    for i, (got, c_type) in enumerate(zip(argtypes, params)):
        assert got is _ctype_of(c_type), f"{name} parameter {i}: header says {c_type}"


def test_enum_values_match_header():
    text = _header_text()
    values = dict((m.group(1), int(m.group(2)))
                  for m in re.finditer(r"\b(MLA_[A-Z0-9_]+)\s*=\s*(\d+)\s*,", text))
    defines = dict((m.group(1), int(m.group(2)))
                   for m in re.finditer(r"#\s*define\s+(MLA_[A-Z_]+)\s+(\d+)\s*$", text, re.M))
    values.update(defines)
    assert len(values) > 30
    for name, v in values.items():
        assert getattr(_ffi, name) == v, name
    # The pythonic enums have exactly the header's values.
    for cls, prefix in ((mla.Status, ("MLA_OK", "MLA_ERR_")), (mla.DType, ("MLA_DTYPE_",)),
                        (mla.RopeStrategy, ("MLA_ROPE_HIGH", "MLA_ROPE_LOW", "MLA_ROPE_UNI",
                                            "MLA_ROPE_2NORM", "MLA_ROPE_EXPLICIT")),
                        (mla.Factorization, ("MLA_FACTOR_",)),
                        (mla.AttnPath, ("MLA_ATTN_PATH_",)),
                        (mla.AttnThreads, ("MLA_ATTN_THREADS_",)), (mla.LayerKind, ("MLA_LAYER_",)),
                        (mla.RopeScaling, ("MLA_ROPE_SCALING_",))):
        want = {v for k, v in values.items() if k.startswith(prefix)}
        assert {m.value for m in cls} == want, cls


def _structs():
    return {name: cls for name, cls in vars(_ffi).items()
            if isinstance(cls, type) and issubclass(cls, ctypes.Structure) and
            hasattr(cls, "_fields_")}


def test_struct_layouts_match_the_c_compiler(tmp_path):
    structs = _structs()
    assert len(structs) == 11
    lines = ["#include <stddef.h>", "#include <stdio.h>", "#include <mla/mla.h>",
             "int main(void) {"]
    for name, cls in structs.items():
        lines.append(f'printf("{name} %zu %zu\\n", sizeof({name}), _Alignof({name}));')
        for field, _ in cls._fields_:
            lines.append(f'printf("{name}.{field} %zu %zu\\n", offsetof({name}, {field}), '
                         f'sizeof((({name} *)0)->{field}));')
    lines.append("return 0; }")
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = compile_c(src, tmp_path / "layout", link=False)
    c = {}
    for line in subprocess.run([str(exe)], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        key, a, b = line.split()
        c[key] = (int(a), int(b))
    for name, cls in structs.items():
        assert c[name] == (ctypes.sizeof(cls), ctypes.alignment(cls)), name
        names = [f for f, _ in cls._fields_]
        for field in names:
            desc = getattr(cls, field)
            assert c[f"{name}.{field}"] == (desc.offset, desc.size), f"{name}.{field}"


def test_every_declared_function_is_exported_by_the_library():
    lib = mla.library()
    assert lib.missing == [], f"{lib.path} lacks {lib.missing}"


def test_versions_agree():
    meson = re.search(r"version\s*:\s*'([\d.]+)'", (ROOT / "meson.build").read_text()).group(1)
    pyproject = re.search(r'^version\s*=\s*"([\d.]+)"',
                          (ROOT / "bindings/python/pyproject.toml").read_text(), re.M).group(1)
    cargo = re.search(r'^version\s*=\s*"([\d.]+)"',
                      (ROOT / "bindings/rust/Cargo.toml").read_text(), re.M).group(1)
    assert meson == pyproject == cargo == mla.__version__
    assert mla.library_version() == meson
    assert mla.library().mla_version() == _ffi.VERSION_NUMBER


def test_library_lookup_and_version_check(monkeypatch, tmp_path):
    with pytest.raises(mla.LibraryError, match="cannot load"):
        mla.load_library(tmp_path / "nope.so")
    current = mla.library()
    monkeypatch.setattr(_ffi, "VERSION_NUMBER", 10000)  # a binding for 1.0.0
    with pytest.raises(mla.LibraryVersionError, match="version 0.1.0"):
        mla.load_library(current.path)
    monkeypatch.setattr(_ffi, "VERSION_NUMBER", _ffi.VERSION_NUMBER + 100)  # a newer minor
    with pytest.raises(mla.LibraryVersionError, match="or a newer"):
        mla.load_library(current.path)
    monkeypatch.setattr(_ffi, "VERSION_NUMBER", _ffi.VERSION_MAJOR * 10000)  # x.0.0: older is ok
    assert mla.load_library(current.path).path == current.path
    monkeypatch.undo()
    assert mla.load_library(current.path).path == current.path
    # An explicit path comes before $MLA_LIBRARY.
    monkeypatch.setenv("MLA_LIBRARY", str(tmp_path / "nope.so"))
    assert mla.load_library(current.path).path == current.path
    with pytest.raises(mla.LibraryError, match="nope.so"):
        mla.load_library()
    monkeypatch.undo()
    assert mla.load_library(current.path).path == current.path


def _python(code, **env):
    e = {k: v for k, v in os.environ.items() if k != "MLA_LIBRARY"}
    e.update(env)
    e["PYTHONPATH"] = str(ROOT / "bindings" / "python")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e)


def test_import_without_a_library_defers_to_load_library():
    lib = os.environ["MLA_LIBRARY"]
    r = _python("import mla, ctypes.util\n"
                "if ctypes.util.find_library('mla') is None:\n"
                "    try:\n"
                "        mla.Attn()\n"
                "    except mla.LibraryError as e:\n"
                "        print('deferred:', 'MLA_LIBRARY' in str(e))\n"
                f"mla.load_library({lib!r})\n"
                "with mla.Attn() as a:\n"
                "    print('loaded', mla.library_version())\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == f"loaded {mla.__version__}"
    assert "deferred: True" in r.stdout or ctypes.util.find_library("mla")
    r = _python("import mla", MLA_LIBRARY="/nonexistent/libmla.so")
    assert r.returncode != 0 and "LibraryError" in r.stderr and "/nonexistent" in r.stderr
