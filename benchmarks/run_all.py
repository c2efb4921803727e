"""Every benchmark in one run: one Markdown table and one JSON, every figure a ratio of two
numbers measured side by side in this run, with the machine it ran on.

    .venv/bin/python benchmarks/run_all.py            # `make bench`: the default sizes
    .venv/bin/python benchmarks/run_all.py --quick    # tiny sizes: proves it runs (CI, tests)
    .venv/bin/python benchmarks/run_all.py --only index --index-n 1000000   # the 1M index run

Writes ``--out``/bench.json and ``--out``/bench.md (default benchmarks/results/), each
replaced atomically. Benchmarks, in order (each script also runs alone):

* pinclip_step: PinCLIP's tower and fusion steps, MFU (bench_pinclip_step.py);
* mac_step: MAC's step masked against unmasked, time and FLOPs, and both MFUs (bench_mac_step.py);
* moment_step: the moment retrieval model's step, MFU (bench_moment_step.py);
* chan_step: CHAN's relevance and concepts steps, MFU (bench_chan_step.py);
* embedding: items/s of each encoder against its rate at the matmul peak (bench_embedding.py);
* index: IVF and HNSW against exact search: QPS, recall@10, build time, memory (bench_index.py);
* incremental: a new day's ingest against the full run (bench_incremental.py, a throwaway
  project through Dagster);
* memory: the default run's peak resident memory, largest process and process tree, against
  the machine's RAM (bench_memory.py: `make materialize`'s commands in processes of their own);
* serving: warm text -> pins latency (p50, p99) and throughput over HTTP against `mmpipe
  serve`, at 1 and 8 clients (bench_serving.py), over the incremental benchmark's project
  when it ran in the same invocation, else over ``--serving-project``.

One fp32 matmul FLOP/s, measured first, is the denominator of every MFU in the table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This checkout's code, whatever else is installed: the table is credited to its commit.
sys.path.insert(0, str(ROOT))

import bench_chan_step  # noqa: E402
import bench_embedding  # noqa: E402
import bench_incremental  # noqa: E402
import bench_index  # noqa: E402
import bench_mac_step  # noqa: E402
import bench_memory  # noqa: E402
import bench_moment_step  # noqa: E402
import bench_pinclip_step  # noqa: E402
import bench_serving  # noqa: E402
from figures import Figure, machine, write_report  # noqa: E402
from timing import matmul_flops_per_second, settings_for  # noqa: E402

from mmpipe.systems.pinclip.train import PinCLIPSettings  # noqa: E402

BENCHMARKS = ("pinclip_step", "mac_step", "moment_step", "chan_step", "embedding", "index", "incremental",
              "memory", "serving")
STEP_BENCHMARKS = {"pinclip_step", "mac_step", "moment_step", "chan_step"}
# --quick: sizes that only prove every benchmark runs end to end (a couple of minutes on
# 2 loaded cores, most of it the tiny pipeline run); their ratios mean little.
QUICK = {"model_scale": "tiny", "world_scale": "tiny", "steps": 2, "batch_size": 16, "index_n": 5_000,
         "index_queries": 200, "sweep": False, "serving_requests": 40}


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: " + ", ".join(
        f"{key} {value}" for key, value in QUICK.items()))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset of " +
                        ", ".join(BENCHMARKS))
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch and faiss threads (default: the cores this process may use)")
    parser.add_argument("--model-scale", default="small", help="params.yaml preset of the step and encoder models")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per step benchmark (default: each's)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="step batch (default: the settings'); encoder batch (default 256)")
    parser.add_argument("--index-n", type=int, default=100_000, help="corpus size (1000000 for the full run)")
    parser.add_argument("--index-dim", type=int, default=None,
                        help="vector size (default: PinCLIP's embed_dim at --model-scale)")
    parser.add_argument("--index-queries", type=int, default=1_000, help="held-out queries, one batch")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false",
                        help="skip the nprobe / efSearch recall-QPS curves")
    parser.add_argument("--world-scale", default="tiny", choices=["tiny", "small", "medium"],
                        help="world of the incremental and memory benchmarks' runs")
    parser.add_argument("--workdir", default=None, help="keep the incremental benchmark's project here (and the "
                                                        "memory benchmark's in <workdir>_memory)")
    parser.add_argument("--serving-project", default=None,
                        help="materialized project the serving benchmark serves when the incremental benchmark "
                             "does not run (default: this checkout, what `make run` left)")
    parser.add_argument("--serving-requests", type=int, default=400, help="timed queries per client count")
    return parser


def in_project(benchmark, world_scale: str, workdir: str | None) -> list[Figure]:
    """A pipeline benchmark (``benchmark.run``) in ``workdir``, or in a temporary project removed
    afterwards (a world, storage and MLflow store per run would pile up under /tmp otherwise)."""
    if workdir:
        return benchmark.run(world_scale, workdir=workdir)
    with tempfile.TemporaryDirectory(prefix=f"{benchmark.BENCHMARK}_") as tmp:
        return benchmark.run(world_scale, workdir=tmp)


def run(args: argparse.Namespace) -> list[Figure]:
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(only) - set(BENCHMARKS)
    if unknown:
        raise SystemExit(f"run_all: unknown benchmarks {sorted(unknown)}; choose from {', '.join(BENCHMARKS)}")
    steps = {} if args.steps is None else {"steps": args.steps}
    peak = matmul_flops_per_second() if (STEP_BENCHMARKS | {"embedding"}) & set(only) else None
    runs = {
        "pinclip_step": lambda: bench_pinclip_step.run(args.model_scale, threads=args.threads,
                                                       batch_size=args.batch_size, peak=peak, **steps),
        "mac_step": lambda: bench_mac_step.run(args.model_scale, threads=args.threads, batch_size=args.batch_size,
                                               peak=peak, **steps),
        "moment_step": lambda: bench_moment_step.run(args.model_scale, threads=args.threads,
                                                     batch_size=args.batch_size, peak=peak, **steps),
        "chan_step": lambda: bench_chan_step.run(args.model_scale, threads=args.threads, batch_size=args.batch_size,
                                                 peak=peak, **steps),
        "embedding": lambda: bench_embedding.run(args.model_scale, batch_size=args.batch_size or 256,
                                                 threads=args.threads, peak=peak, **steps),
        "index": lambda: bench_index.run(args.index_n, args.index_dim, args.index_queries, threads=args.threads,
                                         sweep=args.sweep),
        "memory": lambda: in_project(bench_memory, args.world_scale, args.workdir and f"{args.workdir}_memory"),
    }
    figures = []
    # The incremental benchmark's project (in --workdir, or a temporary one removed at the
    # end: a world, storage and MLflow store per run would pile up under /tmp) is what the
    # serving benchmark serves when both run.
    with tempfile.TemporaryDirectory(prefix="bench_incremental_") as tmp:
        project = args.workdir or tmp
        runs["incremental"] = lambda: bench_incremental.run(args.world_scale, workdir=project)
        serving_project = project if "incremental" in only else (args.serving_project or ROOT)
        runs["serving"] = lambda: bench_serving.run(serving_project, requests=args.serving_requests)
        for name in only:
            print(f"\n=== {name}", flush=True)
            started = time.perf_counter()
            figures += runs[name]()
            print(f"=== {name}: {time.perf_counter() - started:.1f} s", flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = arguments()
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)  # the quick sizes, under whatever was given explicitly
    if args.index_dim is None:  # the pin embeddings' size, resolved here so the report names it
        args.index_dim = settings_for(PinCLIPSettings, "pinclip", args.model_scale, args.threads).model.embed_dim
    started = time.perf_counter()
    figures = run(args)
    settings = {key: value for key, value in vars(args).items() if key not in ("out", "workdir", "serving_project")}
    settings["wall_s"] = round(time.perf_counter() - started, 1)
    json_path, md_path = write_report(figures, machine(args.threads), settings, args.out)
    print(f"\n{len(figures)} figures in {settings['wall_s']} s -> {md_path}, {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
