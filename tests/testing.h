// tests/testing.h: what several test suites share: temporary directories and generated text.
#pragma once

#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "core/random.h"

namespace lg::testing {

namespace fs = std::filesystem;

// A fresh directory under the system temp dir, removed when the test ends.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name) {
    path = fs::temp_directory_path() / fmt::format("charlm-test-{}-{}", ::getpid(), name);
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& leaf) const { return (path / leaf).string(); }
};

// Sentences from a small grammar: enough structure to learn in a few dozen steps.
inline std::string generated_text(size_t bytes, uint64_t seed = 7) {
  const char* subjects[] = {"the cat", "a dog", "my friend", "the king", "our queen"};
  const char* verbs[] = {"sees", "likes", "finds", "keeps", "calls"};
  const char* objects[] = {"the ball.", "a red hat.", "the sea.", "my book.", "a small bird."};
  Rng rng(seed);
  std::string text;
  while (text.size() < bytes) {
    text += subjects[rng.below(5)];
    text += ' ';
    text += verbs[rng.below(5)];
    text += ' ';
    text += objects[rng.below(5)];
    text += rng.below(4) == 0 ? '\n' : ' ';
  }
  text.resize(bytes);
  return text;
}

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

}  // namespace lg::testing
