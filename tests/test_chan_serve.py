"""CHAN as a registered MLflow pyfunc and ``mmpipe summarize``, on a tiny real project.

An MP4 of three shots (a red, a green and a blue background) is decoded into a frame store
the way ``validated_frames`` does, embedded by a fake image encoder through the pyfunc
contract (its mean colour, projected) and pooled into shot features as the pipeline pools
them. A tiny CHAN with a tiny text tower is logged and registered into a throwaway SQLite
store, then used the way a user uses it: the pyfunc, and the command line that writes the
summary as an MP4.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import mlflow
from mlflow.exceptions import MlflowException
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mmpipe import cli
from mmpipe.eval.summarization import LengthBudget, read_summaries
from mmpipe.media.decode import decode_video
from mmpipe.media.features import (PyfuncImageEncoder, read_frame_features, read_shot_features,
                                   update_frame_features, update_shot_features)
from mmpipe.media.frames import FrameConfig, extract_frames
from mmpipe.nn.text_tower import encode_texts
from mmpipe.registry.mlflow_registry import RunContext, configure, start_run
from mmpipe.registry.pyfunc import decode_base64_image
from mmpipe.systems.chan.data import shot_vectors
from mmpipe.systems.chan.model import CHAN, CHANConfig
from mmpipe.systems.chan.serve import load_summarizer, load_version_model, log_chan, make_pyfunc_input, version_uri
from mmpipe.world.videos import write_mp4
from tests.test_pinclip_registry import text_tower, text_tower_dir  # noqa: F401  fixtures: a tiny text tower

SIDE, FPS, SHOT_FRAMES = 32, 8, 16  # three 2 s shots
FEATURE_DIM, TEXT_MAX_LENGTH = 8, 16
SHOT_DIM = 3 * FEATURE_DIM  # the shot feature and the max and min of its frames'
MODEL = CHANConfig(shot_dim=SHOT_DIM, text_hidden_size=32, width=16, heads=2, mlp=32, dropout=0.0, n_concepts=3)
CONCEPTS = ("blue", "green", "red")
BUDGET = LengthBudget(shots_share=0.4)  # one of three shots
CONTEXT = RunContext(data_version="data-chan1", orchestrator_run_id="dagster-run-9", asset_key="chan_model")
DAY = "2026-01-01"
PROJECTION = np.random.default_rng(3).normal(size=(3, FEATURE_DIM)).astype(np.float32)


def three_shot_video() -> np.ndarray:
    rng = np.random.default_rng(0)
    shots = []
    for colour in ((220, 40, 40), (40, 200, 40), (40, 40, 220)):
        background = np.clip(np.array(colour) + rng.normal(0, 12, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
        shots.append(np.repeat(background[None], SHOT_FRAMES, axis=0))
    return np.concatenate(shots)


def fake_image_encoder(frame: pd.DataFrame) -> pd.DataFrame:
    """The pyfunc contract with a known answer: each frame's mean colour, projected."""
    vectors = [np.asarray(Image.open(io.BytesIO(decode_base64_image(image))), np.float32).mean((0, 1)) / 255
               @ PROJECTION for image in frame["image"]]
    return pd.DataFrame({"embedding": vectors})


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """data/raw with one video, storage/ with its validated row, frames and shot features."""
    root = tmp_path_factory.mktemp("chan_project")
    raw, storage = root / "raw", root / "storage"
    (raw / "videos").mkdir(parents=True)
    write_mp4(raw / "videos" / "v0.mp4", three_shot_video(), FPS, SIDE)
    videos = pd.DataFrame({"video_id": ["v0"], "video_path": ["videos/v0.mp4"], "created_at": [DAY]})
    extract_frames(videos, raw, storage / "frames" / DAY, FrameConfig(sample_fps=2.0, size=SIDE))
    (storage / "validated" / "videos").mkdir(parents=True)
    videos.to_parquet(storage / "validated" / "videos" / f"{DAY}.parquet")
    update_frame_features(storage, [DAY], PyfuncImageEncoder("pinclip", "1", predict=fake_image_encoder))
    shots = update_shot_features(storage, [DAY], "pinclip", "1")
    assert len(shots) == 3, shots.index  # the cuts were found
    return SimpleNamespace(raw=raw, storage=storage, shots=shots)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, text_tower_dir):
    """A SQLite tracking store with an (untrained) tiny CHAN logged and registered once."""
    root = tmp_path_factory.mktemp("mlflow")
    torch.manual_seed(0)
    model = CHAN(MODEL, CONCEPTS).eval()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        env.setenv("MMPIPE_MLFLOW_ARTIFACTS", str(root / "mlruns"))
        with start_run("chan-test", "tiny", CONTEXT):
            model_uri, version = log_chan(model, BUDGET, text_tower_dir, CONTEXT, text_max_length=TEXT_MAX_LENGTH)
        yield SimpleNamespace(model=model, model_uri=model_uri, version=version, root=root)


@pytest.fixture(scope="module")
def served(registry):
    return mlflow.pyfunc.load_model(registry.model_uri)


def direct_scores(model: CHAN, text_tower, query: str, features: np.ndarray) -> np.ndarray:
    """CHAN called the way training calls it: the reference the pyfunc must match."""
    text = encode_texts([query], *text_tower, max_length=TEXT_MAX_LENGTH)
    with torch.no_grad():
        logits = model(torch.from_numpy(features)[None], torch.ones(1, len(features), dtype=torch.bool),
                       text.hidden, text.mask)
    return torch.sigmoid(logits)[0].numpy()


def test_registered_version_has_the_challenger_alias_signature_and_budget(registry):
    version = configure().get_model_version_by_alias("chan", "challenger")
    assert str(version.version) == registry.version and version.tags["data_version"] == "data-chan1"
    info = mlflow.models.get_model_info(version_uri(registry.version))
    assert set(info.signature.inputs.input_names()) == {"query", "shot_vectors", "shot_seconds"}
    assert [column.required for column in info.signature.inputs.inputs] == [True, True, False]
    assert set(info.signature.outputs.input_names()) == {"scores", "selected"}
    assert info.metadata["budget"] == {"shots_share": 0.4} and info.metadata["shot_dim"] == SHOT_DIM
    assert info.metadata["frame_extremes"] and info.metadata["concepts"] == ["blue", "green", "red"]
    summarizer = load_summarizer(registry.model_uri)
    assert summarizer.budget == BUDGET and summarizer.model.concepts == CONCEPTS


def test_served_scores_equal_the_model_called_directly_and_select_under_the_budget(served, registry, text_tower):
    rng = np.random.default_rng(0)
    features = [rng.normal(size=(n, SHOT_DIM)).astype(np.float32) for n in (5, 3)]
    result = served.predict(make_pyfunc_input(["red, striped", "circle"], features))
    for row, (query, shots) in enumerate(zip(["red, striped", "circle"], features)):
        expected = direct_scores(registry.model, text_tower, query, shots)
        np.testing.assert_allclose(result["scores"].iat[row], expected, atol=1e-5)
        best_first = np.argsort(-expected, kind="stable")
        assert result["selected"].iat[row] == sorted(best_first[:BUDGET.max_shots(len(shots))])


def test_a_seconds_budget_selects_by_the_given_durations(served, registry, text_tower, monkeypatch):
    monkeypatch.setattr(served.unwrap_python_model().embedder, "budget", LengthBudget(seconds=3.0))
    shots = np.random.default_rng(1).normal(size=(4, SHOT_DIM)).astype(np.float32)
    with pytest.raises(ValueError, match="row 0: the model's budget is 3 s: give shot_seconds"):
        served.predict(make_pyfunc_input(["red"], [shots], [None]))
    durations = np.array([1.0, 2.5, 1.0, 1.0])
    result = served.predict(make_pyfunc_input(["red"], [shots], [durations]))
    order = np.argsort(-direct_scores(registry.model, text_tower, "red", shots), kind="stable")
    kept, total = [], 0.0
    for shot in order:  # the best shots that still fit in 3 s
        if total + durations[shot] <= 3.0:
            kept.append(int(shot))
            total += durations[shot]
    assert result["selected"].iat[0] == sorted(kept)


def test_bad_inputs_are_rejected_with_a_clear_error(served):
    shots = np.zeros((3, SHOT_DIM), np.float32)
    with pytest.raises(MlflowException, match=r"missing inputs \['shot_vectors'\]"):
        served.predict(pd.DataFrame({"query": ["red"]}))
    with pytest.raises(ValueError, match=r"row 0: shot vectors must be \[N >= 1, 24\]"):
        served.predict(make_pyfunc_input(["red"], [np.zeros((3, 5), np.float32)]))
    with pytest.raises(ValueError, match="row 1: the query is empty"):
        served.predict(make_pyfunc_input(["red", " "], [shots, shots]))
    with pytest.raises(ValueError, match="row 0 shot_vectors is not a base64 .npy array"):
        served.predict(pd.DataFrame({"query": ["red"], "shot_vectors": ["not an array"]}))


def test_the_pipeline_refuses_a_version_whose_text_tower_is_not_its_cache(registry, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{registry.root / 'mlflow.db'}")
    with pytest.raises(ValueError, match="its text tower is not the packaged MiniLM"):
        load_version_model(registry.version)


def test_cli_writes_the_chosen_shots_as_an_mp4_and_prints_their_times(project, registry, served, monkeypatch,
                                                                       capsys, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{registry.root / 'mlflow.db'}")
    out, summary_file = tmp_path / "summary.mp4", tmp_path / "summary.json"
    assert cli.main(["summarize", "--video", "v0", "--query", "green", "--out", str(out), "--storage",
                     str(project.storage), "--raw", str(project.raw), "--json", str(summary_file)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    features = read_shot_features(project.storage, [DAY])
    vectors = shot_vectors("v0", features.index, features.embedding, read_frame_features(project.storage, [DAY]))
    assert vectors.shape == (3, SHOT_DIM)
    scores = served.predict(make_pyfunc_input(["green"], [vectors]))["scores"].iat[0]
    best = int(np.argmax(scores))  # one shot of three under the 40% budget
    start, end = features.index["start_s"].iat[best], features.index["end_s"].iat[best]
    assert lines[0].split()[:4] == ["shot", str(features.index["shot_id"].iat[best]), f"{start:.2f}s", f"{end:.2f}s"]
    assert lines[-1].startswith("1 shots") and str(out) in lines[-1]
    frames, times = decode_video(out, FPS, SIDE)
    assert len(frames) == round((end - start) * FPS) and times[-1] < end - start
    original, _ = decode_video(project.raw / "videos" / "v0.mp4", FPS, SIDE)
    kept = original[int(round(start * FPS))]
    assert np.abs(frames[0].astype(int) - kept.astype(int)).mean() < 12  # the same picture, re-encoded
    (summary,) = read_summaries(summary_file)
    assert summary.video_id == "v0" and summary.query == "green" and summary.shot_ids == [best]

    assert cli.main(["summarize", "--video", "v0", "--query", "green", "--out", str(out), "--share", "1.0",
                     "--storage", str(project.storage), "--raw", str(project.raw)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("3 shots, 6.00s")
    assert len(decode_video(out, FPS, SIDE)[0]) == 3 * SHOT_FRAMES


def test_cli_says_what_is_missing(project, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'nothing.db'}")
    args = ["summarize", "--video", "v0", "--query", "red", "--out", str(tmp_path / "s.mp4"),
            "--storage", str(project.storage), "--raw", str(project.raw)]
    with pytest.raises(SystemExit, match="no MLflow tracking store"):
        cli.main(args)
    with pytest.raises(SystemExit, match="video 'v9' is not among the validated videos"):
        cli.main([*args[:2], "v9", *args[3:]])
    with pytest.raises(SystemExit, match="shots_share must be in"):
        cli.main([*args, "--share", "2"])
    assert not (tmp_path / "s.mp4").exists()
