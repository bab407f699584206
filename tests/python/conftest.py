"""pytest setup: the binding and the numpy reference from this tree, libmla from $MLA_LIBRARY."""
import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "reference"))
sys.path.insert(0, str(ROOT / "bindings" / "python"))
sys.path.insert(0, str(ROOT / "tests" / "python"))


def pytest_configure(config):
    lib = os.environ.get("MLA_LIBRARY")
    if not lib:
        raise pytest.UsageError("set MLA_LIBRARY to the libmla.so under test, "
                                "e.g. MLA_LIBRARY=build/lib/libmla.so pytest tests/python")
    if not os.path.exists(lib):
        raise pytest.UsageError(f"MLA_LIBRARY={lib} does not exist: build it first")
