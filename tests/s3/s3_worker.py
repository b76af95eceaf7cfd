"""A separate process for the S3 tests: a lease holder, or one racer of a conditional write.

``python s3_worker.py JSON``; the JSON says ``{"mode", "url", "options", "path", ...}``. It prints
``ready`` once connected, and racers then wait for a ``go`` line on stdin, so that every racer
starts its request at the same moment without any fixed sleep.

* ``hold``: take the writer lease (``ttl``, ``renew_every``, optional ``host`` / ``machine``), print
  ``held``, then keep renewing until killed (or stdin closes, then release and exit).
* ``create``: ``create_exclusive(path, body)``; prints ``won`` or ``lost``.
* ``cas``: ``put_if_match(path, body, etag)``; prints ``won`` or ``lost``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    spec = json.loads(sys.argv[1])
    from weightslab.storage.s3 import S3Storage
    from weightslab.storage.s3_lease import S3Lease

    store = S3Storage(spec["url"], spec.get("options") or None)
    path = store.root / spec["path"]
    store.exists(store.root)  # connect (credentials, first request) before saying ready
    mode = spec["mode"]
    if mode == "hold":
        lease = S3Lease(
            store,
            path,
            store.root,
            ttl=spec.get("ttl", 20.0),
            renew_every=spec.get("renew_every", 5.0),
            host=spec.get("host"),
            machine=spec.get("machine"),
        )
        lease.acquire()
        print("held", flush=True)
        sys.stdin.read()  # until the parent closes stdin (or kills this process)
        lease.release()
        print("released", flush=True)
        return
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    body = spec["body"].encode()
    if mode == "create":
        ok = store.create_exclusive(path, body)
    elif mode == "cas":
        ok = store.put_if_match(path, body, spec["etag"]) is not None
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print("won" if ok else "lost", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main()
