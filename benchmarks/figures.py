"""What every benchmark returns and how ``run_all.py`` writes it down.

A :class:`Figure` is one number next to the number it is judged against, both measured in
the same run (MFU: achieved FLOP/s against this machine's fp32 matmul; an index's QPS
against exact search's), so the ratio means something on any machine, loaded or not.
:func:`machine` records where the run happened; :func:`write_report` writes the one JSON
and the one Markdown table, each atomically.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from mmpipe.io import write_bytes_atomic

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Figure:
    benchmark: str  # the benchmark that measured it ("index", "mac_step", ...)
    name: str  # what was measured ("HNSW32 QPS", "masked step time", ...)
    value: float
    unit: str
    baseline: str  # what it is compared to, measured in the same run
    baseline_value: float
    note: str = ""  # the raw numbers behind the ratio, or the settings it ran with

    @property
    def ratio(self) -> float:
        """value / baseline_value (a speedup for throughputs, a fraction for times and sizes)."""
        return self.value / self.baseline_value if self.baseline_value else math.nan

    def to_dict(self) -> dict:
        # JSON has no NaN: an unmeasured number is null (the test of the report rejects it).
        return {key: None if isinstance(value, float) and not math.isfinite(value) else value
                for key, value in {**asdict(self), "ratio": self.ratio}.items()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return math.nan


def ram_bytes() -> float:
    return _ram_gib() * 2**30


def _git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD")
        # A dirty tree's numbers belong to no commit: say so rather than credit HEAD.
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine(threads: int) -> dict:
    """Where and with what the figures were measured."""
    import faiss
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "threads": threads,
            "ram_gib": round(_ram_gib(), 1), "gpu": gpu, "python": platform.python_version(),
            "torch": torch.__version__, "faiss": faiss.__version__,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": _git_commit()}


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def markdown(figures: list[Figure], machine_info: dict, settings: dict) -> str:
    m = machine_info
    lines = [f"# Benchmarks, {m['date']} at {m['commit']}", "",
             f"{m['cpu']}, {m['threads']} of {m['cores']} cores, {m['ram_gib']} GiB RAM, "
             f"GPU: {m['gpu'] or 'none'}; torch {m['torch']}, faiss {m['faiss']}, Python {m['python']}.", "",
             "Settings: " + ", ".join(f"{key} {value}" for key, value in settings.items()) + ".", "",
             "| benchmark | figure | value | unit | compared to | baseline | ratio | note |",
             "|---|---|---:|---|---|---:|---:|---|"]
    for f in figures:
        lines.append(f"| {f.benchmark} | {f.name} | {_number(f.value)} | {f.unit} | {f.baseline} | "
                     f"{_number(f.baseline_value)} | {_number(f.ratio)} | {f.note} |")
    return "\n".join(lines) + "\n"


def write_report(figures: list[Figure], machine_info: dict, settings: dict, out: Path) -> tuple[Path, Path]:
    """``out/bench.json`` and ``out/bench.md``, each replaced whole or not at all."""
    out = Path(out)
    record = {"machine": machine_info, "settings": settings,
              "benchmarks": sorted({f.benchmark for f in figures}),
              "figures": [f.to_dict() for f in figures]}
    json_path = write_bytes_atomic(json.dumps(record, indent=2, allow_nan=False).encode(), out / "bench.json")
    md_path = write_bytes_atomic(markdown(figures, machine_info, settings).encode(), out / "bench.md")
    return json_path, md_path
