"""One flat CPU allocation that holds every staged tensor of a snapshot.

Thousands of small buffers cost thousands of allocator calls, page faults spread over the heap and
memory that glibc may never hand back; one allocation is faulted once, reused as a whole and, when it
is dropped, unmapped at once. Each staged tensor is a view of it with its OWN storage of exactly its
bytes (made through numpy, which torch wraps without copying): ``torch.save`` writes a tensor's whole
storage, so views of one big shared storage would make every file hold the whole flat buffer, and
would write different bytes than a synchronous save of the live tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Slots start on a cache-line boundary: copies never straddle a line with a neighbour, and every
# element type is aligned.
_ALIGN = 64


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class StagingArena:
    """CPU tensors of the given shapes and dtypes, all carved out of one allocation.

    ``pinned`` allocates page-locked memory (for non-blocking copies from a CUDA device); it needs a
    working CUDA runtime. Zero-element tensors get their own empty tensors: they hold no bytes, and a
    zero-length view would share its address with the next slot.
    """

    def __init__(self, specs: Sequence[tuple[torch.Size, torch.dtype]], *, pinned: bool = False) -> None:
        self.shapes = [shape for shape, _ in specs]
        self.dtypes = [dtype for _, dtype in specs]
        self.pinned = pinned
        sizes = [shape.numel() * dtype.itemsize for shape, dtype in specs]
        total = sum(_aligned(n) for n in sizes)
        self.nbytes = total
        """Bytes allocated (the staged bytes plus at most 63 bytes of padding per tensor)."""
        self._base = torch.empty(total, dtype=torch.uint8, device="cpu", pin_memory=pinned)
        flat = self._base.numpy()  # shares the memory; every view below keeps it alive
        self.tensors: list[torch.Tensor] = []
        offset = 0
        for (shape, dtype), n in zip(specs, sizes, strict=True):
            if n == 0:
                self.tensors.append(torch.empty(shape, dtype=dtype))
                continue
            self.tensors.append(torch.from_numpy(flat[offset : offset + n]).view(dtype).view(shape))
            offset += _aligned(n)

    def __len__(self) -> int:
        return len(self.tensors)
