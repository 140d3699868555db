"""The reference GPT trained on several processes with PyTorch's own distributed engine: ``torchrun``
starts the processes, :mod:`torch.distributed` connects them (gloo on a CPU, nccl on GPUs, one GPU a
process), and ``--parallel`` chooses how they share each step of ``python -m fastattn train gpt``:

- ``ddp``: every process holds the whole model and takes an equal share of the batch's sequences;
  DistributedDataParallel averages the gradients during the backward pass.
- ``fsdp``: FSDP2 (``fully_shard`` on each block, then on the whole model): every process holds
  1/W of the parameters, gradients and AdamW moments, and gathers a block's parameters only while the
  block runs; the batch is shared as with ``ddp``.
- ``context``: every process takes the whole batch but only its part of each sequence (the zigzag
  shards of :func:`fastattn.distributed.shard_sequence`, at their global positions); attention runs
  around the ring (:func:`fastattn.distributed.ring_attention`) and the gradients are averaged by one
  all-reduce after the backward pass.

Every process draws the same global batch from the same generator and takes its share, so W processes
compute the single-process step: its loss is the mean over all the batch's tokens, which is the mean of
the processes' means because each process holds as many tokens (and the GPT's targets ignore none).
Under context parallelism a process's loss also reaches the keys and values of the others' tokens, whose
gradients the ring sends back to them; averaged over the processes, the gradients are those of the
single-process loss.

Checkpoints are :mod:`torch.distributed.checkpoint` folders (each process writes its own shard of the
parameters and optimizer state; the run's settings go beside them in ``train.pt``), read back on any
number of processes and with any ``--parallel`` mode. ``OUT/checkpoint.dcp`` is a symbolic link to the
latest complete save, replaced in one atomic rename.
"""

from __future__ import annotations

import datetime
import os
import secrets
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import backends, capabilities
from .gpt import GPT
from .layers import AttentionLayer

MODES = ("ddp", "fsdp", "context")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # the one that stops a run when processes received different ones
CHECKPOINT_NAME = "checkpoint.dcp"  # in --out: a link to the latest save, a torch.distributed.checkpoint folder
SETTINGS_NAME = "train.pt"  # in a checkpoint folder: the task, model config, step and run state
# A collective that waits longer than this raises instead of hanging. On a CPU a step of the GPT takes
# about 60 ms, and the longest wait, for the first process's held-out estimate between two steps (20
# batches), under a second; on GPUs NCCL's own default (10 minutes) leaves room for its communicators'
# set-up across machines.
CPU_TIMEOUT = datetime.timedelta(seconds=60)
GPU_TIMEOUT = datetime.timedelta(minutes=10)


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when not started by torchrun)."""
    return int(os.environ.get("RANK", 0))


def launched_world_size() -> int:
    """The number of processes torchrun started (1 when not started by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", 1))


def local_device(device_type: str) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` (one GPU a process on each machine), or the CPU."""
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if device_type == "cuda" else torch.device("cpu")


@dataclass
class World:
    """The processes of one run, connected by :func:`connect`; ``mode`` is how they share a step."""

    mode: str
    rank: int
    size: int
    device: torch.device
    save_token: str  # names this run's checkpoint folders, the same on every process

    @property
    def is_main(self) -> bool:
        """The process that prints, shows progress and writes the single-file outputs."""
        return self.rank == 0

    def share(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """This process's part of the global ``batch`` (the same on every process): its slice of the
        sequences under ddp and fsdp; the whole batch under context, whose model takes its part of
        each sequence itself."""
        if self.mode == "context":
            return batch
        rows = batch[0].shape[0] // self.size
        return tuple(tensor[self.rank * rows : (self.rank + 1) * rows] for tensor in batch)

    def reduce_gradients(self, model: nn.Module) -> None:
        """Averages the gradients over the processes under context parallelism (DDP and FSDP do it
        during the backward pass), as one all-reduce of them all."""
        if self.mode != "context":
            return
        gradients = [parameter.grad for parameter in model.parameters() if parameter.grad is not None]
        flat = torch.cat([gradient.flatten() for gradient in gradients])
        dist.all_reduce(flat)
        flat /= self.size
        for gradient, part in zip(gradients, flat.split([g.numel() for g in gradients]), strict=True):
            gradient.copy_(part.view_as(gradient))

    def mean(self, loss: Tensor) -> float:
        """This step's loss over the whole batch: the mean of the processes' losses (each the mean over
        as many tokens)."""
        total = loss.detach().to(torch.float64)
        dist.all_reduce(total)
        return total.item() / self.size

    def stop_signal(self, received: signal.Signals | None) -> signal.Signals | None:
        """The signal that stops the run after this step when any process ``received`` one (SIGTERM
        before SIGINT), so that all stop after the same step."""
        votes = torch.tensor([received == number for number in STOP_SIGNALS], dtype=torch.int32, device=self.device)
        dist.all_reduce(votes)
        return next((number for number, count in zip(STOP_SIGNALS, votes.tolist(), strict=True) if count), None)

    def describe(self, batch_size: int, block_size: int) -> str:
        processes = f"--parallel {self.mode} on {self.size} process{'es' if self.size > 1 else ''}"
        if self.mode == "context":
            return f"{processes} ({block_size // self.size} positions of each sequence each)"
        return f"{processes} ({batch_size // self.size} sequences each)"


def connect(mode: str, device: torch.device) -> World:
    """Joins the processes torchrun started (``env://``), or makes a world of this one process when
    torchrun did not start it. Undone by :func:`disconnect`."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend, timeout = ("nccl", GPU_TIMEOUT) if device.type == "cuda" else ("gloo", CPU_TIMEOUT)
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend, timeout=timeout, device_id=device if device.type == "cuda" else None)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    token = [secrets.token_hex(4)]
    dist.broadcast_object_list(token, src=0, device=device)
    return World(mode, dist.get_rank(), dist.get_world_size(), device, token[0])


def disconnect() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def check(
    mode: str, world_size: int, batch_size: int, batch_flag: str, block_size: int, dropout: float, backend: str
) -> None:
    """Raises ValueError (naming the flag) when ``mode`` cannot share a step of this run over
    ``world_size`` processes; run on every process before they connect, so that all stop alike."""
    if mode in ("ddp", "fsdp") and batch_size % world_size:
        remedy = (
            f"resume it on a number of processes that divides {batch_size}"
            if batch_flag == "--resume"
            else f"use a multiple of {world_size}"
        )
        raise ValueError(
            f"argument {batch_flag}: a batch of {batch_size} sequences does not split evenly over {world_size} "
            f"processes (--parallel {mode} gives each the same number); {remedy}"
        )
    if mode == "context":
        chunks = 2 * world_size
        if block_size % chunks:
            counts = [w for w in range(1, block_size // 2 + 1) if block_size % (2 * w) == 0]
            raise ValueError(
                f"argument --parallel: context cuts each sequence of {block_size} positions into 2 x {world_size} = "
                f"{chunks} equal chunks, and {block_size} is not a multiple of {chunks}; run on "
                f"{', '.join(map(str, counts))} processes"
            )
        if dropout:
            raise ValueError(
                f"argument --parallel: context: ring attention has no dropout, and the model's is {dropout}"
            )
        if capabilities.lacks("attention", backend, "return_lse"):
            serving = [name for name in backends.BACKENDS if not capabilities.lacks("attention", name, "return_lse")]
            raise ValueError(
                f"argument --backend: {backend} cannot serve --parallel context: ring attention merges its blocks "
                f"by their log-sum-exp, which it does not return; use auto, {', '.join(serving)}"
            )


class RingSelfAttention(nn.Module):
    """A GPT block's causal self-attention over this process's shard of each sequence, the keys and
    values of the other shards coming around the ring; it takes over the projections of the
    :class:`AttentionLayer` it replaces, so the parameters and their names stay the same."""

    def __init__(self, attention: AttentionLayer) -> None:
        super().__init__()
        self.query, self.key_value, self.out = attention.query, attention.key_value, attention.out
        self.n_heads, self.n_kv_heads, self.head_dim = attention.n_heads, attention.n_kv_heads, attention.head_dim
        self.backend = attention.backend

    def forward(self, x: Tensor, *, causal: bool, key_padding_mask=None, kv_cache=None, start_pos: int = 0) -> Tensor:
        """x: ``(B, N/W, C)``, this process's shard. Returns ``(B, N/W, C)``."""
        from fastattn.distributed import ring_attention

        if key_padding_mask is not None or kv_cache is not None:
            raise ValueError("ring attention trains on whole sequences: no key padding mask, no KV cache")
        batch, n, channels = x.shape
        q = self.query(x).view(batch, n, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, N/W, D)
        k, v = AttentionLayer.keys_values(self, x)  # the replaced module's projection: 2 x (B, Hkv, N/W, D)
        y = ring_attention(q, k, v, causal=causal, backend=self.backend)
        return self.out(y.transpose(1, 2).reshape(batch, n, channels))


class ContextParallelGPT(nn.Module):
    """A GPT (its self-attention replaced by :class:`RingSelfAttention`) that takes the whole batch, as
    :meth:`GPT.forward` does, and runs this process's zigzag shard of every sequence at its global
    positions; the loss it returns is the mean over this process's tokens."""

    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        for block in gpt.blocks:
            block.self_attention = RingSelfAttention(block.self_attention)
        self.gpt = gpt

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        from fastattn.distributed import shard_sequence

        positions = shard_sequence(torch.arange(idx.shape[1], device=idx.device), dim=0)  # (N/W,)
        targets = None if targets is None else shard_sequence(targets, dim=1)
        return self.gpt(shard_sequence(idx, dim=1), targets, positions=positions)


def distribute(gpt: GPT, world: World) -> nn.Module:
    """The model a training step calls: ``gpt`` (on ``world.device``, the same initial weights on every
    process) wrapped for ``world.mode``. Its parameters remain ``gpt``'s (sharded under fsdp)."""
    if world.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(gpt, device_ids=[world.device.index] if world.device.type == "cuda" else None)
    if world.mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(world.device.type, (world.size,))
        for block in gpt.blocks:
            fully_shard(block, mesh=mesh)
        return fully_shard(gpt, mesh=mesh)
    return ContextParallelGPT(gpt)


# ------------------------------------------------------------------------------------ checkpoints
# torch.distributed.checkpoint is imported where it is used: importing it takes 0.8 s, which every
# command line would pay (the train command's parser is built for all of them).
def is_checkpoint_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder that :func:`save` completed."""
    return (Path(path) / ".metadata").is_file() and (Path(path) / SETTINGS_NAME).is_file()


def save(path: Path, world: World, gpt: GPT, optimizer: torch.optim.Optimizer, settings: dict) -> None:
    """Writes ``gpt``'s parameters and ``optimizer``'s state (each process its shard) and ``settings``
    into a new folder beside ``path``, then points the link ``path`` at it (one rename: ``path`` always
    names a whole checkpoint) and removes the folder it named before. Every process calls it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    folder = path.with_name(f".{path.name}.{world.save_token}-{settings['step']}")
    model_state, optimizer_state = get_state_dict(gpt, optimizer)
    if world.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / SETTINGS_NAME, "wb") as file:
            torch.save(settings, file)
            file.flush()
            os.fsync(file.fileno())
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=folder)
    if world.is_main:
        previous = path.resolve() if path.is_symlink() else None
        link = path.with_name(f".{path.name}.{world.save_token}.link")
        link.unlink(missing_ok=True)
        os.symlink(folder.name, link)  # relative, so that the run's folder can be moved
        os.replace(link, path)
        if previous is not None and previous != folder.resolve():
            shutil.rmtree(previous, ignore_errors=True)


def remove_stale_saves(out_dir: Path, keep: Path | None) -> None:
    """Folders and links of saves that a kill interrupted before they were linked (and ``keep``, a
    checkpoint folder being resumed, is left alone)."""
    link = out_dir / CHECKPOINT_NAME
    current = link.resolve() if link.is_symlink() else None
    keep = keep.resolve() if keep is not None else None
    for stale in out_dir.glob(f".{CHECKPOINT_NAME}.*"):
        if stale.resolve() in (current, keep) and not stale.name.endswith(".link"):
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def load(path: str | os.PathLike, gpt: GPT, optimizer: torch.optim.Optimizer) -> None:
    """Reads the parameters and optimizer state of the checkpoint folder ``path`` into ``gpt`` (as
    distributed for this run, on any number of processes) and ``optimizer``. Every process calls it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict, set_state_dict

    state = {"model": get_model_state_dict(gpt), "optimizer": get_optimizer_state_dict(gpt, optimizer)}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(gpt, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def load_whole(checkpoint: dict, gpt: GPT, optimizer: torch.optim.Optimizer) -> None:
    """Loads a single-file checkpoint (``model`` and ``optimizer`` as one process saves them, read by
    every process) into ``gpt`` as distributed for this run and its ``optimizer``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_state_dict

    names = get_optimizer_state_dict(gpt, optimizer)["param_groups"]  # parameter names, in optimizer order
    order = [name for group in names for name in group["params"]]
    saved = checkpoint["optimizer"]
    optimizer_state = {
        "state": {order[index]: state for index, state in saved["state"].items()},
        "param_groups": [
            {**group, "params": [order[index] for index in group["params"]]} for group in saved["param_groups"]
        ],
    }
    set_state_dict(
        gpt,
        optimizer,
        model_state_dict=checkpoint["model"],
        optim_state_dict=optimizer_state,
        options=StateDictOptions(full_state_dict=True),
    )
    for group, saved_group in zip(optimizer.param_groups, saved["param_groups"], strict=True):
        # as saved: torch's full-state-dict path turns the tuple of AdamW's betas into a list
        group.update({key: value for key, value in saved_group.items() if key != "params"})


def gather(gpt: GPT, optimizer: torch.optim.Optimizer | None, world: World) -> tuple[dict, dict | None]:
    """The whole model's state dict and, given ``optimizer``, its state in the single-process format of
    ``Optimizer.state_dict()`` (parameters numbered in order), on the CPU of the main process (empty
    elsewhere). Every process calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if optimizer is None:
        return get_model_state_dict(gpt, options=options), None
    model_state, named = get_state_dict(gpt, optimizer, options=options)
    if not world.is_main:
        return model_state, None
    order = {name: index for index, name in enumerate(n for group in named["param_groups"] for n in group["params"])}
    optimizer_state = {
        "state": {order[name]: state for name, state in named["state"].items()},
        "param_groups": [{**group, "params": [order[n] for n in group["params"]]} for group in named["param_groups"]],
    }
    return model_state, optimizer_state


def replica(gpt: GPT, device: torch.device) -> GPT:
    """A plain GPT of ``gpt``'s config and backend on ``device``, for the main process to evaluate and
    sample from (its weights loaded from :func:`gather`)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # leaves the run's random state
        return GPT(gpt.config, backend=gpt.backend).to(device)
