"""The workflow, written once against a :class:`~baim.transport.Transport`.

Phases: layout → local training and upload (each edge, over the transport) → screening →
BAIM training with each strategy → partition (of the finetune BAIM) → deployment →
personalisation → (async: integrations, final BAIM) → evaluation at the edges → summary,
figures and report. Each finished phase is recorded by :class:`baim.rundir.RunDir`;
rerunning resumes at the first unfinished one. Which engine carries the messages is not this
package's business: see :mod:`baim.engines`.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ..config import Preset, RunConfig
from ..data import DataSet, load_dataset
from ..data.layout import Layout, make_layout
from ..resume import check_inputs, fingerprint, reopen_local_failures
from ..rundir import RunDir
from . import lifecycle, phases
from .context import Context
from .results import (
    Arrivals,
    CloudTraining,
    Deployment,
    EdgeEvaluation,
    FinalBaim,
    Integration,
    LayoutResult,
    Partition,
    Personalization,
    Screening,
    Upload,
)
from .summary import summarize


def prepare(out: str | Path, cfg: RunConfig) -> tuple[RunDir, Layout, DataSet, Preset]:
    """Open (or resume) a run directory and make its layout (phase 0, on the cloud)."""
    preset = cfg.resolved_preset()
    ds = load_dataset(cfg.dataset, cfg.data_dir)  # before the folder is claimed: a typo costs nothing
    made = make_layout(ds, preset, seed=cfg.seed, data_dir=cfg.data_dir)  # so does a task name or size
    rd = RunDir(out, cfg.to_dict())
    resumed = rd.done("layout")

    def do_layout() -> LayoutResult:
        made.save(rd.files.layout)
        inputs = fingerprint(cfg.dataset, cfg.data_dir, rd.files.layout)
        return LayoutResult(edges=len(made.edges), cloud=len(made.cloud), inputs=inputs)

    recorded = rd.record("layout", do_layout, LayoutResult)
    if resumed and recorded.inputs is not None:  # resuming: on the inputs it started on, or not at all
        check_inputs(recorded.inputs, fingerprint(cfg.dataset, cfg.data_dir, rd.files.layout), rd.root)
        reopen_local_failures(rd)
    layout = Layout.load(rd.files.layout)
    return rd, layout, ds, layout.settings


class Workflow(Context):
    """The phases in order, each recorded (and metered) once."""

    def run(self) -> dict:
        """Every phase, then the summary and report; resumes where a previous call stopped.
        With ``--schedule async`` the first BAIM is fused from the first quorum of uploads and
        every later one is integrated in a phase of its own (:mod:`baim.schedule`)."""
        self.phase("upload", partial(phases.upload, self), Upload)
        self.phase("screening", partial(phases.screening, self), Screening)
        arrivals = self.phase("arrivals", partial(lifecycle.arrivals, self), Arrivals)
        for s in self.cfg.strategies:
            self.phase(f"cloud_{s}", partial(phases.cloud, self, s), CloudTraining)
        self.phase("partition", partial(phases.partition, self), Partition)
        self.phase("deployment", partial(phases.deployment, self), Deployment)
        self.phase("personalization", partial(phases.personalization, self), Personalization)
        for k in range(1, len(arrivals.batches)):
            self.phase(f"integration_{k}", partial(lifecycle.integration, self, k), Integration)
        if len(arrivals.batches) > 1:
            self.phase("final_baim", partial(lifecycle.final_baim, self), FinalBaim)
        self.phase("edge_evaluation", partial(phases.edge_evaluation, self), EdgeEvaluation)
        return self.phase("summary", partial(summarize, self))
