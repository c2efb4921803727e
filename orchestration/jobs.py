"""Jobs and schedules beyond "materialize everything".

``pinclip_training`` retrains PinCLIP on today's validated data and takes the new version
through the promotion gate: caption features and neighbor pairs (so new pins are in the
training set), the model and its ablation, the eval, the gate, and the overview. The
retraining sensor (``orchestration/sensors.py``) and the weekly schedule launch it; both
start STOPPED: switch them on in the UI (Automation) or with ``dagster sensor start`` /
``dagster schedule start``.
"""

import dagster as dg

PINCLIP_TRAINING_ASSETS = (
    "pin_text_features", "graph_neighbor_pairs",
    "pinclip_model", "pinclip_no_neighbor_model", "eval_pinclip", "pinclip_champion",
    "eval_overview",
)

pinclip_training_job = dg.define_asset_job(
    "pinclip_training",
    selection=dg.AssetSelection.assets(*PINCLIP_TRAINING_ASSETS),
    description="Retrain PinCLIP (and its ablation) on the current validated data, evaluate the new "
                "challenger and run the promotion gate.",
    tags={"mmpipe/job": "retrain"},
)

weekly_retrain_schedule = dg.ScheduleDefinition(
    name="weekly_pinclip_retrain",
    job=pinclip_training_job,
    cron_schedule="0 3 * * 1",  # Mondays 03:00
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Retrain PinCLIP every week whatever the sensors say; the promotion gate still decides "
                "whether the new version serves.",
)
