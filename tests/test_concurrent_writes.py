"""Two materializations of the same index or embeddings partition at once do not corrupt it.

Writers are real processes (``spawn``: nothing inherited but what they import), writing the
same target over and over while this process reads it: every read must give one of the
writers' complete versions, and the target is whole when they are done.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np

from mmpipe.embeddings import embedding_frame, read_embeddings, write_day_embeddings
from mmpipe.index.faiss_index import IndexConfig, VectorIndex
from mmpipe.index.incremental import read_state, sync_pin_index

WRITES = 40
DAY = "2026-01-05"
JOIN_TIMEOUT_S = 300


def _vectors(n: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, 32)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _version(writer: int) -> tuple[list[str], np.ndarray]:
    """What writer ``writer`` writes: its own ids and vectors, so a read tells whose it is."""
    n = 1_500 + 500 * writer
    return [f"w{writer}-{k:05d}" for k in range(n)], _vectors(n, seed=writer)


def _save_index_repeatedly(directory: str, writer: int, start) -> None:
    ids, vectors = _version(writer)
    index = VectorIndex.build(vectors, ids, IndexConfig(kind="flat"))
    start.wait()
    for _ in range(WRITES):
        index.save(Path(directory))


def _write_embeddings_repeatedly(directory: str, writer: int, start) -> None:
    ids, vectors = _version(writer)
    frame = embedding_frame(ids, [DAY] * len(ids), {"fused": vectors}, model_version=str(writer))
    start.wait()
    for _ in range(WRITES):
        write_day_embeddings(frame, Path(directory), DAY)


def _sync(index_root: str, embeddings_dir: str, start, modes) -> None:
    start.wait()
    modes.put(sync_pin_index(Path(index_root), Path(embeddings_dir), IndexConfig()).mode)


def _run_writers(target, args: tuple, read) -> list:
    """Start two writers of ``target`` together, ``read()`` while they run; the reads."""
    context = mp.get_context("spawn")
    start = context.Barrier(3)
    writers = [context.Process(target=target, args=(*args, writer, start)) for writer in (0, 1)]
    for process in writers:
        process.start()
    reads = []
    try:
        start.wait(timeout=JOIN_TIMEOUT_S)
        while any(process.is_alive() for process in writers):
            got = read()
            if got is not None:
                reads.append(got)
        for process in writers:
            process.join(timeout=JOIN_TIMEOUT_S)
            assert process.exitcode == 0, f"writer exited with {process.exitcode}"
    finally:
        for process in writers:
            if process.is_alive():
                process.kill()
                process.join()
    return reads


def _whose(ids: list[str], vectors: np.ndarray) -> int:
    """Which writer's complete version ``ids``/``vectors`` are (fails on anything else)."""
    writer = int(ids[0][1]) if ids else -1
    assert writer in (0, 1), ids[:3]
    expected_ids, expected_vectors = _version(writer)
    assert ids == expected_ids
    np.testing.assert_array_equal(vectors, expected_vectors)
    return writer


def test_two_processes_saving_one_index_never_leave_it_broken(tmp_path):
    directory = tmp_path / "index" / "fused"
    queries = _vectors(5, seed=9)

    def read():
        if not (directory / "manifest.json").exists():
            return None
        index = VectorIndex.load(directory)
        writer = int(index.ids[0][1])
        ids, vectors = _version(writer)
        assert index.ids == ids and index.ntotal == len(ids)
        # the vectors are that writer's too: search answers as its own exact index does
        assert index.search(queries, 3)[1] == VectorIndex.build(vectors, ids, IndexConfig(kind="flat")).search(
            queries, 3)[1]
        return writer

    reads = _run_writers(_save_index_repeatedly, (str(directory),), read)
    assert len(reads) >= 3, "the reads did not overlap the writes"
    final = VectorIndex.load(directory)
    assert final.ids == _version(int(final.ids[0][1]))[0]
    # the current and the previous generation, never a third (no writer deleted the other's)
    assert len(list(directory.glob("index-*.faiss"))) == len(list(directory.glob("ids-*.parquet"))) == 2


def test_two_processes_writing_one_embeddings_partition_never_leave_it_broken(tmp_path):
    directory = tmp_path / "embeddings" / "pins"

    def read():
        if not any(directory.glob("created_at=*.parquet")):
            return None
        return _whose(*read_embeddings(directory, "fused"))

    reads = _run_writers(_write_embeddings_repeatedly, (str(directory),), read)
    assert len(reads) >= 3, "the reads did not overlap the writes"
    _whose(*read_embeddings(directory, "fused"))
    assert sorted(p.name for p in directory.iterdir()) == [f"created_at={DAY}.parquet"]  # no temporary left


def test_two_index_syncs_at_once_run_one_after_the_other(tmp_path):
    """The second sync waits for the first, then finds every day indexed."""
    embeddings, index_root = tmp_path / "embeddings", tmp_path / "index"
    for day, seed in (("2026-01-01", 1), ("2026-01-02", 2)):
        vectors = _vectors(300, seed)
        write_day_embeddings(embedding_frame([f"p{seed}-{k}" for k in range(300)], [day] * 300,
                                             {"fused": vectors, "image": vectors}, "1"), embeddings, day)
    context = mp.get_context("spawn")
    start, modes = context.Barrier(2), context.Queue()
    syncs = [context.Process(target=_sync, args=(str(index_root), str(embeddings), start, modes)) for _ in (0, 1)]
    for process in syncs:
        process.start()
    for process in syncs:
        process.join(timeout=JOIN_TIMEOUT_S)
        assert process.exitcode == 0
    assert sorted(modes.get(timeout=5) for _ in syncs) == ["noop", "rebuild"]
    assert read_state(index_root)["ntotal"] == 600
    for kind in ("fused", "image"):
        assert VectorIndex.load(index_root / kind).ntotal == 600

