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
