// Attention of one query position per batch row against a layer of a stacked KV cache, read in place.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <vector>

#include "grouped_matmul.h"
#include "vector_math.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using omni::exp16;
using omni::v16;

namespace {

constexpr long kMaxGroup = 16;  // query heads per kv head this kernel takes

// sum of a v16's lanes
float lanes_sum(v16 a) {
  float s = 0.f;
  for (int i = 0; i < 16; ++i) s += a[i];
  return s;
}

#define OMNI_PAIR(a, b, ...) (__builtin_shufflevector(a, b, __VA_ARGS__))  // lanes picked from a (0-15), b (16-31)
// r[s] = sum of x[s]'s lanes for 16 vectors: each level adds the two halves of every vector's partial sums, two
// vectors per result, until each of the 16 lanes holds one vector's sum (15 shuffle pairs instead of 16 serial
// sums of 16 lanes)
v16 sums16(const v16* x) {
  v16 t[8], u[4], w[2];
  for (int i = 0; i < 8; ++i)
    t[i] = OMNI_PAIR(x[2 * i], x[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           OMNI_PAIR(x[2 * i], x[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  for (int i = 0; i < 4; ++i)
    u[i] = OMNI_PAIR(t[2 * i], t[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           OMNI_PAIR(t[2 * i], t[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  for (int i = 0; i < 2; ++i)
    w[i] = OMNI_PAIR(u[2 * i], u[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
           OMNI_PAIR(u[2 * i], u[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  return OMNI_PAIR(w[0], w[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         OMNI_PAIR(w[0], w[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}
#undef OMNI_PAIR

// o[g] = softmax_s(scale * q[g] . k[s], masked) @ v for the G query heads of one kv head; k, v: rows of D floats
// `stride` apart (S of them); scores: G x S scratch. Masked scores are the most negative float, as
// ops.attention's: a row with no visible key gets uniform weights.
void one_head(const float* q, long G, long D, const float* k, const float* v, long stride, long S,
              const bool* mask, float scale, float* scores, float* o) {
  const long dv = D / 16 * 16;
  auto dot = [&](const float* qg, const float* kr) {
    v16 acc = {};
    for (long d = 0; d < dv; d += 16) acc += *(const v16*)(qg + d) * *(const v16*)(kr + d);
    float r = lanes_sum(acc);
    for (long d = dv; d < D; ++d) r += qg[d] * kr[d];
    return r;
  };
  long s0 = 0;
  if (D == dv)  // 16 keys at a time: their 16 dot products' partial vectors summed by one shuffle tree
    for (; s0 + 16 <= S; s0 += 16)
      for (long g = 0; g < G; ++g) {
        const float* qg = q + g * D;
        v16 acc[16];
        for (int i = 0; i < 16; ++i) {
          const float* kr = k + (s0 + i) * stride;
          v16 a = *(const v16*)qg * *(const v16*)kr;
          for (long d = 16; d < D; d += 16) a += *(const v16*)(qg + d) * *(const v16*)(kr + d);
          acc[i] = a;
        }
        const v16 r = sums16(acc) * scale;
        float* sc = scores + g * S + s0;
        for (int i = 0; i < 16; ++i) sc[i] = mask[s0 + i] ? r[i] : -FLT_MAX;
      }
  for (long s = s0; s < S; ++s)
    for (long g = 0; g < G; ++g)
      scores[g * S + s] = mask[s] ? dot(q + g * D, k + s * stride) * scale : -FLT_MAX;
  for (long g = 0; g < G; ++g) {
    float* sc = scores + g * S;
    const float m = *std::max_element(sc, sc + S);
    // e^(x - m); below -87.3 it is under float's smallest normal, and 0 for masked keys, as XLA's exp gives
    long s = 0;
    float sum = 0.f;
    for (; s + 16 <= S; s += 16) {
      const v16 x = *(const v16*)(sc + s) - m;
      v16 e = exp16(x);
      e = x < -87.3f ? v16{} : e;
      *(v16*)(sc + s) = e;
      sum += lanes_sum(e);
    }
    for (; s < S; ++s) {
      const float x = sc[s] - m;
      sc[s] = x < -87.3f ? 0.f : std::exp(x);
      sum += sc[s];
    }
    for (s = 0; s < S; ++s) sc[s] /= sum;
  }
  // o[g] = sum_s p[g][s] v[s]: two heads' D-float sums held in registers over all keys (D <= 128)
  long g = 0;
  if (D == dv && D <= 128)
    for (; g + 2 <= G; g += 2) {
      v16 a0[8] = {}, a1[8] = {};
      const float* p0 = scores + g * S;
      const float* p1 = p0 + S;
      const int nv = (int)(D / 16);
      for (long s = 0; s < S; ++s) {
        const float* vr = v + s * stride;
        for (int c = 0; c < nv; ++c) {
          const v16 x = *(const v16*)(vr + 16 * c);
          a0[c] += p0[s] * x;
          a1[c] += p1[s] * x;
        }
      }
      for (int c = 0; c < nv; ++c) {
        *(v16*)(o + g * D + 16 * c) = a0[c];
        *(v16*)(o + (g + 1) * D + 16 * c) = a1[c];
      }
    }
  for (; g < G; ++g) {
    float* og = o + g * D;
    std::fill(og, og + D, 0.f);
    for (long s = 0; s < S; ++s) {
      const float p = scores[g * S + s];
      const float* vr = v + s * stride;
      for (long d = 0; d < D; ++d) og[d] += p * vr[d];
    }
  }
}

// q [B, Hq, D]; k, v [L, B, S, Hkv, D]; layer: int32 scalar (clamped to range); mask [B, S]; o [B, Hq, D]
ffi::Error DecodeAttentionImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                               ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> layer, ffi::Buffer<ffi::PRED> mask,
                               ffi::ResultBuffer<ffi::F32> o, float scale) {
  const auto qd = q.dimensions();
  const auto kd = k.dimensions();
  const long B = qd[0], Hq = qd[1], D = qd[2], L = kd[0], S = kd[2], Hkv = kd[3];
  if (kd[1] != B || kd[4] != D || Hkv == 0 || Hq % Hkv != 0 || Hq / Hkv > kMaxGroup)
    return ffi::Error::InvalidArgument("OmniDecodeAttention: q [B, Hq, D] and k, v [L, B, S, Hkv, D] disagree");
  const long G = Hq / Hkv;
  const long l = std::min<long>(std::max<long>(layer.typed_data()[0], 0), L - 1);
  const float* qp = q.typed_data();
  const float* kp = k.typed_data() + l * B * S * Hkv * D;
  const float* vp = v.typed_data() + l * B * S * Hkv * D;
  const bool* mp = mask.typed_data();
  float* op = o->typed_data();
  omni::parallel_for(pool, B * Hkv, [&](long item) {
    const long b = item / Hkv, j = item % Hkv;
    thread_local std::vector<float> scores;
    scores.resize((size_t)G * S);
    const long off = (b * S * Hkv + j) * D;  // row s of head j: off + s * Hkv * D
    one_head(qp + (b * Hq + j * G) * D, G, D, kp + off, vp + off, Hkv * D, S, mp + b * S, scale, scores.data(),
             op + (b * Hq + j * G) * D);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OmniDecodeAttention, DecodeAttentionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));
