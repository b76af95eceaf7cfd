"""Validation of names that become keys or path components, and of experiment hashes."""

from __future__ import annotations

import re

from weightslab.errors import InvalidNameError

_HASH_RE = re.compile(r"^[0-9a-f]{16}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-][A-Za-z0-9_.\- ]*$")


def validate_name(name: object, what: str = "name") -> str:
    """Return ``name`` if it is safe as a key and as a path component, else raise InvalidNameError."""
    if not isinstance(name, str):
        raise InvalidNameError(name, f"{what} must be a str, got {type(name).__name__}")
    if not name:
        raise InvalidNameError(name, f"{what} is empty")
    if "\x00" in name:
        raise InvalidNameError(name, f"{what} contains a NUL byte")
    if "/" in name or "\\" in name:
        raise InvalidNameError(name, f"{what} contains a path separator")
    if ".." in name:
        raise InvalidNameError(name, f"{what} contains '..'")
    if not _NAME_RE.match(name):
        raise InvalidNameError(name, f"{what} contains characters outside [A-Za-z0-9_.- ]")
    return name


def validate_hash(exp_hash: object) -> str:
    """Return ``exp_hash`` if it is 16 lowercase hex digits, else raise InvalidNameError."""
    if not isinstance(exp_hash, str) or not _HASH_RE.match(exp_hash):
        raise InvalidNameError(exp_hash, "an experiment hash is 16 lowercase hex digits")
    return exp_hash


def is_hash(name: str) -> bool:
    return bool(_HASH_RE.match(name))
