"""Resume: weightslab resume() against torch.load + load_state_dict, on the same state.

    python benchmarks/bench_resume.py [--layers 10 --width 3072 --repeats 5]

Both files are written once (and so sit in the page cache, as they would after a recent save).
Peers, interleaved in each round, each restoring into the same live model and optimizer:
weightslab `resume()` (finds the active experiment in the journal, verifies size and xxh3-128 of the
step file, loads it with weights_only and mmap, restores model, optimizer, hyperparameters and RNG);
`torch.load(weights_only=True)` + `load_state_dict`; and the same with `mmap=True`.
"""

from __future__ import annotations

import warnings

import torch

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
    with scratch(args.dir) as d:
        ledger = ledger_for(model, opt)
        writer = AutomaticCheckpointSystem(
            root_log_dir=d / "wl", checkpoint_frequency=1, async_save=False, ledger=ledger
        )
        writer.checkpoint_on_step(1)
        writer.close()
        torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, d / "plain.pt")

        system = AutomaticCheckpointSystem(root_log_dir=d / "wl", checkpoint_frequency=1, ledger=ledger)

        def plain(mmap: bool) -> None:
            state = torch.load(d / "plain.pt", weights_only=True, mmap=mmap)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optim"])

        times: dict[str, list[float]] = {
            "weightslab resume()": [],
            "torch.load + load_state_dict": [],
            "torch.load(mmap) + load_state_dict": [],
        }
        for _ in range(args.repeats):
            times["weightslab resume()"].append(timed(system.resume))
            times["torch.load + load_state_dict"].append(timed(lambda: plain(False)))
            times["torch.load(mmap) + load_state_dict"].append(timed(lambda: plain(True)))
        system.close()

    med = {k: median(v) for k, v in times.items()}
    base = med["torch.load + load_state_dict"]
    print(f"state {nbytes / 1e9:.2f} GB; {args.repeats} rounds; {machine()}")
    print_table(
        "resume (median seconds; ratio: time relative to torch.load + load_state_dict, lower is faster)",
        ["peer", "median (s)", "vs torch.load + load_state_dict", "all rounds"],
        [
            [k, f"{med[k]:.3f}", f"{med[k] / base:.2f}x", ", ".join(f"{t:.3f}" for t in v)]
            for k, v in times.items()
        ],
    )


if __name__ == "__main__":
    main()
