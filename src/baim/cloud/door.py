"""The one door every learner enters a BAIM by: the workflow's screening phase, ``baim cloud
train``, ``baim cloud add`` and the lifecycle's late integrations all call :func:`admit`.

Two checks, in order. **Identity**: the upload is signed by the key the operator registered for
the edge it names (:mod:`baim.cloud.uploads`): in a workflow round also for this run and this
request; offline (an upload read from disk) against the operator's keys file, since no round
was opened. **Screening** (:func:`baim.cloud.screening.screen_uploads`): validation, then every
rule. A learner may skip either check only when the operator says so (:class:`Waivers`, the
``--accept-unsigned`` and ``--skip-screening`` flags), and :meth:`Admitted.report` records which
learners came in unverified or unscreened, so a run's files say what was waived.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BaimError, MessageError, WorkflowError
from ..learners import StagedVAE, weights_bytes
from ..signing import load_private_key, public_bytes, read_edge_keys, write_edge_keys
from ..transport import Message, decode
from .screening import RULES, THRESHOLDS, Screened, Thresholds, model_of, screen_uploads
from .uploads import Expected, authenticate, weights_sha256

SIGNED, UNSIGNED = "signed", "unsigned"


@dataclass(frozen=True)
class Waivers:
    """What the operator explicitly let through; both off by default."""

    accept_unsigned: bool = False  # an upload with no signature enters unverified
    skip_screening: bool = False  # validated, measured, but no rule can quarantine it

    def to_dict(self) -> dict[str, bool]:
        return {"accept_unsigned": self.accept_unsigned, "skip_screening": self.skip_screening}


NO_WAIVERS = Waivers()


@dataclass
class Admitted(Screened):
    """Screening's outcome plus how each upload's identity was established and what was waived."""

    identity: dict[int, str] = field(default_factory=dict)  # edge -> "signed" | "unsigned"
    waivers: Waivers = field(default_factory=lambda: NO_WAIVERS)

    def report(self) -> dict:
        unverified = sorted(e for e, how in self.identity.items() if how == UNSIGNED and e in self.accepted)
        return super().report() | {
            "identity": {str(e): how for e, how in sorted(self.identity.items())},
            "waivers": self.waivers.to_dict(),
            "unverified": unverified,
            "unscreened": sorted(self.accepted) if self.waivers.skip_screening else [],
        }


FIRST_COME = "BAIM_FIRST_COME_KEYS"  # set to 1: pin the first key an unregistered edge presents


def enrol(registry: Path, edge: int, presented: str, own_file: Path | None = None) -> str:
    """How the cloud believes ``edge``'s ``presented`` key, or WorkflowError: ``"operator"``,
    the key the operator registered for it in ``registry`` (``edge_keys.json`` of ``baim deploy
    credentials``, copied there); ``"run folder"``, the key in the edge's folder inside the run
    directory (``own_file``: edges that run on the operator's own disk, as simulated ones do);
    ``"first-come"``, only when the operator set ``BAIM_FIRST_COME_KEYS=1``. The last two are
    added to ``registry``, so a later key is refused."""
    registered = read_edge_keys(registry) if registry.is_file() else {}
    if edge in registered:
        if registered[edge] != presented:
            raise WorkflowError(
                f"edge {edge} presents key {presented[:16]}…, but the key registered for it in {registry} is "
                f"{registered[edge][:16]}…: refused"
            )
        return "operator"
    if own_file is not None and own_file.is_file():
        if public_bytes(load_private_key(own_file)).hex() != presented:
            raise WorkflowError(f"edge {edge} presents a key other than its own ({own_file}): refused")
        how = "run folder"
    elif os.environ.get(FIRST_COME) == "1":
        how = "first-come"
    else:
        raise WorkflowError(
            f"edge {edge} has no key registered in {registry}: copy there the edge_keys.json that `baim deploy "
            f"credentials` wrote (each edge runs with its node-N.identity.pem), or set {FIRST_COME}=1 to pin the "
            "first key each edge presents"
        )
    write_edge_keys(registry, registered | {edge: presented})
    return how


def check_identity(
    edge: int,
    msg: Message,
    digest: str,
    *,
    expected: dict[int, Expected] | None,
    keys: dict[int, str] | None,
    waivers: Waivers,
) -> str:
    """``"signed"`` when ``msg`` carries a signature by its edge's registered key, ``"unsigned"``
    when it carries none and the operator accepts that; else raise MessageError saying why.

    ``expected`` (a workflow round): ``edge`` is who sent it; keys, run and nonces are the round's.
    Otherwise ``keys`` are the operator's registered keys (edge -> hex) and the upload is
    attributed to the edge its signed header names."""
    if "signature" not in msg.meta:
        if waivers.accept_unsigned:
            return UNSIGNED
        raise MessageError(
            f"upload {edge} (naming edge {msg.meta.get('edge')!r}) is unsigned: refused. Send the message its "
            "edge signed, or pass --accept-unsigned to let it in unverified (recorded in the run's files)"
        )
    if expected is not None:
        authenticate(edge, msg, expected.get(edge), digest)
        return SIGNED
    claimed = msg.meta.get("edge")
    key = (keys or {}).get(claimed) if isinstance(claimed, int) and not isinstance(claimed, bool) else None
    if key is None or not isinstance(claimed, int):
        raise MessageError(
            f"upload {edge} is signed as edge {claimed!r}, which has no key registered with this cloud: give the "
            "operator's keys file with --edge-keys FILE (`baim deploy credentials` writes edge_keys.json)"
        )
    authenticate(claimed, msg, Expected(public_key=key, run=None, nonce=None), digest)
    return SIGNED


def admit(
    uploads: dict[int, bytes],
    task_names: list[str],
    common: dict[int, np.ndarray],
    image_size: int,
    channels: int,
    *,
    expected: dict[int, Expected] | None = None,
    keys: dict[int, str] | None = None,
    waivers: Waivers = NO_WAIVERS,
    assigned: dict[int, int] | None = None,
    max_samples: int | None = None,
    thresholds: Thresholds = THRESHOLDS,
    earlier: dict[str, StagedVAE] | None = None,
) -> Admitted:
    """Check every upload's identity, then screen the ones that pass (see the module's doc);
    ``earlier``: learners already admitted, which an upload must not be a near-copy of."""
    out = Admitted(waivers=waivers)
    passed: dict[int, bytes] = {}
    for edge, data in uploads.items():
        try:
            msg = decode(data)
            if msg.kind != "upload":
                raise MessageError(f"expected an 'upload' message, got {msg.kind!r}")
            digest = weights_sha256(weights_bytes(model_of(msg, image_size, channels)))
            out.identity[edge] = check_identity(edge, msg, digest, expected=expected, keys=keys, waivers=waivers)
            passed[edge] = data
        except (BaimError, ValueError, TypeError, KeyError) as exc:
            out.rejected.append({"edge": edge, "reason": str(exc)})
    skip = frozenset(RULES) if waivers.skip_screening else frozenset()
    screened = screen_uploads(
        passed,
        task_names,
        common,
        image_size,
        channels,
        assigned=assigned,
        max_samples=max_samples,
        thresholds=thresholds,
        skip=skip,
        earlier=earlier,
    )
    for name in ("accepted", "quarantined", "scores", "features", "seconds"):
        setattr(out, name, getattr(screened, name))
    out.rejected += screened.rejected
    return out
