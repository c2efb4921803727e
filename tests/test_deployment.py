"""Modes, pools and retries without a server (tests/test_team_modes.py runs the modes for real).

MMPIPE_MODE picks a dagster.yaml of deploy/dagster/ and an executor (orchestration/deployment.py);
every training asset claims the one-slot `training` pool; the I/O steps (landing-zone reads,
MLflow registry writes) retry with backoff, and a flaky read succeeds on its retry.
"""

from __future__ import annotations

import shutil

import dagster as dg
import pandas as pd
import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config

from mmpipe.systems import SPECS
from orchestration import definitions
from orchestration.deployment import MODES, current_mode, executor, instance_config
from orchestration.policies import IO_RETRY, TRAINING_POOL
from orchestration.resources import PipelinePaths

TEAM_MODES = ("postgres", "celery")
PG_VARIABLES = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB")


@pytest.mark.parametrize("mode", TEAM_MODES)
def test_team_instances_store_in_postgres_with_the_connection_from_the_environment(mode, tmp_path, monkeypatch):
    from dagster._config import process_config
    from dagster_postgres.storage import DagsterPostgresStorage
    from dagster_postgres.utils import pg_url_from_config

    raw = yaml.safe_load(instance_config(mode).read_text())
    database = raw["storage"]["postgres"]["postgres_db"]
    # never a password in the file: every connection field is an env source
    assert {key: value for key, value in database.items() if key != "scheme"} == {
        "hostname": {"env": "DAGSTER_PG_HOST"}, "port": {"env": "DAGSTER_PG_PORT"},
        "username": {"env": "DAGSTER_PG_USER"}, "password": {"env": "DAGSTER_PG_PASSWORD"},
        "db_name": {"env": "DAGSTER_PG_DB"}}
    for name, value in zip(PG_VARIABLES, ("db.example", "5433", "team", "s3cr3t:@", "dagster")):
        monkeypatch.setenv(name, value)
    storage = process_config(DagsterPostgresStorage.config_type(), raw["storage"]["postgres"])
    assert storage.success, storage.errors
    # the URL the instance connects with: psycopg2 (SQLAlchemy 2.1 alone would pick psycopg 3), password quoted
    assert pg_url_from_config(storage.value) == "postgresql+psycopg2://team:s3cr3t%3A%40@db.example:5433/dagster"
    home = tmp_path / mode
    home.mkdir()
    shutil.copy(instance_config(mode), home / "dagster.yaml")
    config, _ = dagster_instance_config(str(home))  # the whole file validates as an instance
    assert config["concurrency"]["pools"] == {"default_limit": 1}  # op granularity, Dagster's default
    assert config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0


def test_the_default_mode_is_the_embedded_instance_and_needs_no_server(tmp_path, monkeypatch):
    """What `make run` copies to DAGSTER_HOME: SQLite storage, the training pool at one slot per run."""
    monkeypatch.delenv("MMPIPE_MODE", raising=False)
    assert current_mode() == "embedded" and executor() is dg.in_process_executor
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(instance_config("embedded"), home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.event_log_storage.supports_global_concurrency_limits  # SQLite holds the pool slots
        pools = instance.get_concurrency_config().pool_config
        assert pools.default_pool_limit == 1 and pools.pool_granularity.value == "run"
        assert not instance.telemetry_enabled
        assert (home / "history" / "runs.db").exists()  # SQLite, in DAGSTER_HOME


def test_the_multiprocess_mode_runs_steps_in_processes_that_share_the_cores(tmp_path, monkeypatch):
    """SQLite as embedded, the training slot taken per step (steps of one run overlap), and the
    executor's concurrency is what every step process divides the cores by."""
    import torch

    from orchestration.deployment import concurrency, multiprocess_config, share_cores

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(instance_config("multiprocess"), home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.event_log_storage.supports_global_concurrency_limits
        pools = instance.get_concurrency_config().pool_config
        assert pools.default_pool_limit == 1 and pools.pool_granularity.value == "op"
    monkeypatch.setenv("MMPIPE_MODE", "multiprocess")
    monkeypatch.setenv("MMPIPE_CONCURRENCY", "2")
    multiprocess = executor()
    assert multiprocess.name == "multiprocess" and concurrency() == 2
    assert multiprocess_config() == {"max_concurrent": 2, "start_method": {
        "forkserver": {"preload_modules": ["orchestration.definitions"]}}}  # imported once per run, not per step
    threads = torch.get_num_threads()
    try:
        monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
        assert share_cores() == 4 == torch.get_num_threads()  # 8 cores, 2 steps at once
        monkeypatch.setenv("MMPIPE_MODE", "embedded")
        assert share_cores() == 4  # other modes leave torch as it is
    finally:
        torch.set_num_threads(threads)


def test_the_mode_variable_picks_the_executor(monkeypatch):
    monkeypatch.setenv("MMPIPE_MODE", "celery")
    monkeypatch.setenv("MMPIPE_CELERY_BROKER", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("MMPIPE_CELERY_BACKEND", "redis://127.0.0.1:1/1")
    celery = executor()
    assert celery.name == "celery"
    monkeypatch.setenv("MMPIPE_MODE", "postgres")
    assert executor() is dg.in_process_executor
    monkeypatch.setenv("MMPIPE_MODE", "spark")
    with pytest.raises(ValueError, match=f"MMPIPE_MODE='spark' is not a mode; choose one of {', '.join(MODES)}"):
        current_mode()
    with pytest.raises(ValueError, match="Helm chart"):
        instance_config("k8s")


def test_every_training_asset_and_only_those_claim_the_training_pool():
    graph = definitions.defs.resolve_asset_graph()
    pooled = {key.to_user_string() for key in graph.get_all_asset_keys() if graph.get(key).pools}
    trainings = {name for spec in SPECS
                 for name in (spec.model_asset, *map(spec.variant_asset, (*spec.ablations, *spec.sweeps)))}
    assert pooled == trainings
    assert all(graph.get(dg.AssetKey(name)).pools == {TRAINING_POOL} for name in trainings)


def test_io_steps_retry_with_backoff_and_training_does_not():
    by_name = {asset.key.to_user_string(): asset for asset in definitions.assets}
    io_steps = {name for name in by_name if name.startswith("raw_")} | {
        name for spec in SPECS for name in (spec.eval_asset, spec.champion_asset)} | {"eval_overview"}
    retrying = {name for name, asset in by_name.items() if asset.op.retry_policy is not None}
    assert retrying == io_steps
    assert all(by_name[name].op.retry_policy == IO_RETRY for name in io_steps)
    assert IO_RETRY.max_retries >= 2 and IO_RETRY.backoff == dg.Backoff.EXPONENTIAL


def _events(result, kind: str) -> list:
    return [event for event in result.all_events if event.event_type_value == kind]


def test_a_flaky_landing_zone_read_succeeds_on_its_retry(tiny_world, tmp_path, monkeypatch):
    """The first read of the pins table fails as a network filesystem does for a moment; the
    retry reads it and the materialization is the table's."""
    import orchestration.assets.raw as raw_module

    real_read, calls = raw_module.read_raw_table, []

    def flaky_read(root, table):
        calls.append(table)
        if len(calls) == 1:
            raise ConnectionResetError(104, "Connection reset by peer")
        return real_read(root, table)

    monkeypatch.setattr(raw_module, "read_raw_table", flaky_read)
    result = dg.materialize(
        definitions.assets, selection=dg.AssetSelection.assets("raw_pins"),
        resources={"paths": PipelinePaths(raw_dir=str(tiny_world), storage_dir=str(tmp_path / "storage"))},
    )
    assert result.success and calls == ["pins", "pins"]
    assert len(_events(result, "STEP_UP_FOR_RETRY")) == 1 and len(_events(result, "STEP_RESTARTED")) == 1
    [materialization] = result.asset_materializations_for_node("raw_pins")
    assert materialization.metadata["rows"].value == len(pd.read_parquet(tiny_world / "pins.parquet"))


def test_a_table_that_breaks_its_contract_fails_at_once_without_retrying(tiny_world, tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    pd.read_parquet(tiny_world / "boards.parquet").rename(columns={"board_id": "id"}).to_parquet(root / "boards.parquet")
    result = dg.materialize(
        definitions.assets, selection=dg.AssetSelection.assets("raw_boards"),
        resources={"paths": PipelinePaths(raw_dir=str(root), storage_dir=str(tmp_path / "storage"))},
        raise_on_error=False,
    )
    assert not result.success
    assert _events(result, "STEP_UP_FOR_RETRY") == []
    [failure] = _events(result, "STEP_FAILURE")
    assert "raw_boards: boards lacks the column 'board_id'" in failure.event_specific_data.error.message
