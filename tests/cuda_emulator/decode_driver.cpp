// Runs csrc/attention's split-KV decode kernels (attention_decode.cuh: split and merge) on the host
// (fakecuda.h), in every dtype, filling the params as csrc/attention/decode.cpp does and launching through
// its dispatcher (attention_decode.cu: launch_attention_decode), for test_cuda_emulated.py.
//
// stdin:  DecodeCase, then q ((B, Sq, Hq, D) contiguous, in `dtype`), k_cache and v_cache ((C0, C1, Hkv,
//         D) contiguous, in `dtype`), cache_rows (int32 (B,), if not paged) or block_table (int32 (B,
//         max_blocks), if paged), cache_total and cache_first (int32 (B,)), ALiBi slopes (float32 (Hq,)
//         or (B, Hq), if any).
// stdout: out ((B, Sq, Hq, D), in `dtype`), lse (float32 (B, Hq, Sq)).
#include <cstdio>

#include "driver_io.h"
#include "attention/attention_decode.cu"  // the dispatcher; it includes the test's rewritten attention_decode.cuh

using namespace fastattn;

namespace {

struct DecodeCase {
  int64_t batch, seq_q, heads_q, heads_kv, head_dim, dtype;
  int64_t cache0, cache1, paged, max_blocks, longest;
  int64_t causal, window_left, window_right, alibi_dims, num_splits, split_size;
  double scale, softcap;
};

}  // namespace

int main() {
  DecodeCase c;
  if (std::fread(&c, sizeof c, 1, stdin) != 1) fakecuda::fail("short read from stdin");
  const int64_t element = dtype_size(DType(c.dtype));
  const int64_t q_elems = c.batch * c.seq_q * c.heads_q * c.head_dim;
  const int64_t cache_elems = c.cache0 * c.cache1 * c.heads_kv * c.head_dim;
  const auto q = read_values<uint8_t>(q_elems * element);
  const auto k_cache = read_values<uint8_t>(cache_elems * element), v_cache = read_values<uint8_t>(cache_elems * element);
  const auto locate = read_values<int32_t>(c.paged ? c.batch * c.max_blocks : c.batch);
  const auto total = read_values<int32_t>(c.batch), first = read_values<int32_t>(c.batch);
  const auto alibi = read_values<float>(c.alibi_dims == 2 ? c.batch * c.heads_q : c.alibi_dims == 1 ? c.heads_q : 0);
  std::vector<uint8_t> out(size_t(q_elems * element), 0xFF);  // poisoned: what the kernels do not write shows
  std::vector<float> lse(size_t(c.batch * c.heads_q * c.seq_q), NAN);
  std::vector<float> out_part(size_t(c.batch * c.heads_q * c.num_splits * c.seq_q * c.head_dim), NAN);
  std::vector<float> lse_part(size_t(c.batch * c.heads_q * c.num_splits * c.seq_q), NAN);

  AttnParams p{};
  p.q = q.data(), p.k = k_cache.data(), p.v = v_cache.data(), p.out = out.data(), p.lse = lse.data();
  p.q_stride_h = c.head_dim, p.q_stride_n = c.heads_q * c.head_dim, p.q_stride_b = c.seq_q * p.q_stride_n;
  p.k_stride_h = c.head_dim, p.k_stride_n = c.heads_kv * c.head_dim, p.k_stride_b = c.cache1 * p.k_stride_n;
  p.v_stride_h = p.k_stride_h, p.v_stride_n = p.k_stride_n, p.v_stride_b = p.k_stride_b;
  p.o_stride_h = p.q_stride_h, p.o_stride_n = p.q_stride_n, p.o_stride_b = p.q_stride_b;
  p.batch = int(c.batch), p.heads_q = int(c.heads_q), p.heads_kv = int(c.heads_kv);
  p.group = p.heads_q / p.heads_kv;
  p.seq_q = int(c.seq_q), p.seq_k = int(c.longest), p.head_dim = int(c.head_dim);
  p.scale = float(c.scale), p.scale_log2 = float(c.scale * 1.4426950408889634);
  p.dtype = DType(c.dtype);
  set_band_and_softcap(p, c.causal != 0, c.window_left, c.window_right, c.softcap);
  p.alibi = c.alibi_dims ? alibi.data() : nullptr, p.alibi_stride_b = c.alibi_dims == 2 ? c.heads_q : 0;
  p.cache_rows = c.paged ? nullptr : locate.data();
  p.block_table = c.paged ? locate.data() : nullptr;
  p.block_table_stride = c.max_blocks;
  p.page_size = int(c.cache1);
  p.cache_total = total.data(), p.cache_first = first.data();
  p.num_splits = int(c.num_splits), p.split_size = int(c.split_size);
  p.out_part = out_part.data(), p.lse_part = lse_part.data();

  if (launch_attention_decode(p, nullptr) != cudaSuccess) fakecuda::fail("launch_attention_decode failed");
  write_values(out);
  write_values(lse);
  return 0;
}
