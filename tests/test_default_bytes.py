"""The default step's bytes are a contract: small default runs must give the images and job digests
recorded in benchmarks/results/default_bytes/default-small.json (written by benchmarks/default_bytes.py).

Float kernels differ between CPU kinds, so a machine without a record skips with the reason."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "default_bytes.py"
_spec = importlib.util.spec_from_file_location("default_bytes", SCRIPT)
default_bytes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(default_bytes)


def recorded_cases() -> dict:
    record = json.loads(default_bytes.RECORD.read_text())
    key = default_bytes.machine_key()
    mine = next((m for m in record["machines"] if m["key"] == key), None)
    if mine is None:
        pytest.skip(f"no recorded bytes for this machine {key}: run benchmarks/default_bytes.py --write")
    return mine["cases"]


@pytest.mark.parametrize("case", sorted(default_bytes.CASES))
def test_default_run_gives_the_recorded_bytes(case: str, tmp_path: Path) -> None:
    want = recorded_cases()[case]
    got = default_bytes.run_case(case, tmp_path / case)
    assert got["images"] == want["images"], f"{case}: images differ from the recorded default bytes"
    assert got["job"] == want["job"], f"{case}: the job digest changed (folders resume by their job file)"


def test_the_default_run_records_the_dataclass_step(tmp_path: Path) -> None:
    """StepConfig() is the step a default distill runs and records in run.json."""
    from igds_fast.config import StepConfig

    got = default_bytes.run_case("eager-fp32", tmp_path / "run")
    assert StepConfig.from_record(got["step"]) == StepConfig()
    assert got["step"] == StepConfig().identity()
