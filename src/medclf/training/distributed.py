"""Training on several processes (DDP): which process this is, and gathering per-process results.

`medclf train` runs unchanged under `torchrun --nproc-per-node N -m medclf train ...` and
`accelerate launch --multi_gpu --num_processes N -m medclf train ...` (or `medclf train --num-processes N`,
which starts torchrun):
accelerate's PartialState reads the launcher's environment and sets up the process group (gloo on CPUs,
NCCL on GPUs). Every process trains on its shard of each global batch; evaluation is sharded by text and
gathered, so every process sees the same figures and keeps the same weights; only the main process
writes the run directory, logs and shows progress.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: Any = None
    """The launcher's device for this process (cuda:LOCAL_RANK on GPUs); None: choose as usual."""

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            import torch.distributed

            torch.distributed.barrier()

    def shard(self, n: int) -> list[int]:
        """This process's items of 0..n-1 (every world-th, from its rank)."""
        return list(range(self.rank, n, self.world))

    def gather_rows(self, mine: list[int], rows: np.ndarray, n: int) -> np.ndarray:
        """Every process's rows put back in order: rows[i] belongs to item mine[i]; each item once."""
        if not self.active:
            return rows
        import torch.distributed

        parts: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(parts, (mine, rows))
        out = np.zeros((n, rows.shape[1]), dtype=rows.dtype)
        for items, values in parts:
            out[items] = values
        return out


SINGLE = Dist()


def distributed_state() -> Dist:
    """The process group the launcher asked for (torchrun / accelerate launch set WORLD_SIZE), or one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return SINGLE
    import torch
    from accelerate import PartialState

    # without a GPU, accelerate sets up several CPU processes only when told so (gloo backend)
    state = PartialState(cpu=not torch.cuda.is_available())
    device = state.device if state.device.type != "cpu" else None
    return Dist(rank=state.process_index, world=state.num_processes, device=device)
