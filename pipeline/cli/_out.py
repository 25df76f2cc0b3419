"""Small things every command's output shares."""

from __future__ import annotations

import os

from rich.console import Console

__all__ = ["age", "alive", "stdout"]


def stdout() -> Console:
    """Standard output; wide when it is a file or pipe, so no figure is ever folded there."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    return console


def alive(pid: object) -> bool:
    """Whether process ``pid`` (another one than this) is still there."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
