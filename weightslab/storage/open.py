"""The backend a root's location names: ``s3://bucket/prefix`` an object store, anything else a folder.

``storage_options`` follow the fsspec convention (``endpoint_url``, ``key``, ``secret``,
``client_kwargs``); without them an object store uses the standard AWS environment variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from weightslab.errors import ConfigError
from weightslab.storage.base import Storage
from weightslab.storage.local import LocalStorage

REMOTE_SCHEMES = ("s3://",)


def is_remote(root: str | os.PathLike[str]) -> bool:
    """Whether ``root`` names an object store (``s3://...``) rather than a folder."""
    return isinstance(root, str) and root.startswith(REMOTE_SCHEMES)


def open_storage(
    root: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    durable: bool = True,
) -> tuple[Path, Storage]:
    """The path the layers above use for ``root``, and the backend that holds it."""
    if is_remote(root):
        assert isinstance(root, str)
        try:
            from weightslab.storage.s3 import S3Storage
        except ImportError as exc:
            raise ConfigError(
                f"{root} is on S3, which needs s3fs: pip install 'weightslab[s3]' ({exc})"
            ) from exc
        s3 = S3Storage(root, storage_options, durable=durable)
        return s3.root, s3
    if storage_options:
        raise ConfigError(
            f"storage_options are for object-store roots (s3://...); {os.fspath(root)!r} is a local folder"
        )
    return Path(root).expanduser().absolute(), LocalStorage(durable=durable)


def display(storage: Storage, path: Path) -> str:
    """``path`` as the user wrote it: ``s3://bucket/key`` for an object store, the path otherwise."""
    url_for = getattr(storage, "url_for", None)
    return str(url_for(path)) if callable(url_for) else str(path)
