// models/charlm_data.h: the char-level LM's data: corpus bytes, train/val/test split, vocabulary, batches.
//
// A "character" is a byte: any file is valid input and UTF-8 passes through unchanged (a
// multi-byte character is several tokens). The vocabulary is built from the TRAIN split
// only. Id 0 is reserved for "unknown": a byte of the val/test split (or of a file given to
// `charlm eval`) that never occurs in the training split maps to id 0. The model never sees
// id 0 as a target during training, so such bytes cost a high loss; they are counted and
// reported, never silently dropped. Sampling never emits id 0.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/random.h"

namespace lg::charlm {

inline constexpr int32_t kUnknownId = 0;

struct Vocab {
  std::vector<uint8_t> bytes;  // bytes[id - 1] is the byte of id (ids 1..size()-1), ascending

  static Vocab from_text(std::string_view train_text);  // the distinct bytes of the text
  static Vocab from_bytes(std::vector<uint8_t> bytes);  // throws lg::Error unless ascending, distinct
  int64_t size() const { return static_cast<int64_t>(bytes.size()) + 1; }  // V, including unknown
  int32_t id_of(uint8_t byte) const { return id_of_[byte]; }               // kUnknownId when absent
  uint8_t byte_of(int32_t id) const { return bytes.at(static_cast<size_t>(id - 1)); }  // id >= 1
  std::vector<int32_t> encode(std::string_view text) const;
  int64_t count_unknown(std::string_view text) const;

 private:
  void index();
  std::array<int32_t, 256> id_of_{};
};

// Fractions of the corpus, in order; each > 0, summing to 1.
struct SplitFractions {
  double train = 0.9, val = 0.05, test = 0.05;
};
// Parses "0.9,0.05,0.05"; throws lg::Error naming the problem.
SplitFractions parse_split(const std::string& text);
std::string split_str(const SplitFractions& split);  // "0.9,0.05,0.05"

// The corpus cut by position: train = first fraction, then val, then test.
struct Splits {
  std::string_view train, val, test;
};
Splits split_corpus(std::string_view corpus, const SplitFractions& split);

// Bytes of memory a run keeps per byte of corpus: the text itself and an int32 token id for each
// byte (train, val and test are encoded whole).
inline constexpr int64_t kCorpusBytesPerChar = 1 + sizeof(int32_t);

// Memory this process can still allocate without swapping: LATENTGRAD_MEMORY_MB when set (a cap
// of one's own), else MemAvailable of /proc/meminfo, else the free physical pages sysconf reports.
int64_t available_memory_bytes();

// Reads a corpus file. Throws lg::Error for a missing, unreadable or empty file, for anything
// but a regular file (a directory, FIFO or device such as /dev/zero, which would block or never
// end), and, before reading, for a file whose size times kCorpusBytesPerChar exceeds
// `memory_bytes` (by default what is available now).
std::string read_corpus(const std::string& path, int64_t memory_bytes = available_memory_bytes());

// Throws lg::Error unless every split can hold one training window (ctx + 1 tokens), naming
// the split that is too short and what to change.
void check_split_lengths(const Splits& splits, int64_t corpus_bytes, int64_t ctx);

// B random windows of T + 1 consecutive tokens: x = window[0:T], y = window[1:T+1], each
// (B, T) row-major. Start positions come from rng only, so a saved rng state replays them.
void sample_batch(const std::vector<int32_t>& ids, int64_t B, int64_t T, Rng& rng, std::vector<int32_t>& x,
                  std::vector<int32_t>& y);

}  // namespace lg::charlm
