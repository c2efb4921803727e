"""MAC's model and training: patches and masks against obvious references, masking that
really drops work, and a tiny model that learns text->video retrieval from pixels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mmpipe.nn.text_tower import TextFeatures
from mmpipe.systems.mac.data import TEST, TRAIN, VideoClips, clip_indices, mac_inputs
from mmpipe.systems.mac.model import MAC, MACConfig, _keep_real_tokens, patchify, random_masking
from mmpipe.systems.mac.train import (MACSettings, MACTask, MACTrainConfig, embed_clips, load_trained,
                                      text_to_video_recall, train_mac)

TINY = MACConfig(image_size=32, patch_size=8, max_frames=4, width=32, depth=2, heads=2, mlp=64, text_width=32,
                 text_depth=1, text_heads=2, text_mlp=64, embed_dim=16)


def test_patchify_matches_slicing_the_image_patch_by_patch():
    frames = torch.arange(2 * 3 * 3 * 8 * 12, dtype=torch.float32).reshape(2, 3, 3, 8, 12)  # [B, T, C, H, W]
    patches = patchify(frames, 4)
    assert patches.shape == (2, 3, 6, 48)
    for b in range(2):
        for t in range(3):
            expected = [frames[b, t, :, i * 4:(i + 1) * 4, j * 4:(j + 1) * 4].reshape(-1)
                        for i in range(2) for j in range(3)]
            torch.testing.assert_close(patches[b, t], torch.stack(expected))


def test_random_masking_keeps_a_random_subset_of_each_row():
    x = torch.arange(4 * 16, dtype=torch.float32).reshape(4, 16, 1).expand(4, 16, 3)
    kept, ids = random_masking(x, 0.75, torch.Generator().manual_seed(0))
    assert kept.shape == (4, 4, 3) and ids.shape == (4, 4)
    for row in range(4):
        assert len(set(ids[row].tolist())) == 4  # no token twice
        torch.testing.assert_close(kept[row, :, 0], x[row, ids[row], 0])
    assert len({tuple(sorted(r)) for r in ids.tolist()}) > 1  # rows masked independently


def test_text_masking_drops_real_tokens_only_and_keeps_one():
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    keep = _keep_real_tokens(mask, 0.5, torch.Generator().manual_seed(1))
    assert not (keep & ~mask).any()
    assert keep.sum(1).tolist() == [3, 1]


def test_clip_indices_cover_the_video_and_vary_in_training():
    assert clip_indices(16, 4).tolist() == [2, 6, 10, 14]
    rng = np.random.default_rng(0)
    draws = {tuple(clip_indices(16, 4, rng)) for _ in range(20)}
    assert len(draws) > 1
    assert all(4 * k <= i < 4 * (k + 1) for draw in draws for k, i in enumerate(draw))


def test_masking_removes_most_of_the_encoder_work():
    model = MAC(TINY)
    clips = torch.randn(4, 4, 3, 32, 32)

    def flops(ratio):
        with FlopCounterMode(display=False) as counter:
            model.encode_video(clips, ratio).sum().backward()
        return counter.get_total_flops()

    assert flops(0.75) < 0.35 * flops(0.0)


def test_one_frame_clips_are_images_and_shapes_are_checked():
    model = MAC(TINY).eval()
    images = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(model.encode_image(images), model.encode_video(images.unsqueeze(1)))
    assert torch.allclose(model.encode_image(images).norm(dim=-1), torch.ones(3))
    with pytest.raises(ValueError, match="position embeddings for 4"):
        model.encode_video(torch.randn(1, 5, 3, 32, 32))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        MACConfig(image_size=30, patch_size=8)


def informative_world(n_videos: int = 48, seed: int = 0):
    """Videos whose frames are a colour of their own (plus noise), and captions whose cached
    token states carry that colour: retrieval is learnable, from pixels, and nothing else."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(0, 1, size=(n_videos, 3))
    frames = {f"v{i}": np.clip(colours[i] * 255 + rng.normal(0, 20, (6, 32, 32, 3)), 0, 255).astype(np.uint8)
              for i in range(n_videos)}
    videos = pd.DataFrame({"video_id": list(frames),
                           "created_at": [f"2026-01-{1 + i * 10 // n_videos:02d}" for i in range(n_videos)]})
    rows = [(f"v{i}_c{k}", f"v{i}") for i in range(n_videos) for k in range(2)]
    captions = pd.DataFrame(rows, columns=["caption_id", "video_id"]).assign(caption="a colour")
    projection = rng.normal(size=(3, 384))
    hidden = np.stack([np.tile((colours[int(v[1:])] - 0.5) @ projection, (5, 1)) + rng.normal(0, 0.3, (5, 384))
                       for _, v in rows])
    text = TextFeatures(torch.tensor(hidden, dtype=torch.float16), torch.ones(len(rows), 5, dtype=torch.bool),
                        torch.zeros(len(rows), 384))
    return mac_inputs(videos, lambda day, video_id: frames[video_id], captions, text)


def tiny_settings(**train) -> MACSettings:
    return MACSettings(TINY, MACTrainConfig(**{"steps": 60, "batch_size": 16, "n_frames": 3, "lr": 2e-3,
                                               "warmup_steps": 5, "validate_every": 20, "log_every": 10, **train}))


def test_training_learns_retrieval_well_above_chance():
    inputs = informative_world()
    assert set(inputs.videos["window"]) == {TRAIN, "validation", TEST}
    settings = tiny_settings()
    untrained = text_to_video_recall(MAC(TINY), inputs, TEST, 3, k=1)
    result = train_mac(settings, inputs)
    trained = text_to_video_recall(result.model, inputs, TEST, 3, k=1)
    n_test = len(inputs.video_rows(TEST))
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert trained > max(3.0 / n_test, untrained + 0.25), (trained, untrained, n_test)


def test_a_stopped_and_resumed_run_ends_with_the_same_weights(tmp_path):
    inputs = informative_world(24)
    settings = tiny_settings(steps=12, validate_every=0, checkpoint_every=5)
    whole = train_mac(settings, inputs, tmp_path / "whole")
    train_mac(settings, inputs, tmp_path / "parts", stop_after=7)
    resumed = train_mac(settings, inputs, tmp_path / "parts", resume=True)
    for (name, a), (_, b) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    loaded = load_trained(tmp_path / "parts")
    torch.testing.assert_close(loaded.state_dict()["logit_scale"], resumed.model.state_dict()["logit_scale"])


def test_inputs_leave_out_videos_without_frames_and_keep_captions_aligned():
    inputs = informative_world(12)
    frames = {video_id: inputs.clips.frames[row] for row, video_id in enumerate(inputs.clips.video_ids)}
    videos = inputs.videos[["video_id", "created_at"]]
    captions = inputs.captions[["caption_id", "video_id", "caption"]]

    def load(day, video_id):
        if video_id == "v3":
            raise FileNotFoundError(video_id)
        return frames[video_id]

    subset = mac_inputs(videos, load, captions, inputs.text)
    assert "v3" not in subset.clips.video_ids and len(subset.captions) == len(captions) - 2
    kept = captions.index[captions["video_id"] != "v3"]
    torch.testing.assert_close(subset.text.hidden, inputs.text.hidden[torch.as_tensor(kept)])
    assert (subset.captions["video_id"].to_numpy()
            == np.asarray(subset.clips.video_ids)[subset.captions["video_row"].to_numpy()]).all()


def _with_moment_queries(inputs):
    """``inputs`` plus one moment query per video about its frames 2-3 (of 6, at 0.5 s steps)
    and one whose window holds no stored frame; text states: each video's first caption."""
    frames = {video_id: inputs.clips.frames[row] for row, video_id in enumerate(inputs.clips.video_ids)}
    videos = inputs.videos[["video_id", "created_at"]]
    ids = list(inputs.clips.video_ids)
    queries = pd.DataFrame({"query_id": [f"q{i}" for i in range(len(ids))] + ["q_out"],
                            "video_id": ids + [ids[0]],
                            "windows": [[[1.0, 1.6]]] * len(ids) + [[[9.0, 9.5]]]})
    first = [int(np.flatnonzero(inputs.captions["video_id"].to_numpy() == video_id)[0]) for video_id in ids]
    text = inputs.text.take(np.asarray(first + [first[0]]))
    return mac_inputs(videos, lambda day, video_id: frames[video_id],
                      inputs.captions[["caption_id", "video_id", "caption"]], inputs.text, None, queries, text,
                      lambda day, video_id: np.arange(len(frames[video_id])) * 0.5)


def test_moment_queries_pair_with_the_stored_frames_inside_their_windows():
    inputs = _with_moment_queries(informative_world(12))
    moments = inputs.moments
    # the query whose window holds no stored frame is left out; the others keep frames at 1.0 and 1.5 s
    assert len(moments) == 12 and all(frames.tolist() == [2, 3] for frames in moments.frames)
    assert moments.video_rows.tolist() == list(range(12))
    pixels = inputs.clips.pixels([0, 1], 3, 32, np.random.default_rng(0), within=moments.frames[:2])
    expected = inputs.clips.pixels([0, 1], 3, 32)  # all six frames: another clip
    assert pixels.shape == expected.shape
    only_inside = VideoClips(["a"], [inputs.clips.frames[0][[2, 3]]]).pixels([0], 3, 32, np.random.default_rng(0))
    torch.testing.assert_close(pixels[:1], only_inside)
    with pytest.raises(ValueError, match="need their moment_text"):
        mac_inputs(inputs.videos[["video_id", "created_at"]], lambda d, v: None, inputs.captions, inputs.text,
                   moment_queries=pd.DataFrame())


def test_training_adds_the_moment_loss_over_distinct_videos():
    inputs = _with_moment_queries(informative_world(24))
    task = MACTask(tiny_settings(moment_batch_size=8), inputs)
    assert len(task.moment_videos) == len(task.train_rows)  # one query per training video here
    out = task.training_forward(0)
    assert {"caption_loss", "moment_loss"} <= set(out)
    torch.testing.assert_close(out["loss"].detach(), out["caption_loss"] + out["moment_loss"])
    # weight 0, or no queries: captions alone, the same caption loss for the same step
    plain = MACTask(tiny_settings(moment_batch_size=8, moment_weight=0.0), inputs).training_forward(0)
    assert "moment_loss" not in plain
    torch.testing.assert_close(plain["loss"].detach(), out["caption_loss"])


def test_a_video_embeds_as_the_mean_of_its_inference_clips():
    inputs = informative_world(12)
    model = MAC(TINY).eval()
    rows = np.arange(4)
    with torch.no_grad():
        middle = model.encode_video(inputs.clips.pixels(rows, 3, 32)).numpy()
        early = model.encode_video(inputs.clips.pixels(rows, 3, 32, offset=0.25)).numpy()
        late = model.encode_video(inputs.clips.pixels(rows, 3, 32, offset=0.75)).numpy()
    np.testing.assert_allclose(embed_clips(model, inputs.clips, rows, 3), middle, atol=1e-6)
    mean = (early + late) / np.linalg.norm(early + late, axis=1, keepdims=True)
    np.testing.assert_allclose(embed_clips(model, inputs.clips, rows, 3, n_clips=2), mean, atol=1e-6)
    assert clip_indices(6, 3, offset=0.25).tolist() == [0, 2, 4] and clip_indices(6, 3).tolist() == [1, 3, 5]
