"""The caption cache is incremental: a new day encodes only captions the cache lacks, and
the result is what encoding everything afresh gives."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from mmpipe.nn.text_tower import TextFeatures, default_text_model_dir, encode_texts, load_text_encoder
from mmpipe.systems.pinclip.data import encode_pin_captions, update_caption_cache

CAPTIONS = [
    ("Red circle", "a bright red disc with stripes"), ("Blue star", None), (None, "tiny green hexagon"),
    ("Red circle", "a bright red disc with stripes"),  # the same caption on another pin
    ("Pink heart", "dotted, with a thick double outline and a long tail of words to pad it out"),
    (None, None),  # no caption at all
    ("Yellow square", "checkered"), ("Orange cross", "large, ringed"), ("White diamond", "thin outline"),
]


def _pins(captions) -> pd.DataFrame:
    return pd.DataFrame({"pin_id": [f"p{i}" for i in range(len(captions))],
                         "title": [t for t, _ in captions], "description": [d for _, d in captions]})


def _assert_same_features(cached: TextFeatures, fresh: TextFeatures) -> None:
    length = fresh.hidden.shape[1]
    assert cached.hidden.shape[1] >= length
    assert not cached.mask[:, length:].any()  # longer only by masked padding
    assert torch.equal(cached.mask[:, :length], fresh.mask)
    real = fresh.mask  # what padding holds is never read
    torch.testing.assert_close(cached.hidden[:, :length][real].float(), fresh.hidden[real].float(),
                               atol=2e-3, rtol=1e-2)
    torch.testing.assert_close(cached.pooled, fresh.pooled, atol=1e-4, rtol=1e-3)


def test_a_new_day_encodes_only_captions_the_cache_lacks(tmp_path):
    path = tmp_path / "pin_text.safetensors"
    first_days = _pins(CAPTIONS[:6])
    text, counts = update_caption_cache(first_days, path, max_length=24)
    assert counts == {"encoded": 5, "reused": 0}  # six pins, five distinct captions
    assert len(text) == 6 and not text.mask[5].any()

    # The next delivery: three new pins, and pin p1's caption edited.
    edited = list(CAPTIONS)
    edited[1] = ("Blue star", "now with a description")
    everything = _pins(edited)
    text, counts = update_caption_cache(everything, path, max_length=24)
    assert counts == {"encoded": 4, "reused": 5}
    fresh, keys, encoded = encode_pin_captions(everything, max_length=24)
    assert encoded == 8 and len(keys) == 9 and keys[0] == keys[3]
    _assert_same_features(text, fresh)
    _assert_same_features(TextFeatures.load(path), fresh)  # what was written is what came back

    # Another tower setting shares nothing with the cache.
    _, counts = update_caption_cache(everything, path, max_length=16)
    assert counts == {"encoded": 8, "reused": 0}


def test_cached_rows_must_match_their_keys():
    text, keys, _ = encode_pin_captions(_pins(CAPTIONS[:2]), max_length=24)
    with pytest.raises(ValueError, match="1 text keys for 2 cached rows"):
        encode_pin_captions(_pins(CAPTIONS[:3]), max_length=24, previous=text, previous_keys=keys[:1])


def test_take_and_concat_pad_with_masked_tokens():
    short = TextFeatures(torch.ones(2, 3, 4, dtype=torch.float16), torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 4))
    long = TextFeatures(torch.full((1, 5, 4), 2.0, dtype=torch.float16), torch.ones(1, 5, dtype=torch.bool),
                        torch.zeros(1, 4))
    both = TextFeatures.concat([short, long])
    assert both.hidden.shape == (3, 5, 4)
    assert both.mask.tolist() == [[True] * 3 + [False] * 2] * 2 + [[True] * 5]
    picked = both.take([2, 0])
    assert picked.hidden[0, 4, 0] == 2.0 and picked.mask[1].sum() == 3 and picked.pooled[0].sum() == 0
    with pytest.raises(ValueError, match="at least one"):
        TextFeatures.concat([])


def test_a_batch_of_captions_is_cut_after_its_longest_caption():
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    text = TextFeatures(torch.randn(3, 5, 4).half(), mask, torch.zeros(3, 4))
    hidden, cut = text.tokens([2, 0])
    assert hidden.shape == (2, 2, 4) and cut.tolist() == [[False, False], [True, True]]
    assert torch.equal(hidden[1], text.hidden[0, :2])
    assert text.tokens([1, 0])[0].shape == (2, 4, 4)
    assert text.tokens([2])[1].shape == (1, 1)  # captions all empty: one masked token is left


def test_captions_encoded_in_length_order_match_each_caption_encoded_alone():
    from transformers import BertConfig

    tiny = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    tokenizer, text_model = load_text_encoder(default_text_model_dir(), config=tiny)
    texts = ["a much longer caption about a red striped circle on a board", "star", "",
             "blue checkered heart", "a"]
    together = encode_texts(texts, tokenizer, text_model, max_length=32, batch_size=2)
    assert together.hidden.shape[1] == max(len(tokenizer(text)["input_ids"]) for text in texts)
    for row, text in enumerate(texts):
        alone = encode_texts([text], tokenizer, text_model, max_length=32)
        real = alone.mask[0]
        assert torch.equal(together.mask[row, :len(real)], real) and not together.mask[row, len(real):].any()
        torch.testing.assert_close(together.hidden[row, :len(real)][real], alone.hidden[0][real], atol=2e-3, rtol=0)
        torch.testing.assert_close(together.pooled[row], alone.pooled[0], atol=1e-5, rtol=0)
        assert not together.hidden[row][~together.mask[row]].any()  # padding holds zeros
