"""Stamps of local files: what tells a reader that a file is still the one a cache was made from.

A stamp is ``[st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns]``. Replacing a file gives it a new
inode (the new file exists while the old one does) and a new change time; appending changes its size
and times; a copy to another disk or folder has another device or inode, and no copying tool can set
the change time. Standard library only: ``weightslab ls`` computes stamps before anything else of
weightslab is loaded.
"""

from __future__ import annotations

import os


def file_stamp(path: str) -> list[int] | None:
    """The stamp of ``path`` as it is now (symlinks followed); None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def stamps(folder: str, names: tuple[str, str | None]) -> list[list[int] | None] | None:
    """The stamps of the files ``names`` in ``folder`` (None for a name that is None or missing);
    None when the first, the one that must exist, is missing."""
    out = [None if name is None else file_stamp(os.path.join(folder, name)) for name in names]
    if out[0] is None or any(o is None for o, name in zip(out, names, strict=True) if name is not None):
        return None
    return out


__all__ = ["file_stamp", "stamps"]
