// nn/safetensors.h: reading and writing named float32 tensors in the safetensors file format.
//
// The format (https://github.com/huggingface/safetensors), as written and checked here:
//   bytes [0, 8)        N, the header length, unsigned 64-bit little-endian
//   bytes [8, 8 + N)    a JSON object, padded with spaces so the data starts 8-byte aligned:
//                         {"__metadata__": {"key": "value", ...},            (optional)
//                          "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
//   bytes [8 + N, end)  the data section: each tensor's elements, row-major, little-endian;
//                       offsets count from the start of this section, and the tensors
//                       cover it exactly, without gaps or overlaps.
// Only F32 is supported: that is the only dtype this engine has.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "nn/module.h"

namespace lg::nn {

// Writes the tensors in the given order (names must be unique and non-empty). Atomic
// (lg::files::write_file_atomic): the bytes go to a temporary file beside `path`, are fsynced,
// and the file is renamed over `path`, so a crash leaves either the old file or the complete new
// one. Throws lg::Error on any I/O failure.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Reads every tensor (fresh contiguous leaves, no grad). When `metadata` is given it receives
// the "__metadata__" entries. Throws lg::Error naming the file and the problem when it is
// missing, truncated or corrupted: bad header length, malformed JSON, a dtype other than F32,
// offsets that disagree with the shape, fall outside the data, overlap or leave gaps.
std::map<std::string, Tensor> read_safetensors(const std::string& path,
                                               std::map<std::string, std::string>* metadata = nullptr);

// A module's parameters under their dotted names (Module::named_parameters).
void save_module(const Module& module, const std::string& path,
                 const std::map<std::string, std::string>& metadata = {});
// Copies a file written by save_module into the module's existing parameters; throws lg::Error
// (from Module::load_state_dict) on a missing, unexpected or mis-shaped parameter.
void load_module(Module& module, const std::string& path);

}  // namespace lg::nn
