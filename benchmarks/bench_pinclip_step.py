"""PinCLIP's training step: time, FLOPs, achieved FLOP/s and MFU, in one run.

    python benchmarks/bench_pinclip_step.py [--steps 10 --threads 2 --batch-size 128 --scale small]

The step is the tower phase's (``train._tower_losses``): one forward pass of ``batch_size``
pins through the image tower, the text adapter and every fusion head, image<->text InfoNCE
plus the board-proxy loss on the fused and text embeddings, backward, AdamW. Then the
fusion phase's step (every head on its own cached batch, batched). Inputs are synthetic
tensors of the real shapes, so the numbers measure compute, not the data path.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` over one whole step (forward
and backward; it counts matmuls, convolutions and attention, not elementwise work). MFU is
achieved FLOP/s over the machine's measured fp32 matmul FLOP/s (a square matmul big enough
to be compute-bound, same thread count), so the ratio says how much of what this CPU can
do the step uses.
"""

from __future__ import annotations

import torch
from figures import Figure
from timing import matmul_flops_per_second, measure, settings_for, step_benchmark_arguments

from mmpipe.nn.losses import BoardProxyLoss, ClipLoss
from mmpipe.systems.pinclip.model import PinCLIP
from mmpipe.systems.pinclip.train import PinCLIPSettings

BENCHMARK = "pinclip_step"
N_BOARDS = 200
TEXT_LENGTH = 32


def tower_step(model, proxies, optimizer, batch):
    pixels, hidden, mask, membership = batch
    image_tokens, image_emb = model.encode_image(pixels)
    text_tokens, text_emb = model.encode_text(hidden, mask)
    fused = model.fuse(image_tokens, text_tokens, mask, image_emb, text_emb, head=0)  # as _tower_losses
    loss = (ClipLoss()(image_emb, text_emb, model.logit_scale.exp())
            + proxies(fused, membership) + proxies(text_emb, membership))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def fusion_step(model, proxy_sets, optimizer, batch):
    fused = model.fuse_per_head(*batch[:5])
    loss = torch.stack([proxies(head, batch[5]) for proxies, head in zip(proxy_sets, fused)]).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def run(scale: str = "small", steps: int = 10, threads: int = 2, batch_size: int | None = None,
        peak: float | None = None) -> list[Figure]:
    """Both phases' step MFU at ``scale``, printing what ``main`` always printed. ``peak``: the
    fp32 matmul FLOP/s already measured by the caller (one denominator for every figure)."""
    settings = settings_for(PinCLIPSettings, "pinclip", scale, threads)
    c, train = settings.model, settings.train
    batch_size = batch_size or train.batch_size

    peak = peak or matmul_flops_per_second()
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s on {threads} threads; model {scale}: "
          f"{c.image_size}px, ViT {c.vit_width}x{c.vit_depth}, {c.n_fusion_heads} fusion heads, batch {batch_size}")

    model = PinCLIP(c)
    proxies = BoardProxyLoss(N_BOARDS, c.embed_dim)
    membership = torch.zeros(batch_size, N_BOARDS)
    membership[torch.arange(batch_size), torch.randint(0, N_BOARDS, (batch_size,))] = 1
    mask = torch.ones(batch_size, TEXT_LENGTH, dtype=torch.bool)
    mask[:, TEXT_LENGTH // 2:] = torch.rand(batch_size, TEXT_LENGTH - TEXT_LENGTH // 2) < 0.3
    batch = (torch.randn(batch_size, 3, c.image_size, c.image_size),
             torch.randn(batch_size, TEXT_LENGTH, c.text_hidden_size), mask, membership)
    optimizer = torch.optim.AdamW([*model.parameters(), *proxies.parameters()], lr=1e-4)
    tower = measure(lambda: tower_step(model, proxies, optimizer, batch), steps)
    print(tower.line("tower step", peak))

    with torch.no_grad():
        image_tokens, image_emb = model.encode_image(batch[0])
        text_tokens, text_emb = model.encode_text(batch[1], batch[2])
    heads = c.n_fusion_heads
    fusion_batch = tuple(x.expand(heads, *x.shape).contiguous()
                         for x in (image_tokens, text_tokens, mask, image_emb, text_emb))
    proxy_sets = torch.nn.ModuleList(BoardProxyLoss(N_BOARDS, c.embed_dim, seed=h) for h in range(heads))
    fusion_optimizer = torch.optim.AdamW([*model.fusion_parameters(), *proxy_sets.parameters()], lr=1e-4)
    fusion = measure(lambda: fusion_step(model, proxy_sets, fusion_optimizer, (*fusion_batch, membership)), steps)
    print(fusion.line("fusion step", peak))
    return [tower.mfu(BENCHMARK, f"tower step ({scale}, batch {batch_size})", peak, threads),
            fusion.mfu(BENCHMARK, f"fusion step ({scale}, {heads} heads x {batch_size})", peak, threads)]


def main() -> None:
    args = step_benchmark_arguments(__doc__, steps=10).parse_args()
    run(args.scale, args.steps, args.threads, args.batch_size)


if __name__ == "__main__":
    main()
