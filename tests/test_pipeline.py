"""End-to-end: the whole asset graph materializes on the tiny world, in-process and via the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from mmpipe.layout import RAW_TABLES, truth_path
from orchestration import definitions
from orchestration.definitions import defs
from orchestration.resources import PipelinePaths, ValidationPolicy

# The tiny world plants at least one record of every defect kind in tables of a few rows,
# so its quarantine shares are far above what the default policy tolerates.
TINY_MAX_QUARANTINE_RATE = 0.7
TINY_PINCLIP = {"model_size": "tiny", "steps": 20, "batch_size": 32, "pair_batch_size": 16}
from tests.conftest import PROJECT_ROOT


def _materialize_all(raw_root: Path, storage: Path, instance: dg.DagsterInstance):
    pinclip = {"config": TINY_PINCLIP}
    return dg.materialize(
        [*definitions.assets, *definitions.asset_checks],
        resources={
            "paths": PipelinePaths(raw_dir=str(raw_root), storage_dir=str(storage)),
            "policy": ValidationPolicy(max_quarantine_rate=TINY_MAX_QUARANTINE_RATE),
        },
        instance=instance,
        run_config={"ops": {"pinclip_model": pinclip, "pinclip_no_neighbor_model": pinclip}},
    )


@pytest.fixture(scope="module")
def materialized(tiny_world, tmp_path_factory):
    storage = tmp_path_factory.mktemp("storage")
    instance = dg.DagsterInstance.ephemeral()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{storage / 'mlflow.db'}")
        patch.setenv("MMPIPE_MLFLOW_ARTIFACTS", str(storage / "mlruns"))
        result = _materialize_all(tiny_world, storage, instance)
    return result, storage, instance


def test_every_asset_and_check_succeeds(materialized):
    result, _, instance = materialized
    assert result.success
    expected = {key for key in defs.resolve_asset_graph().get_all_asset_keys()}
    materialized_keys = {event.asset_key for event in result.get_asset_materialization_events()}
    assert materialized_keys == expected
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 3 * len(RAW_TABLES)
    failed = [(e.asset_key.to_user_string(), e.check_name) for e in evaluations if not e.passed]
    assert failed == []


def test_quarantine_holds_every_planted_bad_record_and_loses_no_row(materialized, tiny_world):
    _, storage, _ = materialized
    bad = pd.read_parquet(truth_path(tiny_world, "bad_records"))
    for table in RAW_TABLES:
        raw = pd.read_parquet(tiny_world / f"{table}.parquet")
        valid = pd.read_parquet(storage / "validated" / f"{table}.parquet")
        quarantine = pd.read_parquet(storage / "quarantine" / f"{table}.parquet")
        assert len(raw) == len(valid) + len(quarantine), table
        assert sorted([*valid["row_index"], *quarantine["row_index"]]) == list(range(len(raw))), table
        planted = set(bad.loc[bad["table"] == table, "row_index"])
        missed = planted - set(quarantine["row_index"])
        assert not missed, f"{table}: planted bad rows not quarantined: {sorted(missed)}"


def test_materialization_metadata_is_useful(materialized):
    _, _, instance = materialized
    pins = instance.get_latest_materialization_event(dg.AssetKey("validated_pins"))
    metadata = pins.asset_materialization.metadata
    assert metadata["rows_quarantined"].value > 0
    assert metadata["rows_valid"].value + metadata["rows_quarantined"].value == metadata["rows_in"].value
    assert "data:image/png;base64," in metadata["sample_images"].value
    raw = instance.get_latest_materialization_event(dg.AssetKey("raw_pins"))
    assert len(raw.asset_materialization.tags["dagster/data_version"]) == 16


def test_frames_and_pairs_outputs(materialized):
    _, storage, _ = materialized
    index = pd.read_parquet(storage / "frames" / "index.parquet")
    assert len(index) > 0
    pairs = pd.read_parquet(storage / "graph" / "neighbor_pairs.parquet")
    assert len(pairs) > 0 and set(pairs["split"]) <= {"train", "val"}


@pytest.mark.slow
def test_cli_materializes_everything(tiny_world, tmp_path):
    """The README's command path: `dagster asset materialize --select '*'` in a subprocess."""
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    shutil.copytree(tiny_world, root / "data" / "raw")
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["validation"]["max_quarantine_rate"] = TINY_MAX_QUARANTINE_RATE
    params["pinclip"].update(TINY_PINCLIP)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "MMPIPE_ROOT": str(root), "DAGSTER_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)  # the default: a SQLite store under the project root
    dagster = Path(sys.executable).parent / "dagster"
    proc = subprocess.run(
        [str(dagster), "asset", "materialize", "--select", "*", "-m", "orchestration.definitions"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    instance = dg.DagsterInstance.from_config(str(home))
    for key in defs.resolve_asset_graph().get_all_asset_keys():
        assert instance.get_latest_materialization_event(key) is not None, key
    assert (root / "storage" / "graph" / "neighbor_pairs.parquet").exists()
    assert (root / "mlflow.db").exists() and (root / "storage" / "reports" / "pinclip" / "pinclip_eval.md").exists()


def test_pinclip_slice_registers_indexes_and_reports(materialized):
    from mlflow import MlflowClient

    _, storage, instance = materialized
    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    version = client.get_model_version_by_alias("pinclip", "challenger")
    assert version.tags["dagster_run_id"] != "none" and version.tags["git_commit"]
    model_meta = instance.get_latest_materialization_event(dg.AssetKey("pinclip_model")).asset_materialization.metadata
    run = client.get_run(model_meta["mlflow_run_id"].value)
    assert "loss_clip" in run.data.metrics and "loss_neighbor" in run.data.metrics

    index_meta = instance.get_latest_materialization_event(dg.AssetKey("faiss_pin_index")).asset_materialization.metadata
    assert index_meta["fused_recall@10_vs_exact"].value >= 0.95
    assert index_meta["vectors"].value == len(pd.read_parquet(storage / "validated" / "pins.parquet"))

    report = (storage / "reports" / "pinclip" / "pinclip_eval.md").read_text()
    for row in ("pinclip_fused", "minilm_captions", "no_neighbor_loss_fused", "untrained_image_tower",
                "attribute_oracle"):
        assert row in report, row
