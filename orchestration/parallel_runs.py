"""A part of the graph as phases of Dagster runs, the day-partitioned phases as concurrent runs
over disjoint days; with the time of every step read back from the event log.

A run covers one partition range and materializes a partitioned asset as one step over all of
it (single-run backfill policy, ``orchestration/partitions.py``). For days to materialize in
parallel, a phase of day-partitioned assets is split into ``parallel`` runs over contiguous day
ranges, started together; a phase of whole-table assets is one run. Every run is the CLI's
``dagster asset materialize`` against ``$DAGSTER_HOME`` with the mode's executor
(``MMPIPE_MODE=multiprocess``: each step a process, ``MMPIPE_CONCURRENCY`` at once), and the next
phase starts when every run of this one has succeeded.

``MMPIPE_CONCURRENCY`` is set per phase, so torch threads follow what really runs side by side:
``parallel`` in a phase of day runs (their steps share the cores), the phase's own number in a
whole-table phase (1 for a chain of torch steps, which then takes every core). Every run may
start ``parallel`` steps at once (``MMPIPE_MAX_STEPS``): a step process spends seconds starting
(forked, then planning its step), which the light asset checks then spend beside a torch step.

    python -m orchestration.parallel_runs pin-side --parallel 2 --report storage/reports/pin_side_runs.json

prints each asset's step time, each phase's wall time, the whole wall time and the peak memory
(the resident memory of every process the phases started, summed, sampled each second; Linux).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mmpipe.io import write_bytes_atomic
from mmpipe.train.distributed import CONCURRENCY_ENV
from orchestration.deployment import MAX_STEPS_ENV


@dataclass(frozen=True)
class Phase:
    name: str
    select: str  # a Dagster asset selection (comma-separated keys)
    by_day: bool  # day-partitioned: `parallel` runs over disjoint day ranges
    concurrency: int = 1  # a whole-table phase's steps at once (MMPIPE_CONCURRENCY)


# The medium world's pin side (issue 18): validation, graph, PinCLIP, its eval and gate, the
# embeddings of every pin and the FAISS index. Interactions wait for every day's pins (a day's
# references are checked against the pins of that day and earlier); the middle phase is a chain
# of torch steps (caption cache, two trainings kept apart by the `training` pool, eval), so it
# runs one step at a time with all cores.
PIN_SIDE = (
    Phase("raw and dimension tables", "raw_pins,raw_boards,raw_board_pins,raw_users,raw_interactions,"
          "validated_boards,validated_users", by_day=False, concurrency=2),
    Phase("pins by day", "validated_pins", by_day=True),
    Phase("interactions by day", "validated_interactions", by_day=True),
    Phase("caption cache, graph, PinCLIP, eval, gate", "validated_board_pins,pin_text_features,graph_neighbor_pairs,"
          "pinclip_model,pinclip_no_neighbor_model,eval_pinclip,pinclip_champion", by_day=False),
    Phase("embeddings by day", "pin_embeddings", by_day=True),
    Phase("index", "faiss_pin_index", by_day=False),
)
PLANS = {"pin-side": PIN_SIDE}


def day_ranges(days: list[str], parts: int) -> list[tuple[str, str]]:
    """``days`` (sorted) cut into at most ``parts`` contiguous (first, last) ranges of near-equal length.

    >>> day_ranges(["d1", "d2", "d3", "d4", "d5"], 2)
    [('d1', 'd3'), ('d4', 'd5')]
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    days = sorted(days)
    parts = min(parts, len(days))
    base, extra = divmod(len(days), parts)
    ranges, start = [], 0
    for part in range(parts):
        stop = start + base + (part < extra)
        ranges.append((days[start], days[stop - 1]))
        start = stop
    return ranges


def materialize_command(select: str, day_range: tuple[str, str] | None) -> list[str]:
    command = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "orchestration.definitions",
               "--select", select]
    if day_range is not None:
        command += ["--partition-range", f"{day_range[0]}...{day_range[1]}"]
    return command


class MemorySampler:
    """Peak summed resident memory of this process's descendants, sampled every ``interval`` s from /proc."""

    def __init__(self, interval: float = 1.0):
        self.interval, self.peak_bytes, self.peak_single_bytes = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _descendant_rss(self) -> list[int]:
        parent, rss = {}, {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # the process ended between listing and reading
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
            parent[int(entry)], rss[int(entry)] = int(fields[1]), int(fields[21]) * self._page
        ours, frontier = set(), {os.getpid()}
        while frontier:
            ours |= frontier
            frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - ours
        return [rss[pid] for pid in ours - {os.getpid()}]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            sizes = self._descendant_rss()
            self.peak_bytes = max(self.peak_bytes, sum(sizes))
            self.peak_single_bytes = max([self.peak_single_bytes, *sizes])

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_phase(phase: Phase, days: list[str], parallel: int, log_dir: Path) -> None:
    """Start the phase's runs together and wait for all; a failed run fails the phase with its log's tail."""
    ranges = day_ranges(days, parallel) if phase.by_day else [None]
    env = {**os.environ, CONCURRENCY_ENV: str(len(ranges) if phase.by_day else phase.concurrency),
           MAX_STEPS_ENV: str(max(parallel, phase.concurrency))}
    started = []
    for number, day_range in enumerate(ranges):
        log = log_dir / f"{phase.select.split(',')[0]}_{number}.log"
        with open(log, "w") as handle:
            started.append((subprocess.Popen(materialize_command(phase.select, day_range), stdout=handle,
                                             stderr=subprocess.STDOUT, env=env), log))
    failed = [log for process, log in started if process.wait() != 0]
    if failed:
        tail = "\n".join(failed[0].read_text().splitlines()[-30:])
        raise RuntimeError(f"phase {phase.name!r}: {len(failed)} of {len(started)} runs failed "
                           f"({', '.join(map(str, failed))}); the end of the first:\n{tail}")


def step_times(instance, since: float) -> dict[str, dict]:
    """Per step key (the asset or check name) over every run created since ``since`` (epoch s):
    the summed seconds of its steps, the runs it ran in, and the span from its first start to its last end."""
    import dagster as dg

    records = instance.get_run_records(dg.RunsFilter(created_after=datetime.fromtimestamp(since, timezone.utc)))
    steps: dict[str, dict] = {}
    for record in records:
        starts = {}
        for entry in instance.all_logs(record.dagster_run.run_id, of_type={
                dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}):
            key = entry.step_key
            if entry.dagster_event.event_type == dg.DagsterEventType.STEP_START:
                starts[key] = entry.timestamp
                continue
            step = steps.setdefault(key, {"seconds": 0.0, "runs": 0, "first_start": entry.timestamp,
                                          "last_end": entry.timestamp})
            step["seconds"] += entry.timestamp - starts.get(key, entry.timestamp)
            step["runs"] += 1
            step["first_start"] = min(step["first_start"], starts.get(key, entry.timestamp))
            step["last_end"] = max(step["last_end"], entry.timestamp)
    for step in steps.values():
        step["span_seconds"] = step["last_end"] - step["first_start"]
    return steps


def run_plan(phases: tuple[Phase, ...], days: list[str], parallel: int, log_dir: Path) -> dict:
    """Every phase in order; the report: wall seconds in all and per phase, step times, peak memory."""
    import dagster as dg

    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    phase_seconds = {}
    with MemorySampler() as memory:
        for phase in phases:
            phase_started = time.time()
            run_phase(phase, days, parallel, log_dir)
            phase_seconds[phase.name] = round(time.time() - phase_started, 1)
            print(f"{phase.name}: {phase_seconds[phase.name]:.0f} s", flush=True)
    wall = time.time() - started
    with dg.DagsterInstance.get() as instance:
        steps = step_times(instance, started)
    return {"days": [days[0], days[-1]] if days else [], "parallel": parallel, "wall_seconds": round(wall, 1),
            "phase_seconds": phase_seconds, "peak_rss_gb": round(memory.peak_bytes / 2**30, 2),
            "peak_process_rss_gb": round(memory.peak_single_bytes / 2**30, 2),
            "steps": {key: {"seconds": round(step["seconds"], 1), "span_seconds": round(step["span_seconds"], 1),
                            "runs": step["runs"]} for key, step in sorted(steps.items(),
                                                                          key=lambda item: item[1]["first_start"])}}


def report_markdown(report: dict) -> str:
    lines = ["| step | seconds (summed over runs) | span | runs |", "|---|---|---|---|"]
    lines += [f"| {key} | {step['seconds']:.0f} | {step['span_seconds']:.0f} | {step['runs']} |"
              for key, step in report["steps"].items()]
    lines += ["", *(f"- {name}: {seconds:.0f} s" for name, seconds in report["phase_seconds"].items()),
              f"- wall: {report['wall_seconds'] / 60:.1f} min; peak memory {report['peak_rss_gb']} GB summed over "
              f"processes, {report['peak_process_rss_gb']} GB the largest one"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", choices=sorted(PLANS))
    parser.add_argument("--parallel", type=int, default=2, help="runs at once in a phase of day partitions")
    parser.add_argument("--report", type=Path, default=Path("storage/reports/parallel_runs.json"))
    args = parser.parse_args(argv)
    import dagster as dg

    from orchestration.ingest import manifest_days, register_days
    from orchestration.resources import PipelinePaths

    days = manifest_days(PipelinePaths().raw_root)
    with dg.DagsterInstance.get() as instance:
        register_days(instance, days)
    report = run_plan(PLANS[args.plan], sorted(days), args.parallel, args.report.parent / "logs")
    write_bytes_atomic(json.dumps(report, indent=1).encode(), args.report)
    print(report_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
