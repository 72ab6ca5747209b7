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
    """Torch threads per process when ``jobs`` share the cores this process may run on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, jobs))


def run_calls(calls: list[Call], jobs: int = 1) -> None:
    """Every call, in this process (``jobs`` ≤ 1, or a single call) or in ``jobs`` worker
    processes. The first failure, or an interrupt (Ctrl-C), stops every worker at once and is
    raised here; a trial cut short leaves no file (they are written atomically at their end)
    and runs again on the next call."""
    if jobs <= 1 or len(calls) <= 1:
        for fn, args in calls:
            fn(*args)
        return
    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(min(jobs, len(calls)), initializer=_start_worker, initargs=(worker_threads(jobs),))
    try:
        pending = [pool.apply_async(fn, args) for fn, args in calls]
        while pending:
            pending[0].wait(0.5)
            for done in [r for r in pending if r.ready()]:
                pending.remove(done)
                done.get()  # raises the trial's own error
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
