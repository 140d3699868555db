// Runs csrc/norm's forward and backward on the host (fakecuda.h), filling the params as csrc/norm/norm.cpp
// does, for test_cuda_emulated.py.
//
// stdin:  NormCase, then the buffers: x, residual (if any), weight (if any), bias (if any), dy, ds (if a
//         residual), each in its dtype; x and residual as (offset + (rows - 1) * row_stride + cols)
//         elements, row r starting at offset + r * row_stride; the others contiguous.
// stdout: NormResult, then y, s (if a residual), mean (LayerNorm), rstd, dx, dresidual (if a residual),
//         dweight (if a weight), dbias (if a bias), contiguous, each in the dtype of its input.
#include <cstdio>

#include "fakecuda.h"
#include "norm/norm_launch.cu"  // the test's rewritten copy (its -I comes before csrc's)

using namespace fastattn;

namespace {

constexpr int64_t kAbsent = -1;  // dtype of a tensor the case has not

struct NormCase {
  int64_t rms, rows, cols;
  int64_t x_dtype, x_offset, x_row_stride;
  int64_t residual_dtype, residual_offset, residual_row_stride;
  int64_t weight_dtype, bias_dtype, s_dtype;  // s: the stored x + residual
  int64_t sm_count;                           // sizes the dW/dB splits
  double eps;
};

struct NormResult {
  int64_t vec_fwd, vec_bwd, splits;
};

// Storage 16-byte aligned at its start, as CUDA allocations are; all-ones bytes (NaN in every float
// dtype) where nothing is written.
struct Buffer {
  std::vector<uint4> storage;
  Buffer(int64_t dtype, int64_t elements)
      : storage(size_t(elements * dtype_size(DType(dtype)) + 15) / 16, uint4{~0u, ~0u, ~0u, ~0u}) {}
  void* data() { return storage.data(); }
};

Buffer read_buffer(int64_t dtype, int64_t elements) {
  Buffer buffer(dtype, elements);
  const size_t bytes = size_t(elements * dtype_size(DType(dtype)));
  if (std::fread(buffer.data(), 1, bytes, stdin) != bytes) fakecuda::fail("short read from stdin");
  return buffer;
}

void write_buffer(const void* data, int64_t dtype, int64_t elements) {
  std::fwrite(data, 1, size_t(elements * dtype_size(DType(dtype))), stdout);
}

void* element(Buffer& buffer, int64_t dtype, int64_t offset) {
  return static_cast<char*>(buffer.data()) + offset * dtype_size(DType(dtype));
}

// As norm.cpp's rows_vectorizable: every row can be read with 16-byte accesses.
bool rows_vectorizable(const void* data, int64_t dtype, int64_t row_stride) {
  return reinterpret_cast<uintptr_t>(data) % 16 == 0 && (row_stride * dtype_size(DType(dtype))) % 16 == 0;
}

}  // namespace

int main() {
  NormCase c;
  if (std::fread(&c, sizeof c, 1, stdin) != 1) fakecuda::fail("short read from stdin");
  const bool has_residual = c.residual_dtype != kAbsent, has_weight = c.weight_dtype != kAbsent;
  const bool has_bias = c.bias_dtype != kAbsent;
  const int64_t rows = c.rows, cols = c.cols, elements = rows * cols;
  const int64_t x_stride = rows > 1 ? c.x_row_stride : cols;  // norm.cpp's row_stride()
  const int64_t residual_stride = rows > 1 ? c.residual_row_stride : cols;
  const auto strided_size = [&](int64_t offset, int64_t stride) { return offset + (rows - 1) * stride + cols; };

  Buffer x = read_buffer(c.x_dtype, strided_size(c.x_offset, c.x_row_stride));
  Buffer residual = has_residual ? read_buffer(c.residual_dtype, strided_size(c.residual_offset, c.residual_row_stride))
                                 : Buffer(0, 0);
  Buffer weight = has_weight ? read_buffer(c.weight_dtype, cols) : Buffer(0, 0);
  Buffer bias = has_bias ? read_buffer(c.bias_dtype, cols) : Buffer(0, 0);
  Buffer dy = read_buffer(c.x_dtype, elements);
  Buffer ds = has_residual ? read_buffer(c.s_dtype, elements) : Buffer(0, 0);
  void* x_rows = element(x, c.x_dtype, c.x_offset);
  void* residual_rows = has_residual ? element(residual, c.residual_dtype, c.residual_offset) : nullptr;

  Buffer y(c.x_dtype, elements), s(has_residual ? c.s_dtype : 0, has_residual ? elements : 0);
  std::vector<float> mean(rows), rstd(rows);
  NormFwdParams f{};
  f.x = x_rows;
  f.residual = residual_rows;
  f.weight = has_weight ? weight.data() : nullptr;
  f.bias = has_bias ? bias.data() : nullptr;
  f.y = y.data();
  f.residual_out = has_residual ? s.data() : nullptr;
  f.mean = c.rms ? nullptr : mean.data();
  f.rstd = rstd.data();
  f.rows = rows;
  f.cols = cols;
  f.x_row_stride = x_stride;
  f.residual_row_stride = has_residual ? residual_stride : 0;
  f.x_dtype = DType(c.x_dtype);
  f.residual_dtype = has_residual ? DType(c.residual_dtype) : f.x_dtype;
  f.residual_out_dtype = has_residual ? DType(c.s_dtype) : f.x_dtype;
  f.weight_dtype = has_weight ? DType(c.weight_dtype) : f.x_dtype;
  f.bias_dtype = has_bias ? DType(c.bias_dtype) : f.x_dtype;
  f.eps = float(c.eps);
  f.rms = c.rms;
  // Parameters and contiguous outputs are 16-byte aligned here: only x and residual decide.
  f.vec = cols % 8 == 0 && rows_vectorizable(x_rows, c.x_dtype, x_stride) &&
          (!has_residual || rows_vectorizable(residual_rows, c.residual_dtype, residual_stride));
  if (launch_norm_fwd(f, nullptr) != cudaSuccess) fakecuda::fail("launch_norm_fwd failed");

  // The backward as the op calls it: dresidual stored separately (the op does so when its dtype differs).
  Buffer dx(c.x_dtype, elements), dresidual(has_residual ? c.residual_dtype : 0, has_residual ? elements : 0);
  Buffer dweight(has_weight ? c.weight_dtype : 0, has_weight ? cols : 0);
  Buffer dbias(has_bias ? c.bias_dtype : 0, has_bias ? cols : 0);
  NormBwdParams b{};
  b.dy = dy.data();
  b.x = x_rows;
  b.residual = residual_rows;
  b.weight = f.weight;
  b.mean = f.mean;
  b.rstd = rstd.data();
  b.dresidual_out = has_residual ? ds.data() : nullptr;
  b.dx = dx.data();
  b.dresidual = has_residual ? dresidual.data() : nullptr;
  b.dweight = has_weight ? dweight.data() : nullptr;
  b.dbias = has_bias ? dbias.data() : nullptr;
  b.rows = rows;
  b.cols = cols;
  b.dy_row_stride = cols;
  b.x_row_stride = x_stride;
  b.residual_row_stride = f.residual_row_stride;
  b.dresidual_out_row_stride = has_residual ? cols : 0;
  b.dy_dtype = b.x_dtype = b.dx_dtype = f.x_dtype;
  b.residual_dtype = f.residual_dtype;
  b.weight_dtype = f.weight_dtype;
  b.bias_dtype = f.bias_dtype;
  b.dresidual_out_dtype = f.residual_out_dtype;
  b.rms = c.rms;
  b.vec = f.vec;
  std::vector<float> partial_dweight, partial_dbias;
  if (has_weight || has_bias) {
    b.splits = norm_bwd_splits(rows, cols, int(c.sm_count));
    b.rows_per_split = (rows + b.splits - 1) / b.splits;
    // NaN: a partial the kernels do not write poisons the sum
    if (has_weight) b.partial_dweight = (partial_dweight = std::vector<float>(size_t(b.splits * cols), NAN)).data();
    if (has_bias) b.partial_dbias = (partial_dbias = std::vector<float>(size_t(b.splits * cols), NAN)).data();
  }
  if (launch_norm_bwd(b, nullptr) != cudaSuccess) fakecuda::fail("launch_norm_bwd failed");

  const NormResult result{f.vec, b.vec, b.splits};
  std::fwrite(&result, sizeof result, 1, stdout);
  write_buffer(y.data(), c.x_dtype, elements);
  if (has_residual) write_buffer(s.data(), c.s_dtype, elements);
  if (!c.rms) write_buffer(mean.data(), int64_t(DType::kFloat32), rows);
  write_buffer(rstd.data(), int64_t(DType::kFloat32), rows);
  write_buffer(dx.data(), c.x_dtype, elements);
  if (has_residual) write_buffer(dresidual.data(), c.residual_dtype, elements);
  if (has_weight) write_buffer(dweight.data(), c.weight_dtype, cols);
  if (has_bias) write_buffer(dbias.data(), c.bias_dtype, cols);
  return 0;
}
