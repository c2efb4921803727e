"""The video systems' shared inputs (mmpipe/media/features.py) on real frame stores: MP4s
written here, decoded by the frame store, embedded by a tiny PinCLIP registered as an MLflow
pyfunc (test_pinclip_registry's fixtures), pooled per shot; and the video-text cache."""

from __future__ import annotations

import io
import json
import shutil
from types import SimpleNamespace

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mmpipe.media import features as vf
from mmpipe.nn import text_tower as text_tower_module
from mmpipe.media.features import (
    FeatureTable,
    PyfuncImageEncoder,
    VideoFeaturesNotFoundError,
    concept_phrase,
    frame_features_file,
    png_base64,
    png_bytes,
    pool_shot_features,
    read_frame_features,
    read_query_text_features,
    read_shot_features,
    text_states_of,
    update_frame_features,
    update_query_text_features,
    update_shot_features,
    video_texts,
)
from mmpipe.media.frames import FrameConfig, extract_frames, load_frames, read_frame_index
from mmpipe.nn.text_tower import encode_texts
from mmpipe.registry.mlflow_registry import CHAMPION, configure, start_run
from mmpipe.systems.pinclip.model import PinCLIP
from mmpipe.systems.pinclip.serve import load_embedder, log_pinclip
from orchestration import names
from tests.test_media import three_shot_frames, write_mp4
from tests.test_pinclip_registry import (  # noqa: F401  fixtures: a tiny PinCLIP registered in a temp store
    CONTEXT,
    MODEL,
    TEXT_MAX_LENGTH,
    pinclip,
    registry,
    text_tower,
    text_tower_dir,
)

DAY1, DAY2 = "2026-01-01", "2026-01-02"
VIDEOS = {  # video_id: (day, seed, blank frames); 10 s at 8 fps, three shots (tests.test_media)
    "vid_a": (DAY1, 0, range(0)),
    "vid_b": (DAY1, 1, range(36, 44)),  # a dip to black inside shot 1: blank frames to leave out
    "vid_c": (DAY2, 2, range(0)),
}
FRAME_SIZE = 32  # the tiny PinCLIP's image_size
BATCH = 16


# ---------------------------------------------------------------------------------------
# fixtures: a frame store of two days, two encoder versions


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """raw/ with the MP4s and storage/frames/<day>/ as validated_frames writes it."""
    root = tmp_path_factory.mktemp("video_features")
    raw, storage = root / "raw", root / "storage"
    (raw / "videos").mkdir(parents=True)
    rows = []
    for video_id, (day, seed, blanks) in VIDEOS.items():
        write_mp4(raw / "videos" / f"{video_id}.mp4", three_shot_frames(seed, blanks))
        rows.append({"video_id": video_id, "video_path": f"videos/{video_id}.mp4", "day": day})
    videos = pd.DataFrame(rows)
    for day, day_videos in videos.groupby("day"):
        result = extract_frames(day_videos, raw, storage / "frames" / day, FrameConfig(size=FRAME_SIZE))
        assert result.quarantine.empty
    return SimpleNamespace(root=root, raw=raw, storage=storage)


@pytest.fixture
def storage(project, tmp_path):
    """A private copy of the frame store: each test writes its own features."""
    copy = tmp_path / "storage"
    shutil.copytree(project.storage, copy)
    return copy


@pytest.fixture(scope="module")
def versions(registry, text_tower, text_tower_dir):
    """Two registered versions of the tiny PinCLIP with different weights: (v1, v2)."""
    torch.manual_seed(1)
    other = PinCLIP(MODEL, text_tower[1]).eval()
    with start_run("pinclip-test", "tiny-v2", CONTEXT):
        _, second = log_pinclip(other, text_tower_dir, CONTEXT, text_max_length=TEXT_MAX_LENGTH)
    return registry.version, second


def champion(version: str) -> str:
    configure().set_registered_model_alias("pinclip", CHAMPION, version)
    return version


def stored_frames(storage, day) -> tuple[pd.DataFrame, np.ndarray]:
    """The day's frame index and its frames, row for row (the reference inputs)."""
    index = read_frame_index(storage / "frames" / day)
    frames = np.concatenate([load_frames(storage / "frames" / day, video)[group["frame_index"].to_numpy()]
                             for video, group in index.groupby("video_id", sort=False)])
    return index, frames


# ---------------------------------------------------------------------------------------
# the encoder path


def test_png_frames_decode_to_the_stored_pixels():
    """The hand-written PNG against PIL's decoder: lossless, any size."""
    rng = np.random.default_rng(0)
    for shape in [(32, 32, 3), (17, 40, 3), (1, 1, 3)]:
        frame = rng.integers(0, 256, shape, dtype=np.uint8)
        with Image.open(io.BytesIO(png_bytes(frame))) as image:
            assert image.format == "PNG" and image.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(image), frame)
    with pytest.raises(ValueError, match="RGB uint8"):
        png_bytes(np.zeros((4, 4), np.uint8))


def test_frame_features_are_the_encoders_embeddings_in_batched_calls(storage, versions):
    v1 = champion(versions[0])
    encoder = PyfuncImageEncoder("pinclip", v1, batch_size=BATCH)
    report = update_frame_features(storage, [DAY1, DAY2], encoder)

    features = read_frame_features(storage, encoder="pinclip", version=v1)
    n_frames = {day: len(read_frame_index(storage / "frames" / day)) for day in (DAY1, DAY2)}
    assert len(features) == sum(n_frames.values()) == report.total("frames") == report.total("encoded_frames")
    assert features.embedding.shape == (len(features), MODEL.embed_dim) and features.embedding.dtype == np.float32
    assert (features.encoder, features.version) == ("pinclip", v1)
    # frames of every video of a day share calls: ceil(frames / batch) per day, not per video
    assert report.predict_calls == sum(-(-n // BATCH) for n in n_frames.values())
    assert report.images_per_second > 0

    # the same vectors as the model's own Python API on the same pixels
    embedder = load_embedder(f"models:/pinclip/{v1}")
    for day in (DAY1, DAY2):
        index, frames = stored_frames(storage, day)
        day_features = read_frame_features(storage, [day], "pinclip", v1)
        pd.testing.assert_frame_equal(day_features.index.drop(columns="day"), index[vf.FRAME_COLUMNS])
        expected = embedder.encode_images([png_bytes(frame) for frame in frames])
        np.testing.assert_allclose(day_features.embedding, expected, atol=1e-5)

    per_video = features.by_video()
    assert list(per_video) == list(VIDEOS)
    for video_id, vectors in per_video.items():
        assert vectors.shape == (len(load_frames(storage / "frames" / VIDEOS[video_id][0], video_id)),
                                 MODEL.embed_dim)
        np.testing.assert_array_equal(vectors, features.of_video(video_id))


def test_a_rerun_encodes_nothing_and_changed_frames_are_encoded_again(storage, versions):
    v1 = champion(versions[0])
    update_frame_features(storage, [DAY1, DAY2], PyfuncImageEncoder("pinclip", v1, batch_size=BATCH))
    before = read_frame_features(storage, encoder="pinclip", version=v1)

    rerun = PyfuncImageEncoder("pinclip", v1, batch_size=BATCH)
    report = update_frame_features(storage, [DAY1, DAY2], rerun)
    assert report.total("encoded_frames") == 0 and report.total("reused_videos") == len(VIDEOS)
    assert rerun.calls == 0 and rerun._predict is None  # the model was not even loaded
    after = read_frame_features(storage, encoder="pinclip", version=v1)
    np.testing.assert_array_equal(after.embedding, before.embedding)

    # new frames for one video (the store re-extracted at other settings, say): only it is encoded
    path = storage / "frames" / DAY1 / "vid_b.npy"
    np.save(path, np.ascontiguousarray(np.load(path)[:, ::-1]))
    report = update_frame_features(storage, [DAY1], PyfuncImageEncoder("pinclip", v1, batch_size=BATCH))
    (day,) = report.days
    assert (day.encoded_videos, day.reused_videos) == (1, 1)
    assert day.encoded_frames == len(np.load(path))
    changed = read_frame_features(storage, [DAY1], "pinclip", v1)
    rows_b = changed.index["video_id"] == "vid_b"
    np.testing.assert_array_equal(changed.embedding[~rows_b], before.embedding[before.index["day"] == DAY1][~rows_b])
    assert not np.allclose(changed.embedding[rows_b], before.of_video("vid_b"))


def test_a_new_day_encodes_only_its_own_videos(storage, versions):
    v1 = champion(versions[0])
    update_frame_features(storage, [DAY1], PyfuncImageEncoder("pinclip", v1, batch_size=BATCH))
    report = update_frame_features(storage, [DAY1, DAY2], PyfuncImageEncoder("pinclip", v1, batch_size=BATCH))
    counts = {day.day: (day.encoded_videos, day.reused_videos) for day in report.days}
    assert counts == {DAY1: (0, 2), DAY2: (1, 0)}


def test_a_new_encoder_version_writes_its_own_features(storage, versions):
    v1, v2 = versions
    update_frame_features(storage, [DAY1, DAY2], PyfuncImageEncoder("pinclip", v1, batch_size=BATCH))
    first = read_frame_features(storage, encoder="pinclip")  # default: the version last computed
    assert first.version == v1
    v1_file = frame_features_file(storage, "pinclip", v1, DAY1)
    v1_bytes = v1_file.read_bytes()

    report = update_frame_features(storage, [DAY1, DAY2], PyfuncImageEncoder("pinclip", v2, batch_size=BATCH))
    assert report.total("encoded_frames") == len(first) and report.total("reused_videos") == 0
    assert frame_features_file(storage, "pinclip", v2, DAY1).is_file()
    assert v1_file.read_bytes() == v1_bytes  # the old version's files are left as they were
    current = json.loads((storage / "features" / "frames" / "pinclip" / "current.json").read_text())
    assert current == {"encoder": "pinclip", "version": v2, "model_uri": f"models:/pinclip/{v2}"}

    second = read_frame_features(storage, encoder="pinclip")
    assert second.version == v2 and second.embedding.shape == first.embedding.shape
    assert not np.allclose(second.embedding, first.embedding)
    np.testing.assert_array_equal(read_frame_features(storage, encoder="pinclip", version=v1).embedding,
                                  first.embedding)
    with np.load(frame_features_file(storage, "pinclip", v2, DAY2)) as stored:  # the file says who made it
        meta = json.loads(str(stored["meta"]))
    assert (meta["encoder"], meta["version"], meta["model_uri"]) == ("pinclip", v2, f"models:/pinclip/{v2}")


# ---------------------------------------------------------------------------------------
# shot features


def test_shot_features_are_the_normalised_mean_of_the_shots_non_blank_frames(storage, versions):
    v1 = champion(versions[0])
    update_frame_features(storage, [DAY1, DAY2], PyfuncImageEncoder("pinclip", v1, batch_size=BATCH))
    written = update_shot_features(storage, [DAY1, DAY2], "pinclip", v1)
    shots = read_shot_features(storage, encoder="pinclip", version=v1)
    pd.testing.assert_frame_equal(shots.index, written.index)
    np.testing.assert_array_equal(shots.embedding, written.embedding)
    frames = read_frame_features(storage, encoder="pinclip", version=v1)

    detected = pd.concat([pd.read_parquet(storage / "frames" / day / "shots.parquet") for day in (DAY1, DAY2)],
                         ignore_index=True)
    assert len(shots) == len(detected) == 3 * len(VIDEOS)  # the three shots of every video
    pd.testing.assert_frame_equal(shots.index[["video_id", "shot_id", "start_s", "end_s"]], detected)
    assert (shots.index["pooled_from"] == vf.CONTENT).all()

    mixed = 0
    for row, shot in shots.index.iterrows():
        in_shot = (frames.index["video_id"] == shot["video_id"]) & (frames.index["shot_id"] == shot["shot_id"])
        content = in_shot & ~frames.index["is_blank"]
        mixed += int(content.sum() < in_shot.sum())
        mean = frames.embedding[content.to_numpy()].astype(np.float64).mean(0)
        np.testing.assert_allclose(shots.embedding[row], mean / np.linalg.norm(mean), atol=1e-6)
        assert (shot["n_frames"], shot["n_pooled"]) == (in_shot.sum(), content.sum())
    assert mixed == 1  # vid_b's shot with the dip to black: its blank frames were left out


def test_shot_pooling_falls_back_to_all_frames_then_to_the_nearest_frame():
    index = pd.DataFrame({
        "video_id": ["v"] * 5, "frame_index": range(5), "t_s": [0.0, 0.5, 1.0, 1.5, 2.0],
        "shot_id": [0, 0, 1, 1, 3], "is_blank": [False, True, True, True, False],
    })
    embedding = np.array([[3, 4], [1, 0], [0, 2], [2, 0], [0, -1]], np.float32)
    frames = FeatureTable(index, embedding, "enc", "1")
    shots = pd.DataFrame({"video_id": ["v"] * 4, "shot_id": [0, 1, 2, 3],
                          "start_s": [0.0, 1.0, 1.9, 1.95], "end_s": [1.0, 1.9, 1.95, 2.5]})
    pooled = pool_shot_features(frames, shots)
    np.testing.assert_allclose(pooled.embedding, [[0.6, 0.8],  # the non-blank frame only
                                                  [np.sqrt(0.5), np.sqrt(0.5)],  # all blank: both frames
                                                  [0.0, -1.0],  # no frame inside: the nearest (t=2.0)
                                                  [0.0, -1.0]], atol=1e-6)
    assert pooled.index["pooled_from"].tolist() == [vf.CONTENT, vf.ALL_FRAMES, vf.NEAREST_FRAME, vf.CONTENT]
    assert pooled.index["n_frames"].tolist() == [2, 2, 0, 1]
    assert pooled.index["n_pooled"].tolist() == [1, 2, 1, 1]


# ---------------------------------------------------------------------------------------
# query text features


def text_tables(extra_caption: str | None = None) -> dict[str, pd.DataFrame]:
    captions = ["a red striped circle moves left", "a blue dotted star", "a red striped circle moves left"]
    ids = ["c1", "c2", "c3"]
    if extra_caption:
        captions, ids = captions + [extra_caption], ids + ["c4"]
    return {
        "video_captions": pd.DataFrame({"caption_id": ids, "video_id": "vid_a", "caption": captions}),
        "moment_queries": pd.DataFrame({"query_id": ["m1", "m2"], "video_id": ["vid_a", "vid_b"],
                                        "query": ["the blue star appears", "the green square leaves"],
                                        "windows": [[[0.0, 2.0]], [[1.0, 3.0], [5.0, 6.0]]]}),
        "summary_queries": pd.DataFrame({"query_id": ["s1", "s2"], "video_id": ["vid_a", "vid_b"],
                                         "concepts": [np.array(["red", "striped"]), ["star"]],
                                         "relevant_shots": [[0, 2], [1]]}),
    }


def test_video_texts_key_every_caption_and_query_by_source_and_id():
    texts = video_texts(text_tables())
    assert texts["source"].tolist() == ["video_captions"] * 3 + ["moment_queries"] * 2 + ["summary_queries"] * 2
    assert texts["id"].tolist() == ["c1", "c2", "c3", "m1", "m2", "s1", "s2"]
    assert texts["text"].tolist()[-2:] == ["red, striped", "star"]
    assert concept_phrase(["red", " ", None, "striped "]) == "red, striped"
    with pytest.raises(KeyError, match="unknown text tables"):
        video_texts({"pins": pd.DataFrame()})


def test_query_text_features_encode_only_new_texts(tmp_path, text_tower, text_tower_dir, monkeypatch):
    seen = []

    def spy(texts, *args, **kwargs):
        seen.append(list(texts))
        return encode_texts(texts, *args, **kwargs)

    monkeypatch.setattr(text_tower_module, "encode_texts", spy)
    texts = video_texts(text_tables())
    first, counts = update_query_text_features(tmp_path, texts, TEXT_MAX_LENGTH, text_tower_dir)
    assert counts == {"encoded": 6, "reused": 0}  # c1 and c3 say the same: one encoding
    assert sorted(seen[0]) == sorted(set(texts["text"]))

    # every row equals the tower run directly on its text
    tokenizer, model = text_tower
    direct = encode_texts(texts["text"].tolist(), tokenizer, model, max_length=TEXT_MAX_LENGTH)
    length = direct.mask.shape[1]
    np.testing.assert_array_equal(first.text.mask[:, :length].numpy(), direct.mask.numpy())
    np.testing.assert_allclose(first.text.pooled.numpy(), direct.pooled.numpy(), atol=1e-5)
    torch.testing.assert_close(first.text.hidden[:, :length].float(), direct.hidden.float(), atol=2e-3, rtol=0)

    # a new caption and a changed moment query: only those two go through the tower
    tables = text_tables(extra_caption="an orange ring spins")
    tables["moment_queries"].loc[1, "query"] = "the green square enters"
    seen.clear()
    second, counts = update_query_text_features(tmp_path, video_texts(tables), TEXT_MAX_LENGTH, text_tower_dir)
    assert seen == [["an orange ring spins", "the green square enters"]]
    assert counts == {"encoded": 2, "reused": len(second) - 2}
    for key in ["c1", "c2", "m1", "s1", "s2"]:  # unchanged: copied from the first cache
        source = {"c": "video_captions", "m": "moment_queries", "s": "summary_queries"}[key[0]]
        old, new = first.rows(source, [key])[0], second.rows(source, [key])[0]
        width = first.text.mask[old].sum()
        torch.testing.assert_close(second.text.hidden[new, :width], first.text.hidden[old, :width])
        torch.testing.assert_close(second.text.pooled[new], first.text.pooled[old])

    # another tower or length: nothing is reused
    seen.clear()
    _, counts = update_query_text_features(tmp_path, video_texts(tables), TEXT_MAX_LENGTH + 1, text_tower_dir)
    assert counts["reused"] == 0 and len(seen[0]) == counts["encoded"] == 7  # 8 rows, c1 == c3


def test_query_text_features_read_back_as_written(tmp_path, text_tower_dir):
    written, _ = update_query_text_features(tmp_path, video_texts(text_tables()), TEXT_MAX_LENGTH, text_tower_dir)
    read = read_query_text_features(tmp_path)
    pd.testing.assert_frame_equal(read.keys, written.keys)
    for name in ("hidden", "mask", "pooled"):
        torch.testing.assert_close(getattr(read.text, name), getattr(written.text, name))

    queries = read_query_text_features(tmp_path, sources=["summary_queries", "moment_queries"])
    assert queries.keys["id"].tolist() == ["s1", "s2", "m1", "m2"]
    rows = written.rows("moment_queries", ["m2", "m1"])
    torch.testing.assert_close(queries.text.pooled[[3, 2]], written.text.pooled[rows])
    assert read.select("video_captions").keys["video_id"].tolist() == ["vid_a"] * 3
    with pytest.raises(KeyError, match="have no stored text features"):
        read.rows("moment_queries", ["m9"])
    # what a system reads: its table's rows in its own order, whatever the cache's
    aligned = text_states_of(tmp_path, "moment_queries", ["m2", "m1"])
    torch.testing.assert_close(aligned.pooled, written.text.pooled[rows])
    with pytest.raises(KeyError, match="have no stored text features"):
        text_states_of(tmp_path, "moment_queries", ["m1", "m9"])


# ---------------------------------------------------------------------------------------
# missing inputs, and the assets in the graph


def test_missing_inputs_name_the_asset_to_materialize(tmp_path, storage, versions):
    for library_name, asset in [(vf.VALIDATED_FRAMES_ASSET, names.VALIDATED_FRAMES),
                                (vf.FRAME_FEATURES_ASSET, names.FRAME_FEATURES),
                                (vf.SHOT_FEATURES_ASSET, names.SHOT_FEATURES),
                                (vf.QUERY_TEXT_FEATURES_ASSET, names.QUERY_TEXT_FEATURES)]:
        assert library_name == asset

    with pytest.raises(VideoFeaturesNotFoundError, match=f"materialize {names.FRAME_FEATURES}"):
        read_frame_features(storage, encoder="pinclip")
    with pytest.raises(VideoFeaturesNotFoundError, match=f"materialize {names.VALIDATED_FRAMES}"):
        read_frame_features(tmp_path / "empty", encoder="pinclip", version="1")
    with pytest.raises(VideoFeaturesNotFoundError, match=f"materialize {names.VALIDATED_FRAMES} for 2026-02-01"):
        update_frame_features(storage, ["2026-02-01"], PyfuncImageEncoder("pinclip", versions[0]))
    with pytest.raises(VideoFeaturesNotFoundError, match=f"materialize {names.QUERY_TEXT_FEATURES}"):
        read_query_text_features(storage)

    update_frame_features(storage, [DAY1], PyfuncImageEncoder("pinclip", versions[0], batch_size=BATCH))
    with pytest.raises(VideoFeaturesNotFoundError,
                       match=f"by pinclip v{versions[0]} for {DAY2} .*materialize {names.FRAME_FEATURES}"):
        read_frame_features(storage, encoder="pinclip")  # every day of the frame store, DAY2 not computed
    with pytest.raises(VideoFeaturesNotFoundError, match=f"materialize {names.SHOT_FEATURES}"):
        read_shot_features(storage, [DAY1], encoder="pinclip")
    with pytest.raises(VideoFeaturesNotFoundError, match=f"materialize {names.FRAME_FEATURES}"):
        update_shot_features(storage, [DAY2], "pinclip", versions[0])


def test_the_assets_are_in_the_definitions_with_their_lineage():
    from mmpipe.systems import spec_named
    from orchestration.definitions import defs
    from orchestration.partitions import DAY

    graph = defs.resolve_asset_graph()
    expected = {
        names.FRAME_FEATURES: {names.VALIDATED_FRAMES, spec_named("pinclip").champion_asset},
        names.SHOT_FEATURES: {names.FRAME_FEATURES, names.VALIDATED_FRAMES},
        names.QUERY_TEXT_FEATURES: {names.validated(t) for t in ("video_captions", "moment_queries",
                                                                 "summary_queries")},
    }
    for asset, parents in expected.items():
        node = graph.get(dg.AssetKey(asset))
        assert {key.to_user_string() for key in node.parent_keys} == parents, asset
        assert node.group_name == "features"
    assert graph.get(dg.AssetKey(names.FRAME_FEATURES)).partitions_def == DAY
    assert graph.get(dg.AssetKey(names.SHOT_FEATURES)).partitions_def == DAY
    assert graph.get(dg.AssetKey(names.QUERY_TEXT_FEATURES)).partitions_def is None


def test_the_assets_materialize_per_day_and_record_the_encoder(project, storage, versions):
    from mmpipe.systems import spec_named
    from orchestration.assets.video_features import frame_features, query_text_features, shot_features
    from orchestration.resources import PipelinePaths

    for table, frame in text_tables().items():
        (storage / "validated").mkdir(exist_ok=True)
        frame.to_parquet(storage / "validated" / f"{table}.parquet")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("day", [DAY1, DAY2])
    resources = {"paths": PipelinePaths(raw_dir=str(project.raw), storage_dir=str(storage))}
    both_days = {"dagster/asset_partition_range_start": DAY1, "dagster/asset_partition_range_end": DAY2}

    def materialize(assets, **kwargs):
        result = dg.materialize(assets, instance=instance, resources=resources, **kwargs)
        assert result.success
        return result

    # no champion yet: the failure says which asset promotes one
    configure().delete_registered_model_alias("pinclip", CHAMPION)
    failed = dg.materialize([frame_features], instance=instance, resources=resources, partition_key=DAY1,
                            raise_on_error=False)
    assert not failed.success
    (failure,) = [event for event in failed.all_events if event.is_step_failure]
    assert f"materialize {spec_named('pinclip').champion_asset} first" in str(failure.event_specific_data.error)

    v1 = champion(versions[0])
    materialize([frame_features, shot_features], tags=both_days)
    records = instance.fetch_materializations(dg.AssetKey(names.FRAME_FEATURES), limit=10).records
    events = {record.asset_materialization.partition: record.asset_materialization for record in records}
    assert set(events) == {DAY1, DAY2}
    for day, event in events.items():
        assert event.metadata["encoder_version"].value == v1
        assert event.metadata["model_uri"].value == f"models:/pinclip/{v1}"
        assert event.tags["mmpipe/encoder_version"] == v1
        assert event.metadata["frames"].value == len(read_frame_index(storage / "frames" / day))
        assert event.metadata["encoded_frames"].value == event.metadata["frames"].value
    assert len(read_shot_features(storage, encoder="pinclip")) == 3 * len(VIDEOS)
    shots = instance.fetch_materializations(dg.AssetKey(names.SHOT_FEATURES), limit=10).records
    assert {record.asset_materialization.partition: record.asset_materialization.metadata["shots"].value
            for record in shots} == {DAY1: 6, DAY2: 3}

    # the daily run of one day: everything is already stored
    materialize([frame_features], partition_key=DAY2)
    latest = instance.fetch_materializations(dg.AssetKey(names.FRAME_FEATURES), limit=1).records[0]
    assert latest.asset_materialization.partition == DAY2
    assert latest.asset_materialization.metadata["encoded_frames"].value == 0

    materialize([query_text_features])
    text = instance.fetch_materializations(dg.AssetKey(names.QUERY_TEXT_FEATURES), limit=1).records[0]
    assert text.asset_materialization.metadata["texts"].value == 7
    assert read_query_text_features(storage).keys["id"].tolist() == ["c1", "c2", "c3", "m1", "m2", "s1", "s2"]
