"""`make bench --quick` end to end: every benchmark reports, every figure is a finite number
with its baseline, and the Markdown table has one row per figure. No timing assertions: the
quick sizes prove it runs, not how fast."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

BENCHMARKS = {"pinclip_step", "mac_step", "moment_step", "chan_step", "embedding", "index", "incremental", "memory",
              "serving"}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_bench_reports_every_benchmark(tmp_path):
    # Its own process, as `make bench` runs it: the benchmarks set torch's threads, the
    # scale and MLflow's location for the whole process (run_all.py puts this checkout first
    # on the path itself).
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "benchmarks" / "run_all.py"), "--quick",
                           "--out", str(tmp_path), "--workdir", str(tmp_path / "incremental")],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    report = json.loads((tmp_path / "bench.json").read_text())
    figures = report["figures"]
    assert set(report["benchmarks"]) == BENCHMARKS == {f["benchmark"] for f in figures}
    for figure in figures:
        for key in ("value", "baseline_value", "ratio"):
            assert isinstance(figure[key], float | int) and math.isfinite(figure[key]), (figure["name"], key)
        assert figure["baseline_value"] > 0 and figure["unit"] and figure["baseline"], figure["name"]
        assert math.isclose(figure["ratio"], figure["value"] / figure["baseline_value"])
    for key in ("cpu", "cores", "threads", "ram_gib", "torch", "faiss", "date", "commit"):
        assert report["machine"][key], key

    rows = [line for line in (tmp_path / "bench.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| benchmark |")]
    assert len(rows) == len(figures)
    for row, figure in zip(rows, figures):
        assert row.startswith(f"| {figure['benchmark']} | {figure['name']} |")
