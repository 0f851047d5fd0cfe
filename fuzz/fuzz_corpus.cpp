// fuzz/fuzz_corpus.cpp: the corpus and vocabulary code (models/charlm_data.h) on arbitrary text.
//
// The input is a corpus file: read_corpus reads it; its first line is also taken as a --split
// value and its first byte as a context length, so that the split, the vocabulary built from the
// training part, the encoding of every part and the batch sampler all see fuzzed values. The
// input's bytes are also offered to Vocab::from_bytes, as a checkpoint's stored vocabulary is.
// lg::Error is the answer to bad input; anything else, or a broken promise below, is a finding.
#include <cstdlib>

#include "fuzz/fuzz_files.h"
#include "models/charlm_data.h"

namespace {

using lg::charlm::Vocab;

// Every id of an encoding is a valid id, and known ids decode back to their byte.
void check_encoding(const Vocab& vocab, std::string_view text) {
  std::vector<int32_t> ids = vocab.encode(text);
  if (ids.size() != text.size()) std::abort();
  int64_t unknown = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab.size()) std::abort();
    if (ids[i] == lg::charlm::kUnknownId)
      ++unknown;
    else if (vocab.byte_of(ids[i]) != static_cast<uint8_t>(text[i]))
      std::abort();
  }
  if (unknown != vocab.count_unknown(text)) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lg::fuzzing;
  const std::string path = (scratch().fresh() / "corpus.txt").string();
  const std::string_view input = as_text(data, size);
  write_bytes(path, input);

  std::string corpus;
  try {
    corpus = lg::charlm::read_corpus(path);
  } catch (const lg::Error&) {
    if (size != 0) std::abort();  // only an empty file is refused
    return 0;
  }
  if (corpus != input) std::abort();

  lg::charlm::SplitFractions split;
  try {
    split = lg::charlm::parse_split(std::string(input.substr(0, input.find('\n'))));
  } catch (const lg::Error&) {
  }
  const auto parts = lg::charlm::split_corpus(corpus, split);
  if (parts.train.size() + parts.val.size() + parts.test.size() != corpus.size()) std::abort();
  const Vocab vocab = Vocab::from_text(parts.train);
  for (std::string_view part : {parts.train, parts.val, parts.test}) check_encoding(vocab, part);
  if (vocab.count_unknown(parts.train) != 0) std::abort();

  const int64_t ctx = static_cast<uint8_t>(input[0]) % 32 + 1;
  try {
    lg::charlm::check_split_lengths(parts, static_cast<int64_t>(corpus.size()), ctx);
    const std::vector<int32_t> ids = vocab.encode(parts.train);
    lg::Rng rng(size);
    std::vector<int32_t> x, y;
    lg::charlm::sample_batch(ids, 2, ctx, rng, x, y);
    if (x.size() != static_cast<size_t>(2 * ctx) || y.size() != x.size()) std::abort();
  } catch (const lg::Error&) {
  }

  try {
    const Vocab stored = Vocab::from_bytes(std::vector<uint8_t>(data, data + size));
    check_encoding(stored, input);
  } catch (const lg::Error&) {
  }
  return 0;
}
