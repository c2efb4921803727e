"""End-to-end: the whole asset graph materializes on the tiny world, in-process and via the CLI."""

from __future__ import annotations

import json
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
from mmpipe.partitions import DAY_COLUMN, manifest_days, read_days
from mmpipe.systems import SPECS
from orchestration import definitions
from orchestration.definitions import defs
from orchestration.lifecycle import ABLATIONS_GROUP
from orchestration.resources import PipelinePaths, ValidationPolicy

from tests.conftest import PROJECT_ROOT

# The tiny preset of params.yaml (what `SCALE=tiny make run` trains), as launchpad config.
TINY = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["scales"]["tiny"]


def _resources(raw_root: Path, storage: Path) -> dict:
    return {
        "paths": PipelinePaths(raw_dir=str(raw_root), storage_dir=str(storage)),
        # the default policy: the tiny world plants every defect kind in tables of a few rows,
        # and the check must still tell that from a broken source
        "policy": ValidationPolicy(),
    }


def _materialize_all(raw_root: Path, storage: Path, instance: dg.DagsterInstance):
    """The whole graph over every day of the landing zone, in one run (as `make run` does)."""
    from orchestration.ingest import register_days

    days = manifest_days(raw_root)
    register_days(instance, days)
    pinclip = {"config": TINY["pinclip"]}
    return dg.materialize(
        [*definitions.assets, *definitions.asset_checks],
        selection=dg.AssetSelection.all() - dg.AssetSelection.groups(ABLATIONS_GROUP),  # as `make run`
        resources=_resources(raw_root, storage),
        instance=instance,
        run_config={"ops": {"pinclip_model": pinclip, "pinclip_no_neighbor_model": pinclip,
                            "mac_model": {"config": TINY["mac"]}, "moment_model": {"config": TINY["moment"]},
                            "semantic_id_codebook": {"config": TINY["semantic_id"]},
                            "ctr_model": {"config": TINY["ctr"]}, "ctr_id_only_model": {"config": TINY["ctr"]}}},
        tags={"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]},
    )


def test_every_asset_and_check_succeeds(materialized):
    result, _, instance = materialized
    assert result.success
    graph = defs.resolve_asset_graph()
    # Everything `make run` materializes: all but the sweeps (`make ablations`; the CLI test runs those).
    expected = {key for key in graph.get_all_asset_keys() if graph.get(key).group_name != ABLATIONS_GROUP}
    materialized_keys = {event.asset_key for event in result.get_asset_materialization_events()}
    assert materialized_keys == expected
    days = set(instance.get_dynamic_partitions("day"))
    for key in expected:
        if graph.get(key).is_partitioned:
            assert instance.get_materialized_partitions(key) == days, key
    evaluations = result.get_asset_check_evaluations()
    # three data checks per validated table, each system's beats_baselines check on its eval,
    # and finite_embeddings on each embeddings asset that feeds an index
    finite = {(e.asset_key.to_user_string(), e.check_name) for e in evaluations if e.check_name == "finite_embeddings"}
    assert finite == {("pin_embeddings", "finite_embeddings"), ("video_embeddings", "finite_embeddings")}
    assert len(evaluations) == 3 * len(RAW_TABLES) + len(SPECS) + len(finite)
    assert {(e.asset_key.to_user_string(), e.check_name) for e in evaluations
            if e.check_name == "beats_baselines"} == {(spec.eval_asset, "beats_baselines") for spec in SPECS}
    # the tiny preset runs the baselines check at WARN: a smoke run reports it, nothing else may fail
    failed = [(e.asset_key.to_user_string(), e.check_name) for e in evaluations
              if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR]
    assert failed == []


def test_quarantine_holds_every_planted_bad_record_and_loses_no_row(materialized, tiny_world):
    _, storage, _ = materialized
    bad = pd.read_parquet(truth_path(tiny_world, "bad_records"))
    for table in RAW_TABLES:
        raw = pd.read_parquet(tiny_world / f"{table}.parquet")
        if table in DAY_COLUMN:
            valid = read_days(storage / "validated" / table)
            quarantine = read_days(storage / "quarantine" / table)
        else:
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
    index = pd.concat([pd.read_parquet(path) for path in (storage / "frames").glob("*/index.parquet")])
    assert len(index) > 0
    pairs = pd.read_parquet(storage / "graph" / "neighbor_pairs.parquet")
    assert len(pairs) > 0 and set(pairs["split"]) <= {"train", "val"}


@pytest.mark.slow
def test_cli_materializes_everything(tiny_world, tmp_path):
    """The README's command path: `dagster asset materialize --select '*'` in a subprocess."""
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    shutil.copytree(tiny_world, root / "data" / "raw")
    shutil.copy(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "MMPIPE_ROOT": str(root), "DAGSTER_HOME": str(home), "MMPIPE_SCALE": "tiny"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the default: a SQLite store under the project root
    dagster = Path(sys.executable).parent / "dagster"
    sync = subprocess.run(
        [sys.executable, "-m", "orchestration.ingest", "sync"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert sync.returncode == 0, sync.stderr[-4000:]
    days = sync.stdout.strip()
    assert days == "2026-01-01...2026-01-10"
    proc = subprocess.run(
        [str(dagster), "asset", "materialize", "--select", "*", "-m", "orchestration.definitions",
         "--partition-range", days],
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
    assert index_meta["vectors"].value == len(read_days(storage / "validated" / "pins"))

    report = (storage / "reports" / "pinclip" / "pinclip_eval.md").read_text()
    for row in ("pinclip_fused", "minilm_captions", "no_neighbor_loss_fused", "untrained_image_tower",
                "attribute_match", "true_ceiling"):
        assert row in report, row
    assert "## Promotion gate" in report


def _metadata(instance, asset: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


def test_first_pinclip_version_is_evaluated_promoted_and_serves_the_embeddings(materialized):
    """The gate's path on a fresh registry: eval tags the challenger, the gate promotes it
    (no champion yet), and pin_embeddings embeds with exactly that version."""
    from mlflow import MlflowClient

    _, storage, instance = materialized
    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    challenger = client.get_model_version_by_alias("pinclip", "challenger")
    champion = client.get_model_version_by_alias("pinclip", "champion")
    assert str(champion.version) == str(challenger.version)

    evaluated = _metadata(instance, "eval_pinclip")
    assert evaluated["challenger_version"] == str(challenger.version)
    assert evaluated["primary_metric"] == "nDCG@10/validation"
    recall = evaluated["challenger_value"]
    assert 0.0 <= recall <= 1.0
    assert float(champion.tags["eval.nDCG_at_10/validation"]) == pytest.approx(recall, abs=1e-12)
    assert champion.tags["eval.dagster_run_id"] != "none"

    gate = _metadata(instance, "pinclip_champion")
    assert gate["decision"] == "first" and gate["promoted"] is True
    assert gate["champion_version"] == str(champion.version)
    assert gate["previous_champion_version"] == "none"
    assert champion.tags["promotion.outcome"] == "first"
    decision = json.loads((storage / "reports" / "pinclip" / "pinclip_promotion.json").read_text())
    assert decision["champion"] == str(champion.version) and decision["promote"] is True

    embedded = _metadata(instance, "pin_embeddings")
    assert embedded["model_version"] == str(champion.version)
    assert embedded["model_uri"] == f"models:/pinclip/{champion.version}"


def test_gate_asset_refuses_a_worse_challenger_and_promotes_a_better_one(materialized, tmp_path, monkeypatch):
    """pinclip_champion on a second version, both ways, from the eval report it reads.

    Works on a copy of the pipeline's registry so the module's other tests see the first
    run's state; the second version re-registers the first one's artifacts (a retrain
    would do the same with new weights), and its numbers are set around the champion's
    recorded one.
    """
    from mlflow import MlflowClient

    from mmpipe.registry.promotion import GateEvidence
    from orchestration.systems.pinclip import LIFECYCLE

    pinclip_champion = LIFECYCLE.asset("pinclip_champion")

    _, storage, _ = materialized
    shutil.copy(storage / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    first = client.get_model_version_by_alias("pinclip", "champion")
    recorded = float(first.tags["eval.nDCG_at_10/validation"])
    second = str(client.create_model_version("pinclip", first.source, run_id=first.run_id).version)
    paths = PipelinePaths(raw_dir=str(tmp_path / "raw"), storage_dir=str(tmp_path / "storage"))

    def gate(challenger_value: float) -> dict:
        evidence = GateEvidence("pinclip", "nDCG@10/validation", True, second, challenger_value,
                                champion_version=str(first.version))
        report = paths.storage("reports", "pinclip") / "pinclip_eval.json"
        report.write_text(json.dumps({"metrics": {}, "promotion": evidence.to_dict()}))
        result = pinclip_champion(paths=paths)
        return {key: getattr(value, "value", value) for key, value in result.metadata.items()}

    refused = gate(recorded - 0.01)
    assert refused["promoted"] is False and refused["decision"] == "worse"
    assert refused["champion_version"] == str(first.version)
    assert refused["champion_value"] == pytest.approx(recorded)
    assert f"champion {recorded:.6g}" in refused["reason"]
    assert str(client.get_model_version_by_alias("pinclip", "champion").version) == str(first.version)
    assert client.get_model_version("pinclip", second).tags["promotion.outcome"] == "worse"

    promoted = gate(recorded + 0.01)
    assert promoted["promoted"] is True and promoted["decision"] == "better"
    assert str(client.get_model_version_by_alias("pinclip", "champion").version) == second


def test_eval_rescores_the_champion_and_a_retrained_equal_challenger_ties(materialized, tiny_world, tmp_path,
                                                                         monkeypatch):
    """A second version with the champion's weights: eval_pinclip scores the champion again on
    the same pins, so the two numbers are equal exactly and the gate records a tie and promotes.

    Runs on copies of the storage and registry, leaving the module's first run as it was.
    """
    from mlflow import MlflowClient

    from orchestration.systems.pinclip import LIFECYCLE

    eval_pinclip, pinclip_champion = LIFECYCLE.asset("eval_pinclip"), LIFECYCLE.asset("pinclip_champion")

    _, storage, _ = materialized
    copy = tmp_path / "storage"
    shutil.copytree(storage, copy)
    uri = f"sqlite:///{copy / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MMPIPE_MLFLOW_ARTIFACTS", str(copy / "mlruns"))
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    first = client.get_model_version_by_alias("pinclip", "champion")
    second = str(client.create_model_version("pinclip", first.source, run_id=first.run_id).version)
    client.set_registered_model_alias("pinclip", "challenger", second)

    result = dg.materialize(
        [eval_pinclip, pinclip_champion],
        resources={"paths": PipelinePaths(raw_dir=str(tiny_world), storage_dir=str(copy))},
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    summary = json.loads((copy / "reports" / "pinclip" / "pinclip_eval.json").read_text())
    evidence = summary["promotion"]
    assert evidence["challenger_version"] == second
    assert evidence["champion_version"] == str(first.version)
    assert evidence["champion_value"] == evidence["challenger_value"]
    assert "champion, re-scored on this data" in (copy / "reports" / "pinclip" / "pinclip_eval.md").read_text()

    gate = {key: value.value for key, value in
            result.asset_materializations_for_node("pinclip_champion")[0].metadata.items()}
    assert gate["decision"] == "tie" and gate["promoted"] is True
    assert gate["previous_champion_version"] == str(first.version) and gate["champion_version"] == second
    assert "re-scored on the same data" in gate["reason"]
    assert str(client.get_model_version_by_alias("pinclip", "champion").version) == second
