"""Atomic writes: a failed write leaves the previous file intact and no temporary behind."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmpipe.io import atomic_path, write_npy_atomic, write_parquet_atomic


def test_round_trips(tmp_path):
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    pd.testing.assert_frame_equal(pd.read_parquet(write_parquet_atomic(frame, tmp_path / "t.parquet")), frame)
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(np.load(write_npy_atomic(array, tmp_path / "a.npy")), array)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "t.parquet"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "t.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="mid-write"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.bin"]


def _dies_after(fraction: float, write):
    """``write`` that puts ``fraction`` of its bytes on disk, then fails as a full disk does."""
    def partial(obj, path, *args, **kwargs):
        write(obj, path, *args, **kwargs)
        data = open(path, "rb").read()
        with open(path, "wb") as handle:
            handle.write(data[: int(len(data) * fraction)])
        raise OSError("No space left on device")
    return partial


def test_an_embeddings_partition_dying_mid_write_keeps_the_previous_day_readable(tmp_path, monkeypatch):
    from mmpipe.embeddings import embedding_frame, read_embeddings, write_day_embeddings

    old = np.eye(3, 4, dtype=np.float32)
    write_day_embeddings(embedding_frame(["a", "b", "c"], ["2026-01-01"] * 3, {"fused": old}, "1"), tmp_path,
                         "2026-01-01")
    monkeypatch.setattr(pd.DataFrame, "to_parquet", _dies_after(0.5, pd.DataFrame.to_parquet))
    with pytest.raises(OSError, match="No space left"):
        write_day_embeddings(embedding_frame(["d"], ["2026-01-01"], {"fused": np.ones((1, 4))}, "2"), tmp_path,
                             "2026-01-01")
    ids, vectors = read_embeddings(tmp_path, "fused")
    assert ids == ["a", "b", "c"]
    np.testing.assert_array_equal(vectors, old)
    assert [p.name for p in tmp_path.iterdir()] == ["created_at=2026-01-01.parquet"]


def test_a_report_dying_mid_write_keeps_the_previous_report(tmp_path, monkeypatch):
    import json
    from pathlib import Path

    from mmpipe.eval import report

    report.write_report(tmp_path, "eval", "# old\n", {"curve": b"old png"}, {"recall": 0.5})
    real_write_bytes = Path.write_bytes

    def dies_mid_json(self, data):
        if self.name.startswith(".eval.json."):
            real_write_bytes(self, data[: len(data) // 2])
            raise OSError("No space left on device")
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", dies_mid_json)
    with pytest.raises(OSError, match="No space left"):
        report.write_report(tmp_path, "eval", "# new\n", {"curve": b"new png"}, {"recall": 0.75})
    monkeypatch.undo()
    assert json.loads((tmp_path / "eval.json").read_text()) == {"recall": 0.5}
    assert (tmp_path / "curve.png").read_bytes() == b"old png"  # written after the json: never reached
    assert (tmp_path / "eval.md").read_text() == "# new\n"  # each file is whole, old or new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png", "eval.json", "eval.md"]


def _record_syncs_and_renames(monkeypatch) -> list[tuple[str, ...]]:
    """Every fsync (by the path its descriptor names) and os.replace, in order, still done."""
    import os

    events: list[tuple[str, ...]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_a_write_is_on_disk_before_its_rename_and_the_rename_after_it(tmp_path, monkeypatch):
    """Power-loss order: the temporary's data synced, then renamed, then its directory synced."""
    events = _record_syncs_and_renames(monkeypatch)
    target = tmp_path / "t.parquet"
    frame = pd.DataFrame({"a": range(1000), "b": [f"row {i}" for i in range(1000)]})
    write_parquet_atomic(frame, target)

    (_, temporary), _, _ = events
    assert events == [("fsync", temporary), ("replace", temporary, str(target)), ("fsync", str(tmp_path))]
    assert temporary.startswith(str(tmp_path / ".t.parquet."))  # beside the target: one filesystem
    pd.testing.assert_frame_equal(pd.read_parquet(target), frame)  # complete
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]  # the temporary is gone


def test_a_checkpoint_is_on_disk_before_it_is_swapped_in(tmp_path, monkeypatch):
    import torch

    from mmpipe.train.checkpoint import load_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path / "ckpt", model, None, step=1, config={})  # a previous one to swap out
    events = _record_syncs_and_renames(monkeypatch)
    save_checkpoint(tmp_path / "ckpt", model, None, step=2, config={})

    swap_in = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(tmp_path / "ckpt"))
    staging = events[swap_in][1]
    synced_before = {e[1] for e in events[:swap_in] if e[0] == "fsync"}
    files = {"model.safetensors", "rng.safetensors", "trainer_state.json"}
    assert synced_before >= {f"{staging}/{name}" for name in files} | {staging}
    assert ("fsync", str(tmp_path)) in events[swap_in + 1:]
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == files
    assert load_checkpoint(tmp_path / "ckpt", torch.nn.Linear(3, 2))["step"] == 2
