"""The moment system's evaluation end to end on synthetic videos: the registered challenger
against the baselines and the ceiling (report, plots, the gate's number), and the ablations
report of a sweep against the model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mmpipe.config import apply_overrides
from mmpipe.registry.mlflow_registry import RunContext, start_run
from mmpipe.systems.moment import SPEC
from mmpipe.systems.moment.data import TEST, VALIDATION
from mmpipe.systems.moment.eval import (BASELINES, FIXED_PRIOR, HEADLINE_METRIC, MODEL_NAME, PRIMARY_METRIC,
                                        RANDOM_SPAN, SIMILARITY, START_END_ONLY, TRUE_FRAMES, evaluate,
                                        evaluate_sweeps)
from mmpipe.systems.moment.serve import register
from mmpipe.systems.moment.train import MomentSettings, predict_spans, score_spans, train, train_moment
from tests.test_moment_model import TINY, synthetic_inputs

CONTEXT = RunContext(data_version="data-moment2", orchestrator_run_id="dagster-run-11", asset_key="moment_model")


@pytest.fixture(scope="module")
def inputs():
    return synthetic_inputs()


def text_embed(inputs):
    """The synthetic world's "image encoder text side": each query's object prototype."""
    prototype = {f"object {k}": vector for k, vector in enumerate(inputs.prototypes)}
    return lambda texts: np.stack([prototype[text] for text in texts])


@pytest.fixture(scope="module")
def project(tmp_path_factory, inputs):
    """The model trained and registered (packaged text tower), and a no-segmentation sweep."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("moment_project")
    settings = apply_overrides(MomentSettings(), TINY)
    sweep = apply_overrides(settings, SPEC.sweeps["no_segmentation"])
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        env.setenv("MMPIPE_MLFLOW_ARTIFACTS", str(root / "mlruns"))
        trained = train(settings, inputs, root / "model")
        with start_run("moment-test", "tiny", CONTEXT):
            version = register(trained, settings, CONTEXT)
        train_moment(sweep, inputs, root / "no_segmentation")
        yield SimpleNamespace(root=root, settings=settings, version=version, trained=trained)


def test_the_report_puts_the_challenger_beside_its_baselines_and_the_ceiling(project, inputs):
    outcome = evaluate(inputs, project.settings, project.version, None, {}, text_embed=text_embed(inputs))
    assert set(outcome.metrics) == {MODEL_NAME, *BASELINES, TRUE_FRAMES}
    rows = inputs.query_rows(VALIDATION)
    direct = score_spans(inputs, rows, predict_spans(project.trained.model, inputs, rows, project.settings.decode))
    assert outcome.challenger_value == pytest.approx(direct.metrics()["R1@0.7"]) == \
        outcome.metrics[MODEL_NAME][PRIMARY_METRIC]
    assert outcome.metrics[TRUE_FRAMES][HEADLINE_METRIC] == 1.0  # windows of 1.5 s and more on a 0.5 s grid
    for window in (VALIDATION, TEST):
        r1 = {name: outcome.metrics[name][f"R1@0.5/{window}"] for name in (MODEL_NAME, RANDOM_SPAN, FIXED_PRIOR)}
        assert r1[MODEL_NAME] > r1[FIXED_PRIOR] > r1[RANDOM_SPAN]
    summary = outcome.summary
    assert summary["oracle"] == TRUE_FRAMES and summary["baselines"] == list(BASELINES)
    low, high = summary["difference_ci"][HEADLINE_METRIC]
    assert low <= summary["difference"][HEADLINE_METRIC] <= high
    assert summary["best_baseline"][HEADLINE_METRIC] in BASELINES
    assert set(outcome.plots) == {"r1_over_iou_test", "r1_over_iou_validation", "examples_test"}
    assert all(png.startswith(b"\x89PNG") for png in outcome.plots.values())
    assert "**Test window: R1@0.7" in outcome.markdown and SIMILARITY in outcome.markdown
    assert outcome.summary["frame_features"] == {"encoder": "synthetic", "version": "1", "frame_step_s": 0.5}


def test_another_frame_encoder_version_is_refused_by_the_eval(project, inputs):
    inputs.encoder_version, before = "2", inputs.encoder_version
    try:
        with pytest.raises(ValueError, match="reads frame features by synthetic v1, these are by synthetic v2"):
            evaluate(inputs, project.settings, project.version, None, {}, text_embed=text_embed(inputs))
    finally:
        inputs.encoder_version = before


def test_the_ablations_report_gives_each_sweep_its_difference_with_an_interval(project, inputs):
    outcome = evaluate_sweeps(inputs, project.settings, project.root / "model",
                              {"no_segmentation": project.root / "no_segmentation"}, text_embed=text_embed(inputs))
    differences = outcome.summary["differences"]
    for name in ("no_segmentation", START_END_ONLY):
        entry = differences[f"{name}/R1@0.7/{TEST}"]
        expected = outcome.metrics[MODEL_NAME][f"R1@0.7/{TEST}"] - outcome.metrics[name][f"R1@0.7/{TEST}"]
        assert entry["difference"] == pytest.approx(expected)
        assert entry["ci"][0] <= entry["difference"] <= entry["ci"][1]
    assert outcome.summary["training"]["no_segmentation"]["segmentation"] is False
    assert "no_segmentation, R1@0.7/test" in outcome.markdown
