"""Path checks shared by the commands that create folders (datasets, run folders, caches, reports)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["file_in_the_way"]


def file_in_the_way(path: str | Path) -> Path | None:
    """The regular file that keeps the folder ``path`` from being created, if any.

    Walks from ``path`` up to its first existing ancestor (``path`` itself included): that one is in the way when it
    is not a folder. Nothing is created.

    Args:
        path: a folder to be created (or reused).

    Returns:
        ``path`` or the nearest existing parent when it is a file; ``None`` when the nearest existing one is a
        folder (or nothing exists).

    Examples:
        >>> import pathlib, tempfile
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
        >>> _ = file.write_text("")
        >>> file_in_the_way(file / "runs" / "a") == file, file_in_the_way(file.parent / "runs")
        (True, None)
    """
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists():
            return None if folder.is_dir() else folder
    return None
