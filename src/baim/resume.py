"""What a resumed run must notice before it picks up where it stopped.

A run's recorded phases hold only for the inputs it started on. :func:`fingerprint` records
them (every file of the data set's folder, by content, and the layout) when the layout is made;
:func:`check_inputs` refuses a resume on other inputs, naming what changed, since resuming
would mix results of two data sets (an edited image folder moves images between tasks).
:func:`reopen_local_failures` redoes the phases after an edge went missing for a reason of its
own machine (a full disk): freeing space and rerunning then brings the edge back, where
otherwise the recorded phase would keep it missing for good.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import RunConfigMismatch
from .rundir import RunDir

LOCAL_FAILURE = "no space left"  # how baim.errors.DiskFull's message starts
SHOWN = 5  # changed files named in the message


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_folder(dataset: str, data_dir: str | None) -> Path:
    """The folder a data set is read from (Fashion-MNIST has a default one)."""
    if data_dir is None and dataset == "fashion-mnist":
        from .data.fashion_mnist import DEFAULT_DIR

        return DEFAULT_DIR
    return Path(str(data_dir))


def fingerprint(dataset: str, data_dir: str | None, layout: Path) -> dict[str, Any]:
    """The run's inputs: sha256 of every file under the data set's folder and of the layout."""
    folder = data_folder(dataset, data_dir)
    files = (
        {str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
        if folder.is_dir()
        else {}
    )
    return {"data_dir": str(folder.resolve()), "files": files, "layout": _sha256(layout)}


def check_inputs(recorded: dict[str, Any], now: dict[str, Any], run: Path) -> None:
    """Raise RunConfigMismatch naming what differs between the inputs a run started on and now."""
    was, isnow = recorded["files"], now["files"]
    changes = [f"{name} changed" for name in sorted(set(was) & set(isnow)) if was[name] != isnow[name]]
    changes += [f"{name} removed" for name in sorted(set(was) - set(isnow))]
    changes += [f"{name} added" for name in sorted(set(isnow) - set(was))]
    if recorded["data_dir"] != now["data_dir"]:
        changes.insert(0, f"the data folder is now {now['data_dir']}, was {recorded['data_dir']}")
    if recorded["layout"] != now["layout"]:
        changes.insert(0, "layout.json was edited")
    if changes:
        more = f" and {len(changes) - SHOWN} more" if len(changes) > SHOWN else ""
        raise RunConfigMismatch(
            f"{run} started on other inputs than it would resume on ({'; '.join(changes[:SHOWN])}{more} in "
            f"{now['data_dir']}): its recorded phases would mix two data sets. Restore the inputs, or start a "
            "new run in another folder"
        )


def reopen_local_failures(rd: RunDir) -> list[str]:
    """Forget the first recorded phase that left an edge missing for a local reason (a full
    disk) and every phase recorded after it, so that this rerun redoes them; returns their names."""
    states = sorted(rd.files.states().items(), key=lambda kv: kv[1].stat().st_mtime_ns)
    for i, (_, path) in enumerate(states):
        result = json.loads(path.read_text()).get("result")
        missing = result.get("missing") if isinstance(result, dict) else None
        if isinstance(missing, list) and any(LOCAL_FAILURE in str(m.get("reason", "")) for m in missing):
            for _, later in states[i:]:
                later.unlink()
            return [name for name, _ in states[i:]]
    return []
