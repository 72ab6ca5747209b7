"""The JSON spec that fully defines a learner's architecture.

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
# Limits checked before any module is built, so that a hostile or mistyped spec is refused
# rather than allocated: images up to 1024 px, and at most 100 M numbers in a learner's state
# (400 MB of float32; the large tier at 32 px holds 1.3 M).
MAX_IMAGE_SIZE = 1024
MAX_STATE_ELEMENTS = 100_000_000


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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
        if not isinstance(self.tier, str) or len(self.tier) > 64:
            raise bad("tier", f"{self.tier!r}; must be a name of at most 64 characters")
        if not _is_int(self.channels) or self.channels not in (1, 3):
            raise bad("channels", f"{self.channels!r}; must be 1 (grey) or 3 (RGB)")
        if (
            not _is_int(self.image_size)
            or not 4 <= self.image_size <= MAX_IMAGE_SIZE
            or self.image_size & (self.image_size - 1)
        ):
            raise bad("image_size", f"{self.image_size!r}; must be a power of two in 4..{MAX_IMAGE_SIZE}")
        if not self.stage_widths:
            raise bad("stage_widths", "empty; a learner needs at least one stage")
        if any(not _is_int(w) or w < 1 or w > 4096 for w in self.stage_widths):
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
        n = self.state_elements()
        if n > MAX_STATE_ELEMENTS:
            raise SpecError(
                f"learner spec describes {n:,} weights, over the limit of {MAX_STATE_ELEMENTS:,}; "
                "use fewer or narrower stages, a smaller latent or smaller images"
            )

    def state_elements(self) -> int:
        """How many numbers the learner's state dict holds (parameters and BatchNorm buffers),
        computed from the spec alone: what building it would allocate."""
        w, c, d = list(self.stage_widths), self.channels, self.latent_dim
        flat = w[-1] * self.bottleneck_size**2

        def stage(cin: int, cout: int) -> int:  # 3×3 conv + bias, BatchNorm (2 params, 2 stats, 1 count)
            return cin * cout * 9 + cout + 4 * cout + 1

        n = sum(stage(a, b) for a, b in zip([c] + w[:-1], w))
        n += flat * 2 * d + 2 * d + d * flat + flat  # posterior head, latent-in map
        dec = w[::-1] + [w[0]]
        n += sum(stage(a, b) for a, b in zip(dec[:-1], dec[1:]))
        return n + w[0] * c * 9 + c  # image head

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
        if not isinstance(d["stage_widths"], (list, tuple)) or len(d["stage_widths"]) > 16:
            raise SpecError("learner spec field 'stage_widths': must be a list of at most 16 ints")
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
