"""Incremental rebuilds: after `mmpipe world advance --days 1`, the new day's partitions,
the dimension tables it touches and the index run alone; nothing is trained again."""

from __future__ import annotations

import json
import shutil

import dagster as dg
import pandas as pd
import pytest

from mmpipe.index.faiss_index import VectorIndex
from mmpipe.index.incremental import read_state
from mmpipe.partitions import manifest_days, raw_rows_by_day, read_days
from mmpipe.world.advance import advance
from orchestration import definitions
from orchestration.ingest import INGEST_ASSETS, INGEST_DAY_PARTITIONED, ingest_day_job, register_days
from tests.conftest import tiny_run_environment
from tests.test_pipeline import _materialize_all, _resources

NEW_DAY = "2026-01-11"  # the tiny world spans 2026-01-01 .. 2026-01-10
TRAINING = {"pinclip_model", "pinclip_no_neighbor_model", "eval_pinclip", "pinclip_champion",
            "graph_neighbor_pairs", "eval_overview"}


def _materialized_in(instance: dg.DagsterInstance, run_id: str) -> set[tuple[str, str | None]]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    return {(r.event_log_entry.asset_materialization.asset_key.to_user_string(),
             r.event_log_entry.asset_materialization.partition) for r in records}


@pytest.fixture(scope="module")
def incremental(tiny_world, tmp_path_factory):
    base = tmp_path_factory.mktemp("incremental")
    raw_root, storage = base / "raw", base / "storage"
    shutil.copytree(tiny_world, raw_root)
    instance = dg.DagsterInstance.ephemeral()
    with pytest.MonkeyPatch.context() as patch:
        tiny_run_environment(patch, storage)
        full = _materialize_all(raw_root, storage, instance)
        assert full.success
        before = {kind: VectorIndex.load(storage / "index" / "pins" / kind).ntotal for kind in ("fused", "image")}
        advance(raw_root, days=1, progress=False)
        added = register_days(instance, manifest_days(raw_root))
        day = dg.materialize(
            [*definitions.assets, *definitions.asset_checks],
            selection=list(INGEST_ASSETS),
            partition_key=NEW_DAY,
            resources=_resources(raw_root, storage),
            instance=instance,
        )
    return {"full": full, "day": day, "instance": instance, "raw_root": raw_root, "storage": storage,
            "before": before, "added": added}


def test_a_new_day_is_one_new_partition(incremental):
    assert incremental["added"] == [NEW_DAY]
    assert incremental["day"].success


def test_exactly_the_new_days_partitions_and_the_index_materialize(incremental):
    instance, run_id = incremental["instance"], incremental["day"].run_id
    done = _materialized_in(instance, run_id)
    expected = {(asset, NEW_DAY) for asset in INGEST_DAY_PARTITIONED}
    expected |= {(asset, None) for asset in INGEST_ASSETS if asset not in INGEST_DAY_PARTITIONED}
    assert done == expected
    assert not {asset for asset, _ in done} & TRAINING
    # the earlier days' partitions keep their first (full-run) materialization
    full_run = incremental["full"].run_id
    for asset in INGEST_DAY_PARTITIONED:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        assert event.run_id == run_id
        old = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=["2026-01-10"]), limit=5).records
        assert [record.run_id for record in old] == [full_run], asset
    # no training asset ran again
    for asset in TRAINING:
        records = instance.fetch_materializations(dg.AssetKey(asset), limit=5).records
        assert [record.run_id for record in records] == [full_run], asset


def test_index_grows_by_the_new_days_valid_pins_without_a_rebuild(incremental):
    storage = incremental["storage"]
    new_pins = read_days(storage / "validated" / "pins", [NEW_DAY])
    assert len(new_pins) > 0
    for kind in ("fused", "image"):
        index = VectorIndex.load(storage / "index" / "pins" / kind)
        assert index.ntotal == incremental["before"][kind] + len(new_pins)
        assert index.ids[-len(new_pins):] == new_pins["pin_id"].tolist()
    state = read_state(storage / "index" / "pins")
    assert NEW_DAY in state["days"] and state["days"][NEW_DAY]["rows"] == len(new_pins)
    meta = incremental["instance"].get_latest_materialization_event(
        dg.AssetKey("faiss_pin_index")).asset_materialization.metadata
    assert meta["sync"].value == "add" and meta["days_added"].value == NEW_DAY


def test_the_new_days_pins_get_semantic_ids_from_the_champion_codebook(incremental):
    """A new pin gets its behavior embedding and semantic ID the day it arrives, from the same
    codebook version as the earlier days'; its ID is flagged collided exactly when an earlier
    pin or another new pin holds it (on the tiny world's 16-ID codebook, all of them)."""
    from mmpipe.systems.semantic_id.serve import CODEBOOK_VERSION, COLLIDED

    storage = incremental["storage"]
    new_pins = read_days(storage / "validated" / "pins", [NEW_DAY])
    behavior = pd.read_parquet(storage / "embeddings" / "behavior" / f"created_at={NEW_DAY}.parquet")
    assert sorted(behavior["pin_id"]) == sorted(new_pins["pin_id"])
    ids_dir = storage / "semantic_ids" / "pins"
    new = pd.read_parquet(ids_dir / f"created_at={NEW_DAY}.parquet")
    earlier = pd.concat([pd.read_parquet(path) for path in sorted(ids_dir.glob("created_at=*.parquet"))
                         if NEW_DAY not in path.name])
    assert sorted(new["pin_id"]) == sorted(new_pins["pin_id"])
    assert set(new[CODEBOOK_VERSION]) == set(earlier[CODEBOOK_VERSION])
    levels = [column for column in new.columns if column.startswith("level_")]
    assert levels
    taken = set(map(tuple, earlier[levels].to_numpy()))
    ids = pd.Series(list(map(tuple, new[levels].to_numpy())))
    shared = ids.isin(taken) | ids.duplicated(keep=False)
    assert new[COLLIDED].tolist() == shared.tolist()


def test_the_new_partition_conserves_rows(incremental):
    raw_root, storage = incremental["raw_root"], incremental["storage"]
    for table in ("pins", "interactions", "videos"):
        _, days = raw_rows_by_day(raw_root, table)
        expected = set(days.index[days == NEW_DAY])
        assert expected, table
        valid = read_days(storage / "validated" / table, [NEW_DAY])
        quarantine = read_days(storage / "quarantine" / table, [NEW_DAY])
        assert len(valid) + len(quarantine) == len(expected), table
        assert set(valid["row_index"]) | set(quarantine["row_index"]) == expected, table
        # and over every day: every raw row in exactly one partition
        everything = pd.concat([read_days(storage / "validated" / table)["row_index"],
                                read_days(storage / "quarantine" / table)["row_index"]])
        assert sorted(everything) == list(range(len(days))), table
    checks = incremental["day"].get_asset_check_evaluations()
    assert checks and all(check.passed for check in checks)


def test_planted_bad_rows_of_the_new_day_are_quarantined(incremental):
    raw_root, storage = incremental["raw_root"], incremental["storage"]
    bad = pd.read_parquet(raw_root / "_truth" / "bad_records.parquet")
    for table in ("pins", "interactions", "videos"):
        _, days = raw_rows_by_day(raw_root, table)
        planted = set(bad.loc[bad["table"] == table, "row_index"]) & set(days.index[days == NEW_DAY])
        quarantine = read_days(storage / "quarantine" / table, [NEW_DAY])
        assert planted <= set(quarantine["row_index"]), table


def test_ingest_job_and_manifest_history(incremental):
    assert ingest_day_job.partitions_def is not None
    manifest = json.loads((incremental["raw_root"] / "manifest.json").read_text())
    assert [delivery["date"] for delivery in manifest["deliveries"]] == ["2026-01-10", NEW_DAY]


# --------------------------------------------------------------------------------------
# the library pieces, directly


def test_rows_with_unusable_dates_go_to_their_delivery_day():
    from mmpipe.partitions import row_days

    manifest = {"start_date": "2026-01-01", "end_date": "2026-01-03",
                "deliveries": [{"date": "2026-01-02", "rows": {"pins": 3}},
                               {"date": "2026-01-03", "rows": {"pins": 5}}]}
    raw = pd.DataFrame({"created_at": ["2026-01-01", None, "2025-12-31", "2026-01-03", "not a date", "2026-01-02"]})
    days = row_days("pins", raw, manifest)
    # rows 0..2 came with the first delivery, 3..4 with the second, 5 is past every delivery
    assert days.tolist() == ["2026-01-01", "2026-01-02", "2026-01-02", "2026-01-03", "2026-01-03", "2026-01-02"]
    assert row_days("pins", raw.iloc[:2], {"start_date": "2026-01-01", "end_date": "2026-01-03"}).tolist() == [
        "2026-01-01", "2026-01-03"]


def test_index_sync_adds_new_days_and_rebuilds_on_change(tmp_path):
    import numpy as np

    from mmpipe.embeddings import embedding_frame, write_day_embeddings
    from mmpipe.index.faiss_index import IndexConfig
    from mmpipe.index.incremental import sync_pin_index

    rng = np.random.default_rng(0)
    emb_dir, index_root = tmp_path / "emb", tmp_path / "index"

    def write(day: str, n: int, version: str = "1", start: int = 0):
        vectors = rng.normal(size=(n, 8)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = [f"p{day[-2:]}{k + start:03d}" for k in range(n)]
        write_day_embeddings(embedding_frame(ids, [day] * n, {"image": vectors, "text": vectors,
                                                                  "fused": vectors}, version), emb_dir, day)

    write("2026-01-01", 5)
    write("2026-01-02", 0)  # a day with no valid pin
    first = sync_pin_index(index_root, emb_dir, IndexConfig())
    assert (first.mode, first.ntotal) == ("rebuild", 5)
    assert sync_pin_index(index_root, emb_dir, IndexConfig()).mode == "noop"
    write("2026-01-03", 4)
    added = sync_pin_index(index_root, emb_dir, IndexConfig())
    assert (added.mode, added.days_added, added.vectors_added, added.ntotal) == ("add", ["2026-01-03"], 4, 9)
    write("2026-01-01", 6, start=100)  # an indexed day recomputed: rebuild
    rebuilt = sync_pin_index(index_root, emb_dir, IndexConfig())
    assert (rebuilt.mode, rebuilt.ntotal) == ("rebuild", 10)
    write("2026-01-04", 2, version="2")  # a new model for one day only: refused
    with pytest.raises(ValueError, match="several model versions"):
        sync_pin_index(index_root, emb_dir, IndexConfig())


def test_new_day_sensor_and_daily_schedule_request_unregistered_days(tiny_world, tmp_path):
    from orchestration.ingest import days_to_ingest, new_day_sensor
    from orchestration.resources import PipelinePaths

    raw_root = tmp_path / "raw"
    shutil.copytree(tiny_world, raw_root)
    resources = {"paths": PipelinePaths(raw_dir=str(raw_root))}
    instance = dg.DagsterInstance.ephemeral()
    result = new_day_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    days = manifest_days(raw_root)
    assert [request.partition_key for request in result.run_requests] == days
    assert result.dynamic_partitions_requests[0].partition_keys == days
    # the schedule's rule: register the days, ingest every day not yet embedded
    assert days_to_ingest(instance, days) == days
    assert sorted(instance.get_dynamic_partitions("day")) == days
    skipped = new_day_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert isinstance(skipped, dg.SkipReason)


def test_the_caption_cache_encodes_only_the_new_days_captions(incremental):
    new_pins = read_days(incremental["storage"] / "validated" / "pins", [NEW_DAY])
    event = incremental["instance"].get_latest_materialization_event(dg.AssetKey("pin_text_features"))
    assert event.run_id == incremental["day"].run_id
    meta = event.asset_materialization.metadata
    # Generated captions may repeat an earlier one, which is then reused, not encoded.
    assert 0 < meta["encoded_captions"].value <= len(new_pins)
    assert meta["reused_rows"].value >= meta["captions"].value - len(new_pins)
