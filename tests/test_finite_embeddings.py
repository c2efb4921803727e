"""NaN or inf embeddings never reach an index: the blocking ``finite_embeddings`` check on
every embeddings asset that feeds one, and the library function it calls.

The Dagster tests run the real check and the real index asset of each system (PinCLIP's
pin index, MAC's video index) with a stand-in for the embeddings asset (same key, same day
partitions) that writes rows the test chooses, so no model has to be trained.
"""

# No `from __future__ import annotations`: Dagster reads the stand-in's context annotation as a type.
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from mmpipe.embeddings import embedding_file, embedding_frame, non_finite_embeddings, write_day_embeddings
from mmpipe.index.faiss_index import VectorIndex
from mmpipe.systems.mac.serve import FRAME_EMBEDDINGS, FRAME_T_S
from orchestration import names
from orchestration.ingest import register_days
from orchestration.partitions import DAY, SINGLE_RUN
from orchestration.resources import PipelinePaths
from orchestration.systems import mac, pinclip

DAYS = ["2026-01-01", "2026-01-02"]
DIM = 8


def _unit(n: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def pin_rows(day: str, seed: int, poison: dict[str, list[int]]) -> pd.DataFrame:
    """Five pins of ``day``; ``poison`` maps a kind to the rows made NaN (fused) or inf (others)."""
    vectors = {kind: _unit(5, seed + k) for k, kind in enumerate(("image", "text", "fused"))}
    for kind, rows in poison.items():
        vectors[kind][rows, 1] = np.nan if kind == "fused" else np.inf
    return embedding_frame([f"p{day[-1]}{k}" for k in range(5)], [day] * 5, vectors, "1")


def video_rows(day: str, seed: int, poison: dict[str, list[int]]) -> pd.DataFrame:
    """Three videos of ``day`` with two frame embeddings each; ``poison`` as in ``pin_rows``."""
    video, frames = _unit(3, seed), _unit(6, seed + 1).reshape(3, 2, DIM)
    for row in poison.get("video", []):
        video[row, 0] = np.nan
    for row in poison.get(FRAME_EMBEDDINGS, []):
        frames[row, 1, 3] = -np.inf
    frame = embedding_frame([f"v{day[-1]}{k}" for k in range(3)], [day] * 3, {"video": video}, "1",
                            id_column="video_id")
    frame[FRAME_EMBEDDINGS] = pd.Series([list(clip) for clip in frames], dtype=object)
    frame[FRAME_T_S] = pd.Series([np.array([0.0, 1.0])] * 3, dtype=object)
    return frame


SYSTEMS = {
    "pinclip": (pinclip, names.PIN_EMBEDDINGS, names.FAISS_PIN_INDEX, pin_rows, ("index", "pins", "fused")),
    "mac": (mac, names.VIDEO_EMBEDDINGS, names.FAISS_VIDEO_INDEX, video_rows, ("index", "videos", "video")),
}


def _materialize(system: str, tmp_path: Path, poison: dict[str, dict[str, list[int]]]):
    """The stand-in embeddings (rows of ``poison[day]`` non-finite), the real check and the
    real index asset, in one run over both days."""
    module, embeddings, index, rows, _ = SYSTEMS[system]

    @dg.asset(name=embeddings, partitions_def=DAY, backfill_policy=SINGLE_RUN)
    def stand_in(context: dg.AssetExecutionContext, paths: PipelinePaths) -> None:
        for seed, day in enumerate(sorted(context.partition_keys)):
            write_day_embeddings(rows(day, 10 * seed, poison.get(day, {})), module.embeddings_dir(paths), day)

    (check,) = [c for c in module.asset_checks if c.check_key.name == "finite_embeddings"]
    (index_asset,) = [a for a in module.assets if a.key == dg.AssetKey(index)]
    instance = dg.DagsterInstance.ephemeral()
    register_days(instance, DAYS)
    result = dg.materialize(
        [stand_in, index_asset, check], instance=instance, raise_on_error=False,
        resources={"paths": PipelinePaths(raw_dir=str(tmp_path / "raw"), storage_dir=str(tmp_path / "storage"))},
        tags={"dagster/asset_partition_range_start": DAYS[0], "dagster/asset_partition_range_end": DAYS[-1]},
    )
    (evaluation,) = result.get_asset_check_evaluations()
    indexed = {event.asset_key for event in result.get_asset_materialization_events()} >= {dg.AssetKey(index)}
    return evaluation, indexed


@pytest.mark.parametrize("system", list(SYSTEMS))
def test_finite_embeddings_pass_and_are_indexed(system, tmp_path):
    evaluation, indexed = _materialize(system, tmp_path, {})
    assert evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR  # blocking
    rows = 10 if system == "pinclip" else 6
    assert evaluation.metadata["rows"].value == rows and evaluation.metadata["non_finite_rows"].value == 0
    assert indexed
    assert VectorIndex.load(tmp_path.joinpath("storage", *SYSTEMS[system][4])).ntotal == rows


@pytest.mark.parametrize("system, poison, named, description", [
    ("pinclip", {"2026-01-02": {"fused": [1, 3]}, "2026-01-01": {"image": [4]}},
     {"fused": ["p21", "p23"], "image": ["p14"]},
     "1 pin_id with non-finite image: ['p14']; 2 pin_id with non-finite fused: ['p21', 'p23']"),
    ("mac", {"2026-01-01": {FRAME_EMBEDDINGS: [2]}, "2026-01-02": {"video": [0]}},
     {FRAME_EMBEDDINGS: ["v12"], "video": ["v20"]},
     "1 video_id with non-finite frame_embeddings: ['v12']; 1 video_id with non-finite video: ['v20']"),
])
def test_a_non_finite_embedding_fails_the_check_names_its_rows_and_blocks_the_index(system, poison, named,
                                                                                    description, tmp_path):
    evaluation, indexed = _materialize(system, tmp_path, poison)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["non_finite"].value == named
    assert evaluation.metadata["non_finite_rows"].value == sum(map(len, named.values()))
    assert evaluation.description == description
    assert not indexed  # blocked: the index asset did not run
    assert not tmp_path.joinpath("storage", *SYSTEMS[system][4]).exists()


def test_non_finite_embeddings_reads_every_vector_column_nested_or_not(tmp_path):
    frame = video_rows("2026-01-03", 0, {"video": [1], FRAME_EMBEDDINGS: [1, 2]})
    frame.loc[0, FRAME_T_S] = np.array([0.0, np.nan])  # frame times are vectors of floats too
    write_day_embeddings(frame, tmp_path, "2026-01-03")
    rows, bad = non_finite_embeddings([embedding_file(tmp_path, "2026-01-03")], "video_id")
    assert rows == 3
    assert bad == {"video": ["v31"], FRAME_EMBEDDINGS: ["v31", "v32"], FRAME_T_S: ["v30"]}
    write_day_embeddings(pin_rows("2026-01-04", 0, {}), tmp_path, "2026-01-04")
    assert non_finite_embeddings([embedding_file(tmp_path, "2026-01-04")]) == (5, {})
