"""The default run's peak memory, measured on the run itself, in a process of its own.

    .venv/bin/python benchmarks/bench_memory.py --scale tiny    # about a minute on 2 cores
    .venv/bin/python benchmarks/bench_memory.py --scale small   # the default run (~15 min)

1. generates the world at ``--scale`` in a throwaway project folder (not measured);
2. runs what ``make materialize`` runs there, each command its own process with the project
   folder as ``MMPIPE_ROOT`` and a ``DAGSTER_HOME`` of its own: ``python -m orchestration.ingest
   sync``, then ``dagster asset materialize --select 'not group:ablations' --partition-range``;
3. reports the materialization's peak resident memory two ways, against the machine's RAM:
   the largest single process (``ru_maxrss`` from ``wait4``: the kernel's high-water mark of
   the process and of every descendant it waited for) and the whole process tree (the sum of
   the resident sets of the process and its live children, sampled every 0.2 s, so a
   shorter-lived peak can be missed: a lower bound).

Unlike a peak taken inside the benchmark's own process, nothing the earlier benchmarks left
resident counts here, and worker processes do.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from figures import Figure, ram_bytes  # noqa: E402  (after the checkout is on the path)

BENCHMARK = "memory"
SAMPLE_S = 0.2


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its live descendants (0 once it is gone)."""
    import psutil

    try:
        process = psutil.Process(pid)
        tree = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for member in tree:
        try:
            total += member.memory_info().rss
        except psutil.Error:  # exited between the listing and the read
            pass
    return total


def measure(command: list[str], env: dict[str, str], log: Path) -> tuple[int, int, float]:
    """Run ``command`` (output to ``log``); return (largest process's peak RSS, sampled peak of
    the tree's RSS, both bytes; wall s). Fails with the command's output if it fails."""
    started = time.perf_counter()
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    tree_peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal tree_peak
        while not done.is_set():
            tree_peak = max(tree_peak, _tree_rss(process.pid))
            done.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    # wait4, not Popen.wait: its rusage is the child's, descendants it reaped included.
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}:\n{log.read_text()[-3000:]}")
    return usage.ru_maxrss * 1024, tree_peak, wall  # ru_maxrss is in KiB on Linux


def run(scale: str = "tiny", seed: int = 0, workdir: str | Path | None = None) -> list[Figure]:
    from mmpipe.world.config import world_config
    from mmpipe.world.generate import generate_world

    work = Path(workdir or tempfile.mkdtemp(prefix="bench_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"generating the {scale} world in {work / 'data' / 'raw'} ...", flush=True)
    generate_world(work / "data" / "raw", world_config(scale, seed=seed), progress=False)
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    home = work / ".dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    # The Makefile's environment, with the project folder as the root (MLflow's store, the
    # artifacts and storage/ land there) and this checkout's code first on the path.
    env = {**os.environ, "MMPIPE_ROOT": str(work), "DAGSTER_HOME": str(home), "MMPIPE_SCALE": scale,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "GX_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's own store under MMPIPE_ROOT
    env.pop("MMPIPE_MLFLOW_ARTIFACTS", None)
    python = sys.executable
    days = subprocess.run([python, "-m", "orchestration.ingest", "sync"], cwd=ROOT, env=env, check=True,
                          capture_output=True, text=True).stdout.strip()
    print(f"materializing days {days} as `make materialize` does ...", flush=True)
    largest, tree, wall = measure([python, "-m", "dagster", "asset", "materialize", "--select",
                                   "not group:ablations", "-m", "orchestration.definitions",
                                   "--partition-range", days], env, work / "materialize.log")
    ram = ram_bytes()
    print(f"\nscale {scale}: the default run's materialization took {wall:.1f} s")
    print(f"  peak RSS, largest process : {largest / 2**20:8.0f} MiB")
    print(f"  peak RSS, process tree    : {tree / 2**20:8.0f} MiB (sampled every {SAMPLE_S} s)")
    print(f"  machine RAM               : {ram / 2**20:8.0f} MiB")
    print(f"  workdir                   : {work}")
    return [
        Figure(BENCHMARK, f"default run peak RSS, largest process ({scale} world)", largest / 2**20, "MiB",
               "machine RAM", ram / 2**20, f"ru_maxrss of `dagster asset materialize` (wait4); {wall:.0f} s run"),
        Figure(BENCHMARK, f"default run peak RSS, process tree ({scale} world)", tree / 2**20, "MiB",
               "machine RAM", ram / 2**20, f"sum over the run's processes, sampled every {SAMPLE_S} s"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="tiny", choices=["tiny", "small", "medium"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="keep the project here (default: a temp folder)")
    args = parser.parse_args(argv)
    run(args.scale, args.seed, args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
