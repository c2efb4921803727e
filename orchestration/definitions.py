"""The single Definitions object of the mmpipe code location: the shared assets, then each
system's (``orchestration/systems/<name>.py``: its lifecycle from the factory plus what is
special to it)."""

import dagster as dg

from orchestration.assets.graph import graph_neighbor_pairs
from orchestration.assets.media import validated_frames
from orchestration.assets.overview import overview_assets
from orchestration.assets.raw import raw_assets
from orchestration.assets.validated import validated_assets
from orchestration.assets.video_features import video_feature_assets
from orchestration.checks import validation_checks
from orchestration.deployment import executor, share_cores
from orchestration.lifecycle import ABLATIONS_GROUP
from orchestration.ingest import daily_ingest_schedule, ingest_day_job, new_day_sensor
from orchestration.resources import PipelinePaths, ValidationPolicy
from orchestration.sensors import RetrainingThresholds, record_run_failures
from orchestration.systems import chan, ctr, mac, moment, pinclip, semantic_id

SYSTEMS = [pinclip, mac, moment, chan, semantic_id, ctr]

all_assets_job = dg.define_asset_job(
    "all_assets", selection=dg.AssetSelection.all() - dg.AssetSelection.groups(ABLATIONS_GROUP),
    description="Materialize the whole asset graph but the sweeps (each system's <name>_ablations job)."
)

assets = [*raw_assets, *validated_assets, validated_frames, *video_feature_assets, graph_neighbor_pairs,
          *overview_assets, *(asset for system in SYSTEMS for asset in system.assets)]
asset_checks = [*validation_checks, *(check for system in SYSTEMS for check in system.asset_checks)]

share_cores()  # multiprocess mode: each step process takes its share of the cores

defs = dg.Definitions(
    assets=assets,
    asset_checks=asset_checks,
    jobs=[all_assets_job, ingest_day_job, *(system.LIFECYCLE.training_job for system in SYSTEMS),
          *(system.LIFECYCLE.ablations_job for system in SYSTEMS if system.LIFECYCLE.ablations_job)],
    schedules=[daily_ingest_schedule, *(s for system in SYSTEMS for s in system.LIFECYCLE.schedules)],
    sensors=[record_run_failures, new_day_sensor, *(s for system in SYSTEMS for s in system.sensors)],
    resources={"paths": PipelinePaths(), "policy": ValidationPolicy(),
               "retraining": RetrainingThresholds()},
    # MMPIPE_MODE picks it: in-process by default, Celery workers or Kubernetes Jobs for a team
    executor=executor(),
)
