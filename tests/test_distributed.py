"""fastattn.distributed on real process groups: ``gloo`` processes spawned on this machine (world sizes
1 to 4), each case run on every rank, compared with attention on the full sequence.

Each rank builds the same full q, k, v (one seed), shards them with ``shard_sequence``, runs
``ring_attention`` forward and backward, and checks its rows of out, lse and the gradients against the
float64 reference under the rule of ``fastattn.testing`` (error at most 2x (forward) or 3x (gradients)
that of the same computation in the inputs' dtype). Failures are gathered per rank and reported with
the case; every rank runs every collective whatever its checks say, so a failure never hangs a group.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import traceback
import zlib

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastattn import reference
from fastattn.bench.ring import free_port
from fastattn.distributed import gather_sequence, ring_attention, shard_sequence
from fastattn.distributed.ring import block_plan
from fastattn.testing import FORWARD_FACTOR, GRADIENT_FACTOR, error_report

GROUP_TIMEOUT = datetime.timedelta(seconds=60)  # a rank that never answers fails the others within this


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    batch: int = 1
    heads_q: int = 2
    heads_kv: int = 2
    length: int = 48  # the full sequence: a multiple of 2 x world size
    head_dim: int = 16
    causal: bool = False
    window: tuple[int, int] | None = None
    dtype: torch.dtype = torch.float32
    backend: str = "naive"


CASES = [
    Case("full"),
    Case("causal", causal=True),
    Case("causal GQA", heads_q=4, heads_kv=1, causal=True, batch=2),
    Case("window 5 causal", causal=True, window=(5, 0)),
    Case("window (7, 3)", window=(7, 3)),
    Case("window (20, -1)", window=(20, -1), heads_q=4, heads_kv=2),
    Case("causal bfloat16", causal=True, dtype=torch.bfloat16, head_dim=8),
    Case("float16, D=59, MQA", heads_q=3, heads_kv=1, dtype=torch.float16, head_dim=59, window=(9, 9)),
    Case("causal triton", causal=True, length=32, backend="triton"),
]


@contextlib.contextmanager
def process_group(rank: int, world: int, port: int, timeout: datetime.timedelta = GROUP_TIMEOUT):
    """This process as ``rank`` of a gloo group of ``world`` on this machine, for the ``with`` block."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timeout)
    try:
        yield
    finally:
        dist.destroy_process_group()


def blocked_lse(q, k, options: dict, *, chunks: int):
    """The lse by the ring's math in q's dtype: each of ``chunks`` key chunks' lse rounded to q's dtype
    (as a kernel returns it), then their log-sum-exp in float64, rounded once. The "same math in the
    test dtype" of the numerics rule for the ring's lse: its error is the largest chunk's rounding plus
    the final one (up to 1 ulp, where one softmax's lse rounds once: up to 0.5 ulp)."""
    scores = reference.attention_scores(q, k, **options)  # -inf where masked
    chunk_lse = torch.stack([torch.logsumexp(part, -1) for part in scores.split(k.shape[2] // chunks, -1)])
    return torch.logsumexp(chunk_lse.to(torch.float64), 0).to(q.dtype)


def run_case(case: Case, rank: int, world: int) -> list[str]:
    """This rank's failures (empty: its rows and gradients match)."""
    length = case.length if case.length % (2 * world) == 0 else case.length + 2 * world - case.length % (2 * world)
    generator = torch.Generator().manual_seed(zlib.crc32(case.name.encode()))
    shape_q = (case.batch, case.heads_q, length, case.head_dim)
    shape_kv = (case.batch, case.heads_kv, length, case.head_dim)
    q, k, v, dout = (torch.randn(shape, generator=generator) for shape in (shape_q, shape_kv, shape_kv, shape_q))
    dlse = torch.randn(shape_q[:3], generator=generator)
    options = dict(causal=case.causal, window=case.window)

    shards = [shard_sequence(t.to(case.dtype), dim=2).requires_grad_() for t in (q, k, v)]
    out, lse = ring_attention(*shards, **options, return_lse=True, backend=case.backend)
    torch.autograd.backward((out, lse), (shard_sequence(dout.to(case.dtype), 2), shard_sequence(dlse, 2)))
    got = {"out": out, "lse": lse, "dq": shards[0].grad, "dk": shards[1].grad, "dv": shards[2].grad}

    def full_attention(dtype):
        inputs = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        full_out, full_lse = reference.attention(*inputs, **options, return_lse=True)
        torch.autograd.backward((full_out, full_lse), (dout.to(dtype), dlse.to(full_lse.dtype)))
        values = {"out": full_out, "lse": full_lse, "dq": inputs[0].grad, "dk": inputs[1].grad, "dv": inputs[2].grad}
        return {name: shard_sequence(value.detach(), dim=2) for name, value in values.items()}

    exact, plain = full_attention(torch.float64), full_attention(case.dtype)
    if case.dtype == torch.float32:  # below float32 inputs, their own rounding dwarfs the lse's
        plain["lse"] = shard_sequence(blocked_lse(q, k, options, chunks=2 * world), dim=2)
    failures = []
    for name, value in got.items():
        factor = FORWARD_FACTOR if name in ("out", "lse") else GRADIENT_FACTOR
        report = error_report(f"{case.name} {name}", value.detach(), exact[name], plain[name], factor=factor)
        if not report.ok:
            failures.append(f"world {world}, rank {rank}: {report}")
    return failures


def worker(rank: int, world: int, port: int, cases: list[Case], triton_interpret: str, errors) -> None:
    os.environ["TRITON_INTERPRET"] = triton_interpret
    with process_group(rank, world, port):
        for case in cases:
            try:
                errors.extend(run_case(case, rank, world))
            except Exception:  # reported, not raised: the other ranks still wait for this one's collectives
                errors.append(f"world {world}, rank {rank}, {case.name}:\n{traceback.format_exc()}")


def spawn(world: int, target, *args) -> list[str]:
    """Runs ``target(rank, world, port, *args, errors)`` on ``world`` processes; the errors they report."""
    with mp.Manager() as manager:
        errors = manager.list()
        mp.spawn(target, args=(world, free_port(), *args, errors), nprocs=world, join=True)
        return list(errors)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ring_attention_equals_attention_on_the_full_sequence(world):
    """Forward (out, lse) and backward (dq, dk, dv) of every case, on every rank."""
    cases = CASES if world <= 2 else [case for case in CASES if case.backend == "naive"]
    errors = spawn(world, worker, cases, os.environ.get("TRITON_INTERPRET", "0"))
    assert not errors, "\n".join(errors)


# --------------------------------------------------------------------------------------- the plans
def visible_pairs(q_chunk: int, k_chunk: int, chunk: int, causal: bool, window) -> torch.Tensor:
    """(chunk, chunk) bool: which (query, key) pairs of the two chunks the full sequence's mask keeps."""
    length = (max(q_chunk, k_chunk) + 1) * chunk
    full = reference.attention_visibility(
        1, length, length, causal=causal, key_padding_mask=None, device="cpu", window=window
    )
    return full[0, 0, q_chunk * chunk : (q_chunk + 1) * chunk, k_chunk * chunk : (k_chunk + 1) * chunk]


def planned_pairs(plan, chunk: int) -> torch.Tensor:
    """The pairs ``fastattn.attention``'s mask keeps for a block planned so (None: none)."""
    if plan is None:
        return torch.zeros(chunk, chunk, dtype=torch.bool)
    nq, nk = chunk + plan.pad_queries, chunk + plan.pad_keys
    seen = reference.attention_visibility(
        1, nq, nk, causal=False, key_padding_mask=None, device="cpu", window=plan.window
    )
    return seen[0, 0, :chunk, :chunk]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [None, (0, 0), (3, 0), (5, 2), (9, -1), (-1, 4), (17, 17), (40, 1)])
def test_block_plans_keep_exactly_the_full_masks_pairs(causal, window):
    """Every pair of chunks (C = 8, 6 chunks): skipped, unmasked or padded and windowed, the block keeps
    the pairs the full sequence's mask keeps; padding stays below C."""
    chunk = 8
    for q_chunk in range(6):
        for k_chunk in range(6):
            plan = block_plan(q_chunk, k_chunk, chunk, causal, window)
            want = visible_pairs(q_chunk, k_chunk, chunk, causal, window)
            where = f"query chunk {q_chunk}, key chunk {k_chunk}, causal={causal}, window={window}: {plan}"
            assert torch.equal(planned_pairs(plan, chunk), want), where
            assert (plan is None) == (not want.any()), where
            assert plan is None or max(plan.pad_keys, plan.pad_queries) < chunk, where


# -------------------------------------------------------------------------------- the zigzag layout
def test_shard_sequence_without_a_process_group_is_the_identity_layout():
    x = torch.arange(12.0).reshape(1, 12)
    assert torch.equal(shard_sequence(x, dim=1), x)
    with pytest.raises(ValueError, match="multiple of 2 x world size = 2"):
        shard_sequence(torch.zeros(3, 5), dim=1)
    with pytest.raises(ValueError, match="dim must be an int"):
        shard_sequence(x, dim=2)


def layout_worker(rank: int, world: int, port: int, errors) -> None:
    with process_group(rank, world, port):
        x = torch.arange(2 * world * 3 * 2, dtype=torch.float32).reshape(2, 2 * world * 3)  # 2W chunks of 3
        shard = shard_sequence(x, dim=1)
        chunks = x.chunk(2 * world, 1)
        if not torch.equal(shard, torch.cat([chunks[rank], chunks[2 * world - 1 - rank]], 1)):
            errors.append(f"world {world}, rank {rank}: shard {shard.tolist()}")
        leaf = shard.clone().requires_grad_()
        gathered = gather_sequence(leaf, dim=1)
        if not torch.equal(gathered, x):
            errors.append(f"world {world}, rank {rank}: gathered {gathered.tolist()}")
        (gathered * (rank + 1)).sum().backward()  # every rank's loss uses the whole sequence
        if not torch.equal(leaf.grad, torch.full_like(shard, world * (world + 1) / 2)):
            errors.append(f"world {world}, rank {rank}: gradient {leaf.grad.tolist()}")
        try:
            shard_sequence(torch.zeros(2, 2 * world + 1), dim=1)
            errors.append(f"world {world}, rank {rank}: no error for a length that does not divide")
        except ValueError as error:
            if f"multiple of 2 x world size = {2 * world}" not in str(error):
                errors.append(f"world {world}, rank {rank}: {error}")


@pytest.mark.parametrize("world", [2, 3])
def test_shard_and_gather_round_trip(world):
    errors = spawn(world, layout_worker)
    assert not errors, "\n".join(errors)


# ------------------------------------------------------------------------------------------ bad input
def mismatch_worker(rank: int, world: int, port: int, errors) -> None:
    with process_group(rank, world, port):
        for what, length, dtype in (
            ("shard length", 8 + 2 * rank, torch.float32),
            ("dtype", 8, (torch.float32, torch.float64)[rank]),
        ):
            q = torch.randn(1, 2, length, 8, dtype=dtype)
            try:
                ring_attention(q, q, q, backend="naive")
                errors.append(f"rank {rank}: no error for a {what} that differs between ranks")
            except ValueError as error:
                if "differs between ranks" not in str(error):
                    errors.append(f"rank {rank}, {what}: {error}")


def absent_worker(rank: int, world: int, port: int, errors) -> None:
    timeout = datetime.timedelta(seconds=5)
    with process_group(rank, world, port, timeout=timeout):
        if rank == 0:  # rank 1 never calls ring_attention
            q = torch.randn(1, 2, 8, 8)
            try:
                ring_attention(q, q, q, backend="naive")
                errors.append("rank 0: no error while rank 1 never joined the call")
            except RuntimeError as error:
                if "could not reach every rank" not in str(error):
                    errors.append(f"rank 0: {error}")


def test_shards_that_differ_between_ranks_are_an_error_on_every_rank():
    errors = spawn(2, mismatch_worker)
    assert not errors, "\n".join(errors)


def test_a_rank_that_never_calls_makes_the_others_fail_within_the_timeout():
    errors = spawn(2, absent_worker)
    assert not errors, "\n".join(errors)


def test_bad_arguments_name_what_is_expected():
    q = torch.randn(1, 2, 8, 4)
    for call, message in [
        (lambda: ring_attention(q, q, q[:, :, :6]), "k and v must have the same shape"),
        (lambda: ring_attention(q[:, :, :7], q[:, :, :7], q[:, :, :7]), "length must be even"),
        (lambda: ring_attention(q, q, q, backend="torch"), "backend 'torch' cannot serve it"),
        (lambda: ring_attention(q, q, q, window=(2, -3)), "window must be None"),
        (lambda: ring_attention(q, q[:, :1].repeat(1, 3, 1, 1), q[:, :1].repeat(1, 3, 1, 1)), "multiple of key heads"),
    ]:
        with pytest.raises((ValueError, TypeError), match=message):
            call()


def test_ring_benchmark_rows_show_memory_per_rank_falling_as_one_over_w():
    from fastattn.bench import ring as bench_ring

    rows, notes = bench_ring.run(torch.device("cpu"), world_sizes=(1, 2), sequence=64)
    assert [row.world for row in rows] == [1, 2], notes
    assert rows[1].saved_bytes * 2 == rows[0].saved_bytes  # the shards, out and lse: O(N / W)
    assert all(row.seconds > 0 and row.overlap_ratio > 0 for row in rows)
    assert "W  N" in bench_ring.format_table(rows, notes)
