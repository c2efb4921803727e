"""Daily ingest: a new day in the landing zone becomes a day partition and is processed alone.

* ``new_day_sensor`` (every 5 minutes) reads the landing zone's manifest; each day of its
  window not yet registered is added to the ``day`` partitions and gets an ``ingest_day``
  run for that partition.
* ``daily_ingest_schedule`` (06:00 UTC) does the same for every day of the window whose
  ``pin_embeddings`` partition is still missing (a day a failed run left behind).
* ``python -m orchestration.ingest sync`` registers the window's days in the instance at
  ``DAGSTER_HOME`` and prints them as ``first...last``, for
  ``dagster asset materialize --partition-range`` (``make run``).

``ingest_day`` materializes, for one day: the raw tables a day appends to (observed again:
new content hash), that day's partitions of validated pins, interactions and videos, its
frames, frame and shot features, pin embeddings and, from them, the pins' behavior embeddings and
semantic IDs (by the promoted semantic-ID codebook: a new pin gets its IDs the day it arrives),
the video text features, the dimension tables that reference them (board_pins, the videos'
annotations), the caption cache, and the FAISS index (which adds only the new day).
Nothing else: no training, eval or promotion.
"""

from __future__ import annotations

import argparse
import sys

import dagster as dg

from mmpipe.partitions import manifest_days
from orchestration import names
from orchestration.partitions import DAY
from orchestration.resources import PipelinePaths

# The tables a delivered day appends to: pins, interactions and videos by their own day, the
# dimension tables that reference them (saves, the videos' annotations) whole.
_DAILY_TABLES = ("pins", "board_pins", "interactions", "videos", "moment_queries", "video_captions",
                 "video_shots", "summary_queries")
INGEST_ASSETS = (
    *map(names.raw, _DAILY_TABLES), *map(names.validated, _DAILY_TABLES),
    names.VALIDATED_FRAMES, names.FRAME_FEATURES, names.SHOT_FEATURES, names.QUERY_TEXT_FEATURES,
    names.PIN_TEXT_FEATURES, names.PIN_EMBEDDINGS, names.BEHAVIOR_ITEM_EMBEDDINGS, names.PIN_SEMANTIC_IDS,
    names.FAISS_PIN_INDEX,
)
# The assets partitioned by day among them: a day's run writes exactly these partitions.
INGEST_DAY_PARTITIONED = (*map(names.validated, ("pins", "interactions", "videos")), names.VALIDATED_FRAMES,
                          names.FRAME_FEATURES, names.SHOT_FEATURES, names.PIN_EMBEDDINGS,
                          names.BEHAVIOR_ITEM_EMBEDDINGS, names.PIN_SEMANTIC_IDS)

ingest_day_job = dg.define_asset_job(
    "ingest_day",
    selection=dg.AssetSelection.assets(*INGEST_ASSETS),
    partitions_def=DAY,
    description="One delivered day: its validated partitions, frames and embeddings, the index add.",
    tags={"mmpipe/job": "ingest"},
)


def new_days(instance: dg.DagsterInstance, days: list[str]) -> list[str]:
    registered = set(instance.get_dynamic_partitions(DAY.name))
    return [day for day in days if day not in registered]


def register_days(instance: dg.DagsterInstance, days: list[str]) -> list[str]:
    """Add the days not yet registered as ``day`` partitions; returns those added."""
    added = new_days(instance, days)
    if added:
        instance.add_dynamic_partitions(DAY.name, added)
    return added


@dg.sensor(job=ingest_day_job, minimum_interval_seconds=300,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="New data: each new day in the landing zone's manifest becomes a day partition "
                       "and gets an ingest_day run.")
def new_day_sensor(context: dg.SensorEvaluationContext, paths: PipelinePaths) -> dg.SensorResult | dg.SkipReason:
    try:
        days = manifest_days(paths.raw_root)
    except FileNotFoundError as error:
        return dg.SkipReason(str(error))
    added = new_days(context.instance, days)
    if not added:
        return dg.SkipReason(f"no new day: the landing zone ends on {days[-1]}")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=day, run_key=f"ingest-{day}") for day in added],
        dynamic_partitions_requests=[DAY.build_add_request(added)],
    )


@dg.schedule(job=ingest_day_job, cron_schedule="0 6 * * *", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Daily ingest: every day of the landing zone not yet embedded gets an ingest_day run.")
def daily_ingest_schedule(context: dg.ScheduleEvaluationContext, paths: PipelinePaths):
    try:
        days = manifest_days(paths.raw_root)
    except FileNotFoundError as error:
        return dg.SkipReason(str(error))
    todo = days_to_ingest(context.instance, days)
    if not todo:
        return dg.SkipReason("every day is ingested")
    return [dg.RunRequest(partition_key=day, run_key=f"ingest-{day}") for day in todo]


def days_to_ingest(instance: dg.DagsterInstance, days: list[str]) -> list[str]:
    """Register ``days``; those whose ``pin_embeddings`` partition is not materialized yet."""
    register_days(instance, days)
    done = instance.get_materialized_partitions(dg.AssetKey(names.PIN_EMBEDDINGS))
    return [day for day in days if day not in done]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration.ingest",
                                     description="Register the landing zone's days as Dagster partitions.")
    parser.add_argument("command", choices=["sync", "assets"],
                        help="sync: register the days, print first...last; assets: print the ingest selection")
    parser.add_argument("--raw-dir", default=None, help="landing zone (default: PipelinePaths().raw_dir)")
    args = parser.parse_args(argv)
    if args.command == "assets":
        print(",".join(INGEST_ASSETS))
        return 0
    paths = PipelinePaths() if args.raw_dir is None else PipelinePaths(raw_dir=args.raw_dir)
    days = manifest_days(paths.raw_root)
    with dg.DagsterInstance.get() as instance:
        added = register_days(instance, days)
    print(f"registered {len(added)} new day partition(s)", file=sys.stderr)
    print(f"{days[0]}...{days[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
