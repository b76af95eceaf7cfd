"""What an S3 error was: the error code and HTTP status behind the exceptions s3fs raises.

s3fs translates botocore's ClientError into Python exceptions (FileNotFoundError, PermissionError,
OSError, ...) and chains the original; the helpers here walk that chain back to the S3 answer, so the
backend can tell a refused condition (412) from a concurrent conditional write (409) from anything
else, and turn whatever is left into an OSError for the layers above.
"""

from __future__ import annotations

import errno


def error_code(exc: BaseException) -> tuple[str, int]:
    """The S3 error code and HTTP status behind an exception s3fs translated (or ("", 0))."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        response = getattr(cur, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            return code, status
        cur = cur.__cause__ or cur.__context__
    return "", 0


def precondition_failed(exc: BaseException) -> bool:
    """Whether a conditional request was refused because its condition did not hold (HTTP 412)."""
    code, status = error_code(exc)
    return code == "PreconditionFailed" or status == 412


def conditional_conflict(exc: BaseException) -> bool:
    """AWS's 409 ConditionalRequestConflict: a concurrent conditional write; the request may be retried."""
    code, status = error_code(exc)
    return code in ("ConditionalRequestConflict", "OperationAborted") or status == 409


def as_oserror(exc: BaseException, what: str) -> OSError:
    """``exc`` itself when it is an OSError, else an OSError(EIO) saying ``what`` failed, caused by it."""
    if isinstance(exc, OSError):
        return exc
    err = OSError(errno.EIO, f"{what}: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


__all__ = ["as_oserror", "conditional_conflict", "error_code", "precondition_failed"]
