"""A landing zone without videos through the whole default run: the video systems say there is
nothing to do, everything else runs as usual.

A user who brings pins but no videos delivers empty video tables. Validation already writes
empty validated tables (tests/test_raw_tables.py); here the run goes on through the video
features, the training assets of MAC, the moment model and CHAN, their evals, baselines checks
and promotion gates, and what their champions feed (video embeddings and index, moment
predictions, summaries): each materializes with a note saying there is nothing to do, no
video model is registered, and the pin side trains, evaluates and indexes as always.
"""

from __future__ import annotations

import dagster as dg
import pytest
from mlflow import MlflowClient

from mmpipe.systems import SPECS
from mmpipe.systems.pinclip import SPEC as PINCLIP
from orchestration import names
from orchestration.definitions import defs
from orchestration.lifecycle import ABLATIONS_GROUP
from tests.conftest import pins_only_landing_zone, tiny_run_environment
from tests.test_pipeline import _materialize_all

pytestmark = pytest.mark.slow

# The systems that train on videos; the rest (PinCLIP, semantic IDs, CTR) are the pin side.
VIDEO_SPECS = [spec for spec in SPECS if spec.name in {"mac", "moment", "chan"}]
PIN_SPECS = [spec for spec in SPECS if spec not in VIDEO_SPECS]
NOTHING = "nothing to do: no validated videos: nothing to train on"


@pytest.fixture(scope="module")
def run(tiny_world, tmp_path_factory):
    base = tmp_path_factory.mktemp("no_videos")
    root = pins_only_landing_zone(tiny_world, base / "raw")
    storage = base / "storage"
    instance = dg.DagsterInstance.ephemeral()
    tracking = f"sqlite:///{storage / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        tiny_run_environment(patch, storage)  # MLflow at `tracking`
        result = _materialize_all(root, storage, instance)
    return result, instance, MlflowClient(tracking_uri=tracking, registry_uri=tracking)


def _metadata(instance: dg.DagsterInstance, asset: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    assert event is not None, f"{asset} was not materialized"
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


def test_the_default_run_succeeds_and_materializes_every_asset(run):
    result, _, _ = run
    assert result.success
    graph = defs.resolve_asset_graph()
    expected = {key for key in graph.get_all_asset_keys() if graph.get(key).group_name != ABLATIONS_GROUP}
    assert {event.asset_key for event in result.get_asset_materialization_events()} == expected
    failed = [(e.asset_key.to_user_string(), e.check_name) for e in result.get_asset_check_evaluations()
              if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR]
    assert failed == []


@pytest.mark.parametrize("spec", VIDEO_SPECS, ids=lambda spec: spec.name)
def test_each_video_system_says_it_has_nothing_to_do(run, spec):
    result, instance, client = run
    for asset in (spec.model_asset, *map(spec.variant_asset, spec.ablations), spec.eval_asset, spec.champion_asset):
        assert _metadata(instance, asset)["note"] == NOTHING, asset
    assert _metadata(instance, spec.model_asset)["steps"] == 0
    assert _metadata(instance, spec.champion_asset)["champion_version"] == "none"
    check = next(e for e in result.get_asset_check_evaluations()
                 if e.asset_key.to_user_string() == spec.eval_asset and e.check_name == "beats_baselines")
    assert check.passed and check.metadata["note"].value == NOTHING
    assert client.search_registered_models(f"name='{spec.registered_model}'") == []


def test_what_the_video_champions_feed_says_the_same(run):
    _, instance, _ = run
    for asset in (names.VIDEO_EMBEDDINGS, names.FAISS_VIDEO_INDEX, names.MOMENT_PREDICTIONS, names.VIDEO_SUMMARIES):
        assert _metadata(instance, asset)["note"] == NOTHING, asset


def test_the_pin_side_runs_as_always(run):
    _, instance, client = run
    assert client.get_registered_model(PINCLIP.registered_model).aliases.keys() >= {"champion", "challenger"}
    assert _metadata(instance, names.FAISS_PIN_INDEX)["vectors"] > 0
    models = _metadata(instance, names.EVAL_OVERVIEW)["models"]
    assert models and all(model.startswith(tuple(spec.name for spec in PIN_SPECS)) for model in models)
    assert any(model.startswith(PINCLIP.name) for model in models)
