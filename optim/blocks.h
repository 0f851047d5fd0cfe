// optim/blocks.h: a list of parameters cut into fixed-size blocks, for one parallel loop over all of them.
//
// A model has a few large matrices and many small vectors. One parallel loop per tensor pays a
// fork and a barrier for each and runs the small ones on one thread; one loop over fixed-size
// blocks of every tensor pays one and keeps the threads evenly loaded. The cut does not depend
// on the thread count, so a per-block result (a partial sum) is the same on any thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace lg::optim {

struct Block {
  int64_t tensor;  // index into the caller's list
  int64_t begin, end;  // element range within it
};

// sizes[i] elements of tensor i -> blocks of at most kBlockElements, tensor by tensor.
inline std::vector<Block> cut_into_blocks(const std::vector<int64_t>& sizes) {
  constexpr int64_t kBlockElements = 1 << 14;
  std::vector<Block> blocks;
  for (int64_t i = 0; i < static_cast<int64_t>(sizes.size()); ++i)
    for (int64_t b = 0; b < sizes[i]; b += kBlockElements)
      blocks.push_back({i, b, std::min(sizes[i], b + kBlockElements)});
  return blocks;
}

}  // namespace lg::optim
