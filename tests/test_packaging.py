"""What `pip install` gets: one ONNX Runtime, bounded extras, no unused packages, tested floors, the
licence, py.typed and the project's metadata in the wheel."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Distributions that install the import package onnxruntime (two of them overwrite each other's files).
ONNX_RUNTIMES = {"onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"}
# The import name of each distribution whose name is not its import name.
IMPORT_NAMES = {"pillow": "PIL", "import-linter": "importlinter"}
# Required though never imported by name, and why.
USED_WITHOUT_IMPORT = {"onnxscript": "torch.onnx.export(dynamo=True) converts through it"}
TOOLS = {"pytest", "ruff", "import-linter"}  # dev tools: run, not imported


def name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement)[0].lower().replace("_", "-")


def floors() -> dict[str, str]:
    """The base dependencies' floors, by name, for this Python (a marker that is false drops one)."""
    from packaging.markers import Marker  # pytest depends on packaging

    out = {}
    for dep in PROJECT["dependencies"]:
        spec, _, marker = dep.partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate():
            continue
        out[name(spec)] = re.search(r">=\s*([0-9][^,\s]*)", spec)[1]
    return out


def test_one_onnx_runtime_in_the_base_and_none_in_an_extra() -> None:
    """The CPU build is the base dependency; no extra adds a second distribution of the same import name
    (the CUDA build replaces it by hand: pyproject.toml says how)."""
    assert [name(d) for d in PROJECT["dependencies"] if name(d) in ONNX_RUNTIMES] == ["onnxruntime"]
    for extra, reqs in PROJECT["optional-dependencies"].items():
        assert not {name(r) for r in reqs} & ONNX_RUNTIMES, extra


def test_tensorrt_is_bounded_to_the_api_the_engines_are_written_to() -> None:
    (trt,) = PROJECT["optional-dependencies"]["tensorrt"]
    assert name(trt) == "tensorrt" and ">=10" in trt and "<11" in trt


def imported(module: str, *folders: str) -> bool:
    pattern = re.compile(rf"^\s*(import|from)\s+{module}\b|importorskip\(\s*\"{module}\"", re.M)
    return any(pattern.search(p.read_text()) for folder in folders for p in (ROOT / folder).rglob("*.py"))


def test_every_package_required_is_used() -> None:
    """The product's requirements are imported by the package; the dev extra's, by the package or the tests."""
    extras = PROJECT["optional-dependencies"]
    product = PROJECT["dependencies"] + [r for e, reqs in extras.items() if e != "dev" for r in reqs]
    for reqs, folders in ((product, ("igds_fast",)), (extras["dev"], ("igds_fast", "tests"))):
        for dist in sorted({name(r) for r in reqs} - TOOLS - set(USED_WITHOUT_IMPORT)):
            module = IMPORT_NAMES.get(dist, dist.replace("-", "_"))
            assert imported(module, *folders), f"{dist} is required but never imported"
    assert "dynamo=True" in (ROOT / "igds_fast/backends/onnx_export.py").read_text()


def test_the_floors_are_the_versions_the_lowest_run_passed_with() -> None:
    """scripts/test_lowest.sh installs each floor and runs the fast tests; its record must be of these floors."""
    record = json.loads((ROOT / "benchmarks/results/lowest_versions.json").read_text())
    assert record["result"] == "pass", record.get("failure")
    assert record["floors"] == floors()
    for dist, floor in floors().items():
        if dist == "torch":
            continue  # no CPU wheel of the floor on the index: the record says which torch ran
        installed = record["installed"][dist]
        assert installed.startswith(floor), f"{dist}: the lowest run installed {installed}, not the floor {floor}"


def test_licence_and_typing_metadata() -> None:
    assert PROJECT["license"] == "Apache-2.0" and PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert not [c for c in PROJECT["classifiers"] if c.startswith("License ::")]  # PEP 639: the SPDX field only
    assert "Typing :: Typed" in PROJECT["classifiers"]
    assert (ROOT / "igds_fast/py.typed").is_file()
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert build == ["setuptools>=77"]  # the first to read license = "<SPDX expression>"


def setuptools_version() -> tuple[int, ...]:
    try:
        import setuptools
    except ImportError:
        return (0,)
    return tuple(int(x) for x in re.findall(r"\d+", setuptools.__version__)[:2])


@pytest.mark.skipif(setuptools_version() < (77,), reason="building the wheel here needs setuptools >= 77")
def test_the_wheel_ships_the_licence_py_typed_and_metadata(tmp_path: Path) -> None:
    """Built without warnings (the deprecated licence table warned), from a copy of the sources."""
    src = tmp_path / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / f, src / f)
    shutil.copytree(ROOT / "igds_fast", src / "igds_fast", ignore=shutil.ignore_patterns("__pycache__"))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            "-v",
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert not re.search(
        r"deprecat\w*.{0,80}licen[cs]e|licen[cs]e.{0,80}deprecat", res.stdout + res.stderr, re.I | re.S
    )
    (wheel,) = tmp_path.glob("igds_fast-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "igds_fast/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in meta and "License-File: LICENSE" in meta
    assert "Classifier: Typing :: Typed" in meta
    assert not re.search(r"^Requires-Dist: (onnxruntime-gpu|polygraphy|huggingface.hub)", meta, re.M)


@pytest.mark.slow
def test_pip_resolves_one_onnx_runtime(tmp_path: Path) -> None:
    """pip's own resolution of the package and its extras (but TensorRT: NVIDIA's index) holds exactly one
    distribution of onnxruntime. Needs the package index: skipped where it cannot be reached."""
    if setuptools_version() < (77,):
        pytest.skip("resolving the local project without build isolation needs setuptools >= 77")
    extras = ",".join(e for e in PROJECT["optional-dependencies"] if e != "tensorrt")
    report = tmp_path / "report.json"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-build-isolation", "-q"]
        + ["--report", str(report), f"{ROOT}[{extras}]"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if res.returncode != 0:
        if re.search(r"connection|network|resolve host|timed out|No matching distribution", res.stderr, re.I):
            pytest.skip(f"the package index is not reachable: {res.stderr.strip().splitlines()[-1]}")
        raise AssertionError(res.stderr[-2000:])
    installed = [i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]]
    assert [n for n in installed if n in ONNX_RUNTIMES] == ["onnxruntime"]
    assert "polygraphy" not in installed
