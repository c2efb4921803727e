"""Retrieval with several relevant targets per query (MSR-VTT's several captions per
video): the chunked ranks against an obvious full-matrix reference, and hand-worked cases."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

import mmpipe.eval.retrieval as retrieval
from mmpipe.eval.retrieval import first_relevant_ranks, paired_ranks, retrieval_metrics, summarise_ranks


def naive_first_relevant_ranks(query: np.ndarray, target: np.ndarray, relevant) -> np.ndarray:
    """The whole score matrix; each row sorted best first with ties broken against the
    model (non-relevant targets before relevant ones); the position of the first relevant."""
    scores = query @ target.T
    ranks = []
    for row, wanted in enumerate(relevant):
        is_relevant = np.isin(np.arange(len(target)), wanted)
        order = np.lexsort((is_relevant, -scores[row]))  # last key sorts first: score, then relevance
        ranks.append(int(np.flatnonzero(is_relevant[order])[0]) + 1)
    return np.asarray(ranks)


def _captions_of_videos(n_videos: int, rng: np.random.Generator) -> np.ndarray:
    """The video of each caption: one to five captions per video, shuffled."""
    video_of_caption = np.repeat(np.arange(n_videos), rng.integers(1, 6, size=n_videos))
    return rng.permutation(video_of_caption)


@pytest.mark.parametrize("chunk", [1, 7, 1024])
@pytest.mark.parametrize("ties", [False, True])
def test_first_relevant_ranks_match_the_full_matrix_reference_both_directions(chunk, ties):
    rng = np.random.default_rng(0 if ties else 1)
    n_videos = 40
    caption_video = _captions_of_videos(n_videos, rng)
    dim = 3 if ties else 16
    # Small integer vectors make many exact ties; Gaussian ones almost none.
    make = (lambda n: rng.integers(-1, 2, size=(n, dim)).astype(np.float32)) if ties else (
        lambda n: rng.standard_normal((n, dim), dtype=np.float32))
    videos, captions = make(n_videos), make(len(caption_video))

    text_to_video = [[video] for video in caption_video]
    video_to_text = [np.flatnonzero(caption_video == video) for video in range(n_videos)]
    for query, target, relevant in ((captions, videos, text_to_video), (videos, captions, video_to_text)):
        fast = first_relevant_ranks(query, target, relevant, chunk=chunk)
        assert fast.dtype == np.int64
        np.testing.assert_array_equal(fast, naive_first_relevant_ranks(query, target, relevant))


def test_one_relevant_target_each_is_paired_retrieval():
    rng = np.random.default_rng(2)
    query = torch.from_numpy(rng.integers(-1, 2, size=(30, 4)).astype(np.float32))  # torch in, ties included
    target = torch.from_numpy(rng.integers(-1, 2, size=(30, 4)).astype(np.float32))
    ranks = first_relevant_ranks(query, target, [[i] for i in range(30)], chunk=4)
    np.testing.assert_array_equal(ranks, paired_ranks(query, target))
    assert summarise_ranks(ranks) == retrieval_metrics(query, target)


def test_hand_worked_ranks():
    query = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    target = np.array([[1.0, 0.0],   # t0
                       [0.5, 0.5],   # t1
                       [0.0, 1.0],   # t2
                       [1.0, 0.0]])  # t3: the same vector as t0
    # q0 scores 1, .5, 0, 1. Its relevant t1 is beaten by t0 and t3: rank 3. With t0 relevant
    # too, t0 is the best relevant and only t3 (not relevant, tied) is ahead: rank 2.
    # q1 scores 0, .5, 1, 0: t2 is first. q2 scores 1, 1, 1, 1: everything is tied, so the
    # relevant t2 comes after the three others (rank 4), and with t0 and t2 relevant after
    # the two non-relevant ones (rank 3); duplicates in a relevant list change nothing.
    ranks = first_relevant_ranks(query, target, [[1], [2], [2]])
    assert ranks.tolist() == [3, 1, 4]
    assert first_relevant_ranks(query, target, [[1, 0], [2, 2], [0, 2, 0]]).tolist() == [2, 1, 3]
    assert summarise_ranks(ranks, ks=(1, 3)) == {"R@1": 1 / 3, "R@3": 2 / 3, "median_rank": 3.0,
                                                 "mean_rank": 8 / 3}


def test_a_collapsed_model_gets_the_worst_rank():
    n_targets = 6
    ranks = first_relevant_ranks(np.ones((2, 3)), np.ones((n_targets, 3)), [[0], [1, 2, 5]])
    assert ranks.tolist() == [n_targets, n_targets - 3 + 1]


def test_bad_inputs_are_refused():
    query, target = np.eye(2), np.eye(2)
    with pytest.raises(ValueError, match="no relevant target"):
        first_relevant_ranks(query, target, [[0], []])
    with pytest.raises(ValueError, match="one list of relevant targets per query"):
        first_relevant_ranks(query, target, [[0]])
    with pytest.raises(ValueError, match=r"must be in \[0, 2\)"):
        first_relevant_ranks(query, target, [[0], [2]])
    with pytest.raises(ValueError, match="dims differ"):
        first_relevant_ranks(query, np.eye(3), [[0], [1]])
    with pytest.raises(ValueError, match="no queries"):
        first_relevant_ranks(np.zeros((0, 2)), target, [])
    with pytest.raises(ValueError, match="non-empty"):
        summarise_ranks(np.array([], dtype=np.int64))


def test_doctests():
    assert doctest.testmod(retrieval, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0
