"""MAC started from an image-text encoder checkpoint (PinCLIP's layout): every tensor lands
where it computes the same thing, so a frame starts as the source sees an image."""

from __future__ import annotations

import pytest
import torch

from mmpipe.systems.mac.model import MAC, MACConfig, patchify
from mmpipe.systems.mac.train import warm_start_state
from mmpipe.systems.pinclip.model import PinCLIP, PinCLIPConfig

# PinCLIP's tiny test model and a MAC of the same image and text sizes.
SOURCE = PinCLIPConfig.tiny(text_hidden_size=32, text_adapter_depth=1)
PLAIN = MACConfig(image_size=32, patch_size=8, patch_stem_channels=0, max_frames=4, width=32, depth=2, heads=2,
                  mlp=64, text_hidden_size=32, text_width=32, text_depth=2, text_heads=2, text_mlp=64, embed_dim=16)


def _pair(mac_config: MACConfig = PLAIN, source_config: PinCLIPConfig = SOURCE) -> tuple[PinCLIP, MAC]:
    torch.manual_seed(0)
    source, mac = PinCLIP(source_config).eval(), MAC(mac_config).eval()
    mac.load_state_dict(warm_start_state(source.state_dict(), mac))
    return source, mac


def test_tokens_and_blocks_compute_what_the_source_vit_computes():
    source, mac = _pair()
    pixels = torch.randn(3, 3, 32, 32)
    vit = source.image_tower
    with torch.no_grad():
        # Patch embedding + spatial positions = the ViT's embeddings without the CLS token.
        expected = vit.embeddings(pixels)[:, 1:]
        tokens = mac.video.patch_embed(patchify(pixels, 8)) + mac.video.spatial_pos
        torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-4)
        # Each block = the ViT layer (key and value fused into one projection, in that order);
        # the ViT's LayerNorms use eps 1e-12, MAC's 1e-5: equal to within that.
        for layer, block in zip(vit.layers, mac.video.blocks):
            out = layer(tokens)
            torch.testing.assert_close(block(tokens), out[0] if isinstance(out, tuple) else out,
                                       atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(mac.video.proj.weight, source.image_proj.weight)
    torch.testing.assert_close(mac.logit_scale, source.logit_scale)


def test_text_side_starts_as_the_source_text_embedding():
    source, mac = _pair()
    hidden = torch.randn(4, 7, 32)
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4, [1] + [0] * 6], dtype=torch.bool)
    with torch.no_grad():
        _, expected = source.encode_text(hidden, mask)
        # MAC's second text block has no counterpart: it starts as the identity.
        torch.testing.assert_close(mac.encode_text(hidden, mask), expected, atol=1e-5, rtol=1e-4)


def test_time_starts_neutral_so_a_still_clip_embeds_like_one_frame():
    _, mac = _pair()
    frame = torch.randn(2, 1, 3, 32, 32)
    with torch.no_grad():
        assert mac.video.temporal_pos.abs().sum() == 0
        one, still = mac.encode_video(frame), mac.encode_video(frame.expand(2, 4, 3, 32, 32))
    # Four copies of a frame attend to copies of the same tokens: the mean is unchanged.
    torch.testing.assert_close(still, one, atol=1e-5, rtol=1e-4)


def test_frame_local_blocks_start_a_clip_as_the_mean_of_its_frame_embeddings():
    # The source's blocks attend within each frame and one more block, across the clip,
    # starts as the identity: a clip of different frames embeds as the mean of its frames'
    # (unnormalised) embeddings, each computed by the source's blocks alone.
    _, mac = _pair(MACConfig(**{**PLAIN.to_dict(), "depth": 3, "local_depth": 2}))
    frames = torch.randn(2, 3, 3, 32, 32)
    video = mac.video
    with torch.no_grad():
        tokens = video.patch_embed(patchify(frames.flatten(0, 1), 8)) + video.spatial_pos  # [6, 16, 32]
        for block in video.blocks[:2]:
            tokens = block(tokens)
        per_frame = video.proj(video.norm(tokens).mean(1)).view(2, 3, -1)
        expected = torch.nn.functional.normalize(per_frame.mean(1), dim=-1)
        torch.testing.assert_close(mac.encode_video(frames), expected, atol=1e-4, rtol=1e-3)
        # Joint attention from the first block mixes the frames: not the mean.
        joint = _pair()[1]
        assert not torch.allclose(joint.encode_video(frames), expected, atol=1e-3)


def test_local_depth_beyond_depth_is_refused():
    with pytest.raises(ValueError, match="local_depth 3 must be between 0 and depth 2"):
        MACConfig(**{**PLAIN.to_dict(), "local_depth": 3})


def test_the_conv_stem_is_copied_layer_by_layer():
    source_config = PinCLIPConfig.tiny(text_hidden_size=32, image_size=32, patch_size=2, stem_channels=32,
                                       stem_stride=4)
    mac_config = MACConfig(**{**PLAIN.to_dict(), "patch_stem_channels": 32})
    source, mac = _pair(mac_config, source_config)
    for index in (0, 1, 3, 4):  # convolutions and GroupNorms
        torch.testing.assert_close(mac.video.patch_embed.stem[index].weight, source.image_stem[index].weight)
    projection = source.image_tower.embeddings.patch_embeddings.projection.weight
    torch.testing.assert_close(mac.video.patch_embed.linear.weight, projection.reshape(projection.shape[0], -1))


def test_a_source_of_other_sizes_is_refused_by_name():
    source = PinCLIP(PinCLIPConfig.tiny(text_hidden_size=32, vit_width=64, vit_heads=2, fusion_width=64))
    with pytest.raises(ValueError, match=r"does not fit MAC's shapes.*image_tower"):
        warm_start_state(source.state_dict(), MAC(PLAIN))


def test_a_checkpoint_of_something_else_is_refused():
    with pytest.raises(ValueError, match="nothing of the source maps onto MAC's video encoder"):
        warm_start_state({"encoder.weight": torch.zeros(3, 3)}, MAC(PLAIN))
