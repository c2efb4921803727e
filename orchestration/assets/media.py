"""Decoded, sampled, shot-segmented video frames, one day partition (the videos' day) each."""


import dagster as dg
import numpy as np
import pandas as pd

from mmpipe.media.frames import FrameConfig, extract_frames
from mmpipe.media.preview import grid_png
from mmpipe.params import load_params
from orchestration import names
from orchestration.assets.validated import read_validated
from orchestration.automation import EAGER
from orchestration.metadata import png_metadata, preview_table
from orchestration.partitions import DAY, SINGLE_RUN
from orchestration.resources import PipelinePaths

_DEFAULTS = load_params()["frames"]


class FramesConfig(dg.Config):
    sample_fps: float = _DEFAULTS["sample_fps"]
    size: int = _DEFAULTS["size"]


@dg.asset(
    name=names.VALIDATED_FRAMES,
    group_name="media",
    kinds={"pyav", "numpy"},
    deps=[names.validated("videos")],
    description="Frames of the day's valid videos at `sample_fps`, resized, with timestamps and shot ids "
                "(storage/frames/<day>/).",
    code_version="2",
    partitions_def=DAY,
    backfill_policy=SINGLE_RUN,
    automation_condition=EAGER,
)
def validated_frames(context: dg.AssetExecutionContext, config: FramesConfig,
                     paths: PipelinePaths) -> dg.MaterializeResult:
    cfg = FrameConfig(sample_fps=config.sample_fps, size=config.size)
    summaries, indexes, quarantines, sample = [], [], [], None
    for day in sorted(context.partition_keys):
        videos = read_validated(paths, "videos", [day])
        out_dir = paths.storage("frames", day)
        result = extract_frames(videos, paths.raw_root, out_dir, cfg)
        summaries.append(result.summary)
        indexes.append(result.index)
        quarantines.append(result.quarantine)
        if sample is None and len(result.summary):
            sample = out_dir / f"{result.summary['video_id'].iloc[0]}.npy"
    summary, index = pd.concat(summaries, ignore_index=True), pd.concat(indexes, ignore_index=True)
    metadata = {
        "videos": len(summary),
        "videos_quarantined": sum(len(q) for q in quarantines),
        "frames": len(index),
        "blank_frames": int(index["is_blank"].sum()),
        "shots": int(summary["n_shots"].sum()),
        "per_video": preview_table(summary),
        "dagster/row_count": len(index),
    }
    if summary.empty:
        metadata["note"] = "no valid video on these days: nothing to decode"
    if sample is not None:
        frames = np.load(sample, mmap_mode="r")
        picks = np.linspace(0, len(frames) - 1, num=min(16, len(frames))).astype(int)
        metadata["sample_frames"] = png_metadata(grid_png([frames[i] for i in picks]), f"frames of {sample.stem}")
    return dg.MaterializeResult(metadata=metadata)
