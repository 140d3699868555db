"""fastattn.sample: the reference against Hugging Face's warpers, the fused kernel's kept set against the
reference (exactly), the distribution of the draws (chi-square), the random stream and its
reproducibility, special rows, log-probs, dtypes, bad input and the custom op (opcheck).

On the CPU the Triton kernel runs under the interpreter: 10^5 draws per distribution case (a batch of
10^5 rows, many rows per program); on a GPU 10^6 draws, and the ``slow`` tests add large batches.
"""

import dataclasses
import math

import pytest
import torch

import fastattn
from fastattn import backends, capabilities, reference
from fastattn.ops import sampling as ops
from fastattn.verify import sampling as verify_sampling
from fastattn.verify.sampling import (
    P_VALUE_THRESHOLD,
    Filters,
    chi_square,
    draw_test,
    edge_logits,
    kept_set_mismatches,
    tied_logits,
)

BACKENDS = backends.FUSED  # the fused backends under test
GPU = torch.cuda.is_available()
DRAWS = 10**6 if GPU else 10**5  # per distribution case
DTYPES = capabilities.fused_dtypes("sampling")
INF = math.inf


@pytest.fixture(params=BACKENDS)
def backend(request, device):
    reasons = backends.device_reasons(request.param, torch.device(device))
    if reasons:
        pytest.skip(f"{request.param}: {'; '.join(reasons)}")
    return request.param


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def kept(logits, **filters) -> torch.Tensor:
    """The reference's kept set."""
    return reference.filter_logits(logits, **filters) > -INF


def check_kept_set(backend, logits, filters: Filters):
    mismatches, detail = kept_set_mismatches(backend, logits, filters)
    assert mismatches == 0, f"{filters}: {detail}"


# ------------------------------------------------------------------------------- the reference
def test_philox_known_answers():
    """Random123's known-answer vectors for philox4x32-10."""

    def words(*values):
        return tuple(torch.tensor([[v]], dtype=torch.int64) for v in values)

    cases = [
        (words(0, 0, 0, 0), words(0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        (words(*[0xFFFFFFFF] * 4), words(0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            words(0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            words(0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for counter, key, expected in cases:
        assert tuple(int(w) for w in reference.philox4x32(counter, key)) == expected


def test_gumbel_noise_is_the_documented_stream():
    """Entry (row, i) of the noise depends only on the row's seed and i, and follows the formula."""
    seeds = torch.tensor([0, 7, -3, 2**40 + 5])
    noise = reference.gumbel_noise(seeds, 300)
    assert noise.dtype == torch.float32 and noise.shape == (4, 300)
    assert torch.equal(reference.gumbel_noise(seeds[2:3], 300)[0], noise[2])
    assert torch.equal(reference.gumbel_noise(seeds, 40), noise[:, :40])
    i, seed = 123, 2**40 + 5
    counter = tuple(torch.tensor([[v]]) for v in (i, 0, 0, 0))
    key = (torch.tensor([[seed & 0xFFFFFFFF]]), torch.tensor([[seed >> 32]]))
    r0, r1, _, _ = reference.philox4x32(counter, key)
    j = (int(r0) << 20) | (int(r1) >> 12)
    u = (2 * j + 1) * 2.0**-53
    expected = -math.log(float(torch.tensor(-math.log(u), dtype=torch.float32)))
    assert abs(float(noise[3, i]) - expected) <= 1e-6 * max(1.0, abs(expected))
    # Exp(1) variables, so the noise is standard Gumbel: mean = Euler's constant, variance = pi^2 / 6
    many = reference.gumbel_noise(torch.arange(200), 1000).double()
    assert abs(many.mean().item() - 0.5772156649) < 0.01
    assert abs(many.var().item() - math.pi**2 / 6) < 0.03


def log_probs(*probs):
    return torch.tensor([math.log(p) for p in probs])


# The semantics of Hugging Face's warpers, transcribed into hand-computed cases (transformers is not
# imported): TemperatureLogitsWarper divides by T; TopKLogitsWarper removes scores < the k-th largest
# (ties kept); TopPLogitsWarper sorts ascending and removes tokens whose cumulative probability is
# <= 1 - top_p (i.e. keeps a token iff the mass ranked above it is < top_p); MinPLogitsWarper removes
# probs < min_p * max prob; generate applies them in the order temperature, top-k, top-p, min-p.
HF_CASES = [
    # (logits, filters, kept tokens)
    (torch.tensor([1.0, 2.0, 3.0]), dict(temperature=2.0), [0, 1, 2]),
    (torch.tensor([1.0, 3.0, 2.0, 0.0]), dict(top_k=2), [1, 2]),
    (torch.tensor([1.0, 3.0, 3.0, 0.0]), dict(top_k=1), [1, 2]),  # ties with the k-th value are kept
    (torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0]), dict(top_k=2), [1, 2, 3]),
    (torch.tensor([1.0, 3.0]), dict(top_k=5), [0, 1]),  # k > V keeps all
    (log_probs(0.5, 0.3, 0.15, 0.05), dict(top_p=0.75), [0, 1]),  # ascending cumsum 0.05, 0.2 <= 0.25 removed
    (log_probs(0.5, 0.3, 0.15, 0.05), dict(top_p=0.85), [0, 1, 2]),  # 0.05 <= 0.15 removed
    (log_probs(0.5, 0.3, 0.15, 0.05), dict(top_p=0.3), [0]),  # the token crossing p is kept
    (log_probs(0.5, 0.3, 0.15, 0.05), dict(top_p=0.6), [0, 1]),
    (log_probs(0.05, 0.15, 0.3, 0.5), dict(top_p=0.75), [2, 3]),  # order of the vocabulary is irrelevant
    (log_probs(0.5, 0.3, 0.15, 0.05), dict(min_p=0.25), [0, 1, 2]),  # threshold 0.125
    (log_probs(0.5, 0.3, 0.15, 0.05), dict(min_p=0.5), [0, 1]),  # threshold 0.25
    (log_probs(0.5, 0.3, 0.15, 0.05), dict(min_p=0.61), [0]),  # threshold 0.305
    # top-p on the distribution renormalized after top-k: [0.5, 0.3, 0.15] / 0.95 puts 0.842 above the third
    (log_probs(0.5, 0.3, 0.15, 0.05), dict(top_k=3, top_p=0.82), [0, 1]),
    (log_probs(0.5, 0.3, 0.15, 0.05), dict(top_p=0.82), [0, 1, 2]),  # without top-k: 0.8 < 0.82
    # temperature first: T = 0.5 squares the probabilities: [0.685, 0.247, 0.062, 0.007]
    (log_probs(0.5, 0.3, 0.15, 0.05), dict(temperature=0.5, top_p=0.9), [0, 1]),
    (log_probs(0.5, 0.3, 0.15, 0.05), dict(temperature=0.5, min_p=0.1), [0, 1]),
    # min-p on what top-p left: the max is unchanged, so the threshold is the same
    (log_probs(0.4, 0.3, 0.2, 0.1), dict(top_p=0.8, min_p=0.6), [0, 1]),
]


@pytest.mark.parametrize("index", range(len(HF_CASES)))
def test_reference_follows_hugging_face(index):
    logits, filters, expected = HF_CASES[index]
    assert kept(logits, **filters).nonzero().flatten().tolist() == expected
    filtered = reference.filter_logits(logits, **filters)
    temperature = filters.get("temperature", 1.0)
    assert torch.equal(filtered[expected], logits[expected] / temperature)


def test_reference_ties_and_special_rows():
    # ties with the top-p boundary token are kept: the mass above the 1.0s is 0.45 < 0.5
    logits = torch.tensor([[2.0, 1.0, 1.0, 1.0, 0.0]])
    assert kept(logits, top_p=0.5).tolist() == [[True, True, True, True, False]]
    rows = torch.tensor([[1.0, 3.0, 3.0], [1.0, INF, INF], [1.0, math.nan, 0.0], [-INF, -INF, -INF]])
    assert kept(rows).tolist() == [[True] * 3, [False, True, True], [False] * 3, [False] * 3]
    # greedy keeps the first maximum only, whatever the filters
    assert kept(rows[:1], temperature=0.0, top_k=3).tolist() == [[False, True, False]]
    # min_p = 1 keeps the ties of the maximum, p -> 0 the maximum's ties as well
    assert kept(rows[:1], min_p=1.0).tolist() == [[False, True, True]]
    assert kept(rows[:1], top_p=1e-12).tolist() == [[False, True, True]]


def test_reference_sample_draws_from_the_filtered_distribution():
    row = torch.randn(12, generator=generator(1))
    result = draw_test("naive", row, Filters(0.9, 6), 20000)
    assert result.ok, str(result)


# ------------------------------------------------------------------------- kept set: exactness
def random_filters(batch: int, vocab: int, gen: torch.Generator) -> Filters:
    """Per-row filters over their whole ranges, some rows greedy, some filters off (at their off values)."""
    temperature = torch.rand(batch, generator=gen) * 2
    temperature[::7] = 0.0
    top_k = torch.randint(1, vocab + 3, (batch,), generator=gen)
    top_p = torch.rand(batch, generator=gen).clamp(min=1e-3)
    top_p[::5] = 1.0
    min_p = torch.rand(batch, generator=gen) ** 3
    min_p[::4] = 0.0
    return Filters(temperature, top_k, top_p, min_p)


KEPT_SET_CASES = {
    "plain": Filters(),
    "top_k=1": Filters(top_k=1),
    "top_k=20": Filters(top_k=20),
    "top_k=V": Filters(top_k=257),
    "top_k>V": Filters(top_k=10**6),
    "top_p=1e-9": Filters(top_p=1e-9),
    "top_p=0.5": Filters(top_p=0.5),
    "top_p=0.95": Filters(top_p=0.95),
    "top_p=1": Filters(top_p=1.0),
    "min_p=0": Filters(min_p=0.0),
    "min_p=0.1": Filters(min_p=0.1),
    "min_p=1": Filters(min_p=1.0),
    "all three": Filters(0.7, 40, 0.8, 0.02),
    "T=1e-6 top_p=0.9": Filters(1e-6, None, 0.9),
    "T=1e4 top_p=0.3": Filters(1e4, None, 0.3),
    "T=1e30 top_k=5": Filters(1e30, 5),
    "T=0": Filters(0.0, 3, 0.5),
}


LOGITS_KINDS = ["random", "ties", "edges"]


@pytest.mark.parametrize("logits_kind", LOGITS_KINDS)
@pytest.mark.parametrize("case", list(KEPT_SET_CASES))
def test_kept_set_equals_reference(backend, device, case, logits_kind):
    gen = generator(list(KEPT_SET_CASES).index(case) * len(LOGITS_KINDS) + LOGITS_KINDS.index(logits_kind))
    vocab = 257
    if logits_kind == "random":
        logits = torch.randn(6, vocab, generator=gen) * 3
    elif logits_kind == "ties":
        logits = tied_logits(6, vocab, gen)
    else:
        logits = edge_logits(vocab, gen)
    check_kept_set(backend, logits.to(device), KEPT_SET_CASES[case])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab", [1, 2, 5, 100, 1000, 4099])
def test_kept_set_per_row_filters(backend, device, vocab, dtype):
    gen = generator(vocab)
    batch = 64
    logits = (torch.randn(batch, vocab, generator=gen) * 4).to(dtype)
    logits[1::3] = tied_logits(len(logits[1::3]), vocab, gen).to(dtype)
    filters = random_filters(batch, vocab, gen)
    check_kept_set(backend, logits.to(device), filters.on(device))


@pytest.mark.parametrize(
    "vocab, filters",
    [
        (262144, Filters(0.8, 50, 0.9, 0.01)),
        (300007, Filters(1.0, None, 0.95)),
        (300007, Filters(1.0, 4000, None, 1e-3)),
    ],
    ids=["262144-all", "300007-top_p", "300007-top_k-min_p"],
)
def test_kept_set_large_vocabulary(backend, device, vocab, filters):
    gen = generator(3)
    logits = torch.randn(2, vocab, generator=gen) * 2
    logits[1, :: vocab // 50] = 6.0  # a block of ties at the top
    check_kept_set(backend, logits.to(device), filters)


@pytest.mark.slow
@pytest.mark.parametrize("vocab", [32000, 128256])
def test_kept_set_gpu_sizes(backend, device, vocab):
    gen = generator(4)
    logits = torch.randn(512, vocab, generator=gen) * 3
    logits[::3] = logits[::3].round()  # ties
    check_kept_set(backend, logits.to(device), random_filters(512, vocab, gen).on(device))
    check_kept_set(backend, logits.to(device).bfloat16(), Filters(0.8, 50, 0.9, 0.02))


# ------------------------------------------------------------------- a row split over many programs
def fused_draw(backend, logits, params, seeds, *, splits: int, write_mask: bool):
    """(tokens, log-probs, kept mask) of a fused kernel with ``splits`` programs (blocks) per row."""
    if backend == "cuda":
        from fastattn import _C

        tokens, logprobs, _ = _C.sample(logits, *params, seeds, True, True, False, splits)
        mask = _C.sample(logits, *params, seeds, False, False, True, splits)[2] if write_mask else None
        return tokens, logprobs, mask
    from fastattn.kernels import sampling as kernels

    tokens, logprobs = kernels.sample(logits, *params, seeds, True, splits=splits)
    return tokens, logprobs, kernels.filter_mask(logits, *params, splits=splits) if write_mask else None


def assert_same_draws(single, split, what: str):
    """The split path's tokens and kept set equal the single program's; log-probs to float32 rounding
    (the kept mass is summed in another order)."""
    (tokens, logprobs, mask), (split_tokens, split_logprobs, split_mask) = single, split
    rows = (tokens != split_tokens).nonzero().flatten().tolist()
    assert not rows, f"{what}: tokens differ in rows {rows}: {tokens[rows].tolist()} vs {split_tokens[rows].tolist()}"
    if mask is not None:
        rows = (mask != split_mask).any(-1).nonzero().flatten().tolist()
        assert not rows, f"{what}: kept sets differ in rows {rows}"
    torch.testing.assert_close(
        split_logprobs, logprobs, rtol=1e-6, atol=1e-6, equal_nan=True, msg=lambda m: f"{what}: {m}"
    )


@pytest.mark.parametrize("dtype, splits", [(torch.float32, 2), (torch.float16, 4), (torch.bfloat16, 16)])
def test_split_rows_draw_what_one_program_draws(backend, device, dtype, splits):
    """A row split over 2-16 programs: the same kept set and tokens as one program, on random, tied and
    edge rows with per-row filters; V = 3001 leaves the last slices partly filled or empty."""
    gen = generator(splits)
    vocab = 3001
    logits = torch.cat([torch.randn(4, vocab, generator=gen) * 3, tied_logits(4, vocab, gen), edge_logits(vocab, gen)])
    logits = logits.to(dtype).to(device)
    filters = random_filters(len(logits), vocab, gen)
    filters.temperature[-8:] = 1.0  # the edge rows sampled, not greedy
    params = ops.row_parameters(logits, *(v.to(device) for v in dataclasses.astuple(filters)))
    seeds = torch.randint(-(2**63), 2**63 - 1, (len(logits),), generator=gen).to(device)
    single = fused_draw(backend, logits, params, seeds, splits=1, write_mask=True)
    assert_same_draws(
        single, fused_draw(backend, logits, params, seeds, splits=splits, write_mask=True), f"{splits} splits"
    )
    want = reference.filter_logits(logits, *params) > -INF
    assert torch.equal(single[2], want), "the single program's kept set differs from the reference"


@pytest.mark.parametrize("filters", [Filters(0.8, 50, 0.9, 0.01), Filters(1.0, None, 0.95)])
def test_split_rows_at_batch_one_large_vocabulary(backend, device, filters):
    """The case the split path is for: one row of 128,256 tokens (bfloat16) over 16 programs."""
    gen = generator(14)
    logits = (torch.randn(1, 128256, generator=gen) * 2.5).bfloat16().to(device)
    params = ops.row_parameters(logits, **filters.options())
    for seed in (0, -(2**40)):
        seeds = torch.tensor([seed], device=device)
        single = fused_draw(backend, logits, params, seeds, splits=1, write_mask=seed == 0)
        split = fused_draw(backend, logits, params, seeds, splits=16, write_mask=seed == 0)
        assert_same_draws(single, split, f"{filters}, seed {seed}")


def ordered_key(value: float) -> int:
    """kernels/sampling.py's int32 key of a float32 (integer order = float order)."""
    bits = torch.tensor([value], dtype=torch.float32).view(torch.int32).item()
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def from_key(key: int) -> float:
    bits = key ^ ((key >> 31) & 0x7FFFFFFF)
    return torch.tensor([bits], dtype=torch.int32).view(torch.float32).item()


def slowest_search_values(low: float, high: float, threshold: float) -> list[float]:
    """float32 values for which the bracket search from [key(low), key(high) + 1) to the key of
    ``threshold`` takes all SEARCH_STEPS passes: at every pass, the bucket holding the threshold gets a
    value at each of its ends, so snapping to the row's keys cannot shrink it faster than the pivots do."""
    from fastattn.kernels.sampling import PIVOTS

    lo, hi, target = ordered_key(low), ordered_key(high) + 1, ordered_key(threshold)
    keys = {lo, hi - 1, target}
    while hi - lo > 1 and target > lo:
        width = hi - lo - 1
        pivots = [lo + 1 + width * s // PIVOTS for s in range(PIVOTS)] + [hi]
        bucket = max(s for s in range(PIVOTS) if pivots[s] <= target)
        lo, hi = pivots[bucket], pivots[bucket + 1]
        keys |= {lo, hi - 1}
    return [from_key(key) for key in sorted(keys)]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # z - m of -3.4e38 - 3.4e38
def test_split_rows_with_searches_of_eight_passes(backend, device):
    """Rows built so that the top-k and the top-p searches each take all 8 passes (the split path runs a
    fixed 8 steps per search): both paths keep exactly the reference's set and draw the same tokens."""
    vocab = 1000
    gen = generator(15)
    top_k_values = slowest_search_values(-3.4e38, 3.4e38, 0.36)
    top_p_values = slowest_search_values(-80.0, 1.0, 0.36)  # exp(z - m) stays far above float64's floor
    logits = torch.tensor([[-3.4e38] * vocab, [-80.0] * vocab])  # the rest at the lowest key: no pivot's count
    for row, values in enumerate((top_k_values, top_p_values)):
        logits[row, torch.randperm(vocab, generator=gen)[: len(values)]] = torch.tensor(values)
    threshold = torch.tensor(0.36).item()  # as float32: the floor of either bracket reaches it at the 8th pass
    top_k = sum(value >= threshold for value in top_k_values)
    masses = torch.exp(logits[1].double() - 1.0)  # exp(z - m), m = 1
    at_or_above = masses[logits[1] >= threshold].sum().item()
    top_p = (at_or_above - math.exp(threshold - 1.0) / 2) / masses.sum().item()  # the threshold token crosses p
    logits = logits.to(device)
    params = ops.row_parameters(
        logits, 1.0, torch.tensor([top_k, vocab]).to(device), torch.tensor([1.0, top_p]).to(device)
    )
    want = reference.filter_logits(logits, *params) > -INF
    assert want.sum(-1).tolist() == [top_k, sum(value >= threshold for value in top_p_values)]
    seeds = torch.tensor([3, 4], device=device)
    single = fused_draw(backend, logits, params, seeds, splits=1, write_mask=True)
    assert torch.equal(single[2], want), "the single program's kept set differs from the reference"
    assert_same_draws(single, fused_draw(backend, logits, params, seeds, splits=4, write_mask=True), "4 splits")


def test_split_count_heuristic():
    """Programs per row: enough to fill the SMs at small batch, never slices under MIN_SPLIT_TOKENS."""
    from fastattn.kernels.sampling import split_count

    h100 = 132
    cases = {(1, 128256): 16, (1, 262144): 32, (8, 128256): 16, (64, 128256): 2, (128, 128256): 1}
    cases |= {(1, 32000): 4, (1, 8191): 1, (1, 4096): 1, (2, 50257): 8}
    got = {shape: split_count(*shape, h100) for shape in cases}
    assert got == cases


def test_split_count_must_be_a_power_of_two():
    from fastattn.kernels import sampling as kernels

    logits = torch.randn(2, 100)
    params = ops.row_parameters(logits)
    for bad in (0, 3, -2, 2.0):
        with pytest.raises(ValueError, match="splits must be a power of two"):
            kernels.filter_mask(logits, *params, splits=bad)


# ------------------------------------------------------------------------------- distribution
# Each case: DRAWS draws of one row (distinct seeds), Pearson's chi-square over the kept tokens against
# the exact renormalized probabilities; it fails when the p-value is below P_VALUE_THRESHOLD = 1e-6
# (a correct sampler fails a given case with probability 1e-6), or when a filtered token is drawn.
# The rows keep every expected count above 5 (the chi-square approximation's rule of thumb).
DISTRIBUTION_CASES = {
    "plain V=16": (lambda g: torch.randn(16, generator=g), Filters()),
    "T=0.7 top_k=6 with ties": (
        lambda g: torch.tensor([2.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.0, -1.0, 3.0]),
        Filters(0.7, 6),
    ),
    "top_p=0.8 min_p=0.02 V=32": (lambda g: torch.randn(32, generator=g) * 1.5, Filters(1.0, None, 0.8, 0.02)),
    "+inf entries": (lambda g: torch.tensor([0.0, INF, 5.0, INF, -INF, INF, 1.0]), Filters(top_k=2)),
}


@pytest.mark.parametrize("case", list(DISTRIBUTION_CASES))
def test_draws_follow_the_kept_distribution(backend, device, case):
    make, filters = DISTRIBUTION_CASES[case]
    row = make(generator(11)).to(device)
    probs = verify_sampling.exact_probabilities(row.cpu(), filters)
    assert (probs[probs > 0] * DRAWS).min() >= 5, "the case breaks the chi-square's rule of thumb"
    result = draw_test(backend, row, filters.on(device), DRAWS, first_seed=1000)
    assert P_VALUE_THRESHOLD == 1e-6
    assert result.ok, f"{case}: {result}"


def test_chi_square_detects_a_biased_sampler():
    """The test has power: 10^5 draws from a distribution whose most likely token is 5% (relative) too
    likely fail it; 10^5 fair draws pass."""
    probs = torch.softmax(torch.randn(16, generator=generator(2)).double(), dim=-1)
    top, second = probs.topk(2).indices.tolist()
    biased = probs.clone()
    biased[top] *= 1.05
    biased[second] -= biased[top] - probs[top]
    draws = 10**5

    def counts(distribution, seed):
        drawn = torch.multinomial(distribution, draws, replacement=True, generator=generator(seed))
        return torch.bincount(drawn, minlength=16)

    assert chi_square(counts(biased, 3), probs)[2] < P_VALUE_THRESHOLD
    assert chi_square(counts(probs, 4), probs)[2] > P_VALUE_THRESHOLD


def test_filtered_tokens_are_never_drawn(backend, device):
    gen = generator(5)
    batch, vocab = 4000, 40
    logits = torch.randn(batch, vocab, generator=gen) * 3
    logits[::2] = tied_logits(batch // 2, vocab, gen)
    filters = random_filters(batch, vocab, gen)
    mask = kept(logits, **filters.options())
    options = filters.on(device).options()
    seeds = torch.arange(batch, device=device)
    tokens = fastattn.sample(logits.to(device), **options, seed=seeds, backend=backend).cpu()
    assert (tokens >= 0).all()
    assert mask.gather(1, tokens[:, None]).all(), "a filtered token was drawn"


# --------------------------------------------------------------------- the stream, reproducibility
def test_same_tokens_as_the_reference(backend, device):
    """The kernel draws the documented stream: the same tokens as the reference, row for row (the
    float32 logs may differ by an ulp between implementations: only exact near-ties could differ)."""
    gen = generator(6)
    batch, vocab = 300, 500
    logits = torch.randn(batch, vocab, generator=gen) * 2
    filters = random_filters(batch, vocab, gen)
    seeds = torch.randint(-(2**62), 2**62, (batch,), generator=gen)
    want, want_lp = reference.sample(logits, **filters.options(), seed=seeds, return_logprobs=True)
    options = filters.on(device).options()
    got, got_lp = fastattn.sample(
        logits.to(device), **options, seed=seeds.to(device), return_logprobs=True, backend=backend
    )
    assert torch.equal(got.cpu(), want), f"{int((got.cpu() != want).sum())} of {batch} tokens differ"
    torch.testing.assert_close(got_lp.cpu(), want_lp, rtol=1e-5, atol=2e-5)


def test_same_seed_same_tokens_across_batches_and_positions(backend, device):
    gen = generator(7)
    vocab = 200
    logits = torch.randn(9, vocab, generator=gen).to(device)
    seeds = torch.arange(100, 109, device=device)
    options = dict(top_k=50, top_p=0.95, backend=backend)
    tokens = fastattn.sample(logits, seed=seeds, **options)
    assert torch.equal(tokens, fastattn.sample(logits, seed=seeds, **options)), "not repeatable"
    for row in (0, 4, 8):
        alone = fastattn.sample(logits[row], seed=seeds[row : row + 1], **options)
        assert alone.dim() == 0 and int(alone) == int(tokens[row])
    order = torch.randperm(9, generator=gen).to(device)
    assert torch.equal(fastattn.sample(logits[order], seed=seeds[order], **options), tokens[order])
    big = torch.cat([torch.randn(40, vocab, generator=gen).to(device), logits])
    big_seeds = torch.cat([torch.arange(40, device=device), seeds])
    assert torch.equal(fastattn.sample(big, seed=big_seeds, **options)[40:], tokens)
    # an int seed is every row's seed
    assert torch.equal(
        fastattn.sample(logits, seed=5, **options),
        fastattn.sample(logits, seed=torch.full((9,), 5, device=device), **options),
    )


def test_generator_and_default_seeds(backend, device):
    logits = torch.randn(64, 100, generator=generator(8)).to(device)
    gen_device = "cuda" if GPU else "cpu"
    first = fastattn.sample(logits, generator=torch.Generator(gen_device).manual_seed(3), backend=backend)
    again = fastattn.sample(logits, generator=torch.Generator(gen_device).manual_seed(3), backend=backend)
    other = fastattn.sample(logits, generator=torch.Generator(gen_device).manual_seed(4), backend=backend)
    assert torch.equal(first, again) and not torch.equal(first, other)
    torch.manual_seed(123)
    one = fastattn.sample(logits, backend=backend)
    torch.manual_seed(123)
    assert torch.equal(one, fastattn.sample(logits, backend=backend))


# ------------------------------------------------------------------ special rows, log-probs, dtypes
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # 3e38 / 1e-3, on purpose
def test_special_rows(backend, device):
    logits = torch.tensor(
        [
            [0.0, 2.0, 2.0, 1.0],  # greedy: the first maximum
            [0.0, math.nan, 1.0, 2.0],  # NaN
            [-INF, -INF, -INF, -INF],  # nothing finite
            [1.0, INF, 3.0, INF],  # +inf entries win, uniformly
            [-INF, 0.5, -INF, -INF],  # one finite logit
            [3.0e38, -3.0e38, 1.0, 0.0],  # huge magnitudes
        ]
    ).to(device)
    temperature = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 1e-3], device=device)
    tokens, logprobs = fastattn.sample(
        logits, temperature=temperature, seed=torch.arange(6, device=device), return_logprobs=True, backend=backend
    )
    tokens, logprobs = tokens.tolist(), logprobs.cpu()
    assert tokens[0] == 1 and logprobs[0] == 0.0
    assert tokens[1] == -1 and tokens[2] == -1 and logprobs[1:3].isnan().all()
    assert tokens[3] in (1, 3) and abs(float(logprobs[3]) - math.log(0.5)) < 1e-6
    assert tokens[4] == 1 and float(logprobs[4]) == 0.0
    assert tokens[5] == 0
    seeds = torch.arange(400, device=device)
    inf_tokens = fastattn.sample(logits[3].expand(400, 4), seed=seeds, backend=backend)
    assert set(inf_tokens.tolist()) == {1, 3}


def test_greedy_rows_mixed_with_sampled_rows(backend, device):
    gen = generator(9)
    logits = torch.randn(32, 50, generator=gen)
    logits[::4, 7] = logits[::4].max(dim=-1).values + 1
    logits[::4, 30] = logits[::4, 7]  # a tie: the lower index wins
    temperature = torch.ones(32)
    temperature[::4] = 0.0
    tokens = fastattn.sample(
        logits.to(device),
        temperature=temperature.to(device),
        top_k=10,
        seed=torch.arange(32, device=device),
        backend=backend,
    ).cpu()
    assert (tokens[::4] == 7).all()
    want = reference.sample(logits, temperature=temperature, top_k=10, seed=torch.arange(32))
    assert torch.equal(tokens, want)


def test_logprobs_match_the_filtered_distribution(backend, device):
    gen = generator(10)
    logits = torch.randn(50, 80, generator=gen) * 2
    tokens, logprobs = fastattn.sample(
        logits.to(device),
        temperature=0.8,
        top_k=30,
        top_p=0.9,
        min_p=0.01,
        seed=3,
        return_logprobs=True,
        backend=backend,
    )
    assert tokens.dtype == torch.int64 and logprobs.dtype == torch.float32
    filtered = reference.filter_logits(logits, 0.8, 30, 0.9, 0.01)
    exact = torch.log_softmax(filtered.double(), dim=-1).gather(1, tokens.cpu()[:, None]).squeeze(1)
    torch.testing.assert_close(logprobs.cpu().double(), exact, rtol=1e-5, atol=2e-5)


def test_vector_input_gives_0d_outputs(backend, device):
    logits = torch.randn(30, device=device)
    token, logprob = fastattn.sample(logits, top_k=3, seed=1, return_logprobs=True, backend=backend)
    assert token.shape == () and logprob.shape == () and token.dtype == torch.int64
    assert fastattn.sample(torch.tensor([0.3], device=device), seed=2, backend=backend).item() == 0  # V = 1
    one = torch.tensor(1, device=device)
    per_row = fastattn.sample(logits, top_k=torch.tensor([3], device=device), seed=one, backend=backend)
    assert per_row.shape == () and int(per_row) == int(token)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes_and_strides(backend, device, dtype):
    gen = generator(12)
    logits = (torch.randn(40, 150, generator=gen) * 3).to(dtype)
    seeds = torch.arange(40)
    want = reference.sample(logits, top_k=20, top_p=0.9, seed=seeds)
    wide = torch.zeros(40, 300, dtype=dtype)
    wide[:, 7:157] = logits  # a row stride of 300
    options = dict(top_k=20, top_p=0.9, seed=seeds.to(device), backend=backend)
    assert torch.equal(fastattn.sample(wide.to(device)[:, 7:157], **options).cpu(), want)
    transposed = logits.t().contiguous().to(device).t()  # last dimension not contiguous
    assert torch.equal(fastattn.sample(transposed, **options).cpu(), want)


@pytest.mark.slow
def test_offsets_beyond_2_31_elements(backend, device):
    batch, vocab = 8200, 262144  # 2.15e9 elements
    logits = torch.zeros(batch, vocab, dtype=torch.float16, device=device)
    logits[-1, 1234] = 10.0
    logits[-1, 99] = 9.0
    tokens = fastattn.sample(logits, temperature=0.0, backend=backend)
    assert int(tokens[-1]) == 1234 and int(tokens[0]) == 0
    tokens = fastattn.sample(logits, top_k=2, seed=0, backend=backend)
    assert int(tokens[-1]) in (1234, 99)


# ------------------------------------------------------------------------------- bad input, ops
BAD_INPUTS = [
    (dict(top_k=0), ValueError, "top_k"),
    (dict(top_k=-3), ValueError, "top_k"),
    (dict(top_k=2.5), TypeError, "top_k"),
    (dict(top_k=True), TypeError, "top_k"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(top_p=math.nan), ValueError, "top_p"),
    (dict(min_p=-0.1), ValueError, "min_p"),
    (dict(min_p=1.01), ValueError, "min_p"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=math.inf), ValueError, "temperature"),
    (dict(temperature=1e39), ValueError, "temperature"),  # inf in float32
    (dict(temperature="hot"), TypeError, "temperature"),
    (dict(top_k=torch.tensor([1, 0, 2])), ValueError, "top_k"),
    (dict(top_k=torch.tensor([1.0, 2.0, 3.0])), TypeError, "top_k"),
    (dict(top_p=torch.tensor([0.5, 1.2, 0.5])), ValueError, "top_p"),
    (dict(min_p=torch.tensor([0.5, -1.0, 0.5])), ValueError, "min_p"),
    (dict(temperature=torch.tensor([1.0, -0.5, 1.0])), ValueError, "temperature"),
    (dict(temperature=torch.ones(4)), ValueError, "temperature"),
    (dict(top_p=torch.ones(3, 1)), ValueError, "top_p"),
    (dict(min_p=torch.zeros(3, device="meta")), ValueError, "min_p"),
    (dict(top_k=torch.ones(3, dtype=torch.int64, device="meta")), ValueError, "top_k"),
    (dict(seed=torch.zeros(3, device="meta", dtype=torch.int64)), ValueError, "seed"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(seed=torch.zeros(2, dtype=torch.int64)), ValueError, "seed"),
    (dict(seed=1, generator=torch.Generator()), ValueError, "seed or generator"),
    (dict(backend="fast"), ValueError, "backend"),
]


@pytest.mark.parametrize("index", range(len(BAD_INPUTS)))
def test_bad_input_names_the_argument(index):
    kwargs, error, name = BAD_INPUTS[index]
    with pytest.raises(error, match=name):
        fastattn.sample(torch.randn(3, 10), **kwargs)


def test_bad_logits():
    with pytest.raises(TypeError, match="logits"):
        fastattn.sample(torch.randint(0, 5, (3, 10)))
    with pytest.raises(ValueError, match="logits"):
        fastattn.sample(torch.randn(3, 0))
    with pytest.raises(ValueError, match="logits"):
        fastattn.sample(torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="logits"):
        fastattn.sample([0.1, 0.2])


def test_backend_choice():
    logits = torch.randn(2, 10, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="cuda: "):
        fastattn.sample(logits.float(), backend="cuda")
    with pytest.raises(NotImplementedError, match="dtype torch.float64"):
        fastattn.sample(logits, backend="triton")
    tokens = fastattn.sample(logits, seed=torch.arange(2))  # auto falls back to torch for float64
    assert torch.equal(tokens, reference.sample(logits, seed=torch.arange(2)))
    assert torch.equal(
        fastattn.sample(logits, seed=1, backend="torch"), fastattn.sample(logits, seed=1, backend="naive")
    )


def test_empty_batch(backend, device):
    empty = torch.randn(0, 10, device=device)
    tokens, logprobs = fastattn.sample(empty, return_logprobs=True, backend=backend)
    assert tokens.shape == (0,) and logprobs.shape == (0,)


def test_opcheck(backend, device):
    if backend != "triton":
        pytest.skip("the custom op under test is the Triton one")
    gen = generator(13)
    logits = torch.randn(5, 40, generator=gen).to(device)
    params = ops.row_parameters(logits, torch.tensor([1.0, 0.0, 0.5, 2.0, 1.0]).to(device), 10, 0.9, 0.05)
    seeds = torch.arange(5, device=device)
    strided = torch.randn(40, 5, generator=gen).to(device).t()  # last dimension not contiguous
    for x in (logits, strided, logits[:, ::2]):
        for return_logprobs in (False, True):
            torch.library.opcheck(ops._sample_triton, (x, *params, seeds, return_logprobs))


def test_verify_cases(backend, device):
    """The cases of ``python -m fastattn verify`` pass (the small set; the GPU sizes run there)."""
    for case in verify_sampling.cases(torch.device(device), full=False):
        row = case.run(backend, torch.device(device))
        assert row.ok, f"{row.case} ({row.dtype}): {row.detail}"
    with pytest.raises(NotImplementedError):
        verify_sampling.cases(torch.device(device), full=False)[0].run("naive", torch.device(device))
