// nn/rope.cpp: the rotary embedding as fused ops with their backward, and its angle table.
#include "nn/rope.h"

#include <fmt/format.h>

#include <cmath>
#include <memory>

namespace lg::nn {

namespace {

// cos and sin of position * base^(-2i/d) for T positions from first_position: (T, d/2) each,
// computed in double then rounded once.
struct AngleTable {
  int64_t first_position, T, d;
  float base;
  std::vector<float> cos, sin;
};

// A training step asks for the same few tables (one per window length) again and again, so
// each thread keeps the last few it computed: cos and sin of T d / 2 angles cost more than
// the rotation itself.
const AngleTable& angle_table(int64_t first_position, int64_t T, int64_t d, float base) {
  constexpr size_t kKept = 4;
  thread_local std::vector<std::shared_ptr<AngleTable>> kept;
  for (const auto& t : kept)
    if (t->first_position == first_position && t->T == T && t->d == d && t->base == base) return *t;
  auto t = std::make_shared<AngleTable>();
  *t = {first_position, T, d, base, std::vector<float>(T * d / 2), std::vector<float>(T * d / 2)};
  for (int64_t i = 0; i < d / 2; ++i) {
    const double inv_freq = std::pow(static_cast<double>(base), -2.0 * static_cast<double>(i) / static_cast<double>(d));
    for (int64_t p = 0; p < T; ++p) {
      const double angle = static_cast<double>(first_position + p) * inv_freq;
      t->cos[p * d / 2 + i] = static_cast<float>(std::cos(angle));
      t->sin[p * d / 2 + i] = static_cast<float>(std::sin(angle));
    }
  }
  if (kept.size() == kKept) kept.erase(kept.begin());
  kept.push_back(t);
  return *t;
}

// out = R(sign * angle) in for one row of d; sign -1 is the inverse rotation (the gradient).
// add: out += instead of out =.
template <bool kAdd>
inline void rotate_row(const float* __restrict in, const float* __restrict c, const float* __restrict s, float sign,
                       int64_t d, float* __restrict out) {
  for (int64_t i = 0; i < d / 2; ++i) {
    const float a = in[2 * i], b = in[2 * i + 1], si = sign * s[i];
    const float y0 = a * c[i] - b * si, y1 = a * si + b * c[i];
    if (kAdd) {
      out[2 * i] += y0;
      out[2 * i + 1] += y1;
    } else {
      out[2 * i] = y0;
      out[2 * i + 1] = y1;
    }
  }
}

Tensor rotate(const Tensor& x, int64_t first_position, float base, float sign) {
  Tensor xc = x.is_contiguous() ? x : contiguous_copy(x);
  const int64_t T = x.size(-2), d = x.size(-1);
  const int64_t rows = x.numel() / d;
  Tensor y = Tensor::empty(x.shape());
  const AngleTable& table = angle_table(first_position, T, d, base);
  const float* px = xc.data();
  float* py = y.data();
#pragma omp parallel for schedule(static) if (rows > 256)
  for (int64_t r = 0; r < rows; ++r)
    rotate_row<false>(px + r * d, table.cos.data() + (r % T) * d / 2, table.sin.data() + (r % T) * d / 2, sign, d,
                      py + r * d);
  return y;
}

}  // namespace

Tensor rope(const Tensor& x, int64_t first_position, float base) {
  if (x.dim() < 2 || x.size(-1) % 2 != 0)
    throw Error(fmt::format("rope: input must be (..., T, d) with d even, got {}", shape_str(x.shape())));
  Tensor y = rotate(x, first_position, base, 1.0f);
  return attach_node(y, "rope", {x}, [x, first_position, base](const Tensor& g) {
    accumulate_grad(x, rotate(g, first_position, base, -1.0f));
  });
}

Tensor split_heads_rope(const Tensor& x, int64_t heads, const std::vector<HeadPart>& parts, int64_t first_position,
                        float base) {
  if (x.dim() != 3 || heads < 1 || parts.empty())
    throw Error(fmt::format("split_heads_rope: input must be (B, T, G D) with heads >= 1 and parts, got {}, "
                            "{} heads, {} parts",
                            shape_str(x.shape()), heads, parts.size()));
  const int64_t B = x.size(0), T = x.size(1), width = x.size(2);
  int64_t groups = 0;
  for (const HeadPart& p : parts) groups = std::max(groups, p.group + 1);
  for (const HeadPart& p : parts)
    if (p.group < 0) throw Error(fmt::format("split_heads_rope: negative group {}", p.group));
  if (width % (groups * heads) != 0 || (width / (groups * heads)) % 2 != 0)
    throw Error(fmt::format("split_heads_rope: width {} of {} does not hold {} groups of {} heads of even size",
                            width, shape_str(x.shape()), groups, heads));
  const int64_t H = heads, d = width / (groups * heads), D = H * d, P = static_cast<int64_t>(parts.size());
  Tensor xc = x.is_contiguous() ? x : contiguous_copy(x);
  Tensor out = Tensor::empty({P, B, H, T, d});
  const AngleTable& table = angle_table(first_position, T, d, base);
  const float* px = xc.data();
  float* po = out.data();
  // One (b, t) row of x feeds row t of every part and head.
#pragma omp parallel for schedule(static) if (B * T * P * D > (1 << 15))
  for (int64_t bt = 0; bt < B * T; ++bt) {
    const int64_t b = bt / T, t = bt % T;
    const float *c = table.cos.data() + t * d / 2, *s = table.sin.data() + t * d / 2;
    for (int64_t p = 0; p < P; ++p)
      for (int64_t h = 0; h < H; ++h) {
        const float* in = px + bt * width + parts[p].group * D + h * d;
        float* o = po + (((p * B + b) * H + h) * T + t) * d;
        if (parts[p].rotate)
          rotate_row<false>(in, c, s, 1.0f, d, o);
        else
          std::copy_n(in, d, o);
      }
  }
  return attach_node(out, "split_heads_rope", {x}, [x, parts, B, T, H, d, groups, first_position, base](const Tensor& g) {
    const int64_t D = H * d, width = groups * D, P = static_cast<int64_t>(parts.size());
    Tensor gc = g.is_contiguous() ? g : contiguous_copy(g);
    Tensor gx = Tensor::empty({B, T, width});
    const AngleTable& table = angle_table(first_position, T, d, base);
    const float* pg = gc.data();
    float* px = gx.data();
#pragma omp parallel for schedule(static) if (B * T * P * D > (1 << 15))
    for (int64_t bt = 0; bt < B * T; ++bt) {
      const int64_t b = bt / T, t = bt % T;
      const float *c = table.cos.data() + t * d / 2, *s = table.sin.data() + t * d / 2;
      for (int64_t grp = 0; grp < groups; ++grp) {
        float* dst = px + bt * width + grp * D;
        bool written = false;  // the group's first part assigns, later ones add
        for (int64_t p = 0; p < P; ++p) {
          if (parts[p].group != grp) continue;
          for (int64_t h = 0; h < H; ++h) {
            const float* in = pg + (((p * B + b) * H + h) * T + t) * d;
            float* o = dst + h * d;
            if (parts[p].rotate) {
              if (written)
                rotate_row<true>(in, c, s, -1.0f, d, o);
              else
                rotate_row<false>(in, c, s, -1.0f, d, o);
            } else if (written) {
              for (int64_t i = 0; i < d; ++i) o[i] += in[i];
            } else {
              std::copy_n(in, d, o);
            }
          }
          written = true;
        }
        if (!written) std::fill_n(dst, D, 0.0f);
      }
    }
    accumulate_grad(x, std::move(gx));
  });
}

std::vector<Tensor> unstack(const Tensor& packed) {
  if (packed.dim() < 1) throw Error("unstack: needs at least one axis, got a scalar");
  std::vector<Tensor> out;
  for (int64_t p = 0; p < packed.size(0); ++p) out.push_back(select(packed, 0, p));
  return out;
}

}  // namespace lg::nn
