// The two fused ops (dynamic_squash.cpp), for their autograd wrapper (squash_autograd.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace dyt_squash {

// y = weight * squash(alpha * x + shift) + bias; squash 0 = tanh, 1 = erf; params in x's acc dtype.
at::Tensor squash_forward(const at::Tensor& x, const at::Tensor& alpha, const std::optional<at::Tensor>& shift,
                          const at::Tensor& weight, const at::Tensor& bias, bool channels_last, int64_t squash,
                          at::ScalarType out_dtype);

// [grad_x, grad_alpha, grad_shift (empty without a shift), grad_weight, grad_bias].
std::vector<at::Tensor> squash_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& alpha,
                                        const std::optional<at::Tensor>& shift, const at::Tensor& weight,
                                        bool channels_last, int64_t squash);

}  // namespace dyt_squash
