"""Decoded, sampled, shot-segmented video frames."""


import dagster as dg
import numpy as np

from mmpipe.media.frames import FrameConfig, extract_frames
from mmpipe.media.preview import grid_png
from mmpipe.params import load_params
from orchestration.assets.validated import read_validated
from orchestration.metadata import png_metadata, preview_table
from orchestration.resources import PipelinePaths

_DEFAULTS = load_params()["frames"]


class FramesConfig(dg.Config):
    sample_fps: float = _DEFAULTS["sample_fps"]
    size: int = _DEFAULTS["size"]


@dg.asset(
    group_name="media",
    kinds={"pyav", "numpy"},
    deps=["validated_videos"],
    description="Frames of every valid video at `sample_fps`, resized, with timestamps and shot ids.",
    code_version="1",
)
def validated_frames(config: FramesConfig, paths: PipelinePaths) -> dg.MaterializeResult:
    videos = read_validated(paths, "videos")
    out_dir = paths.storage("frames")
    result = extract_frames(
        videos, paths.raw_root, out_dir, FrameConfig(sample_fps=config.sample_fps, size=config.size)
    )
    metadata = {
        "videos": len(result.summary),
        "videos_quarantined": len(result.quarantine),
        "frames": len(result.index),
        "blank_frames": int(result.index["is_blank"].sum()),
        "shots": int(result.summary["n_shots"].sum()),
        "per_video": preview_table(result.summary),
        "dagster/row_count": len(result.index),
    }
    if len(result.summary):
        first = result.summary["video_id"].iloc[0]
        frames = np.load(out_dir / f"{first}.npy", mmap_mode="r")
        picks = np.linspace(0, len(frames) - 1, num=min(16, len(frames))).astype(int)
        metadata["sample_frames"] = png_metadata(grid_png([frames[i] for i in picks]), f"frames of {first}")
    return dg.MaterializeResult(metadata=metadata)
