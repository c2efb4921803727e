"""The CTR model's parts: zero-initialised residual codebooks and ID rows, per-level tables
shared by equal codes, DIN attention that ignores padding, histories that never look
ahead, and a learning test where content decides the clicks: on cold items the full model
beats the ID-only one."""

import numpy as np
import pandas as pd
import pytest
import torch

from mmpipe.eval.classification import roc_auc
from mmpipe.systems.ctr.data import DataSettings, ItemTable, ctr_inputs, histories
from mmpipe.systems.ctr.model import CTRConfig, CTRModel, TargetAttention
from mmpipe.systems.ctr.train import CTRSettings, CTRTrainConfig, predict, train_ctr

torch.set_num_threads(1)


def small_model(**overrides) -> CTRModel:
    config = CTRConfig(n_items=6, embedding_dim=4, levels=2, codes=3, item_buckets=64, user_buckets=16, countries=2,
                       **overrides)
    model = CTRModel(config)
    codes = torch.tensor([[0, 1], [0, 2], [1, 1], [2, 0], [0, 1], [1, 2]])
    model.items.set_items(torch.arange(6) * 7 % 64, codes, torch.randn(6, 4))
    return model


def test_zero_initialised_residual_codebooks_start_as_the_plain_embedding():
    model = small_model()
    rows = torch.arange(6)
    assert torch.equal(model.items.aligned_embedding(rows), model.items.embedding[rows])
    plain = small_model(residual_codebooks=False)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "residual" not in k}, strict=True)
    batch = dict(target=rows, history=torch.tensor([[0, 1, -1]] * 6), user=torch.arange(6), country=torch.zeros(6, dtype=torch.long),
                 tenure=torch.zeros(6), position=torch.arange(6))
    assert torch.allclose(model(**batch), plain(**batch))


def test_untrained_id_rows_carry_nothing():
    model = small_model(use_semantic_ids=False, use_multimodal=False, residual_codebooks=False)
    assert torch.count_nonzero(model.items(torch.arange(6))) == 0


def test_per_level_tables_are_shared_by_equal_codes():
    model = small_model(use_id=False, use_multimodal=False, residual_codebooks=False)
    vectors = model.items(torch.arange(6))
    d = model.config.semantic_id_dim
    assert torch.equal(vectors[0, :d], vectors[1, :d])  # level 1 code 0 for both
    assert not torch.equal(vectors[0, d:], vectors[1, d:])  # level 2 differs
    assert torch.equal(vectors[0], vectors[4])  # the same semantic ID: the same vector


def test_attention_masks_padding():
    torch.manual_seed(0)
    attention = TargetAttention(4, 8)
    history, target = torch.randn(2, 3, 4), torch.randn(2, 4)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    interest, weights = attention(history, target, mask)
    changed = history.clone()
    changed[0, 2], changed[1, 1:] = 100.0, -100.0  # what sits in padded slots does not matter
    again, _ = attention(changed, target, mask)
    assert torch.allclose(interest, again) and torch.all(weights[mask == 0] == 0)
    assert not torch.allclose(interest, attention(history, target, torch.ones(2, 3))[0])


def test_history_holds_only_clicks_of_earlier_days():
    frame = pd.DataFrame({"impression_id": ["i1", "i2", "i3", "i4", "i5"], "user_id": ["a", "a", "a", "b", "a"],
                          "date": ["2026-01-01", "2026-01-01", "2026-01-02", "2026-01-02", "2026-01-03"],
                          "clicked": [1, 1, 1, 1, 0]})
    rows = np.array([10, 11, 12, 13, 14])
    h = histories(frame, rows, 2)
    assert h.tolist() == [[-1, -1], [-1, -1], [10, 11], [-1, -1], [11, 12]]


def synthetic_world(seed=0, n_items=400, n_users=60, dim=8, days=20, per_day=900):
    """Clicks from σ(-1.5 + 2 * user taste · item content): content decides. Items are
    created through the days, so the last days' items are cold."""
    rng = np.random.default_rng(seed)
    content = rng.normal(size=(n_items, dim)).astype(np.float32)
    taste = rng.normal(size=(n_users, dim)) / np.sqrt(dim)
    created = np.sort(rng.integers(0, days, n_items))
    dates = pd.date_range("2026-01-01", periods=days).strftime("%Y-%m-%d")
    rows = []
    for day in range(days):
        available = np.flatnonzero(created <= day)
        user = rng.integers(0, n_users, per_day)
        item = rng.choice(available, per_day)
        p = 1 / (1 + np.exp(-(-1.5 + 2.0 * np.sum(taste[user] * content[item], 1))))
        rows.append(pd.DataFrame({"user_id": [f"u{u}" for u in user], "pin_id": [f"p{i}" for i in item],
                                  "date": dates[day], "position": rng.integers(0, 5, per_day),
                                  "clicked": (rng.random(per_day) < p).astype(int)}))
    interactions = pd.concat(rows, ignore_index=True)
    interactions["impression_id"] = [f"i{k:06d}" for k in range(len(interactions))]
    pins = pd.DataFrame({"pin_id": [f"p{i}" for i in range(n_items)], "created_at": dates[created]})
    users = pd.DataFrame({"user_id": [f"u{u}" for u in range(n_users)], "country": "US", "signup_date": "2025-01-01"})
    codes = np.stack([(content[:, 0] > 0).astype(int) * 2 + (content[:, 1] > 0), (content[:, 2] > 0) * 1], 1)
    items = ItemTable(pins["pin_id"].tolist(), content, codes.astype(np.int64), 4, "synthetic", "v1")
    board_pins = pd.DataFrame({"pin_id": pd.Series([], dtype=str), "saved_at": pd.Series([], dtype=str)})
    return ctr_inputs(interactions, pins, board_pins, users, items, DataSettings(history_length=10, item_buckets=4096,
                                                                                 user_buckets=256))


@pytest.mark.parametrize("seed", [0])
def test_content_beats_ids_on_cold_items(seed):
    inputs = synthetic_world(seed)
    frame = inputs.impressions
    test = inputs.rows("test")
    cold = frame["cold"].to_numpy()[test]
    assert cold.sum() > 200
    train = CTRTrainConfig(steps=300, batch_size=256, validate_every=100, patience=3, warmup_steps=10)
    aucs = {}
    for name, model in {"id_only": CTRConfig(use_semantic_ids=False, use_multimodal=False, residual_codebooks=False),
                        "full": CTRConfig()}.items():
        trained, _ = train_ctr(CTRSettings(model=model, train=train, data=inputs.settings), inputs)
        p = predict(trained, inputs, test)
        aucs[name] = roc_auc(p[cold], frame["clicked"].to_numpy()[test][cold])
    assert aucs["full"] > aucs["id_only"] + 0.1, aucs


def test_prefix_tables_key_a_level_by_the_codes_above_it():
    model = small_model(use_id=False, use_multimodal=False, residual_codebooks=False, semantic_id_prefix=True)
    rows = model.items.table_rows  # codes [[0,1],[0,2],[1,1],[2,0],[0,1],[1,2]], K = 3
    assert rows[:, 0].tolist() == [0, 0, 1, 2, 0, 1]
    assert rows[:, 1].tolist() == [1, 2, 4, 6, 1, 5]  # c1 * K + c2: items 0 and 2 share c2 = 1, not the prefix
    vectors = model.items(torch.arange(6))
    assert torch.equal(vectors[0], vectors[4]) and not torch.equal(vectors[0, 8:], vectors[2, 8:])


def test_the_ablations_ladder_needs_the_id_only_baseline(tmp_path):
    """The lifecycle passes the main job's baselines beside the sweeps; a ladder without its
    first step is refused by name, not read from a guessed directory."""
    from mmpipe.systems.ctr.eval import evaluate_sweeps

    with pytest.raises(ValueError, match="starts at 'id_only'.*'multimodal'"):
        evaluate_sweeps(None, CTRSettings(), tmp_path / "model", {"multimodal": tmp_path / "multimodal"})


def test_the_gate_holds_cold_items_to_the_id_only_din_within_training_noise():
    """Non-inferiority on cold items, not a strict win: the model and the ID-only DIN are within
    training noise there on the small world, so a small loss passes and a clear one does not;
    overall AUC must not drop at all (the issue's words)."""
    from mmpipe.systems.ctr import SPEC
    from mmpipe.systems.ctr.eval import COLD_NON_INFERIORITY_MARGIN, REQUIREMENTS

    overall, cold = REQUIREMENTS
    assert cold.metric == "auc_over_id_only/cold/validation" and cold.minimum == -COLD_NON_INFERIORITY_MARGIN
    assert cold.unmet({cold.metric: -0.011}) is None  # seed 1's pair on the small world
    assert "-0.03" in cold.unmet({cold.metric: -0.03})
    assert overall.metric == "auc_over_id_only/all/validation"
    assert overall.unmet({overall.metric: 0.0}) is None and overall.unmet({overall.metric: -0.001}) is not None
    assert "id_only" not in SPEC.baselines  # beats_baselines would be the coin flip again


def test_score_gives_the_model_over_id_only_for_every_subset_and_window():
    from mmpipe.systems.ctr.eval import ID_ONLY, MODEL_NAME, REQUIREMENTS, SUBSETS, score

    inputs = synthetic_world(0)
    train = CTRTrainConfig(steps=30, batch_size=256, validate_every=0, warmup_steps=5)
    models = {}
    for name, model in {ID_ONLY: CTRConfig(use_semantic_ids=False, use_multimodal=False, residual_codebooks=False),
                        MODEL_NAME: CTRConfig()}.items():
        models[name], _ = train_ctr(CTRSettings(model=model, train=train, data=inputs.settings), inputs)
    metrics, _, _ = score(models, inputs, n_resamples=20)
    for window in ("validation", "test"):
        for subset in SUBSETS:
            over = metrics[MODEL_NAME][f"auc_over_id_only/{subset}/{window}"]
            assert over == pytest.approx(metrics[MODEL_NAME][f"auc/{subset}/{window}"]
                                         - metrics[ID_ONLY][f"auc/{subset}/{window}"])
            assert metrics[ID_ONLY][f"auc_over_id_only/{subset}/{window}"] == 0.0
    overall, cold = REQUIREMENTS
    assert (cold.unmet(metrics[MODEL_NAME]) is None) == (metrics[MODEL_NAME][cold.metric] >= cold.minimum)
