"""The moment retrieval model's training step: time, FLOPs, achieved FLOP/s and MFU, in one run.

    python benchmarks/bench_moment_step.py [--steps 10 --threads 2 --batch-size 32 --scale small]

The step is ``MomentTask.training_forward``'s work on a batch as ``data.make_batch`` pads it:
``batch_size`` queries, each with its video's frame features (the frame encoder's width,
padded to the world's longest video at ``frames.sample_fps``: 40 frames on the small world)
and its query's text-tower token states; the model (early fusion, every head at the
settings of ``--scale``), ``losses.moment_losses`` with the settings' weights and boundary
smoothing, backward, gradient clipping and AdamW over ``param_groups``, as the shared loop
takes it. Inputs are synthetic tensors of the real shapes (videos of random length within
the world's range, one true window of 1.5-5 s per query, as the generated queries have), so
the numbers measure compute, not the data path. FLOPs and MFU as in ``timing.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from figures import Figure
from timing import (VideoShapes, loop_step, matmul_flops_per_second, measure, padding_mask, settings_for,
                    step_benchmark_arguments, video_shapes)

from mmpipe.systems.moment.data import Batch, frame_labels
from mmpipe.systems.moment.losses import moment_losses
from mmpipe.systems.moment.model import MomentConfig, MomentModel
from mmpipe.systems.moment.train import MomentSettings

BENCHMARK = "moment_step"
# The longest moment query of the small world in all-MiniLM tokens (8.7 on average): about
# what a batch of 32 pads its queries to.
QUERY_TOKENS = 15
WINDOW_S = (1.5, 5.0)  # the generated queries' true windows: 5% and 95% quantiles of their length


def synthetic_batch(batch_size: int, shapes: VideoShapes, c: MomentConfig, seed: int = 0) -> Batch:
    """``batch_size`` queries padded as ``make_batch`` pads them, with labels from one random
    true window each (within the query's video)."""
    rng = np.random.default_rng(seed)
    longest = shapes.frames(shapes.longest_s)
    frame_mask = padding_mask(batch_size, longest, shapes.frames(shapes.shortest_s))
    times = (torch.arange(longest) / shapes.sample_fps).expand(batch_size, longest) * frame_mask
    labels = []
    for n in frame_mask.sum(1).tolist():
        seconds = n / shapes.sample_fps
        length = min(rng.uniform(*WINDOW_S), seconds)
        start = rng.uniform(0.0, seconds - length)
        labels.append(frame_labels(np.arange(n) / shapes.sample_fps, np.array([[start, start + length]])))
    return Batch(np.arange(batch_size), torch.randn(batch_size, longest, shapes.frame_dim) * frame_mask[..., None],
                 frame_mask, times.float(), torch.randn(batch_size, QUERY_TOKENS, c.text_hidden_size),
                 padding_mask(batch_size, QUERY_TOKENS, 3), labels)


def run(scale: str = "small", steps: int = 10, threads: int = 2, batch_size: int | None = None,
        peak: float | None = None, rounds: int = 3) -> list[Figure]:
    """The step's MFU at ``scale``, printing what ``main`` prints. ``peak``: the fp32 matmul
    FLOP/s already measured by the caller (one denominator for every figure)."""
    settings = settings_for(MomentSettings, "moment", scale, threads)
    train = settings.train
    batch_size = batch_size or train.batch_size
    shapes = video_shapes(scale)
    c = settings.model.with_frame_dim(shapes.frame_dim)
    batch = synthetic_batch(batch_size, shapes, c)
    n_frames = batch.frame_mask.shape[1]

    peak = peak or matmul_flops_per_second()
    heads = "+".join(name for name in ("segmentation", "distributions", "regression") if getattr(c, name))
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s on {threads} threads; model {scale}: "
          f"{c.fusion} fusion, width {c.width} x depth {c.depth}, heads {heads}, frames {c.frame_dim}-wide "
          f"(context {c.context_frames}); batch {batch_size} x {n_frames} frames x {QUERY_TOKENS} tokens")

    model = MomentModel(c).train()
    optimizer = torch.optim.AdamW(model.param_groups(train.weight_decay), lr=train.lr)

    def loss() -> torch.Tensor:
        output = model(batch.frames, batch.frame_mask, batch.text, batch.text_mask)
        return moment_losses(output, batch, train.boundary_smoothing, train.loss_weights())["loss"]

    cost = measure(loop_step(loss, optimizer, train.grad_clip_norm), steps, rounds)
    print(cost.line("step", peak))
    return [cost.mfu(BENCHMARK, f"step ({scale}, batch {batch_size} x {n_frames} frames)", peak, threads)]


def main() -> None:
    args = step_benchmark_arguments(__doc__, steps=10, rounds=3).parse_args()
    run(args.scale, args.steps, args.threads, args.batch_size, rounds=args.rounds)


if __name__ == "__main__":
    main()
