"""PinCLIP training loop on the tiny world: it learns, and resume reproduces a straight run."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import BertConfig

from mmpipe.eval.retrieval import retrieval_metrics
from mmpipe.graph.pairs import PairConfig, build_neighbor_pairs
from mmpipe.systems.pinclip.model import PinCLIPConfig
from mmpipe.nn.text_tower import encode_texts, load_text_encoder
from mmpipe.schemas.validate import validate_world
from mmpipe.train.checkpoint import read_trainer_state
from mmpipe.systems.pinclip.data import PinDataset, neighbor_pairs_for_training
from mmpipe.systems.pinclip.train import PinCLIPTrainConfig, TowerCache, embed_images, embed_pins, train_pinclip

MODEL = PinCLIPConfig.tiny(text_hidden_size=32)


@pytest.fixture(scope="module")
def tiny_data(tiny_world):
    results = validate_world(tiny_world)
    pins = results["pins"].valid.reset_index(drop=True)
    dataset = PinDataset(pins, tiny_world, MODEL.image_size).predecode()
    torch.manual_seed(0)
    tokenizer, text_model = load_text_encoder(config=BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
    text = encode_texts(dataset.captions, tokenizer, text_model, max_length=24)
    pairs, _ = build_neighbor_pairs(pins, results["board_pins"].valid,
                                    results["interactions"].valid, PairConfig())
    neighbor_pairs = neighbor_pairs_for_training(pairs, dataset.pin_ids, results["board_pins"].valid)
    return dataset, text, neighbor_pairs


def _cfg(**overrides) -> PinCLIPTrainConfig:
    values = dict(steps=12, batch_size=32, pair_batch_size=16, lr=3e-3, warmup_steps=3,
                  checkpoint_every=4, log_every=2, fusion_steps=0, neighbor_warmup_steps=0,
                  text_neighbor_weight=0.0)
    return PinCLIPTrainConfig(**{**values, **overrides})


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(tiny_data, tmp_path):
    dataset, text, pairs = tiny_data
    rows = np.arange(len(dataset))
    straight = train_pinclip(MODEL, _cfg(), dataset, text, rows, pairs, out_dir=tmp_path / "a")
    interrupted = train_pinclip(MODEL, _cfg(), dataset, text, rows, pairs, out_dir=tmp_path / "b",
                                stop_after=5)
    assert interrupted.steps == 5 and read_trainer_state(tmp_path / "b" / "checkpoint")["step"] == 5
    resumed = train_pinclip(MODEL, _cfg(), dataset, text, rows, pairs, out_dir=tmp_path / "b")
    assert [h["step"] for h in resumed.history] == list(range(6, 13))
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_training_aligns_images_with_their_captions(tiny_data):
    dataset, text, pairs = tiny_data
    rows = np.arange(len(dataset))
    logged = []
    result = train_pinclip(MODEL, _cfg(steps=300, warmup_steps=10, checkpoint_every=10**6),
                           dataset, text, rows, pairs,
                           log=lambda step, metrics: logged.append(step))
    first, last = result.history[0], result.history[-1]
    assert last["loss_clip"] < first["loss_clip"] - 0.5
    assert "loss_neighbor" in last and logged[-1] == 300
    emb = embed_pins(result.model, dataset, text)
    for key in ("image", "text", "fused"):
        np.testing.assert_allclose(np.linalg.norm(emb[key], axis=1), 1.0, atol=1e-5)
    chance = 10 / len(dataset)
    r10 = retrieval_metrics(emb["text"], emb["image"])["R@10"]
    assert r10 > 3 * chance
    # the image-only path (the untrained baseline's) is the same image embedding
    np.testing.assert_allclose(embed_images(result.model, dataset, batch_size=7), emb["image"], atol=1e-5)


def test_ablation_trains_without_pairs(tiny_data):
    dataset, text, _ = tiny_data
    result = train_pinclip(MODEL, _cfg(steps=3, neighbor_weight=0.0), dataset, text,
                           np.arange(len(dataset)), None)
    assert "loss_neighbor" not in result.history[-1]


def test_a_step_serves_both_losses_from_one_batch_of_distinct_pins(tiny_data):
    from mmpipe.systems.pinclip.train import _Batches

    dataset, _, pairs = tiny_data
    train_rows = np.arange(0, len(dataset), 2)  # only even rows may appear as top-up
    train_pairs = [i for i in range(len(pairs)) if pairs.a[i] % 2 == 0 and pairs.b[i] % 2 == 0]
    assert len(train_pairs) >= 8
    from mmpipe.systems.pinclip.data import NeighborPairs
    subset = NeighborPairs(pairs.a[train_pairs], pairs.b[train_pairs],
                           tuple(pairs.keys[i] for i in train_pairs), pairs.group[train_pairs])
    batches = _Batches(train_rows, subset, _cfg(batch_size=24, pair_batch_size=4))
    for step in range(5):
        batch, _ = batches.step_batch(step)
        assert len(batch.rows) == 24 and len(set(batch.rows.tolist())) == 24
        assert set(batch.rows.tolist()) <= set(train_rows.tolist())
        # The pair positions point at the pair's own pins within the step's rows.
        np.testing.assert_array_equal(batch.rows[batch.pair_a], batch.pairs.a.numpy())
        np.testing.assert_array_equal(batch.rows[batch.pair_b], batch.pairs.b.numpy())
        again, _ = batches.step_batch(step)
        np.testing.assert_array_equal(again.rows, batch.rows)


def test_neighbor_weight_ramps_in_linearly():
    from mmpipe.systems.pinclip.train import neighbor_weight_at

    cfg = PinCLIPTrainConfig(neighbor_weight=2.0, neighbor_warmup_steps=10)
    assert [neighbor_weight_at(s, cfg) for s in (0, 5, 10, 50)] == [0.0, 1.0, 2.0, 2.0]
    assert neighbor_weight_at(0, PinCLIPTrainConfig(neighbor_weight=2.0, neighbor_warmup_steps=0)) == 2.0


def test_hybrid_image_tower_trains_and_resumes(tiny_data, tmp_path):
    dataset, text, pairs = tiny_data
    hybrid = PinCLIPConfig.tiny(text_hidden_size=32, stem_channels=16, stem_stride=4, patch_size=2)
    rows = np.arange(len(dataset))
    cfg = _cfg(steps=6, neighbor_warmup_steps=3)
    straight = train_pinclip(hybrid, cfg, dataset, text, rows, pairs, out_dir=tmp_path / "a")
    train_pinclip(hybrid, cfg, dataset, text, rows, pairs, out_dir=tmp_path / "b", stop_after=2)
    resumed = train_pinclip(hybrid, cfg, dataset, text, rows, pairs, out_dir=tmp_path / "b")
    assert [h["neighbor_weight"] for h in straight.history][:4] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("neighbor_loss,fusion_loss,heads", [("boards", "proxies", 1), ("boards", "boards", 2),
                                                             ("proxies", "proxies", 2)])
@pytest.mark.parametrize("stop_at", [4, 6, 8])  # inside the tower phase, at its end, in the fusion phase
def test_fusion_phase_trains_only_the_fusion_and_resumes_exactly(tiny_data, tmp_path, stop_at,
                                                                  neighbor_loss, fusion_loss, heads):
    dataset, text, pairs = tiny_data
    rows = np.arange(len(dataset))
    model = replace(MODEL, n_fusion_heads=heads)
    cfg = _cfg(steps=6, fusion_steps=6, fusion_batch_size=48, fusion_pair_batch_size=12,
               neighbor_loss=neighbor_loss, fusion_loss=fusion_loss)
    straight = train_pinclip(model, cfg, dataset, text, rows, pairs, out_dir=tmp_path / "a")
    assert straight.steps == 12 and "loss_fusion_neighbor" in straight.final
    assert "loss_clip" in straight.final  # the towers' last image-text loss is kept
    train_pinclip(model, cfg, dataset, text, rows, pairs, out_dir=tmp_path / "b", stop_after=stop_at)
    # The board proxies are training state: in the checkpoint once the fusion phase runs,
    # never in the model's own weights.
    aux = tmp_path / "b" / "checkpoint" / "aux.safetensors"
    assert aux.exists() == ("proxies" in (neighbor_loss, fusion_loss))
    assert not any(name.startswith("proxies") for name in straight.model.state_dict())
    resumed = train_pinclip(model, cfg, dataset, text, rows, pairs, out_dir=tmp_path / "b")
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)

    towers_only = train_pinclip(model, replace(cfg, fusion_steps=0), dataset, text, rows, pairs)
    fusion = {name for name, _ in straight.model.named_parameters()
              if name.startswith(("fusion_heads.", "neighbor_logit_scale"))}
    for (name, a), b in zip(straight.model.state_dict().items(), towers_only.model.state_dict().values()):
        if name in fusion:
            continue
        torch.testing.assert_close(a, b, msg=f"{name} moved in the fusion phase")
    moved = [name for name, a in straight.model.state_dict().items()
             if name in fusion and not torch.equal(a, towers_only.model.state_dict()[name])]
    state = straight.model.state_dict()
    for head in range(heads):
        assert f"fusion_heads.{head}.proj.weight" in moved
    if heads > 1:  # independent heads: own init, own batches, own proxies
        assert not torch.allclose(state["fusion_heads.0.proj.weight"], state["fusion_heads.1.proj.weight"])


def test_board_membership_rows_match_the_pins_boards(tiny_data):
    dataset, _, pairs = tiny_data
    assert pairs.n_boards > 0
    rows = np.array(sorted(pairs.boards_of_row)[:10] + [max(pairs.boards_of_row) + 1])
    membership = pairs.board_membership(rows)
    assert membership.shape == (len(rows), pairs.n_boards)
    for i, row in enumerate(rows):
        expected = {key - pairs.board_offset for key in pairs.boards_of_row.get(int(row), ())}
        assert set(membership[i].nonzero().flatten().tolist()) == expected
    assert membership[-1].sum() == 0  # a pin on no board
    # Two rows share a board exactly when neighbor_matrix says so.
    shared = (membership @ membership.T > 0) & ~torch.eye(len(rows), dtype=torch.bool)
    assert torch.equal(shared, pairs.neighbor_matrix(rows))


def test_text_neighbor_weight_pulls_the_text_tower_to_the_board_proxies_only(tiny_data, tmp_path):
    """One step from the same init, with and without the text pull: it moves the text
    tower and the proxies, and nothing that the image embedding depends on."""
    from safetensors.torch import load_file

    dataset, text, pairs = tiny_data
    rows = np.arange(len(dataset))
    cfg = _cfg(steps=1, checkpoint_every=1)
    runs = {weight: train_pinclip(MODEL, replace(cfg, text_neighbor_weight=weight), dataset, text, rows,
                                  pairs, out_dir=tmp_path / str(weight))
            for weight in (0.0, 2.0)}
    plain, pulled = runs[0.0], runs[2.0]
    assert "loss_text_neighbor" not in plain.history[-1]
    # The step's neighbor loss is the fused one plus the weighted text one.
    assert pulled.history[-1]["loss_neighbor"] == pytest.approx(
        plain.history[-1]["loss_neighbor"] + 2.0 * pulled.history[-1]["loss_text_neighbor"], rel=1e-5)
    before, after = plain.model.state_dict(), pulled.model.state_dict()
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert {"text_proj.weight", "text_in.weight"} <= moved
    assert not {name for name in moved if name.startswith(("image_", "fusion"))}
    proxies = [load_file(str(tmp_path / str(w) / "checkpoint" / "aux.safetensors")) for w in runs]
    assert not torch.equal(proxies[0]["0.proxies"], proxies[1]["0.proxies"])


def test_text_neighbor_weight_needs_the_proxy_loss():
    with pytest.raises(ValueError, match="needs neighbor_loss='proxies'"):
        PinCLIPTrainConfig(neighbor_loss="boards", text_neighbor_weight=0.5)
    with pytest.raises(ValueError, match=">= 0"):
        PinCLIPTrainConfig(text_neighbor_weight=-1.0)


def test_tower_cache_serves_each_heads_rows_cut_after_their_longest_caption():
    tokens = torch.randn(5, 6, 3)
    mask = torch.zeros(5, 6, dtype=torch.bool)
    mask[0, :4], mask[3, :2] = True, True  # pins 1, 2 and 4 have no caption
    cache = TowerCache(np.array([4, 3, 2, 1, 0]), torch.randn(5, 2, 3), torch.randn(5, 3), tokens, mask,
                       torch.randn(5, 3))  # dataset row r sits at cache row 4 - r
    image_tokens, text_tokens, text_mask, _, text_emb = cache.stacked_rows([np.array([4, 3]), np.array([1, 0])])
    at = torch.tensor([[0, 1], [3, 4]])
    assert torch.equal(text_tokens, tokens[at][..., :4, :]) and torch.equal(text_mask, mask[at][..., :4])
    assert torch.equal(image_tokens, cache.image_tokens[at]) and torch.equal(text_emb, cache.text_emb[at])
    assert cache.rows(np.array([1]))[1].shape == (1, 2, 3)  # one set alone: cut after its own caption
    cache.position[2] = -1
    with pytest.raises(ValueError, match="outside the cached"):
        cache.rows(np.array([2]))
