"""PinCLIP as a registered MLflow pyfunc, and pin search over its embeddings, on a tiny model.

One tiny PinCLIP (with a tuned top text layer, the harder serving path) is logged and
registered once per module into a throwaway SQLite store; the tests then load it back the
way a user would and compare against the model called directly.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from transformers import BertConfig

from mmpipe import cli
from mmpipe.embeddings import read_embeddings
from mmpipe.index.faiss_index import VectorIndex
from mmpipe.systems.pinclip.model import PinCLIP, PinCLIPConfig
from mmpipe.nn.text_tower import encode_texts, load_text_encoder
from mmpipe.registry.mlflow_registry import RunContext, configure, start_run
from mmpipe.systems.pinclip.serve import (
    FUSED,
    IMAGE,
    TEXT,
    PinEmbedder,
    load_embedder,
    log_pinclip,
    make_pyfunc_input,
    read_image,
)
from mmpipe.systems.pinclip.serve import PinSearcher, SearchSetupError
from mmpipe.train.checkpoint import save_checkpoint

TEXT_TOWER = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
MODEL = PinCLIPConfig.tiny(text_hidden_size=32, text_trainable_layers=1)
TEXT_MAX_LENGTH = 16
CONTEXT = RunContext(data_version="data-abc123", orchestrator_run_id="dagster-run-42",
                     asset_key="pinclip_model")

COLOURS = ["crimson", "azure", "golden", "emerald"]
SHAPES = ["disc", "star", "square"]


def noise_image(seed: int, size: int = 40, fmt: str = "JPEG") -> bytes:
    """A distinct random image per seed, so no two pins embed alike."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def text_tower_dir(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer, text_model = load_text_encoder(config=TEXT_TOWER)
    directory = tmp_path_factory.mktemp("text_tower")
    tokenizer.save_pretrained(directory)
    text_model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def text_tower(text_tower_dir):
    return load_text_encoder(text_tower_dir)


@pytest.fixture(scope="module")
def pinclip(text_tower):
    torch.manual_seed(0)
    return PinCLIP(MODEL, text_tower[1]).eval()


@pytest.fixture(scope="module")
def registry(tmp_path_factory, pinclip, text_tower_dir):
    """A SQLite tracking store with ``pinclip`` logged and registered once."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        env.setenv("MMPIPE_MLFLOW_ARTIFACTS", str(root / "mlruns"))
        example = make_pyfunc_input(["crimson disc", None, "azure star"],
                                    [None, noise_image(100), noise_image(101, fmt="PNG")])
        with start_run("pinclip-test", "tiny", CONTEXT):
            model_uri, version = log_pinclip(pinclip, text_tower_dir, CONTEXT, input_example=example,
                                             text_max_length=TEXT_MAX_LENGTH)
        yield SimpleNamespace(model_uri=model_uri, version=version, root=root)


@pytest.fixture(scope="module")
def served(registry):
    return mlflow.pyfunc.load_model("models:/pinclip@challenger")


def direct_embeddings(model, text_tower, texts, images):
    """PinCLIP called the way training calls it: the reference the pyfunc must match."""
    tokenizer, text_model = text_tower
    text = encode_texts([t or "" for t in texts], tokenizer, text_model, max_length=TEXT_MAX_LENGTH,
                        trainable_top_layers=MODEL.text_trainable_layers)
    blank = torch.zeros(3, MODEL.image_size, MODEL.image_size)
    pixels = torch.stack([blank if image is None else read_image(image, MODEL.image_size)
                          for image in images])
    with torch.no_grad():
        return model(pixels, text.hidden, text.mask)


def test_registered_version_has_the_challenger_alias_tags_and_signature(registry):
    client = configure()
    version = client.get_model_version_by_alias("pinclip", "challenger")
    assert str(version.version) == registry.version
    assert version.tags["data_version"] == "data-abc123"
    assert version.tags["dagster_run_id"] == "dagster-run-42"
    assert version.tags["git_commit"]

    info = mlflow.models.get_model_info("models:/pinclip@challenger")
    assert info.signature is not None
    assert set(info.signature.inputs.input_names()) == {"text", "image"}
    assert not any(column.required for column in info.signature.inputs.inputs)
    assert set(info.signature.outputs.input_names()) == {"embedding", "kind"}
    assert info.metadata["text_model"] == "artifact"  # a custom tower travels with the model
    assert info.saved_input_example_info is not None


def test_served_embeddings_equal_the_model_called_directly(served, pinclip, text_tower):
    texts = ["crimson striped disc", None, "azure star", "", "golden square"]
    images = [None, noise_image(1), noise_image(2, fmt="PNG"), noise_image(3), noise_image(4)]
    frame = make_pyfunc_input(texts, images)
    frame.loc[3, "text"] = np.nan  # missing values may arrive as NaN

    result = served.predict(frame)
    assert result["kind"].tolist() == [TEXT, IMAGE, FUSED, IMAGE, FUSED]
    embeddings = np.stack(result["embedding"].to_numpy())
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)

    expected = direct_embeddings(pinclip, text_tower, texts, images)
    by_kind = {TEXT: expected.text_emb, IMAGE: expected.image_emb, FUSED: expected.fused_emb}
    for row, kind in enumerate(result["kind"]):
        np.testing.assert_allclose(embeddings[row], by_kind[kind][row].numpy(), atol=1e-5,
                                   err_msg=f"row {row} ({kind})")


def test_bad_inputs_are_rejected_with_a_clear_error(served):
    with pytest.raises(ValueError, match="row 1: image is not valid base64"):
        served.predict(pd.DataFrame({"text": ["a", None], "image": [None, "not base64!"]}))
    not_an_image = make_pyfunc_input([None], [b"plain text, not a JPEG"])
    with pytest.raises(ValueError, match="row 0: image is not a decodable JPEG/PNG"):
        served.predict(not_an_image)
    with pytest.raises(ValueError, match="row 0 has neither text nor image"):
        served.predict(pd.DataFrame({"text": [None], "image": [None]}))


def test_checkpoint_with_frozen_text_tower_embeds_like_the_model(tmp_path, text_tower, text_tower_dir):
    config = PinCLIPConfig.tiny(text_hidden_size=32)
    torch.manual_seed(1)
    model = PinCLIP(config).eval()
    save_checkpoint(tmp_path / "checkpoint", model, None, step=3,
                    config={"model": config.to_dict(), "train": {}})
    embedder = load_embedder(tmp_path / "checkpoint", text_tower_dir, text_max_length=TEXT_MAX_LENGTH)
    texts, images = ["emerald disc", "golden star"], [noise_image(5), noise_image(6)]

    tokenizer, text_model = text_tower
    text = encode_texts(texts, tokenizer, text_model, max_length=TEXT_MAX_LENGTH)
    pixels = torch.stack([read_image(image, config.image_size) for image in images])
    with torch.no_grad():
        expected = model(pixels, text.hidden, text.mask)
    np.testing.assert_allclose(embedder.encode_texts(texts), expected.text_emb.numpy(), atol=1e-5)
    np.testing.assert_allclose(embedder.encode_images(images), expected.image_emb.numpy(), atol=1e-5)
    np.testing.assert_allclose(embedder.encode_pins(texts, images), expected.fused_emb.numpy(), atol=1e-5)


# ---------------------------------------------------------------------------------------
# search


@pytest.fixture(scope="module")
def project(tmp_path_factory, registry):
    """A project root holding what the pipeline writes for search, from the registered model."""
    root = tmp_path_factory.mktemp("project")
    embedder = load_embedder(registry.model_uri)
    ids = [f"p{i:06d}" for i in range(12)]
    titles = [f"{COLOURS[i % 4].title()} {SHAPES[i % 3]}" for i in range(12)]
    descriptions = [f"A {COLOURS[i % 4]} {SHAPES[i % 3]} pattern." if i % 5 else None for i in range(12)]
    images = [noise_image(1000 + i) for i in range(12)]
    captions = [f"{t}. {d}" if d else t for t, d in zip(titles, descriptions)]
    vectors = {IMAGE: embedder.encode_images(images), TEXT: embedder.encode_texts(captions),
               FUSED: embedder.encode_pins(captions, images)}

    storage = root / "storage"
    (storage / "validated").mkdir(parents=True)
    pd.DataFrame({"pin_id": ids, "title": titles, "description": descriptions}).to_parquet(
        storage / "validated" / "pins.parquet")
    (storage / "embeddings" / "pins").mkdir(parents=True)
    for day, rows in [("2026-01-01", slice(0, 7)), ("2026-01-02", slice(7, 12))]:
        # The layout the pin_embeddings asset writes: one list-of-floats column per kind.
        partition = pd.DataFrame({"pin_id": ids[rows], **{kind: list(v[rows]) for kind, v in vectors.items()}})
        partition.to_parquet(storage / "embeddings" / "pins" / f"{day}.parquet")
    for kind in (IMAGE, FUSED):
        VectorIndex.build(vectors[kind], ids).save(storage / "index" / "pins" / kind)
    return SimpleNamespace(root=root, ids=ids, images=images, captions=captions, vectors=vectors,
                           embedder=embedder)


def test_pin_embeddings_read_back_from_partitions(project):
    ids, fused = read_embeddings(project.root / "storage/embeddings/pins", FUSED)
    assert ids == project.ids
    np.testing.assert_array_equal(fused, project.vectors[FUSED])
    ids, image = read_embeddings(project.root / "storage/embeddings/pins", IMAGE, ids=["p000009"])
    assert ids == ["p000009"] and np.array_equal(image[0], project.vectors[IMAGE][9])


def test_search_finds_a_pins_own_image_first_and_excludes_a_pin_from_its_neighbors(project):
    searcher = PinSearcher(project.embedder, index_dir=project.root / "storage/index/pins",
                           pins_table_path=project.root / "storage/validated/pins.parquet",
                           embeddings=project.root / "storage/embeddings/pins")
    own = searcher.search_image(project.images[4], k=3)
    assert own["pin_id"].iloc[0] == "p000004" and own["score"].iloc[0] == pytest.approx(1.0, abs=1e-5)
    assert own["caption"].iloc[0] == project.captions[4]

    neighbors = searcher.search_pin("p000004", k=5)
    assert len(neighbors) == 5 and "p000004" not in neighbors["pin_id"].tolist()
    fused = project.vectors[FUSED]
    expected = np.argsort(-(fused @ fused[4]))[1:6]
    assert neighbors["pin_id"].tolist() == [project.ids[i] for i in expected]

    # A text query is scored against image embeddings (see mmpipe/search.py).
    hits = searcher.search_text("crimson disc", k=4)
    query = project.embedder.encode_texts(["crimson disc"])[0]
    np.testing.assert_allclose(hits["score"], np.sort(project.vectors[IMAGE] @ query)[::-1][:4], atol=1e-5)

    with pytest.raises(KeyError, match="p999999"):
        searcher.search_pin("p999999")


def test_cli_search_prints_k_lines_with_the_registered_model(project, monkeypatch, capsys):
    monkeypatch.setenv("MMPIPE_ROOT", str(project.root))
    assert cli.main(["search", "--text", "golden star", "--k", "3"]) == 0  # @champion unset: challenger
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    pin_id, score, caption = lines[0].split("  ", 2)
    assert pin_id in project.ids and -1.0 <= float(score) <= 1.0
    assert caption == project.captions[project.ids.index(pin_id)]

    assert cli.main(["search", "--pin", "p000002", "--k", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and not any(line.startswith("p000002") for line in lines)


def test_cli_search_says_what_to_do_when_artifacts_are_missing(tmp_path, monkeypatch, project):
    monkeypatch.setenv("MMPIPE_ROOT", str(tmp_path))
    with pytest.raises(SystemExit, match="no pin embeddings .*make run"):
        cli.main(["search", "--pin", "p000001"])
    with pytest.raises(SystemExit, match="no image index .*make run"):
        cli.main(["search", "--text", "anything"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'absent.db'}")
    index = str(project.root / "storage" / "index" / "pins")
    with pytest.raises(SystemExit, match="no MLflow tracking store .*make run"):
        cli.main(["search", "--text", "anything", "--index", index])
    assert not (tmp_path / "absent.db").exists()
