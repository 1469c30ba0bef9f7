// Routed-expert SwiGLU for a few tokens, reading each chosen expert's weights in place.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "grouped_matmul.h"
#include "vector_math.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using omni::Group;
using omni::Pairs;
using omni::exp16;
using omni::v16;

namespace {

// act[n] = silu(h[n]) * h[I + n] for n < I (gate = first I columns of h)
void swiglu_row(const float* h, long I, float* act) {
  long n = 0;
  for (; n + 16 <= I; n += 16) {
    const v16 g = *(const v16*)(h + n), u = *(const v16*)(h + I + n);
    *(v16*)(act + n) = g / (1.f + exp16(-g)) * u;
  }
  for (; n < I; ++n) act[n] = h[n] / (1.f + std::exp(-h[n])) * h[I + n];
}

ffi::Error MoeExpertsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> weights, ffi::Buffer<ffi::S32> experts,
                          ffi::Buffer<ffi::F32> gate_up, ffi::Buffer<ffi::F32> down,
                          ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions();
  const auto ed = experts.dimensions();
  const auto gd = gate_up.dimensions();
  const long T = xd[0], H = xd[1], Kslots = ed[1], S = gd[0], I2 = gd[2], I = I2 / 2;
  const float* xp = x.typed_data();
  const float* wp = weights.typed_data();
  const int32_t* ep = experts.typed_data();
  const bool large = T * Kslots * (H * I2 + I * H) * (long)sizeof(float) >= omni::kHandOffBytes;
  omni::run_on_intra_op_thread(pool, large, [&] {
    Pairs sorted;  // (expert, slot row t*K+k) for the slots with a nonzero weight
    for (long a = 0; a < T * Kslots; ++a) {
      if (wp[a] == 0.f) continue;
      const long e = std::min<long>(std::max<long>(ep[a], 0), S - 1);
      sorted.push_back({e, a});
    }
    std::sort(sorted.begin(), sorted.end());
    const std::vector<Group> groups = omni::make_groups(sorted);
    // per-slot rows; only the nonzero-weight slots' rows are written and read
    std::unique_ptr<float[]> h(new float[(size_t)T * Kslots * I2]), act(new float[(size_t)T * Kslots * I]),
        o(new float[(size_t)T * Kslots * H]);
    omni::grouped_matmul(pool, sorted, groups, xp, Kslots, H, gate_up.typed_data(), H, I2, h.get(), I2);
    omni::parallel_for(pool, (long)sorted.size(), [&](long i) {
      swiglu_row(h.get() + sorted[i].second * I2, I, act.get() + sorted[i].second * I);
    });
    omni::grouped_matmul(pool, sorted, groups, act.get(), 1, I, down.typed_data(), I, H, o.get(), H);
    float* yp = y->typed_data();
    omni::parallel_for(pool, T, [&](long t) {
      float* yr = yp + t * H;
      std::fill(yr, yr + H, 0.f);
      for (long k = 0; k < Kslots; ++k) {
        const float w = wp[t * Kslots + k];
        if (w == 0.f) continue;
        const float* orow = o.get() + (t * Kslots + k) * H;
        for (long n = 0; n < H; ++n) yr[n] += w * orow[n];
      }
    });
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OmniMoeExperts, MoeExpertsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
