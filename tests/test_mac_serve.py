"""MAC as a registered MLflow pyfunc, its per-day video embeddings, the video index and
text->video search, on a tiny real frame store.

A few MP4s are written and decoded into a frame store the way ``validated_frames`` does;
a tiny MAC is fitted to tell their captions apart (so a caption really finds its video),
logged and registered into a throwaway SQLite store, then used the way the pipeline and a
user use it: embed_day, the index sync, the pyfunc and ``mmpipe search --videos``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from mmpipe import cli
from mmpipe.embeddings import read_embeddings, write_day_embeddings
from mmpipe.media.features import VideoFeaturesConfig
from mmpipe.media.frames import FrameConfig, extract_frames, read_frame_index
from mmpipe.media.pixels import normalize_pixels
from mmpipe.nn.text_tower import encode_texts
from mmpipe.registry.mlflow_registry import RunContext, configure, start_run
from mmpipe.spec import Trained
from mmpipe.systems.mac.data import VideoClips
from mmpipe.systems.mac.losses import masked_then_align
from mmpipe.systems.mac.model import MAC, MACConfig
from mmpipe.systems.mac.serve import (
    FRAME_EMBEDDINGS,
    FRAME_IS_BLANK,
    FRAME_T_S,
    IMAGE,
    TEXT,
    VIDEO,
    SearchSetupError,
    VideoSearcher,
    best_second,
    embed_day,
    load_embedder,
    load_version_model,
    log_mac,
    make_pyfunc_input,
    register,
    sync_video_index,
    version_uri,
)
from mmpipe.systems.mac.train import MACSettings, MACTrainConfig
from mmpipe.world.videos import write_mp4
from tests.test_pinclip_registry import text_tower, text_tower_dir  # noqa: F401  fixtures: a tiny text tower

TINY = MACConfig(image_size=32, patch_size=8, max_frames=4, width=32, depth=2, heads=2, mlp=64, text_hidden_size=32,
                 text_width=32, text_depth=1, text_heads=2, text_mlp=64, embed_dim=16)
N_FRAMES = 4
TEXT_MAX_LENGTH = 16
SIDE, FPS = 32, 8
CONTEXT = RunContext(data_version="data-mac123", orchestrator_run_id="dagster-run-7", asset_key="mac_model")

# (video id, day, caption, colour of its moving square); v3 has a row but no file.
VIDEOS = [("v0", "2026-01-01", "a red square slides to the left", (230, 30, 30)),
          ("v1", "2026-01-01", "a blue square drops down", (30, 30, 230)),
          ("v2", "2026-01-02", "a green square grows", (30, 200, 30))]
MISSING = "v3"


def video_frames(seed: int, colour: tuple[int, int, int], blank_first: int = 0) -> np.ndarray:
    """2 s at 8 fps: a textured background with a coloured square crossing it; the first
    ``blank_first`` frames flat grey (a fade-in: blank frames in the store)."""
    rng = np.random.default_rng(seed)
    background = rng.integers(40, 216, (SIDE, SIDE, 3), dtype=np.uint8)
    frames = np.repeat(background[None], 2 * FPS, axis=0)
    for t in range(len(frames)):
        x = 2 + t
        frames[t, 10:20, x:x + 10] = colour
    frames[:blank_first] = 128
    return frames


@pytest.fixture(scope="module")
def frame_store(tmp_path_factory):
    """storage/frames/<day>/ as validated_frames writes it, from real MP4s, and the
    validated videos table."""
    root = tmp_path_factory.mktemp("mac_project")
    raw, frames_root = root / "data" / "raw", root / "storage" / "frames"
    (raw / "videos").mkdir(parents=True)
    rows = []
    for seed, (video_id, day, _, colour) in enumerate(VIDEOS):
        write_mp4(raw / "videos" / f"{video_id}.mp4", video_frames(seed, colour, blank_first=4 * (seed == 1)),
                  FPS, SIDE)
        rows.append({"video_id": video_id, "video_path": f"videos/{video_id}.mp4", "created_at": day,
                     "title": f"video {video_id}"})
    rows.append({"video_id": MISSING, "video_path": f"videos/{MISSING}.mp4", "created_at": "2026-01-02",
                 "title": "never decoded"})
    videos = pd.DataFrame(rows)
    for day, day_videos in videos.groupby("created_at"):
        result = extract_frames(day_videos, raw, frames_root / day, FrameConfig(sample_fps=2.0, size=SIDE))
        assert MISSING not in set(result.summary["video_id"])  # the missing file is quarantined
        (root / "storage" / "validated" / "videos").mkdir(parents=True, exist_ok=True)
        day_videos.to_parquet(root / "storage" / "validated" / "videos" / f"{day}.parquet")
    stored = {video_id: np.load(frames_root / day / f"{video_id}.npy") for video_id, day, _, _ in VIDEOS}
    return SimpleNamespace(root=root, frames_root=frames_root, videos=videos, stored=stored)


@pytest.fixture(scope="module")
def mac(frame_store, text_tower):
    """A tiny MAC fitted (unmasked, a few dozen steps) so each caption finds its own video."""
    torch.manual_seed(0)
    model = MAC(TINY)
    ids = [video_id for video_id, *_ in VIDEOS]
    pixels = VideoClips(ids, [frame_store.stored[v] for v in ids]).pixels(range(len(ids)), N_FRAMES, SIDE)
    text = encode_texts([caption for _, _, caption, _ in VIDEOS], *text_tower, max_length=TEXT_MAX_LENGTH)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(80):
        loss = masked_then_align(model.encode_video(pixels), model.encode_text(text.hidden, text.mask),
                                 model.logit_scale.exp())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def registry(tmp_path_factory, mac, text_tower_dir):
    """A SQLite tracking store with the tiny MAC logged and registered once."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        env.setenv("MMPIPE_MLFLOW_ARTIFACTS", str(root / "mlruns"))
        with start_run("mac-test", "tiny", CONTEXT):
            model_uri, version = log_mac(mac, text_tower_dir, CONTEXT, n_frames=N_FRAMES,
                                         text_max_length=TEXT_MAX_LENGTH)
        yield SimpleNamespace(model_uri=model_uri, version=version, root=root)


@pytest.fixture(scope="module")
def served(registry):
    return mlflow.pyfunc.load_model(version_uri(registry.version))


def reference_clip(model: MAC, frames: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.encode_video(VideoClips(["x"], [frames]).pixels([0], N_FRAMES, SIDE))[0].numpy()


def reference_frame(model: MAC, frame: np.ndarray) -> np.ndarray:
    """A frame through ``encode_image``: another path than embed_day's one-frame clips."""
    with torch.no_grad():
        return model.encode_image(normalize_pixels(torch.from_numpy(frame).permute(2, 0, 1))[None])[0].numpy()


def reference_text(model: MAC, text_tower, texts) -> np.ndarray:
    text = encode_texts(texts, *text_tower, max_length=TEXT_MAX_LENGTH)
    with torch.no_grad():
        return model.encode_text(text.hidden, text.mask).numpy()


# ---------------------------------------------------------------------------------------
# the pyfunc and the registry


def test_registered_version_has_the_challenger_alias_tags_and_signature(registry):
    version = configure().get_model_version_by_alias("mac", "challenger")
    assert str(version.version) == registry.version
    assert version.tags["data_version"] == "data-mac123" and version.tags["dagster_run_id"] == "dagster-run-7"
    info = mlflow.models.get_model_info(version_uri(registry.version))
    assert set(info.signature.inputs.input_names()) == {"text", "frames"}
    assert not any(column.required for column in info.signature.inputs.inputs)
    assert set(info.signature.outputs.input_names()) == {"embedding", "kind"}
    assert info.metadata["text_model"] == "artifact" and info.metadata["n_frames"] == N_FRAMES


def test_served_embeddings_equal_the_model_called_directly(served, mac, text_tower, frame_store):
    clip = frame_store.stored["v0"]
    image = frame_store.stored["v1"][2]
    frame = make_pyfunc_input(["a red square slides to the left", None, None, "a green square grows"],
                              [None, clip, image, None])
    result = served.predict(frame)
    assert result["kind"].tolist() == [TEXT, VIDEO, IMAGE, TEXT]
    embeddings = np.stack(result["embedding"].to_numpy())
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    texts = reference_text(mac, text_tower, ["a red square slides to the left", "a green square grows"])
    np.testing.assert_allclose(embeddings[[0, 3]], texts, atol=1e-5)
    np.testing.assert_allclose(embeddings[1], reference_clip(mac, clip), atol=1e-5)
    np.testing.assert_allclose(embeddings[2], reference_frame(mac, image), atol=1e-5)


def test_bad_inputs_are_rejected_with_a_clear_error(served, frame_store):
    clip = frame_store.stored["v0"]
    with pytest.raises(ValueError, match="row 1: frames are not valid base64"):
        served.predict(pd.DataFrame({"text": ["a", None], "frames": [None, "not base64!"]}))
    with pytest.raises(ValueError, match="row 0: frames must be uint8"):
        served.predict(make_pyfunc_input([None], [clip.astype(np.float32)]))
    with pytest.raises(ValueError, match="row 0: frames must be non-empty and square"):
        served.predict(make_pyfunc_input([None], [clip[:, :, :20]]))
    with pytest.raises(ValueError, match="row 0 has both text and frames"):
        served.predict(make_pyfunc_input(["a caption"], [clip]))
    with pytest.raises(ValueError, match="row 0 has neither text nor frames"):
        served.predict(pd.DataFrame({"text": [None], "frames": [None]}))


def test_register_logs_the_packaged_tower_as_challenger_and_loads_back(registry):
    """The lifecycle's entry point, with the packaged MiniLM a pipeline-trained MAC reads."""
    config = replace(TINY, text_hidden_size=384)
    torch.manual_seed(3)
    model = MAC(config).eval()
    settings = MACSettings(model=config, train=MACTrainConfig(n_frames=3))
    with start_run("mac-test", "register", CONTEXT):
        version = register(Trained(model, 1, 0.1, {}), settings, CONTEXT)
    assert version != registry.version
    assert str(configure().get_model_version_by_alias("mac", "challenger").version) == version
    info = mlflow.models.get_model_info(version_uri(version))
    assert info.metadata["text_model"] == "package" and info.metadata["n_frames"] == 3
    embedder = load_embedder(version_uri(version))
    assert embedder.n_frames == 3
    assert embedder.text_max_length == VideoFeaturesConfig.from_params().text_max_length  # the cache's length
    loaded = load_version_model(version)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)
    with pytest.raises(ValueError, match="text tower is not the packaged MiniLM"):
        load_version_model(registry.version)  # the tiny tower's version cannot read the pipeline's cache


# ---------------------------------------------------------------------------------------
# a day's embeddings


def test_embed_day_embeds_each_video_and_the_first_frame_of_each_second(mac, frame_store):
    day_videos = frame_store.videos[frame_store.videos["created_at"] == "2026-01-02"]
    frame = embed_day(mac, day_videos, frame_store.frames_root, N_FRAMES, "7")
    assert frame["video_id"].tolist() == ["v2"]  # v3's file never decoded: no frames, no row
    assert frame["model_version"].tolist() == ["7"] and frame["created_at"].tolist() == ["2026-01-02"]
    np.testing.assert_allclose(frame[VIDEO].iloc[0], reference_clip(mac, frame_store.stored["v2"]), atol=1e-5)
    index = read_frame_index(frame_store.frames_root / "2026-01-02")
    stored_t_s = index.loc[index["video_id"] == "v2", "t_s"].to_numpy()
    assert len(stored_t_s) == 4 and np.allclose(np.diff(stored_t_s), 0.5)  # frames stored at 2 fps...
    assert list(frame[FRAME_T_S].iloc[0]) == stored_t_s[::2].tolist()  # ...embedded one a second
    per_frame = np.stack(frame[FRAME_EMBEDDINGS].iloc[0])
    expected = np.stack([reference_frame(mac, f) for f in frame_store.stored["v2"][::2]])
    np.testing.assert_allclose(per_frame, expected, atol=1e-5)

    both = embed_day(mac, frame_store.videos[frame_store.videos["created_at"] == "2026-01-01"],
                     frame_store.frames_root, N_FRAMES, "7")
    assert both["video_id"].tolist() == ["v0", "v1"]
    assert np.asarray(both[FRAME_IS_BLANK].iloc[1]).any()  # v1 fades in from flat grey


def test_embed_day_without_a_frame_store_names_the_asset(mac, frame_store, tmp_path):
    with pytest.raises(FileNotFoundError, match="materialize validated_frames for 2026-01-01"):
        embed_day(mac, frame_store.videos, tmp_path, N_FRAMES, "7")


def test_best_second_skips_blank_frames_unless_all_are():
    frames = np.eye(3, dtype=np.float32)
    t_s = np.array([0.0, 0.5, 1.0])
    assert best_second(frames, t_s, np.array([True, False, False]), np.array([1.0, 0.25, 0.125])) == (0.5, 0.25)
    assert best_second(frames, t_s, np.array([True, True, True]), np.array([0.1, 0.1, 1.0])) == (1.0, 1.0)


# ---------------------------------------------------------------------------------------
# the index and search


@pytest.fixture(scope="module")
def project(frame_store, registry):
    """The project root as the pipeline leaves it: video_embeddings by the registered model
    for the first day, the index synced, then the second day added."""
    embedder = load_embedder(registry.model_uri)
    embeddings, index = frame_store.root / "storage/embeddings/videos", frame_store.root / "storage/index/videos"
    reports = []
    for day in ("2026-01-01", "2026-01-02", "2026-01-03"):  # the last day delivered no video
        day_videos = frame_store.videos[frame_store.videos["created_at"] == day]
        write_day_embeddings(embed_day(embedder.model, day_videos, frame_store.frames_root, embedder.n_frames,
                                       registry.version), embeddings, day)
        reports.append(sync_video_index(index, embeddings))
    reports.append(sync_video_index(index, embeddings))
    return SimpleNamespace(root=frame_store.root, embeddings=embeddings, index=index, reports=reports,
                           embedder=embedder)


def test_the_index_adds_new_days_and_rebuilds_for_a_new_model(project, frame_store):
    first, second, empty, again = project.reports
    assert (first.mode, second.mode, empty.mode, again.mode) == ("rebuild", "add", "add", "noop")
    assert second.days_added == ["2026-01-02"] and second.vectors_added == 1 and second.ntotal == 3
    assert empty.days_added == ["2026-01-03"] and empty.vectors_added == 0
    # a day without a video names no model version: the index keeps the one it holds
    assert empty.model_version == first.model_version is not None
    state = json.loads((project.index / "partitions.json").read_text())
    assert sorted(state["days"]) == ["2026-01-01", "2026-01-02", "2026-01-03"] and state["ntotal"] == 3
    assert state["model_version"] == first.model_version

    # A new champion rewrites every day: the index is rebuilt from them all; a store where
    # only some days were rewritten is refused until every day is.
    copy = frame_store.root / "copy"

    def embed_all(version, days=("2026-01-01", "2026-01-02")):
        for day in days:
            day_videos = frame_store.videos[frame_store.videos["created_at"] == day]
            write_day_embeddings(embed_day(project.embedder.model, day_videos, frame_store.frames_root, N_FRAMES,
                                           version), copy / "embeddings", day)

    embed_all("99")
    assert sync_video_index(copy / "index", copy / "embeddings").model_version == "99"
    embed_all("100")
    report = sync_video_index(copy / "index", copy / "embeddings")
    assert report.mode == "rebuild" and "model version 100" in report.reason and report.ntotal == 3
    embed_all("101", days=["2026-01-02"])
    with pytest.raises(ValueError, match="several model versions"):
        sync_video_index(copy / "index", copy / "embeddings")


def test_a_caption_finds_its_video_and_the_best_second_is_a_stored_frame(project, frame_store):
    searcher = VideoSearcher(project.embedder, index_dir=project.index, embeddings=project.embeddings,
                             videos_table_path=frame_store.root / "storage/validated/videos")
    ids, vectors = read_embeddings(project.embeddings, VIDEO, id_column="video_id")
    for video_id, _, caption, _ in VIDEOS:
        hits = searcher.search_text(caption, k=3)
        assert hits["video_id"].iloc[0] == video_id, (caption, hits)
        assert hits["title"].iloc[0] == f"video {video_id}"
        # scores and order are exact search over the stored video embeddings
        query = project.embedder.encode_texts([caption])[0]
        np.testing.assert_allclose(hits["score"], np.sort(vectors @ query)[::-1], atol=1e-5)
        # the best second: the argmax over the video's non-blank stored frames
        stored = pd.read_parquet(project.embeddings, filters=[("video_id", "==", video_id)])
        frames, t_s = np.stack(stored[FRAME_EMBEDDINGS].iloc[0]), np.asarray(stored[FRAME_T_S].iloc[0])
        content = ~np.asarray(stored[FRAME_IS_BLANK].iloc[0])
        assert hits["best_s"].iloc[0] == t_s[content][np.argmax(frames[content] @ query)]
        assert hits["best_s"].iloc[0] in read_frame_index(frame_store.frames_root / stored["created_at"].iloc[0])[
            "t_s"].tolist()

    own = searcher.search_vector(vectors[ids.index("v1")], k=1)
    assert own["video_id"].tolist() == ["v1"] and own["score"].iloc[0] == pytest.approx(1.0, abs=1e-5)


def test_cli_search_videos_prints_id_score_and_best_second(project, monkeypatch, capsys):
    monkeypatch.setenv("MMPIPE_ROOT", str(project.root))
    # no --model: the version the index was built from, loaded from the registry
    assert cli.main(["search", "--videos", "--text", "a blue square drops down", "--k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    video_id, score, second, title = lines[0].split("  ", 3)
    assert video_id == "v1" and -1.0 <= float(score) <= 1.0 and title == "video v1"
    assert second.endswith("s") and float(second[:-1]) >= 0.5  # v1's first frames are blank

    with pytest.raises(SystemExit, match="searched by --text"):
        cli.main(["search", "--videos", "--pin", "p000001"])


def test_cli_search_videos_says_what_to_do_when_nothing_is_materialized(tmp_path, monkeypatch, project):
    monkeypatch.setenv("MMPIPE_ROOT", str(tmp_path))
    with pytest.raises(SystemExit, match="no video index .*make run"):
        cli.main(["search", "--videos", "--text", "anything"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'absent.db'}")
    with pytest.raises(SystemExit, match="no MLflow tracking store .*make run"):
        cli.main(["search", "--videos", "--text", "anything", "--index", str(project.index)])
    assert not (tmp_path / "absent.db").exists()
    with pytest.raises(SearchSetupError, match="no MLflow tracking store"):
        VideoSearcher(index_dir=project.index).embedder
