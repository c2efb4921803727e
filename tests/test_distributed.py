"""Data-parallel training: two CPU processes (gloo) give the loss and gradients of one process
on the same global batch, for PinCLIP and MAC; checkpoints come from rank 0 only; a resumed
run is exact at the same world size and within a stated tolerance at another.

One spawn of two processes computes everything the tests compare (tiny models: seconds);
the single-process references run here.
"""

from __future__ import annotations

import doctest
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

import mmpipe.train.distributed as distributed
from mmpipe.nn.text_tower import TextFeatures
from mmpipe.systems.mac.train import MACSettings, MACTask, MACTrainConfig, train_mac
from mmpipe.systems.pinclip.data import PinDataset, neighbor_pairs_for_training
from mmpipe.systems.pinclip.model import PinCLIPConfig
from mmpipe.systems.pinclip.train import PinCLIPTask, PinCLIPTrainConfig, train_pinclip
from mmpipe.train.distributed import ComputeConfig, average_gradients_, process_group
from tests.servers import free_port
from tests.test_mac_model import TINY as MAC_MODEL
from tests.test_mac_model import _with_moment_queries, informative_world

# Measured (`python -m tests.test_distributed`: 2 gloo processes against 1, float32, CPU):
# the loss is the same float (difference 0) in every case; the largest gradient difference
# is 5.7e-6 on entries up to 11 (5e-7 relative); after 10 steps of the loop the weights
# differ by at most 9.3e-5 (PinCLIP) and 3.2e-5 (MAC); a 2-process checkpoint resumed by
# one process ends 1.0e-6 from the 2-process run. Weights drift more than gradients
# because Adam divides each gradient by its own running size: an attention key bias, whose
# gradient is zero but for float noise (softmax ignores a shift shared by every key), moves
# by noise-driven steps of up to lr. The bounds leave headroom for other CPUs.
LOSS_ATOL = 1e-5
GRAD_ATOL, GRAD_RTOL = 1e-5, 1e-4
WEIGHT_ATOL = 1e-3

PINCLIP_MODEL = PinCLIPConfig.tiny(text_hidden_size=32, n_fusion_heads=2)
# Global batches of odd sizes: the two processes hold 13 and 12 pins, 8 and 7 videos.
PINCLIP_TRAIN = PinCLIPTrainConfig(steps=6, batch_size=25, pair_batch_size=8, lr=3e-3, warmup_steps=2,
                                   neighbor_warmup_steps=0, fusion_steps=4, fusion_batch_size=21,
                                   fusion_pair_batch_size=8, checkpoint_every=2, log_every=1, validate_every=0,
                                   grad_clip_norm=1.0)
# The step's losses: image-text + board proxies (+ text), the two other neighbor losses, the fusion phase.
PINCLIP_CASES = {
    "towers_proxies": ({}, "towers"),
    "towers_boards": ({"neighbor_loss": "boards", "text_neighbor_weight": 0.0}, "towers"),
    "towers_pairs": ({"neighbor_loss": "pairs", "text_neighbor_weight": 0.0}, "towers"),
    "fusion_proxies": ({}, "fusion"),
    "fusion_pairs": ({"fusion_loss": "pairs"}, "fusion"),
}
STEP = 1
STOP_AT = 7  # in the fusion phase: a resume re-enters it mid-way


def pin_world(n: int = 60, n_boards: int = 6, seed: int = 0):
    """Random pins (images, captions of different lengths, a few without text) on boards,
    with the board graph's neighbor pairs: every input PinCLIP's losses read."""
    rng = np.random.default_rng(seed)
    ids = [f"p{i}" for i in range(n)]
    pins = pd.DataFrame({"pin_id": ids, "image_path": [f"images/{pin}.jpg" for pin in ids],
                         "title": "a pin", "description": None})
    images = torch.from_numpy(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))
    dataset = PinDataset(pins, Path("/"), 32, images=images)
    lengths = rng.integers(0, 12, n)
    mask = torch.from_numpy(np.arange(12)[None] < lengths[:, None])
    text = TextFeatures(torch.randn(n, 12, 32, generator=torch.Generator().manual_seed(seed)).half(), mask,
                        torch.zeros(n, 32))
    boards = rng.integers(0, n_boards, n)
    second = rng.integers(0, n_boards, n)
    board_pins = pd.DataFrame({"board_id": [f"b{b}" for b in boards] + [f"b{b}" for b in second[::3]],
                               "pin_id": ids + ids[::3]}).drop_duplicates()
    pairs = [(a, b, board) for board, group in board_pins.groupby("board_id")
             for i, a in enumerate(group["pin_id"]) for b in list(group["pin_id"])[i + 1:i + 4]]
    pairs = pd.DataFrame(pairs, columns=["pin_a", "pin_b", "board_id"]).assign(split="train")
    return dataset, text, neighbor_pairs_for_training(pairs, ids, board_pins)


def mac_world():
    inputs = _with_moment_queries(informative_world(24))
    settings = MACSettings(MAC_MODEL, MACTrainConfig(steps=10, batch_size=15, moment_batch_size=7, n_frames=3,
                                                     lr=2e-3, warmup_steps=2, validate_every=4, patience=5,
                                                     checkpoint_every=3, log_every=1, warm_start=False))
    return inputs, settings


def _grads(task, params, loss) -> dict:
    for param in params:
        param.grad = None
    loss.backward()
    average_gradients_(params)
    named = dict(task.model.named_parameters())
    if task.aux is not None:
        named.update({f"aux.{k}": v for k, v in task.aux.named_parameters()})
    return {name: p.grad.detach().clone() for name, p in named.items() if p.grad is not None}


def pinclip_step(data, overrides: dict, phase: str) -> dict:
    """Loss and gradients of one step of ``phase`` (averaged over the processes, if several)."""
    dataset, text, pairs = data
    task = PinCLIPTask(PINCLIP_MODEL, replace(PINCLIP_TRAIN, **overrides), dataset, text,
                       np.arange(len(dataset)), pairs)
    towers, fusion = task.phases()
    if phase == "fusion":
        fusion.begin(True)
    chosen = towers if phase == "towers" else fusion
    optimizer = chosen.make_optimizer()  # it sets what trains in the phase
    params = [p for group in optimizer.param_groups for p in group["params"]]
    outputs = chosen.training_forward(STEP if phase == "towers" else PINCLIP_TRAIN.steps + STEP)
    return {"loss": outputs["loss"].detach().clone(), "grads": _grads(task, params, outputs["loss"])}


def mac_step(data) -> dict:
    inputs, settings = data
    task = MACTask(settings, inputs)
    params = [p for group in task.phases()[0].make_optimizer().param_groups for p in group["params"]]
    outputs = task.training_forward(STEP)
    return {"loss": outputs["loss"].detach().clone(), "moment_loss": outputs["moment_loss"].clone(),
            "grads": _grads(task, params, outputs["loss"])}


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, world: int, port: int, out: Path, pins, mac) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import mmpipe.train.loop as loop

    saves = []
    real_save = loop.save_checkpoint
    loop.save_checkpoint = lambda directory, *args, **kwargs: (saves.append(str(directory)),
                                                             real_save(directory, *args, **kwargs))[1]
    with process_group("gloo") as (got_rank, got_world):
        assert (got_rank, got_world) == (rank, world)
        results = {"pinclip": {name: pinclip_step(pins, *case) for name, case in PINCLIP_CASES.items()},
                   "mac": mac_step(mac)}
        dataset, text, pairs = pins
        rows = np.arange(len(dataset))
        straight = train_pinclip(PINCLIP_MODEL, PINCLIP_TRAIN, dataset, text, rows, pairs, out_dir=out / "straight")
        train_pinclip(PINCLIP_MODEL, PINCLIP_TRAIN, dataset, text, rows, pairs, out_dir=out / "resumed",
                      stop_after=STOP_AT)
        resumed = train_pinclip(PINCLIP_MODEL, PINCLIP_TRAIN, dataset, text, rows, pairs, out_dir=out / "resumed")
        # stopped here, resumed by one process in the test
        train_pinclip(PINCLIP_MODEL, PINCLIP_TRAIN, dataset, text, rows, pairs, out_dir=out / "handover",
                      stop_after=STOP_AT)
        mac_run = train_mac(mac[1], mac[0], out / "mac")
        results.update(pinclip_straight=_state(straight.model), pinclip_resumed=_state(resumed.model),
                       pinclip_history=[h["loss"] for h in straight.history], mac_fit=_state(mac_run.model),
                       mac_validation=mac_run.validation, saves=saves)
    torch.save(results, out / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def data():
    return pin_world(), mac_world()


@pytest.fixture(scope="module")
def two_processes(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, free_port(), out, *data), nprocs=2, join=True)
    return out, [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _worst(a: dict, b: dict) -> str:
    """The largest difference, which tensor holds it, and that tensor's largest entry."""
    name = max(a, key=lambda k: float((a[k].float() - b[k].float()).abs().max()))
    return f"{_max_diff(a, b):.2e} ({name}, largest entry {float(b[name].abs().max()):.2e})"


def _assert_grads_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=GRAD_ATOL, rtol=GRAD_RTOL, msg=name)


@pytest.mark.parametrize("case", list(PINCLIP_CASES))
def test_two_processes_give_pinclip_the_loss_and_gradients_of_one(two_processes, data, case):
    _, ranks = two_processes
    one = pinclip_step(data[0], *PINCLIP_CASES[case])
    for rank in ranks:
        got = rank["pinclip"][case]
        assert abs(float(got["loss"]) - float(one["loss"])) <= LOSS_ATOL
        _assert_grads_close(got["grads"], one["grads"])
    # every process holds the same averaged gradient, bit for bit: their optimizer steps agree
    assert _max_diff(ranks[0]["pinclip"][case]["grads"], ranks[1]["pinclip"][case]["grads"]) == 0.0


def test_two_processes_give_mac_the_loss_and_gradients_of_one(two_processes, data):
    _, ranks = two_processes
    one = mac_step(data[1])
    assert float(one["moment_loss"]) > 0  # the moment loss is part of the step
    for rank in ranks:
        assert abs(float(rank["mac"]["loss"]) - float(one["loss"])) <= LOSS_ATOL
        _assert_grads_close(rank["mac"]["grads"], one["grads"])


def test_training_in_two_processes_ends_with_the_weights_of_one(two_processes, data):
    out, ranks = two_processes
    dataset, text, pairs = data[0]
    one = train_pinclip(PINCLIP_MODEL, PINCLIP_TRAIN, dataset, text, np.arange(len(dataset)), pairs)
    np.testing.assert_allclose(ranks[0]["pinclip_history"], [h["loss"] for h in one.history], atol=1e-5)
    assert _max_diff(ranks[0]["pinclip_straight"], _state(one.model)) <= WEIGHT_ATOL
    assert _max_diff(ranks[0]["pinclip_straight"], ranks[1]["pinclip_straight"]) == 0.0
    mac = train_mac(data[1][1], data[1][0])
    assert _max_diff(ranks[0]["mac_fit"], _state(mac.model)) <= WEIGHT_ATOL
    # validation is rank 0's score, shared: both processes stopped (or not) at the same step
    assert ranks[0]["mac_validation"] == ranks[1]["mac_validation"]
    assert ranks[0]["mac_validation"]["align"]["scores"] == mac.validation["align"]["scores"]


def test_only_rank_zero_writes_checkpoints(two_processes):
    out, ranks = two_processes
    assert ranks[1]["saves"] == []
    assert {Path(path).parent.name for path in ranks[0]["saves"]} == {"straight", "resumed", "handover", "mac"}
    assert not list(out.glob("*/checkpoint/.*staging*"))


def test_a_resumed_run_is_exact_at_the_same_world_size(two_processes):
    _, ranks = two_processes
    for name, tensor in ranks[0]["pinclip_straight"].items():
        assert torch.equal(tensor, ranks[0]["pinclip_resumed"][name]), name


def test_a_run_resumed_by_another_number_of_processes_stays_within_tolerance(two_processes, data):
    out, ranks = two_processes
    dataset, text, pairs = data[0]
    resumed = train_pinclip(PINCLIP_MODEL, PINCLIP_TRAIN, dataset, text, np.arange(len(dataset)), pairs,
                            out_dir=out / "handover")
    assert [h["step"] for h in resumed.history] == list(range(STOP_AT + 1, 11))
    assert _max_diff(_state(resumed.model), ranks[0]["pinclip_straight"]) <= WEIGHT_ATOL


def test_bf16_autocast_trains_on_the_cpu(data):
    dataset, text, pairs = data[0]
    cfg = replace(PINCLIP_TRAIN, steps=2, fusion_steps=0)
    full = train_pinclip(PINCLIP_MODEL, cfg, dataset, text, np.arange(len(dataset)), pairs)
    bf16 = train_pinclip(PINCLIP_MODEL, cfg, dataset, text, np.arange(len(dataset)), pairs,
                         compute=ComputeConfig(bf16=True))
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())  # autocast: weights stay float32
    # bf16 keeps 8 bits of mantissa: the same loss to about 1%
    assert bf16.history[0]["loss"] == pytest.approx(full.history[0]["loss"], rel=0.02)
    assert bf16.history[0]["loss"] != full.history[0]["loss"]


def test_threads_share_the_cores_and_shards_cover_the_batch():
    assert doctest.testmod(distributed).failed == 0
    assert distributed.threads_per_process(3, concurrency=1, cores=16) == 5
    with pytest.raises(ValueError, match="processes must be >= 1"):
        ComputeConfig(processes=0)


@pytest.mark.parametrize("n", [7, 8, 2])
def test_the_shards_of_a_batch_are_its_rows_in_rank_order(monkeypatch, n):
    monkeypatch.setattr(distributed, "distributed", lambda: True)
    parts = []
    for rank in range(3):
        monkeypatch.setattr(distributed, "world", lambda rank=rank: (rank, 3))
        parts.append(distributed.shard(n))
    assert np.concatenate([np.arange(n)[part] for part in parts]).tolist() == list(range(n))
    assert [len(range(n)[part]) for part in parts] == [len(a) for a in np.array_split(np.arange(n), 3)]


def measure(out: Path) -> dict[str, float | str]:
    """The differences the tolerances above bound, measured: ``python -m tests.test_distributed``."""
    pins, mac = pin_world(), mac_world()
    mp.spawn(_worker, args=(2, free_port(), out, pins, mac), nprocs=2, join=True)
    ranks = [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    found = {}
    for case, args in PINCLIP_CASES.items():
        one = pinclip_step(pins, *args)
        found[f"pinclip {case}: loss"] = abs(float(ranks[0]["pinclip"][case]["loss"]) - float(one["loss"]))
        found[f"pinclip {case}: gradient"] = _worst(ranks[0]["pinclip"][case]["grads"], one["grads"])
    one = mac_step(mac)
    found["mac: loss"] = abs(float(ranks[0]["mac"]["loss"]) - float(one["loss"]))
    found["mac: gradient"] = _worst(ranks[0]["mac"]["grads"], one["grads"])
    dataset, text, pairs = pins
    rows = np.arange(len(dataset))
    straight = train_pinclip(PINCLIP_MODEL, PINCLIP_TRAIN, dataset, text, rows, pairs)
    found["pinclip 10 steps: weights, 2 vs 1 process"] = _worst(ranks[0]["pinclip_straight"], _state(straight.model))
    one_mac = train_mac(mac[1], mac[0])
    found["mac 10 steps: weights, 2 vs 1 process"] = _worst(ranks[0]["mac_fit"], _state(one_mac.model))
    found["pinclip: resumed at 2 processes vs straight"] = _max_diff(ranks[0]["pinclip_resumed"],
                                                                     ranks[0]["pinclip_straight"])
    handover = train_pinclip(PINCLIP_MODEL, PINCLIP_TRAIN, dataset, text, rows, pairs, out_dir=out / "handover")
    found["pinclip: 2-process checkpoint resumed by 1 vs 2 straight"] = _max_diff(_state(handover.model),
                                                                                 ranks[0]["pinclip_straight"])
    return found


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name, value in measure(Path(tmp)).items():
            print(f"{name:<60} {value if isinstance(value, str) else f'{value:.2e}'}")
