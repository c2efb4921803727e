"""A new day after the first full run costs how much of the full run?

One command, one process, one Dagster instance (ephemeral), a throwaway project folder:

    .venv/bin/python benchmarks/bench_incremental.py --scale tiny    # seconds; tiny PinCLIP
    .venv/bin/python benchmarks/bench_incremental.py --scale small   # the default run (~10 min on 2 cores)

1. generates the world at ``--scale`` (not timed);
2. times the full run: every asset but the ablation sweeps over every day, in one run
   (what ``make run`` does, with the params.yaml preset of ``--scale``);
3. advances the world by one day (``mmpipe world advance``; not timed: that is the upstream);
4. times the day's ingest: ``ingest_day``'s assets for the new partition only;

and prints both wall times, the ratio (target: <= 0.10), which assets each run materialized,
and how the index grew. The default run's peak memory is bench_memory.py's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from figures import Figure  # noqa: E402  (after the checkout is on the path)

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BENCHMARK = "incremental"


def run(scale: str = "tiny", seed: int = 0, workdir: str | Path | None = None,
        max_quarantine_rate: float | None = None) -> list[Figure]:
    """The full run and the new day's ingest, timed side by side in one Dagster instance,
    printing what ``main`` always printed."""
    work = Path(workdir or tempfile.mkdtemp(prefix="bench_incremental_"))
    work.mkdir(parents=True, exist_ok=True)
    storage, raw_root = work / "storage", work / "data" / "raw"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["MMPIPE_MLFLOW_ARTIFACTS"] = str(work / "mlruns")
    # Every system trains with the params.yaml preset of the world's scale, as `make run
    # SCALE=...` does (the Makefile exports MMPIPE_SCALE).
    os.environ["MMPIPE_SCALE"] = scale

    import dagster as dg

    from mmpipe.config import scaled_params
    from mmpipe.index.faiss_index import VectorIndex
    from mmpipe.partitions import manifest_days
    from mmpipe.world.advance import advance
    from mmpipe.world.config import world_config
    from mmpipe.world.generate import generate_world
    from orchestration import definitions
    from orchestration.ingest import INGEST_ASSETS, register_days
    from orchestration.lifecycle import ABLATIONS_GROUP
    from orchestration.resources import PipelinePaths, ValidationPolicy

    print(f"generating the {scale} world in {raw_root} ...", flush=True)
    generate_world(raw_root, world_config(scale, seed=seed), progress=False)
    rate = max_quarantine_rate
    if rate is None:
        rate = float(scaled_params()["validation"]["max_quarantine_rate"])
    resources = {"paths": PipelinePaths(raw_dir=str(raw_root), storage_dir=str(storage)),
                 "policy": ValidationPolicy(max_quarantine_rate=rate)}
    everything = [*definitions.assets, *definitions.asset_checks]

    with dg.DagsterInstance.ephemeral() as instance:
        days = manifest_days(raw_root)
        register_days(instance, days)
        started = time.perf_counter()
        full = dg.materialize(everything, resources=resources, instance=instance,
                              selection=dg.AssetSelection.all() - dg.AssetSelection.groups(ABLATIONS_GROUP),
                              tags={"dagster/asset_partition_range_start": days[0],
                                    "dagster/asset_partition_range_end": days[-1]})
        full_s = time.perf_counter() - started
        assert full.success, "the full run failed"
        before = VectorIndex.load(storage / "index" / "pins" / "fused").ntotal

        print("advancing the world by one day ...", flush=True)
        new_day = advance(raw_root, days=1, progress=False)["dates"][0]
        started = time.perf_counter()
        register_days(instance, manifest_days(raw_root))
        day = dg.materialize(everything, selection=list(INGEST_ASSETS), partition_key=new_day,
                             resources=resources, instance=instance)
        day_s = time.perf_counter() - started
        assert day.success, "the day's run failed"
        after = VectorIndex.load(storage / "index" / "pins" / "fused").ntotal

        def assets(result) -> str:
            keys = sorted({e.asset_key.to_user_string() for e in result.get_asset_materialization_events()})
            return ", ".join(keys)

    print()
    print(f"scale {scale}: {len(days)} days, then 1 new day ({new_day})")
    print(f"  full run  : {full_s:8.1f} s   ({len(full.get_asset_materialization_events())} materializations)")
    print(f"  new day   : {day_s:8.1f} s   ({len(day.get_asset_materialization_events())} materializations: "
          f"{assets(day)})")
    print(f"  ratio     : {day_s / full_s:8.3f}   (target <= 0.10)")
    print(f"  index     : {before} -> {after} vectors (+{after - before})")
    print(f"  workdir   : {work}")
    return [Figure(BENCHMARK, f"one-day ingest wall time ({scale} world)", day_s, "s",
                   f"full run ({len(days)} days)", full_s, f"target <= 0.10; index +{after - before} vectors")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="tiny", choices=["tiny", "small", "medium"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="keep the project here (default: a temp folder)")
    parser.add_argument("--max-quarantine-rate", type=float, default=None,
                        help="validation policy (default: params.yaml's at --scale)")
    args = parser.parse_args(argv)
    ratio = run(args.scale, args.seed, args.workdir, args.max_quarantine_rate)[0].ratio
    return 0 if ratio <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
