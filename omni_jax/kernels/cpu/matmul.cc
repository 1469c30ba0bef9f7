// y = x @ w for a few rows of x, w read in place: XLA:CPU's own dot reaches ~17 GB/s on one row and
// ~7 GB/s on 25 rows (its GEMM blocking is made for tall inputs); this streams w at memory bandwidth.
#include <algorithm>
#include <vector>

#include "grouped_matmul.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error MatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y) {
  const long M = x.dimensions()[0], K = x.dimensions()[1], N = w.dimensions()[1];
  if (M == 0 || N == 0) return ffi::Error::Success();
  omni::Pairs rows;
  rows.reserve(M);
  for (long m = 0; m < M; ++m) rows.push_back({0, m});
  if (K == 0) {
    float* yp = y->typed_data();
    std::fill(yp, yp + M * N, 0.f);
    return ffi::Error::Success();
  }
  omni::grouped_matmul(pool, rows, omni::make_groups(rows), x.typed_data(), 1, K, w.typed_data(), K, N, y->typed_data(), N);
  return ffi::Error::Success();
}

// y_i = x @ w_i for several weights w_i [K, N_i] that read the same rows (a layer's q/k/v projections): up to
// stream_rows() rows stream every weight in one parallel loop, more rows multiply the weights one at a time.
ffi::Error MatmulSharedImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::RemainingArgs ws, ffi::RemainingRets ys) {
  const long M = x.dimensions()[0], K = x.dimensions()[1];
  if (ws.size() != ys.size()) return ffi::Error::InvalidArgument("OmniMatmulShared: one result per weight");
  std::vector<omni::Matrix> mats;
  for (size_t i = 0; i < ws.size(); ++i) {
    auto w = ws.get<ffi::Buffer<ffi::F32>>(i);
    auto y = ys.get<ffi::Buffer<ffi::F32>>(i);
    if (!w.has_value()) return w.error();
    if (!y.has_value()) return y.error();
    const long N = w->dimensions()[1];
    if (w->dimensions()[0] != K) return ffi::Error::InvalidArgument("OmniMatmulShared: weights' rows != x's columns");
    mats.push_back({w->typed_data(), N, (*y)->typed_data()});
  }
  if (M == 0) return ffi::Error::Success();
  if (M <= omni::stream_rows()) {
    omni::stream_matmuls(pool, x.typed_data(), M, K, mats);
    return ffi::Error::Success();
  }
  for (const omni::Matrix& m : mats) {
    if (m.n == 0) continue;
    if (K == 0) {
      std::fill(m.out, m.out + M * m.n, 0.f);
      continue;
    }
    omni::Pairs rows;
    rows.reserve(M);
    for (long r = 0; r < M; ++r) rows.push_back({0, r});
    omni::grouped_matmul(pool, rows, omni::make_groups(rows), x.typed_data(), 1, K, m.w, K, m.n, m.out, m.n);
  }
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
