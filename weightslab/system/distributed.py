"""The ranks of a ``torch.distributed`` job, as the checkpoint system sees them.

Every rank runs the same script. Rank 0 writes the root; the others write nothing and take part in
the saves that need them (a sharded DCP save, the exchange of RNG states). Before each save the ranks
agree on what it is: the step, the trigger and the experiment hash. A rank that sees another value
raises :class:`~weightslab.errors.DistributedError` naming the ranks that differ, and a rank that
never reaches the save (another step counter, an exception) is named after ``timeout`` seconds, so a
divergence is an error, not a hang.

The exchanges go through the job's key-value store (the one ``init_process_group`` rendezvoused on),
not through collectives: a store wait has a timeout and tells which keys are missing, and it never
interleaves with the training's own collectives on the default process group. Values are serialised
with ``torch.save`` and read back with ``weights_only=True``. Each :class:`Channel` has its own
prefix and round counter, so the training thread and the writer thread can exchange at once.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import threading
from datetime import timedelta
from typing import Any

import torch

from weightslab.errors import DistributedError

log = logging.getLogger("weightslab")


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def active() -> bool:
    """Whether this process is one rank of an initialised process group."""
    if not torch.distributed.is_available():
        return False
    return bool(torch.distributed.is_initialized())


def _encode(value: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(value, buf)
    return buf.getvalue()


def _decode(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=True)


class Channel:
    """One ordered sequence of exchanges between all ranks, under its own store prefix."""

    def __init__(self, group: Group, name: str) -> None:
        self._group = group
        self._name = f"{group.generation}/{name}"
        self._round = 0
        self._lock = threading.Lock()

    def exchange(self, what: str, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order (``[value]`` in one process).

        Raises DistributedError naming the ranks that did not arrive within the group's timeout, or
        that exchanged something else (``what`` differs: they are at another point of the run).
        """
        g = self._group
        if g.world == 1 or g.store is None:
            return [value]
        with self._lock:
            n = self._round
            self._round += 1
            prefix = f"weightslab/{self._name}/{n}"
            store = g.store
            store.set(f"{prefix}/{g.rank}", _encode((what, value)))
            keys = [f"{prefix}/{r}" for r in range(g.world)]
            try:
                store.wait(keys, timedelta(seconds=g.timeout))
            except Exception:
                missing = [r for r, k in enumerate(keys) if not store.check([k])]
                raise DistributedError(
                    f"rank {g.rank}: ranks {missing} did not reach {what} within {g.timeout:g} s; every rank "
                    "must make the same checkpoint calls with the same steps (raise distributed_timeout "
                    "if they are only slow)",
                    ranks=missing,
                ) from None
            got = [_decode(store.get(k)) for k in keys]
            if n > 0:  # every rank has read the previous round before writing this one
                _delete(store, f"weightslab/{self._name}/{n - 1}/{g.rank}")
        other = [r for r, (w, _) in enumerate(got) if w != what]
        if other:
            seen = {r: got[r][0] for r in other}
            raise DistributedError(
                f"rank {g.rank} is at {what} but ranks {other} are elsewhere ({seen}); every rank must make "
                "the same checkpoint calls with the same steps",
                ranks=other,
            )
        return [v for _, v in got]

    def agree(self, what: str, value: Any) -> None:
        """Raise DistributedError on every rank when some rank's ``value`` differs from rank 0's."""
        values = self.exchange(what, value)
        differ = [r for r, v in enumerate(values) if v != values[0]]
        if differ:
            shown = {0: values[0], **{r: values[r] for r in differ}}
            raise DistributedError(
                f"the ranks disagree about {what}: ranks {differ} differ from rank 0 ({shown}); they must "
                "train the same model with the same hyperparameters and call checkpoint_on_step with the "
                "same steps",
                ranks=differ,
            )

    def barrier(self, what: str) -> None:
        """Wait until every rank got here (with the timeout and the names of :meth:`exchange`)."""
        self.exchange(what, None)


def _delete(store: Any, key: str) -> None:
    with contextlib.suppress(Exception):  # a store without deletes keeps a few bytes per save
        store.delete_key(key)


_generations = itertools.count()


class Group:
    """This process's rank in the job (rank 0 of 1 without a process group).

    ``generation`` counts the groups this process made: every rank builds its checkpoint systems in
    the same order, so the n-th system of each rank exchanges under the same prefix, and never reads
    what an earlier (or another live) system left in the store.
    """

    def __init__(self, *, timeout: float = 600.0) -> None:
        self.timeout = timeout
        self.active = active()
        dist = _dist() if self.active else None
        self.rank = int(dist.get_rank()) if dist is not None else 0
        self.world = int(dist.get_world_size()) if dist is not None else 1
        self.generation = next(_generations) if self.world > 1 else 0
        self.store: Any = None
        if dist is not None and self.world > 1:
            # The store the process group rendezvoused on. torch has no public accessor for it; the
            # private one has been stable since torch 1.x and is what torchelastic uses.
            from torch.distributed import distributed_c10d

            self.store = distributed_c10d._get_default_store()
        self.steps = Channel(self, "steps")
        self.writes = Channel(self, "writes")
        # DCP's saves run collectives; in the background writer they must not share a group with the
        # training's collectives, and CPU staging needs gloo whatever the training backend is. Made
        # here (a collective) because every rank builds its checkpoint system at the same point.
        self.save_group: Any = dist.new_group(backend="gloo") if dist is not None and self.world > 1 else None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world}" if self.distributed else "one process"
