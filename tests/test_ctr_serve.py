"""Round trip: a trained CTR model registered in MLflow, loaded back by version, scores
serving frames as the trained model scores the same impressions; a model of another item
table or codebook version is refused for scoring."""

import numpy as np
import pandas as pd
import pytest
import torch

from mmpipe.registry.mlflow_registry import RunContext, start_run
from mmpipe.systems.ctr.data import DataSettings, ItemTable, ctr_inputs
from mmpipe.systems.ctr.model import CTRConfig
from mmpipe.systems.ctr.serve import CTRScorer, load_version_model, load_version_scorer, log_ctr
from mmpipe.systems.ctr.train import CTRSettings, CTRTrainConfig, predict, train_ctr

torch.set_num_threads(1)
CONTEXT = RunContext(data_version="data-ctr", orchestrator_run_id="dagster-run-1", asset_key="ctr_model")


def tiny_inputs(seed=0, n_items=60, n_users=12, days=10, per_day=80, version="v1"):
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2026-01-01", periods=days).strftime("%Y-%m-%d")
    created = np.sort(rng.integers(0, days, n_items))
    rows = []
    for day in range(days):
        items = rng.choice(np.flatnonzero(created <= day), per_day)
        rows.append(pd.DataFrame({"user_id": [f"u{u}" for u in rng.integers(0, n_users, per_day)],
                                  "pin_id": [f"p{i}" for i in items], "date": dates[day],
                                  "position": rng.integers(0, 6, per_day), "clicked": rng.integers(0, 2, per_day)}))
    interactions = pd.concat(rows, ignore_index=True)
    interactions["impression_id"] = [f"i{k:05d}" for k in range(len(interactions))]
    pins = pd.DataFrame({"pin_id": [f"p{i}" for i in range(n_items)], "created_at": dates[created]})
    users = pd.DataFrame({"user_id": [f"u{u}" for u in range(n_users)], "country": ["US", "FR"] * (n_users // 2),
                          "signup_date": "2025-06-01"})
    items = ItemTable(pins["pin_id"].tolist(), rng.normal(size=(n_items, 6)).astype(np.float32),
                      rng.integers(0, 4, size=(n_items, 2)), 4, "fused", version)
    saves = pd.DataFrame({"pin_id": pd.Series([], dtype=str), "saved_at": pd.Series([], dtype=str)})
    return ctr_inputs(interactions, pins, saves, users, items, DataSettings(history_length=5, item_buckets=512,
                                                                             user_buckets=64))


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctr-registry")
    inputs = tiny_inputs()
    settings = CTRSettings(model=CTRConfig(id_dim=4, semantic_id_dim=2, multimodal_dim=4, user_dim=4, taste_dim=4,
                                           hidden=8), data=inputs.settings, embedding="fused",
                           train=CTRTrainConfig(steps=20, batch_size=32, warmup_steps=2, validate_every=10))
    model, _ = train_ctr(settings, inputs)
    scorer = CTRScorer(model, inputs.items.ids, inputs.countries, inputs.settings, "v1", "fused")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        env.setenv("MMPIPE_MLFLOW_ARTIFACTS", str(root / "mlruns"))
        with start_run("ctr-test", "tiny", CONTEXT):
            _, version = log_ctr(scorer, CONTEXT)
        loaded = load_version_scorer(version)
        yield model, loaded, version, inputs


def test_registered_version_scores_what_was_trained(registered):
    model, loaded, _, inputs = registered
    rows = inputs.rows("test")[:20]
    frame = inputs.impressions.iloc[rows]
    history = [[inputs.items.ids[r] for r in h if r >= 0] for h in inputs.history[rows]]
    users = pd.DataFrame({"user_id": [f"u{u}" for u in range(12)], "country": ["US", "FR"] * 6}).set_index("user_id")
    served = loaded.predict(pd.DataFrame({
        "user_id": frame["user_id"].to_numpy(), "pin_id": frame["pin_id"].to_numpy(),
        "position": frame["position"].to_numpy(), "history": history,
        "country": users.loc[frame["user_id"], "country"].to_numpy(), "signup_date": "2025-06-01",
        "date": frame["date"].to_numpy()}))
    assert np.allclose(served, predict(model, inputs, rows), atol=1e-5)


def test_another_codebook_version_is_refused(registered):
    _, _, version, inputs = registered
    assert load_version_model(version, inputs) is not None
    with pytest.raises(ValueError, match="codebook version"):
        load_version_model(version, tiny_inputs(version="v2"))
