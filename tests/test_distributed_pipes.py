"""The training asset in two torchrun processes (gloo, CPU) through Dagster Pipes: the
materialization carries what rank 0 reported (the metrics, the MLflow run, the registered
version), the logged steps reach Dagster's event log, and the MLflow run is the one trained.
Beside it, the default: one process, in the asset's own."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from mmpipe.config import apply_overrides, settings_from_dict
from mmpipe.partitions import manifest_days
from mmpipe.registry.mlflow_registry import RunContext, configure
from mmpipe.systems import spec_named
from mmpipe.train.checkpoint import read_trainer_state
from orchestration import definitions
from orchestration.distributed import WORKER_MODULE, _parse, torchrun_command, worker_args
from orchestration.ingest import register_days
from orchestration.resources import PipelinePaths
from tests.conftest import tiny_run_environment
from tests.test_pipeline import TINY, _resources

PROCESSES = 2


@pytest.fixture(scope="module")
def materialized(tiny_world, tmp_path_factory):
    storage = tmp_path_factory.mktemp("pipes_storage")
    instance = dg.DagsterInstance.ephemeral()
    days = manifest_days(tiny_world)
    register_days(instance, days)
    config = {**TINY["pinclip"], "train": {**TINY["pinclip"]["train"], "steps": 6, "fusion_steps": 4},
              "compute": {"processes": PROCESSES}}
    # the ablation beside it trains in the asset's process, as by default
    in_process = {**config, "compute": {"processes": 1}}
    with pytest.MonkeyPatch.context() as patch:
        tiny_run_environment(patch, storage)
        result = dg.materialize(
            [*definitions.assets, *definitions.asset_checks],
            selection=dg.AssetSelection.assets("pinclip_model", "pinclip_no_neighbor_model").upstream(),
            resources=_resources(tiny_world, storage), instance=instance,
            run_config={"ops": {"pinclip_model": {"config": config},
                                "pinclip_no_neighbor_model": {"config": in_process}}},
            tags={"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]},
        )
        runs = {asset: configure().get_run(instance.get_latest_materialization_event(dg.AssetKey(asset))
                                           .asset_materialization.metadata["mlflow_run_id"].value)
                for asset in ("pinclip_model", "pinclip_no_neighbor_model")}
        runs["loss_history"] = configure().get_metric_history(runs["pinclip_model"].info.run_id, "loss")
    return result, instance, storage, runs


def test_two_torchrun_processes_report_the_materialization_through_pipes(materialized):
    result, instance, storage, runs = materialized
    run = runs["pinclip_model"]
    assert result.success
    metadata = instance.get_latest_materialization_event(dg.AssetKey("pinclip_model")).asset_materialization.metadata
    assert metadata["processes"].value == PROCESSES
    assert metadata["steps"].value == 10
    assert metadata["registered_version"].value == "1"
    assert metadata["final_loss"].value > 0
    # the run rank 0 logged: its steps, its parameters, the asset that launched it
    assert run.info.status == "FINISHED"
    assert run.data.tags["asset_key"] == "pinclip_model" and run.data.tags["dagster_run_id"] == result.run_id
    assert run.data.params["steps"] == "6"
    assert [m.step for m in runs["loss_history"]][-1] == 10
    assert read_trainer_state(storage / "models" / "pinclip" / "checkpoint")["step"] == 10
    # rank 0's logged steps streamed into Dagster's event log
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any(f"pinclip: {PROCESSES} processes" in message for message in messages)
    assert any(message.startswith("step 10: ") and "loss" in message for message in messages)


def test_one_process_trains_in_the_asset_process(materialized):
    result, instance, storage, runs = materialized
    metadata = instance.get_latest_materialization_event(
        dg.AssetKey("pinclip_no_neighbor_model")).asset_materialization.metadata
    assert metadata["processes"].value == 1 and metadata["steps"].value == 6  # no pairs: no fusion phase
    assert "registered_version" not in metadata  # an ablation is not registered
    assert runs["pinclip_no_neighbor_model"].data.params["neighbor_weight"] == "0.0"
    assert not any("torchrun" in entry.user_message for entry in instance.all_logs(result.run_id)
                   if entry.step_key == "pinclip_no_neighbor_model")


@pytest.mark.parametrize("system", ["pinclip", "mac"])
def test_the_torchrun_command_carries_the_assets_settings(system, tmp_path):
    spec = spec_named(system)
    settings = apply_overrides(spec.settings(), {"train": {"steps": 7}, "compute": {"processes": 3, "bf16": True}})
    paths = PipelinePaths(raw_dir=str(tmp_path / "raw"), storage_dir=str(tmp_path / "storage"))
    context = RunContext(data_version="abc", orchestrator_run_id="run-1", asset_key=spec.model_asset)
    command = torchrun_command(3, worker_args(spec, settings, paths, context, None, True, False))
    assert command[command.index("-m") + 1:command.index("-m") + 2] == ["torch.distributed.run"]
    assert "--nproc-per-node=3" in command and command[command.index(WORKER_MODULE) - 1] == "-m"
    args = _parse(command[command.index(WORKER_MODULE) + 1:])
    assert args.system == system and args.fresh and not args.no_register and args.variant is None
    assert settings_from_dict(spec.settings, json.loads(args.settings)) == settings
    assert PipelinePaths(**json.loads(args.paths)) == paths
    assert RunContext(**json.loads(args.run_context)) == context
