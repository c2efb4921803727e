"""The single Definitions object of the mmpipe code location."""


import dagster as dg

from orchestration.assets.graph import graph_neighbor_pairs
from orchestration.assets.media import validated_frames
from orchestration.assets.overview import overview_assets
from orchestration.assets.pinclip import pinclip_assets
from orchestration.assets.raw import raw_assets
from orchestration.assets.validated import validated_assets
from orchestration.checks import validation_checks
from orchestration.ingest import daily_ingest_schedule, ingest_day_job, new_day_sensor
from orchestration.jobs import pinclip_training_job, weekly_retrain_schedule
from orchestration.resources import PipelinePaths, ValidationPolicy
from orchestration.sensors import RetrainingThresholds, pinclip_retraining_sensor, record_run_failures

all_assets_job = dg.define_asset_job(
    "all_assets", selection=dg.AssetSelection.all(), description="Materialize the whole asset graph."
)

assets = [*raw_assets, *validated_assets, validated_frames, graph_neighbor_pairs, *pinclip_assets,
          *overview_assets]
asset_checks = [*validation_checks]

defs = dg.Definitions(
    assets=assets,
    asset_checks=asset_checks,
    jobs=[all_assets_job, pinclip_training_job, ingest_day_job],
    schedules=[weekly_retrain_schedule, daily_ingest_schedule],
    sensors=[pinclip_retraining_sensor, record_run_failures, new_day_sensor],
    resources={"paths": PipelinePaths(), "policy": ValidationPolicy(),
               "retraining": RetrainingThresholds()},
    # One process: each step is short and a subprocess per step would spend most of its time
    # importing torch / Great Expectations on 2 cores.
    executor=dg.in_process_executor,
)
