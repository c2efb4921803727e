"""Checkpoints: exact round trip, resume equals an uninterrupted run, atomic replacement."""

from __future__ import annotations

import pytest
import torch

from mmpipe.train.checkpoint import load_checkpoint, read_trainer_state, save_checkpoint


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
    import mmpipe.train.checkpoint as checkpoint

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "ckpt", model, None, step=2, config={})
    assert read_trainer_state(tmp_path / "ckpt")["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nope", _model())
