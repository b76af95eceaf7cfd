"""The writer lock of a root on an object store: a lease object, renewed by a heartbeat.

There is no ``flock`` on S3 and no kernel to drop a lock when its holder dies, so the lock is an
object (``logs/writer.lock``) holding JSON ``{holder, host, pid, machine, pid_start, token, started,
renewed, expires, ttl, seq}``, and it is kept alive by rewriting it.

Taking it
    :meth:`S3Lease.acquire` creates the object with ``If-None-Match: *``. If one is there, it is taken
    over, with ``If-Match`` on the ETag just read (of two takers exactly one wins), only when

    * its holder is on this machine (same boot id and pid namespace, not only the same host name:
      containers share those) and that pid is gone, a zombie, or another process now (its start
      time differs): **at once**, or
    * it was not renewed for longer than its ``ttl``, as the *server* sees it: the server's clock in
      the Date header of the GET minus the object's LastModified, both set by the server, so clock
      skew between the writers' hosts does not matter. Both have one-second resolution, so the test
      is ``age > ttl + 1 s``.

    Otherwise RootLockedError names the holder ("pid 1234 on host-a"), the lease and when it would
    expire.

Keeping it
    A daemon thread rewrites the lease every ``renew_every`` seconds with ``If-Match`` on the ETag of
    its last write. If that fails because the ETag changed, another writer took the lease over (this
    process was stalled past the TTL): the lease is *lost*, :attr:`S3Lease.held` turns False and
    ``on_lost`` is called. :attr:`held` is also False while the last confirmed renewal is older than
    the TTL (a network outage), and comes back when a renewal succeeds again (the ETag still being
    ours proves nobody took over). Fencing beyond that is the manifest's compare-and-swap: a stale
    writer's ``put_if_match`` on the manifest ETag it read fails once its successor has committed.

Times (defaults ``ttl=20 s``, ``renew_every=5 s``)
    After a SIGKILL, a writer on the same machine takes the lease over at once; on another machine
    after at most ``ttl + 2 s`` from the holder's last renewal (22 s by default, well within 60 s).
    A clean exit deletes the lease (``If-Match`` on its own ETag, never a successor's), at ``release``
    or at interpreter exit. A ``fork()`` child disowns its copy: it neither renews nor deletes it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightslab.errors import RootLockedError

if TYPE_CHECKING:
    from weightslab.storage.s3 import S3Storage
    from weightslab.storage.s3_client import S3Object

log = logging.getLogger("weightslab")

DEFAULT_LEASE_TTL_S = 20.0
DEFAULT_LEASE_RENEW_S = 5.0
CLOCK_RESOLUTION_S = 1.0  # LastModified and Date have whole seconds
LEASE_FORMAT = "weightslab.s3-lease/1"

_HELD: weakref.WeakSet[S3Lease] = weakref.WeakSet()


def _disown_in_child() -> None:
    for lease in list(_HELD):
        lease._disown()
    _HELD.clear()


def _release_at_exit() -> None:
    for lease in list(_HELD):
        with contextlib.suppress(Exception):
            lease.release()


os.register_at_fork(after_in_child=_disown_in_child)
atexit.register(_release_at_exit)


def machine_id() -> str:
    """What tells two processes apart when they may share a host name: boot id and pid namespace."""
    parts = []
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
    except OSError:
        parts.append(socket.gethostname())
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return ":".join(parts)


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, from /proc), None when unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def process_gone(pid: int, started: str | None) -> bool:
    """Whether ``pid`` on this machine is dead, a zombie, or reused by a process started at another time."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields and fields[0] in ("Z", "X"):
        return True
    return started is not None and len(fields) > 19 and fields[19] != started


class S3Lease:
    """The writer lease of one root (a :class:`~weightslab.storage.base.WriterLock`); see the module docstring.

    ``host`` and ``pid`` may be set to describe the holder otherwise (tests use that to look like
    another machine); ``on_lost`` is called from the heartbeat thread when another writer took over.
    """

    def __init__(
        self,
        storage: S3Storage,
        path: Path,
        root: Path,
        *,
        ttl: float = DEFAULT_LEASE_TTL_S,
        renew_every: float = DEFAULT_LEASE_RENEW_S,
        host: str | None = None,
        machine: str | None = None,
        on_lost: Callable[[S3Lease], None] | None = None,
    ) -> None:
        self.check_times(ttl, renew_every)
        self.storage = storage
        self.path = path
        self.root = root
        self.ttl = float(ttl)
        self.renew_every = float(renew_every)
        self.host = host or socket.gethostname()
        self.machine = machine or machine_id()
        self.on_lost = on_lost
        self.lost = False
        self._etag: str | None = None
        self._body: dict[str, Any] = {}
        self._confirmed_at = 0.0  # monotonic time at which the last successful write was sent
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def check_times(ttl: float, renew_every: float) -> None:
        """ValueError unless ``0 < 2 * renew_every <= ttl`` and the TTL is above the clocks' resolution."""
        if not ttl >= 2 * CLOCK_RESOLUTION_S:
            raise ValueError(f"lease ttl must be at least {2 * CLOCK_RESOLUTION_S:g} s, got {ttl}")
        if not 0 < renew_every <= ttl / 2:
            raise ValueError(
                f"lease renew_every must be positive and at most half the ttl ({ttl / 2:g} s), got {renew_every}"
            )

    # -- the WriterLock protocol -------------------------------------------------------------------
    @property
    def held(self) -> bool:
        return self._etag is not None and not self.lost and time.monotonic() - self._confirmed_at < self.ttl

    def acquire(self) -> None:
        """Create the lease, or take over a dead or expired one; RootLockedError naming a live holder."""
        root_url = self.storage.url_for(self.root)
        if self._etag is not None and not self.lost:
            raise RootLockedError(
                root_url, f"{self._describe_self()} (this process, through another manager)"
            )
        for _attempt in range(8):
            body = self._new_body()
            sent = time.monotonic()
            etag = self.storage.put_if_match(self.path, self._encode(body), None)
            if etag is not None:
                self._took(etag, body, sent)
                return
            try:
                current = self.storage.get_object(self.path)
            except FileNotFoundError:
                continue  # released meanwhile: create it again
            info = _decode(current.data)
            why = self._takeover_reason(info, current)
            if why is None:
                raise RootLockedError(root_url, self._describe_holder(info, current))
            sent = time.monotonic()
            etag = self.storage.put_if_match(self.path, self._encode(body), current.etag)
            if etag is not None:
                log.warning(
                    "took over the writer lease of %s from %s: %s",
                    root_url,
                    info.get("holder", "an unknown holder"),
                    why,
                )
                self._took(etag, body, sent)
                return
            # another writer changed it first: look again
        raise RootLockedError(root_url, "other writers racing for its lease (try again)")

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours (a no-op when not held)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._mutex:
            etag, self._etag = self._etag, None
        _HELD.discard(self)
        if etag is None or self.lost:
            return
        try:
            self.storage.remove_if_match(self.path, etag)
        except OSError as exc:
            log.warning("could not delete the writer lease %s (it expires by itself): %s", self.url, exc)

    def held_elsewhere(self) -> bool:
        """Whether another live writer holds the lease now."""
        try:
            current = self.storage.get_object(self.path)
        except FileNotFoundError:
            return False
        if self._etag is not None and current.etag == self._etag:
            return False
        return self._takeover_reason(_decode(current.data), current) is None

    # -- details -----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.storage.url_for(self.path)

    def holder(self) -> dict[str, Any] | None:
        """The lease as it is stored now (None when there is none), for ``weightslab status``-like reports."""
        try:
            return _decode(self.storage.get_object(self.path).data)
        except FileNotFoundError:
            return None

    def _describe_self(self) -> str:
        return f"pid {os.getpid()} on {self.host}"

    def _new_body(self) -> dict[str, Any]:
        now = time.time()
        pid = os.getpid()
        return {
            "format": LEASE_FORMAT,
            "holder": f"pid {pid} on {self.host}",
            "host": self.host,
            "pid": pid,
            "machine": self.machine,
            "pid_start": process_start(pid),
            "token": uuid.uuid4().hex,
            "started": now,
            "renewed": now,
            "expires": now + self.ttl,
            "ttl": self.ttl,
            "seq": 0,
        }

    @staticmethod
    def _encode(body: dict[str, Any]) -> bytes:
        return (json.dumps(body, sort_keys=True) + "\n").encode()

    def _took(self, etag: str, body: dict[str, Any], sent: float) -> None:
        with self._mutex:
            self._etag, self._body, self._confirmed_at = etag, body, sent
            self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(self._stop,), name=f"weightslab-lease {self.url}", daemon=True
        )
        _HELD.add(self)
        self._thread.start()

    def _takeover_reason(self, info: dict[str, Any], current: S3Object) -> str | None:
        """Why the lease in ``current`` may be taken over now, None while its holder is alive."""
        pid = info.get("pid")
        if isinstance(pid, int) and info.get("machine") == self.machine:
            started = info.get("pid_start")
            if pid == os.getpid():
                if started is not None and started != process_start(pid):
                    return f"its holder was an earlier process with this pid ({pid}), which is gone"
            elif process_gone(pid, started):
                return f"its holder, pid {pid} on this machine, is gone"
        age = self._age(current)
        ttl = _number(info.get("ttl"), self.ttl)
        if age > ttl + CLOCK_RESOLUTION_S:
            return f"it was last renewed {age:.0f} s ago, over its {ttl:g} s TTL"
        return None

    @staticmethod
    def _age(current: S3Object) -> float:
        now = current.server_time if current.server_time is not None else time.time()
        return now - current.last_modified

    def _describe_holder(self, info: dict[str, Any], current: S3Object) -> str:
        holder = str(info.get("holder") or "a writer whose lease cannot be read")
        age = self._age(current)
        ttl = _number(info.get("ttl"), self.ttl)
        left = max(0.0, ttl + CLOCK_RESOLUTION_S - age)
        return f"{holder} (lease {self.url}, renewed {age:.0f} s ago, expires in {left:.0f} s unless renewed)"

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(self.renew_every):
            try:
                if not self._renew():
                    return
            except Exception as exc:  # a network error: try again at the next beat
                log.warning("renewing the writer lease %s failed (will retry): %s", self.url, exc)

    def _renew(self) -> bool:
        """Rewrite the lease on its ETag; False when it was lost (another writer took it over)."""
        with self._mutex:
            etag = self._etag
            if etag is None:
                return False
            body = dict(self._body)
        now = time.time()
        body.update(renewed=now, expires=now + self.ttl, seq=int(body.get("seq", 0)) + 1)
        sent = time.monotonic()
        new = self.storage.put_if_match(self.path, self._encode(body), etag)
        with self._mutex:
            if self._etag != etag:  # released meanwhile
                if new is not None:
                    with contextlib.suppress(OSError):
                        self.storage.remove_if_match(self.path, new)
                return False
            if new is None:
                self.lost = True
                self._etag = None
            else:
                self._etag, self._body, self._confirmed_at = new, body, sent
                return True
        _HELD.discard(self)
        log.error(
            "the writer lease %s was taken over by another writer (this process stalled past its %g s TTL); "
            "this process must stop writing to %s",
            self.url,
            self.ttl,
            self.storage.url_for(self.root),
        )
        if self.on_lost is not None:
            with contextlib.suppress(Exception):
                self.on_lost(self)
        return False

    def _disown(self) -> None:
        """In a fork child: forget the lease without touching it (the parent still holds it)."""
        self._etag = None
        self._thread = None
        self._stop = threading.Event()
        self._mutex = threading.Lock()  # the parent's heartbeat may have held it at the fork


def _decode(data: bytes) -> dict[str, Any]:
    try:
        info = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def _number(value: Any, default: float) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return default


__all__ = [
    "DEFAULT_LEASE_RENEW_S",
    "DEFAULT_LEASE_TTL_S",
    "S3Lease",
    "machine_id",
    "process_gone",
    "process_start",
]
