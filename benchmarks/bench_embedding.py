"""Embedding throughput of each encoder, in items per second, next to the machine's peak.

    python benchmarks/bench_embedding.py [--batch-size 256 --steps 3 --threads 2 --scale small]

Each encoder is the model's own inference method on synthetic inputs of the real shapes,
under ``torch.inference_mode`` (what the embedding assets and the pyfunc models run):

* PinCLIP image: ``encode_image`` of normalised pixels (pin images, video frames);
* PinCLIP text: ``encode_text`` of cached text-tower states (the frozen MiniLM's own
  forward, done once per caption by the caption cache, is not part of it);
* MAC video: ``encode_video`` of an unmasked clip of ``n_frames`` frames;
* MAC frame: ``encode_image``, one frame as a one-frame clip (``video_embeddings``).

Each rate is compared to the rate the measured fp32 matmul FLOP/s would allow at the
encoder's FLOPs per item (``FlopCounterMode``): the ratio is the forward pass's MFU, so a
slow encoder can be told from a slow machine.
"""

from __future__ import annotations

import torch
from figures import Figure
from timing import matmul_flops_per_second, measure, settings_for, step_benchmark_arguments

from mmpipe.systems.mac.model import MAC
from mmpipe.systems.mac.train import MACSettings
from mmpipe.systems.pinclip.model import PinCLIP
from mmpipe.systems.pinclip.train import PinCLIPSettings

BENCHMARK = "embedding"
PIN_TEXT_LENGTH = 32  # as bench_pinclip_step
CAPTION_LENGTH = 24  # as bench_mac_step


def _text_batch(batch_size: int, length: int, hidden_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.ones(batch_size, length, dtype=torch.bool)
    mask[:, length // 2:] = torch.rand(batch_size, length - length // 2) < 0.5
    return torch.randn(batch_size, length, hidden_size), mask


def run(scale: str = "small", batch_size: int = 256, steps: int = 3, threads: int = 2,
        peak: float | None = None) -> list[Figure]:
    """Items/s of every encoder at ``scale``; ``peak``: the fp32 matmul FLOP/s already measured."""
    peak = peak or matmul_flops_per_second()
    pin = settings_for(PinCLIPSettings, "pinclip", scale, threads).model
    mac_settings = settings_for(MACSettings, "mac", scale, threads)
    mac, n_frames = mac_settings.model, mac_settings.train.n_frames
    pinclip, video = PinCLIP(pin).eval(), MAC(mac).eval()
    pixels = torch.randn(batch_size, 3, pin.image_size, pin.image_size)
    pin_text = _text_batch(batch_size, PIN_TEXT_LENGTH, pin.text_hidden_size)
    clips = torch.randn(batch_size, n_frames, 3, mac.image_size, mac.image_size)
    captions = _text_batch(batch_size, CAPTION_LENGTH, mac.text_hidden_size)
    encoders = [(f"PinCLIP image ({pin.image_size}px)", "images", lambda: pinclip.encode_image(pixels)),
                (f"PinCLIP text ({PIN_TEXT_LENGTH} tokens)", "texts", lambda: pinclip.encode_text(*pin_text)),
                (f"MAC video ({n_frames} frames)", "clips", lambda: video.encode_video(clips)),
                (f"MAC frame ({mac.image_size}px)", "frames", lambda: video.encode_image(clips[:, 0])),
                (f"MAC text ({CAPTION_LENGTH} tokens)", "texts", lambda: video.encode_text(*captions))]
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s on {threads} threads; models {scale}, batch {batch_size}")
    figures = []
    with torch.inference_mode():
        for name, items, encode in encoders:
            cost = measure(encode, steps)
            rate = batch_size / cost.seconds
            print(f"{name:<26} {rate:10.0f} {items}/s {cost.flops / batch_size / 1e6:9.1f} MFLOP/item   "
                  f"MFU {cost.flops / cost.seconds / peak:6.1%}")
            flops_per_item = cost.flops / batch_size
            # The baseline is the rate the machine's matmul peak would allow at this many
            # FLOPs per item, so the ratio is the encoder's MFU.
            figures.append(Figure(BENCHMARK, f"{name} throughput", rate, f"{items}/s",
                                  f"at fp32 matmul peak ({threads} threads)", peak / flops_per_item,
                                  f"{flops_per_item / 1e6:.1f} MFLOP/item, batch {batch_size}"))
    return figures


def main() -> None:
    parser = step_benchmark_arguments(__doc__, steps=3)
    args = parser.parse_args()
    run(args.scale, args.batch_size or 256, args.steps, args.threads)


if __name__ == "__main__":
    main()
