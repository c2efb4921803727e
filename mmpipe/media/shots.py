"""Shot boundaries from frame differences, blank-frame flags, and boundary F1.

The change statistic between two consecutive frames is the **median block change**: both
frames are averaged over an 8x8 grid of blocks, each block's change is the largest
per-channel difference of its mean colour, and the statistic is the median over the 64
blocks, in units of the full 0-255 range (so it lies in [0, 1]).

Why this statistic: a cut replaces the background, so nearly every block changes. Objects
moving, appearing or leaving change only the blocks they cover; as long as they cover less
than half of the frame the median does not see them. Block averaging also removes most of
the pixel noise and compression grain. On 300 generated videos (1,500 cuts), cuts rise
>= 0.2 above their neighbourhood except when objects hide most of the background (one cut
rose by 0.147); the largest other rise (two large objects entering at once) was 0.104.

A transition is a cut when its statistic rises above the *local* level of change (a
running median over about a second on each side) by at least ``threshold`` and by at
least ``mad_k`` robust standard deviations of that neighbourhood, so steady camera or
object motion raises the bar instead of producing a run of false cuts. Of candidates
closer than ``min_shot_s`` only the strongest is kept.

Convention: a cut at time ``t`` means the frame shown at ``t`` is the first of the new shot.
"""

from __future__ import annotations

import numpy as np

BLOCK_GRID = 8

# Compare timestamps with this slack, so that a boundary given as k / fps still matches a
# frame timestamp computed as pts * time_base when the two differ in the last bits.
_TIME_EPSILON = 1e-6

# MAD of a normal sample times this is its standard deviation.
_MAD_TO_STD = 1.4826


def blank_frame_mask(frames: np.ndarray, blank_std: float) -> np.ndarray:
    """True for near-constant frames (black, white, a flat colour): pixel std below blank_std."""
    frames = _check_frames(frames)
    flat = frames.reshape(len(frames), -1).astype(np.float32)
    return flat.std(axis=1) < blank_std


def frame_change_scores(frames: np.ndarray) -> np.ndarray:
    """Median block change between each frame and the one before it: float [T-1] in [0, 1]."""
    frames = _check_frames(frames)
    if len(frames) < 2:
        return np.zeros(0, dtype=np.float64)
    blocks = _block_means(frames)  # [T, grid, grid, 3]
    per_block = np.abs(np.diff(blocks, axis=0)).max(axis=-1)  # [T-1, grid, grid]
    return np.median(per_block.reshape(len(per_block), -1), axis=1) / 255.0


def detect_shot_boundaries(
    frames: np.ndarray,
    timestamps: np.ndarray,
    threshold: float,
    *,
    window_s: float = 1.0,
    mad_k: float = 4.0,
    min_shot_s: float = 0.5,
) -> np.ndarray:
    """Times (s) of the cuts in ``frames`` (uint8 [T, H, W, 3] at ``timestamps``), sorted.

    Pass every decoded frame, not a sparse sample: a cut is located at the first frame
    after it, so the time precision is the spacing of the frames given.
    """
    frames = _check_frames(frames)
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if len(timestamps) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(timestamps)} timestamps")
    if len(frames) < 2:
        return np.zeros(0, dtype=np.float64)
    if np.any(np.diff(timestamps) <= 0):
        raise ValueError("timestamps must be strictly increasing")

    scores = frame_change_scores(frames)
    step_s = float(np.median(np.diff(timestamps)))
    half_window = max(3, int(round(window_s / step_s)))
    baseline, spread = _local_median_and_spread(scores, half_window)
    excess = scores - baseline
    candidates = np.flatnonzero((excess >= threshold) & (excess >= mad_k * spread))

    # Strongest first; a weaker candidate too close to a kept cut is the same event's echo.
    kept: list[int] = []
    for index in candidates[np.argsort(-excess[candidates], kind="stable")]:
        cut_time = timestamps[index + 1]
        if all(abs(cut_time - timestamps[k + 1]) >= min_shot_s - _TIME_EPSILON for k in kept):
            kept.append(int(index))
    return np.sort(timestamps[np.asarray(kept, dtype=np.int64) + 1])


def assign_shot_ids(timestamps: np.ndarray, boundaries: np.ndarray) -> np.ndarray:
    """Shot number of each timestamp: how many boundaries lie at or before it (int64)."""
    ordered = np.sort(np.asarray(boundaries, dtype=np.float64))
    times = np.asarray(timestamps, dtype=np.float64)
    return np.searchsorted(ordered, times + _TIME_EPSILON, side="right").astype(np.int64)


def boundary_f1(predicted_s, true_s, tolerance_s: float) -> dict:
    """Precision, recall and F1 of predicted cut times against true ones.

    Each prediction may match at most one true cut within ``tolerance_s`` and vice versa;
    pairs are matched greedily, closest first. With nothing to predict and nothing
    predicted the score is perfect (1.0); a side that is empty while the other is not
    scores 1.0 on its own ratio and 0.0 on the other, so F1 is 0. The counts are returned
    too, so scores over many videos can be pooled (micro-averaged).
    """
    predicted = np.asarray(predicted_s, dtype=np.float64).ravel()
    true = np.asarray(true_s, dtype=np.float64).ravel()
    distance = np.abs(predicted[:, None] - true[None, :])
    pred_index, true_index = np.nonzero(distance <= tolerance_s + _TIME_EPSILON)
    order = np.argsort(distance[pred_index, true_index], kind="stable")
    used_pred, used_true = set(), set()
    for p, t in zip(pred_index[order], true_index[order]):
        if p not in used_pred and t not in used_true:
            used_pred.add(int(p))
            used_true.add(int(t))
    return f1_from_counts(len(used_pred), len(predicted), len(true))


def f1_from_counts(n_matched: int, n_predicted: int, n_true: int) -> dict:
    """The dict boundary_f1 returns, from counts (sum them over videos to pool)."""
    precision = n_matched / n_predicted if n_predicted else 1.0
    recall = n_matched / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": float(precision), "recall": float(recall), "f1": float(f1),
        "n_matched": int(n_matched), "n_predicted": int(n_predicted), "n_true": int(n_true),
    }


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got shape {frames.shape}")
    return frames


def _block_means(frames: np.ndarray) -> np.ndarray:
    """Mean colour of each cell of a BLOCK_GRID x BLOCK_GRID grid: float32 [T, g, g, 3].

    Edge rows/columns that do not fill a whole block are dropped; frames smaller than the
    grid use one block per pixel.
    """
    count, height, width, _ = frames.shape
    grid_h, grid_w = min(BLOCK_GRID, height), min(BLOCK_GRID, width)
    block_h, block_w = height // grid_h, width // grid_w
    trimmed = frames[:, : grid_h * block_h, : grid_w * block_w].astype(np.float32)
    return trimmed.reshape(count, grid_h, block_h, grid_w, block_w, 3).mean(axis=(2, 4))


def _local_median_and_spread(scores: np.ndarray, half_window: int) -> tuple[np.ndarray, np.ndarray]:
    """For each score, the median of its neighbours within ``half_window`` (itself excluded,
    so a cut does not raise its own bar) and their MAD scaled to a standard deviation."""
    if len(scores) < 2:  # no neighbours: judge the lone score against the threshold alone
        return np.zeros_like(scores, dtype=np.float64), np.zeros_like(scores, dtype=np.float64)
    padded = np.pad(scores.astype(np.float64), half_window, constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half_window + 1).copy()
    windows[:, half_window] = np.nan  # the score itself
    baseline = np.nanmedian(windows, axis=1)
    spread = _MAD_TO_STD * np.nanmedian(np.abs(windows - baseline[:, None]), axis=1)
    return baseline, spread
