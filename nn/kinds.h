// nn/kinds.h: every kind of every block part, by name: the factories, and the lists that help and errors
// print.
//
// A transformer block has three swappable parts: attention, feed-forward and norm. Each part
// is an interface (nn/attention.h, nn/feed_forward.h, nn/norm.h), and each kind of it is a
// Module implementing that interface, known by a name ("latent", "swiglu", "rmsnorm"). The
// tables in nn/kinds.cpp are the only place that lists the kinds: the model builds its parts
// from them by name, `charlm train --help` prints them, an unknown name is refused with them,
// and a checkpoint records each part's kind by the same name. docs/extending.md walks
// through adding one.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nn/attention.h"
#include "nn/feed_forward.h"
#include "nn/norm.h"

namespace lg::nn {

template <class Part>
struct Kind {
  std::string name;  // as flags, config files and checkpoints spell it
  std::string help;  // one line for --help
  std::function<std::shared_ptr<Part>(const BlockConfig&, Rng&)> make;
};

// The kinds of one part, in table order.
template <class Part>
class KindTable {
 public:
  KindTable(std::string part, std::vector<Kind<Part>> kinds)
      : part_(std::move(part)), kinds_(std::move(kinds)) {}

  const std::string& part() const { return part_; }  // "attention", "feed-forward", "norm"
  const std::vector<Kind<Part>>& kinds() const { return kinds_; }

  // The kind called name; lg::Error "unknown feed-forward kind 'x' (expected gelu or swiglu)" if none is.
  const Kind<Part>& find(const std::string& name) const {
    for (const Kind<Part>& kind : kinds_)
      if (kind.name == name) return kind;
    throw Error("unknown " + part_ + " kind '" + name + "' (expected " + names(" or ") + ")");
  }

  // "a, b or c" with last = " or "; "a | b | c" with last = " | ".
  std::string names(const std::string& last) const {
    const std::string sep = last == " | " ? " | " : ", ";
    std::string out;
    for (size_t i = 0; i < kinds_.size(); ++i)
      out += (i == 0 ? "" : i + 1 == kinds_.size() ? last : sep) + kinds_[i].name;
    return out;
  }

 private:
  std::string part_;
  std::vector<Kind<Part>> kinds_;
};

const KindTable<Attention>& attention_kinds();
const KindTable<FeedForward>& feed_forward_kinds();
const KindTable<Norm>& norm_kinds();

// The kind config.attention, config.ffn, config.norm names, built from config; throws
// lg::Error for an unknown name.
std::shared_ptr<Attention> make_attention(const BlockConfig& config, Rng& rng);
std::shared_ptr<FeedForward> make_feed_forward(const BlockConfig& config, Rng& rng);
std::shared_ptr<Norm> make_norm(const BlockConfig& config, Rng& rng);

}  // namespace lg::nn
