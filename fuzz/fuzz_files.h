// fuzz/fuzz_files.h: what the fuzz targets share: a private scratch directory and input framing.
#pragma once

#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

namespace lg::fuzzing {

namespace fs = std::filesystem;

// One directory per fuzzing process under the system temp dir, emptied before every input (so
// no run sees another's files) and removed when the process exits normally.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = (fs::temp_directory_path() / "lg-fuzz-XXXXXX").string();
    if (!::mkdtemp(pattern.data())) std::abort();
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  // Empties the directory and returns its path.
  const fs::path& fresh() {
    for (const auto& entry : fs::directory_iterator(path_)) fs::remove_all(entry.path());
    return path_;
  }

 private:
  fs::path path_;
};

inline ScratchDir& scratch() {
  static ScratchDir dir;
  return dir;
}

inline void write_bytes(const fs::path& path, std::string_view bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// The input cut at every occurrence of `separator` (an input without one is one part).
inline std::vector<std::string_view> split(std::string_view input, std::string_view separator) {
  std::vector<std::string_view> parts;
  for (;;) {
    size_t at = input.find(separator);
    parts.push_back(input.substr(0, at));
    if (at == std::string_view::npos) return parts;
    input.remove_prefix(at + separator.size());
  }
}

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

}  // namespace lg::fuzzing
