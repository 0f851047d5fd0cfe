// fuzz/fuzz_safetensors.cpp: the safetensors reader (read_safetensors, load_module) on arbitrary files.
//
// The input is the whole file. Each run reads it as raw tensors, then loads it into a tiny
// module (TinyModule in seed_model.h) as load_module does for a checkpoint's weights.
// lg::Error is the reader's answer to a bad file; anything else escaping is a finding.
#include <cstdlib>

#include "fuzz/fuzz_files.h"
#include "fuzz/seed_model.h"
#include "nn/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = (lg::fuzzing::scratch().fresh() / "t.safetensors").string();
  lg::fuzzing::write_bytes(path, lg::fuzzing::as_text(data, size));
  try {
    std::map<std::string, std::string> metadata;
    auto tensors = lg::nn::read_safetensors(path, &metadata);
    // What the reader promises: named, contiguous tensors whose every element can be read (ASan
    // checks the reads).
    for (const auto& [name, t] : tensors) {
      if (name.empty() || name == "__metadata__" || !t.is_contiguous()) std::abort();
      if (t.to_vector().size() != static_cast<size_t>(t.numel())) std::abort();
    }
  } catch (const lg::Error&) {
  }
  try {
    lg::fuzzing::TinyModule module;
    lg::nn::load_module(module, path);
  } catch (const lg::Error&) {
  }
  return 0;
}
