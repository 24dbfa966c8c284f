"""Build the data pack that a GPU session (``examples/gpu/session.py``) carries to the device machine.

The device machine has no network and no ``mvtb-data``, and its Python (3.12) cannot load the
native partition built here. This script writes, into ``.devdata/gpu`` (ignored by git; name it in
the device tool's ``carry``), everything the session needs besides the tracked tree:

* ``data/train/``: every offline training photo (``gpstoken.train.photos.offline_images("train")``:
  scikit-image, scikit-learn, matplotlib and the ``mvtb-data`` photos), as JPEG (quality 95, no
  chroma subsampling), photos whose shorter side exceeds ``--max-short-side`` (512: the largest
  size the light recipe's ``scale_range`` [1, 2] resizes to) downscaled to it first. About 12 MB
  instead of the 82 MB of PNGs. A folder training source reads them.
* ``data/heldout/``: the evaluation crops of the held-out photos (``OFFLINE_HELDOUT``): shorter
  side 256, centre 256x256, lossless PNG, i.e. exactly what the protocol reads, so held-out numbers
  computed from this folder equal those from the original photos (``--crops 1``).
* ``data/classes/NAME/NAME.png``: the 16 labeled class pictures of the generator's training
  (``OFFLINE_CLASSES``), lossless; sorted folder names give the same class indices.
* ``_cpartition.abi3.so``: the native partition built for CPython's stable ABI (3.11+), so the
  device's Python 3.12 loads it (the session copies it into ``gpstoken/``); missing when no C
  compiler is present (the session then tries the device's compiler, then the pure-torch path).
* ``manifest.json``: what is inside (sources, original sizes) and the commit it was built from.

The pack is written to ``.devdata/.gpu.partial`` and moved into place when complete. Finally the
script prints the size of what the device tool would send (tracked and untracked-not-ignored
files plus the pack) and fails when it exceeds the tool's 64 MiB.

    python examples/gpu/prepare.py            # then the run call of docs/model_card.md
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Sequence

from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from gpstoken.images import center_crop, resize_short_side  # noqa: E402
from gpstoken.io import commit_dir, partial_dir  # noqa: E402
from gpstoken.train.photos import OFFLINE_HELDOUT, offline_images  # noqa: E402

PACK = REPO / ".devdata" / "gpu"
#: the device tool's limit on what travels (tracked + untracked-not-ignored files + carried paths)
TRAVEL_LIMIT = 64 * 2**20
FORMAT_VERSION = 1


def file_stem(name: str) -> str:
    """A file name for an entry name such as ``mvtb:campus/P1070491.png`` -> ``mvtb_campus_P1070491``."""
    stem = name.rsplit(".", 1)[0] if name.lower().endswith((".png", ".jpg", ".jpeg")) else name
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)


def write_train(folder: Path, max_short: int, quality: int) -> list[dict]:
    folder.mkdir(parents=True)
    rows = []
    for entry in offline_images("train"):
        im = Image.fromarray(entry.load())
        size = im.size
        if min(size) > max_short:
            im = resize_short_side(im, max_short)
        path = folder / f"{file_stem(entry.name)}.jpg"
        im.save(path, "JPEG", quality=quality, subsampling=0)
        rows.append({"file": path.name, "source": entry.name, "original_size": list(size), "size": list(im.size)})
    return rows


def write_heldout(folder: Path, names: Sequence[str] = OFFLINE_HELDOUT) -> list[dict]:
    """The evaluation crops of the held-out photos ``names`` as ``NN_NAME.png`` in ``folder``."""
    folder.mkdir(parents=True)
    entries = {e.name: e for e in offline_images("heldout")}
    missing = [n for n in names if n not in entries]
    if missing:
        raise SystemExit(f"prepare: held-out photos {missing} are not installed (pip install 'gpstoken[train]', "
                         "which brings mvtb-data)")
    rows = []
    for i, name in enumerate(names):
        crop = center_crop(Image.fromarray(entries[name].load()), 256)
        path = folder / f"{i:02d}_{file_stem(name)}.png"
        crop.save(path)
        rows.append({"file": path.name, "source": name})
    return rows


def write_classes(folder: Path) -> list[str]:
    names = []
    for entry in offline_images("train", labeled=True):
        name = entry.name.split(":", 1)[1]
        (folder / name).mkdir(parents=True)
        Image.fromarray(entry.load()).save(folder / name / f"{name}.png")
        names.append(name)
    if names != sorted(names):
        raise SystemExit(f"prepare: class names {names} are not sorted; a folder source would number them otherwise")
    return names


def compile_native(out: Path) -> Path:
    """Compile ``gpstoken/csrc/cpartition.c`` for CPython's stable ABI (``Py_LIMITED_API`` 3.11, so
    any CPython >= 3.11 loads it) into ``out/_cpartition.abi3.so`` with the flags of
    ``pyproject.toml``'s extension module; ``$CC`` or ``cc``. Raises ImportError (Python 3.10: no
    ``tomllib``), OSError or ``subprocess.CalledProcessError`` (its stderr kept) when that fails."""
    import tomllib

    ext = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["ext-modules"][0]
    target = out / "_cpartition.abi3.so"
    cmd = [os.environ.get("CC", "cc"), *ext["extra-compile-args"], *ext.get("extra-link-args", []), "-shared",
           "-fPIC", "-DPy_LIMITED_API=0x030B0000", f"-I{sysconfig.get_paths()['include']}",
           *(str(REPO / src) for src in ext["sources"]), "-o", str(target)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return target


def build_native(out: Path) -> str | None:
    """:func:`compile_native` into ``out``; the file name, or None (with a note) when it fails."""
    try:
        return compile_native(out).name
    except (ImportError, OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        print(f"prepare: note: no stable-ABI native partition ({detail.strip()[:300]}); the session will try the "
              "device's compiler, then the pure-torch partition", file=sys.stderr)
        return None


def travel_bytes(extra: Path) -> int:
    """Bytes the device tool would send: tracked and untracked-not-ignored files, plus ``extra``."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         check=True, capture_output=True).stdout
    files = [REPO / p for p in out.decode().split("\0") if p]
    total = sum(p.stat().st_size for p in files if p.is_file())
    return total + sum(p.stat().st_size for p in extra.rglob("*") if p.is_file())


def commit_id() -> str:
    r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-short-side", type=int, default=512,
                   help="downscale training photos whose shorter side exceeds this (default 512)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality of the training photos (default 95)")
    a = p.parse_args()
    if a.max_short_side < 256:
        raise SystemExit(f"--max-short-side: must be >= 256 (the training crop), got {a.max_short_side}")
    if not 50 <= a.quality <= 100:
        raise SystemExit(f"--quality: expected 50-100, got {a.quality}")
    tmp = partial_dir(PACK)
    train = write_train(tmp / "data" / "train", a.max_short_side, a.quality)
    heldout = write_heldout(tmp / "data" / "heldout")
    classes = write_classes(tmp / "data" / "classes")
    native = build_native(tmp)
    manifest = {"format_version": FORMAT_VERSION, "commit": commit_id(), "max_short_side": a.max_short_side,
                "jpeg_quality": a.quality, "native": native, "train": train, "heldout": heldout, "classes": classes}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    pack_mib = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) / 2**20
    commit_dir(tmp, PACK)
    total = travel_bytes(PACK)
    print(f"wrote {PACK.relative_to(REPO)}: {len(train)} training photos, {len(heldout)} held-out crops, "
          f"{len(classes)} classes, native partition {native or 'not built'}; {pack_mib:.1f} MiB")
    print(f"the device tool would send {total / 2**20:.1f} MiB (limit {TRAVEL_LIMIT / 2**20:.0f} MiB)")
    if total > TRAVEL_LIMIT:
        print("prepare: error: over the limit; remove untracked files or lower --max-short-side", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
