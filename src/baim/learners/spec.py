"""The JSON spec that fully defines a learner's architecture (DESIGN.md §2).

A spec plus a safetensors state dict is everything an edge uploads: no code, no pickle. The
capability tiers differ in depth, width and latent size, so fused learners are really
heterogeneous.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import SpecError

FAMILIES = ("conv_vae",)
SPEC_VERSION = 1


@dataclass(frozen=True)
class LearnerSpec:
    image_size: int
    channels: int
    stage_widths: tuple[int, ...]
    latent_dim: int
    family: str = "conv_vae"
    tier: str = "custom"
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage_widths", tuple(self.stage_widths))
        self.validate()

    @property
    def num_stages(self) -> int:
        return len(self.stage_widths)

    @property
    def bottleneck_size(self) -> int:
        """Spatial side of the last encoder stage's output (each stage halves it)."""
        return self.image_size >> self.num_stages

    def validate(self) -> None:
        def bad(field: str, why: str) -> SpecError:
            return SpecError(f"learner spec field {field!r}: {why}")

        if self.version != SPEC_VERSION:
            raise bad("version", f"{self.version!r} is not supported (this baim reads {SPEC_VERSION})")
        if self.family not in FAMILIES:
            raise bad("family", f"{self.family!r} is unknown; choose one of {FAMILIES}")
        if not isinstance(self.channels, int) or self.channels not in (1, 3):
            raise bad("channels", f"{self.channels!r}; must be 1 (grey) or 3 (RGB)")
        if not isinstance(self.image_size, int) or self.image_size < 4 or self.image_size & (self.image_size - 1):
            raise bad("image_size", f"{self.image_size!r}; must be a power of two ≥ 4")
        if not self.stage_widths:
            raise bad("stage_widths", "empty; a learner needs at least one stage")
        if any(not isinstance(w, int) or isinstance(w, bool) or w < 1 or w > 4096 for w in self.stage_widths):
            raise bad("stage_widths", f"{list(self.stage_widths)}; every width must be an int in 1..4096")
        if self.image_size >> self.num_stages < 1:
            raise bad(
                "stage_widths",
                f"{self.num_stages} stages halve {self.image_size} px below 1 px; "
                f"use at most {self.image_size.bit_length() - 1} stages",
            )
        if (
            not isinstance(self.latent_dim, int)
            or isinstance(self.latent_dim, bool)
            or not 1 <= self.latent_dim <= 4096
        ):
            raise bad("latent_dim", f"{self.latent_dim!r}; must be an int in 1..4096")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stage_widths"] = list(self.stage_widths)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LearnerSpec:
        if not isinstance(d, dict):
            raise SpecError(f"a learner spec must be a JSON object, got {type(d).__name__}")
        known = {"image_size", "channels", "stage_widths", "latent_dim", "family", "tier", "version"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SpecError(f"learner spec has unknown fields {unknown}; allowed: {sorted(known)}")
        missing = sorted({"image_size", "channels", "stage_widths", "latent_dim"} - set(d))
        if missing:
            raise SpecError(f"learner spec is missing required fields {missing}")
        if not isinstance(d["stage_widths"], (list, tuple)):
            raise SpecError("learner spec field 'stage_widths': must be a list of ints")
        return cls(**d)


TIERS: dict[str, tuple[tuple[int, ...], int]] = {
    "small": ((16, 32, 64), 32),
    "medium": ((32, 64, 128), 64),
    "large": ((32, 64, 128, 256), 128),
}


def tier_spec(tier: str, image_size: int = 32, channels: int = 1) -> LearnerSpec:
    """The spec of a capability tier for the given image geometry."""
    if tier not in TIERS:
        raise SpecError(f"unknown tier {tier!r}; choose one of {sorted(TIERS)}")
    widths, latent = TIERS[tier]
    return LearnerSpec(image_size=image_size, channels=channels, stage_widths=widths, latent_dim=latent, tier=tier)
