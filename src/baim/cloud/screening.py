"""Phase 3: every upload is validated and scored before it may be fused.

Validation (reject): the message decodes, says it is an upload, names a known task and a
positive sample count, carries a valid spec of the right image geometry under the size
limit, and tensors that match that spec exactly with finite values.

Scoring (quarantine): the learner's test loss on the cloud's common data of its task. A
learner that cannot beat the trivial predictor (the task's mean image), or whose loss is
over ``outlier_factor`` × the median of its task's uploads, is quarantined: kept for
inspection, never fused.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data import to_float
from ..errors import BaimError, MessageError
from ..learners import LearnerSpec, StagedVAE, check_state
from ..models import reconstruction_metrics
from ..transport import decode

MAX_PARAMS = 50_000_000


@dataclass
class Screened:
    accepted: dict[int, tuple[StagedVAE, dict]] = field(default_factory=dict)  # edge -> (learner, meta)
    rejected: list[dict] = field(default_factory=list)
    quarantined: list[dict] = field(default_factory=list)
    scores: dict[int, float] = field(default_factory=dict)

    def report(self) -> dict:
        return {
            "accepted": sorted(self.accepted),
            "rejected": self.rejected,
            "quarantined": self.quarantined,
            "scores": {str(k): v for k, v in self.scores.items()},
        }


def validate_upload(
    data: bytes, task_names: list[str], image_size: int, channels: int, max_params: int = MAX_PARAMS
) -> tuple[StagedVAE, dict]:
    """Decode and check one upload; raise a BaimError naming what is wrong."""
    msg = decode(data)
    if msg.kind != "upload":
        raise MessageError(f"expected an 'upload' message, got {msg.kind!r}")
    meta = msg.meta
    if meta.get("task") not in task_names:
        raise MessageError(f"upload names task {meta.get('task')!r}; known tasks are {task_names}")
    if not isinstance(meta.get("samples"), int) or meta["samples"] <= 0:
        raise MessageError(f"upload sample count {meta.get('samples')!r} must be a positive int")
    if not isinstance(meta.get("spec"), dict):
        raise MessageError("upload carries no learner spec (a JSON object under 'spec')")
    spec = LearnerSpec.from_dict(meta["spec"])
    if (spec.image_size, spec.channels) != (image_size, channels):
        raise MessageError(
            f"upload is for {spec.channels}×{spec.image_size}² images; this federation uses {channels}×{image_size}²"
        )
    with torch.device("meta"):
        n_params = sum(p.numel() for p in StagedVAE(spec).parameters())
    if n_params > max_params:
        raise MessageError(f"upload has {n_params:,} parameters, over the limit of {max_params:,}")
    model = StagedVAE(spec)
    check_state(model, msg.tensors, "upload")
    model.load_state_dict(msg.tensors)
    return model.eval(), meta


def screen_uploads(
    uploads: dict[int, bytes],
    task_names: list[str],
    common: dict[int, np.ndarray],
    image_size: int,
    channels: int,
    outlier_factor: float = 3.0,
) -> Screened:
    out = Screened()
    for edge, data in sorted(uploads.items()):
        try:
            out.accepted[edge] = validate_upload(data, task_names, image_size, channels)
        except (BaimError, ValueError, TypeError) as exc:
            out.rejected.append({"edge": edge, "reason": str(exc)})
    by_task: dict[int, list[int]] = {}
    for edge, (model, meta) in out.accepted.items():
        t = task_names.index(meta["task"])
        out.scores[edge] = reconstruction_metrics(model, common[t])["test_loss"]
        by_task.setdefault(t, []).append(edge)
    for t, edges in by_task.items():
        x = to_float(common[t])
        trivial = float((x - x.mean(0, keepdim=True)).pow(2).mean())
        median = statistics.median(out.scores[e] for e in edges)
        for e in edges:
            s = out.scores[e]
            why = None
            if not np.isfinite(s) or s >= trivial:
                why = f"loss {s:.4g} on common data does not beat the task's mean image ({trivial:.4g})"
            elif s > outlier_factor * median:
                why = f"loss {s:.4g} is over {outlier_factor}× the median of task {task_names[t]} ({median:.4g})"
            if why:
                out.quarantined.append({"edge": e, "reason": why, "score": s})
                del out.accepted[e]
    return out
