"""Readers for the video annotation formats people already have, into the raw tables.

Each ``parse_*`` function reads one file and returns a ``ParsedFile``: the rows it gives
each raw table (columns as in ``mmpipe.layout.RAW_COLUMNS``) and one quarantine record
(``mmpipe.layout.QUARANTINE_COLUMNS``) for every record it cannot read. A record that
reads but holds a bad value (end before start, a window past the video's end, an unknown
video, an empty query) is written through as it is: judging values is validation's job,
and it quarantines such rows with the same reasons whatever produced them.

What one *record* is, and what ``row_index`` of its quarantine record points at:

* **QVHighlights** JSONL (moment_detr's ``highlight_{train,val}_release.jsonl``): a line,
  ``{"qid", "query", "vid", "duration", "relevant_windows": [[start_s, end_s], ...]}``;
  other keys (``relevant_clip_ids``, ``saliency_scores``) are ignored, ``duration`` is
  optional (it is only compared with the probed file). One line gives one
  ``moment_queries`` row, ``query_id = str(qid)``. Test-split files carry no
  ``relevant_windows``; their lines are quarantined as missing it, since a moment query
  without its windows has nothing to train or score on. ``row_index``: the line number.
* **Charades-STA** text (``charades_sta_{train,test}.txt``): a line ``vid start end##query``.
  One line gives one ``moment_queries`` row with one window; the same query on several
  lines stays several queries. ``query_id = "<vid>_<line number>"``, stable as long as
  the file is. ``row_index``: the line number.
* **MSR-VTT** JSON (``train_val_videodatainfo.json``): an entry of the ``"sentences"``
  list, ``{"video_id", "caption", "sen_id"}``; ``caption_id = str(sen_id)``. The
  ``"videos"`` list is not needed (the video folder says which videos exist).
  ``row_index``: the entry's 1-based position in ``"sentences"`` (the official file is
  a single line, so a line number would say nothing). A file that is not one JSON
  object with a ``"sentences"`` list cannot be read entry by entry: ``AnnotationFileError``.
* **QFVS-style** JSONL (defined here, below): every entry of a line's ``"shots"`` and
  ``"queries"`` lists; a line that cannot be read as a video at all (bad JSON, no
  ``video_id``, ``shots`` not a list) is one record, with table
  ``"video_shots,summary_queries"``. ``row_index``: the line number (several records may
  share it; the message names the entry, e.g. ``shots[2].end``).

Blank lines are not records. So for every file: records read = rows written + records
quarantined; ``ParsedFile.check_counts`` asserts it.

QFVS-style concept/shot annotations
-----------------------------------
QFVS (Sharghi et al., 2017) annotates each shot of a video with the concepts seen in it,
and gives, per query of 1-2 concepts, the shots relevant to it. Its release is a set of
MATLAB files; this is the same information as JSON Lines, one object per video::

    {"video_id": "kitchen_01",
     "shots": [
        {"index": 0, "start": 0.0, "end": 2.5, "concepts": ["red", "star"]},
        {"index": 1, "start": 2.5, "end": 5.0, "concepts": ["blue", "circle", "striped"]}],
     "queries": [
        {"query_id": "kitchen_01_red_star", "concepts": ["red", "star"], "relevant_shots": [0]},
        {"concepts": ["striped"], "relevant_shots": [1]}]}

* ``video_id`` (string): the MP4's file stem.
* ``shots`` (list, required): ``index`` (integer, the shot's number within the video),
  ``start`` and ``end`` (seconds from the start of the video), ``concepts`` (list of
  strings, possibly empty). Each gives one ``video_shots`` row
  (video_id, shot_index, start_s, end_s, concepts).
* ``queries`` (list, optional): ``concepts`` (list of 1-2 strings), ``relevant_shots``
  (list of shot ``index`` values), ``query_id`` (string, optional; default
  ``"<video_id>_q<position in the list>"``). Each gives one ``summary_queries`` row
  (query_id, video_id, concepts, relevant_shots).
Other keys are ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from mmpipe.layout import QUARANTINE_COLUMNS

# The table a QFVS-style line that cannot be read at all would have fed.
QFVS_TABLES = "video_shots,summary_queries"

_SHOWN_CHARS = 60


class AnnotationFileError(ValueError):
    """An annotation file that cannot be read record by record at all."""


@dataclass
class ParsedFile:
    """What one annotation file gives: rows per raw table, quarantine records, counts."""

    source_file: str  # the file's name, as quarantine records and summaries name it
    format: str
    rows: dict[str, list[dict]]  # raw table -> rows, in file order
    quarantine: list[dict] = field(default_factory=list)  # QUARANTINE_COLUMNS
    records: int = 0  # records read: counted where they are read, not where they end up
    # QVHighlights declares each video's duration: (line, query_id, video_id, seconds)
    declared_durations: list[tuple[int, str, str, float]] = field(default_factory=list)

    def add(self, table: str, row: dict) -> None:
        self.rows[table].append(row)

    def reject(self, table: str, row_index: int, record_id: str | None, rule: str, message: str) -> None:
        self.quarantine.append(dict(zip(QUARANTINE_COLUMNS, (
            table, row_index, record_id, self.source_file, rule, message))))

    @property
    def n_rows(self) -> int:
        return sum(len(rows) for rows in self.rows.values())

    def check_counts(self) -> ParsedFile:
        """Raise unless every record read became a row or a quarantine record."""
        if self.records != self.n_rows + len(self.quarantine):
            raise AssertionError(
                f"{self.source_file}: {self.records} records read but {self.n_rows} rows "
                f"+ {len(self.quarantine)} quarantined"
            )
        return self


class _Unreadable(Exception):
    """A record, or a part of it, that does not have the format's shape."""

    def __init__(self, rule: str, message: str):
        super().__init__(message)
        self.rule = rule
        self.message = message


# -----------------------------------------------------------------------------
# reading values: each helper returns the value as the table stores it, or raises _Unreadable


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _require(obj: dict, key: str, where: str = ""):
    if key not in obj:
        raise _Unreadable("missing_key", f"{where}missing key {key!r}")
    return obj[key]


def _object(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise _Unreadable("type", f"{what} is not a JSON object: {_shown(value)}")
    return value


def _list(value, what: str) -> list:
    if not isinstance(value, list):
        raise _Unreadable("type", f"{what} is not a list: {_shown(value)}")
    return value


def _number(value, what: str) -> float:
    # bool is an int in Python, but `true` is no time in any of these formats
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Unreadable("type", f"{what} is not a number: {_shown(value)}")
    return float(value)


def _integer(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Unreadable("type", f"{what} is not an integer: {_shown(value)}")
    if not -(2**63) <= value < 2**63:  # the table stores int64
        raise _Unreadable("type", f"{what} is too large for a 64-bit integer: {_shown(value)}")
    return value


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise _Unreadable("type", f"{what} is not a string: {_shown(value)}")
    return value


def _identifier(value, what: str) -> str:
    """Ids are strings in the tables; the formats write some as numbers (qid, sen_id)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Unreadable("type", f"{what} is not a string or an integer: {_shown(value)}")
    return str(value)


def _strings(value, what: str) -> list[str]:
    return [_text(item, f"{what}[{i}]") for i, item in enumerate(_list(value, what))]


def _integers(value, what: str) -> list[int]:
    return [_integer(item, f"{what}[{i}]") for i, item in enumerate(_list(value, what))]


def _windows(value, what: str) -> list[list[float]]:
    windows = []
    for i, window in enumerate(_list(value, what)):
        if not isinstance(window, list) or len(window) != 2:
            raise _Unreadable("type", f"{what}[{i}] is not a [start, end] pair: {_shown(window)}")
        windows.append([_number(bound, f"{what}[{i}][{j}]") for j, bound in enumerate(window)])
    return windows


# -----------------------------------------------------------------------------
# reading lines


def _numbered_lines(path: Path) -> Iterator[tuple[int, str | None, str | None]]:
    """``(line number, text, None)`` for every non-blank line, or ``(number, None, why)``
    for a line that is not UTF-8: one bad byte costs one line, not the file."""
    for number, raw in enumerate(Path(path).read_bytes().splitlines(), start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark some editors add
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            yield number, None, f"line is not UTF-8 text ({error.reason} at byte {error.start})"
            continue
        if text.strip():
            yield number, text, None


def _json_object(text: str | None, problem: str | None) -> dict:
    if problem is not None:
        raise _Unreadable("parse", problem)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise _Unreadable("parse", f"not valid JSON ({error.msg} at column {error.colno})") from None
    return _object(value, "the line")


# -----------------------------------------------------------------------------
# the formats


def parse_qvhighlights(path: Path) -> ParsedFile:
    """QVHighlights JSONL -> ``moment_queries`` rows (see the module docstring)."""
    path = Path(path)
    parsed = ParsedFile(path.name, "qvhighlights", {"moment_queries": []})
    for number, text, problem in _numbered_lines(path):
        parsed.records += 1
        query_id = None
        try:
            obj = _json_object(text, problem)
            query_id = _identifier(_require(obj, "qid"), "qid")
            row = {
                "query_id": query_id,
                "video_id": _identifier(_require(obj, "vid"), "vid"),
                "query": _text(_require(obj, "query"), "query"),
                "windows": _windows(_require(obj, "relevant_windows"), "relevant_windows"),
            }
            duration = _number(obj["duration"], "duration") if "duration" in obj else None
        except _Unreadable as bad:
            parsed.reject("moment_queries", number, query_id, f"line.{bad.rule}", bad.message)
            continue
        parsed.add("moment_queries", row)
        if duration is not None:
            parsed.declared_durations.append((number, query_id, row["video_id"], duration))
    return parsed.check_counts()


def _charades_time(token: str, what: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise _Unreadable("type", f"{what} is not a number: {_shown(token)}") from None
    if not math.isfinite(value):
        raise _Unreadable("type", f"{what} is not a number: {_shown(token)}")
    return value


def parse_charades_sta(path: Path) -> ParsedFile:
    """Charades-STA ``vid start end##query`` lines -> ``moment_queries`` rows."""
    path = Path(path)
    parsed = ParsedFile(path.name, "charades", {"moment_queries": []})
    for number, text, problem in _numbered_lines(path):
        parsed.records += 1
        query_id = None
        try:
            if problem is not None:
                raise _Unreadable("parse", problem)
            if "##" not in text:
                raise _Unreadable("parse", "no '##' between the times and the query "
                                           f"(expected 'vid start end##query'): {_shown(text)}")
            head, query = text.split("##", 1)
            fields = head.split()
            if len(fields) != 3:
                raise _Unreadable("parse", f"expected 'vid start end' before '##', got {_shown(head)}")
            video_id = fields[0]
            query_id = f"{video_id}_{number}"
            row = {
                "query_id": query_id,
                "video_id": video_id,
                "query": query.strip(),  # the line break ('\r' too) is no part of the query
                "windows": [[_charades_time(fields[1], "start"), _charades_time(fields[2], "end")]],
            }
        except _Unreadable as bad:
            parsed.reject("moment_queries", number, query_id, f"line.{bad.rule}", bad.message)
            continue
        parsed.add("moment_queries", row)
    return parsed.check_counts()


def parse_msrvtt(path: Path) -> ParsedFile:
    """MSR-VTT ``{"videos": [...], "sentences": [...]}`` -> ``video_captions`` rows."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise AnnotationFileError(
            f"{path}: not a JSON document ({error.msg} at line {error.lineno} column {error.colno}); "
            "MSR-VTT captions are one JSON object with a 'sentences' list"
        ) from None
    except UnicodeDecodeError as error:
        raise AnnotationFileError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not isinstance(document, dict) or not isinstance(document.get("sentences"), list):
        raise AnnotationFileError(f"{path}: expected a JSON object with a 'sentences' list (MSR-VTT)")

    parsed = ParsedFile(path.name, "msrvtt", {"video_captions": []})
    for position, entry in enumerate(document["sentences"], start=1):
        parsed.records += 1
        where = f"sentences[{position - 1}]"
        caption_id = None
        try:
            entry = _object(entry, where)
            caption_id = _identifier(_require(entry, "sen_id", f"{where}: "), f"{where}.sen_id")
            row = {
                "caption_id": caption_id,
                "video_id": _identifier(_require(entry, "video_id", f"{where}: "), f"{where}.video_id"),
                "caption": _text(_require(entry, "caption", f"{where}: "), f"{where}.caption"),
            }
        except _Unreadable as bad:
            parsed.reject("video_captions", position, caption_id, f"entry.{bad.rule}", bad.message)
            continue
        parsed.add("video_captions", row)
    return parsed.check_counts()


def parse_qfvs(path: Path) -> ParsedFile:
    """QFVS-style JSONL (format in the module docstring) -> ``video_shots`` + ``summary_queries``."""
    path = Path(path)
    parsed = ParsedFile(path.name, "qfvs", {"video_shots": [], "summary_queries": []})
    for number, text, problem in _numbered_lines(path):
        video_id = None
        try:
            obj = _json_object(text, problem)
            video_id = _identifier(_require(obj, "video_id"), "video_id")
            shots = _list(_require(obj, "shots"), "shots")
            queries = _list(obj.get("queries", []), "queries")
        except _Unreadable as bad:
            parsed.records += 1
            parsed.reject(QFVS_TABLES, number, video_id, f"line.{bad.rule}", bad.message)
            continue
        parsed.records += len(shots) + len(queries)
        for i, shot in enumerate(shots):
            where = f"shots[{i}]"
            record_id = video_id
            try:
                shot = _object(shot, where)
                index = _integer(_require(shot, "index", f"{where}: "), f"{where}.index")
                record_id = f"{video_id}:{index}"
                row = {
                    "video_id": video_id,
                    "shot_index": index,
                    "start_s": _number(_require(shot, "start", f"{where}: "), f"{where}.start"),
                    "end_s": _number(_require(shot, "end", f"{where}: "), f"{where}.end"),
                    "concepts": _strings(_require(shot, "concepts", f"{where}: "), f"{where}.concepts"),
                }
            except _Unreadable as bad:
                parsed.reject("video_shots", number, record_id, f"line.{bad.rule}", bad.message)
                continue
            parsed.add("video_shots", row)
        for j, query in enumerate(queries):
            where = f"queries[{j}]"
            query_id = None
            try:
                query = _object(query, where)
                query_id = (_identifier(query["query_id"], f"{where}.query_id") if "query_id" in query
                            else f"{video_id}_q{j}")
                row = {
                    "query_id": query_id,
                    "video_id": video_id,
                    "concepts": _strings(_require(query, "concepts", f"{where}: "), f"{where}.concepts"),
                    "relevant_shots": _integers(_require(query, "relevant_shots", f"{where}: "),
                                                f"{where}.relevant_shots"),
                }
            except _Unreadable as bad:
                parsed.reject("summary_queries", number, query_id, f"line.{bad.rule}", bad.message)
                continue
            parsed.add("summary_queries", row)
    return parsed.check_counts()


PARSERS = {
    "qvhighlights": parse_qvhighlights,
    "charades": parse_charades_sta,
    "msrvtt": parse_msrvtt,
    "qfvs": parse_qfvs,
}
