"""Keep vector indexes in step with per-day embeddings (pins, videos): add new days,
rebuild only when something already indexed changed.

``index_root`` holds one ``VectorIndex`` per kind (pins: ``fused/``, ``image/``; videos:
``video/``) and ``partitions.json``: the model version and, per indexed day, the
fingerprint (md5) and row count of its embeddings file. ``sync_index`` compares that
record with the embeddings on disk:

* nothing indexed yet, another model version, an indexed day whose file changed or went
  away, or indexes that disagree with the record (a crash between writes): **rebuild**
  from every day;
* otherwise **add** the days not yet indexed, in day order, to the saved indexes (never
  retrained: see ``faiss_index``), or nothing when there are none.

Each index is saved atomically and the record is written last, so a crash leaves either
the old record (and the next sync redoes the work) or the new one. A sync holds a file lock
on ``index_root`` from reading the record to writing it, so two materializations at once
run one after the other (the second finds the days indexed and does nothing).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from mmpipe.embeddings import embedded_days, embedding_file, read_embeddings
from mmpipe.index.faiss_index import IndexConfig, VectorIndex, measure_qps, recall_at_k_vs_exact
from mmpipe.io import file_lock, write_bytes_atomic
from mmpipe.versioning import file_md5

STATE_FILE = "partitions.json"
KINDS = ("fused", "image")


@dataclass
class SyncReport:
    mode: str  # "rebuild" | "add" | "noop"
    reason: str
    days_added: list[str] = field(default_factory=list)
    vectors_added: int = 0
    ntotal: int = 0
    model_version: str | None = None
    factory: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def read_state(index_root: Path) -> dict | None:
    path = Path(index_root) / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def indexed_days(index_root: Path) -> list[str]:
    state = read_state(index_root)
    return sorted(state["days"]) if state else []


def _model_versions(embeddings_dir: Path, days: list[str]) -> set[str]:
    versions: set[str] = set()
    for day in days:
        column = pd.read_parquet(embedding_file(embeddings_dir, day), columns=["model_version"])["model_version"]
        versions |= set(column.astype(str))
    return versions


def _rebuild_reason(index_root: Path, state: dict | None, fingerprints: dict[str, str], version: str | None,
                    kinds: tuple[str, ...]) -> str | None:
    if state is None:
        return "no index yet"
    if any(not (Path(index_root) / kind / "manifest.json").exists() for kind in kinds):
        return "an index directory is missing"
    if version is not None and state.get("model_version") not in (None, version):
        return f"embeddings now come from model version {version}, the index from {state['model_version']}"
    changed = [day for day, record in state["days"].items() if fingerprints.get(day) != record["md5"]]
    if changed:
        return f"indexed days changed or disappeared: {sorted(changed)[:5]}"
    expected = sum(record["rows"] for record in state["days"].values())
    for kind in kinds:
        manifest = json.loads((Path(index_root) / kind / "manifest.json").read_text())
        if manifest["ntotal"] != expected:
            return f"the {kind} index holds {manifest['ntotal']} vectors, the record {expected}"
    return None


def sync_pin_index(index_root: Path, embeddings_dir: Path, cfg: IndexConfig = IndexConfig()) -> SyncReport:
    """Bring the pin indexes (fused, image) under ``index_root`` up to ``embeddings_dir``."""
    return sync_index(index_root, embeddings_dir, KINDS, "pin_id", "pin", cfg)


def sync_index(index_root: Path, embeddings_dir: Path, kinds: tuple[str, ...], id_column: str, what: str,
               cfg: IndexConfig = IndexConfig()) -> SyncReport:
    """Bring the indexes of ``kinds`` under ``index_root`` up to the per-day embeddings of
    ``what`` (pin, video: rows named by ``id_column``) in ``embeddings_dir``."""
    index_root, embeddings_dir = Path(index_root), Path(embeddings_dir)
    with file_lock(index_root):
        return _sync_locked(index_root, embeddings_dir, kinds, id_column, what, cfg)


def _sync_locked(index_root: Path, embeddings_dir: Path, kinds: tuple[str, ...], id_column: str, what: str,
                 cfg: IndexConfig) -> SyncReport:
    days = embedded_days(embeddings_dir)
    if not days:
        raise FileNotFoundError(f"no {what} embeddings in {embeddings_dir}: materialize {what}_embeddings first")
    fingerprints = {day: file_md5(embedding_file(embeddings_dir, day)) for day in days}
    state = read_state(index_root)
    new_days = [day for day in days if state is None or day not in state["days"]]
    # Only the days read anyway are checked for their version on an add; a rebuild checks all.
    versions = _model_versions(embeddings_dir, new_days or days[-1:])
    if len(versions) > 1:
        raise ValueError(f"{what} embeddings of {new_days} come from several model versions {sorted(versions)}: "
                         f"rematerialize {what}_embeddings for those days")
    version = next(iter(versions), None)
    reason = _rebuild_reason(index_root, state, fingerprints, version, kinds)

    if reason is not None:
        versions = _model_versions(embeddings_dir, days)
        if len(versions) > 1:
            raise ValueError(f"{what} embeddings come from several model versions {sorted(versions)}: "
                             f"rematerialize {what}_embeddings for every day before indexing")
        version = next(iter(versions), None)
        add_days, mode = days, "rebuild"
    elif new_days:
        add_days, mode, reason = new_days, "add", f"{len(new_days)} new day(s)"
        # days without a row name no version: the index keeps the one it was built from
        version = version if version is not None else state.get("model_version")
    else:
        return SyncReport("noop", "every day is indexed", ntotal=sum(r["rows"] for r in state["days"].values()),
                          model_version=state.get("model_version"),
                          factory=json.loads((index_root / kinds[0] / "manifest.json").read_text())["factory"])

    files = [embedding_file(embeddings_dir, day) for day in add_days]
    counts = {day: pq.ParquetFile(embedding_file(embeddings_dir, day)).metadata.num_rows for day in add_days}
    factory = ""
    ntotal = 0
    for kind in kinds:
        ids, vectors = read_embeddings(files, kind, id_column=id_column)
        if mode == "rebuild":
            if not ids:
                raise ValueError(f"no {what} has an embedding: nothing to index")
            index = VectorIndex.build(vectors, ids, cfg)
        else:
            index = VectorIndex.load(index_root / kind)
            if ids:
                index.add(vectors, ids)
        index.save(index_root / kind)
        factory, ntotal = index.factory, index.ntotal

    records = {} if mode == "rebuild" else dict(state["days"])
    records.update({day: {"md5": fingerprints[day], "rows": counts[day]} for day in add_days})
    new_state = {"model_version": version, "days": dict(sorted(records.items())), "ntotal": ntotal,
                 "factory": factory}
    write_bytes_atomic((json.dumps(new_state, indent=2) + "\n").encode(), index_root / STATE_FILE)
    return SyncReport(mode, reason, days_added=add_days, vectors_added=sum(counts.values()), ntotal=ntotal,
                      model_version=version, factory=factory)


def index_quality(index_root: Path, embeddings_dir: Path, kinds: tuple[str, ...] = KINDS,
                  n_queries: int = 500, k: int = 10, seed: int = 0, id_column: str = "pin_id") -> dict[str, float | str]:
    """Per kind: the index factory, recall@k of its answers against exact search over
    the same embeddings, and batched queries per second, on ``n_queries`` stored vectors."""
    quality: dict[str, float | str] = {}
    for kind in kinds:
        ids, vectors = read_embeddings(embeddings_dir, kind, id_column=id_column)
        k = min(k, len(ids))  # a corpus smaller than k: every item is an answer
        rows = np.random.default_rng(seed).choice(len(ids), size=min(n_queries, len(ids)), replace=False)
        index = VectorIndex.load(Path(index_root) / kind)
        quality[f"{kind}_factory"] = index.factory
        quality[f"{kind}_recall@{k}_vs_exact"] = recall_at_k_vs_exact(index, vectors, ids, vectors[rows], k=k)
        quality[f"{kind}_qps"] = round(measure_qps(index, vectors[rows], k=k), 1)
    return quality
