"""The moment model as a registered MLflow pyfunc, its held-out predictions as JSONL, and
``mmpipe moment`` over a stored video's frame features (a tiny text tower, a throwaway
SQLite store)."""

from __future__ import annotations

import io
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mmpipe import cli
from mmpipe.eval.moment import PREDICTION_KEY, evaluate_files, read_jsonl
from mmpipe.media.features import PyfuncImageEncoder, read_frame_features, update_frame_features
from mmpipe.media.frames import INDEX_FILE
from mmpipe.nn.text_tower import encode_texts
from mmpipe.registry.mlflow_registry import RunContext, start_run
from mmpipe.registry.pyfunc import decode_base64_image
from mmpipe.systems.moment.data import TEST, VALIDATION
from mmpipe.systems.moment.model import DecodeConfig, MomentConfig, MomentModel, decode_query
from mmpipe.systems.moment.serve import (MomentPyfunc, load_predictor, load_version, log_moment, make_pyfunc_input,
                                         write_predictions)
from mmpipe.systems.moment.train import predict_spans, score_spans
from tests.test_moment_model import synthetic_inputs
from tests.test_pinclip_registry import text_tower, text_tower_dir  # noqa: F401  fixtures: a tiny text tower

TEXT_MAX_LENGTH = 16
FRAMES = {"encoder": "pinclip", "version": "7", "step_s": 0.5}
DECODE = DecodeConfig(top_k=5)
CONTEXT = RunContext(data_version="data-moment1", orchestrator_run_id="dagster-run-9", asset_key="moment_model")
DAY = "2026-01-05"
COLOURS = {"v1": [(200, 30, 30)] * 6 + [(30, 30, 200)] * 6, "v2": [(30, 200, 30)] * 10}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = MomentConfig(frame_dim=3, text_hidden_size=32, width=16, depth=1, heads=2, mlp=32, dropout=0.0)
    return MomentModel(config).eval()


@pytest.fixture(scope="module")
def registry(tmp_path_factory, model, text_tower_dir):
    """A SQLite tracking store with the tiny moment model logged and registered once."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        env.setenv("MMPIPE_MLFLOW_ARTIFACTS", str(root / "mlruns"))
        with start_run("moment-test", "tiny", CONTEXT):
            model_uri, version = log_moment(model, DECODE, FRAMES, text_tower_dir, CONTEXT,
                                            text_max_length=TEXT_MAX_LENGTH)
        yield SimpleNamespace(model_uri=model_uri, version=version, root=root)


def direct_spans(model, text_tower, query: str, frames: np.ndarray, times: np.ndarray, duration: float):
    """The model called the way training calls it: the reference the pyfunc must match."""
    text = encode_texts([query], *text_tower, max_length=TEXT_MAX_LENGTH)
    with torch.no_grad():
        mask = torch.ones(1, len(frames), dtype=torch.bool)
        out = model(torch.from_numpy(frames)[None], mask, text.hidden, text.mask)
    column = [None if t is None else t[0].numpy() for t in (out.segmentation, out.start, out.end, out.offsets)]
    return decode_query(times, duration, FRAMES["step_s"], DECODE, *column)


def test_served_spans_equal_the_model_called_directly(registry, model, text_tower):
    rng = np.random.default_rng(0)
    frames = [rng.standard_normal((n, 3)).astype(np.float32) for n in (8, 12)]
    times = [np.arange(len(f)) * 0.5 for f in frames]
    queries = ["a red square", "the blue star that spins"]
    served = mlflow.pyfunc.load_model("models:/moment@challenger")
    out = served.predict(make_pyfunc_input(queries, frames, times, [4.0, 6.0]))
    for row, (query, f, t, duration) in enumerate(zip(queries, frames, times, [4.0, 6.0])):
        expected = direct_spans(model, text_tower, query, f, t, duration)
        np.testing.assert_allclose(np.asarray(out[PREDICTION_KEY][row]), np.asarray(expected), rtol=1e-5, atol=1e-6)
        assert 1 <= len(expected) <= DECODE.top_k
    info = mlflow.models.get_model_info(registry.model_uri)
    assert info.metadata["frame_encoder"] == "pinclip" and info.metadata["frame_encoder_version"] == "7"


def test_bad_inputs_and_other_frame_features_are_refused(registry):
    served = mlflow.pyfunc.load_model(registry.model_uri)
    with pytest.raises(ValueError, match="missing input columns \\['frame_t_s'\\]"):
        served.unwrap_python_model().predict(None, pd.DataFrame({"query": ["x"], "frame_embeddings": [[[0.0] * 3]]}))
    with pytest.raises(ValueError, match="frame_embeddings must be \\[T, 3\\]"):
        served.predict(make_pyfunc_input(["x"], [np.zeros((4, 5))], [np.arange(4) * 0.5]))
    with pytest.raises(ValueError, match="query is empty"):
        served.predict(make_pyfunc_input([" "], [np.zeros((4, 3))], [np.arange(4) * 0.5]))
    with pytest.raises(ValueError, match="by pinclip v7, these are by pinclip v8.*packaged MiniLM"):
        load_version(registry.version, "pinclip", "8")
    assert isinstance(load_predictor(registry.model_uri).model, MomentModel)
    assert MomentPyfunc is type(mlflow.pyfunc.load_model(registry.model_uri).unwrap_python_model())


def test_predictions_jsonl_score_as_the_spans_themselves(tmp_path):
    inputs = synthetic_inputs(n_videos=30)
    torch.manual_seed(0)
    model = MomentModel(MomentConfig(width=16, depth=1, heads=2, mlp=32).with_frame_dim(inputs.frame_dim)).eval()
    counts = write_predictions(model, DECODE, inputs, tmp_path, (VALIDATION, TEST))
    assert counts == {VALIDATION: len(inputs.query_rows(VALIDATION)), TEST: len(inputs.query_rows(TEST))}
    rows = inputs.query_rows(TEST)
    expected = score_spans(inputs, rows, predict_spans(model, inputs, rows, DECODE)).metrics()
    metrics = evaluate_files(tmp_path / "test.jsonl", tmp_path / "test_gt.jsonl")
    assert metrics.pop("n_queries") == len(rows)
    assert metrics == pytest.approx(expected, abs=1e-4)  # the file keeps 4 decimals of each bound
    line = read_jsonl(tmp_path / "test_gt.jsonl")[0]
    assert set(line) == {"qid", "query", "vid", "relevant_windows", "duration"}


def _png_colour(value: str) -> list[float]:
    with Image.open(io.BytesIO(decode_base64_image(value))) as image:
        return (np.asarray(image.convert("RGB"), dtype=np.float32).mean((0, 1)) / 255).tolist()


@pytest.fixture
def project(tmp_path, registry):
    """A project root whose storage holds one day's frames and their features by pinclip v7
    (a frame's feature is its mean colour)."""
    day_dir = tmp_path / "storage" / "frames" / DAY
    day_dir.mkdir(parents=True)
    rows = []
    for video_id, colours in COLOURS.items():
        np.save(day_dir / f"{video_id}.npy", np.stack([np.full((8, 8, 3), c, np.uint8) for c in colours]))
        rows += [{"video_id": video_id, "frame_index": i, "t_s": i * 0.5, "shot_id": 0, "is_blank": False}
                 for i in range(len(colours))]
    pd.DataFrame(rows).to_parquet(day_dir / INDEX_FILE)

    def predict(frame):
        return pd.DataFrame({"embedding": [_png_colour(value) for value in frame["image"]]})

    update_frame_features(tmp_path / "storage", [DAY], PyfuncImageEncoder("pinclip", "7", predict=predict))
    return tmp_path


def test_cli_moment_prints_the_top_spans_of_a_stored_video(project, monkeypatch, capsys, model, text_tower):
    monkeypatch.setenv("MMPIPE_ROOT", str(project))
    assert cli.main(["moment", "--video", "v1", "--query", "the blue square", "--k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    spans = [[float(cell.rstrip("s")) for cell in line.split()] for line in lines]
    features = read_frame_features(project / "storage", encoder="pinclip", version="7").of_video("v1")
    expected = direct_spans(model, text_tower, "the blue square", features, np.arange(12) * 0.5,
                             5.5 + 0.25)  # no duration given: the last frame plus half a step
    assert len(spans) == 3
    np.testing.assert_allclose(spans, np.asarray(expected[:3]), atol=6e-3)  # printed to 2 and 4 decimals
    with pytest.raises(SystemExit, match="video 'v9' has no frame features by pinclip v7"):
        cli.main(["moment", "--video", "v9", "--query", "anything"])
