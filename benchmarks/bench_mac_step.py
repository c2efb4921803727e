"""MAC's training step masked against the same step unmasked, side by side in one run:
time, FLOPs, FLOP/s, MFU, and the two ratios the masking is for.

    python benchmarks/bench_mac_step.py [--steps 5 --rounds 3 --threads 2 --scale small]

Both steps are ``MACTask.training_forward``'s work on the same model (the settings of
``--scale``) and the same batch: ``batch_size`` clips of ``n_frames`` frames and their
cached caption states, encoded, aligned with InfoNCE, backward, AdamW. The masked step
drops ``mask_ratio`` of every frame's patches (and ``text_mask_ratio`` of the tokens)
before the encoders; the unmasked one keeps everything. Inputs are synthetic tensors of
the real shapes, so the numbers measure compute, not the data path. With ``--device cuda``
(and ``--bf16``) the same comparison runs on a GPU.
"""

from __future__ import annotations

import torch
from figures import Figure
from timing import matmul_flops_per_second, measure, settings_for, step_benchmark_arguments

from mmpipe.nn.losses import ClipLoss
from mmpipe.systems.mac.model import MAC
from mmpipe.systems.mac.train import MACSettings

BENCHMARK = "mac_step"
TEXT_LENGTH = 24


def training_step(model: MAC, optimizer, batch, mask_ratio: float, text_mask_ratio: float, autocast) -> None:
    pixels, hidden, mask = batch
    with autocast():
        video = model.encode_video(pixels, mask_ratio)
        text = model.encode_text(hidden, mask, text_mask_ratio)
        loss = ClipLoss()(video.float(), text.float(), model.logit_scale.exp())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if pixels.is_cuda:  # time the work, not its launch
        torch.cuda.synchronize()


def run(scale: str = "small", steps: int = 5, threads: int = 2, batch_size: int | None = None, rounds: int = 3,
        device: str = "cpu", bf16: bool = False, peak: float | None = None) -> list[Figure]:
    """Masked against unmasked step at ``scale``, printing what ``main`` always printed.
    ``peak``: the fp32 matmul FLOP/s already measured by the caller."""
    settings = settings_for(MACSettings, "mac", scale, threads)
    c, train = settings.model, settings.train
    batch_size = batch_size or train.batch_size
    device = torch.device(device)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    # The matmul peak is a CPU measurement; on a GPU there is no MFU to report.
    peak = (peak or matmul_flops_per_second()) if device.type == "cpu" else float("nan")
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s on {threads} threads; model {scale}: "
          f"{c.image_size}px, patch {c.patch_size} ({c.patches_per_frame} per frame), ViT {c.width}x{c.depth}, "
          f"{train.n_frames} frames, batch {batch_size}, mask {train.mask_ratio:g} / text {train.text_mask_ratio:g}, "
          f"{device}{' bf16' if bf16 else ''}")
    model = MAC(c).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mask = torch.ones(batch_size, TEXT_LENGTH, dtype=torch.bool, device=device)
    mask[:, TEXT_LENGTH // 2:] = torch.rand(batch_size, TEXT_LENGTH - TEXT_LENGTH // 2, device=device) < 0.5
    batch = (torch.randn(batch_size, train.n_frames, 3, c.image_size, c.image_size, device=device),
             torch.randn(batch_size, TEXT_LENGTH, c.text_hidden_size, device=device), mask)

    costs = {}
    for name, ratios in (("unmasked step", (0.0, 0.0)), (f"masked step ({train.mask_ratio:g})",
                                                         (train.mask_ratio, train.text_mask_ratio))):
        costs[name] = measure(lambda: training_step(model, optimizer, batch, *ratios, autocast), steps, rounds)
        print(costs[name].line(name, peak))
    unmasked, masked = costs.values()
    print(f"masked vs unmasked: {unmasked.seconds / masked.seconds:.2f}x faster per step, "
          f"{1 - masked.flops / unmasked.flops:.1%} fewer FLOPs per step")
    shape = f"{scale}, batch {batch_size} x {train.n_frames} frames"
    figures = [Figure(BENCHMARK, f"masked step time ({shape})", masked.seconds * 1000, "ms",
                      "unmasked step", unmasked.seconds * 1000,
                      f"mask {train.mask_ratio:g} of patches, {train.text_mask_ratio:g} of tokens"),
               Figure(BENCHMARK, f"masked step FLOPs ({shape})", masked.flops / 1e9, "GFLOP",
                      "unmasked step", unmasked.flops / 1e9, "forward + backward")]
    if device.type == "cpu":
        figures += [cost.mfu(BENCHMARK, f"{name} ({shape})", peak, threads) for name, cost in costs.items()]
    return figures


def main() -> None:
    parser = step_benchmark_arguments(__doc__, steps=5, rounds=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="autocast to bfloat16 (GPU)")
    args = parser.parse_args()
    run(args.scale, args.steps, args.threads, args.batch_size, args.rounds, args.device, args.bf16)


if __name__ == "__main__":
    main()
