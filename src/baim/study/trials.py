"""Independent tuning trials in worker processes (``baim tune --jobs N``).

Why: at the ``quick`` preset's sizes one trial (a learner at one rate, a workflow run, a
distillation baseline at one weight) keeps one core busy however many intra-op threads torch
gets, so a sequential tuning leaves the other cores idle for hours. Within a stage the trials
do not depend on one another and each writes its own file atomically when it ends; so they
can run in N processes at once (each with cores ÷ N torch threads), and a killed parallel
tuning resumes exactly like a sequential one. The stage's choice is then made in the calling
process, from the files on disk, as before.

A call is a module-level function and picklable arguments (the workers are started fresh,
``spawn``, not forked from a process whose torch thread pools are already running).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any

Call = tuple[Callable[..., Any], tuple[Any, ...]]


def say(msg: str) -> None:
    """A worker's log line (stderr, flushed: several processes write to it)."""
    print(msg, file=sys.stderr, flush=True)


def _start_worker(threads: int) -> None:
    os.environ["BAIM_QUIET"] = "1"  # no progress bars interleaved from several processes
    import torch

    torch.set_num_threads(threads)


def worker_threads(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def run_calls(calls: list[Call], jobs: int = 1) -> None:
    """Every call, in this process (``jobs`` ≤ 1, or a single call) or in ``jobs`` worker
    processes. The first failure stops the calls not yet started and is raised here (those
    running finish and keep their files)."""
    if jobs <= 1 or len(calls) <= 1:
        for fn, args in calls:
            fn(*args)
        return
    ctx = multiprocessing.get_context("spawn")
    workers = min(jobs, len(calls))
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_start_worker, initargs=(worker_threads(jobs),)
    ) as pool:
        futures = [pool.submit(fn, *args) for fn, args in calls]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        errors = [e for f in done if (e := f.exception()) is not None]
        if errors:
            pool.shutdown(wait=True, cancel_futures=True)
            raise errors[0]
