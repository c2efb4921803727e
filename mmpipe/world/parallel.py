"""Worker processes for the generator's rendering and encoding, with output that never
depends on how many there are: every job carries its own seed, results come back in job
order, and nothing a job draws is shared with another."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

from tqdm import tqdm

Job = TypeVar("Job")
Result = TypeVar("Result")


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_workers(workers: int | None, n_jobs: int) -> int:
    """``None`` or 0: one per CPU this process may use; never more than there are jobs."""
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    return max(1, min(workers or available_cpus(), n_jobs))


def map_in_order(fn: Callable[[Job], Result], jobs: Sequence[Job], workers: int | None = None,
                 desc: str = "", unit: str = "it", progress: bool = True) -> list[Result]:
    """``[fn(job) for job in jobs]`` on ``workers`` processes, with a progress bar.

    ``fn`` must be a module-level function (it is pickled to the workers). Workers come from
    a fork server where the platform has one: a plain fork of a process whose other threads
    (torch's OpenMP pool, a library's logging) hold a lock copies the lock held, and the
    child waits on it forever, as a worker did in a test run after torch had been used.
    The server is a fresh single-threaded process that has imported ``fn``'s module, so
    its forks start in milliseconds and hold no lock."""
    n_workers = resolve_workers(workers, len(jobs))
    bar = dict(total=len(jobs), desc=desc, unit=unit, disable=not progress)
    if n_workers == 1:
        return [fn(job) for job in tqdm(jobs, **bar)]
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([fn.__module__])
    else:
        context = multiprocessing.get_context("spawn")
    # Small chunks keep the workers evenly loaded when jobs differ in cost (video lengths).
    chunksize = max(1, len(jobs) // (n_workers * 16))
    with context.Pool(n_workers) as pool:
        return list(tqdm(pool.imap(fn, jobs, chunksize=chunksize), **bar))
