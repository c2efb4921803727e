"""Generate the whole world: raw tables, images, videos and ground truth, from one seed."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmpipe import layout
from mmpipe.io import atomic_path, write_bytes_atomic
from mmpipe.world.attributes import ATTRIBUTES
from mmpipe.world.captions import MENTION_PROBABILITY
from mmpipe.world.config import WorldConfig, world_config
from mmpipe.world.pins import (
    BAD_RECORD_COLUMNS,
    POSITION_BIAS,
    day_to_date,
    generate_boards,
    generate_interactions,
    generate_pins,
    generate_users,
)
from mmpipe.world.videos import generate_videos

# Every part of the world draws from its own stream, so changing one part (say, the
# number of videos) leaves the others byte-identical.
STREAMS = {"pins": 1, "boards": 2, "users": 3, "interactions": 4, "videos": 5}

# What the generator owns inside its output folder, and may delete when regenerating.
GENERATED_DIRS = ("images", "videos", "_truth")


def stream_rng(seed: int, part: str) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[part]])


def world_dates(cfg: WorldConfig) -> list[str]:
    return [day_to_date(cfg.start_date, d) for d in range(cfg.n_days)]


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Write a table without index or pandas metadata, strings as plain utf8 columns."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    fields = [
        pa.field(f.name, pa.string()) if pa.types.is_large_string(f.type) or pa.types.is_null(f.type) else f
        for f in table.schema
    ]
    table = table.cast(pa.schema(fields)).replace_schema_metadata(None)
    with atomic_path(path) as tmp:  # a world advanced in place is read while it is written
        pq.write_table(table, tmp)


def clear_previous_world(out: Path) -> None:
    """Remove what an earlier generation wrote to ``out``; refuse to touch anything else.

    A folder holding raw tables or media but no ``_truth/`` was not written by the
    generator (it creates ``_truth/`` first), so it may be a user's own data.
    """
    ours = [out / name for name in GENERATED_DIRS] + [layout.raw_table_path(out, t) for t in layout.RAW_TABLES]
    ours.append(out / layout.MANIFEST_FILE)
    present = [path for path in ours if path.exists()]
    if present and not (out / "_truth").is_dir():
        raise FileExistsError(
            f"{out} holds data the generator did not write ({', '.join(p.name for p in present)}); "
            "choose an empty folder"
        )
    for path in present:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def generate_world(out: Path, cfg: WorldConfig | str = "small", progress: bool = True,
                   workers: int | None = None) -> dict:
    """Write a complete world to ``out`` and return a summary of what was written. Images and
    videos are made on ``workers`` processes (default: one per CPU); the output is the same
    byte for byte whatever their number."""
    cfg = world_config(cfg) if isinstance(cfg, str) else cfg
    out = Path(out)
    clear_previous_world(out)
    (out / "_truth").mkdir(parents=True)
    dates = world_dates(cfg)

    pins = generate_pins(out, cfg, stream_rng(cfg.seed, "pins"), progress, workers)
    boards = generate_boards(cfg, stream_rng(cfg.seed, "boards"), pins, progress)
    users = generate_users(cfg, stream_rng(cfg.seed, "users"))
    interactions = generate_interactions(cfg, stream_rng(cfg.seed, "interactions"), pins, users)
    started = time.perf_counter()
    videos = generate_videos(out, cfg, stream_rng(cfg.seed, "videos"), dates, progress, workers)
    video_seconds = time.perf_counter() - started

    raw = {
        "pins": pins.pins,
        "boards": boards.boards,
        "board_pins": boards.board_pins,
        "users": users.users,
        "interactions": interactions.interactions,
        **videos.raw_tables(),
    }
    for table, df in raw.items():
        write_parquet(df[layout.RAW_COLUMNS[table]], layout.raw_table_path(out, table))

    bad_records = pd.concat(
        [pins.bad_records, boards.bad_records, users.bad_records, interactions.bad_records,
         videos.bad_records[BAD_RECORD_COLUMNS]],
        ignore_index=True,
    )
    bad_records["row_index"] = bad_records["row_index"].astype(np.int64)
    bad_records["record_id"] = bad_records["record_id"].astype(object)
    truth = {
        "pin_objects": pins.pin_objects,
        "caption_attributes": pins.caption_attributes,
        "board_themes": boards.board_themes,
        "board_saves": boards.board_saves,
        "user_affinities": users.user_affinities,
        "impressions": interactions.impressions,
        "video_objects": videos.video_objects,
        "shots": videos.shots,
        "moments": videos.moments,
        "bad_records": bad_records,
    }
    for name, df in truth.items():
        write_parquet(df, layout.truth_path(out, name))

    counts = {table: len(df) for table, df in raw.items()}
    bad_counts = {table: int((bad_records["table"] == table).sum()) for table in raw}
    cold_start = cfg.n_days - cfg.cold_days
    world = {
        "seed": cfg.seed,
        "scale": cfg.scale,
        "config": dataclasses.asdict(cfg),
        "start_date": dates[0],
        "end_date": dates[-1],
        "dates": dates,
        "cutoff_date": dates[cold_start],  # first day whose new pins are cold
        "cold_days": cfg.cold_days,
        "attributes": {name: list(values) for name, values in ATTRIBUTES.items()},
        "caption_mention_probability": MENTION_PROBABILITY,
        "position_bias": POSITION_BIAS,
        "mean_p_click": interactions.mean_p_click,
        "exploration_impressions": interactions.n_exploration,  # good ones, of truth's impressions
        "counts": counts,
        "bad_records": bad_counts,
    }
    write_bytes_atomic((json.dumps(world, indent=2) + "\n").encode(), layout.truth_path(out, "world"))
    layout.write_manifest(
        out,
        {"producer": "mmpipe world generate", "scale": cfg.scale, "seed": cfg.seed,
         "start_date": dates[0], "end_date": dates[-1], "rows": counts},
    )
    return {
        "out": str(out),
        "scale": cfg.scale,
        "seed": cfg.seed,
        "counts": counts,
        "bad_records": bad_counts,
        "mean_p_click": interactions.mean_p_click,
        "exploration_impressions": interactions.n_exploration,
        "cutoff_date": world["cutoff_date"],
        "video_generation_s": round(video_seconds, 1),
    }
