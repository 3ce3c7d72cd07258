"""Training under `accelerate launch` (or torchrun): who writes, who waits, how a batch splits.

The Trainer-based stages (SFT, preference model, DPO, GRPO) let accelerate run DDP, FSDP or
DeepSpeed; this module holds the little that the run folder needs on top, so that a stage
means the same thing on one process or many:

- `batch_size` in a config is the batch of one optimizer micro-step across all processes;
  each process takes `batch_size / world_size` (an uneven split is refused, not rounded), so
  a recipe gives the same global batch, the same number of steps and the same loss curve
  whether it runs on 1 process or 8. One difference remains, and it is accelerate's: when
  the rows do not fill the last batch, each process still takes an equal share of it, by
  repeating rows from the start of the data (`even_batches`), so that one step differs.
- Only the main process writes the stage folder (rows, manifest, final model); the others
  wait at a barrier, so no file is written twice and no rank reads a half-written one.

World size and rank come from the environment variables every launcher sets (torchrun,
accelerate launch, DeepSpeed); nothing here imports torch unless a barrier is needed.
"""

from __future__ import annotations

import os

from constitutional.errors import InputError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def per_device_batch(batch_size: int, field: str = "batch_size") -> int:
    """The per-process share of a global micro-batch; refuses a split that is not even."""
    n = world_size()
    if batch_size % n:
        raise InputError(f"{field} {batch_size} does not split over {n} processes; use a "
                         f"multiple of {n}", field=field)
    return batch_size // n


def wait_for_everyone() -> None:
    """Barrier across the launched processes (a no-op on one process)."""
    if world_size() == 1:
        return
    import torch
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available()).wait_for_everyone()


def trainer_device_args() -> dict:
    """TrainingArguments fields that place the run: CPU without CUDA (gloo between processes),
    otherwise whatever accelerate's launch config chose."""
    import torch

    cpu = not torch.cuda.is_available()
    args = {"use_cpu": cpu}
    if world_size() > 1:
        # Every trainable weight takes part in each forward here (LoRA on all linear layers,
        # or all weights), so DDP need not search the graph for unused ones each step.
        args["ddp_find_unused_parameters"] = False
        if cpu:
            args["ddp_backend"] = "gloo"
    return args
