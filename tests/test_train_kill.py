"""SIGKILL during training, then a re-run: it resumes and ends with the weights of a run that
never stopped.

A real training process (the shared loop on the toy task of ``test_train_loop``) is
stopped at a known point and killed with SIGKILL by this test, so nothing in it runs after
the signal: no ``finally``, no flush. Three points: in the middle of a step, in the middle
of writing a checkpoint's files, and between the two renames that swap a checkpoint in.
Each leaves the checkpoint of step 10 as the last complete one; the re-run must resume
from it and end bit for bit where the uninterrupted run ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from mmpipe.train.checkpoint import read_trainer_state
from mmpipe.train.loop import LoopConfig, fit
from tests.conftest import PROJECT_ROOT
from tests.test_train_loop import LinearRegression

LOOP = LoopConfig(checkpoint_every=5)
STALL_TIMEOUT_S = 120  # importing torch on a loaded two-core machine

# The child trains with LOOP and stops (sleeps, to be killed) at the point named by argv[2].
CHILD = textwrap.dedent('''
    import sys, time
    from pathlib import Path

    import mmpipe.train.checkpoint as checkpoint
    from mmpipe.train.loop import LoopConfig, fit
    from tests.test_train_loop import LinearRegression

    out, where = Path(sys.argv[1]), sys.argv[2]
    counts = {"model_files": 0, "moved_aside": 0}

    def stall():
        print("stalled", flush=True)
        time.sleep(600)  # the test SIGKILLs this process here

    class Task(LinearRegression):
        def forward_all(self, step):
            if where == "mid-step" and step == 13:  # checkpoints 5 and 10 are written
                stall()
            return super().forward_all(step)

    if where == "mid-checkpoint":  # the model file of the step-15 checkpoint written, the rest not
        real_save = checkpoint.save_file
        def save_file(tensors, path, *args, **kwargs):
            real_save(tensors, path, *args, **kwargs)
            if path.endswith(checkpoint.MODEL_FILE):
                counts["model_files"] += 1
                if counts["model_files"] == 3:
                    stall()
        checkpoint.save_file = save_file

    if where == "between-renames":  # step 10's checkpoint moved aside, step 15's not yet in place
        real_replace = checkpoint.os.replace
        def replace(src, dst):
            real_replace(src, dst)
            if str(dst).endswith(".checkpoint.old"):
                counts["moved_aside"] += 1
                if counts["moved_aside"] == 2:
                    stall()
        checkpoint.os.replace = replace

    fit(Task(), out, loop=LoopConfig(checkpoint_every=5))
    print("finished", flush=True)
''')


def _kill_training(out, where: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(out), where], cwd=PROJECT_ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()  # blocks until the child stalls (or exits)
        assert line == "stalled\n", f"child did not stall: {line!r} {child.stderr.read()[-2000:]}"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=STALL_TIMEOUT_S) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    task = LinearRegression()
    fit(task, tmp_path_factory.mktemp("straight"), loop=LOOP)
    return task


@pytest.mark.parametrize("where", ["mid-step", "mid-checkpoint", "between-renames"])
def test_a_sigkilled_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, uninterrupted, where):
    _kill_training(tmp_path, where)
    if where == "between-renames":
        assert not (tmp_path / "checkpoint").exists()  # only the previous one, moved aside, is on disk
    assert read_trainer_state(tmp_path / "checkpoint")["step"] == 10

    resumed = LinearRegression(seed=123)  # another init: everything must come from the checkpoint
    result = fit(resumed, tmp_path, loop=LOOP)
    assert [h["step"] for h in result.history] == list(range(11, 31))
    for module in ("model", "aux"):
        straight, again = getattr(uninterrupted, module).state_dict(), getattr(resumed, module).state_dict()
        assert straight.keys() == again.keys()
        for name in straight:
            assert torch.equal(straight[name], again[name]), (module, name)
    assert read_trainer_state(tmp_path / "checkpoint")["step"] == 30
    # the killed save's staging directory and the checkpoint moved aside are cleaned up
    assert sorted(p.name for p in tmp_path.iterdir()) == [".checkpoint.lock", "checkpoint"]
