"""Round trip: a trained semantic-ID model registered in MLflow, loaded back by version,
writes a day's behavior embeddings and unique semantic IDs; a later day avoids the IDs the
earlier days hold."""

import numpy as np
import pandas as pd
import pytest
import torch

from mmpipe.registry.mlflow_registry import RunContext, start_run
from mmpipe.systems.semantic_id.data import semantic_id_inputs
from mmpipe.systems.semantic_id.model import CodebookConfig, EncoderConfig, SemanticIDConfig
from mmpipe.systems.semantic_id.serve import (BEHAVIOR, CODEBOOK_VERSION, COLLIDED, day_behavior_embeddings,
                                              day_semantic_ids, level_column, load_version_coder, log_semantic_id,
                                              taken_ids, write_day_semantic_ids)
from mmpipe.systems.semantic_id.train import SemanticIDSettings, SemanticIDTrainConfig, train_semantic_id

torch.set_num_threads(1)
CONTEXT = RunContext(data_version="data-sid", orchestrator_run_id="dagster-run-1", asset_key="semantic_id_codebook")


def synthetic_inputs(n_days=10, per_day=30, dim=16, seed=0):
    """Pins of a few tastes; users click pins of their taste, so co-clicks share a taste."""
    rng = np.random.default_rng(seed)
    days = [f"2026-01-{d + 1:02d}" for d in range(n_days)]
    n = n_days * per_day
    taste = rng.integers(0, 4, n)
    centres = rng.normal(size=(4, dim))
    fused = (centres[taste] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)
    pins = pd.DataFrame({"pin_id": [f"p{i:04d}" for i in range(n)], "created_at": np.repeat(days, per_day)})
    rows = []
    for user in range(40):
        liked = np.flatnonzero(taste == user % 4)
        for pick in rng.choice(liked, 12, replace=False):
            day = max(days.index(pins["created_at"][pick]), int(rng.integers(0, n_days)))
            rows.append({"user_id": f"u{user}", "pin_id": pins["pin_id"][pick], "date": days[day], "clicked": 1})
    return pins, pd.DataFrame(rows), fused


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    root = tmp_path_factory.mktemp("sid-registry")
    pins, interactions, fused = synthetic_inputs()
    inputs = semantic_id_inputs(pins, interactions, pins["pin_id"].tolist(), fused, ["3"] * len(pins))
    settings = SemanticIDSettings(
        model=SemanticIDConfig(EncoderConfig(hidden=16), CodebookConfig(hidden=16, latent=4, levels=2, codes=4)),
        train=SemanticIDTrainConfig(encoder_steps=10, codebook_steps=20, pair_batch_size=16, codebook_batch_size=64,
                                    warmup_steps=2, validate_every=10, checkpoint_every=50))
    model, _ = train_semantic_id(settings, inputs, None)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        env.setenv("MMPIPE_MLFLOW_ARTIFACTS", str(root / "mlruns"))
        with start_run("semantic-id-test", "tiny", CONTEXT):
            _, version = log_semantic_id(model, inputs.pinclip_version, CONTEXT)
        coder = load_version_coder(version)
    return model, coder, version, pins, fused, root


def test_registered_version_serves_what_was_trained(registered):
    model, coder, version, pins, fused, _ = registered
    assert coder.pinclip_version == "3" and coder.levels == 2
    direct = model.encoder(torch.from_numpy(fused[:5])).detach().numpy()
    assert np.allclose(coder.behavior(fused[:5]), direct, atol=1e-6)
    with pytest.raises(ValueError, match="fused embeddings must be"):
        coder.behavior(fused[:, :3])


def test_days_get_unique_ids_and_a_new_day_avoids_earlier_ones(registered, tmp_path):
    _, coder, version, pins, fused, _ = registered
    directory = tmp_path / "semantic_ids"
    taken = set()
    frames = []
    for day in sorted(pins["created_at"].unique())[:3]:
        rows = np.flatnonzero(pins["created_at"].to_numpy() == day)
        ids = pins["pin_id"].iloc[rows].tolist()
        behavior_frame = day_behavior_embeddings(coder, ids, [day] * len(ids), fused[rows], ["3"] * len(ids), version)
        behavior = np.stack(behavior_frame[BEHAVIOR].to_numpy())
        day_taken = taken_ids(directory, version, coder.levels)
        frame = day_semantic_ids(coder, ids, [day] * len(ids), behavior, version, day_taken)
        write_day_semantic_ids(frame, directory, day)
        frames.append(pd.read_parquet(directory / f"created_at={day}.parquet"))
    table = pd.concat(frames)
    assert list(table.columns) == ["pin_id", "created_at", level_column(0), level_column(1), COLLIDED, CODEBOOK_VERSION]
    assert (table[CODEBOOK_VERSION] == version).all()
    # 4 x 4 = 16 IDs for 90 pins: each prefix fills up, then pins keep their nearest code, flagged
    unique = table[~table[COLLIDED]]
    assert not unique[[level_column(0), level_column(1)]].duplicated().any()
    assert len(unique) <= 16 and len(unique) >= 8
    with pytest.raises(ValueError, match="retrain semantic_id"):
        day_behavior_embeddings(coder, ["x"], ["2026-01-01"], fused[:1], ["4"], version)
