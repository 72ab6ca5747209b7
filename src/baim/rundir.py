"""A run directory that remembers which phases finished, so a killed run resumes.

Each finished phase leaves ``state/<phase>.json`` (written atomically, last) holding its
result and its wall time. Rerunning the same command skips those phases and reuses their
results. A rerun with a different configuration is refused rather than silently mixing two
runs in one folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .atomic import write_json
from .errors import RunConfigMismatch


class RunDir:
    def __init__(self, root: str | Path, config: dict):
        self.root = Path(root)
        self.state = self.root / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        cfg_path = self.root / "config.json"
        if cfg_path.is_file():
            old = json.loads(cfg_path.read_text())
            if old != config:
                diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
                raise RunConfigMismatch(
                    f"{self.root} holds a run with a different configuration (differs in {diff}); "
                    "use another --out folder, or delete this one to start over"
                )
        else:
            write_json(cfg_path, config)
        self.config = config

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def done(self, phase: str) -> bool:
        return (self.state / f"{phase}.json").is_file()

    def phase(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` unless ``name`` already finished; return its (JSON) result either way."""
        marker = self.state / f"{name}.json"
        if marker.is_file():
            return json.loads(marker.read_text())["result"]
        t0 = time.perf_counter()
        result = fn()
        write_json(marker, {"phase": name, "seconds": round(time.perf_counter() - t0, 3), "result": result})
        return result

    def phase_seconds(self) -> dict[str, float]:
        out = {}
        for p in sorted(self.state.glob("*.json")):
            out[p.stem] = json.loads(p.read_text())["seconds"]
        return out
