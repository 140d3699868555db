// Launchers of the sampling kernels: one block per row (sample_kernel), or `splits` blocks per row (the
// split path: a fixed sequence of launches). Up to 512 threads a block (fewer for short rows).
#include <algorithm>

#include "sampling/sampling_kernels.cuh"

namespace fastattn {

namespace {

// Threads of a block that streams `tokens` tokens per pass. Each search pass costs ~16 compares (top-k)
// or a float64 exp and 16 adds (top-p) per token: 512 threads keep a 128k-token row at ~256 tokens a
// thread per pass.
int64_t block_threads(int64_t tokens) {
  return std::min<int64_t>(sampling::kMaxThreads,
                           std::max<int64_t>(kWarpSize, ceil_div(ceil_div(tokens, 8), kWarpSize) * kWarpSize));
}

// Tokens per slice: a multiple of 32, so each slice starts a warp's loads at a multiple of 32 tokens.
int64_t split_length(int64_t vocab, int64_t splits) {
  return ceil_div(ceil_div(vocab, splits), kWarpSize) * kWarpSize;
}

// Byte offsets of the workspace's arrays (each at a multiple of 256 bytes) and its size.
struct SplitLayout {
  size_t stats, counts, masses, states, draws, bytes;
};

SplitLayout split_layout(int64_t rows, int64_t splits) {
  constexpr size_t kAlign = 256;
  size_t end = 0;
  const auto place = [&end](size_t bytes) {
    const size_t at = end;
    end += (bytes + kAlign - 1) / kAlign * kAlign;
    return at;
  };
  const size_t row_splits = size_t(rows) * size_t(splits), parities = 2;
  SplitLayout layout{};
  layout.stats = place(row_splits * sizeof(sampling::RowStats));
  layout.counts = place(parities * row_splits * sampling::kPivots * sizeof(int32_t));
  layout.masses = place(parities * row_splits * sampling::kSums * sizeof(double));
  layout.states = place(parities * size_t(rows) * sizeof(sampling::SearchState));
  layout.draws = place(row_splits * sizeof(sampling::Draw));
  layout.bytes = end;
  return layout;
}

cudaError_t launch_split(const SampleParams& p, cudaStream_t stream) {
  const SplitLayout layout = split_layout(p.rows, p.splits);
  char* const base = static_cast<char*>(p.workspace);
  sampling::SplitArgs a{};
  a.p = p;
  a.ws.stats = reinterpret_cast<sampling::RowStats*>(base + layout.stats);
  a.ws.counts = reinterpret_cast<int32_t*>(base + layout.counts);
  a.ws.masses = reinterpret_cast<double*>(base + layout.masses);
  a.ws.states = reinterpret_cast<sampling::SearchState*>(base + layout.states);
  a.ws.draws = reinterpret_cast<sampling::Draw*>(base + layout.draws);
  a.split_length = split_length(p.vocab, p.splits);
  const unsigned threads = unsigned(block_threads(a.split_length));
  const dim3 grid(unsigned(p.splits), unsigned(std::min<int64_t>(p.rows, 65535)));
  sampling::sample_stats_kernel<<<grid, threads, 0, stream>>>(a);
  cudaError_t err = cudaGetLastError();
  for (a.step = 0; a.step < sampling::kSteps && err == cudaSuccess; ++a.step) {
    sampling::sample_step_kernel<<<grid, threads, 0, stream>>>(a);
    err = cudaGetLastError();
  }
  if (err != cudaSuccess) return err;
  sampling::sample_draw_kernel<<<grid, threads, 0, stream>>>(a);
  err = cudaGetLastError();
  if (err != cudaSuccess || p.token == nullptr) return err;
  sampling::sample_merge_kernel<<<unsigned(std::min<int64_t>(p.rows, 2147483647)), kWarpSize, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_sample(const SampleParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  if (p.splits > 1) return launch_split(p, stream);
  const int64_t grid = std::min<int64_t>(p.rows, 2147483647);
  sampling::sample_kernel<<<unsigned(grid), unsigned(block_threads(p.vocab)), 0, stream>>>(p);
  return cudaGetLastError();
}

int sample_splits(int64_t rows, int64_t vocab, int sm_count) {
  const int64_t most = std::min({int64_t(kMaxSplits), sm_count / std::max<int64_t>(rows, 1), vocab / kMinSplitTokens});
  int splits = 1;
  while (2 * splits <= most) splits *= 2;
  return splits;
}

size_t split_workspace_bytes(int64_t rows, int splits) {
  return splits > 1 ? split_layout(rows, splits).bytes : 0;
}

}  // namespace fastattn
