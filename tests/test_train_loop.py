"""The shared training loop on a toy task: schedule, phases, clipping, exact resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmpipe.train.checkpoint import NonFiniteError, load_checkpoint, read_trainer_state
from mmpipe.train.loop import LoopConfig, Phase, TrainingTask, config_changes, cosine_lr, fit


class LinearRegression(TrainingTask):
    """Fit y = 3x with a bias, in two phases: weight and bias first, then the bias alone
    with an aux parameter (training-only state, like a loss's proxies)."""

    def __init__(self, seed: int = 0):
        torch.manual_seed(seed)
        self.model = nn.Linear(1, 1)
        self.aux = nn.Linear(1, 1, bias=False)
        self.begun: list[bool] = []

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(16, 1, generator=torch.Generator().manual_seed(step))
        # dropout-like noise from the global RNG: exact resume must restore it
        return x, 3 * x + 0.01 * torch.randn(16, 1)

    def forward_all(self, step: int):
        x, y = self.batch(step)
        return {"loss": ((self.model(x) - y) ** 2).mean(), "items": len(x)}

    def forward_bias(self, step: int):
        x, y = self.batch(step)
        return {"loss": ((self.model(x) + self.aux.weight - y) ** 2).mean()}

    def phases(self):
        return [Phase("all", 20, 0.1, warmup_steps=5, training_forward=self.forward_all,
                      make_optimizer=lambda: torch.optim.SGD(self.model.parameters(), momentum=0.5)),
                Phase("bias", 10, 0.05, training_forward=self.forward_bias, begin=self.begun.append,
                      make_optimizer=lambda: torch.optim.SGD(
                          [{"params": [self.model.bias]}, {"params": self.aux.parameters(), "lr_scale": 2.0}]))]


def test_cosine_lr_warms_up_then_decays_to_the_floor():
    assert cosine_lr(0, 1.0, 100, 10) == pytest.approx(0.1)
    assert cosine_lr(9, 1.0, 100, 10) == pytest.approx(1.0)
    assert cosine_lr(99, 1.0, 100, 10) == pytest.approx(0.1, abs=1e-3)
    assert all(cosine_lr(s, 1.0, 100, 10) >= cosine_lr(s + 1, 1.0, 100, 10) for s in range(10, 99))


def test_fit_learns_and_steps_run_on_across_phases():
    task = LinearRegression()
    result = fit(task)
    assert result.steps == 30 and [h["step"] for h in result.history] == list(range(1, 31))
    assert result.history[-1]["loss"] < 0.1 * result.history[0]["loss"]
    assert task.begun == [True]
    assert result.history[25]["lr"] == pytest.approx(Phase("x", 10, 0.05, None, None).lr_at(5))
    assert not task.model.training  # handed back in eval mode


@pytest.mark.parametrize("stop_after", [3, 20, 24])  # mid first phase, on the boundary, mid second
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, stop_after):
    straight = LinearRegression()
    fit(straight, tmp_path / "a", loop=LoopConfig(checkpoint_every=7))
    interrupted = LinearRegression()
    assert fit(interrupted, tmp_path / "b", stop_after=stop_after).steps == stop_after
    assert read_trainer_state(tmp_path / "b" / "checkpoint")["step"] == stop_after
    resumed = LinearRegression(seed=123)  # different init: everything must come from the checkpoint
    result = fit(resumed, tmp_path / "b", loop=LoopConfig(checkpoint_every=7))
    assert result.history[0]["step"] == stop_after + 1
    assert resumed.begun == [stop_after <= 20]  # the second phase is fresh unless resumed inside it
    for module in ("model", "aux"):
        for a, b in zip(getattr(straight, module).parameters(), getattr(resumed, module).parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_gradient_clipping_bounds_the_update():
    clipped, free = LinearRegression(), LinearRegression()
    for task, clip in ((clipped, 1e-3), (free, 0.0)):
        task.phases = lambda task=task: [Phase("sgd", 1, 1.0, training_forward=task.forward_all,
                                                make_optimizer=lambda: torch.optim.SGD(task.model.parameters()))]
        start = task.model.weight.detach().clone()
        fit(task, loop=LoopConfig(grad_clip_norm=clip))
        task.moved = (task.model.weight.detach() - start).abs().item()
    assert clipped.moved <= 1e-3 + 1e-9 < free.moved


class ScoredRegression(LinearRegression):
    """One phase scored on a fixed validation set; a score that peaks and then falls."""

    def __init__(self, scores):
        super().__init__()
        self.scores = iter(scores)
        self.weights_when_scored: list[float] = []

    def validate(self) -> float:
        self.weights_when_scored.append(self.model.weight.item())
        assert not self.model.training  # scored in eval mode
        return next(self.scores)

    def phases(self):
        return [Phase("all", 40, 0.1, training_forward=self.forward_all, validate=self.validate,
                      validate_every=5, patience=2,
                      make_optimizer=lambda: torch.optim.SGD(self.model.parameters())),
                Phase("bias", 5, 0.05, training_forward=self.forward_bias,
                      make_optimizer=lambda: torch.optim.SGD([self.model.bias]))]


def test_early_stopping_keeps_the_best_weights_and_goes_on_with_the_next_phase(tmp_path):
    task = ScoredRegression([0.1, 0.5, 0.4, 0.3, 0.9])  # best at step 10, stops at 20
    result = fit(task, tmp_path / "run")
    assert result.validation["all"]["best_step"] == 10 and result.validation["all"]["stopped_at"] == 20
    assert [step for step, _ in result.validation["all"]["scores"]] == [5, 10, 15, 20]
    steps = [h["step"] for h in result.history]
    assert steps == [*range(1, 21), *range(41, 46)]  # the rest of phase one is skipped
    assert result.history[9]["validation_all"] == 0.5
    # The second phase started from the weights scored at step 10 (it trains the bias only).
    assert task.model.weight.item() == pytest.approx(task.weights_when_scored[1], abs=0)
    assert read_trainer_state(tmp_path / "run" / "checkpoint")["step"] == 45
    # Resuming a finished run trains nothing more.
    assert fit(ScoredRegression([]), tmp_path / "run").history == []


def test_a_validated_phase_stopped_by_stop_after_keeps_its_current_weights(tmp_path):
    task = ScoredRegression([0.9, 0.1])  # scored at step 5 (best) and step 10
    result = fit(task, tmp_path / "run", stop_after=12)
    assert result.steps == 12 and result.validation == {}  # the phase is not over: nothing restored
    assert task.model.weight.item() != pytest.approx(task.weights_when_scored[0], abs=0)
    assert read_trainer_state(tmp_path / "run" / "checkpoint")["step"] == 12


def test_the_checkpoint_records_wall_clock_across_resumes(tmp_path):
    first = fit(LinearRegression(), tmp_path, stop_after=12, loop=LoopConfig(checkpoint_every=5))
    recorded = read_trainer_state(tmp_path / "checkpoint")["extra"]["train_seconds"]
    assert 0 < recorded <= first.seconds
    second = fit(LinearRegression(), tmp_path, resume=True)
    total = read_trainer_state(tmp_path / "checkpoint")["extra"]["train_seconds"]
    assert recorded < total <= second.seconds  # the resumed run adds its own time to the first's


def test_a_checkpoint_of_another_configuration_is_not_resumed(tmp_path, caplog):
    """New defaults (or a launchpad override) change the config record: the run trains
    afresh and says why, instead of loading weights of other shapes or taking a finished
    run of other settings for this one. The same record resumes (here: nothing left to do)."""
    fit(LinearRegression(), tmp_path, config_record={"model": {"width": 4}, "lr": 0.1})
    assert fit(LinearRegression(), tmp_path, config_record={"model": {"width": 4}, "lr": 0.1}).history == []
    with caplog.at_level("WARNING"):
        again = fit(LinearRegression(), tmp_path, config_record={"model": {"width": 8}, "lr": 0.1})
    assert "not resuming" in caplog.text and "model.width: 4 -> 8" in caplog.text
    assert [h["step"] for h in again.history] == list(range(1, 31))  # trained every step again
    assert read_trainer_state(tmp_path / "checkpoint")["config"] == {"model": {"width": 8}, "lr": 0.1}


def test_config_changes_names_each_difference_as_json_sees_it():
    assert config_changes({"a": (1, 2), "b": 1, "n": {"x": 1}}, {"a": [1, 2], "c": 2, "n": {"x": 2}}) == [
        "b: 1 -> <absent>", "c: <absent> -> 2", "n.x: 1 -> 2"]


class DivergesAt(LinearRegression):
    """A loss with two named terms, one of which turns ``bad`` at global step ``at``."""

    def __init__(self, at: int, term: str, bad: float):
        super().__init__()
        self.at, self.term, self.bad = at, term, bad

    def forward_all(self, step: int):
        x, y = self.batch(step)
        terms = {"fit": ((self.model(x) - y) ** 2).mean(), "shrink": 1e-3 * self.model.weight.pow(2).sum()}
        if step == self.at:
            terms[self.term] = terms[self.term] * self.bad
        return {"loss": terms["fit"] + terms["shrink"], **terms, "items": len(x)}


@pytest.mark.parametrize("at, term, bad, phase, shown", [
    (13, "fit", float("nan"), "all", "loss=nan, fit=nan"),
    (24, "shrink", float("inf"), "bias", "loss=inf, shrink=inf"),  # the second phase: its own terms
])
def test_a_non_finite_loss_stops_training_and_keeps_the_last_finite_checkpoint(tmp_path, at, term, bad, phase,
                                                                              shown):
    task = DivergesAt(at, term, bad)
    if phase == "bias":
        task.forward_bias = lambda step: task.forward_all(step)
    with pytest.raises(NonFiniteError) as raised:
        fit(task, tmp_path, loop=LoopConfig(checkpoint_every=5))
    last = at // 5 * 5
    assert str(raised.value) == (f"non-finite loss at step {at} of phase {phase!r}: {shown}; training stopped "
                                 f"before this update (the last checkpoint, step {last} at "
                                 f"{tmp_path / 'checkpoint'}, is kept)")
    assert read_trainer_state(tmp_path / "checkpoint")["step"] == last
    saved = LinearRegression(seed=5)
    load_checkpoint(tmp_path / "checkpoint", saved.model, aux=saved.aux)
    assert all(torch.isfinite(p).all() for p in [*saved.model.parameters(), *saved.aux.parameters()])
    # the weights the run had when it stopped: the bad loss never reached them
    assert all(torch.isfinite(p).all() for p in task.model.parameters())


def test_a_non_finite_loss_before_any_checkpoint_says_none_was_written(tmp_path):
    with pytest.raises(NonFiniteError, match=r"at step 2 of phase 'all': loss=nan, fit=nan; .*"
                                             r"\(no checkpoint was written\)"):
        fit(DivergesAt(2, "fit", float("nan")), tmp_path, loop=LoopConfig(checkpoint_every=5))
    assert not (tmp_path / "checkpoint").exists()


def test_weights_made_non_finite_by_a_finite_loss_are_not_checkpointed(tmp_path):
    """sqrt at zero: the loss is finite, its gradient is not, so the update makes the
    weights NaN; the checkpoint due at that step is refused and the previous one stays."""
    task = LinearRegression()
    forward = task.forward_all

    def poisoned(step: int):
        outputs = forward(step)
        if step == 9:
            weight = task.model.weight
            outputs["loss"] = outputs["loss"] + 0 * torch.sqrt(weight - weight.detach()).sum()
        return outputs

    task.forward_all = poisoned
    with pytest.raises(NonFiniteError, match=r"not writing checkpoint step 10 .*non-finite values in weight"):
        fit(task, tmp_path, loop=LoopConfig(checkpoint_every=5))
    assert read_trainer_state(tmp_path / "checkpoint")["step"] == 5
