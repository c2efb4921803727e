"""The team modes of deploy/dagster/ (MMPIPE_MODE, orchestration/deployment.py) against real servers.

One PostgreSQL (Debian's, on 127.0.0.1, a throwaway cluster) serves the module:

* postgres mode: the tiny world's whole graph (all but the sweeps, as `make run`) materializes
  in-process against `deploy/dagster/postgres/dagster.yaml`, with MLflow tracking in a
  `postgresql://` database; runs, event logs, partitions, MLflow runs and registered models are
  read back from PostgreSQL itself.
* celery mode: launched from the CLI as `make run MODE=celery` does, every step a Celery task
  through a real Redis broker to two `dagster-celery` workers (one step at a time each). It
  materializes the pin side of the graph, `*faiss_pin_index`: the raw and validated pin, board,
  save, user and interaction tables, graph pairs, caption features, PinCLIP and its ablation,
  eval, promotion gate, pin embeddings and the index (18 of the 64 assets). Not the whole graph:
  the video side (frames, MAC, moment, CHAN) would add minutes of CI on 2 cores and exercise
  nothing about Celery that the pin side does not. It gives the same assets, and the same data
  versions and row counts on the data side, as the in-process run. The two trainings (ready at
  the same moment, two workers free) share the `training` pool of one slot: they never overlap.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from mmpipe.partitions import manifest_days
from mmpipe.systems import SPECS
from orchestration.definitions import defs
from orchestration.deployment import CELERY_CONFIG, instance_config
from orchestration.lifecycle import ABLATIONS_GROUP
from orchestration.policies import TRAINING_POOL

from tests.conftest import PROJECT_ROOT
from tests.servers import HOST, VENV_BIN, PostgresServer, log_tail, start, start_redis, stop
from tests.test_pipeline import _materialize_all

pytestmark = pytest.mark.slow

GRAPH = defs.resolve_asset_graph()
# what `make run` materializes: every asset but the sweeps
DEFAULT_RUN = {key for key in GRAPH.get_all_asset_keys() if GRAPH.get(key).group_name != ABLATIONS_GROUP}
# the data side, deterministic whatever process computes it (training is compared by outcome only)
DATA_GROUPS = ("raw", "validation", "media", "graph")
# what the Celery run materializes (see the module doc)
CELERY_SELECTION = "*faiss_pin_index"
CELERY_ASSETS = dg.AssetSelection.from_string(CELERY_SELECTION).resolve(GRAPH)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    yield server
    server.stop()


def _instance_env(postgres: PostgresServer, database: str) -> dict[str, str]:
    """The variables deploy/dagster/{postgres,celery}/dagster.yaml read the connection from."""
    return {"DAGSTER_PG_HOST": HOST, "DAGSTER_PG_PORT": str(postgres.port), "DAGSTER_PG_USER": postgres.user,
            "DAGSTER_PG_PASSWORD": postgres.password, "DAGSTER_PG_DB": postgres.create_database(database)}


def _dagster_home(path: Path, mode: str) -> Path:
    path.mkdir(parents=True)
    shutil.copy(instance_config(mode), path / "dagster.yaml")  # what the Makefile does for MODE=<mode>
    return path


@pytest.fixture(scope="module")
def postgres_run(postgres, tiny_world, tmp_path_factory):
    base = tmp_path_factory.mktemp("postgres_mode")
    storage = base / "storage"
    mlflow_uri = postgres.url(postgres.create_database("mlflow"))
    with pytest.MonkeyPatch.context() as patch:
        for name, value in _instance_env(postgres, "dagster").items():
            patch.setenv(name, value)
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
        patch.setenv("MMPIPE_SCALE", "tiny")
        patch.setenv("MMPIPE_MLFLOW_ARTIFACTS", str(storage / "mlruns"))
        with dg.DagsterInstance.from_config(str(_dagster_home(base / "home", "postgres"))) as instance:
            result = _materialize_all(tiny_world, storage, instance)
            yield result, instance, storage


def test_postgres_mode_materializes_the_graph_into_postgres(postgres_run, postgres, tiny_world):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    result, instance, storage = postgres_run
    assert result.success
    assert {event.asset_key for event in result.get_asset_materialization_events()} == DEFAULT_RUN
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    # read back from the server, not through Dagster
    assert postgres.query("dagster", "SELECT status FROM runs WHERE run_id = %s", (result.run_id,)) == [("SUCCESS",)]
    [(materializations,)] = postgres.query(
        "dagster", "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
        (result.run_id,))
    assert materializations == len(result.get_asset_materialization_events())
    days = postgres.query("dagster", "SELECT partition FROM dynamic_partitions WHERE partitions_def_name = 'day' "
                                     "ORDER BY partition")
    assert [day for (day,) in days] == manifest_days(tiny_world)


def test_postgres_mode_tracks_mlflow_in_postgres(postgres_run, postgres):
    result, instance, storage = postgres_run
    assert {name for (name,) in postgres.query("mlflow", "SELECT name FROM registered_models")} == \
        {spec.registered_model for spec in SPECS}
    aliases = set(postgres.query("mlflow", "SELECT name, alias FROM registered_model_aliases"))
    for spec in SPECS:  # a fresh registry: every first version is the challenger and, promoted, the champion
        assert (spec.registered_model, "challenger") in aliases
        # a system with promotion requirements may be refused on the tiny world (CTR's overall AUC
        # against its ID-only baseline after a few dozen steps): its challenger stays the only alias
        assert (spec.registered_model, "champion") in aliases or spec.requirements, spec.name
    run_id = instance.get_latest_materialization_event(
        dg.AssetKey("pinclip_model")).asset_materialization.metadata["mlflow_run_id"].value
    [(status, artifacts)] = postgres.query("mlflow", "SELECT status, artifact_uri FROM runs WHERE run_uuid = %s",
                                           (run_id,))
    assert status == "FINISHED"
    # the artifacts of a database store go where the project says, not to a worker's cwd
    assert artifacts.startswith((storage / "mlruns").as_uri())


@pytest.fixture(scope="module")
def celery_run(postgres, tiny_world, tmp_path_factory):
    """`make run MODE=celery` on a copy of the tiny world: sync the days, start a Redis and two
    workers, materialize from the CLI; yields (the CLI's process, the instance, worker logs)."""
    from mlflow import MlflowClient

    base = tmp_path_factory.mktemp("celery_mode")
    root = base / "project"
    (root / "data").mkdir(parents=True)
    shutil.copytree(tiny_world, root / "data" / "raw")
    shutil.copy(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    home = _dagster_home(base / "home", "celery")
    redis, port = start_redis(base)
    mlflow_uri = postgres.url(postgres.create_database("mlflow_celery"))
    # an empty MLflow database gets its tables on first use: create them once here, as
    # `mlflow db upgrade` does on a team's server, so two workers never race to migrate it
    MlflowClient(tracking_uri=mlflow_uri).search_experiments()
    env = {**os.environ, **_instance_env(postgres, "dagster_celery"),
           "MMPIPE_MODE": "celery", "DAGSTER_HOME": str(home), "MMPIPE_ROOT": str(root), "MMPIPE_SCALE": "tiny",
           "MLFLOW_TRACKING_URI": mlflow_uri,
           "MMPIPE_CELERY_BROKER": f"redis://{HOST}:{port}/0", "MMPIPE_CELERY_BACKEND": f"redis://{HOST}:{port}/1",
           # `dagster-celery worker start` runs `celery` from PATH
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MMPIPE_MLFLOW_ARTIFACTS", None)
    workers, logs = [], [base / f"worker{i}.log" for i in (1, 2)]
    try:
        sync = subprocess.run([sys.executable, "-m", "orchestration.ingest", "sync"], cwd=PROJECT_ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert sync.returncode == 0, sync.stderr[-4000:]
        for i, log in enumerate(logs, 1):
            workers.append(start([str(VENV_BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
                                  "-y", str(CELERY_CONFIG), "-n", f"worker{i}"], log, env=env, cwd=PROJECT_ROOT))
        run = subprocess.run(
            [str(VENV_BIN / "dagster"), "asset", "materialize", "-m", "orchestration.definitions",
             "--select", CELERY_SELECTION, "--partition-range", sync.stdout.strip()],
            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
        with pytest.MonkeyPatch.context() as patch:
            for name in ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"):
                patch.setenv(name, env[name])
            with dg.DagsterInstance.from_config(str(home)) as instance:
                yield run, instance, logs
    finally:
        for worker in workers:
            stop(worker)
        stop(redis)


def _only_run(instance: dg.DagsterInstance) -> dg.DagsterRun:
    [run] = instance.get_runs()
    return run


def _steps(instance: dg.DagsterInstance, run_id: str) -> dict[str, dict]:
    """Per step: the pids of the process that executed it, when it started and when it ended."""
    steps: dict[str, dict] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.event_type_value not in ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE"):
            continue
        step = steps.setdefault(event.step_key, {"pids": set()})
        step["pids"].add(event.pid)
        step["start" if event.event_type_value == "STEP_START" else "end"] = entry.timestamp
    return steps


def test_celery_mode_runs_every_step_on_the_two_workers(celery_run):
    run, instance, logs = celery_run
    assert run.returncode == 0, f"{run.stderr[-4000:]}\n--- worker 1:\n{log_tail(logs[0])}\n--- worker 2:\n{log_tail(logs[1])}"
    dagster_run = _only_run(instance)
    assert dagster_run.status == dg.DagsterRunStatus.SUCCESS
    materialized = {key for key in GRAPH.get_all_asset_keys() if instance.get_latest_materialization_event(key)}
    assert materialized == CELERY_ASSETS
    steps = _steps(instance, dagster_run.run_id)
    assert {step for step, info in steps.items() if "end" not in info} == set()
    # every step ran in a worker's process (the CLI only coordinated), and both workers took steps
    [coordinator] = {entry.dagster_event.pid for entry in instance.all_logs(dagster_run.run_id)
                     if entry.dagster_event is not None and entry.dagster_event.event_type == dg.DagsterEventType.RUN_START}
    worker_pids = set().union(*(info["pids"] for info in steps.values()))
    assert coordinator not in worker_pids
    assert len(worker_pids) >= 2, worker_pids


def test_celery_mode_trains_one_model_at_a_time(celery_run):
    """The training pool has one slot (the instance's default_limit): with two free workers, no
    two training steps overlap."""
    run, instance, _ = celery_run
    assert run.returncode == 0
    assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
    [pool] = [pool for pool in instance.event_log_storage.get_pool_limits() if pool.name == TRAINING_POOL]
    assert pool.limit == 1
    assets = {key.to_user_string(): key for key in GRAPH.get_all_asset_keys()}
    trainings = sorted((info["start"], info["end"], step)
                       for step, info in _steps(instance, _only_run(instance).run_id).items()
                       if step in assets and GRAPH.get(assets[step]).pools == {TRAINING_POOL})
    assert sorted(step for _, _, step in trainings) == ["pinclip_model", "pinclip_no_neighbor_model"]
    for (_, end, first), (start, _, second) in zip(trainings, trainings[1:]):
        assert end <= start, f"{first} and {second} trained at the same time"


def _data_side(instance: dg.DagsterInstance, keys) -> dict:
    """Per data asset and partition: its data version (the raw tables' content hash, and what
    Dagster derives from it and the code versions downstream) and every integer in its metadata."""
    found = {}
    for key in keys:
        node = GRAPH.get(key)
        if node.group_name not in DATA_GROUPS:
            continue
        partitions = instance.get_materialized_partitions(key) if node.is_partitioned else [None]
        for partition in sorted(partitions, key=str):
            record = instance.get_latest_materialization_event(key) if partition is None else \
                instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]),
                                                limit=1).records[0].event_log_entry
            event = record.asset_materialization
            found[(key.to_user_string(), partition)] = {
                "data_version": event.tags.get("dagster/data_version"),
                **{name: value.value for name, value in event.metadata.items() if isinstance(value, dg.IntMetadataValue)}}
    return found


def test_celery_mode_gives_the_in_process_assets(celery_run, postgres_run):
    """The same assets, and on the data side the same data versions and row counts, as the in-process run."""
    run, celery_instance, _ = celery_run
    assert run.returncode == 0
    _, in_process_instance, _ = postgres_run
    celery, in_process = _data_side(celery_instance, CELERY_ASSETS), _data_side(in_process_instance, CELERY_ASSETS)
    assert celery.keys() == in_process.keys()
    assert all(values["data_version"] for values in in_process.values())
    assert any("rows_valid" in values for values in in_process.values())
    assert celery == in_process
    for instance in (celery_instance, in_process_instance):  # the model side: registered, judged, indexed
        gate = instance.get_latest_materialization_event(dg.AssetKey("pinclip_champion")).asset_materialization
        assert gate.metadata["decision"].value == "first" and gate.metadata["champion_version"].value == "1"
    index = [instance.get_latest_materialization_event(dg.AssetKey("faiss_pin_index")).asset_materialization.metadata
             for instance in (celery_instance, in_process_instance)]
    assert index[0]["vectors"].value == index[1]["vectors"].value
