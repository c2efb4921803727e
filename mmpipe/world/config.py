"""Sizes and rates of the generated world, one preset per scale."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class WorldConfig:
    scale: str = "small"
    seed: int = 0
    start_date: str = "2026-01-01"
    n_days: int = 30
    cold_days: int = 3  # pins of the last `cold_days` days are cold: few or no interactions
    # pins, boards, users, clicks
    n_pins: int = 5000
    n_boards: int = 200
    n_users: int = 500
    n_impressions: int = 100_000
    taste_communities: int = 8  # users share tastes within a community (world/pins.py)
    image_size: int = 96
    max_objects_per_pin: int = 3
    off_theme_rate: float = 0.10
    # Share of each day's impressions that exploration gives to new pins (pins in their
    # first cold_days days that the feed serves), on top of the popularity-driven feed.
    # Without it a pin created after the training cut-off is barely shown, and a cold-start
    # CTR model has too few cold impressions to be scored on: at small, 0.3 puts about
    # 24,000 impressions of cold items (as eval/splits defines them) in the test window.
    exploration_share: float = 0.3
    typo_rate: float = 0.05
    # videos: enough that a date-held-out test window (the last 6 of 30 days: ~190 videos,
    # ~770 moment queries) gives bootstrap intervals narrow enough to tell models apart, and
    # that MAC has enough training videos not to overfit them: with 600 (424 before the
    # cut-off) its validation R@5 peaked by step 200-300 and 500 steps did worse, and its test
    # R@5 was 1.13x-1.30x the frame baseline's over three seeds; with 900 (641), 1.31x-1.59x.
    n_videos: int = 900
    video_seconds: tuple[float, float] = (8.0, 20.0)
    video_fps: int = 8
    video_size: int = 96
    queries_per_video: int = 4  # moment queries (QVHighlights / Charades-STA style)
    captions_per_video: int = 4  # MSR-VTT-style sentences
    summary_queries_per_video: int = 2  # QFVS-style concept queries
    # deliberately bad records, as a fraction of the rows of each table
    bad_rate: float = 0.02

    def replace(self, **changes) -> "WorldConfig":
        return dataclasses.replace(self, **changes)


SCALES: dict[str, WorldConfig] = {
    "tiny": WorldConfig(
        scale="tiny", n_days=10, cold_days=2, n_pins=200, n_boards=10, n_users=20,
        n_impressions=2000, image_size=64, n_videos=24, video_seconds=(6.0, 10.0),
        video_size=64, bad_rate=0.04,
    ),
    "small": WorldConfig(scale="small"),
    "medium": WorldConfig(
        scale="medium", n_days=60, cold_days=5, n_pins=100_000, n_boards=2000, n_users=10_000,
        n_impressions=2_000_000, n_videos=5000,
        # Larger worlds have plenty of cold impressions from the feed alone (far more pins
        # are created after the cut-off); a smaller share keeps their tables from growing
        # by the ~40% that 0.3 adds.
        exploration_share=0.1,
    ),
    "large": WorldConfig(
        scale="large", n_days=90, cold_days=7, n_pins=1_000_000, n_boards=20_000,
        n_users=100_000, n_impressions=20_000_000, image_size=128, n_videos=20_000,
        video_seconds=(8.0, 30.0), video_size=128, exploration_share=0.05,
    ),
}


def world_config(scale: str = "small", **overrides) -> WorldConfig:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {sorted(SCALES)}")
    return SCALES[scale].replace(**overrides)
