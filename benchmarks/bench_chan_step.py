"""CHAN's training steps, both phases: time, FLOPs, achieved FLOP/s and MFU, in one run.

    python benchmarks/bench_chan_step.py [--steps 10 --threads 2 --batch-size 64 --scale small]

The steps are ``CHANTask``'s on a batch as ``CHANInputs.batch`` pads it: ``batch_size``
summary queries, each with its whole video's shot vectors (the shot feature and, with
``model.frame_extremes``, the max and min of its frame features: 3x the frame encoder's
width), padded to the world's longest video (one shot per 2 s: 10 shots on the small world,
whose densest video has 10), and the query's text-tower token states. The relevance phase's
step (``training_forward``): concept evidence, segments, local and query-aware global
attention, relevance BCE plus the concept BCEs, backward, gradient clipping, AdamW over
everything but the evidence (fitted in the first phase, frozen). The concepts phase's step
(``concepts_forward``): the linear evidence and the query's concepts alone, Adam. Inputs are
synthetic tensors of the real shapes (21 concepts, each shot showing ~5.7 of them, as the
generated world's), so the numbers measure compute, not the data path. FLOPs and MFU as in
``timing.py``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from figures import Figure
from timing import (VideoShapes, loop_step, matmul_flops_per_second, measure, padding_mask, settings_for,
                    step_benchmark_arguments, video_shapes)

from mmpipe.systems.chan.data import ShotBatch
from mmpipe.systems.chan.losses import concept_loss, shot_relevance_loss
from mmpipe.systems.chan.model import CHAN, CHANConfig
from mmpipe.systems.chan.train import CHANSettings
from mmpipe.world.attributes import ATTRIBUTES
from mmpipe.world.videos import CONCEPT_ATTRIBUTES

BENCHMARK = "chan_step"
N_CONCEPTS = sum(len(ATTRIBUTES[name]) for name in CONCEPT_ATTRIBUTES)  # the world's concept words: 21
SHOT_S = 2.0  # seconds per shot in the densest videos (the small world: 10 shots in 20 s, 5.6 on average)
# The longest summary query of the small world in all-MiniLM tokens ("red, striped": 4.9 on average).
QUERY_TOKENS = 8
SHOWN, RELEVANT = 0.27, 0.44  # share of concepts a shot shows, of shots relevant to a query (small world)


def synthetic_batch(batch_size: int, shapes: VideoShapes, c: CHANConfig) -> ShotBatch:
    """``batch_size`` queries with their videos' shots, padded to the longest video."""
    longest = max(1, round(shapes.longest_s / SHOT_S))
    shot_mask = padding_mask(batch_size, longest, max(1, round(shapes.shortest_s / SHOT_S)))
    query_concepts = torch.zeros(batch_size, c.n_concepts)
    query_concepts[torch.arange(batch_size), torch.randint(0, c.n_concepts, (batch_size,))] = 1  # 1-2 concepts
    query_concepts[torch.arange(batch_size), torch.randint(0, c.n_concepts, (batch_size,))] = 1
    return ShotBatch(torch.randn(batch_size, longest, c.shot_dim) * shot_mask[..., None], shot_mask,
                     (torch.rand(batch_size, longest) < RELEVANT).float() * shot_mask,
                     torch.randn(batch_size, QUERY_TOKENS, c.text_hidden_size),
                     padding_mask(batch_size, QUERY_TOKENS, 3),
                     (torch.rand(batch_size, longest, c.n_concepts) < SHOWN).float() * shot_mask[..., None],
                     query_concepts)


def run(scale: str = "small", steps: int = 10, threads: int = 2, batch_size: int | None = None,
        peak: float | None = None, rounds: int = 3) -> list[Figure]:
    """Both phases' step MFU at ``scale``, printing what ``main`` prints. ``peak``: the fp32
    matmul FLOP/s already measured by the caller (one denominator for every figure)."""
    settings = settings_for(CHANSettings, "chan", scale, threads)
    train = settings.train
    batch_size = batch_size or train.batch_size
    shapes = video_shapes(scale)
    c = replace(settings.model, shot_dim=shapes.frame_dim * (3 if settings.model.frame_extremes else 1),
                n_concepts=N_CONCEPTS)
    batch = synthetic_batch(batch_size, shapes, c)
    n_shots = batch.shot_mask.shape[1]

    peak = peak or matmul_flops_per_second()
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s on {threads} threads; model {scale}: width {c.width}, "
          f"{c.shot_dim}-wide shots, {c.n_concepts} concepts, segments of {c.segment_shots} pooled by {c.pool}, "
          f"local attention {c.local_attention}, global {c.global_attention}; "
          f"batch {batch_size} x {n_shots} shots x {QUERY_TOKENS} tokens")

    model = CHAN(c).train()
    inputs = (batch.shots, batch.shot_mask, batch.query_hidden, batch.query_mask)
    # The concepts phase: the evidence and the query's concept head (CHANTask.phases).
    evidence = list(model.evidence.parameters())
    concept_params = [*evidence, *model.query_in.parameters(), *model.query_mlp.parameters(),
                      *model.query_concepts.parameters()]

    def concepts_loss() -> torch.Tensor:
        shown, _, named = model.concept_logits(*inputs)
        return concept_loss({"evidence": shown, "query": named}, batch.shot_concepts, batch.shot_mask,
                            batch.query_concepts)

    concepts = measure(loop_step(concepts_loss, torch.optim.Adam(concept_params, lr=train.concept_lr),
                                 train.grad_clip_norm), steps, rounds)
    print(concepts.line("concepts step", peak))

    # The relevance phase: the evidence frozen, everything else trained.
    model.evidence.requires_grad_(False)
    fitted = {id(p) for p in evidence}
    rest = [p for p in model.parameters() if id(p) not in fitted]

    def relevance_loss() -> torch.Tensor:
        logits, logits_by_kind = model.forward_with_concepts(*inputs)
        del logits_by_kind["evidence"]
        return (shot_relevance_loss(logits, batch.relevance, batch.shot_mask) + train.concept_weight
                * concept_loss(logits_by_kind, batch.shot_concepts, batch.shot_mask, batch.query_concepts))

    optimizer = torch.optim.AdamW(rest, lr=train.lr, weight_decay=train.weight_decay)
    relevance = measure(loop_step(relevance_loss, optimizer, train.grad_clip_norm), steps, rounds)
    print(relevance.line("relevance step", peak))
    shape = f"{scale}, batch {batch_size} x {n_shots} shots"
    return [relevance.mfu(BENCHMARK, f"relevance step ({shape})", peak, threads),
            concepts.mfu(BENCHMARK, f"concepts step ({shape})", peak, threads)]


def main() -> None:
    args = step_benchmark_arguments(__doc__, steps=10, rounds=3).parse_args()
    run(args.scale, args.steps, args.threads, args.batch_size, rounds=args.rounds)


if __name__ == "__main__":
    main()
