// nn/attention.cpp: attention kinds by name, and the one place that builds an attention layer from its config.
#include "nn/attention.h"

#include <fmt/format.h>

#include "nn/latent_attention.h"
#include "nn/mha.h"
#include "nn/mla.h"

namespace lg::nn {

AttentionKind parse_attention_kind(const std::string& name) {
  if (name == "mha") return AttentionKind::MHA;
  if (name == "latent") return AttentionKind::Latent;
  if (name == "mla") return AttentionKind::MLA;
  throw Error(fmt::format("unknown attention kind '{}' (expected mha, latent or mla)", name));
}

const char* attention_kind_name(AttentionKind kind) {
  switch (kind) {
    case AttentionKind::MHA: return "mha";
    case AttentionKind::Latent: return "latent";
    case AttentionKind::MLA: return "mla";
  }
  return "unknown";
}

// One case per kind; a new kind adds its include above and its line here.
std::shared_ptr<Attention> make_attention(const AttentionConfig& config, Rng& rng) {
  switch (config.kind) {
    case AttentionKind::MHA: return std::make_shared<CausalSelfAttention>(config, rng);
    case AttentionKind::Latent: return std::make_shared<LatentAttention>(config, rng);
    case AttentionKind::MLA: return std::make_shared<MLA>(config, rng);
  }
  throw Error("make_attention: unknown attention kind");
}

}  // namespace lg::nn
