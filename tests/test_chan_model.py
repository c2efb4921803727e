"""CHAN's data, network, loss and training, on a synthetic world a tiny CHAN can learn.

Every shot shows up to two objects, each a (colour, shape) pair; its feature is the sum of
the one-hot vectors of what it shows plus noise, unit length (as the shared shot features
are), and its two frames' features are noisy copies of it. A query names one concept or a
colour and a shape; a shot is relevant when one of its objects shows every concept of the
query (as in the generated world). Each query word has fixed token states. Relevance is then
learnable in a few hundred tiny steps and out of reach of uniform or random shots.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from mmpipe.eval.summarization import LengthBudget, uniform_selection
from mmpipe.media.features import FRAME_COLUMNS, SHOT_COLUMNS, FeatureTable
from mmpipe.nn.text_tower import TextFeatures
from mmpipe.systems.chan.data import (TEST, TRAIN, VALIDATION, annotated_shot_features, chan_inputs, frame_extremes,
                                      shot_vectors)
from mmpipe.systems.chan.losses import concept_loss, shot_relevance_loss
from mmpipe.systems.chan.model import CHAN, CHANConfig
from mmpipe.systems.chan.train import (CHANSettings, CHANTrainConfig, load_trained, qfvs_per_query, score_shots,
                                       select_by_scores, train_chan, window_f1)
from mmpipe.train.loop import CHECKPOINT_DIR

COLOURS = ["red", "blue", "green", "yellow"]
SHAPES = ["star", "circle", "square", "heart"]
WORDS = COLOURS + SHAPES
SHOT_DIM, TEXT_DIM = 16, 384  # the packaged MiniLM's width, so a registered CHAN serves with it
# Ten days: seven train days of 12 videos, one validation day, two test days (date_windows:
# 7 train, 1 validation, 2 test dates), two queries per video.
VIDEOS_PER_DAY = [12] * 7 + [12, 12, 12]
TINY = CHANSettings(
    model=CHANConfig(text_hidden_size=TEXT_DIM, width=32, heads=2, mlp=64, dropout=0.0),
    train=CHANTrainConfig(concept_steps=150, steps=150, batch_size=32, lr=3e-3, warmup_steps=10, validate_every=50,
                          patience=3, checkpoint_every=1000, log_every=1000),
    budget=LengthBudget(shots_share=0.4))


def tiny_model(inputs) -> CHAN:
    """An untrained CHAN for these inputs (their shot width and concepts), in eval mode."""
    return CHAN(replace(TINY.model, shot_dim=inputs.shot_dim, n_concepts=len(inputs.concepts)), inputs.concepts).eval()


def word_states(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {word: rng.normal(size=TEXT_DIM).astype(np.float32) for word in WORDS}


def synthetic_world(seed: int = 0, shots_per_video: int = 6):
    """Tables as validation writes them, the detected shots' features, the queries' token
    states (row i of the text is row i of the queries) and the frames' features."""
    rng = np.random.default_rng(seed)
    states = word_states()
    basis = {word: np.eye(SHOT_DIM, dtype=np.float32)[i] for i, word in enumerate(WORDS)}
    videos, shots, queries, feature_rows, vectors, hidden, mask = [], [], [], [], [], [], []
    frame_rows, frame_vectors = [], []
    number = 0
    for day, n in enumerate(VIDEOS_PER_DAY):
        for _ in range(n):
            video_id = f"v{number:03d}"
            number += 1
            videos.append({"video_id": video_id, "created_at": f"2026-03-{day + 1:02d}"})
            objects = [(str(rng.choice(COLOURS)), str(rng.choice(SHAPES))) for _ in range(3)]
            seen = []
            for shot in range(shots_per_video):
                visible = [objects[i] for i in rng.choice(3, size=rng.integers(0, 3), replace=False)]
                seen.append(visible)
                start = 1.5 * shot
                shots.append({"video_id": video_id, "shot_index": shot, "start_s": start, "end_s": start + 1.5,
                              "concepts": sorted({w for obj in visible for w in obj})})
                vector = sum((basis[c] + basis[s] for c, s in visible), np.zeros(SHOT_DIM, np.float32))
                vector = vector + rng.normal(0, 0.15, SHOT_DIM).astype(np.float32)
                feature_rows.append((video_id, shot, start, start + 1.5, 2, 2, "content"))
                vectors.append(vector / np.linalg.norm(vector))
                for k in range(2):
                    frame_rows.append((video_id, 2 * shot + k, start + 0.5 * k, shot, False))
                    frame_vectors.append(vectors[-1] + rng.normal(0, 0.1, SHOT_DIM).astype(np.float32))
            for k in range(2):
                colour, shape = objects[k]
                concepts = [colour, shape] if k == 0 else [colour]
                relevant = [i for i, visible in enumerate(seen) if any(set(concepts) <= set(obj) for obj in visible)]
                if not relevant:
                    continue
                queries.append({"query_id": f"{video_id}_s{k + 1}", "video_id": video_id, "concepts": concepts,
                                "relevant_shots": relevant})
                tokens = np.zeros((4, TEXT_DIM), np.float32)
                tokens[:len(concepts)] = [states[word] for word in concepts]
                hidden.append(tokens)
                mask.append(np.arange(4) < len(concepts))
    hidden = torch.from_numpy(np.stack(hidden)).half()
    text = TextFeatures(hidden=hidden, mask=torch.from_numpy(np.stack(mask)),
                        pooled=torch.nn.functional.normalize(hidden.float().mean(1), dim=-1))
    features = FeatureTable(pd.DataFrame(feature_rows, columns=SHOT_COLUMNS), np.stack(vectors), "pinclip", "7")
    frames = FeatureTable(pd.DataFrame(frame_rows, columns=FRAME_COLUMNS), np.stack(frame_vectors), "pinclip", "7")
    return pd.DataFrame(videos), pd.DataFrame(shots), pd.DataFrame(queries), features, text, frames


def synthetic_inputs(seed: int = 0):
    return chan_inputs(*synthetic_world(seed))


@pytest.fixture(scope="module")
def inputs():
    return synthetic_inputs()


@pytest.fixture(scope="module")
def trained(inputs, tmp_path_factory):
    torch.manual_seed(0)
    model_dir = tmp_path_factory.mktemp("chan") / "chan"
    return (*train_chan(TINY, inputs, model_dir), model_dir)


# ---------------------------------------------------------------------------------------
# data


def test_annotated_shots_take_the_detected_shots_they_overlap():
    detected = pd.DataFrame({"start_s": [0.0, 2.0, 5.0], "end_s": [2.0, 4.0, 6.0]})
    vectors = np.eye(3, dtype=np.float32)
    annotated = pd.DataFrame({"start_s": [0.0, 0.5, 4.2], "end_s": [2.0, 3.5, 4.6]})
    features = annotated_shot_features(annotated, detected, vectors)
    np.testing.assert_allclose(features[0], [1, 0, 0])  # boundaries agree: that shot
    np.testing.assert_allclose(features[1], np.array([1.5, 1.5, 0]) / np.hypot(1.5, 1.5), atol=1e-6)
    np.testing.assert_allclose(features[2], [0, 0, 1])  # in no detected shot: the nearest (middle 4.4 -> 5.5)


def test_inputs_keep_videos_with_features_and_map_relevant_shots_to_positions():
    videos, shots, queries, features, text, frames = synthetic_world()
    # v001 lost its frames (no shot features); the shot table lists v002's shots out of order
    keep = features.index["video_id"] != "v001"
    features = FeatureTable(features.index[keep].reset_index(drop=True), features.embedding[keep.to_numpy()],
                            "pinclip", "7")
    shots = pd.concat([shots[shots["video_id"] != "v002"], shots[shots["video_id"] == "v002"].iloc[::-1]])
    result = chan_inputs(videos, shots, queries, features, text, frames)
    assert "v001" not in {video.video_id for video in result.videos}
    assert "v001" not in set(result.queries["video_id"])
    assert len(result.queries) == len(result.text) == (queries["video_id"] != "v001").sum()
    kept = np.flatnonzero((queries["video_id"] != "v001").to_numpy())
    torch.testing.assert_close(result.text.hidden, text.hidden[kept])  # row i of text is query i
    v002 = next(video for video in result.videos if video.video_id == "v002")
    assert v002.shot_ids.tolist() == list(range(6)) and (np.diff(v002.start_s) > 0).all()
    row = int(np.flatnonzero(result.queries["video_id"] == "v002")[0])
    relevant = queries.loc[queries["video_id"] == "v002", "relevant_shots"].iloc[0]
    assert list(result.queries["relevant"].iat[row]) == list(relevant)  # shot i is position i here
    assert result.relevance(row).sum() == len(relevant)
    assert set(result.queries["window"]) == {TRAIN, VALIDATION, TEST}
    assert result.queries["query"].iat[row] == ", ".join(queries["concepts"].iat[int(kept[row])])
    # the training window's concepts, and per shot the max and min of its two frames beside its feature
    assert result.concepts == tuple(sorted(WORDS)) and result.shot_dim == 3 * SHOT_DIM and result.frame_extremes
    two_frames = frames.embedding[(frames.index["video_id"] == "v002").to_numpy()][:2]
    np.testing.assert_allclose(v002.vectors[0], np.concatenate([v002.features[0], two_frames.max(0),
                                                                 two_frames.min(0)]), rtol=1e-6)
    batch = result.batch([row])
    assert batch.shots.shape == (1, 6, 3 * SHOT_DIM) and batch.shot_concepts.shape == (1, 6, len(WORDS))
    assert [result.concepts[v] for v in np.flatnonzero(batch.query_concepts[0])] == sorted(
        result.queries["concepts"].iat[row])
    without = chan_inputs(videos, shots, queries, features, text)  # no frame features: the shot features alone
    assert without.shot_dim == SHOT_DIM and not without.frame_extremes


def test_frame_extremes_follow_the_shot_pooling_rule():
    import doctest

    import mmpipe.systems.chan.data as data

    assert doctest.testmod(data).failed == 0
    index = pd.DataFrame({"video_id": ["v", "v", "w"], "t_s": [0.0, 1.0, 0.0], "is_blank": [False, False, False]})
    frames = FeatureTable(index.assign(frame_index=0, shot_id=0), np.array([[1.0], [3.0], [7.0]]), "pinclip", "1")
    shots = pd.DataFrame({"start_s": [0.0], "end_s": [2.0]})
    assert shot_vectors("v", shots, np.array([[0.5]]), frames).tolist() == [[0.5, 3.0, 1.0]]
    assert shot_vectors("v", shots, np.array([[0.5]]), None).tolist() == [[0.5]]
    with pytest.raises(KeyError, match="video 'x' has no frame features by pinclip v1"):
        shot_vectors("x", shots, np.array([[0.5]]), frames)
    assert frame_extremes(index.iloc[:2], frames.embedding[:2], np.array([5.0]), np.array([6.0])).tolist() == [
        [3.0, 3.0]]  # no frame inside: the nearest

def test_a_relevant_shot_the_video_does_not_have_is_an_error():
    videos, shots, queries, features, text, frames = synthetic_world()
    queries.at[0, "relevant_shots"] = [0, 17]
    query_id = queries.at[0, "query_id"]
    with pytest.raises(ValueError, match=rf"query {query_id}: shots \[17\] are not shots of the video"):
        chan_inputs(videos, shots, queries, features, text, frames)


# ---------------------------------------------------------------------------------------
# the network and the loss


def _logits(model, inputs, rows):
    batch = inputs.batch(rows)
    with torch.no_grad():
        return model(batch.shots, batch.shot_mask, batch.query_hidden, batch.query_mask)


def test_a_videos_scores_do_not_depend_on_the_padding_of_its_batch():
    videos, shots, queries, features, text, _ = synthetic_world()
    longer = shots["video_id"] == "v003"  # one video with 9 shots: the others are padded to it
    extra = shots[longer].assign(shot_index=shots[longer]["shot_index"] + 6,
                                 start_s=shots[longer]["start_s"] + 9, end_s=shots[longer]["end_s"] + 9)
    extra_features = features.index[features.index["video_id"] == "v003"].iloc[:3]
    extra_features = extra_features.assign(shot_id=extra_features["shot_id"] + 6, start_s=extra_features["start_s"] + 9,
                                           end_s=extra_features["end_s"] + 9)
    rows = (features.index["video_id"] == "v003").to_numpy().nonzero()[0][:3]
    features = FeatureTable(pd.concat([features.index, extra_features], ignore_index=True),
                            np.concatenate([features.embedding, features.embedding[rows]]), "pinclip", "7")
    inputs = chan_inputs(videos, pd.concat([shots, extra.iloc[:3]]), queries, features, text)
    torch.manual_seed(0)
    model = tiny_model(inputs)
    long_row = int(np.flatnonzero(inputs.queries["video_id"] == "v003")[0])
    alone = _logits(model, inputs, [0])
    padded = _logits(model, inputs, [0, long_row])
    assert padded.shape == (2, 9) and alone.shape == (1, 6)
    torch.testing.assert_close(padded[0, :6], alone[0], rtol=1e-5, atol=1e-5)
    assert torch.isinf(padded[0, 6:]).all() and torch.isfinite(padded[1]).all()


def test_the_query_steers_the_scores_and_each_attention_can_be_switched_off(inputs):
    torch.manual_seed(0)
    model = tiny_model(inputs)
    batch = inputs.batch([0, 0])
    hidden = batch.query_hidden.clone()
    other = next(word for word in WORDS if word not in inputs.queries["concepts"].iat[0])
    hidden[1] = torch.from_numpy(word_states()[other]).half()  # same shots, another query
    with torch.no_grad():
        logits = model(batch.shots, batch.shot_mask, hidden, batch.query_mask)
    assert not torch.allclose(logits[0], logits[1])
    full = sum(p.numel() for p in model.parameters())
    for switch, module in (("local_attention", "local"), ("global_attention", "global_attention")):
        ablated = CHAN(replace(model.config, **{switch: False})).eval()
        assert getattr(ablated, module) is None
        assert sum(p.numel() for p in ablated.parameters()) < full
        assert torch.isfinite(_logits(ablated, inputs, [0, 1])).all()
    with pytest.raises(ValueError, match="pool 3 must divide segment_shots 4"):
        CHANConfig(pool=3)
    with pytest.raises(ValueError, match="CHAN needs a concept vocabulary"):
        CHAN(TINY.model)
    with pytest.raises(ValueError, match="2 concept names for 8 concepts"):
        CHAN(model.config, ["red", "blue"])


def test_the_losses_are_bce_over_the_real_shots_only():
    logits = torch.tensor([[2.0, -1.0, float("-inf")], [0.5, float("-inf"), float("-inf")]])
    relevance = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])

    def bce(logit, label):
        p = 1 / (1 + np.exp(-logit))
        return -np.log(p) if label else -np.log(1 - p)

    expected = (bce(2.0, 1) + bce(-1.0, 0) + bce(0.5, 0)) / 3
    assert shot_relevance_loss(logits, relevance, mask).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="without a single real shot"):
        shot_relevance_loss(logits, relevance, torch.zeros_like(mask))
    # one concept: shots' evidence [B, N, 1] (the padding shot's 99 must not count), query [B, 1]
    evidence = torch.tensor([[[1.0], [-2.0], [99.0]], [[0.0], [99.0], [99.0]]])
    shown = torch.tensor([[[1.0], [0.0], [1.0]], [[1.0], [0.0], [0.0]]])
    query, named = torch.tensor([[3.0], [-1.0]]), torch.tensor([[1.0], [0.0]])
    shots_part = (bce(1.0, 1) + bce(-2.0, 0) + bce(0.0, 1)) / 3
    query_part = (bce(3.0, 1) + bce(-1.0, 0)) / 2
    assert concept_loss({"evidence": evidence, "query": query}, shown, mask, named).item() == pytest.approx(
        shots_part + query_part, rel=1e-5)
    both = concept_loss({"evidence": evidence, "shots": evidence, "query": query}, shown, mask, named)
    assert both.item() == pytest.approx(2 * shots_part + query_part, rel=1e-5)


# ---------------------------------------------------------------------------------------
# training


def test_training_learns_relevance_far_beyond_uniform_and_random_shots(inputs, trained):
    model, result, _ = trained
    concepts = [r["concept_loss"] for r in result.history if "relevance_loss" not in r]
    assert len(concepts) == TINY.train.concept_steps and concepts[-1] < 0.6 * concepts[0]
    assert not any(p.requires_grad for p in model.evidence.parameters())  # kept as the first phase fitted it
    rows = inputs.query_rows(TEST)
    budget = TINY.budget
    model_f1 = qfvs_per_query(inputs, rows, select_by_scores(inputs, rows, score_shots(model, inputs, rows),
                                                             budget))["F1"].mean()
    uniform_f1 = qfvs_per_query(inputs, rows, [uniform_selection(inputs.video_of(r).durations, budget)
                                               for r in rows])["F1"].mean()
    rng = np.random.default_rng(0)
    random_f1 = qfvs_per_query(inputs, rows, select_by_scores(
        inputs, rows, [rng.random(len(inputs.video_of(r))) for r in rows], budget))["F1"].mean()
    assert model_f1 >= uniform_f1 + 0.1 and model_f1 >= random_f1 + 0.1, (model_f1, uniform_f1, random_f1)
    # early stopping kept the best validation score, and that is what the weights score
    record = result.validation["relevance"]
    assert window_f1(model, inputs, VALIDATION, budget) == pytest.approx(record["best_score"])


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(inputs, tmp_path):
    settings = replace(TINY, train=replace(TINY.train, steps=30, validate_every=0, checkpoint_every=10))
    whole, _ = train_chan(settings, inputs, tmp_path / "whole")
    train_chan(settings, inputs, tmp_path / "resumed", stop_after=20)
    resumed, _ = train_chan(settings, inputs, tmp_path / "resumed")
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name)
    loaded = load_trained(tmp_path / "whole")
    assert (tmp_path / "whole" / CHECKPOINT_DIR).is_dir() and loaded.config == whole.config
    torch.testing.assert_close(_logits(loaded, inputs, [0, 1]), _logits(whole.eval(), inputs, [0, 1]))
