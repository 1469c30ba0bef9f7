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

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OmniMatmul, MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
