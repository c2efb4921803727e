"""MAC's evaluation: the MSR-VTT protocol per date window, the baselines, the bootstrap
gains, the report and the ablations' report, on a synthetic world a tiny MAC can learn.

Every video is one colour (with pixel noise); each caption's cached text-tower states are
a fixed projection of that colour plus noise. Matching captions to videos is then
learnable in 150 tiny steps, and out of reach of an untrained encoder.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import mmpipe.systems.mac.eval as mac_eval
from mmpipe.config import apply_overrides
from mmpipe.eval.overview import compare, load_report
from mmpipe.eval.report import write_report
from mmpipe.media.features import FeatureTable
from mmpipe.nn.text_tower import TextFeatures
from mmpipe.registry.mlflow_registry import RunContext, start_run
from mmpipe.registry.pyfunc import logged_weights
from mmpipe.spec import Trained
from mmpipe.systems.mac.data import TEST, TRAIN, VALIDATION, mac_inputs
from mmpipe.systems.mac.eval import (BASELINES, MODEL_NAME, PINCLIP_FRAMES, PRIMARY_METRIC, RANDOM_NAME, SWEEPS,
                                     UNTRAINED, evaluate, evaluate_sweeps, metric_key, table_columns,
                                     window_queries)
from mmpipe.systems.mac.model import MAC, MACConfig
from mmpipe.systems.mac.serve import register
from mmpipe.systems.mac.train import MACSettings, MACTrainConfig, load_trained, text_to_video_recall, train_mac
from mmpipe.train.checkpoint import STATE_FILE
from mmpipe.train.loop import CHECKPOINT_DIR

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SIZE, STORED_FRAMES, TEXT_DIM = 16, 4, 16
# Ten days: seven train days of 8 videos, one validation day of 16, two test days of 12
# (date_windows: 7 train, 1 validation, 2 test dates), two captions per video.
VIDEOS_PER_DAY = [8] * 7 + [16, 12, 12]

TINY = MACSettings(
    model=MACConfig(image_size=SIZE, patch_size=8, max_frames=2, width=32, depth=1, heads=2, mlp=64,
                    text_hidden_size=TEXT_DIM, text_width=32, text_depth=1, text_heads=2, text_mlp=64, embed_dim=16),
    train=MACTrainConfig(steps=150, batch_size=24, n_frames=2, lr=3e-3, warmup_steps=10, validate_every=50,
                         patience=3, checkpoint_every=1000, log_every=1000),
)


def _world(seed: int = 0):
    """Videos (id, date), their stored frames, two captions each with their token states."""
    rng = np.random.default_rng(seed)
    dates = [f"2026-02-{day + 1:02d}" for day, n in enumerate(VIDEOS_PER_DAY) for _ in range(n)]
    videos = pd.DataFrame({"video_id": [f"v{i:03d}" for i in range(len(dates))], "created_at": dates})
    colours = rng.random((len(videos), 3))
    frames = {}
    for video, colour in zip(videos["video_id"], colours):
        noise = rng.normal(0, 12, size=(STORED_FRAMES, SIZE, SIZE, 3))
        frames[video] = np.clip(255 * colour + noise, 0, 255).astype(np.uint8)
    projection = rng.normal(size=(3, TEXT_DIM))
    rows, hidden, mask = [], [], []
    for i, video in enumerate(videos["video_id"]):
        for j in range(2):
            n_tokens = int(rng.integers(3, 7))
            tokens = np.zeros((8, TEXT_DIM), np.float32)
            tokens[:n_tokens] = (colours[i] - 0.5) @ projection + rng.normal(0, 0.1, size=(n_tokens, TEXT_DIM))
            hidden.append(tokens)
            mask.append(np.arange(8) < n_tokens)
            rows.append((f"{video}-c{j}", video, f"a video of colour {colours[i].round(2).tolist()}, take {j}"))
    captions = pd.DataFrame(rows, columns=["caption_id", "video_id", "caption"])
    hidden = torch.from_numpy(np.stack(hidden)).half()
    text = TextFeatures(hidden=hidden, mask=torch.from_numpy(np.stack(mask)),
                        pooled=torch.nn.functional.normalize(hidden.float().mean(1), dim=-1))
    return videos, frames, captions, text


def _frame_features(videos: pd.DataFrame, dim: int = 24) -> FeatureTable:
    """A fake image encoder's features: every non-blank frame of video i is the one-hot e_i
    (plus noise), so mean-pooling recovers e_i; a blank frame, which pooling must skip, is
    a large vector pointing elsewhere."""
    rng = np.random.default_rng(1)
    index, vectors = [], []
    for i, video in enumerate(videos["video_id"]):
        for frame in range(STORED_FRAMES):
            blank = frame == 0
            index.append((video, frame, frame * 0.5, 0, blank))
            vector = np.full(dim, 10.0) if blank else np.eye(dim)[i % dim] + rng.normal(0, 0.01, dim)
            vectors.append(vector)
    table = pd.DataFrame(index, columns=["video_id", "frame_index", "t_s", "shot_id", "is_blank"])
    return FeatureTable(table, np.asarray(vectors, np.float32), encoder="pinclip", version="7")


def _inputs(with_frame_features: bool = True):
    videos, frames, captions, text = _world()
    features = _frame_features(videos) if with_frame_features else None
    return mac_inputs(videos, lambda day, video: frames[video], captions, text, features)


def _fake_text_embeddings(calls: list, misled: bool = False, dim: int = 24):
    """The registry's text embeddings by the fake encoder: a caption of video i is e_(i mod
    dim), the one-hot its frames pool to; with ``misled``, every second caption points to
    another video instead (its own then ranks by the frame features' noise: at chance), a
    baseline the trained model must beat. Records each call in ``calls``."""
    _, _, captions, _ = _world()
    video_of_text = dict(zip(captions["caption"], captions["video_id"]))

    def embed(model_name, version, texts, batch_size=256):
        calls.append((model_name, version, list(texts)))
        index = np.asarray([int(video_of_text[text][1:]) + (7 if misled and text.endswith("take 1") else 0)
                            for text in texts])
        return np.eye(dim, dtype=np.float32)[index % dim]

    return embed


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The inputs, a tiny trained MAC (checkpoint in its directory) and two sweeps."""
    inputs = _inputs()
    root = tmp_path_factory.mktemp("mac_eval")
    model_dir = root / "mac"
    result = train_mac(TINY, inputs, model_dir)
    sweep_dirs = {}
    for name in ("unmasked", "mask_50"):
        sweep_dirs[name] = root / f"mac_{name}"
        train_mac(apply_overrides(TINY, SWEEPS[name]), inputs, sweep_dirs[name])
    return inputs, result.model, model_dir, sweep_dirs


@pytest.fixture(scope="module")
def outcome(trained):
    """evaluate() with the registry replaced: the challenger (version 5) is the trained
    model, the champion (version 4) an untrained one; the PinCLIP text embeddings are fake."""
    inputs, model, _, _ = trained
    calls = []
    champion = MAC(TINY.model).eval()
    with pytest.MonkeyPatch.context() as patch:  # undone before any other test runs
        patch.setattr(mac_eval, "load_version", lambda version: ({"5": model, "4": champion}[version], 2, 1))
        patch.setattr(mac_eval, "registry_text_embeddings", _fake_text_embeddings(calls, misled=True))
        result = evaluate(inputs, TINY, "5", "4", {})
    return result, calls, champion


# ---------------------------------------------------------------------------------------
# the protocol


def test_window_queries_pair_captions_and_videos_of_one_window():
    inputs = _inputs()
    assert {w: len(inputs.video_rows(w)) for w in (TRAIN, VALIDATION, TEST)} == {TRAIN: 56, VALIDATION: 16, TEST: 24}
    q = window_queries(inputs, TEST)
    assert len(q.caption_rows) == 48 and q.captioned.tolist() == list(range(24))
    videos_of_captions = inputs.captions["video_id"].to_numpy()[q.caption_rows]
    assert [q.video_ids[v] for v in q.caption_video] == videos_of_captions.tolist()
    for video, captions in zip(q.captioned, q.video_captions):
        assert set(videos_of_captions[captions]) == {q.video_ids[video]} and len(captions) == 2


def test_duplicate_captions_are_counted_across_videos_not_within_one():
    inputs = _inputs()
    q = window_queries(inputs, TEST)
    captions = inputs.captions.copy()
    first, second = q.caption_rows[q.video_captions[0]], q.caption_rows[q.video_captions[1]]
    captions.loc[first, "caption"] = "A red  star"  # both captions of one video: not ambiguous
    assert mac_eval.duplicate_captions(replace(inputs, captions=captions), q) == 0
    captions.loc[second[0], "caption"] = "a red star"  # another video's caption, case and spacing aside
    assert mac_eval.duplicate_captions(replace(inputs, captions=captions), q) == 3


def test_sweeps_are_valid_settings_and_the_same_time_run_is_a_third_of_the_steps():
    default = MACSettings()
    for name, overrides in SWEEPS.items():
        settings = apply_overrides(default, overrides)
        assert settings.model == default.model, name
    assert apply_overrides(default, SWEEPS["unmasked"]).train == replace(default.train, mask_ratio=0.0,
                                                                         text_mask_ratio=0.0)
    same_time = apply_overrides(default, SWEEPS["unmasked_same_time"]).train
    assert same_time.steps == round(default.train.steps / mac_eval.UNMASKED_STEP_TIME_RATIO)
    assert same_time.mask_ratio == same_time.text_mask_ratio == 0.0
    assert [apply_overrides(default, SWEEPS[name]).train.mask_ratio for name in mac_eval.MASK_SWEEP] == [0.0, 0.5, 0.9]


# ---------------------------------------------------------------------------------------
# the pinclip_frames baseline


def test_pinclip_frames_pools_non_blank_frames_and_embeds_captions_with_the_same_version(monkeypatch):
    inputs = _inputs()
    calls = []
    monkeypatch.setattr(mac_eval, "registry_text_embeddings", _fake_text_embeddings(calls))
    queries = {w: window_queries(inputs, w) for w in mac_eval.WINDOWS}
    embeddings = mac_eval.pinclip_frames_embeddings(inputs, queries)
    # One call, by the encoder and version the frame features were made with, for the
    # validation and test captions only: nothing of the train window is embedded.
    assert [(name, version) for name, version, _ in calls] == [("pinclip", "7")]
    expected = inputs.captions["caption"].to_numpy()[np.concatenate([q.caption_rows for q in queries.values()])]
    assert calls[0][2] == expected.tolist()
    # Blank frames left out of the mean: each video pools to its own one-hot, so retrieval is
    # perfect (within a window no two videos share an index mod 24).
    scores = mac_eval.score_methods([embeddings], queries)
    for window in mac_eval.WINDOWS:
        for direction in mac_eval.DIRECTIONS:
            assert scores.metrics[PINCLIP_FRAMES][metric_key(direction, "R@1", window)] == 1.0
            assert scores.metrics[PINCLIP_FRAMES][metric_key(direction, "mean_rank", window)] == 1.0


def test_pinclip_frames_needs_the_frame_features_of_every_video(monkeypatch):
    monkeypatch.setattr(mac_eval, "registry_text_embeddings", _fake_text_embeddings([]))
    inputs = _inputs(with_frame_features=False)
    queries = {w: window_queries(inputs, w) for w in mac_eval.WINDOWS}
    with pytest.raises(ValueError, match="needs the frame features"):
        mac_eval.pinclip_frames_embeddings(inputs, queries)
    features = _frame_features(inputs.videos)
    some = features.index["video_id"] != queries[TEST].video_ids[3]
    partial = FeatureTable(features.index[some].reset_index(drop=True), features.embedding[some.to_numpy()],
                           features.encoder, features.version)
    with pytest.raises(ValueError, match=r"1 videos have no frame features by pinclip v7.*materialize frame_features"):
        mac_eval.pinclip_frames_embeddings(replace(inputs, frame_features=partial), queries)


# ---------------------------------------------------------------------------------------
# evaluate: the gate's numbers, the baselines, the bootstrap, the report


def test_every_row_has_every_metric_and_the_gate_key(outcome):
    result, calls, _ = outcome
    assert [(name, version) for name, version, _ in calls] == [("pinclip", "7")]  # one registry call
    keys = set(table_columns(VALIDATION) + table_columns(TEST))
    assert set(result.metrics) == {MODEL_NAME, *BASELINES, RANDOM_NAME}
    for method, row in result.metrics.items():
        assert set(row) == keys, method
        assert math.isfinite(row[PRIMARY_METRIC]), method
    assert PRIMARY_METRIC == "text_to_video/R@5/validation"


def test_the_trained_model_beats_the_untrained_encoder_and_chance(outcome):
    result, _, _ = outcome
    mac, untrained = result.metrics[MODEL_NAME], result.metrics[UNTRAINED]
    for window in (VALIDATION, TEST):
        # R@1: on 16 single-colour videos the untrained encoder's R@5 is already 0.75.
        t2v_r1 = metric_key("text_to_video", "R@1", window)
        assert mac[t2v_r1] >= untrained[t2v_r1] + 0.3, window
        assert mac[metric_key("video_to_text", "R@5", window)] > untrained[metric_key("video_to_text", "R@5", window)]
        assert mac[metric_key("text_to_video", "median_rank", window)] < untrained[
            metric_key("text_to_video", "median_rank", window)]


def test_the_gate_number_is_the_training_loop_validation_score_and_the_champion_is_rescored(trained, outcome):
    inputs, model, _, _ = trained
    result, _, champion = outcome
    assert result.challenger_value == result.metrics[MODEL_NAME][PRIMARY_METRIC]
    assert result.challenger_value == pytest.approx(text_to_video_recall(model, inputs, VALIDATION, 2))
    assert result.champion_value == pytest.approx(text_to_video_recall(champion, inputs, VALIDATION, 2))
    assert result.note == ""


def test_bootstrap_intervals_contain_their_point_estimates(outcome):
    result, _, _ = outcome
    summary = result.summary
    headline = mac_eval.HEADLINE_METRIC
    assert summary["best_baseline"][headline] in BASELINES
    for key in summary["gains"]:
        if summary["best_baseline"][key] is None:
            continue
        for point, interval in (("gains", "gain_ci"), ("ratio", "ratio_ci"), ("difference", "difference_ci")):
            low, high = summary[interval][key]
            assert low <= summary[point][key] <= high, (key, point)
    ratio = summary["ratio"][headline]
    assert ratio == pytest.approx(result.metrics[MODEL_NAME][headline]
                                  / result.metrics[summary["best_baseline"][headline]][headline])


def test_report_files_and_the_overview_read_the_summary(outcome, tmp_path):
    result, _, _ = outcome
    assert set(result.plots) == {"recall_at_k_test", "recall_at_k_validation"}
    assert all(png.startswith(PNG_MAGIC) for png in result.plots.values())
    assert "# MAC evaluation: mac" in result.markdown and "No true ceiling" in result.markdown
    assert f"`{PRIMARY_METRIC}`" in result.markdown and "## Test window (24 videos, 48 captions)" in result.markdown
    files = write_report(tmp_path / "mac", "mac_eval", result.markdown, result.plots, result.summary)
    summary = json.loads(files["metrics"].read_text())
    assert summary["oracle"] is None and summary["queries"][TEST] == {"videos": 24, "captions": 48,
                                                                      "video_queries": 24}
    rows = {row.metric: row for row in compare(load_report(files["metrics"]))}
    assert list(rows) == summary["primary_metrics"] and PRIMARY_METRIC in rows
    headline = rows[mac_eval.HEADLINE_METRIC]
    assert headline.higher_is_better and headline.baseline in BASELINES and headline.gain > 0
    assert metric_key("text_to_video", "median_rank", TEST) in summary["lower_is_better"]


def test_a_champion_that_cannot_run_on_these_inputs_is_not_rescored(trained, monkeypatch):
    inputs, model, _, _ = trained
    short = MAC(replace(TINY.model, text_positions=4))  # captions here are 8 tokens long
    monkeypatch.setattr(mac_eval, "load_version", lambda version: (short, 2, 1))
    value, note = mac_eval.rescore_champion("3", inputs, window_queries(inputs, VALIDATION))
    assert value is None and "Champion version 3 was not re-scored" in note


def test_a_registered_version_loads_with_the_clip_length_it_was_trained_with(tmp_path, monkeypatch):
    """The one registry seam of evaluate, against a real (throwaway) MLflow store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MMPIPE_MLFLOW_ARTIFACTS", str(tmp_path / "mlruns"))
    config = replace(TINY.model, text_hidden_size=384)  # the packaged MiniLM the pipeline's cache comes from
    torch.manual_seed(3)
    model = MAC(config).eval()
    context = RunContext(asset_key="mac_model")
    with start_run("mac-eval-test", "register", context):
        version = register(Trained(model, 1, 0.1, {}), replace(TINY, model=config), context)
    loaded, n_frames, n_clips = mac_eval.load_version(version)
    assert (n_frames, n_clips) == (TINY.train.n_frames, TINY.train.inference_clips)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)
    # What a warm start reads of a registered version: its weights and record, without its pyfunc.
    weights, record = logged_weights(f"models:/mac/{version}")
    assert set(weights) == set(model.state_dict()) and record["model"]["width"] == config.width
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(weights[name], tensor)


# ---------------------------------------------------------------------------------------
# the ablations job


def _record_train_seconds(model_dir: Path, seconds: float) -> None:
    """What the loop should store: the run's wall-clock in the checkpoint's trainer state."""
    path = model_dir / CHECKPOINT_DIR / STATE_FILE
    state = json.loads(path.read_text())
    state["extra"] = {**state.get("extra", {}), "train_seconds": seconds}
    path.write_text(json.dumps(state))


def test_sweeps_report_differences_with_intervals_and_the_wall_clock_plot(trained, monkeypatch, tmp_path):
    inputs, _, model_dir, sweep_dirs = trained
    monkeypatch.setattr(mac_eval, "registry_text_embeddings", _fake_text_embeddings([]))
    result = evaluate_sweeps(inputs, TINY, model_dir, sweep_dirs)
    assert set(result.metrics) == {MODEL_NAME, "unmasked", "mask_50", PINCLIP_FRAMES, UNTRAINED, RANDOM_NAME}
    assert result.challenger_value == result.metrics[MODEL_NAME][PRIMARY_METRIC]
    # The model reloaded from its checkpoint scores what the trained model scored.
    assert result.metrics[MODEL_NAME][PRIMARY_METRIC] == pytest.approx(
        text_to_video_recall(load_trained(model_dir), inputs, VALIDATION, 2))
    differences = result.summary["differences"]
    assert set(differences) == {f"{name}/text_to_video/R@{k}/{window}" for name in sweep_dirs
                                for k in (1, 5) for window in (VALIDATION, TEST)}
    for key, d in differences.items():
        assert d["difference"] == pytest.approx(result.metrics[MODEL_NAME][d["metric"]]
                                                - result.metrics[d["sweep"]][d["metric"]])
        assert d["ci"][0] <= d["difference"] <= d["ci"][1], key
    training = result.summary["training"]
    assert training["mask_50"]["mask_ratio"] == 0.5 and training["unmasked"]["text_mask_ratio"] == 0.0
    # the shared loop records each run's wall-clock in its checkpoint
    assert training[MODEL_NAME]["mask_ratio"] == 0.75 and training[MODEL_NAME]["train_seconds"] > 0
    assert "not recorded" not in result.markdown
    assert result.plots["mask_sweep_r1_wallclock"].startswith(PNG_MAGIC)

    # Wall-clock recorded in (copies of) the checkpoints is read back and plotted against.
    copies = {}
    for name, directory, seconds in ((MODEL_NAME, model_dir, 30.0), ("mask_50", sweep_dirs["mask_50"], 12.0),
                                     ("unmasked", sweep_dirs["unmasked"], 40.0)):
        copies[name] = tmp_path / name
        shutil.copytree(directory / CHECKPOINT_DIR, copies[name] / CHECKPOINT_DIR)
        _record_train_seconds(copies[name], seconds)
    timed = evaluate_sweeps(inputs, TINY, copies[MODEL_NAME], {k: v for k, v in copies.items() if k != MODEL_NAME})
    assert {name: r["train_seconds"] for name, r in timed.summary["training"].items()} == {
        MODEL_NAME: 30.0, "mask_50": 12.0, "unmasked": 40.0}
    assert "not recorded" not in timed.markdown
    assert timed.metrics == result.metrics
