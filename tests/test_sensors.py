"""Retraining and run-failure sensors: the pure decision first, then the Dagster sensors on a
real instance, a temporary MLflow store and temporary storage files."""

from __future__ import annotations

import json
import uuid

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from mmpipe.registry.retraining import training_cutoff
from mmpipe.registry.mlflow_registry import CHAMPION, RunContext, configure, start_run
from mmpipe.systems.pinclip.serve import REGISTERED_NAME
from mmpipe.registry.retraining import (
    DRIFT,
    NEW_DATA,
    ChampionState,
    DriftState,
    RetrainCursor,
    RetrainingPolicy,
    centroid_shift,
    data_since,
    decide_retraining,
    noise_floor,
    read_pin_dates,
)
from orchestration.resources import PipelinePaths
from orchestration.sensors import (
    FAILURE_TAG,
    FAILURES_FILE,
    RetrainingThresholds,
    record_run_failures,
)
from orchestration.systems.pinclip import LIFECYCLE
from orchestration.systems.pinclip import sensors as pinclip_sensors

pinclip_training_job = LIFECYCLE.training_job
weekly_retrain_schedule = LIFECYCLE.schedules[0]
pinclip_retraining_sensor = pinclip_sensors[0]
PINCLIP_TRAINING_ASSETS = ("pin_text_features", "graph_neighbor_pairs", "pinclip_model", "pinclip_no_neighbor_model",
                           "eval_pinclip", "pinclip_champion", "eval_overview")

DIM = 16
DAY0 = pd.Timestamp("2024-01-01")


def day(i: int) -> str:
    """The i-th day of the toy world (1-based), as an ISO date."""
    return (DAY0 + pd.Timedelta(days=i - 1)).strftime("%Y-%m-%d")


def pin_table(days: int, per_day: int) -> pd.DataFrame:
    return pd.DataFrame({
        "pin_id": [f"p{d:02d}_{i:03d}" for d in range(1, days + 1) for i in range(per_day)],
        "created_at": [day(d) for d in range(1, days + 1) for _ in range(per_day)],
    })


# ---------------------------------------------------------------------------------------
# drift: a shifted distribution fires, the same one does not


def test_centroid_shift_matches_its_definition_on_a_small_example():
    rng = np.random.default_rng(0)
    reference, current = rng.normal(size=(7, 3)) * 5, rng.normal(size=(4, 3))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    r, c = unit(reference), unit(current)
    centroid = r.mean(0)
    spread = np.sqrt(np.mean([np.sum((row - centroid) ** 2) for row in r]))
    assert centroid_shift(reference, current) == pytest.approx(np.linalg.norm(c.mean(0) - centroid) / spread)
    assert centroid_shift(reference, reference) == 0.0
    assert centroid_shift(reference, current * 10) == pytest.approx(centroid_shift(reference, current))
    with pytest.raises(ValueError, match="one width"):
        centroid_shift(reference, current[:, :2])


def test_same_distribution_reads_chance_level_and_a_shift_passes_the_threshold():
    rng = np.random.default_rng(1)
    mean = rng.normal(size=DIM)
    reference = mean + rng.normal(size=(2000, DIM))
    same = mean + rng.normal(size=(150, DIM))
    shifted = mean + 1.5 * rng.normal(size=DIM) + rng.normal(size=(150, DIM))
    threshold = RetrainingPolicy().drift_threshold
    chance = centroid_shift(reference, same)
    assert chance < 2 * noise_floor(2000, 150) < threshold
    assert centroid_shift(reference, shifted) > threshold


# ---------------------------------------------------------------------------------------
# new data: what a retrain now would add to the champion's training set


def champion_trained_on(pins: pd.DataFrame, version: str = "1") -> ChampionState:
    """The champion a training run on ``pins`` would give: its derived cut-off and count."""
    pins = read_pin_dates_frame(pins)
    cutoff = training_cutoff(pins)
    return ChampionState(version, cutoff, int((pins["created_at"] < pd.Timestamp(cutoff)).sum()))


def read_pin_dates_frame(pins: pd.DataFrame) -> pd.DataFrame:
    return pins.assign(created_at=pd.to_datetime(pins["created_at"]).dt.normalize())


def test_new_training_pins_count_the_days_the_cutoff_moved_past_plus_late_pins():
    first = read_pin_dates_frame(pin_table(20, 10))
    champion = champion_trained_on(first)
    assert champion.cutoff_date == day(15) and champion.train_pins == 140  # 4 test and 2 validation days of 20

    same = data_since(first, champion)
    assert same.new_train_pins == 0 and same.next_cutoff == champion.cutoff_date  # no retrain loop
    assert same.unseen_pins == 60 and same.newest_day == day(20)

    grown = data_since(read_pin_dates_frame(pin_table(30, 10)), champion)
    assert grown.next_cutoff == day(22)  # 6 test and 3 validation days of 30
    assert grown.new_train_pins == 70  # days 15..21
    assert grown.next_train_pins == 210 and grown.pins == 300

    late = pd.concat([pin_table(30, 10), pd.DataFrame({"pin_id": ["late1", "late2"], "created_at": [day(3)] * 2})])
    assert data_since(read_pin_dates_frame(late), champion).new_train_pins == 72

    unknown_cutoff = ChampionState("1", None, 140)
    assert data_since(read_pin_dates_frame(pin_table(30, 10)), unknown_cutoff).new_train_pins == 70


def test_validated_pins_read_from_one_file_or_a_directory_of_partitions(tmp_path):
    pins = pin_table(3, 2)
    pins.to_parquet(tmp_path / "pins.parquet")
    parts = tmp_path / "pins"
    parts.mkdir()
    for date, rows in pins.groupby("created_at"):
        rows.to_parquet(parts / f"created_at={date}.parquet")
    whole, split = read_pin_dates(tmp_path / "pins.parquet"), read_pin_dates(parts)
    pd.testing.assert_frame_equal(whole, split)
    assert str(whole["created_at"].dtype).startswith("datetime64") and len(whole) == 6
    assert read_pin_dates(tmp_path / "missing").empty


# ---------------------------------------------------------------------------------------
# the decision


POLICY = RetrainingPolicy(min_new_pins=50, drift_threshold=0.5, min_drift_pins=5)


def test_decision_fires_once_per_trigger_and_resets_with_a_new_champion():
    champion = ChampionState("3", day(15), 140)
    data = data_since(read_pin_dates_frame(pin_table(30, 10)), champion)
    calm = DriftState(day(30), 10, 140, 0.1, 0.3)

    assert not decide_retraining(None, None, None, POLICY, RetrainCursor()).fire

    few = decide_retraining(champion, data, calm, RetrainingPolicy(min_new_pins=71), RetrainCursor())
    assert not few.fire and "70 new training pins" in few.reason and "min_new_pins 71" in few.reason

    fired = decide_retraining(champion, data, calm, POLICY, RetrainCursor())
    assert fired.fire and [t.kind for t in fired.triggers] == [NEW_DATA]
    assert fired.run_key == f"pinclip-retrain-v3-data-{day(22)}"
    assert fired.cursor == RetrainCursor(champion="3", new_data_cutoff=day(22), requested=1)
    assert RetrainCursor.from_json(fired.cursor.to_json()) == fired.cursor

    again = decide_retraining(champion, data, calm, POLICY, fired.cursor)
    assert not again.fire and "already requested" in again.reason

    drifted = replace_shift(calm, 0.9)
    drift = decide_retraining(champion, data, drifted, POLICY, fired.cursor)
    assert drift.fire and [t.kind for t in drift.triggers] == [DRIFT]
    assert drift.run_key == f"pinclip-retrain-v3-drift-{day(30)}" != fired.run_key
    small_day = decide_retraining(champion, data, DriftState(day(30), 3, 140, 0.9, 0.5), POLICY, fired.cursor)
    assert not small_day.fire and "not judged" in small_day.reason

    both = decide_retraining(champion, data, drifted, POLICY, RetrainCursor())
    assert both.run_key == f"pinclip-retrain-v3-data-{day(22)}-drift-{day(30)}"  # one run for both

    new_champion = ChampionState("4", day(22), 210)
    fresh = decide_retraining(new_champion, data_since(read_pin_dates_frame(pin_table(30, 10)), new_champion),
                              calm, POLICY, drift.cursor)
    assert not fresh.fire and fresh.cursor == RetrainCursor(champion="4")
    assert "0 new training pins since version 4" in fresh.reason


def replace_shift(state: DriftState, shift: float) -> DriftState:
    return DriftState(state.day, state.day_pins, state.reference_pins, shift, state.noise)


# ---------------------------------------------------------------------------------------
# the sensor on a real instance, MLflow store and storage files


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrain-mlflow")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        env.setenv("MMPIPE_MLFLOW_ARTIFACTS", str(root / "mlruns"))
        yield configure()


@pytest.fixture
def registry(mlflow_store):
    """A fresh ``pinclip`` registered model per test; ``champion(cutoff, n)`` registers a
    version whose training run logged those params (as ``_train`` does) and promotes it."""
    client = mlflow_store
    if client.search_registered_models(f"name = '{REGISTERED_NAME}'"):
        client.delete_registered_model(REGISTERED_NAME)

    def champion(cutoff_date: str, train_pins: int) -> str:
        with start_run("pinclip", "pinclip", RunContext(data_version="test"),
                       params={"train_pins": train_pins, "cutoff_date": cutoff_date, "steps": 1}) as run:
            pass
        if not client.search_registered_models(f"name = '{REGISTERED_NAME}'"):
            client.create_registered_model(REGISTERED_NAME)
        version = str(client.create_model_version(REGISTERED_NAME, f"runs:/{run.info.run_id}/model",
                                                  run_id=run.info.run_id).version)
        client.set_registered_model_alias(REGISTERED_NAME, CHAMPION, version)
        return version

    return champion


class Storage:
    def __init__(self, root):
        self.root = root
        self.paths = PipelinePaths(storage_dir=str(root))
        self.rng = np.random.default_rng(0)
        self.mean = self.rng.normal(size=DIM)

    def write(self, days: int, per_day: int, model_version: str, shift_last_day: float = 0.0,
              partitioned: bool = False):
        """Validated pins of ``days`` days and their embeddings by ``model_version``, one file
        per day (as pin_embeddings writes them); the last day's moved by ``shift_last_day``."""
        pins = pin_table(days, per_day)
        validated = self.root / "validated"
        validated.mkdir(parents=True, exist_ok=True)
        if partitioned:
            for date, rows in pins.groupby("created_at"):
                (validated / "pins").mkdir(exist_ok=True)
                rows.to_parquet(validated / "pins" / f"created_at={date}.parquet")
        else:
            pins.to_parquet(validated / "pins.parquet")
        emb_dir = self.root / "embeddings" / "pins"
        emb_dir.mkdir(parents=True, exist_ok=True)
        offset = shift_last_day * np.ones(DIM)
        for d in range(1, days + 1):
            rows = pins[pins["created_at"] == day(d)]
            fused = self.mean + self.rng.normal(size=(len(rows), DIM)) + (offset if d == days else 0.0)
            pd.DataFrame({"pin_id": rows["pin_id"], "created_at": rows["created_at"],
                          "fused": list(fused.astype(np.float32)), "model_version": model_version}).to_parquet(
                emb_dir / f"created_at={day(d)}.parquet")


@pytest.fixture
def storage(tmp_path):
    return Storage(tmp_path / "storage")


def evaluate(instance, storage: Storage, cursor: str | None = None, **thresholds):
    policy = RetrainingThresholds(**{"min_new_pins": 50, "min_drift_pins": 5, **thresholds})
    context = dg.build_sensor_context(instance=instance, cursor=cursor,
                                      resources={"paths": storage.paths, "retraining": policy})
    result = pinclip_retraining_sensor(context)
    if isinstance(result, dg.SkipReason):
        return [], result.skip_message, cursor
    requests = result.run_requests or []
    skip = result.skip_reason.skip_message if result.skip_reason else None
    return requests, skip, result.cursor if result.cursor is not None else cursor


def test_retraining_sensor_fires_when_it_should_and_only_then(registry, storage):
    instance = dg.DagsterInstance.ephemeral()

    requests, skip, cursor = evaluate(instance, storage)
    assert not requests and "no pinclip@champion" in skip

    v1 = registry(day(15), 140)  # trained on 20 days: the 140 pins before the day-17 cut-off
    storage.write(days=20, per_day=10, model_version=v1)
    requests, skip, cursor = evaluate(instance, storage, cursor)
    assert not requests and f"0 new training pins since version {v1}" in skip
    assert f"newest day {day(20)}: embedding shift" in skip  # the drift number is in the reason too
    assert json.loads(cursor)["champion"] == v1

    storage.write(days=30, per_day=10, model_version=v1, partitioned=True)  # ten more days, as partitions
    requests, skip, cursor = evaluate(instance, storage, cursor, min_new_pins=71)
    assert not requests and "70 new training pins" in skip and "min_new_pins 71" in skip

    requests, skip, cursor = evaluate(instance, storage, cursor)
    assert len(requests) == 1 and skip is None
    first = requests[0]
    assert first.run_key == f"pinclip-retrain-v{v1}-data-{day(22)}"
    assert first.tags["mmpipe/retrain_triggers"] == NEW_DATA
    assert "70 new training pins" in first.tags["mmpipe/retrain_reason"]

    requests, skip, cursor = evaluate(instance, storage, cursor)  # the same trigger: no second run
    assert not requests and "already requested" in skip

    storage.write(days=30, per_day=10, model_version=v1, shift_last_day=3.0, partitioned=True)  # day 30 drifts
    requests, skip, cursor = evaluate(instance, storage, cursor)
    assert len(requests) == 1
    assert requests[0].run_key == f"pinclip-retrain-v{v1}-drift-{day(30)}" != first.run_key
    assert requests[0].tags["mmpipe/retrain_triggers"] == DRIFT
    requests, skip, cursor = evaluate(instance, storage, cursor)
    assert not requests and skip.count("already requested") == 2

    # The retrain is promoted (trained on the days before day 25): nothing new, and the
    # requests start over. Day 30, still embedded by version 1, is not judged against it.
    v2 = registry(day(22), 210)
    requests, skip, cursor = evaluate(instance, storage, cursor)
    assert not requests and f"0 new training pins since version {v2}" in skip
    assert f"not embedded by version {v2}" in skip
    assert json.loads(cursor) == {"champion": v2, "new_data_cutoff": None, "drift_day": None, "requested": 0}

    # Re-embedded by version 2, day 30 still drifts from the training pins: a new request.
    storage.write(days=30, per_day=10, model_version=v2, shift_last_day=3.0, partitioned=True)
    requests, skip, cursor = evaluate(instance, storage, cursor)
    assert [request.run_key for request in requests] == [f"pinclip-retrain-v{v2}-drift-{day(30)}"]


def test_retraining_sensor_waits_while_a_training_run_is_in_progress(registry, storage):
    instance = dg.DagsterInstance.ephemeral()
    version = registry(day(15), 140)
    storage.write(days=30, per_day=10, model_version=version)
    instance.add_run(dg.DagsterRun(job_name=pinclip_training_job.name, run_id=str(uuid.uuid4()),
                                   status=dg.DagsterRunStatus.STARTED))
    requests, skip, cursor = evaluate(instance, storage)
    assert not requests and "still in progress" in skip and cursor is None


def test_retraining_sensor_skips_without_creating_a_missing_mlflow_store(storage, tmp_path, monkeypatch):
    store = tmp_path / "absent" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    requests, skip, _ = evaluate(dg.DagsterInstance.ephemeral(), storage)
    assert not requests and f"no MLflow tracking store at {store}" in skip and not store.exists()


def test_old_whole_table_embeddings_next_to_day_files_are_ignored(tmp_path):
    from mmpipe.embeddings import EmbeddingsNotFoundError, read_embeddings

    directory = tmp_path / "pins"
    directory.mkdir()
    day_file = pd.DataFrame({"pin_id": ["a", "b"], "fused": [[1.0, 0.0], [0.0, 1.0]], "model_version": ["2", "1"]})
    day_file.to_parquet(directory / f"created_at={day(1)}.parquet")
    pd.DataFrame({"pin_id": ["a", "b"], "fused": [[9.0, 9.0]] * 2}).to_parquet(directory / "pins.parquet")
    ids, vectors = read_embeddings(directory, "fused", ["a", "b"], model_version="2")
    assert ids == ["a"] and vectors.tolist() == [[1.0, 0.0]]
    ids, _ = read_embeddings(directory, "fused", ["a", "b"])
    assert ids == ["a", "b"]
    with pytest.raises(EmbeddingsNotFoundError, match="no embeddings at"):
        read_embeddings(tmp_path / "missing", "fused", ["a"])


def test_training_job_schedule_and_sensors_are_wired_into_the_definitions():
    from orchestration.definitions import defs

    job = defs.resolve_job_def(pinclip_training_job.name)
    selected = {key.to_user_string() for key in job.asset_layer.selected_asset_keys}
    assert selected == set(PINCLIP_TRAINING_ASSETS)
    schedule = defs.resolve_schedule_def(weekly_retrain_schedule.name)
    assert schedule.cron_schedule == "0 3 * * 1" and schedule.job_name == job.name
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    sensor = defs.resolve_sensor_def("pinclip_retraining_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED and sensor.job_name == job.name
    assert defs.resolve_sensor_def("record_run_failures").default_status == dg.DefaultSensorStatus.RUNNING


# ---------------------------------------------------------------------------------------
# run failures


@dg.op
def explode():
    raise ValueError("the toy step exploded")


@dg.job
def toy_failing_job():
    explode()


def test_failed_runs_are_recorded_in_storage_and_tagged(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    paths = PipelinePaths(storage_dir=str(tmp_path / "storage"))
    run_ids = []
    for _ in range(2):
        result = toy_failing_job.execute_in_process(instance=instance, raise_on_error=False,
                                                    tags={"dagster/sensor_name": "some_sensor"})
        assert not result.success
        context = dg.build_run_status_sensor_context(
            sensor_name="record_run_failures", dagster_event=result.get_run_failure_event(),
            dagster_instance=instance, dagster_run=result.dagster_run, resources={"paths": paths},
        ).for_run_failure()
        record_run_failures(context)
        run_ids.append(result.run_id)

    log = tmp_path / "storage" / "failures" / FAILURES_FILE
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [record["run_id"] for record in records] == run_ids
    first = records[0]
    assert first["job"] == "toy_failing_job"
    assert first["failed_steps"][0]["step"] == "explode"
    assert "the toy step exploded" in first["failed_steps"][0]["error"]
    assert first["failed_steps"][0]["error_type"] == "ValueError"
    assert first["launched_by"] == {"dagster/sensor_name": "some_sensor"}
    assert first["time"] and first["message"]
    assert instance.get_run_by_id(run_ids[0]).tags[FAILURE_TAG] == str(log)
