"""Make ``import triton`` fail, as on a machine without Triton (macOS, Windows).

``tests/conftest.py`` installs this blocker when ``GPSTOKEN_TEST_NO_TRITON=1`` (``.ci/run``
runs the public-API tests a second time that way); ``install()`` must run before anything
imports triton.
"""
import importlib.abc
import sys


class _BlockTriton(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: GPSTOKEN_TEST_NO_TRITON)", name=name)
        return None


def install() -> None:
    if any(isinstance(f, _BlockTriton) for f in sys.meta_path):
        return
    if any(m == "triton" or m.startswith("triton.") for m in sys.modules):
        raise RuntimeError("no_triton.install(): triton is already imported")
    sys.meta_path.insert(0, _BlockTriton())
