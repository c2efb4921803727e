"""Where every file of the pipeline lives, and the columns of every raw table.

This is the contract between the world generator (or a user's own data), validation,
and everything downstream. Paths inside tables are relative to the raw root
(``data/raw``) and must stay inside it.

Raw landing zone (``data/raw``, tracked by DVC through ``data.dvc``)::

    pins.parquet           pin_id, image_path, title, description, created_at
    boards.parquet         board_id, name, description, created_at
    board_pins.parquet     board_id, pin_id, saved_at
    users.parquet          user_id, country, signup_date
    interactions.parquet   impression_id, user_id, pin_id, date, position, clicked
    videos.parquet         video_id, video_path, title, duration_s, fps, created_at
    moment_queries.parquet query_id, video_id, query, windows
                           (windows: list of [start_s, end_s]; an event that happens twice
                           has two, as QVHighlights' relevant_windows)
    video_captions.parquet caption_id, video_id, caption  (MSR-VTT style, several per video)
    video_shots.parquet    video_id, shot_index, start_s, end_s, concepts
                           (annotated shots, QFVS style: concepts = list of concept words seen
                           in the shot, e.g. ["red", "star", "striped"])
    summary_queries.parquet query_id, video_id, concepts, relevant_shots
                           (query-focused summarization, QFVS style: 1-2 concept words, and
                           the shot_index values of the shots relevant to them)
    manifest.json          what the delivery declares: producer, start_date, end_date, row counts
                           (``mmpipe world advance`` adds n_days, truth_rows and deliveries:
                           [{date, rows}] with cumulative row counts after each delivery; it
                           writes the manifest last, and its counts are the committed rows)
    images/<pin_id>.jpg
    videos/<video_id>.mp4
    _truth/                ground truth, read only by eval code and tests

Dates are ISO strings ``YYYY-MM-DD`` (daily partitions key on them).

Derived data (``storage/``, outside the DVC-tracked ``data/``). Tables partitioned by day
(``mmpipe.partitions.PARTITIONED_TABLES``: pins, interactions, videos) are folders with one
file per day; the others one file::

    validated/<table>.parquet              boards, users, board_pins, moment_queries, video_captions,
                                           video_shots, summary_queries
    validated/<table>/<YYYY-MM-DD>.parquet pins, interactions, videos (one day each)
    quarantine/<table>[/<YYYY-MM-DD>].parquet  one row per rejected input row (QUARANTINE_COLUMNS)
    frames/<YYYY-MM-DD>/<video_id>.npy     uint8 [T, H, W, 3] sampled frames of one video
    frames/<YYYY-MM-DD>/index.parquet      video_id, frame_index, t_s, shot_id, is_blank
    frames/<YYYY-MM-DD>/shots.parquet      detected shots with frame-exact boundaries
    features/pin_text.safetensors          text tower cache of every validated pin, in table order
    features/frames/<encoder>/v<version>/<YYYY-MM-DD>.npz  frame embeddings of the day's videos by that
                                           registered encoder version (embedding [N, D] + the frame index,
                                           each video's frames digest); <encoder>/current.json: the version
                                           last computed (mmpipe.media.features)
    features/shots/<encoder>/v<version>/<YYYY-MM-DD>.npz   shot embeddings pooled from them: video_id,
                                           shot_id, start_s, end_s, n_frames, n_pooled, pooled_from
    features/video_text.safetensors        text tower states of every video caption, moment query and
                                           summary query; row keys (source, id, video_id, text) in its metadata
    embeddings/pins/created_at=<YYYY-MM-DD>.parquet  pin_id, created_at, image, text, fused, model_version
    index/pins/{fused,image}/              VectorIndex; index/pins/partitions.json: the days indexed
    graph/neighbor_pairs.parquet pin_a, pin_b, board_id, source, split
"""

from __future__ import annotations

import json
from pathlib import Path

from mmpipe.io import write_bytes_atomic

RAW_COLUMNS: dict[str, list[str]] = {
    "pins": ["pin_id", "image_path", "title", "description", "created_at"],
    "boards": ["board_id", "name", "description", "created_at"],
    "board_pins": ["board_id", "pin_id", "saved_at"],
    "users": ["user_id", "country", "signup_date"],
    "interactions": ["impression_id", "user_id", "pin_id", "date", "position", "clicked"],
    "videos": ["video_id", "video_path", "title", "duration_s", "fps", "created_at"],
    "moment_queries": ["query_id", "video_id", "query", "windows"],
    "video_captions": ["caption_id", "video_id", "caption"],
    "video_shots": ["video_id", "shot_index", "start_s", "end_s", "concepts"],
    "summary_queries": ["query_id", "video_id", "concepts", "relevant_shots"],
}
RAW_TABLES = tuple(RAW_COLUMNS)

# The column that identifies a row of each table (None: the row is identified by its pair).
ID_COLUMN: dict[str, str | None] = {
    "pins": "pin_id",
    "boards": "board_id",
    "board_pins": None,
    "users": "user_id",
    "interactions": "impression_id",
    "videos": "video_id",
    "moment_queries": "query_id",
    "video_captions": "caption_id",
    "video_shots": None,
    "summary_queries": "query_id",
}

MANIFEST_FILE = "manifest.json"

QUARANTINE_COLUMNS = ["table", "row_index", "record_id", "source_file", "rule", "message"]

# Ground-truth files the generator writes under data/raw/_truth/.
TRUTH_FILES = {
    "world": "world.json",  # seed, scale, days, cutoff date, attribute vocabulary (oracle AUC: eval.classification.oracle_auc)
    "pin_objects": "pin_objects.parquet",  # pin_id, object_index, <attribute columns>, x, y, scale, rotation
    "caption_attributes": "caption_attributes.parquet",  # pin_id, attribute, value (mentioned in text)
    "board_themes": "board_themes.parquet",  # board_id, attribute, value
    "board_saves": "board_saves.parquet",  # board_id, pin_id, on_theme
    "user_affinities": "user_affinities.parquet",  # user_id, attribute, value, affinity
    "impressions": "impressions.parquet",  # impression_id, p_click, is_cold_item, is_exploration
    # video_id, object_id, <attributes>, motion, start_s, end_s, and the path: x/y_start, x/y_end,
    # rotation_deg, spin_deg_per_s (videos.VideoObject.from_truth_row rebuilds any frame's pose)
    "video_objects": "video_objects.parquet",
    "shots": "shots.parquet",  # video_id, shot_index, start_s, end_s, labels
    "moments": "moments.parquet",  # query_id, video_id, object_id, start_s, end_s
    "bad_records": "bad_records.parquet",  # table, row_index, record_id, defect
}


def raw_table_path(raw_root: Path, table: str) -> Path:
    if table not in RAW_COLUMNS:
        raise KeyError(f"unknown raw table {table!r}; expected one of {sorted(RAW_COLUMNS)}")
    return Path(raw_root) / f"{table}.parquet"


def write_manifest(raw_root: Path, manifest: dict) -> Path:
    """Write the landing zone's manifest atomically: it is the commit point of a delivery
    (written last), so a reader sees the previous delivery or the whole new one."""
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    return write_bytes_atomic(text.encode(), Path(raw_root) / MANIFEST_FILE)


def declared_date_window(raw_root: Path) -> tuple[str | None, str | None]:
    """The [start_date, end_date] a delivery's manifest declares, or (None, None) without one.

    Rows dated outside the declared window are data errors (clock skew, backfills gone
    wrong), so validation quarantines them.
    """
    path = Path(raw_root) / MANIFEST_FILE
    if not path.exists():
        return None, None
    manifest = json.loads(path.read_text())
    return manifest.get("start_date"), manifest.get("end_date")


def truth_path(raw_root: Path, name: str) -> Path:
    return Path(raw_root) / "_truth" / TRUTH_FILES[name]


def resolve_inside(root: Path, relative: str) -> Path:
    """Resolve a data-relative path, refusing anything that could reach outside ``root``.

    Refused: an absolute path; any ``..`` component, even one that comes back inside (a
    landing zone has no use for climbing, and whether ``a/../b`` stays inside depends on what
    ``a`` resolves to at the moment of the check); a backslash (data paths are POSIX, and a
    table written on Windows would climb with ``..\\``); and a path that leaves ``root``
    through a symbolic link.

    >>> resolve_inside(Path("/data/raw"), "images/p1.jpg").as_posix()
    '/data/raw/images/p1.jpg'
    >>> resolve_inside(Path("/data/raw"), "../../etc/passwd")
    Traceback (most recent call last):
    ...
    ValueError: path '../../etc/passwd' escapes the data root: it contains '..'
    """
    if not isinstance(relative, str) or not relative.strip():
        raise ValueError(f"path {relative!r} is empty")
    if Path(relative).is_absolute() or "\x00" in relative:
        raise ValueError(f"path {relative!r} is absolute or malformed; data paths must be relative")
    if "\\" in relative:
        raise ValueError(f"path {relative!r} holds a backslash; data paths are relative POSIX paths")
    if ".." in relative.split("/"):
        raise ValueError(f"path {relative!r} escapes the data root: it contains '..'")
    root_resolved = Path(root).resolve()
    candidate = (root_resolved / relative).resolve()
    if not candidate.is_relative_to(root_resolved):
        raise ValueError(f"path {relative!r} escapes the data root through a symbolic link (to {candidate})")
    return candidate
