// y = x @ w for a few rows of x, w read in place: XLA:CPU's own dot reaches ~17 GB/s on one row and
// ~7 GB/s on 25 rows (its GEMM blocking is made for tall inputs); this streams w at memory bandwidth.
#include <algorithm>
#include <vector>

#include "grouped_matmul.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// out = x @ w for every matrix of `mats` (x [M, K] row-major): up to stream_rows() rows stream every weight in
// one parallel loop, more rows multiply the weights one at a time (register tiles).
void multiply(ffi::ThreadPool& pool, const float* x, long M, long K, const std::vector<omni::Matrix>& mats) {
  if (M == 0) return;
  if (M <= omni::stream_rows()) {
    long columns = 0;
    for (const omni::Matrix& m : mats) columns += m.n;
    omni::run_on_intra_op_thread(pool, K * columns * (long)sizeof(float) >= omni::kHandOffBytes,
                                 [&] { omni::stream_matmuls(pool, x, M, K, mats); });
    return;
  }
  omni::Pairs rows;
  rows.reserve(M);
  for (long r = 0; r < M; ++r) rows.push_back({0, r});
  const std::vector<omni::Group> groups = omni::make_groups(rows);
  for (const omni::Matrix& m : mats) {
    if (m.n == 0) continue;
    if (K == 0) {
      std::fill(m.out, m.out + M * m.n, 0.f);
      continue;
    }
    omni::grouped_matmul(pool, rows, groups, x, 1, K, m.w, K, m.n, m.out, m.n);
  }
}

ffi::Error MatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y) {
  multiply(pool, x.typed_data(), x.dimensions()[0], x.dimensions()[1], {{w.typed_data(), w.dimensions()[1], y->typed_data()}});
  return ffi::Error::Success();
}

// y_i = x @ w_i for several weights w_i [K, N_i] that read the same rows (a layer's q/k/v projections)
ffi::Error MatmulSharedImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::RemainingArgs ws, ffi::RemainingRets ys) {
  const long M = x.dimensions()[0], K = x.dimensions()[1];
  if (ws.size() != ys.size()) return ffi::Error::InvalidArgument("OmniMatmulShared: one result per weight");
  std::vector<omni::Matrix> mats;
  for (size_t i = 0; i < ws.size(); ++i) {
    auto w = ws.get<ffi::Buffer<ffi::F32>>(i);
    auto y = ys.get<ffi::Buffer<ffi::F32>>(i);
    if (!w.has_value()) return w.error();
    if (!y.has_value()) return y.error();
    if (w->dimensions()[0] != K) return ffi::Error::InvalidArgument("OmniMatmulShared: weights' rows != x's columns");
    mats.push_back({w->typed_data(), w->dimensions()[1], (*y)->typed_data()});
  }
  multiply(pool, x.typed_data(), M, K, mats);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OmniMatmulShared, MatmulSharedImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .RemainingRets());

XLA_FFI_DEFINE_HANDLER_SYMBOL(OmniMatmul, MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
