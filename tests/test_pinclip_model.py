"""PinCLIP model, losses, text cache and pair sampler, on tiny configs (seconds in all)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmpipe.nn.losses import ClipLoss, NeighborAlignmentLoss, clamp_logit_scale_, gather_features
from mmpipe.systems.pinclip.model import PinCLIP, PinCLIPConfig
from mmpipe.nn.text_tower import (
    TextFeatures,
    default_text_model_dir,
    encode_texts,
    load_text_encoder,
)
from mmpipe.systems.pinclip.data import (
    NeighborPairBatchSampler,
    PinDataset,
    caption_text,
    decode_images,
    false_negative_mask,
    load_pin_image,
    neighbor_pairs_for_training,
)

TEXT_LEN = 8


def tiny_bert_config():
    from transformers import BertConfig

    return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      max_position_embeddings=64, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)


def tiny_batch(batch=4, seed=0, config=None):
    config = config or PinCLIPConfig.tiny()
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 3, config.image_size, config.image_size, generator=g)
    hidden = torch.randn(batch, TEXT_LEN, config.text_hidden_size, generator=g)
    lengths = torch.randint(1, TEXT_LEN + 1, (batch,), generator=g)
    mask = torch.arange(TEXT_LEN)[None, :] < lengths[:, None]
    return pixels, hidden, mask


def switch_on_fusion(model):
    """The fusion residual's projection starts at zero (fused = late fusion at init);
    give it weights so that tests see the fusion transformer's effect."""
    with torch.no_grad():
        for head in model.fusion_heads:
            head.proj.weight.normal_(std=0.5)
    return model


@pytest.fixture
def model():
    torch.manual_seed(0)
    return switch_on_fusion(PinCLIP(PinCLIPConfig.tiny())).eval()


# --- model -------------------------------------------------------------------------------


def test_outputs_have_one_shape_and_unit_norm(model):
    out = model(*tiny_batch(batch=5))
    embed_dim = model.config.embed_dim
    for emb in (out.image_emb, out.text_emb, out.fused_emb):
        assert emb.shape == (5, embed_dim)
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(5))
    assert out.logit_scale.shape == () and out.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_different_images_give_different_embeddings(model):
    pixels, hidden, mask = tiny_batch(batch=2)
    hidden[1], mask[1] = hidden[0], mask[0]  # same text: only the images differ
    out = model(pixels, hidden, mask)
    assert (out.image_emb[0] - out.image_emb[1]).abs().max() > 1e-3
    assert (out.fused_emb[0] - out.fused_emb[1]).abs().max() > 1e-3
    torch.testing.assert_close(out.text_emb[0], out.text_emb[1])


@pytest.mark.parametrize("text_trainable_layers", [0, 1])
def test_padded_text_positions_do_not_matter(text_trainable_layers):
    torch.manual_seed(0)
    text_model = None
    if text_trainable_layers:
        from transformers import BertModel

        text_model = BertModel(tiny_bert_config())
    config = PinCLIPConfig.tiny(text_trainable_layers=text_trainable_layers)
    model = switch_on_fusion(PinCLIP(config, text_model)).eval()
    pixels, hidden, mask = tiny_batch(batch=4)
    mask[0, 3:] = False
    mask[1] = False  # a pin without text
    before = model(pixels, hidden, mask)
    scrambled = torch.where(mask[..., None], hidden, torch.randn_like(hidden) * 10)
    after = model(pixels, scrambled, mask)
    for x, y in zip(before, after):
        torch.testing.assert_close(x, y)
    # ...while a real token does matter.
    hidden[0, 0] += 1.0
    assert (model(pixels, hidden, mask).text_emb[0] - before.text_emb[0]).abs().max() > 1e-4


def test_pin_without_text_gets_image_only_fusion(model):
    pixels, hidden, mask = tiny_batch(batch=3)
    mask[:] = False
    out = model(pixels, hidden, mask)
    assert torch.isfinite(out.fused_emb).all()
    assert out.text_emb.abs().max() == 0  # "no text", not the embedding of padding
    torch.testing.assert_close(out.fused_emb.norm(dim=-1), torch.ones(3))
    image_tokens, image_emb = model.encode_image(pixels)
    no_text = hidden[:, :0], mask[:, :0]
    text_tokens, text_emb = model.encode_text(*no_text)
    image_only = model.fuse(image_tokens, text_tokens, no_text[1], image_emb, text_emb)
    torch.testing.assert_close(out.fused_emb, image_only)
    assert (out.fused_emb - image_emb).abs().max() > 1e-3  # the fusion transformer adds to it


def test_fused_embedding_starts_as_late_fusion():
    torch.manual_seed(0)
    out = PinCLIP(PinCLIPConfig.tiny()).eval()(*tiny_batch(batch=3))
    torch.testing.assert_close(out.fused_emb, F.normalize(out.image_emb + out.text_emb, dim=-1))


def test_fusion_heads_average_into_the_fused_embedding():
    torch.manual_seed(0)
    model = switch_on_fusion(PinCLIP(PinCLIPConfig.tiny(n_fusion_heads=3))).eval()
    pixels, hidden, mask = tiny_batch(batch=5)
    with torch.no_grad():
        out = model(pixels, hidden, mask)
        image_tokens, image_emb = model.encode_image(pixels)
        text_tokens, text_emb = model.encode_text(hidden, mask)
        heads = [model.fuse(image_tokens, text_tokens, mask, image_emb, text_emb, head=k) for k in range(3)]
    for head in heads:
        torch.testing.assert_close(head.norm(dim=-1), torch.ones(5))
    assert not torch.allclose(heads[0], heads[1], atol=1e-3)  # independently initialised
    torch.testing.assert_close(out.fused_emb, F.normalize(torch.stack(heads).mean(0), dim=-1))


def test_batched_heads_equal_each_head_alone_with_gradients_to_each_head():
    torch.manual_seed(0)
    model = switch_on_fusion(PinCLIP(PinCLIPConfig.tiny(n_fusion_heads=3)))
    pixels, hidden, mask = tiny_batch(batch=4)
    image_tokens, image_emb = model.encode_image(pixels)
    text_tokens, text_emb = model.encode_text(hidden, mask)
    inputs = (image_tokens.detach(), text_tokens.detach(), mask, image_emb.detach(), text_emb.detach())
    alone = torch.stack([model.fuse(*inputs, head=k) for k in range(3)])
    torch.testing.assert_close(model.fuse_per_head(*inputs, shared=True), alone)
    # Each head on its own pins: head k reads row k of the stacked inputs.
    own = [tuple(x.roll(k, 0) for x in inputs) for k in range(3)]
    batched = model.fuse_per_head(*(torch.stack(column) for column in zip(*own)))
    torch.testing.assert_close(batched, torch.stack([model.fuse(*own[k], head=k) for k in range(3)]))
    batched[1].sum().backward()  # only head 1's parameters get a gradient
    grads = [head.queries.grad for head in model.fusion_heads]
    assert not grads[0].any() and not grads[2].any() and grads[1].abs().sum() > 0


def test_single_head_checkpoints_from_before_fusion_heads_still_load():
    """Old checkpoints and registered versions: no n_fusion_heads in the config, and the
    fusion weights under fusion_queries / fusion.* / fusion_ln / fusion_proj / modality_weights."""
    torch.manual_seed(0)
    current = switch_on_fusion(PinCLIP(PinCLIPConfig.tiny())).eval()
    legacy_names = {"fusion_heads.0.queries": "fusion_queries", "fusion_heads.0.blocks.": "fusion.",
                    "fusion_heads.0.ln.": "fusion_ln.", "fusion_heads.0.proj.": "fusion_proj.",
                    "fusion_heads.0.modality_weights": "modality_weights"}
    legacy_state = {}
    for key, value in current.state_dict().items():
        for new, old in legacy_names.items():
            if key.startswith(new):
                key = old + key[len(new):]
        legacy_state[key] = value
    assert "fusion_proj.weight" in legacy_state and "fusion.0.mlp.0.weight" in legacy_state
    legacy_config = {k: v for k, v in current.config.to_dict().items() if k != "n_fusion_heads"}
    loaded = PinCLIP(PinCLIPConfig.from_dict(legacy_config))
    loaded.load_state_dict(legacy_state)  # strict: every legacy key finds its place
    batch = tiny_batch(batch=3)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(*batch).fused_emb, current(*batch).fused_emb)


def test_config_round_trips_through_dict():
    config = PinCLIPConfig.tiny(text_trainable_layers=1)
    assert PinCLIPConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        PinCLIPConfig.from_dict({**config.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="multiple of patch_size"):
        PinCLIPConfig.tiny(image_size=30)


def test_param_groups_cover_every_parameter_once_and_spare_the_temperatures(model):
    decay, no_decay = model.param_groups(weight_decay=0.1)
    grouped = [id(p) for p in decay["params"] + no_decay["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    assert {id(model.logit_scale), id(model.neighbor_logit_scale)} <= {id(p) for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_pretrained_image_tower_loads_from_a_local_directory(tmp_path):
    torch.manual_seed(0)
    source = PinCLIP(PinCLIPConfig.tiny()).image_tower
    source.save_pretrained(tmp_path / "vit")
    config = PinCLIPConfig.tiny(vit_width=64, vit_heads=4).with_pretrained_image_tower(tmp_path / "vit")
    assert config.vit_width == 32
    loaded = PinCLIP(config).image_tower
    for (name, p), q in zip(source.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)
    with pytest.raises(ValueError, match="with_pretrained_image_tower"):
        PinCLIP(PinCLIPConfig.tiny(vit_depth=3, image_tower_path=str(tmp_path / "vit")))


# --- losses ------------------------------------------------------------------------------


def naive_info_nce(anchors, candidates, scale, excluded=None):
    """Mean over rows of -log softmax at the positive, skipping excluded (i, j), one row at a time."""
    losses = []
    for i in range(anchors.shape[0]):
        logits = [scale * anchors[i] @ candidates[j] for j in range(candidates.shape[0])
                  if j == i or excluded is None or not excluded[i][j]]
        positive = scale * anchors[i] @ candidates[i]
        losses.append(torch.logsumexp(torch.stack(logits), 0) - positive)
    return torch.stack(losses).mean()


def unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


def test_clip_loss_matches_naive_reference():
    image, text, scale = unit(7, 5, 1), unit(7, 5, 2), torch.tensor(12.0, dtype=torch.float64)
    expected = (naive_info_nce(image, text, scale) + naive_info_nce(text, image, scale)) / 2
    torch.testing.assert_close(ClipLoss()(image, text, scale), expected)
    assert gather_features(image) is image  # one process: nothing gathered


_DISTRIBUTED_WORKER = """
import sys, torch, torch.distributed as dist
from mmpipe.nn.losses import ClipLoss
rank, world, init_file, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=world)
image, text = torch.load(sys.argv[5], weights_only=True)
half = image.shape[0] // world
image = image[rank * half:(rank + 1) * half].clone().requires_grad_()
text = text[rank * half:(rank + 1) * half].clone().requires_grad_()
loss = ClipLoss()(image, text, torch.tensor(10.0, dtype=image.dtype))
loss.backward()
torch.save((loss.detach(), image.grad, text.grad), out)
dist.destroy_process_group()
"""


# Starts two Python processes (~2 s): the only way to exercise the all_gather path.
def test_clip_loss_gathers_across_processes_with_exact_local_gradients(tmp_path):
    """Two gloo ranks with half the batch each: every rank sees the full-batch loss, and
    the gradients of its own rows are the world size times the single-process full-batch
    gradients, so DDP's average over ranks of the encoders' gradients is the full-batch
    gradient (gather_features scales the local rows; open_clip leaves them at 1/world)."""
    import subprocess
    import sys

    image, text = unit(8, 5, 7), unit(8, 5, 8)
    torch.save((image, text), tmp_path / "features.pt")
    procs = [subprocess.Popen([sys.executable, "-c", _DISTRIBUTED_WORKER, str(rank), "2",
                               str(tmp_path / "init"), str(tmp_path / f"rank{rank}.pt"),
                               str(tmp_path / "features.pt")]) for rank in range(2)]
    assert all(proc.wait(timeout=120) == 0 for proc in procs)

    image, text = image.clone().requires_grad_(), text.clone().requires_grad_()
    full = ClipLoss()(image, text, torch.tensor(10.0, dtype=torch.float64))
    full.backward()
    for rank in range(2):
        loss, image_grad, text_grad = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(loss, full.detach())
        torch.testing.assert_close(image_grad, 2 * image.grad[rank * 4:(rank + 1) * 4])
        torch.testing.assert_close(text_grad, 2 * text.grad[rank * 4:(rank + 1) * 4])


def test_neighbor_loss_matches_naive_reference_with_and_without_mask():
    a, b, scale = unit(6, 4, 3), unit(6, 4, 4), torch.tensor(9.0, dtype=torch.float64)
    loss = NeighborAlignmentLoss()
    unmasked = (naive_info_nce(a, b, scale) + naive_info_nce(b, a, scale)) / 2
    torch.testing.assert_close(loss(a, b, scale), unmasked)

    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[0, 3] = mask[3, 0] = mask[2, 5] = mask[5, 2] = mask[1, 4] = True
    mask[1, 1] = True  # the diagonal is the positive and must be kept regardless
    excluded = mask.tolist()
    transposed = mask.T.tolist()
    masked = (naive_info_nce(a, b, scale, excluded) + naive_info_nce(b, a, scale, transposed)) / 2
    torch.testing.assert_close(loss(a, b, scale, mask), masked)
    assert not torch.isclose(masked, unmasked)


def test_false_negative_mask_removes_exactly_the_masked_terms():
    a, b, scale = unit(4, 3, 5), unit(4, 3, 6), torch.tensor(5.0, dtype=torch.float64)
    loss = NeighborAlignmentLoss()
    # Masking every negative leaves only the positive in each softmax: loss exactly 0.
    assert loss(a, b, scale, torch.ones(4, 4, dtype=torch.bool)).item() == 0.0
    # Masking one symmetric pair (0, 1) changes rows 0 and 1 of both directions, by
    # exactly the terms exp(s01), exp(s10) leaving their denominators.
    s = scale * a @ b.T
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 1] = mask[1, 0] = True
    row_a = torch.logsumexp(s, 1)
    row_b = torch.logsumexp(s.T, 1)
    keep = ~mask
    row_a_masked = torch.stack([torch.logsumexp(s[i][keep[i]], 0) for i in range(4)])
    row_b_masked = torch.stack([torch.logsumexp(s.T[i][keep.T[i]], 0) for i in range(4)])
    expected_change = ((row_a_masked - row_a).sum() + (row_b_masked - row_b).sum()) / (2 * 4)
    change = loss(a, b, scale, mask) - loss(a, b, scale)
    torch.testing.assert_close(change, expected_change)
    assert change < 0
    torch.testing.assert_close(row_a_masked[2:], row_a[2:])


def test_logit_scale_is_clamped_at_ln_100(model):
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
        model.neighbor_logit_scale.fill_(-1.0)
    clamp_logit_scale_(model)
    assert model.logit_scale.item() == pytest.approx(math.log(100))
    assert model.neighbor_logit_scale.item() == 0.0
    out = model(*tiny_batch(batch=2))
    assert out.logit_scale.item() == pytest.approx(100.0, rel=1e-5)


def test_tiny_pinclip_overfits_sixteen_pairs():
    torch.manual_seed(0)
    config = PinCLIPConfig.tiny()
    model = PinCLIP(config)
    pixels, hidden, mask = tiny_batch(batch=16, seed=1, config=config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    clip = ClipLoss()
    for _ in range(60):
        out = model(pixels, hidden, mask)
        loss = clip(out.image_emb, out.text_emb, out.logit_scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        clamp_logit_scale_(model)
    model.eval()
    with torch.no_grad():
        out = model(pixels, hidden, mask)
        final = clip(out.image_emb, out.text_emb, out.logit_scale).item()
        similarity = out.image_emb @ out.text_emb.T
    assert final < 0.25 * math.log(16)
    targets = torch.arange(16)
    assert (similarity.argmax(1) == targets).float().mean() == 1.0
    assert (similarity.argmax(0) == targets).float().mean() == 1.0


# --- text tower --------------------------------------------------------------------------


def test_minilm_loads_offline_and_ranks_a_paraphrase_above_unrelated_text():
    tokenizer, text_model = load_text_encoder()
    texts = ["a red striped circle", "a crimson circle with stripes", "blue checkered heart"]
    features = encode_texts(texts, tokenizer, text_model, max_length=16)
    longest = max(len(tokenizer(text)["input_ids"]) for text in texts)
    assert longest < 16  # padded to the longest caption, not to max_length
    assert features.hidden.shape == (3, longest, 384) and features.hidden.dtype == torch.float16
    pooled = features.pooled
    torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(3))
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2] + 0.1


def test_tiny_text_tower_cache_shapes_empty_captions_and_round_trip(tmp_path):
    tokenizer, text_model = load_text_encoder(default_text_model_dir(), config=tiny_bert_config())
    texts = ["a red striped circle", "", "   ", "spotty lilac hexagon with a long tail of words " * 5]
    features = encode_texts(texts, tokenizer, text_model, max_length=TEXT_LEN, batch_size=3)
    assert features.hidden.shape == (4, TEXT_LEN, 32) and features.mask.dtype == torch.bool
    assert features.mask[0].sum() == len(tokenizer("a red striped circle")["input_ids"])
    assert not features.mask[1].any() and not features.mask[2].any()
    assert features.mask[3].all()  # truncated to max_length
    assert features.pooled[1].abs().sum() == 0
    torch.testing.assert_close(features.pooled[[0, 3]].norm(dim=-1), torch.ones(2))

    path = features.save(tmp_path / "text.safetensors", metadata={"max_length": TEXT_LEN})
    loaded = TextFeatures.load(path)
    for name in ("hidden", "mask", "pooled"):
        assert torch.equal(getattr(loaded, name), getattr(features, name))
    assert TextFeatures.load_metadata(path) == {"max_length": TEXT_LEN}


def test_tuned_top_layers_over_cached_states_reproduce_the_tower():
    torch.manual_seed(0)
    tokenizer, text_model = load_text_encoder(default_text_model_dir(), config=tiny_bert_config())
    texts = ["a red striped circle", "tiny golden star on a plain background"]
    final = encode_texts(texts, tokenizer, text_model, max_length=TEXT_LEN)
    below_top = encode_texts(texts, tokenizer, text_model, max_length=TEXT_LEN, trainable_top_layers=1)
    torch.testing.assert_close(below_top.pooled, final.pooled)
    model = PinCLIP(PinCLIPConfig.tiny(text_trainable_layers=1), text_model).eval()
    rebuilt = model.text_tower_top(below_top.hidden.float(), below_top.mask)
    real = final.mask
    torch.testing.assert_close(rebuilt[real], final.hidden.float()[real], atol=1e-2, rtol=1e-2)
    with pytest.raises(ValueError, match="text_model"):
        PinCLIP(PinCLIPConfig.tiny(text_trainable_layers=1))


def test_missing_text_model_directory_fails_fast(tmp_path):
    with pytest.raises(FileNotFoundError, match="local files only"):
        load_text_encoder(tmp_path / "nowhere")


# --- data --------------------------------------------------------------------------------


def write_pins(root, n=5, side=40):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    for i in range(n):
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"images/p{i}.jpg")
    return pd.DataFrame({
        "pin_id": [f"p{i}" for i in range(n)],
        "image_path": [f"images/p{i}.jpg" for i in range(n)],
        "title": ["Red disc.", None, "", "Blue star", "x"][:n],
        "description": ["striped", "A spotty orb", None, "", "y"][:n],
        "created_at": ["2024-01-01"] * n,
        "row_index": list(range(n)),
    })


def test_pin_dataset_decodes_and_serves_the_same_pixels_from_memory(tmp_path):
    pins = write_pins(tmp_path)
    dataset = PinDataset(pins, tmp_path, image_size=32)
    assert dataset.captions == ["Red disc. striped", "A spotty orb", "", "Blue star", "x. y"]
    pixels, text_row = dataset[3]
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32 and text_row == 3
    assert -1.0 <= pixels.min() and pixels.max() <= 1.0
    torch.testing.assert_close(pixels, load_pin_image(tmp_path / "images/p3.jpg", 32))

    images = decode_images(dataset.image_paths, 32, num_workers=2)
    assert images.shape == (5, 3, 32, 32) and images.dtype == torch.uint8
    from_disk = dataset.pixels([4, 0])
    dataset.predecode()
    torch.testing.assert_close(dataset.pixels([4, 0]), from_disk)
    torch.testing.assert_close(dataset[3][0], pixels)
    assert dataset.rows_of(["p4", "nope"]).tolist() == [4, -1]


def test_pin_dataset_refuses_escaping_paths_and_duplicate_ids(tmp_path):
    pins = write_pins(tmp_path, n=2)
    with pytest.raises(ValueError, match="escapes"):
        PinDataset(pins.assign(image_path=["images/p0.jpg", "../x.jpg"]), tmp_path, 32)
    with pytest.raises(ValueError, match="unique"):
        PinDataset(pins.assign(pin_id=["p0", "p0"]), tmp_path, 32)
    assert caption_text(float("nan"), "  ") == ""


def pairs_frame(rows):
    return pd.DataFrame(rows, columns=["pin_a", "pin_b", "board_id", "source", "split"])


def all_rows(sampler, epoch=0):
    return np.sort(np.concatenate(sampler.batch_rows(epoch)))


def test_sampler_keeps_same_board_pairs_apart_when_it_can():
    # 8 boards x 4 pairs with distinct pins; batches of 8 can always hold one pair per board.
    rows = [(f"b{board}_{k}a", f"b{board}_{k}b", f"board{board}", "board", "train")
            for board in range(8) for k in range(4)]
    pin_ids = sorted({pin for row in rows for pin in row[:2]})
    pairs = neighbor_pairs_for_training(pairs_frame(rows), pin_ids)
    sampler = NeighborPairBatchSampler(pairs, batch_size=8, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4
    assert np.array_equal(all_rows(sampler), np.arange(32))
    for batch in batches:
        assert not batch.false_negative_mask.any()
        assert len({rows[i][2] for i in batch.pair_rows.tolist()}) == 8


def test_sampler_masks_the_conflicts_it_cannot_avoid():
    # One big board and co-engagement pairs reusing pins: conflicts are unavoidable.
    rows = [(f"p{i}", f"p{i + 1}", "big", "board", "train") for i in range(0, 20, 2)]
    rows += [("p0", "p3", None, "co_engagement", "train"), ("q0", "q1", None, "co_engagement", "train"),
             ("p5", "q1", "other", "board", "train")]
    pin_ids = [f"p{i}" for i in range(21)] + ["q0", "q1"]
    board_pins = pd.DataFrame({"board_id": ["other", "other", "big"], "pin_id": ["p5", "q1", "q0"]})
    pairs = neighbor_pairs_for_training(pairs_frame(rows), pin_ids, board_pins=board_pins)
    sampler = NeighborPairBatchSampler(pairs, batch_size=6, seed=0)
    saw_conflict = False
    for batch in sampler:
        keys = [pairs.keys[i] for i in batch.pair_rows.tolist()]
        expected = torch.tensor([[i != j and bool(keys[i] & keys[j]) for j in range(len(keys))]
                                 for i in range(len(keys))])
        assert torch.equal(batch.false_negative_mask, expected)
        assert torch.equal(batch.a, torch.from_numpy(pairs.a[batch.pair_rows.numpy()]))
        saw_conflict |= bool(expected.any())
    assert saw_conflict
    # q0 sits on "big" through board_pins, so the q0-q1 pair conflicts with every big-board pair.
    q_pair = 11
    assert all(not pairs.keys[q_pair].isdisjoint(pairs.keys[i]) for i in range(10))


def test_pairs_are_indexed_from_the_train_split_of_known_pins():
    rows = [("p0", "p1", "x", "board", "train"), ("p1", "p2", "x", "board", "val"),
            ("p0", "gone", "x", "board", "train")]
    pairs = neighbor_pairs_for_training(pairs_frame(rows), ["p2", "p1", "p0"])
    assert pairs.a.tolist() == [2] and pairs.b.tolist() == [1]
    assert false_negative_mask([frozenset({1, 2}), frozenset({2}), frozenset({7})]).tolist() == [
        [False, True, False], [True, False, False], [False, False, False]]


def test_sampler_is_deterministic_by_seed_and_epoch():
    rows = [(f"p{i}", f"p{i + 1}", f"board{i % 5}", "board", "train") for i in range(0, 80, 2)]
    pin_ids = [f"p{i}" for i in range(81)]
    pairs = neighbor_pairs_for_training(pairs_frame(rows), pin_ids)

    def plan(seed, epoch):
        sampler = NeighborPairBatchSampler(pairs, 8, seed=seed)
        return [batch.tolist() for batch in sampler.batch_rows(epoch)]

    assert plan(0, 0) == plan(0, 0)
    assert plan(0, 0) != plan(1, 0)
    assert plan(0, 0) != plan(0, 1)
    sampler = NeighborPairBatchSampler(pairs, 8, seed=0, drop_last=True)
    sampler.set_epoch(1)
    assert [batch.pair_rows.tolist() for batch in sampler] == plan(0, 1)
    assert np.array_equal(all_rows(sampler, 1), np.arange(40))


def test_hybrid_config_puts_a_conv_stem_before_the_vit():
    config = PinCLIPConfig.tiny(stem_channels=16, stem_stride=4, patch_size=2)
    assert config.tower_input_size == 8 and config.vit_config().num_channels == 16
    model = PinCLIP(config).eval()
    out = model(*tiny_batch(batch=2))
    assert out.image_emb.shape == (2, config.embed_dim)
    # 32 px -> 8x8 stem map -> 4x4 patches of 2, plus CLS.
    tokens, _ = model.encode_image(tiny_batch(batch=2)[0])
    assert tokens.shape[1] == 1 + 16
    with pytest.raises(ValueError, match="stem_stride"):
        PinCLIPConfig.tiny(stem_channels=16, stem_stride=3)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        PinCLIPConfig.tiny(stem_channels=16, stem_stride=4, patch_size=3)
    with pytest.raises(ValueError, match="stem_channels=0"):
        PinCLIPConfig.tiny(stem_channels=16, image_tower_path="/somewhere")


def test_late_fusion_weights_are_learned_per_modality():
    torch.manual_seed(0)
    model = PinCLIP(PinCLIPConfig.tiny()).eval()
    with torch.no_grad():
        model.fusion_heads[0].modality_weights.copy_(torch.tensor([1.0, 0.0]))
    out = model(*tiny_batch(batch=3))
    torch.testing.assert_close(out.fused_emb, out.image_emb)  # text weighted out entirely


def test_multi_positive_neighbor_loss_matches_naive_reference():
    from mmpipe.nn.losses import MultiPositiveNeighborLoss

    torch.manual_seed(0)
    emb = F.normalize(torch.randn(6, 4), dim=-1)
    positives = torch.zeros(6, 6, dtype=torch.bool)
    for i, j in [(0, 1), (0, 2), (3, 4)]:
        positives[i, j] = positives[j, i] = True
    scale = torch.tensor(4.0)
    terms = []
    for i in range(6):
        others = [j for j in range(6) if j != i]
        denominator = torch.logsumexp(torch.stack([scale * emb[i] @ emb[j] for j in others]), 0)
        mine = [j for j in others if positives[i, j]]
        if mine:  # pin 5 has no neighbor in the batch: not an anchor
            terms.append(torch.stack([denominator - scale * emb[i] @ emb[j] for j in mine]).mean())
    expected = torch.stack(terms).mean()
    torch.testing.assert_close(MultiPositiveNeighborLoss()(emb, positives, scale), expected)
    # Neighbors closer together -> lower loss; no neighbors at all -> zero, not NaN.
    together = emb.clone()
    together[1] = together[2] = together[0]
    assert MultiPositiveNeighborLoss()(together, positives, scale) < expected
    none = MultiPositiveNeighborLoss()(emb, torch.zeros(6, 6, dtype=torch.bool), scale)
    assert none.item() == 0.0


def test_board_proxy_loss_matches_naive_reference_and_pulls_board_mates_together():
    from mmpipe.nn.losses import BoardProxyLoss

    torch.manual_seed(0)
    emb = F.normalize(torch.randn(5, 4), dim=-1)
    membership = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0]], dtype=torch.float)
    loss_fn = BoardProxyLoss(n_boards=3, dim=4, temperature=0.2, seed=1)
    proxies = F.normalize(loss_fn.proxies.detach(), dim=-1)
    terms = []
    for i in range(5):
        boards = membership[i].nonzero().flatten().tolist()
        if not boards:  # pin 3 is on no board: no term
            continue
        log_z = torch.logsumexp(emb[i] @ proxies.T / 0.2, 0)
        terms.append(torch.stack([log_z - emb[i] @ proxies[b] / 0.2 for b in boards]).mean())
    torch.testing.assert_close(loss_fn(emb, membership), torch.stack(terms).mean())
    assert loss_fn(emb, torch.zeros(5, 3)).item() == 0.0
    with pytest.raises(ValueError, match="membership must be"):
        loss_fn(emb, torch.zeros(5, 2))
    # Same seed, same proxies: the loss's state is reproducible without the global RNG.
    torch.testing.assert_close(BoardProxyLoss(3, 4, 0.2, seed=1).proxies, loss_fn.proxies)

    # Training free embeddings on it puts pins of a board closer than pins of different boards.
    board = torch.arange(12) % 3
    member = F.one_hot(board, 3).float()
    free = torch.nn.Parameter(torch.randn(12, 8))
    loss_fn = BoardProxyLoss(3, 8, temperature=0.1)
    optimizer = torch.optim.Adam([free, *loss_fn.parameters()], lr=0.05)
    for _ in range(100):
        optimizer.zero_grad()
        loss_fn(F.normalize(free, dim=-1), member).backward()
        optimizer.step()
    unit = F.normalize(free.detach(), dim=-1)
    cos = unit @ unit.T
    same = board[:, None] == board[None, :]
    off_diagonal = ~torch.eye(12, dtype=torch.bool)
    assert cos[same & off_diagonal].mean() - cos[~same].mean() > 0.5
    # Every pin's nearest other pin is a board mate.
    nearest = cos.masked_fill(~off_diagonal, -2).argmax(1)
    assert torch.equal(board[nearest], board)

