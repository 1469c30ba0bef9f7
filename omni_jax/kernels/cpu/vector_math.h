// Vector maths shared by the kernels: 16-float vectors and their e^x.
#pragma once

namespace omni {

typedef float v16 __attribute__((vector_size(64), aligned(4)));  // 16 floats, unaligned loads allowed
typedef int i16 __attribute__((vector_size(64), aligned(4)));

// e^x for 16 floats: x = n ln2 + r with |r| <= ln2 / 2 (ln2 in two parts), Cephes' degree-6 polynomial for e^r
// (within 1 ulp of std::exp over [-90, 90] in steps of 1e-4), times 2^n built in the exponent bits; x clamped to
// [-87, 88]: no overflow or denormals (silu's e^-g then gives g / (1 + 1.6e38) ~ 0 and g / (1 + 1.6e-38) = g,
// as std::exp would)
inline v16 exp16(v16 x) {
  const v16 lo = v16{} - 87.f, hi = v16{} + 88.f;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const v16 magic = v16{} + 12582912.f;  // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
  const v16 n = (x * 1.44269504088896341f + magic) - magic;
  const v16 r = x - n * 0.693359375f + n * 2.12194440e-4f;
  v16 p = v16{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const v16 e = p * r * r + r + 1.f;
  const i16 bits = (__builtin_convertvector(n, i16) + 127) << 23;
  return e * (v16)bits;
}

}  // namespace omni
