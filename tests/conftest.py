"""Test configuration.

* ``TRITON_INTERPRET=1`` is set before any kernel module is imported, so Triton kernels
  run on the CPU interpreter when there is no GPU (set ``GPSTOKEN_TEST_NO_INTERPRET=1``
  to test the real kernels on a GPU).
* ``GPSTOKEN_TEST_NO_TRITON=1`` makes ``import triton`` fail (``tests/no_triton.py``), to test
  a machine without Triton.
* ``official`` fixture: the folder of official reference outputs, ``../shared/fixtures/official``
  next to the repository. Tests that need it skip with a reason when it is absent, except
  when ``CI`` is set, where its absence is an error.
"""
import os
import sys
from pathlib import Path

if os.environ.get("GPSTOKEN_TEST_NO_TRITON") == "1":
    sys.path.insert(0, str(Path(__file__).parent))
    import no_triton

    no_triton.install()

if not os.environ.get("GPSTOKEN_TEST_NO_INTERPRET"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = Path(os.environ.get("GPSTOKEN_FIXTURES", REPO.parent / "shared" / "fixtures" / "official"))


@pytest.fixture(scope="session")
def official() -> Path:
    """Path of the official fixtures folder (skips when absent outside CI)."""
    if not OFFICIAL.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"official fixtures not found at {OFFICIAL}; CI must run the parity tests")
        pytest.skip(f"official fixtures not found at {OFFICIAL} (they live in ../shared beside the repo)")
    return OFFICIAL


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A tiny randomly initialised tokenizer (16 tokens, 4 features): fast, for tests of the
    public API's input handling, which does not depend on the weights."""
    from gpstoken.models.configs import DecoderConfig, TokenizerConfig
    from gpstoken.models.tokenizer import GPSTokenizer
    from gpstoken.pipeline import Tokenizer

    torch.manual_seed(0)
    config = TokenizerConfig(gpsenc_n=1, gpsenc_c=32, gps_num=16, gps_c=4,
                             decoder=DecoderConfig(ch=32, ch_mult=(1, 1, 1), num_res_blocks=0, z_channels=4))
    return Tokenizer(GPSTokenizer(config), "tiny", torch.device("cpu"), torch.float32)
