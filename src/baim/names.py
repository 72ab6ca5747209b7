"""Names that become folder names and URL path segments (task names in the registry and in
toolboxes). One rule everywhere, so a name that one side accepts never escapes a folder or
changes a URL on the other: letters, digits, '_', '.', '-', starting with a letter or digit,
at most 128 characters."""

from __future__ import annotations

import re
import unicodedata

from .errors import ConfigError

TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def is_task_name(name: object) -> bool:
    return isinstance(name, str) and TASK_NAME.fullmatch(name) is not None and ".." not in name


def check_task_name(name: object) -> str:
    if not is_task_name(name):
        raise ConfigError(
            f"task name {str(name)[:60]!r} is not usable as a folder or URL name: use 1-128 letters, digits, "
            "'_', '.' or '-', starting with a letter or digit"
        )
    return str(name)


def suggest_task_name(name: str) -> str:
    """A usable name close to ``name`` (accents dropped, other characters to '_'), to propose
    in the error; never used silently, since a renamed task would not be the one the user meant."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", ascii_name).replace("..", "_").lstrip("_.-")[:128]
    return slug or "task"


def check_task_names(names: list[str], where: str) -> None:
    """Refuse, before anything is trained, task names that cannot name a folder or a registry
    entry; the error lists each with a usable name to rename it to."""
    bad = [n for n in names if not is_task_name(n)]
    if bad:
        renames = ", ".join(f"{n!r} → {suggest_task_name(n)!r}" for n in bad)
        raise ConfigError(
            f"{where}: {len(bad)} task name(s) cannot name a folder or a registry entry (use 1-128 letters, "
            f"digits, '_', '.' or '-', starting with a letter or digit); rename them, e.g. {renames}"
        )
