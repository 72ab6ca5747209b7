"""Names that become folder names and URL path segments (task names in the registry and in
toolboxes). One rule everywhere, so a name that one side accepts never escapes a folder or
changes a URL on the other: letters, digits, '_', '.', '-', starting with a letter or digit,
at most 128 characters."""

from __future__ import annotations

import re

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
