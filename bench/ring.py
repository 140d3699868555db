"""Ring attention on 1, 2 and 4 processes: time, compute/communication overlap and memory per rank.

For each world size W, W processes (``gloo`` on the CPU; ``nccl`` on GPUs, one per rank, when there are
W of them) run ``fastattn.distributed.ring_attention`` forward + backward on their shards of one causal
sequence (B=1, H=8, D=64; N=1024 on the CPU, 32768 on GPUs). Reported per W:

- the time of forward + backward (the slowest rank's median over the repetitions);
- the overlap ratio: that time over the time of the same steps with every transfer replaced by a local
  copy (the compute alone). 1.0 means the transfers are entirely hidden behind the compute; on a CPU
  the W processes share the cores, so the ratio there measures contention as much as the ring;
- the bytes each rank keeps for the backward (q, k, v shards, out and lse: O(N / W)), and on GPUs the
  peak memory allocated, against W=1.
"""

from __future__ import annotations

import datetime
import socket
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastattn.distributed import ring_attention

TITLE = "ring"
WORLD_SIZES = (1, 2, 4)
BATCH, HEADS, HEAD_DIM = 1, 8, 64
CPU_SEQUENCE, GPU_SEQUENCE = 1024, 32768
REPETITIONS = 5  # after one warm-up


@dataclass(frozen=True)
class RingRow:
    world: int
    sequence: int
    backend: str  # of the process group
    seconds: float  # forward + backward, the slowest rank's median
    compute_seconds: float  # the same steps with local copies for the transfers
    overlap_ratio: float  # seconds / compute_seconds
    saved_bytes: int  # kept for the backward, per rank
    peak_bytes: int | None  # GPU peak allocated during forward + backward, per rank (None on the CPU)

    def as_dict(self) -> dict:
        return asdict(self)


class _LocalTransfers:
    """Within ``measure``: the ring's transfers replaced by copies of the sent tensor, so the same
    steps run with no communication (the compute alone)."""

    def __enter__(self):
        from fastattn.distributed import ring

        self.ring, self.start = ring._Ring, ring._Ring.start
        ring._Ring.start = lambda _ring, tensor: (tensor.clone(), [])
        return self

    def __exit__(self, *exc_info) -> None:
        self.ring.start = self.start


def _forward_backward(shards, dout, *, attention_backend: str) -> None:
    q, k, v = (t.detach().requires_grad_() for t in shards)
    ring_attention(q, k, v, causal=True, backend=attention_backend).backward(dout)


def _median_seconds(run, device, repetitions: int) -> float:
    times = []
    for _ in range(repetitions + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _worker(rank: int, world: int, port: int, sequence: int, on_gpu: bool, rows) -> None:
    from fastattn.distributed import shard_sequence

    group_backend = "nccl" if on_gpu else "gloo"
    device = torch.device("cuda", rank) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)  # W processes share the cores
    dist.init_process_group(
        group_backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=300),
    )
    try:
        dtype = torch.bfloat16 if on_gpu else torch.float32
        attention_backend = "auto" if on_gpu else "naive"  # the fused kernels need a GPU
        generator = torch.Generator().manual_seed(0)
        full = [torch.randn(BATCH, HEADS, sequence, HEAD_DIM, generator=generator) for _ in range(4)]
        shards = [shard_sequence(t.to(device, dtype), dim=2) for t in full[:3]]
        dout = shard_sequence(full[3].to(device, dtype), dim=2)
        saved = []  # bytes kept from the forward for the backward (not the backward's own transients)
        q, k, v = (t.detach().requires_grad_() for t in shards)
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t
        ):
            out = ring_attention(q, k, v, causal=True, backend=attention_backend)
        out.backward(dout)
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)

        def run():
            _forward_backward(shards, dout, attention_backend=attention_backend)

        seconds = _median_seconds(run, device, REPETITIONS)
        peak = torch.cuda.max_memory_allocated(device) - before if on_gpu else None
        with _LocalTransfers():
            compute = _median_seconds(run, device, REPETITIONS)
        times = torch.tensor([seconds, compute], dtype=torch.float64, device=device)
        dist.all_reduce(times, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace
        if rank == 0:
            seconds, compute = times.tolist()
            rows.append(RingRow(world, sequence, group_backend, seconds, compute, seconds / compute, sum(saved), peak))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port free on this machine now, for a process group's rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(device: torch.device, world_sizes=WORLD_SIZES, sequence: int | None = None) -> tuple[list[RingRow], list[str]]:
    """One row per world size that can run here, and notes on those that cannot."""
    on_gpu = device.type == "cuda"
    sequence = sequence or (GPU_SEQUENCE if on_gpu else CPU_SEQUENCE)
    rows, notes = [], []
    with mp.Manager() as manager:
        shared = manager.list()
        for world in world_sizes:
            if on_gpu and torch.cuda.device_count() < world:
                notes.append(f"W={world}: skipped: {torch.cuda.device_count()} GPU(s) here, nccl needs one per rank")
                continue
            mp.spawn(_worker, args=(world, free_port(), sequence, on_gpu, shared), nprocs=world, join=True)
        rows = list(shared)
    if not on_gpu:
        notes.append("on the CPU (gloo, naive blocks): the processes share the cores; times are for comparison only")
    return rows, notes


def format_table(rows: list[RingRow], notes: list[str], markdown: bool = False) -> str:
    from .report import table

    single = next((row for row in rows if row.world == 1), None)
    header = ("W", "N", "group", "fwd+bwd", "compute alone", "overlap ratio", "saved per rank", "vs W=1")
    lines = [
        (
            str(row.world),
            str(row.sequence),
            row.backend,
            f"{row.seconds * 1e3:.1f} ms",
            f"{row.compute_seconds * 1e3:.1f} ms",
            f"{row.overlap_ratio:.2f}",
            f"{row.saved_bytes / 2**20:.2f} MiB",
            f"{row.saved_bytes / single.saved_bytes:.2f}x" if single else "",
        )
        for row in rows
    ]
    title = f"ring attention forward + backward, causal (B={BATCH}, H={HEADS}, D={HEAD_DIM})"
    return table(title, header, lines, notes, markdown=markdown)


if __name__ == "__main__":
    from .cli import main

    sys.exit(main([TITLE, *sys.argv[1:]]))
