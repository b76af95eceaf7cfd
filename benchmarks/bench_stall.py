"""Stall: how long one save blocks the training thread.

    python benchmarks/bench_stall.py [--layers 10 --width 3072 --repeats 5]

Peers, interleaved in each round: weightslab (async_save=True), torch.distributed.checkpoint.async_save,
plain torch.save (blocks for the whole write), and the floor: a bare copy of the same tensors into
preallocated CPU buffers. The first save of weightslab and of dcp allocates their staging buffers and
is reported apart; the steady-state figure is the median of the later saves. Between saves each peer's
background write is allowed to finish outside the timed region.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed.checkpoint as dcp

from weightslab.components import AutomaticCheckpointSystem

from _common import (
    build_state,
    ledger_for,
    machine,
    median,
    parse_args,
    print_table,
    scratch,
    state_bytes,
    timed,
)

warnings.filterwarnings("ignore")


def main() -> None:
    args = parse_args(__doc__ or "")
    model, opt = build_state(args.layers, args.width)
    nbytes = state_bytes(model, opt)
    tensors = list(model.state_dict().values()) + [
        t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)
    ]
    with scratch(args.dir) as d:
        ledger = ledger_for(model, opt)
        system = AutomaticCheckpointSystem(
            root_log_dir=d / "wl", checkpoint_frequency=1, ledger=ledger, keep_last=1
        )
        floor_bufs = [torch.empty_like(t) for t in tensors]

        def bare_copy() -> None:
            for b, t in zip(floor_bufs, tensors, strict=True):
                b.copy_(t)

        state = {"model": model.state_dict(), "optim": opt.state_dict()}
        times: dict[str, list[float]] = {
            "weightslab": [],
            "dcp.async_save": [],
            "torch.save": [],
            "bare copy": [],
        }
        first: dict[str, float] = {}
        step = 0
        for r in range(args.repeats + 1):
            step += 1
            t = timed(lambda: system.checkpoint_on_step(step))
            system.flush()
            (first.setdefault("weightslab", t) if r == 0 else times["weightslab"].append(t))
            fut: list[object] = []
            t = timed(lambda: fut.append(dcp.async_save(state, checkpoint_id=str(d / f"dcp{r}"))))
            fut[0].result()  # type: ignore[attr-defined]
            (first.setdefault("dcp.async_save", t) if r == 0 else times["dcp.async_save"].append(t))
            t = timed(lambda: torch.save(state, d / f"plain{r}.pt"))
            (d / f"plain{r}.pt").unlink()
            (first.setdefault("torch.save", t) if r == 0 else times["torch.save"].append(t))
            t = timed(bare_copy)
            (first.setdefault("bare copy", t) if r == 0 else times["bare copy"].append(t))
        system.close()

    med = {k: median(v) for k, v in times.items()}
    rows = [
        [
            k,
            f"{first[k]:.3f}",
            f"{med[k]:.3f}",
            f"{med[k] / med['dcp.async_save']:.2f}x",
            f"{med[k] / med['bare copy']:.2f}x",
        ]
        for k in times
    ]
    print(f"state {nbytes / 1e9:.2f} GB; {args.repeats} rounds after a first one; {machine()}")
    print_table(
        "stall: seconds the training thread is blocked by one save (median of rounds 2..N)",
        ["peer", "first save (s)", "steady median (s)", "vs dcp.async_save", "vs bare copy"],
        rows,
    )


if __name__ == "__main__":
    main()
