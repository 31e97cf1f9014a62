#include "runtime/train/lora_layer.h"

#include "kernels/cpu/linear.h"
#include "kernels/cpu/norm_activation.h"
#include "runtime/core/status_macros.h"

namespace tessera::train {
namespace {

absl::StatusOr<Tensor> F32(Shape shape) { return Tensor::Empty(DType::kF32, std::move(shape)); }

}  // namespace

absl::StatusOr<Tensor> ApplyLora(const Tensor& x, const LoraWeights& lora, float scale, Tensor& out,
                                 int64_t column) {
  const int64_t tokens = x.dim(0), n = lora.b.w.dim(0), width = out.dim(1);
  TESSERA_ASSIGN_OR_RETURN(Tensor u, F32({tokens, lora.a.w.dim(0)}));
  TESSERA_RETURN_IF_ERROR(kernels::Linear(x, lora.a.w, Tensor(), u));
  TESSERA_ASSIGN_OR_RETURN(Tensor v, F32({tokens, n}));
  TESSERA_RETURN_IF_ERROR(kernels::Linear(u, lora.b.w, Tensor(), v));
  for (int64_t t = 0; t < tokens; ++t) {
    float* row = out.data<float>() + t * width + column;
    const float* add = v.data<float>() + t * n;
    for (int64_t j = 0; j < n; ++j) row[j] += scale * add[j];
  }
  return u;
}

absl::Status LoraBackward(const Tensor& dy, int64_t column, const Tensor& x, const Tensor& u,
                          const LoraWeights& lora, float scale, Tensor& dx) {
  const int64_t tokens = dy.dim(0), n = lora.b.w.dim(0), width = dy.dim(1);
  TESSERA_ASSIGN_OR_RETURN(Tensor dv, F32({tokens, n}));
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = dy.data<float>() + t * width + column;
    float* to = dv.data<float>() + t * n;
    for (int64_t j = 0; j < n; ++j) to[j] = scale * row[j];
  }
  Tensor b_grad = lora.b.g, a_grad = lora.a.g;
  TESSERA_RETURN_IF_ERROR(kernels::LinearBackwardWeight(dv, u, b_grad, nullptr));
  TESSERA_ASSIGN_OR_RETURN(Tensor du, F32(u.shape()));
  TESSERA_RETURN_IF_ERROR(kernels::LinearBackwardInput(dv, lora.b.w, du));
  TESSERA_RETURN_IF_ERROR(kernels::LinearBackwardWeight(du, x, a_grad, nullptr));
  // dx += du A, through a scratch buffer (LinearBackwardInput overwrites).
  TESSERA_ASSIGN_OR_RETURN(Tensor scratch, F32(dx.shape()));
  TESSERA_RETURN_IF_ERROR(kernels::LinearBackwardInput(du, lora.a.w, scratch));
  return kernels::AddInPlace(dx, scratch);
}

}  // namespace tessera::train
