"""CHAN's evaluation: the QFVS protocol per date window, the baselines, the ceiling, the
bootstrap differences, the report, the ablations' report and the summaries file, on the
synthetic world of test_chan_model (a tiny CHAN learns it in a few hundred steps)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import mmpipe.systems.chan.eval as chan_eval
from mmpipe.config import apply_overrides
from mmpipe.eval.overview import compare, load_report
from mmpipe.eval.report import write_report
from mmpipe.eval.summarization import read_summaries, reference_shots, score_summaries
from mmpipe.systems.chan.data import TEST, VALIDATION
from mmpipe.systems.chan.eval import (BASELINES, CEILING, HEADLINE_METRIC, MODEL_NAME, PRIMARY_METRIC,
                                      QUERY_SIMILARITY, RANDOM_NAME, SWEEPS, UNIFORM, evaluate, evaluate_sweeps,
                                      metric_key)
from mmpipe.systems.chan.model import CHAN
from mmpipe.systems.chan.serve import SUMMARIES_FILE, write_query_summaries
from mmpipe.systems.chan.train import train_chan, window_f1
from tests.test_chan_model import SHOT_DIM, TINY, WORDS, synthetic_inputs, synthetic_world

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_text_embeddings(calls: list):
    """The image encoder's text side: a query's embedding is the sum of its words' one-hot
    vectors, the directions its shots' features are made of; records each call."""
    basis = np.eye(SHOT_DIM, dtype=np.float32)

    def embed(model_name, version, texts, batch_size=256):
        calls.append((model_name, version, list(texts)))
        return np.stack([sum(basis[WORDS.index(word.strip())] for word in text.split(",")) for text in texts])

    return embed


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The inputs, a tiny trained CHAN (checkpoint in its directory) and the two sweeps."""
    inputs = synthetic_inputs()
    root = tmp_path_factory.mktemp("chan_eval")
    torch.manual_seed(0)
    model, _ = train_chan(TINY, inputs, root / "chan")
    short = replace(TINY, train=replace(TINY.train, steps=60))
    sweep_dirs = {name: root / f"chan_{name}" for name in SWEEPS}
    for name, directory in sweep_dirs.items():
        train_chan(apply_overrides(short, SWEEPS[name]), inputs, directory)
    return inputs, model, root / "chan", sweep_dirs


@pytest.fixture(scope="module")
def outcome(trained):
    """evaluate() with the registry replaced: the challenger (version 5) is the trained
    model, the champion (version 4) an untrained one; the encoder's text embeddings are fake."""
    inputs, model, _, _ = trained
    calls = []
    torch.manual_seed(1)
    champion = CHAN(model.config).eval()
    with pytest.MonkeyPatch.context() as patch:  # undone before any other test runs
        patch.setattr(chan_eval, "load_version_model", lambda version: {"5": model, "4": champion}[version])
        patch.setattr(chan_eval, "registry_text_embeddings", fake_text_embeddings(calls))
        result = evaluate(inputs, TINY, "5", "4", {})
    return result, calls, champion


def test_every_row_has_every_metric_and_the_encoder_embeds_every_query_once(trained, outcome):
    inputs = trained[0]
    result, calls, _ = outcome
    assert set(result.metrics) == {MODEL_NAME, *BASELINES, CEILING}
    keys = {metric_key(metric, window) for metric in ("precision", "recall", "F1") for window in (VALIDATION, TEST)}
    for method, row in result.metrics.items():
        assert set(row) == keys and all(math.isfinite(value) for value in row.values()), method
    assert PRIMARY_METRIC == "F1/validation" and HEADLINE_METRIC == "F1/test"
    rows = np.concatenate([inputs.query_rows(VALIDATION), inputs.query_rows(TEST)])
    assert calls == [("pinclip", "7", inputs.queries["query"].to_numpy()[rows].tolist())]


def test_the_ceiling_is_the_best_any_summary_can_do_and_the_model_beats_the_weak_baselines(outcome):
    result, _, _ = outcome
    metrics = result.metrics
    for window in (VALIDATION, TEST):
        f1 = metric_key("F1", window)
        assert all(metrics[CEILING][f1] >= row[f1] for row in metrics.values()), window
        assert metrics[MODEL_NAME][f1] >= metrics[UNIFORM][f1] + 0.1, window
        assert metrics[MODEL_NAME][f1] >= metrics[RANDOM_NAME][f1] + 0.1, window
    # the relevant shots fill a 40% budget only partly, so even the ceiling misses some
    assert 0.8 < metrics[CEILING][HEADLINE_METRIC] < 1.0
    # shot features are sums of the query words' directions: similarity is a strong baseline
    assert metrics[QUERY_SIMILARITY][HEADLINE_METRIC] > metrics[UNIFORM][HEADLINE_METRIC] + 0.1


def test_the_gate_number_is_the_training_loop_validation_score_and_the_champion_is_rescored(trained, outcome):
    inputs, model, _, _ = trained
    result, _, champion = outcome
    assert result.challenger_value == result.metrics[MODEL_NAME][PRIMARY_METRIC]
    assert result.challenger_value == pytest.approx(window_f1(model, inputs, VALIDATION, TINY.budget))
    assert result.champion_value == pytest.approx(window_f1(champion, inputs, VALIDATION, TINY.budget))
    assert result.note == ""


def test_differences_carry_bootstrap_intervals_around_them(outcome):
    result, _, _ = outcome
    summary = result.summary
    assert set(summary["difference"]) == {f"{b}/{w}" for b in BASELINES for w in (VALIDATION, TEST)}
    for key, difference in summary["difference"].items():
        low, high = summary["difference_ci"][key]
        assert low <= difference <= high, key
        baseline, window = key.split("/")
        assert difference == pytest.approx(result.metrics[MODEL_NAME][metric_key("F1", window)]
                                           - result.metrics[baseline][metric_key("F1", window)])
    best = summary["best_baseline"][HEADLINE_METRIC]
    assert best == max(BASELINES, key=lambda name: result.metrics[name][HEADLINE_METRIC])
    low, high = summary["gain_ci"][HEADLINE_METRIC]
    assert low <= summary["gains"][HEADLINE_METRIC] <= high


def test_report_files_and_the_overview_read_the_summary(trained, outcome, tmp_path):
    inputs = trained[0]
    result, _, _ = outcome
    assert set(result.plots) == {"f1_test", "shot_scores_test_examples"}
    assert all(png.startswith(PNG_MAGIC) for png in result.plots.values())
    n_test = len(inputs.query_rows(TEST))
    assert "# CHAN evaluation: chan" in result.markdown and f"## Test window ({n_test} queries)" in result.markdown
    assert f"`{PRIMARY_METRIC}`" in result.markdown and "40% of each video's shots" in result.markdown
    files = write_report(tmp_path / "chan", "chan_eval", result.markdown, result.plots, result.summary)
    summary = json.loads(files["metrics"].read_text())
    assert summary["oracle"] == CEILING and summary["queries"][TEST] == n_test
    assert summary["budget"] == {"shots_share": 0.4}
    rows = {row.metric: row for row in compare(load_report(files["metrics"]))}
    assert list(rows) == summary["primary_metrics"] and PRIMARY_METRIC in rows
    assert rows[HEADLINE_METRIC].higher_is_better and rows[HEADLINE_METRIC].baseline in BASELINES


def test_a_champion_that_cannot_read_these_shot_features_is_not_rescored(trained, monkeypatch):
    inputs, model, _, _ = trained
    narrow = CHAN(replace(model.config, shot_dim=SHOT_DIM))  # trained without the frame extremes
    monkeypatch.setattr(chan_eval, "load_version_model", lambda version: narrow)
    value, note = chan_eval.rescore_champion("3", inputs, TINY.budget)
    assert value is None and "Champion version 3 was not re-scored" in note
    assert f"it reads {SHOT_DIM}-d shot vectors, these are {3 * SHOT_DIM}-d" in note


def test_the_encoder_must_embed_texts_in_the_space_of_its_shot_features(trained, monkeypatch):
    inputs = trained[0]
    monkeypatch.setattr(chan_eval, "registry_text_embeddings", lambda name, version, texts: np.ones((len(texts), 3)))
    with pytest.raises(ValueError, match="embeds texts as \\(3,\\) but its shot features are 16-d"):
        chan_eval.query_similarity_method(inputs, chan_eval.window_rows(inputs), TINY.budget)


def test_sweeps_report_differences_with_intervals(trained, monkeypatch):
    inputs, _, model_dir, sweep_dirs = trained
    monkeypatch.setattr(chan_eval, "registry_text_embeddings", fake_text_embeddings([]))
    result = evaluate_sweeps(inputs, TINY, model_dir, sweep_dirs)
    assert set(result.metrics) == {MODEL_NAME, *SWEEPS, *BASELINES, CEILING}
    differences = result.summary["differences"]
    assert set(differences) == {f"{name}/F1/{window}" for name in SWEEPS for window in (VALIDATION, TEST)}
    for key, entry in differences.items():
        low, high = entry["ci"]
        assert low <= entry["difference"] <= high, key
    assert "no_local_attention" in result.markdown and "no_global_attention" in result.markdown
    assert set(result.plots) == {"ablations_f1_test"}


def test_the_summaries_file_scores_as_the_eval_does(trained, outcome, tmp_path):
    inputs, model, _, _ = trained
    result, _, _ = outcome
    path, summaries = write_query_summaries(tmp_path, model, inputs, (VALIDATION, TEST), TINY.budget, "chan v5")
    assert path == tmp_path / SUMMARIES_FILE
    read = read_summaries(path)
    assert read == summaries and {s.budget for s in read} == {TINY.budget}
    assert all(s.shots[i].start_s < s.shots[i + 1].start_s for s in read for i in range(len(s.shots) - 1))
    videos, shots, queries, *_ = synthetic_world()
    relevant = {(row.video_id, row.query_id): row.relevant_shots for row in queries.itertuples()}
    table = score_summaries(read, relevant, reference_shots(shots))
    n_validation = len(inputs.query_rows(VALIDATION))
    assert table["F1"].iloc[:n_validation].mean() == pytest.approx(result.metrics[MODEL_NAME][PRIMARY_METRIC])
    assert table["F1"].iloc[n_validation:].mean() == pytest.approx(result.metrics[MODEL_NAME][HEADLINE_METRIC])
