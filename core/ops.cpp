// core/ops.cpp: elementwise ops with broadcasting, reductions, cumsum, and thread control.
#include "core/ops.h"

#include "core/fastmath.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace lg {

// Loops shorter than this run on one thread: a parallel region costs a few microseconds.
static constexpr int64_t kParallelGrain = 1 << 15;

// ============================================================================
// Broadcasting
// ============================================================================

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    if (da != db && da != 1 && db != 1)
      throw Error(fmt::format("{}: shapes {} and {} do not broadcast", op, shape_str(a),
                              shape_str(b)));
    out[i] = da == 1 ? db : da;
  }
  return out;
}

// t's strides expressed in out's dimensions: 0 along broadcast (or missing) dimensions.
static Shape broadcast_strides(const Tensor& t, const Shape& out) {
  size_t n = out.size(), k = t.shape().size();
  Shape s(n, 0);
  for (size_t i = 0; i < k; ++i) {
    size_t o = n - k + i;
    s[o] = t.shape()[i] == 1 && out[o] != 1 ? 0 : t.strides()[i];
  }
  return s;
}

// Offset of row r (all dimensions but the last) of `shape` under `strides`.
static inline int64_t row_offset(int64_t r, const Shape& shape, const Shape& strides) {
  int64_t off = 0;
  for (int64_t d = static_cast<int64_t>(shape.size()) - 2; d >= 0; --d) {
    off += (r % shape[d]) * strides[d];
    r /= shape[d];
  }
  return off;
}

// out[i] = f(a[i], b[i]) over the broadcast shape. Contiguous same-shape inputs take a flat loop.
template <class F>
static Tensor binary_kernel(const Tensor& a, const Tensor& b, const char* op, F f) {
  Shape shape = broadcast_shapes(a.shape(), b.shape(), op);
  Tensor out = Tensor::empty(shape);
  float* o = out.data();
  const float* pa = a.data();
  const float* pb = b.data();
  int64_t n = out.numel();
  if (a.shape() == b.shape() && a.is_contiguous() && b.is_contiguous()) {
#pragma omp parallel for schedule(static) if (n > kParallelGrain)
    for (int64_t i = 0; i < n; ++i) o[i] = f(pa[i], pb[i]);
    return out;
  }
  if (n == 0) return out;
  Shape sa = broadcast_strides(a, shape), sb = broadcast_strides(b, shape);
  int64_t cols = shape.empty() ? 1 : shape.back();
  int64_t rows = n / cols;
  int64_t ca = shape.empty() ? 0 : sa.back(), cb = shape.empty() ? 0 : sb.back();
#pragma omp parallel for schedule(static) if (n > kParallelGrain)
  for (int64_t r = 0; r < rows; ++r) {
    const float* ra = pa + row_offset(r, shape, sa);
    const float* rb = pb + row_offset(r, shape, sb);
    float* ro = o + r * cols;
    for (int64_t j = 0; j < cols; ++j) ro[j] = f(ra[j * ca], rb[j * cb]);
  }
  return out;
}

Tensor sum_to(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  Tensor out = Tensor::zeros(shape);
  // out viewed in g's dimensions, with stride 0 along the dimensions being summed.
  Shape so = broadcast_strides(out, g.shape());
  Tensor gc = g.is_contiguous() ? g : contiguous_copy(g);
  const Shape& gs = gc.shape();
  int64_t cols = gs.empty() ? 1 : gs.back();
  int64_t rows = gc.numel() / std::max<int64_t>(cols, 1);
  int64_t co = gs.empty() ? 0 : so.back();
  const float* pg = gc.data();
  float* po = out.data();
  for (int64_t r = 0; r < rows; ++r) {
    float* ro = po + row_offset(r, gs, so);
    const float* rg = pg + r * cols;
    if (co == 0) {
      double acc = 0;
      for (int64_t j = 0; j < cols; ++j) acc += rg[j];
      ro[0] += static_cast<float>(acc);
    } else {
      for (int64_t j = 0; j < cols; ++j) ro[j * co] += rg[j];
    }
  }
  return out;
}

Tensor contiguous_copy(const Tensor& x) {
  Tensor out = Tensor::empty(x.shape());
  int64_t n = x.numel();
  if (n == 0) return out;
  if (x.is_contiguous()) {
    const float* px = x.data();
    float* po = out.data();
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) po[i] = px[i];
    return out;
  }
  const Shape& shape = x.shape();
  int64_t cols = shape.back();
  int64_t rows = n / cols;
  int64_t cs = x.strides().back();
  const float* px = x.data();
  float* po = out.data();
#pragma omp parallel for schedule(static) if (n > kParallelGrain)
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = px + row_offset(r, shape, x.strides());
    float* dst = po + r * cols;
    for (int64_t j = 0; j < cols; ++j) dst[j] = src[j * cs];
  }
  return out;
}

void add_into(Tensor& dst, const Tensor& src) {
  if (dst.shape() != src.shape() || !dst.is_contiguous())
    throw Error(fmt::format("add_into: destination {} and source {}", shape_str(dst.shape()),
                            shape_str(src.shape())));
  Tensor s = src.is_contiguous() ? src : contiguous_copy(src);
  float* d = dst.data();
  const float* p = s.data();
  int64_t n = dst.numel();
#pragma omp parallel for schedule(static) if (n > kParallelGrain)
  for (int64_t i = 0; i < n; ++i) d[i] += p[i];
}

// ============================================================================
// Binary elementwise
// ============================================================================

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel(a, b, "add", [](float x, float y) { return x + y; });
  return attach_node(out, "add", {a, b}, [a, b](Tensor g) {
    accumulate_grad(a, sum_to(g, a.shape()));  // a copy (or an addition): b may take g itself
    if (g.shape() == b.shape())
      accumulate_grad(b, std::move(g));
    else
      accumulate_grad(b, sum_to(g, b.shape()));
  });
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel(a, b, "sub", [](float x, float y) { return x - y; });
  return attach_node(out, "sub", {a, b}, [a, b](const Tensor& g) {
    accumulate_grad(a, sum_to(g, a.shape()));
    if (b.requires_grad()) accumulate_grad(b, sum_to(neg(g), b.shape()));
  });
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel(a, b, "mul", [](float x, float y) { return x * y; });
  return attach_node(out, "mul", {a, b}, [a, b](const Tensor& g) {
    if (a.requires_grad()) accumulate_grad(a, sum_to(mul(g, b), a.shape()));
    if (b.requires_grad()) accumulate_grad(b, sum_to(mul(g, a), b.shape()));
  });
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_kernel(a, b, "div", [](float x, float y) { return x / y; });
  return attach_node(out, "div", {a, b}, [a, b](const Tensor& g) {
    if (a.requires_grad()) accumulate_grad(a, sum_to(div(g, b), a.shape()));
    // d(a/b)/db = -a / b^2
    if (b.requires_grad())
      accumulate_grad(b, sum_to(neg(div(mul(g, a), mul(b, b))), b.shape()));
  });
}

Tensor masked_fill(const Tensor& x, const Tensor& mask, float value) {
  if (broadcast_shapes(x.shape(), mask.shape(), "masked_fill") != x.shape())
    throw Error(fmt::format("masked_fill: mask {} does not broadcast to input {}",
                            shape_str(mask.shape()), shape_str(x.shape())));
  Tensor out = binary_kernel(x, mask, "masked_fill",
                             [value](float v, float m) { return m != 0.0f ? value : v; });
  Tensor m = mask.detach();
  return attach_node(out, "masked_fill", {x},
                     [x, m](const Tensor& g) { accumulate_grad(x, masked_fill(g, m, 0.0f)); });
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape())
    throw Error(fmt::format("where: branches have shapes {} and {}", shape_str(a.shape()),
                            shape_str(b.shape())));
  if (broadcast_shapes(a.shape(), cond.shape(), "where") != a.shape())
    throw Error(fmt::format("where: condition {} does not broadcast to {}",
                            shape_str(cond.shape()), shape_str(a.shape())));
  // Where cond is set, b is masked out, and vice versa.
  Tensor picked_a = binary_kernel(a, cond, "where", [](float v, float c) { return c != 0.0f ? v : 0.0f; });
  Tensor out = binary_kernel(b, cond, "where", [](float v, float c) { return c != 0.0f ? 0.0f : v; });
  add_into(out, picked_a);
  Tensor c = cond.detach();
  return attach_node(out, "where", {a, b}, [a, b, c](const Tensor& g) {
    if (a.requires_grad())
      accumulate_grad(a, binary_kernel(g, c, "where", [](float v, float k) { return k != 0.0f ? v : 0.0f; }));
    if (b.requires_grad()) accumulate_grad(b, masked_fill(g, c, 0.0f));
  });
}

// ============================================================================
// Unary elementwise: forward f(x) and derivative df(x, y) side by side
// ============================================================================

template <class F, class DF>
static Tensor unary(const char* op, const Tensor& x, F f, DF df) {
  Tensor xc = x.is_contiguous() ? x : contiguous_copy(x);
  Tensor out = Tensor::empty(x.shape());
  const float* px = xc.data();
  float* po = out.data();
  int64_t n = out.numel();
#pragma omp parallel for schedule(static) if (n > kParallelGrain)
  for (int64_t i = 0; i < n; ++i) po[i] = f(px[i]);
  // The closure keeps the input's values and the output's values (a detached handle to
  // the output storage: no cycle through the output's node).
  Tensor y = out.detach();
  return attach_node(out, op, {x}, [x, xc, y, df](Tensor g) {
    Tensor gc = g.is_contiguous() ? std::move(g) : contiguous_copy(g);
    // dx is written over the output's gradient when nothing else shares that buffer: one
    // buffer fewer, and the one already in cache.
    Tensor gx = owns_buffer(gc) ? gc : Tensor::empty(x.shape());
    const float* pg = gc.data();
    const float* pxx = xc.data();
    const float* py = y.data();
    float* pgx = gx.data();
    int64_t m = gx.numel();
#pragma omp parallel for schedule(static) if (m > kParallelGrain)
    for (int64_t i = 0; i < m; ++i) pgx[i] = pg[i] * df(pxx[i], py[i]);
    gc = Tensor();  // gx alone holds the result, so accumulate_grad can take it
    accumulate_grad(x, std::move(gx));
  });
}

Tensor neg(const Tensor& x) {
  return unary("neg", x, [](float v) { return -v; }, [](float, float) { return -1.0f; });
}

Tensor add_scalar(const Tensor& x, float s) {
  return unary("add_scalar", x, [s](float v) { return v + s; }, [](float, float) { return 1.0f; });
}

Tensor mul_scalar(const Tensor& x, float s) {
  return unary("mul_scalar", x, [s](float v) { return v * s; }, [s](float, float) { return s; });
}

Tensor pow_scalar(const Tensor& x, float p) {
  return unary(
      "pow_scalar", x, [p](float v) { return std::pow(v, p); },
      [p](float v, float) { return p * std::pow(v, p - 1.0f); });
}

Tensor exp(const Tensor& x) {
  return unary("exp", x, [](float v) { return fast_exp(v); }, [](float, float y) { return y; });
}

Tensor log(const Tensor& x) {
  return unary("log", x, [](float v) { return std::log(v); }, [](float v, float) { return 1.0f / v; });
}

Tensor sqrt(const Tensor& x) {
  return unary("sqrt", x, [](float v) { return std::sqrt(v); },
               [](float, float y) { return 0.5f / y; });
}

Tensor rsqrt(const Tensor& x) {
  // d/dx x^(-1/2) = -1/2 x^(-3/2) = -1/2 y^3
  return unary("rsqrt", x, [](float v) { return 1.0f / std::sqrt(v); },
               [](float, float y) { return -0.5f * y * y * y; });
}

Tensor tanh(const Tensor& x) {
  return unary("tanh", x, [](float v) { return fast_tanh(v); },
               [](float, float y) { return 1.0f - y * y; });
}

Tensor sigmoid(const Tensor& x) {
  return unary("sigmoid", x, [](float v) { return 1.0f / (1.0f + fast_exp(-v)); },
               [](float, float y) { return y * (1.0f - y); });
}

Tensor relu(const Tensor& x) {
  return unary("relu", x, [](float v) { return v > 0.0f ? v : 0.0f; },
               [](float v, float) { return v > 0.0f ? 1.0f : 0.0f; });
}

// GELU, tanh form (Hendrycks & Gimpel; GPT-2): 0.5 x (1 + tanh(c (x + 0.044715 x^3))).
static constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2 / pi)
Tensor gelu(const Tensor& x) {
  return unary(
      "gelu", x,
      [](float v) { return 0.5f * v * (1.0f + fast_tanh(kGeluC * (v + 0.044715f * v * v * v))); },
      [](float v, float) {
        float t = fast_tanh(kGeluC * (v + 0.044715f * v * v * v));
        float dinner = kGeluC * (1.0f + 3.0f * 0.044715f * v * v);
        return 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * dinner;
      });
}

Tensor dropout(const Tensor& x, float p, Rng& rng) {
  if (p < 0.0f || p >= 1.0f) throw Error(fmt::format("dropout: probability {} not in [0, 1)", p));
  // The mask is drawn serially from rng, so it depends only on the seed, not on threads.
  Tensor mask = Tensor::empty(x.shape());
  float scale = 1.0f / (1.0f - p);
  float* pm = mask.data();
  for (int64_t i = 0; i < mask.numel(); ++i) pm[i] = rng.uniform() >= p ? scale : 0.0f;
  Tensor out = binary_kernel(x, mask, "dropout", [](float v, float m) { return v * m; });
  return attach_node(out, "dropout", {x}, [x, mask](const Tensor& g) {
    accumulate_grad(x, binary_kernel(g, mask, "dropout", [](float v, float m) { return v * m; }));
  });
}

// ============================================================================
// Reductions
// ============================================================================

static int64_t normalize_axis(int64_t axis, int64_t ndim, const char* op, const Shape& shape) {
  int64_t a = axis < 0 ? axis + ndim : axis;
  if (a < 0 || a >= ndim)
    throw Error(fmt::format("{}: axis {} out of range for shape {}", op, axis, shape_str(shape)));
  return a;
}

// x viewed as (outer, n, inner) around `axis`.
struct AxisView {
  int64_t outer = 1, n = 1, inner = 1;
};
static AxisView axis_view(const Shape& shape, int64_t axis) {
  AxisView v;
  for (int64_t i = 0; i < axis; ++i) v.outer *= shape[i];
  v.n = shape[axis];
  for (size_t i = axis + 1; i < shape.size(); ++i) v.inner *= shape[i];
  return v;
}

static Shape reduced_shape(const Shape& shape, int64_t axis, bool keepdim) {
  Shape out = shape;
  if (keepdim)
    out[axis] = 1;
  else
    out.erase(out.begin() + axis);
  return out;
}

// Deterministic total: fixed blocks summed in double, then the blocks in order, so the
// result does not depend on the number of threads.
static double total(const float* p, int64_t n) {
  constexpr int64_t kBlock = 4096;
  int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(blocks, 0.0);
#pragma omp parallel for schedule(static) if (n > kParallelGrain)
  for (int64_t b = 0; b < blocks; ++b) {
    double acc = 0;
    for (int64_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i) acc += p[i];
    partial[b] = acc;
  }
  double acc = 0;
  for (double v : partial) acc += v;
  return acc;
}

Tensor sum(const Tensor& x) {
  Tensor xc = x.is_contiguous() ? x : contiguous_copy(x);
  Tensor out = Tensor::full({}, static_cast<float>(total(xc.data(), xc.numel())));
  return attach_node(out, "sum", {x}, [x](const Tensor& g) {
    accumulate_grad(x, Tensor::full(x.shape(), g.item()));
  });
}

Tensor mean(const Tensor& x) {
  if (x.numel() == 0) throw Error(fmt::format("mean: empty tensor of shape {}", shape_str(x.shape())));
  Tensor xc = x.is_contiguous() ? x : contiguous_copy(x);
  float n = static_cast<float>(x.numel());
  Tensor out = Tensor::full({}, static_cast<float>(total(xc.data(), xc.numel()) / n));
  return attach_node(out, "mean", {x}, [x, n](const Tensor& g) {
    accumulate_grad(x, Tensor::full(x.shape(), g.item() / n));
  });
}

// Sum along an axis with per-output double accumulation; shared by sum_axis and mean_axis.
static Tensor sum_axis_kernel(const Tensor& x, int64_t axis, bool keepdim, float scale) {
  Tensor xc = x.is_contiguous() ? x : contiguous_copy(x);
  AxisView v = axis_view(x.shape(), axis);
  Tensor out = Tensor::empty(reduced_shape(x.shape(), axis, keepdim));
  const float* px = xc.data();
  float* po = out.data();
#pragma omp parallel for schedule(static) if (x.numel() > kParallelGrain)
  for (int64_t o = 0; o < v.outer; ++o)
    for (int64_t i = 0; i < v.inner; ++i) {
      double acc = 0;
      for (int64_t k = 0; k < v.n; ++k) acc += px[(o * v.n + k) * v.inner + i];
      po[o * v.inner + i] = static_cast<float>(acc) * scale;
    }
  return out;
}

// Gradient of a reduction along `axis`: g (reduced shape) broadcast back, times scale.
static Tensor expand_along(const Tensor& g, const Shape& shape, int64_t axis, float scale) {
  Shape kept = shape;
  kept[axis] = 1;
  Tensor gk = reshape(g, kept);
  return binary_kernel(gk, Tensor::full(shape, scale), "sum_axis",
                       [](float a, float b) { return a * b; });
}

Tensor sum(const Tensor& x, int64_t axis, bool keepdim) {
  int64_t a = normalize_axis(axis, x.dim(), "sum", x.shape());
  Tensor out = sum_axis_kernel(x, a, keepdim, 1.0f);
  return attach_node(out, "sum_axis", {x}, [x, a](const Tensor& g) {
    accumulate_grad(x, expand_along(g, x.shape(), a, 1.0f));
  });
}

Tensor mean(const Tensor& x, int64_t axis, bool keepdim) {
  int64_t a = normalize_axis(axis, x.dim(), "mean", x.shape());
  if (x.shape()[a] == 0) throw Error(fmt::format("mean: empty axis {} of shape {}", axis, shape_str(x.shape())));
  float scale = 1.0f / static_cast<float>(x.shape()[a]);
  Tensor out = sum_axis_kernel(x, a, keepdim, scale);
  return attach_node(out, "mean_axis", {x}, [x, a, scale](const Tensor& g) {
    accumulate_grad(x, expand_along(g, x.shape(), a, scale));
  });
}

Tensor max(const Tensor& x) {
  if (x.numel() == 0) throw Error(fmt::format("max: empty tensor of shape {}", shape_str(x.shape())));
  Tensor xc = x.is_contiguous() ? x : contiguous_copy(x);
  const float* p = xc.data();
  int64_t best = 0;
  for (int64_t i = 1; i < xc.numel(); ++i)
    if (p[i] > p[best]) best = i;
  Tensor out = Tensor::full({}, p[best]);
  return attach_node(out, "max", {x}, [x, best](const Tensor& g) {
    Tensor gx = Tensor::zeros(x.shape());
    gx.data()[best] = g.item();
    accumulate_grad(x, std::move(gx));
  });
}

Tensor max(const Tensor& x, int64_t axis, bool keepdim) {
  int64_t a = normalize_axis(axis, x.dim(), "max", x.shape());
  if (x.shape()[a] == 0) throw Error(fmt::format("max: empty axis {} of shape {}", axis, shape_str(x.shape())));
  Tensor xc = x.is_contiguous() ? x : contiguous_copy(x);
  AxisView v = axis_view(x.shape(), a);
  Tensor out = Tensor::empty(reduced_shape(x.shape(), a, keepdim));
  auto argmax = std::make_shared<std::vector<int64_t>>(v.outer * v.inner);
  const float* px = xc.data();
  float* po = out.data();
#pragma omp parallel for schedule(static) if (x.numel() > kParallelGrain)
  for (int64_t o = 0; o < v.outer; ++o)
    for (int64_t i = 0; i < v.inner; ++i) {
      int64_t best = 0;
      for (int64_t k = 1; k < v.n; ++k)
        if (px[(o * v.n + k) * v.inner + i] > px[(o * v.n + best) * v.inner + i]) best = k;
      po[o * v.inner + i] = px[(o * v.n + best) * v.inner + i];
      (*argmax)[o * v.inner + i] = best;
    }
  return attach_node(out, "max_axis", {x}, [x, v, argmax](const Tensor& g) {
    Tensor gc = g.is_contiguous() ? g : contiguous_copy(g);
    Tensor gx = Tensor::zeros(x.shape());
    for (int64_t o = 0; o < v.outer; ++o)
      for (int64_t i = 0; i < v.inner; ++i)
        gx.data()[(o * v.n + (*argmax)[o * v.inner + i]) * v.inner + i] = gc.data()[o * v.inner + i];
    accumulate_grad(x, std::move(gx));
  });
}

// Prefix sums along the axis; reverse=true sums from the end (the gradient of cumsum).
static Tensor cumsum_kernel(const Tensor& x, int64_t axis, bool reverse) {
  Tensor xc = x.is_contiguous() ? x : contiguous_copy(x);
  AxisView v = axis_view(x.shape(), axis);
  Tensor out = Tensor::empty(x.shape());
  const float* px = xc.data();
  float* po = out.data();
#pragma omp parallel for schedule(static) if (x.numel() > kParallelGrain)
  for (int64_t o = 0; o < v.outer; ++o)
    for (int64_t i = 0; i < v.inner; ++i) {
      double acc = 0;
      for (int64_t step = 0; step < v.n; ++step) {
        int64_t k = reverse ? v.n - 1 - step : step;
        acc += px[(o * v.n + k) * v.inner + i];
        po[(o * v.n + k) * v.inner + i] = static_cast<float>(acc);
      }
    }
  return out;
}

Tensor cumsum(const Tensor& x, int64_t axis) {
  int64_t a = normalize_axis(axis, x.dim(), "cumsum", x.shape());
  Tensor out = cumsum_kernel(x, a, false);
  return attach_node(out, "cumsum", {x}, [x, a](const Tensor& g) {
    accumulate_grad(x, cumsum_kernel(g, a, true));
  });
}

Tensor causal_mask(int64_t T) {
  Tensor m = Tensor::zeros({T, T});
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = i + 1; j < T; ++j) m.data()[i * T + j] = 1.0f;
  return m;
}

Tensor uniform(const Shape& shape, Rng& rng, float lo, float hi) {
  Tensor t = Tensor::empty(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = lo + (hi - lo) * rng.uniform();
  return t;
}

Tensor randn(const Shape& shape, Rng& rng, float std, float mean_value) {
  Tensor t = Tensor::empty(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = mean_value + std * rng.normal();
  return t;
}

}  // namespace lg
