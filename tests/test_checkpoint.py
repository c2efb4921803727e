"""Checkpoints: exact round trip, resume equals an uninterrupted run, atomic replacement."""

from __future__ import annotations

import pytest
import torch

import mmpipe.train.checkpoint as checkpoint
from mmpipe.train.checkpoint import NonFiniteError, load_checkpoint, read_trainer_state, save_checkpoint


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))


def _train(model, optimizer, steps: range) -> None:
    for step in steps:
        g = torch.Generator().manual_seed(step)  # data is a function of the step: resumable
        x = torch.randn(32, 8, generator=g)
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_resume_matches_uninterrupted_run(tmp_path):
    straight = _model()
    opt = torch.optim.AdamW(straight.parameters(), lr=1e-2)
    torch.manual_seed(123)
    _train(straight, opt, range(20))

    first = _model()
    opt1 = torch.optim.AdamW(first.parameters(), lr=1e-2)
    torch.manual_seed(123)
    _train(first, opt1, range(8))
    save_checkpoint(tmp_path / "ckpt", first, opt1, step=8, config={"lr": 1e-2})

    torch.manual_seed(999)  # a different process state: the checkpoint must restore it
    resumed = _model()
    opt2 = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    state = load_checkpoint(tmp_path / "ckpt", resumed, opt2)
    assert state["step"] == 8 and state["config"] == {"lr": 1e-2}
    _train(resumed, opt2, range(state["step"], 20))

    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = _model()
    save_checkpoint(tmp_path / "ckpt", model, None, step=1, config={})

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "ckpt", model, None, step=2, config={})
    assert read_trainer_state(tmp_path / "ckpt")["step"] == 1
    # the checkpoint and its writers' lock file, no staging directory left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ckpt.lock", "ckpt"]


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _scrambled(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    return model


def _assert_loads(directory, expected: dict[str, torch.Tensor], step: int) -> None:
    fresh = _scrambled(_model())
    assert load_checkpoint(directory, fresh)["step"] == step
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_a_save_that_dies_mid_file_keeps_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    """The failure comes after part of the optimizer file's bytes are on disk, as when a
    disk fills or the process is interrupted inside a write."""
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _train(model, opt, range(2))
    save_checkpoint(tmp_path / "ckpt", model, opt, step=2, config={})
    before = _weights(model)
    _train(model, opt, range(2, 4))
    real_save = checkpoint.save_file

    def dies_mid_write(tensors, path, *args, **kwargs):
        if path.endswith("optimizer.safetensors"):
            real_save(tensors, path, *args, **kwargs)
            data = open(path, "rb").read()
            with open(path, "wb") as handle:
                handle.write(data[: len(data) // 2])
            raise OSError("No space left on device")
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", dies_mid_write)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path / "ckpt", model, opt, step=4, config={})
    _assert_loads(tmp_path / "ckpt", before, step=2)
    resumed = torch.optim.AdamW(_model().parameters(), lr=1e-2)
    load_checkpoint(tmp_path / "ckpt", _model(), resumed)  # the optimizer file is the old, whole one
    assert resumed.state_dict()["state"][0]["step"].item() == 2


def test_a_save_that_dies_between_its_renames_leaves_the_previous_one_readable(tmp_path, monkeypatch):
    """The swap is two renames (previous aside, new in). Dying between them leaves the
    target missing: readers take the one moved aside, and the next save completes the swap."""
    model = _model()
    save_checkpoint(tmp_path / "ckpt", model, None, step=1, config={})
    before = _weights(model)
    real_replace = checkpoint.os.replace

    def dies_after_moving_aside(src, dst):
        if str(dst).endswith(".ckpt.old"):
            real_replace(src, dst)
            raise KeyboardInterrupt  # the process is gone before the new checkpoint moves in
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", dies_after_moving_aside)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ckpt", _scrambled(_model()), None, step=2, config={})
    monkeypatch.undo()
    assert not (tmp_path / "ckpt").exists()
    assert read_trainer_state(tmp_path / "ckpt")["step"] == 1
    _assert_loads(tmp_path / "ckpt", before, step=1)
    # The next save puts the new checkpoint in place and drops the old one.
    later = _scrambled(_model())
    save_checkpoint(tmp_path / "ckpt", later, None, step=3, config={})
    _assert_loads(tmp_path / "ckpt", _weights(later), step=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ckpt.lock", "ckpt"]


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    model = _model()
    save_checkpoint(tmp_path / "ckpt", model, None, step=1, config={})
    before = _weights(model)
    with torch.no_grad():
        model[2].bias.fill_(float("inf"))
        model[0].weight[3, 1] = float("nan")
    with pytest.raises(NonFiniteError, match=r"checkpoint step 2 .*non-finite values in 0\.weight, 2\.bias"):
        save_checkpoint(tmp_path / "ckpt", model, None, step=2, config={})
    _assert_loads(tmp_path / "ckpt", before, step=1)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nope", _model())
