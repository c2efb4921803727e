"""Load a folder of MP4s and its annotations into a raw landing zone.

``load_videos(videos_dir, out, qvhighlights=..., charades=..., msrvtt=..., qfvs=...)``
writes to ``out`` what the generator writes for videos, so the same validation and assets
run on a user's own data (``mmpipe load videos`` on the command line):

* ``videos/<video_id>.mp4``: a copy of every ``*.mp4`` (any case; names starting with
  ``.`` skipped, e.g. macOS ``._x.mp4``) directly inside ``videos_dir``; with
  ``link=True`` a hard link where the filesystem allows one, else a copy. Copies are the
  default because DVC may later move or re-permission the landing zone's files, which a
  hard link would do to the user's originals too.
* ``videos.parquet``: one row per MP4. ``video_id`` is the file stem; ``duration_s`` and
  ``fps`` are probed with PyAV (a file that cannot be probed keeps its row with both
  missing, and validation quarantines it with the decoder's reason); ``created_at`` is
  ``date`` if given, else the file's entry in ``dates_file`` (CSV with columns
  ``video_id,created_at``, or JSON ``{"<video_id>": "YYYY-MM-DD"}``), else the UTC date of
  the file's modification time; ``title`` is the video's first caption (file order) that
  a title may be (not blank, not too long, not garbled), else missing.
* ``moment_queries``, ``video_captions``, ``video_shots``, ``summary_queries``: from the
  annotation files given (``mmpipe.loaders.formats``); QVHighlights and Charades-STA may
  both be given, their queries are concatenated.
* Every other raw table (pins, boards, ...) and every video table no file fills is
  written empty with its columns, so the folder is a complete landing zone.
* ``_load_quarantine.parquet``: one record (``QUARANTINE_COLUMNS``) per annotation record
  that could not be read, ``row_index`` pointing into its source file. Written first, it
  also marks the folder as the loader's.
* ``manifest.json``, last: producer ``"mmpipe load videos"``, the date window of the
  videos' ``created_at`` (one daily partition per day in it), rows per table, and per
  annotation file the records read, rows written and records quarantined.

The loader only reads: records it can read are written through as they are, even with bad
values (an end before its start, a window past the video, an unknown video), because
validation quarantines those with the same rules as any other delivery. Things worth a
person's eye that are not errors of the files' shape (a QVHighlights ``duration`` that
disagrees with the probed file, annotations naming videos not in the folder) come back as
``LoadResult.warnings``.

``out`` must be empty or an earlier load's output (it holds ``_load_quarantine.parquet``
and no ``images/`` or ``_truth/``, which a pin delivery or a generated world would have);
anything else is refused, as ``mmpipe world generate`` refuses a folder it did not write.
Reloading replaces what the loader writes and leaves any other file there alone.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import av
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmpipe import layout
from mmpipe.io import atomic_path
from mmpipe.loaders.formats import PARSERS, ParsedFile
from mmpipe.schemas.tables import MAX_SHORT_TEXT_CHARS, parse_iso_dates
from mmpipe.schemas.text_checks import looks_garbled

PRODUCER = "mmpipe load videos"
QUARANTINE_FILE = "_load_quarantine.parquet"
VIDEOS_DIR = "videos"

# Folders the loader never writes: their presence means someone else's data is here.
FOREIGN_DIRS = ("images", "_truth")

# QVHighlights writes durations as whole seconds, so a second of difference is rounding.
DURATION_TOLERANCE_S = 1.0

_SHOWN_IDS = 5

# Arrow types of the tables the loader fills: lists stay lists (windows list<list<double>>),
# so readers get the same types as from a generated world. Tables it leaves empty are
# written with string columns: validation coerces types, and an empty column has no values
# whose type could be wrong.
VIDEO_TABLE_TYPES: dict[str, dict[str, pa.DataType]] = {
    "videos": {"video_id": pa.string(), "video_path": pa.string(), "title": pa.string(),
               "duration_s": pa.float64(), "fps": pa.float64(), "created_at": pa.string()},
    "moment_queries": {"query_id": pa.string(), "video_id": pa.string(), "query": pa.string(),
                       "windows": pa.list_(pa.list_(pa.float64()))},
    "video_captions": {"caption_id": pa.string(), "video_id": pa.string(), "caption": pa.string()},
    "video_shots": {"video_id": pa.string(), "shot_index": pa.int64(), "start_s": pa.float64(),
                    "end_s": pa.float64(), "concepts": pa.list_(pa.string())},
    "summary_queries": {"query_id": pa.string(), "video_id": pa.string(), "concepts": pa.list_(pa.string()),
                        "relevant_shots": pa.list_(pa.int64())},
}


QUARANTINE_SCHEMA = pa.schema([
    ("table", pa.string()), ("row_index", pa.int64()), ("record_id", pa.string()),
    ("source_file", pa.string()), ("rule", pa.string()), ("message", pa.string()),
])


@dataclass(frozen=True)
class Probe:
    duration_s: float | None
    fps: float | None
    problem: str | None = None  # why the file could not be probed


@dataclass
class LoadResult:
    out: Path
    rows: dict[str, int]  # rows written per raw table (every table, empty ones too)
    sources: dict[str, dict]  # format -> {file, records, rows, quarantined}
    quarantine: pd.DataFrame  # QUARANTINE_COLUMNS, as written to QUARANTINE_FILE
    warnings: list[str]
    manifest: dict


# -----------------------------------------------------------------------------
# the video folder


def probe_video(path: Path) -> Probe:
    """Duration and frame rate from the container's headers, without decoding frames.

    Decoding every frame is validation's job (it checks the file plays as long as its row
    says); here the headers are enough and cost the same for a 10-minute video as for 10 s.
    """
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return Probe(None, None, "no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else None
            if stream.duration is not None and stream.time_base is not None:
                duration_s = float(stream.duration * stream.time_base)
            elif stream.frames and fps:
                duration_s = stream.frames / fps
            elif container.duration is not None:
                duration_s = container.duration / av.time_base
            else:
                duration_s = None
    except (av.error.FFmpegError, OSError, ValueError) as error:
        # libav's message repeats the absolute path; its strerror says what went wrong
        reason = getattr(error, "strerror", None) or str(error)
        return Probe(None, None, f"{type(error).__name__}: {reason}")
    if duration_s is None or fps is None:
        return Probe(duration_s, fps, "the container declares no duration or frame rate")
    return Probe(duration_s, fps)


def list_videos(videos_dir: Path) -> dict[str, Path]:
    """video_id (file stem) -> MP4 file, for the files directly inside ``videos_dir``."""
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise FileNotFoundError(f"{videos_dir} is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(videos_dir.iterdir()):
        if not path.is_file() or path.suffix.lower() != ".mp4" or path.name.startswith("."):
            continue
        if path.stem in found:  # clip.mp4 and clip.MP4 would both be videos/clip.mp4
            raise ValueError(f"{found[path.stem].name} and {path.name} would both be video {path.stem!r}")
        found[path.stem] = path
    if not found:
        raise FileNotFoundError(f"{videos_dir} holds no .mp4 files")
    return found


def read_dates(path: Path) -> dict[str, str]:
    """video_id -> created_at from a CSV (``video_id,created_at``) or JSON (``{id: date}``) file.

    The dates themselves are passed through unchecked; validation judges them.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        try:
            dates = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
        if not isinstance(dates, dict) or not all(isinstance(v, str) for v in dates.values()):
            raise ValueError(f"{path}: expected a JSON object of video_id -> 'YYYY-MM-DD' strings")
        return {str(video_id): date for video_id, date in dates.items()}
    if path.suffix.lower() == ".csv":
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = {"video_id", "created_at"} - set(table.columns)
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected video_id,created_at")
        repeated = table["video_id"][table["video_id"].duplicated()].unique().tolist()
        if repeated:
            raise ValueError(f"{path}: several dates for video(s) {repeated[:_SHOWN_IDS]}")
        return dict(zip(table["video_id"], table["created_at"]))
    raise ValueError(f"{path}: a dates file is .csv (video_id,created_at) or .json ({{video_id: date}})")


def modified_date(path: Path) -> str:
    """The UTC day of the file's last modification: the same on every machine."""
    return dt.datetime.fromtimestamp(Path(path).stat().st_mtime, dt.timezone.utc).date().isoformat()


def _title_candidates(captions: list[dict]) -> dict[str, str]:
    """Each video's first caption that passes the title rules, so that a derived title
    never gets a good video quarantined."""
    titles: dict[str, str] = {}
    for row in captions:
        text = row["caption"].strip()
        if (row["video_id"] not in titles and text and len(text) <= MAX_SHORT_TEXT_CHARS
                and not looks_garbled(text)):
            titles[row["video_id"]] = text
    return titles


def _video_rows(files: dict[str, Path], captions: list[dict], date: str | None,
                dates: dict[str, str]) -> tuple[list[dict], dict[str, Probe]]:
    titles = _title_candidates(captions)
    rows, probes = [], {}
    for video_id, path in files.items():
        probe = probes[video_id] = probe_video(path)
        rows.append({
            "video_id": video_id,
            "video_path": f"{VIDEOS_DIR}/{video_id}.mp4",
            "title": titles.get(video_id),
            "duration_s": probe.duration_s,
            "fps": probe.fps,
            "created_at": date or dates.get(video_id) or modified_date(path),
        })
    return rows, probes


# -----------------------------------------------------------------------------
# what deserves a person's eye


def _shown_ids(ids) -> str:
    ids = sorted(set(ids))
    more = f" and {len(ids) - _SHOWN_IDS} more" if len(ids) > _SHOWN_IDS else ""
    return ", ".join(ids[:_SHOWN_IDS]) + more


def _warnings(parsed: dict[str, ParsedFile], files: dict[str, Path], probes: dict[str, Probe],
              dates: dict[str, str]) -> list[str]:
    found = []
    for video_id, probe in probes.items():
        if probe.problem:
            found.append(f"{files[video_id].name}: cannot be probed ({probe.problem}); "
                         "validation will quarantine its row")
    for source in parsed.values():
        for line, query_id, video_id, declared in source.declared_durations:
            probed = probes.get(video_id)
            if probed and probed.duration_s is not None and abs(probed.duration_s - declared) > DURATION_TOLERANCE_S:
                found.append(f"{source.source_file} line {line} (qid {query_id}): duration {declared:g} s, "
                             f"but {files[video_id].name} plays {probed.duration_s:.2f} s")
        unknown = [row["video_id"] for rows in source.rows.values() for row in rows if row["video_id"] not in files]
        if unknown:
            found.append(f"{source.source_file}: {len(unknown)} row(s) name videos not in the folder "
                         f"({_shown_ids(unknown)}); validation will quarantine them")
    dated_elsewhere = [video_id for video_id in dates if video_id not in files]
    if dated_elsewhere:
        found.append(f"dates given for {len(dated_elsewhere)} video(s) not in the folder "
                     f"({_shown_ids(dated_elsewhere)}); ignored")
    return found


# -----------------------------------------------------------------------------
# the landing zone


def clear_previous_load(out: Path, videos_dir: Path) -> None:
    """Remove what an earlier load wrote to ``out``; refuse to touch anything else."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder")
    if Path(videos_dir).resolve().is_relative_to(out.resolve()):
        raise ValueError(f"the videos folder {videos_dir} lies inside {out}, which loading replaces; "
                         "load from a folder outside it")
    if not out.exists():
        return
    foreign = [out / name for name in FOREIGN_DIRS if (out / name).exists()]
    ours = (out / QUARANTINE_FILE).is_file()
    # A folder the loader did not write is only used empty: ``--out .`` or ``--out tests``
    # must not scatter tables among someone's files, even where no name collides.
    if foreign or (not ours and any(out.iterdir())):
        shown = sorted(p.name for p in (foreign or out.iterdir()))
        raise FileExistsError(
            f"{out} holds data `{PRODUCER}` did not write ({', '.join(shown[:_SHOWN_IDS])}"
            f"{', ...' if len(shown) > _SHOWN_IDS else ''}); choose an empty folder"
        )
    landing = [layout.raw_table_path(out, table) for table in layout.RAW_TABLES]
    landing += [out / VIDEOS_DIR, out / layout.MANIFEST_FILE, out / QUARANTINE_FILE]
    present = [path for path in landing if path.exists()]
    for path in present:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _place_video(source: Path, target: Path, link: bool) -> None:
    if link:
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # another filesystem, or links not allowed there: a copy does the same job
    shutil.copy2(source, target)  # copy2 keeps the modification time the dates may come from


def _arrow_table(table: str, rows: list[dict]) -> pa.Table:
    types = VIDEO_TABLE_TYPES.get(table, {})
    columns = layout.RAW_COLUMNS[table]
    if types and set(types) != set(columns):
        raise AssertionError(f"{table}: loader types {sorted(types)} do not match the layout's columns {columns}")
    schema = pa.schema([(column, types.get(column, pa.string())) for column in columns])
    return pa.Table.from_pylist(rows, schema=schema)


def _write_table(table: pa.Table, target: Path) -> None:
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)


def _date_window(created_at: list[str]) -> tuple[str, str]:
    days = parse_iso_dates(pd.Series(created_at, dtype=object)).dropna()
    if days.empty:
        raise ValueError("no video has a valid YYYY-MM-DD created_at, so the delivery has no date window; "
                         "give one with --date or a dates file")
    return days.min().date().isoformat(), days.max().date().isoformat()


def load_videos(
    videos_dir: Path,
    out: Path,
    *,
    qvhighlights: Path | None = None,
    charades: Path | None = None,
    msrvtt: Path | None = None,
    qfvs: Path | None = None,
    date: str | None = None,
    dates_file: Path | None = None,
    link: bool = False,
) -> LoadResult:
    """Write the landing zone described in the module docstring to ``out``."""
    if date is not None and parse_iso_dates(pd.Series([date], dtype=object)).isna().any():
        raise ValueError(f"date {date!r} is not a YYYY-MM-DD date")
    out = Path(out)

    # Read everything before writing anything: a file that cannot be read leaves ``out`` as it was.
    given = {"qvhighlights": qvhighlights, "charades": charades, "msrvtt": msrvtt, "qfvs": qfvs}
    parsed = {fmt: PARSERS[fmt](Path(path)) for fmt, path in given.items() if path is not None}
    files = list_videos(videos_dir)
    dates = read_dates(dates_file) if dates_file is not None else {}

    rows: dict[str, list[dict]] = {table: [] for table in layout.RAW_TABLES}
    for source in parsed.values():
        for table, table_rows in source.rows.items():
            rows[table].extend(table_rows)
    rows["videos"], probes = _video_rows(files, rows["video_captions"], date, dates)
    start_date, end_date = _date_window([row["created_at"] for row in rows["videos"]])

    quarantine = pa.Table.from_pylist(
        [record for source in parsed.values() for record in source.quarantine], schema=QUARANTINE_SCHEMA)
    tables = {table: _arrow_table(table, rows[table]) for table in layout.RAW_TABLES}

    # Every record of every file is a table row or a quarantine record: none is lost.
    written = {table: arrow.num_rows for table, arrow in tables.items()}
    expected = {table: sum(len(source.rows.get(table, [])) for source in parsed.values())
                for table in layout.RAW_TABLES}
    expected["videos"] = len(files)
    if written != expected:
        raise AssertionError(f"rows to write {written} differ from rows read {expected}")
    sources = {
        fmt: {"file": source.source_file, "records": source.records, "rows": source.n_rows,
              "quarantined": len(source.quarantine)}
        for fmt, source in parsed.items()
    }
    for summary in sources.values():
        if summary["records"] != summary["rows"] + summary["quarantined"]:
            raise AssertionError(f"{summary['file']}: records are not conserved: {summary}")

    # Only now, with everything read and converted, is ``out`` touched.
    clear_previous_load(out, videos_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The quarantine file goes first: from here on the folder is recognisably the loader's,
    # so a load that dies halfway can be rerun over it.
    _write_table(quarantine, out / QUARANTINE_FILE)
    (out / VIDEOS_DIR).mkdir()
    for video_id, path in files.items():
        _place_video(path, out / VIDEOS_DIR / f"{video_id}.mp4", link)
    for table, arrow in tables.items():
        _write_table(arrow, layout.raw_table_path(out, table))

    manifest = {
        "producer": PRODUCER,
        "start_date": start_date,
        "end_date": end_date,
        "rows": written,
        "sources": sources,
        "quarantine_file": QUARANTINE_FILE,
    }
    layout.write_manifest(out, manifest)  # last: the manifest commits the delivery
    quarantine_frame = quarantine.to_pandas().astype(
        {column: "int64" if column == "row_index" else "string" for column in layout.QUARANTINE_COLUMNS})
    return LoadResult(out=out, rows=written, sources=sources, quarantine=quarantine_frame,
                      warnings=_warnings(parsed, files, probes, dates), manifest=manifest)
