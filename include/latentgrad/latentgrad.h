// latentgrad/latentgrad.h: the whole public API in one include, each header with what it offers.
//
// A program outside this repository writes `#include <latentgrad/latentgrad.h>` and links the
// CMake target latentgrad::latentgrad (or `pkg-config --cflags --libs latentgrad`). The list
// below is also the install list: CMakeLists.txt installs exactly the headers included here, so
// a header missing from it stays private (the kernels' core/intrinsics.h, core/fastmath.h,
// nn/row_kernels.h, nn/latent_attention_scan.h, optim/blocks.h) and none of these may include one.
// Namespaces: lg (tensors, ops), lg::nn (layers), lg::optim (optimizers), lg::dist (MPI).
#pragma once

// In reading order, from tensors up to training, rather than clang-format's alphabetical one.
// clang-format off
// ---- core: tensors and autograd --------------------------------------------------------------
#include "core/version.h"  // LATENTGRAD_VERSION (these headers) and lg::version() (the library)
#include "core/tensor.h"   // Tensor, Shape, lg::Error, backward(), NoGradGuard, attach_node for fused ops
#include "core/ops.h"      // every differentiable core op (add ... concat), operators, set_num_threads
#include "core/random.h"   // Rng (seeded, state saved and restored), randn, uniform
#include "core/files.h"    // lg::files: whole-file reads, crash-safe atomic writes, fnv1a64
#include "core/precision.h"  // PrecisionGuard, require_precision_available: bf16 for linear

// ---- nn: layers --------------------------------------------------------------------------------
#include "nn/module.h"             // Module: named parameters, submodules, train/eval, state_dict
#include "nn/linear.h"             // Linear: y = x W^T + b
#include "nn/embedding.h"          // Embedding: token ids -> vectors
#include "nn/block_config.h"       // BlockConfig: the settings every kind of block part is built from
#include "nn/norm.h"               // Norm: the interface of the norm kinds
#include "nn/layer_norm.h"         // LayerNorm (norm kind "layernorm")
#include "nn/rmsnorm.h"            // RMSNorm (norm kind "rmsnorm")
#include "nn/dropout.h"            // Dropout, active in training mode only
#include "nn/feed_forward.h"       // FeedForward: the interface of the feed-forward kinds
#include "nn/mlp.h"                // MLP: Linear D->4D, GELU, Linear 4D->D (feed-forward kind "gelu")
#include "nn/swiglu.h"             // SwiGLU: W2(silu(W1 x) * W3 x) (feed-forward kind "swiglu";
                                   // the worked example of docs/extending.md)
#include "nn/rope.h"               // rope, split_heads_rope: rotary position embedding
#include "nn/attention.h"          // Attention: the interface of the attention kinds
#include "nn/mha.h"                // CausalSelfAttention: multi-head attention with a KV cache
#include "nn/latent_attention.h"   // LatentAttention: O(N M) attention through M learned latents
#include "nn/mla.h"                // MLA: DeepSeek-V2 multi-head latent attention
#include "nn/kinds.h"              // the kinds of each part by name: factories, lists for help
#include "nn/transformer_block.h"  // TransformerBlock: pre-norm attention + feed-forward
#include "nn/safetensors.h"        // write/read_safetensors, save_module/load_module

// ---- optim: training ---------------------------------------------------------------------------
#include "optim/adamw.h"     // AdamW, its state save and load
#include "optim/sgd.h"       // SGD with momentum
#include "optim/schedule.h"  // LrSchedule, lr_at: linear warmup then cosine decay
#include "optim/clip.h"      // clip_grad_norm: global-norm gradient clipping
#include "optim/state.h"     // load_buffers, parse_step: for an optimizer of your own

// ---- dist: data-parallel training over MPI (one rank when not started by mpirun) ---------------
#include "dist/dist.h"  // init, world, collectives, GradReducer
// clang-format on
