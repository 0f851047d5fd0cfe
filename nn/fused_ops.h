// nn/fused_ops.h: the ops of nn/ that write their own backward, by the names their graph nodes record.
//
// core/ops.h's kDifferentiableOps lists the core ops; these are the others: functions of nn/
// that run their own forward kernel and attach their own backward (attach_node). Layers
// composed from ops need no entry. Each name is its function's name, and the overloads of one
// function (on q, k, v or on one packed tensor) record the same name. tests/test_nn.cpp fails
// unless every name here has been seen in a graph it gradient-checked; latent_attention_fused's
// thorough checks (against the chunked path, long sequences, the AVX-512 kernels, the packed
// overload) are in tests/test_latent_attention.cpp.
#pragma once

#include <string_view>

namespace lg::nn {

inline constexpr std::string_view kFusedOps[] = {
    "rope",                    // nn/rope.h
    "split_heads_rope",        // nn/rope.h
    "causal_attention_fused",  // nn/mha.h
    "latent_attention_fused",  // nn/latent_attention.h
};

}  // namespace lg::nn
