"""CHAN's objective: binary cross-entropy between each real shot's relevance logit and its
relevance to the query (1 when the shot is one of the query's relevant shots), averaged
over the real shots of the batch (padding shots count for nothing), plus, weighted by
``concept_weight``, the same BCE on the concepts: each real shot's evidence and its
context-corrected logits against the concepts the shot is annotated with, and each query's
against the concepts it names."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F


def shot_relevance_loss(logits: torch.Tensor, relevance: torch.Tensor, shot_mask: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the real shots (``shot_mask``) of logits [B, N] against 0/1 relevance [B, N]."""
    if not shot_mask.any():
        raise ValueError("a batch without a single real shot has no loss")
    return F.binary_cross_entropy_with_logits(logits[shot_mask], relevance[shot_mask].to(logits.dtype))


def concept_loss(logits: Mapping[str, torch.Tensor], shot_concepts: torch.Tensor, shot_mask: torch.Tensor,
                 query_concepts: torch.Tensor) -> torch.Tensor:
    """Mean BCE of the real shots' concept logits (those of ``evidence`` and ``shots`` it holds,
    [B, N, V]) against the concepts they show, plus that of the queries' (``query``, [B, V])
    against those they name."""
    shown = shot_concepts[shot_mask]
    loss = sum(F.binary_cross_entropy_with_logits(logits[name][shot_mask], shown)
               for name in ("evidence", "shots") if name in logits)
    return loss + F.binary_cross_entropy_with_logits(logits["query"], query_concepts)
