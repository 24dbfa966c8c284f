"""gpstoken.backends() and running without Triton."""
import os
import subprocess
import sys
from pathlib import Path

import gpstoken
from gpstoken.kernels import triton_available

TESTS = Path(__file__).resolve().parent


def test_backends_reports_the_active_paths():
    from gpstoken.partition import native_available

    cpu = gpstoken.backends("cpu")
    assert cpu["partition"] == ("native C" if native_available() else "torch")
    assert cpu["render"] == cpu["gradient_hist"] == "torch"
    cuda = gpstoken.backends("cuda")
    assert cuda["partition"] == "torch"
    assert cuda["render"] == ("triton" if triton_available() else "torch")
    assert cuda["triton"] != "not installed" if triton_available() else cuda["triton"] == "not installed"


def test_no_triton_run_really_blocks_triton():
    if os.environ.get("GPSTOKEN_TEST_NO_TRITON") != "1":
        return  # the normal run; .ci/run repeats the public-API tests with the blocker
    assert not triton_available() and gpstoken.backends()["triton"] == "not installed"
    assert "triton" not in sys.modules


def test_import_and_cpu_paths_work_without_triton(tmp_path):
    """A fresh interpreter where ``import triton`` fails: import, partition, render, encode/decode."""
    code = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
import no_triton
no_triton.install()
import numpy as np, torch, gpstoken
assert gpstoken.backends()["triton"] == "not installed"
img = (np.random.default_rng(0).random((48, 40, 3)) * 255).astype(np.uint8)
layout = gpstoken.partition(img, 16)
g = torch.tensor([[[0.1, 0.1, 0.0, 0.0, 0.0]]]); f = torch.ones(1, 1, 2)
assert gpstoken.render(g, f, size=(8, 8)).shape == (1, 2, 8, 8)
tokens = gpstoken.encode(img, 16)
tokens.save({str(tmp_path / 'x.gpst')!r})
assert gpstoken.decode(gpstoken.GPSTokens.load({str(tmp_path / 'x.gpst')!r})).size == (40, 48)
assert not any(m.startswith("triton") for m in sys.modules)
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
