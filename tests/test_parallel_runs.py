"""orchestration.parallel_runs without Dagster runs: day ranges, the phase's concurrent commands
and their environment, a failed run's message, the memory sampler, the report."""

from __future__ import annotations

import sys

import pytest

from orchestration import parallel_runs
from orchestration.parallel_runs import MemorySampler, Phase, day_ranges, report_markdown, run_phase


def test_day_ranges_cover_every_day_once_in_contiguous_near_equal_parts():
    days = [f"2026-01-{d:02d}" for d in range(1, 31)]
    for parts in (1, 2, 3, 7, 30, 40):
        ranges = day_ranges(list(reversed(days)), parts)
        assert len(ranges) == min(parts, len(days))
        covered = [day for first, last in ranges for day in days[days.index(first):days.index(last) + 1]]
        assert covered == days  # in order, each day once
        sizes = [days.index(last) - days.index(first) + 1 for first, last in ranges]
        assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="parts must be >= 1"):
        day_ranges(days, 0)


def _fake_dagster(monkeypatch, script: str) -> None:
    """Each run a Python process running ``script`` with its day range as argv[1]."""
    def command(select, day_range):
        return [sys.executable, "-c", script, f"{day_range[0]}...{day_range[1]}" if day_range else "whole"]

    monkeypatch.setattr(parallel_runs, "materialize_command", command)


def test_a_day_phase_starts_its_runs_together_and_shares_the_cores_among_them(tmp_path, monkeypatch):
    # Each run writes its range and environment, then waits until both runs have started:
    # the phase would hang (and time out) if it ran them one after the other.
    script = (
        "import os, sys, time, pathlib\n"
        f"out = pathlib.Path({str(tmp_path)!r})\n"
        "(out / (sys.argv[1] + '.env')).write_text(os.environ['MMPIPE_CONCURRENCY'] + ' '"
        " + os.environ['MMPIPE_MAX_STEPS'])\n"
        "deadline = time.time() + 60\n"
        "while len(list(out.glob('*.env'))) < 2 and time.time() < deadline:\n"
        "    time.sleep(0.05)\n"
        "sys.exit(0 if len(list(out.glob('*.env'))) == 2 else 5)\n"
    )
    _fake_dagster(monkeypatch, script)
    days = ["2026-01-01", "2026-01-02", "2026-01-03"]
    run_phase(Phase("pins by day", "validated_pins", by_day=True), days, 2, tmp_path)
    written = {path.stem: path.read_text() for path in tmp_path.glob("*.env")}
    assert written == {"2026-01-01...2026-01-02": "2 2", "2026-01-03...2026-01-03": "2 2"}

    for path in tmp_path.glob("*.env"):
        path.unlink()
    _fake_dagster(monkeypatch, "import os, pathlib; pathlib.Path(%r, 'whole.env').write_text("
                               "os.environ['MMPIPE_CONCURRENCY'] + ' ' + os.environ['MMPIPE_MAX_STEPS'])" % str(tmp_path))
    run_phase(Phase("chain", "pinclip_model", by_day=False), days, 2, tmp_path)
    # a chain of torch steps keeps every core; its light checks may still start beside it
    assert (tmp_path / "whole.env").read_text() == "1 2"


def test_a_failed_run_fails_the_phase_with_its_log(tmp_path, monkeypatch):
    _fake_dagster(monkeypatch, "import sys; print('step validated_pins failed: bad table'); "
                               "sys.exit(1 if sys.argv[1].startswith('2026-01-02') else 0)")
    with pytest.raises(RuntimeError, match=r"1 of 2 runs failed(.|\n)*bad table"):
        run_phase(Phase("pins by day", "validated_pins", by_day=True), ["2026-01-01", "2026-01-02"], 2, tmp_path)


def test_the_memory_sampler_sees_a_child_process(tmp_path):
    import subprocess

    with MemorySampler(interval=0.05) as memory:
        subprocess.run([sys.executable, "-c", "import time; block = bytearray(300 * 2**20); time.sleep(1)"],
                       check=True)
    assert memory.peak_single_bytes >= 300 * 2**20
    assert memory.peak_bytes >= memory.peak_single_bytes


def test_the_report_lists_every_step_and_the_wall_time():
    report = {"wall_seconds": 600.0, "peak_rss_gb": 9.5, "peak_process_rss_gb": 7.25,
              "phase_seconds": {"pins by day": 61.0},
              "steps": {"validated_pins": {"seconds": 80.4, "span_seconds": 41.0, "runs": 2}}}
    text = report_markdown(report)
    assert "| validated_pins | 80 | 41 | 2 |" in text
    assert "- pins by day: 61 s" in text and "wall: 10.0 min; peak memory 9.5 GB" in text
