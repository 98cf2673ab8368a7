// Autograd for torch.ops.dyt_lab_cpu.forward in C++, so an eager call costs what a built-in op
// costs (a Python autograd.Function adds ~100 us a call, which a small ViT feels at every norm).
// Saves only x and the small parameters; backward recomputes the squash (dynamic_squash.cpp).
#include <torch/autograd.h>
#include <torch/library.h>

#include "dynamic_squash.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class SquashFunction : public torch::autograd::Function<SquashFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& alpha,
                            const std::optional<at::Tensor>& shift, const at::Tensor& weight, const at::Tensor& bias,
                            bool channels_last, int64_t squash, at::ScalarType out_dtype) {
    ctx->save_for_backward({x, alpha, shift.value_or(at::Tensor()), weight});
    ctx->saved_data["channels_last"] = channels_last;
    ctx->saved_data["squash"] = squash;
    return dyt_squash::squash_forward(x, alpha, shift, weight, bias, channels_last, squash, out_dtype);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // The backward kernel is not differentiable itself: refuse rather than give a wrong 2nd derivative.
    TORCH_CHECK(!at::GradMode::is_enabled(), "fused DyT does not support double backward (create_graph=True); "
                "use fused=False for higher-order gradients");
    const variable_list saved = ctx->get_saved_variables();
    const std::optional<at::Tensor> shift = saved[2].defined() ? std::optional<at::Tensor>(saved[2]) : std::nullopt;
    std::vector<at::Tensor> g = dyt_squash::squash_backward(grad_outputs[0], saved[0], saved[1], shift, saved[3],
                                                            ctx->saved_data["channels_last"].toBool(),
                                                            ctx->saved_data["squash"].toInt());
    return {g[0], g[1], shift ? g[2] : at::Tensor(), g[3], g[4], at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor forward_with_autograd(const at::Tensor& x, const at::Tensor& alpha, const std::optional<at::Tensor>& shift,
                                 const at::Tensor& weight, const at::Tensor& bias, bool channels_last, int64_t squash,
                                 at::ScalarType out_dtype) {
  return SquashFunction::apply(x, alpha, shift, weight, bias, channels_last, squash, out_dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(dyt_lab_cpu, Autograd, m) {
  m.impl("forward", &forward_with_autograd);
}
