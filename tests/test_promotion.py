"""The champion/challenger gate: the pure rule, then the registry side on a SQLite store."""

from __future__ import annotations

import math
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest

from mmpipe.registry.mlflow_registry import (
    CHALLENGER,
    CHAMPION,
    RunContext,
    configure,
    register_logged_model,
    start_run,
)
from mmpipe.registry.promotion import (
    ALREADY_CHAMPION,
    BELOW_MIN_DELTA,
    BETTER,
    FIRST,
    TIE,
    UNSCORED_CHALLENGER,
    UNSCORED_CHAMPION,
    WORSE,
    GateEvidence,
    champion_version,
    decide,
    metric_tag,
    promote_from_evidence,
    promote_if_better,
    record_eval_metric,
    recorded_metric,
)

METRIC = "neighbor_R@10/heldout"


# ---------------------------------------------------------------------------------------
# the rule


def test_first_version_is_promoted_with_its_number_in_the_reason():
    decision = decide(METRIC, 0.0038, None)
    assert decision.promote and decision.outcome == FIRST
    assert decision.champion_value is None
    assert "0.0038" in decision.reason and METRIC in decision.reason


def test_better_challenger_is_promoted_and_the_reason_shows_both_numbers():
    decision = decide(METRIC, 0.0041, 0.0038)
    assert decision.promote and decision.outcome == BETTER
    assert decision.challenger_value == 0.0041 and decision.champion_value == 0.0038
    assert "challenger 0.0041 >= champion 0.0038" in decision.reason
    assert "+0.0003" in decision.reason


def test_a_tie_is_at_least_as_good_and_promotes():
    decision = decide(METRIC, 0.25, 0.25)
    assert decision.promote and decision.outcome == TIE
    assert "challenger 0.25 == champion 0.25" in decision.reason


def test_a_regression_is_refused_however_small():
    decision = decide(METRIC, 0.0038, 0.0041)
    assert not decision.promote and decision.outcome == WORSE
    assert "challenger 0.0038 < champion 0.0041" in decision.reason
    tiny = decide(METRIC, 0.5 - 1e-15, 0.5)
    assert not tiny.promote and tiny.outcome == WORSE


def test_lower_is_better_metrics_flip_the_direction():
    assert decide("logloss", 0.40, 0.45, higher_is_better=False).outcome == BETTER
    refused = decide("logloss", 0.45, 0.40, higher_is_better=False)
    assert not refused.promote and refused.outcome == WORSE
    assert "challenger 0.45 > champion 0.4" in refused.reason and "lower is better" in refused.reason


def test_min_delta_demands_a_real_improvement():
    short = decide(METRIC, 0.301, 0.300, min_delta=0.01)
    assert not short.promote and short.outcome == BELOW_MIN_DELTA
    tie = decide(METRIC, 0.3, 0.3, min_delta=0.01)
    assert not tie.promote and tie.outcome == TIE
    assert decide(METRIC, 0.32, 0.30, min_delta=0.01).promote
    with pytest.raises(ValueError, match="min_delta"):
        decide(METRIC, 0.3, 0.3, min_delta=-0.1)


def test_an_unscored_challenger_is_refused_but_a_first_version_still_becomes_champion():
    refused = decide(METRIC, math.nan, 0.2)
    assert not refused.promote and refused.outcome == UNSCORED_CHALLENGER
    assert decide(METRIC, math.nan, None).promote  # something must be served
    unscored = decide(METRIC, 0.2, math.nan)
    assert not unscored.promote and unscored.outcome == UNSCORED_CHAMPION


# ---------------------------------------------------------------------------------------
# the registry side: a trivial pyfunc registered as several versions of "toy"


class Constant(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame({"score": [1.0] * len(model_input)})


def holder(client, name: str, alias: str) -> str:
    """The version holding ``alias`` (the SQLite store returns version numbers as ints)."""
    return str(client.get_model_version_by_alias(name, alias).version)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store per module (creating one takes seconds) with two logged pyfuncs."""
    root = tmp_path_factory.mktemp("promotion")
    context = RunContext(data_version="data-1", orchestrator_run_id="run-1", asset_key="toy_model")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        env.setenv("MMPIPE_MLFLOW_ARTIFACTS", str(root / "mlruns"))
        uris = []
        for run in range(2):
            with start_run("toy", f"toy-{run}", context):
                uris.append(mlflow.pyfunc.log_model(name="model", python_model=Constant()).model_uri)
        yield SimpleNamespace(client=configure(), uris=uris, context=context)


@pytest.fixture
def registry(store, request):
    """A registered model of its own per test, and a way to register a new version of it."""
    name = f"toy-{request.node.name.removeprefix('test_')[:40]}"
    versions = []

    def new_version() -> str:
        # Alternate between the two logged models: versions differ as real retrains would.
        versions.append(register_logged_model(store.uris[len(versions) % 2], name, store.context))
        return versions[-1]

    return store.client, name, new_version


def test_promote_then_refuse_then_tie_moves_champion_only_forward(registry):
    client, name, new_version = registry

    v1 = new_version()
    record_eval_metric(client, name, v1, METRIC, 0.0038)
    first = promote_if_better(client, name, v1, METRIC, 0.0038)
    assert first.promote and first.outcome == FIRST and first.champion == v1
    assert holder(client, name, CHAMPION) == v1

    v2 = new_version()
    assert holder(client, name, CHALLENGER) == v2  # every new version
    record_eval_metric(client, name, v2, METRIC, 0.0041)
    better = promote_if_better(client, name, v2, METRIC, 0.0041)
    assert better.promote and better.outcome == BETTER
    assert better.previous_champion == v1 and better.champion == v2
    assert holder(client, name, CHAMPION) == v2

    v3 = new_version()
    record_eval_metric(client, name, v3, METRIC, 0.0030)
    worse = promote_if_better(client, name, v3, METRIC, 0.0030)
    assert not worse.promote and worse.outcome == WORSE and worse.champion == v2
    assert holder(client, name, CHAMPION) == v2  # never moves back
    assert holder(client, name, CHALLENGER) == v3
    tags = client.get_model_version(name, v3).tags
    assert tags["promotion.outcome"] == WORSE and tags["promotion.promoted"] == "false"
    assert float(tags["promotion.challenger_value"]) == 0.0030
    assert float(tags["promotion.champion_value"]) == 0.0041
    assert tags["promotion.previous_champion"] == v2
    assert "challenger 0.003 < champion 0.0041" in tags["promotion.reason"]
    assert f"champion is version {v2}" in tags["promotion.reason"]

    v4 = new_version()
    record_eval_metric(client, name, v4, METRIC, 0.0041)
    tie = promote_if_better(client, name, v4, METRIC, 0.0041)
    assert tie.promote and tie.outcome == TIE
    assert holder(client, name, CHAMPION) == v4
    assert client.get_model_version(name, v4).tags["promotion.outcome"] == TIE
    assert client.get_model_version(name, v2).tags["promotion.outcome"] == BETTER  # history kept

    again = promote_if_better(client, name, v4, METRIC, 0.0041)
    assert not again.promote and again.outcome == ALREADY_CHAMPION and again.champion == v4
    assert client.get_model_version(name, v4).tags["promotion.outcome"] == TIE  # why it is champion


def test_recorded_metrics_round_trip_exactly_so_ties_stay_ties(registry):
    client, name, new_version = registry
    version = new_version()
    value = 0.1 + 0.2  # 0.30000000000000004: rounding to text would break an exact tie
    record_eval_metric(client, name, version, METRIC, value, extra={"data_version": "abc"})
    tags = client.get_model_version(name, version).tags
    assert metric_tag(METRIC) == "eval.neighbor_R_at_10/heldout" and metric_tag(METRIC) in tags
    assert tags["eval.data_version"] == "abc"
    assert recorded_metric(client, name, version, METRIC) == value
    assert recorded_metric(client, name, version, "other") is None


def test_a_rescored_champion_is_compared_only_while_it_still_holds_the_alias(registry):
    client, name, new_version = registry
    v1 = new_version()
    record_eval_metric(client, name, v1, METRIC, 0.50)  # scored on last month's data
    promote_if_better(client, name, v1, METRIC, 0.50)
    v2 = new_version()

    # Re-scored on today's data the champion does worse than its old number; the
    # challenger beats today's number, so it is promoted.
    decision = promote_if_better(client, name, v2, METRIC, 0.40, champion_value=0.35, scored_champion=v1)
    assert decision.promote and decision.champion_value == 0.35
    assert "re-scored on the same data" in decision.reason

    # Evidence about a version that no longer holds the alias is ignored: the recorded
    # number of the actual champion (v2 has none) decides, and the gate refuses.
    v3 = new_version()
    stale = promote_if_better(client, name, v3, METRIC, 0.90, champion_value=0.1, scored_champion=v1)
    assert not stale.promote and stale.outcome == UNSCORED_CHAMPION
    assert champion_version(client, name) == v2


def test_gate_evidence_from_an_eval_report_drives_the_same_decision(registry):
    client, name, new_version = registry
    v1 = new_version()
    record_eval_metric(client, name, v1, METRIC, 0.20)
    promote_if_better(client, name, v1, METRIC, 0.20)
    v2 = new_version()
    evidence = GateEvidence(name, METRIC, True, v2, 0.18, champion_version=v1, champion_value=0.21)
    # What the report JSON holds (NaN as null) reads back to the same evidence.
    assert GateEvidence.from_dict(evidence.to_dict()) == evidence
    unscored = GateEvidence.from_dict({**evidence.to_dict(), "challenger_value": None})
    assert math.isnan(unscored.challenger_value)
    assert "| 1 | champion, re-scored on this data | 0.21 |" in evidence.markdown()

    decision = promote_from_evidence(client, evidence)
    assert not decision.promote and decision.outcome == WORSE
    assert "challenger 0.18 < champion 0.21" in decision.reason
    assert champion_version(client, name) == v1
    assert "not promoted" in decision.markdown() and f"after: version {v1}" in decision.markdown()


def test_rollback_moves_the_champion_back_and_records_it_like_a_promotion(registry):
    from mmpipe.registry.promotion import ROLLED_BACK, rollback

    client, name, new_version = registry
    with pytest.raises(ValueError, match="no champion to roll back"):
        rollback(client, name)
    v1, v2, v3 = new_version(), new_version(), new_version()
    for version, value in ((v1, 0.20), (v2, 0.25), (v3, 0.30)):
        record_eval_metric(client, name, version, METRIC, value)
        assert promote_if_better(client, name, version, METRIC, value).promote
    assert holder(client, name, CHAMPION) == v3

    back = rollback(client, name)  # to the champion before v3
    assert back.outcome == ROLLED_BACK and back.champion == v2 and back.previous_champion == v3
    assert holder(client, name, CHAMPION) == v2
    tags = client.get_model_version(name, v2).tags
    assert tags["promotion.outcome"] == ROLLED_BACK and tags["promotion.previous_champion"] == v3
    assert f"from version {v3} to version {v2}" in tags["promotion.reason"]
    assert back.challenger_value == pytest.approx(0.25) and back.champion_value == pytest.approx(0.30)

    assert rollback(client, name).champion == v3  # a second rollback undoes the first
    assert rollback(client, name, to=v1).champion == v1
    with pytest.raises(ValueError, match="has no version 99"):
        rollback(client, name, to="99")
    with pytest.raises(ValueError, match="already holds"):
        rollback(client, name, to=v1)


def test_rollback_command_names_what_is_wrong(monkeypatch, capsys):
    from mmpipe.cli import main

    assert main(["registry", "rollback", "nosuchsystem"]) == 2
    assert "unknown system 'nosuchsystem'" in capsys.readouterr().err
