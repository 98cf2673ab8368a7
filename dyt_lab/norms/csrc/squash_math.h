// Vector math for dynamic_squash.cpp: block loads/stores, parameter vectors, the squash functions.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <type_traits>

namespace dyt_squash {

using at::vec::Vectorized;
constexpr int64_t kTanh = 0, kErf = 1;  // the ops' `squash` argument

// One block = two Vectorized<acc_t>, loaded from / stored to T: plain for float/double, widened and
// narrowed for bf16/fp16 (whose one Vectorized<T> holds both halves).
template <typename T, typename acc_t>
inline void load2(const T* p, Vectorized<acc_t>& lo, Vectorized<acc_t>& hi) {
  if constexpr (std::is_same_v<T, acc_t>) {
    lo = Vectorized<acc_t>::loadu(p);
    hi = Vectorized<acc_t>::loadu(p + Vectorized<acc_t>::size());
  } else {
    at::vec::load_to_float<T>(p, lo, hi);
  }
}

template <typename T, typename acc_t>
inline void store2(T* p, const Vectorized<acc_t>& lo, const Vectorized<acc_t>& hi) {
  if constexpr (std::is_same_v<T, acc_t>) {
    lo.store(p);
    hi.store(p + Vectorized<acc_t>::size());
  } else {
    at::vec::convert_from_float<T>(lo, hi).store(p);
  }
}

// A parameter at element i of a row: loaded per element (channels-last) or broadcast once from
// the row's channel and kept in a register (channels-first).
template <bool kPerElem, typename acc_t>
struct Coef {
  const acc_t* p;
  Vectorized<acc_t> v;
  explicit Coef(const acc_t* ptr) : p(ptr), v(kPerElem ? acc_t(0) : *ptr) {}
  Vectorized<acc_t> at(int64_t i) const { return kPerElem ? Vectorized<acc_t>::loadu(p + i) : v; }
};

// tanh in float as x * P(x^2) / Q(x^2) on x clamped to +-7.9 (float tanh is within 5 ulp of 1
// there): 9 fmas and a division, no exp, so on AVX2 it costs about a copy, where Sleef's
// Vectorized<float>::tanh (what torch.tanh uses) costs five. P and Q (degree 4 each) are our own
// least-squares fit for relative error; evaluated in float it stays within 2.3 eps of the exact
// tanh and below 1 in magnitude (tests/test_fused.py checks 3 eps). NaN passes through the clamp.
inline Vectorized<float> fast_tanh(const Vectorized<float>& z) {
  using V = Vectorized<float>;
  const V x = at::vec::minimum(at::vec::maximum(z, V(-7.9f)), V(7.9f));
  const V s = x * x;
  V p = at::vec::fmadd(s, V(1.5427739e-08f), V(2.2023092e-05f));
  p = at::vec::fmadd(s, p, V(3.5789832e-03f));
  p = at::vec::fmadd(s, p, V(1.3450614e-01f));
  p = at::vec::fmadd(s, p, V(1.0f));
  V q = at::vec::fmadd(s, V(8.5986898e-07f), V(3.4236358e-04f));
  q = at::vec::fmadd(s, q, V(2.6192205e-02f));
  q = at::vec::fmadd(s, q, V(4.6783942e-01f));
  q = at::vec::fmadd(s, q, V(1.0f));
  return x * p / q;
}

template <int64_t kSquash, typename acc_t>
inline Vectorized<acc_t> squash(const Vectorized<acc_t>& z) {
  if constexpr (kSquash == kErf) {
    return z.erf();  // what torch.erf uses (float: ATen's polynomial, 1.5e-7; double: Sleef)
  } else if constexpr (std::is_same_v<acc_t, float>) {
    return fast_tanh(z);
  } else {
    return z.tanh();
  }
}

}  // namespace dyt_squash
