"""`compare_schedules.py --preset smoke` runs end to end and every run writes its metrics (run in CI)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
@pytest.mark.ci
def test_compare_schedules_smoke_preset_writes_every_run(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks/compare_schedules.py"), "--preset", "smoke",
               "--output-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "results/compare_schedules_smoke.json").read_text())
    assert data["preset"] == "smoke" and "command" in data
    names = [run["name"] for run in data["runs"]]
    assert names == ["mdlm-k1", "lomdm", "mdlm-k2", "per_position", "polynomial", "ar"]
    for run in data["runs"]:
        assert run["steps"] == [3, 6] and len(run["val_ppl"]) == len(run["wall_s"]) == 2, run["name"]
        assert all(math.isfinite(p) for p in run["val_ppl"]) and run["tokens_per_s"] > 0
        if run["name"] != "ar":
            assert "random" in run["gen_ppl"] and "random" in run["entropy"]
    assert {"learned", "random"} <= set(data["runs"][1]["gen_ppl"])  # lomdm: both orders at equal steps
    assert (tmp_path / "results/compare_schedules_smoke.md").read_text().startswith("| run |")
