"""The moment model: frame labels, losses, decoding into spans, the baselines, and learning
on synthetic videos whose answer is in the frame features (a prototype vector added to the
frames inside the window of the object the query names)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mmpipe.config import apply_overrides
from mmpipe.eval.splits import DateWindows
from mmpipe.nn.text_tower import TextFeatures
from mmpipe.systems.moment.data import TEST, TRAIN, MomentInputs, frame_labels, make_batch
from mmpipe.systems.moment.eval import (fit_similarity_share, frame_similarities, prior_spans, random_spans,
                                        similarity_spans, threshold_runs, true_frame_spans)
from mmpipe.systems.moment.losses import boundary_targets, moment_losses, temporal_giou
from mmpipe.systems.moment.model import DecodeConfig, MomentConfig, MomentModel, decode_query
from mmpipe.systems.moment.train import MomentSettings, load_trained, predict_spans, score_spans, train_moment

STEP = 0.5  # seconds between frames, as frames.sample_fps = 2
TINY = {"model": {"width": 32, "depth": 1, "heads": 2, "mlp": 64, "dropout": 0.0},
        "train": {"steps": 120, "batch_size": 32, "lr": 3e-3, "warmup_steps": 10, "validate_every": 40,
                  "checkpoint_every": 60}}


def synthetic_inputs(n_videos: int = 80, n_objects: int = 5, dim: int = 16, seed: int = 0) -> MomentInputs:
    """Videos of 16-30 frames of noise; each of a video's two queries names an object whose
    prototype is added to the frames of its window (a random 1.5 s to 40% of the video).
    The query's first token is the object's word vector. Days 1-7 train, 8 validation,
    9-10 test."""
    rng = np.random.default_rng(seed)
    prototypes = rng.standard_normal((n_objects, dim)).astype(np.float32)
    words = rng.standard_normal((n_objects, 384)).astype(np.float32)
    videos, frames, times, queries, hidden = [], [], [], [], []
    for v in range(n_videos):
        t = np.arange(int(rng.integers(16, 31))) * STEP
        features = 0.5 * rng.standard_normal((len(t), dim)).astype(np.float32)
        duration = len(t) * STEP
        for q in range(2):
            obj = int(rng.integers(n_objects))
            length = float(rng.uniform(1.5, 0.4 * duration))
            start = round(float(rng.uniform(0, duration - length)) * 8) / 8
            end = round((start + length) * 8) / 8
            features[(t >= start) & (t <= end)] += prototypes[obj]
            queries.append({"query_id": f"q{v}_{q}", "video_id": f"v{v}", "query": f"object {obj}",
                            "windows": [[start, end]], "video_row": v, "object": obj})
            tokens = 0.1 * rng.standard_normal((4, 384)).astype(np.float32)
            tokens[0] = words[obj]
            hidden.append(tokens)
        videos.append({"video_id": f"v{v}", "created_at": f"2026-01-{1 + v % 10:02d}", "duration_s": duration})
        frames.append(features)
        times.append(t)
    windows = DateWindows("2026-01-08", "2026-01-09")
    videos = pd.DataFrame(videos)
    videos["window"] = windows.window_of(videos["created_at"])
    queries = pd.DataFrame(queries)
    queries["window"] = videos["window"].to_numpy()[queries["video_row"].to_numpy()]
    hidden = torch.from_numpy(np.stack(hidden)).half()
    text = TextFeatures(hidden, torch.ones(hidden.shape[:2], dtype=torch.bool), torch.zeros(len(hidden), 384))
    inputs = MomentInputs(videos, frames, times, queries, text, windows, "synthetic", "1")
    inputs.prototypes = prototypes  # the "image encoder's text embedding" of each object, for the baseline
    return inputs


@pytest.fixture(scope="module")
def inputs():
    return synthetic_inputs()


@pytest.fixture(scope="module")
def trained(inputs, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("moment")
    return train_moment(apply_overrides(MomentSettings(), TINY), inputs, out), out


def test_frame_labels_mark_inside_frames_boundaries_and_offsets():
    labels = frame_labels(np.arange(10) * STEP, np.array([[3.875, 4.2], [1.0, 2.6]]))
    assert labels.inside.tolist() == [0, 0, 1, 1, 1, 1, 0, 0, 1, 0]  # [3.875, 4.2] holds only 4.0
    assert sorted(labels.starts.tolist()) == [2, 8] and sorted(labels.ends.tolist()) == [5, 8]
    np.testing.assert_allclose(labels.offsets[8], [0.125, 0.2])
    np.testing.assert_allclose(labels.offsets[2], [0.0, 1.6])
    # a window between two frames is held by the frame nearest its middle
    assert frame_labels(np.arange(4) * 1.0, np.array([[1.1, 1.4]])).inside.tolist() == [0, 1, 0, 0]


def test_boundary_targets_smooth_toward_neighbours_and_average_over_windows():
    targets = boundary_targets([np.array([0]), np.array([2, 4])], torch.tensor([3, 6]), 6, smoothing=0.2)
    np.testing.assert_allclose(targets[0], [0.8, 0.2, 0, 0, 0, 0])  # frame 0 has one neighbour
    np.testing.assert_allclose(targets[1], [0, 0.05, 0.4, 0.1, 0.4, 0.05])
    np.testing.assert_allclose(targets.sum(1), [1.0, 1.0])


def test_temporal_giou_by_hand():
    giou = temporal_giou(torch.tensor([[0.0, 2.0], [0.0, 1.0], [1.0, 3.0]]),
                         torch.tensor([[1.0, 3.0], [2.0, 3.0], [1.0, 3.0]]))
    np.testing.assert_allclose(giou, [1 / 3, -1 / 3, 1.0], atol=1e-6)


def test_decoding_picks_the_best_start_end_pair_within_the_max_length_refined_by_regression():
    times = np.arange(8) * STEP
    start, end = np.full(8, -5.0), np.full(8, -5.0)
    start[[1, 5]], end[[3, 7]] = [3.0, 2.0], [2.0, 2.5]  # (1, 7) scores best but spans 3.5 s
    offsets = np.tile([[0.1, 0.3]], (8, 1))
    cfg = DecodeConfig(max_span_s=3.0, top_k=3, nms_iou=0.5)
    spans = decode_query(times, 4.0, STEP, cfg, None, start, end, offsets)
    assert spans[0][:2] == pytest.approx([0.5 - 0.1, 1.5 + 0.3])  # (1, 3): regression-refined
    assert spans[1][:2] == pytest.approx([2.5 - 0.1, 3.5 + 0.3])  # (5, 7)
    # the score: p_start(1) p_end(3) renormalised over the pairs within the max length
    pairs = [(a, b) for a in range(8) for b in range(a, 8) if b - a <= 5]
    assert spans[0][2] == pytest.approx(np.exp(start[1] + end[3]) / sum(np.exp(start[a] + end[b]) for a, b in pairs))
    assert all(b - a <= 3.0 + 0.4 + 1e-9 for a, b, _ in spans)
    ious = [(min(a[1], b[1]) - max(a[0], b[0])) / (max(a[1], b[1]) - min(a[0], b[0]))
            for i, a in enumerate(spans) for b in spans[i + 1:]]
    assert max(ious) < 0.5  # NMS
    # without regression: half a frame step beyond the frames, clipped to the video
    plain = decode_query(times, 3.6, STEP, cfg, None, start, end, None)
    assert plain[0][:2] == pytest.approx([0.25, 1.75]) and plain[1][:2] == pytest.approx([2.25, 3.6])
    # without distributions: the frames' summed segmentation logits
    segmentation = np.array([-3, -3, 4, 4, 4, -3, -3, -3], dtype=float)
    assert decode_query(times, 4.0, STEP, cfg, segmentation, None, None, None)[0][:2] == pytest.approx([0.75, 2.25])


def test_heads_switch_off_and_configs_are_checked(inputs):
    batch = make_batch(inputs, [0, 1, 2])
    for heads in ({"segmentation": False}, {"distributions": False}, {"regression": False}, {"fusion": "late"}):
        config = MomentConfig(width=16, depth=1, heads=2, mlp=32, **heads).with_frame_dim(inputs.frame_dim)
        output = MomentModel(config)(batch.frames, batch.frame_mask, batch.text, batch.text_mask)
        losses = moment_losses(output, batch)
        assert torch.isfinite(losses["loss"])
        assert ("loss_segmentation" in losses) == config.segmentation
        assert ("loss_distributions" in losses) == config.distributions
        assert ("loss_giou" in losses) == config.regression
        if output.start is not None:  # padding frames get no probability
            assert torch.isinf(output.start[~batch.frame_mask]).all()
    with pytest.raises(ValueError, match="distributions or the segmentation"):
        MomentConfig(distributions=False, segmentation=False)
    with pytest.raises(ValueError, match="fusion must be"):
        MomentConfig(fusion="middle")
    with pytest.raises(ValueError, match="16-wide frame features, these are 8-wide"):
        MomentConfig(frame_dim=16).with_frame_dim(8)


def test_the_model_learns_far_above_the_fixed_span_prior(inputs, trained):
    result, _ = trained
    rows = inputs.query_rows(TEST)
    model = score_spans(inputs, rows, predict_spans(result.model, inputs, rows, DecodeConfig()))
    prior = score_spans(inputs, rows, prior_spans(inputs, rows, inputs.query_rows(TRAIN)))
    untrained = MomentModel(MomentConfig(**TINY["model"]).with_frame_dim(inputs.frame_dim))
    chance = score_spans(inputs, rows, predict_spans(untrained, inputs, rows, DecodeConfig()))
    assert model.metrics()["R1@0.5"] > prior.metrics()["R1@0.5"] + 0.25
    assert model.metrics()["mIoU"] > chance.metrics()["mIoU"] + 0.2
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_a_checkpoint_reloads_to_the_same_predictions(inputs, trained):
    result, out = trained
    model, decode = load_trained(out)
    rows = inputs.query_rows(TEST)[:10]
    assert predict_spans(model, inputs, rows, decode) == predict_spans(result.model, inputs, rows, decode)


def test_baselines_read_the_video_and_the_training_queries(inputs):
    rows = inputs.query_rows(TEST)
    for spans, row in zip(random_spans(inputs, rows), rows):
        assert len(spans) == 10 and all(0 <= a <= b <= inputs.duration(int(row)) for a, b, _ in spans)
    assert all(len(spans) == 1 for spans in prior_spans(inputs, rows, inputs.query_rows(TRAIN)))
    # the true frames as spans: within half a frame step of each true window
    for spans, row in zip(true_frame_spans(inputs, rows), rows):
        truth = inputs.true_windows(int(row))
        assert np.abs(np.asarray(spans)[:, :2] - truth).max() <= STEP / 2 + 1e-9
    # query-frame similarity with the true prototypes as text embeddings finds most windows
    embed = inputs.prototypes[inputs.queries["object"].to_numpy()]
    train = inputs.query_rows(TRAIN)
    share = fit_similarity_share(inputs, train, frame_similarities(inputs, train, embed[train]))
    similar = score_spans(inputs, rows, similarity_spans(inputs, rows, frame_similarities(inputs, rows, embed[rows]),
                                                         share))
    assert similar.metrics()["R1@0.5"] > 0.5
    assert threshold_runs(np.array([0.1, 0.9, 0.8, 0.1, 0.7]), np.arange(5.0), 5.0, 1.0, 0.5) == \
        [[0.5, 2.5, 0.85], [3.5, 4.5, 0.7]]
