"""Small things every command's output shares."""

from __future__ import annotations

from rich.console import Console

__all__ = ["age", "stdout"]


def stdout() -> Console:
    """Standard output; wide when it is a file or pipe, so no figure is ever folded there."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    return console


def age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
