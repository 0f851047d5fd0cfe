// core/precision.h: the precision of the matrix products: fp32, or bf16 mixed precision.
//
// bf16 mixed precision is what PyTorch's torch.autocast("cpu", dtype=torch.bfloat16) does to a
// linear layer: the inputs of each product (activations, weights, gradients) are rounded to
// bfloat16 and the products summed in fp32 (core/gemm_bf16.h). The char LM's head, tied to its
// embedding, is such a linear layer too (models/charlm.h). MHA's fused attention core does
// the same to its products (q k^T and P V; in the backward dO v^T, dS K, dS^T Q and P^T dO:
// nn/causal_attention_kernels.h). Everything else stays fp32: the parameters, their gradients
// and the optimizer's state (master weights), norms, softmax, the latent scan and the loss.
// Checkpoints hold fp32 either way.
#pragma once

#include <string>

namespace lg {

enum class Precision { fp32, bf16 };

// The precision linear() and the attention core use from now on, for the whole process: every
// thread, the data-parallel step's shards included. An op's backward uses the precision its
// forward ran at.
void set_matmul_precision(Precision p);
Precision matmul_precision();

// "fp32" or "bf16", and back; parse_precision throws lg::Error naming the choices.
const char* precision_name(Precision p);
Precision parse_precision(const std::string& text);

// Throws lg::Error, saying what to use instead, when p cannot run at speed on this CPU: bf16
// needs AVX512-BF16 (gemm_bf16_available()). Elsewhere gemm_bf16 runs its scalar reference,
// which gives the same bits several hundred times slower: for tests, not for training.
void require_precision_available(Precision p);

// Sets a precision for a scope and puts the previous one back at its end.
class PrecisionGuard {
 public:
  explicit PrecisionGuard(Precision p) : previous_(matmul_precision()) { set_matmul_precision(p); }
  ~PrecisionGuard() { set_matmul_precision(previous_); }
  PrecisionGuard(const PrecisionGuard&) = delete;
  PrecisionGuard& operator=(const PrecisionGuard&) = delete;

 private:
  Precision previous_;
};

}  // namespace lg
