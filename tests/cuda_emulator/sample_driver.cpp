// Runs csrc/sampling's kernels on the host (fakecuda.h), filling the params as csrc/sampling/sampling.cpp
// does, for test_cuda_emulated.py.
//
// stdin:  SampleCase, then logits ((rows - 1) * row_stride + vocab elements of `dtype`), temperature
//         (float32), top_k (int32, in [1, vocab]), top_p (float64), min_p (float64), seeds (int64), one
//         per row.
// stdout: the blocks per row the kernels ran with (int64), tokens (int64) and log-probs (float32) per
//         row when `draw`, then the kept mask (int8, rows x vocab).
#include <cstdio>

#include "driver_io.h"
#include "fakecuda.h"
#include "sampling/sampling_launch.cu"  // the test's rewritten copy (its -I comes before csrc's)

using namespace fastattn;

namespace {

struct SampleCase {
  int64_t rows, vocab, row_stride, dtype, draw;
  int64_t splits;    // blocks per row, as _C.sample's argument: 0 = sample_splits(rows, vocab, sm_count)
  int64_t sm_count;  // of the GPU the choice is made for
};

}  // namespace

int main() {
  SampleCase c;
  if (std::fread(&c, sizeof c, 1, stdin) != 1) fakecuda::fail("short read from stdin");
  const auto logits = read_values<uint8_t>(((c.rows - 1) * c.row_stride + c.vocab) * dtype_size(DType(c.dtype)));
  const auto temperature = read_values<float>(c.rows);
  const auto top_k = read_values<int32_t>(c.rows);
  const auto top_p = read_values<double>(c.rows), min_p = read_values<double>(c.rows);
  const auto seeds = read_values<int64_t>(c.rows);
  const int splits = c.splits > 0 ? int(c.splits) : sample_splits(c.rows, c.vocab, int(c.sm_count));
  // Poisoned: what the kernels do not write shows, and so does what they read before writing.
  std::vector<int64_t> tokens(size_t(c.rows), -7);
  std::vector<float> logprobs(size_t(c.rows), NAN);
  std::vector<int8_t> mask(size_t(c.rows * c.vocab), -1);
  std::vector<uint8_t> workspace(split_workspace_bytes(c.rows, splits), 0xFF);

  SampleParams p{};
  p.logits = logits.data();
  p.temperature = temperature.data();
  p.top_k = top_k.data();
  p.top_p = top_p.data();
  p.min_p = min_p.data();
  p.seed = seeds.data();
  p.token = c.draw ? tokens.data() : nullptr;
  p.logprob = c.draw ? logprobs.data() : nullptr;
  p.mask = mask.data();
  p.workspace = workspace.data();
  p.rows = c.rows;
  p.row_stride = c.rows > 1 ? c.row_stride : c.vocab;
  p.vocab = int32_t(c.vocab);
  p.splits = splits;
  p.dtype = DType(c.dtype);
  if (launch_sample(p, nullptr) != cudaSuccess) fakecuda::fail("launch_sample failed");

  write_values(std::vector<int64_t>{splits});
  if (c.draw) {
    write_values(tokens);
    write_values(logprobs);
  }
  write_values(mask);
  return 0;
}
