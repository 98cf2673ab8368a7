// Fused CPU kernels for the DyT family: y = weight * squash(alpha * x + shift) + bias.
//
// Built lazily by dyt_lab/norms/cpu_kernel.py, registered as torch.ops.dyt_lab_cpu.{forward,backward}
// (their autograd formula is in squash_autograd.cpp).
// Forward reads x once and writes y once. Backward reads x and grad_out once, recomputes the
// squash, writes grad_x and reduces the four parameter gradients in the same pass.
//
// x (contiguous) is processed as rows:
//   channels-last  (..., C):        a row is the C channels of one position; parameters vary along it;
//   channels-first (N, C, *spatial): a row is the prod(spatial) positions of one (n, c); one parameter each.
// The math runs in acc_t (float, or double for double x) with ATen's Vectorized<acc_t>; x may be
// bf16/fp16 (widened to float), with y/grad_out in x's dtype or in float (the reference promotes
// bf16 x with fp32 params to fp32). The vector math (squash functions, loads) is in squash_math.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <type_traits>
#include <vector>

#include "dynamic_squash.h"
#include "squash_math.h"

namespace {

using namespace dyt_squash;
constexpr int64_t kFlushRows = 256;  // channels-last backward: rows summed apart, then joined to their chunk

// The four parameters expanded to (4, C_pad): alpha, shift (zeros if none), weight, bias, each
// zero padded to whole blocks so a row's tail block can run through the vector code.
template <typename acc_t>
struct Params {
  std::vector<acc_t> data;
  int64_t c_pad;
  const acc_t* row(int k, int64_t c) const { return data.data() + k * c_pad + c; }
};

template <typename acc_t>
Params<acc_t> expand_params(int64_t C, const std::vector<std::optional<at::Tensor>>& params) {
  constexpr int64_t kBlock = 2 * Vectorized<acc_t>::size();
  Params<acc_t> p{std::vector<acc_t>(), (C + kBlock - 1) / kBlock * kBlock};
  p.data.assign(4 * p.c_pad, acc_t(0));
  for (int k = 0; k < 4; ++k) {
    if (!params[k].has_value()) continue;
    const at::Tensor t = params[k]->contiguous();
    TORCH_CHECK(t.numel() == 1 || t.numel() == C, "parameter has ", t.numel(), " elements, expected 1 or ", C);
    const acc_t* v = t.const_data_ptr<acc_t>();
    for (int64_t c = 0; c < C; ++c) p.data[k * p.c_pad + c] = t.numel() == 1 ? v[0] : v[c];
  }
  return p;
}

// Runs body(i, x + i, g + i, out + i) over a row of n elements in whole blocks of kB; the last
// partial block goes through the same body on zero-padded copies (zeros add nothing to sums).
template <int64_t kB, typename in_t, typename gin_t, typename gout_t, typename Body>
inline void for_blocks(const in_t* x, const gin_t* g, gout_t* out, int64_t n, const Body& body) {
  int64_t i = 0;
  for (; i + kB <= n; i += kB) body(i, x + i, g + i, out + i);
  if (i < n) {
    in_t xb[kB] = {};
    gin_t gb[kB] = {};
    gout_t ob[kB] = {};
    std::copy(x + i, x + n, xb);
    std::copy(g + i, g + n, gb);
    body(i, xb, gb, ob);
    std::copy(ob, ob + (n - i), out + i);
  }
}

template <int64_t kSquash, bool kPerElem, typename in_t, typename out_t, typename acc_t>
void forward_row(const in_t* x, out_t* y, int64_t n, const Params<acc_t>& p, int64_t c) {
  using V = Vectorized<acc_t>;
  constexpr int64_t kV = V::size();
  const Coef<kPerElem, acc_t> a(p.row(0, c)), s(p.row(1, c)), w(p.row(2, c)), b(p.row(3, c));
  auto half = [&](const V& xv, int64_t i) {
    return at::vec::fmadd(squash<kSquash>(at::vec::fmadd(xv, a.at(i), s.at(i))), w.at(i), b.at(i));
  };
  for_blocks<2 * kV>(x, x, y, n, [&](int64_t i, const in_t* xb, const in_t*, out_t* yb) {  // x as dummy g
    V x0, x1;
    load2(xb, x0, x1);
    store2(yb, half(x0, i), half(x1, i + kV));
  });
}

// One row of backward. sums is (4, C_pad): d alpha, d shift, d weight, d bias. Channels-last rows
// add a vector per block at their channels; channels-first rows add four totals at channel c.
template <int64_t kSquash, bool kPerElem, typename in_t, typename out_t, typename acc_t>
void backward_row(const in_t* x, const out_t* gy, in_t* gx, int64_t n, const Params<acc_t>& p, int64_t c,
                  acc_t* sums) {
  using V = Vectorized<acc_t>;
  constexpr int64_t kV = V::size();
  const Coef<kPerElem, acc_t> a(p.row(0, c)), s(p.row(1, c)), w(p.row(2, c));
  V acc[4] = {V(0), V(0), V(0), V(0)};  // channels-first: this row's sums, lane by lane
  auto add = [&](int k, int64_t i, const V& v) {
    if constexpr (kPerElem) {
      acc_t* dst = sums + k * p.c_pad + i;
      (V::loadu(dst) + v).store(dst);
    } else {
      acc[k] = acc[k] + v;
    }
  };
  auto half = [&](const V& xv, const V& g, int64_t i) {  // returns grad_x
    const V z = at::vec::fmadd(xv, a.at(i), s.at(i));
    const V t = squash<kSquash>(z);
    V dt;  // d squash / dz: 1 - tanh^2, or 2/sqrt(pi) exp(-z^2) (Sleef's exp keeps NaN a NaN)
    if constexpr (kSquash == kTanh) {
      dt = V(1) - t * t;
    } else {
      dt = V(static_cast<acc_t>(1.1283791670955126)) * (V(0) - z * z).exp();
    }
    const V dz = g * w.at(i) * dt;
    add(0, i, dz * xv);
    add(1, i, dz);
    add(2, i, g * t);
    add(3, i, g);
    return dz * a.at(i);
  };
  for_blocks<2 * kV>(x, gy, gx, n, [&](int64_t i, const in_t* xb, const out_t* gb, in_t* gxb) {
    V x0, x1, g0, g1;
    load2(xb, x0, x1);
    load2(gb, g0, g1);
    const V d0 = half(x0, g0, i);
    store2(gxb, d0, half(x1, g1, i + kV));
  });
  if constexpr (!kPerElem) {
    for (int k = 0; k < 4; ++k) {
      __at_align__ acc_t lanes[kV];
      acc[k].store(lanes);
      sums[k * p.c_pad + c] += std::accumulate(lanes, lanes + kV, acc_t(0));
    }
  }
}

// x as rows (see the top of the file); channel(r) is the parameter index of a channels-first row.
struct Rows {
  int64_t count, len, channels;
  bool per_elem;
  int64_t channel(int64_t r) const { return per_elem ? 0 : r % channels; }
};

Rows as_rows(const at::Tensor& x, bool channels_last) {
  const int64_t c = channels_last ? x.size(-1) : x.size(1);
  if (channels_last) return {c == 0 ? 0 : x.numel() / c, c, c, true};
  const int64_t inner = x.numel() == 0 ? 0 : x.numel() / (x.size(0) * c);
  if (inner == 1) return {x.size(0), c, c, true};  // (N, C, 1, ..): rows of C channels, as channels-last
  return {x.size(0) * c, inner, c, false};
}

// Calls f(std::integral_constant<int64_t, kTanh or kErf>) so the squash is a compile-time choice.
template <typename F>
inline void with_squash(int64_t sq, const F& f) {
  if (sq == kTanh) f(std::integral_constant<int64_t, kTanh>{});
  else f(std::integral_constant<int64_t, kErf>{});
}

template <typename in_t, typename out_t, typename acc_t>
struct Forward {
  static void run(const Rows& rows, const Params<acc_t>& p, int64_t sq, const at::Tensor& x, at::Tensor& y) {
    const in_t* xp = x.const_data_ptr<in_t>();
    out_t* yp = y.mutable_data_ptr<out_t>();
    const int64_t len = rows.len, grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / len);
    with_squash(sq, [&](auto squash_kind) {
      constexpr int64_t kSq = decltype(squash_kind)::value;
      at::parallel_for(0, rows.count, grain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          if (rows.per_elem) forward_row<kSq, true>(xp + r * len, yp + r * len, len, p, 0);
          else forward_row<kSq, false>(xp + r * len, yp + r * len, len, p, rows.channel(r));
        }
      });
    });
  }
};

template <typename in_t, typename out_t, typename acc_t>
struct Backward {
  // Writes gx and grads = {d alpha, d shift, d weight, d bias}, each (C,), (1,) or (0,) (no shift).
  static void run(const Rows& rows, const Params<acc_t>& p, int64_t sq, const at::Tensor& x, const at::Tensor& gy,
                  at::Tensor& gx, std::vector<at::Tensor>& grads) {
    const in_t* xp = x.const_data_ptr<in_t>();
    const out_t* gp = gy.const_data_ptr<out_t>();
    in_t* gxp = gx.mutable_data_ptr<in_t>();
    const int64_t len = rows.len, block = 4 * p.c_pad;
    // Fixed chunks of rows, each with its own (4, C_pad) sums, combined in order afterwards: no
    // atomics, and the result does not depend on which thread ran which chunk.
    const int64_t chunks = std::clamp<int64_t>(rows.count * len / at::internal::GRAIN_SIZE, 1,
                                               std::min<int64_t>(rows.count, 4 * at::get_num_threads()));
    std::vector<acc_t> chunk_sums(chunks * block, acc_t(0));
    with_squash(sq, [&](auto squash_kind) {
      constexpr int64_t kSq = decltype(squash_kind)::value;
      at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
        std::vector<acc_t> partial(block);  // channels-last: sums of up to kFlushRows rows
        for (int64_t k = chunk_begin; k < chunk_end; ++k) {
          acc_t* out = chunk_sums.data() + k * block;
          const int64_t r0 = rows.count * k / chunks, r1 = rows.count * (k + 1) / chunks;
          for (int64_t r = r0; r < r1; ++r) {
            const int64_t o = r * len;
            if (!rows.per_elem) {
              backward_row<kSq, false>(xp + o, gp + o, gxp + o, len, p, rows.channel(r), out);
              continue;
            }
            if ((r - r0) % kFlushRows == 0) std::fill(partial.begin(), partial.end(), acc_t(0));
            backward_row<kSq, true>(xp + o, gp + o, gxp + o, len, p, 0, partial.data());
            if ((r - r0) % kFlushRows == kFlushRows - 1 || r == r1 - 1) {
              for (int64_t j = 0; j < block; ++j) out[j] += partial[j];
            }
          }
        }
      });
    });
    for (int64_t j = 0; j < 4; ++j) {  // chunks in order; a scalar parameter also sums its channels
      acc_t* dst = grads[j].mutable_data_ptr<acc_t>();
      const int64_t n = grads[j].numel();
      for (int64_t k = 0; k < chunks && n > 0; ++k) {
        for (int64_t c = 0; c < rows.channels; ++c) dst[n == 1 ? 0 : c] += chunk_sums[k * block + j * p.c_pad + c];
      }
    }
  }
};

// Runs Kernel<in_t, out_t, acc_t>::run(rows, params expanded to acc_t, args...) for x's dtype and
// the output (grad_out) dtype: out_t is in_t, or float for bf16/fp16 x.
template <template <typename, typename, typename> class Kernel, typename... Args>
void dispatch(const at::Tensor& x, at::ScalarType out_dtype, const Rows& rows,
              const std::vector<std::optional<at::Tensor>>& params, Args&&... args) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dyt_squash", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Params<acc_t> p = expand_params<acc_t>(rows.channels, params);
    if (out_dtype == x.scalar_type()) {
      Kernel<scalar_t, scalar_t, acc_t>::run(rows, p, args...);
    } else if constexpr (std::is_same_v<acc_t, float> && !std::is_same_v<scalar_t, float>) {
      TORCH_CHECK(out_dtype == at::kFloat, "bf16/fp16 x needs an output of its dtype or float32");
      Kernel<scalar_t, float, acc_t>::run(rows, p, args...);
    } else {
      TORCH_CHECK(false, "the output dtype must be x's dtype for ", x.scalar_type());
    }
  });
}

}  // namespace

namespace dyt_squash {

at::Tensor squash_forward(const at::Tensor& x_in, const at::Tensor& alpha, const std::optional<at::Tensor>& shift,
                          const at::Tensor& weight, const at::Tensor& bias, bool channels_last, int64_t sq,
                          at::ScalarType out_dtype) {
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options().dtype(out_dtype));
  const Rows rows = as_rows(x, channels_last);
  if (x.numel() > 0) dispatch<Forward>(x, out_dtype, rows, {alpha, shift, weight, bias}, sq, x, y);
  return y;
}

// Returns [grad_x (x's dtype), grad_alpha, grad_shift (empty without a shift), grad_weight,
// grad_bias], the parameter gradients in the parameters' dtype and shape.
std::vector<at::Tensor> squash_backward(const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& alpha,
                                        const std::optional<at::Tensor>& shift, const at::Tensor& weight,
                                        bool channels_last, int64_t sq) {
  const at::Tensor x = x_in.contiguous(), gy = grad_out.contiguous();
  TORCH_CHECK(gy.sizes() == x.sizes(), "grad_out and x must have the same shape");
  at::Tensor gx = at::empty_like(x);
  auto zeros = [&](int64_t numel) { return at::zeros({numel}, weight.options()); };
  std::vector<at::Tensor> grads = {zeros(alpha.numel()), zeros(shift.has_value() ? shift->numel() : 0),
                                   zeros(weight.numel()), zeros(weight.numel())};
  const Rows rows = as_rows(x, channels_last);
  // bias does not enter the gradients: weight stands in for it.
  if (x.numel() > 0) dispatch<Backward>(x, gy.scalar_type(), rows, {alpha, shift, weight, weight}, sq, x, gy, gx, grads);
  grads.insert(grads.begin(), gx);
  return grads;
}

}  // namespace dyt_squash

TORCH_LIBRARY(dyt_lab_cpu, m) {
  m.def("forward(Tensor x, Tensor alpha, Tensor? shift, Tensor weight, Tensor bias, bool channels_last, "
        "int squash, ScalarType out_dtype) -> Tensor");
  m.def("backward(Tensor grad_out, Tensor x, Tensor alpha, Tensor? shift, Tensor weight, bool channels_last, "
        "int squash) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(dyt_lab_cpu, CPU, m) {
  m.impl("forward", &dyt_squash::squash_forward);
  m.impl("backward", &dyt_squash::squash_backward);
}
