// core/shape_ops.cpp: reshape, transpose, permute, slice (views), concat, split, contiguous.
//
// A view shares its input's storage and only changes shape, strides and offset. Its
// gradient is the inverse rearrangement of the output gradient.
#include <fmt/format.h>

#include <numeric>

#include "core/ops.h"

namespace lg {

static Tensor make_view(const Tensor& x, Shape shape, Shape strides, int64_t offset) {
  auto v = std::make_shared<TensorImpl>();
  v->storage = x.impl().storage;
  v->offset = offset;
  v->shape = std::move(shape);
  v->strides = std::move(strides);
  return Tensor(std::move(v));
}

static int64_t axis_index(int64_t axis, int64_t ndim, const char* op, const Shape& shape) {
  int64_t a = axis < 0 ? axis + ndim : axis;
  if (a < 0 || a >= ndim)
    throw Error(fmt::format("{}: axis {} out of range for shape {}", op, axis, shape_str(shape)));
  return a;
}

Tensor contiguous(const Tensor& x) {
  if (x.is_contiguous()) return x;
  Tensor out = contiguous_copy(x);
  return attach_node(out, "contiguous", {x}, [x](const Tensor& g) { accumulate_grad(x, g); });
}

Tensor reshape(const Tensor& x, const Shape& shape) {
  Shape target = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < target.size(); ++i) {
    if (target[i] == -1) {
      if (infer >= 0) throw Error(fmt::format("reshape: more than one -1 in {}", shape_str(shape)));
      infer = static_cast<int64_t>(i);
    } else if (target[i] < 0) {
      throw Error(fmt::format("reshape: negative dimension in {}", shape_str(shape)));
    } else {
      known *= target[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || x.numel() % known != 0)
      throw Error(fmt::format("reshape: cannot reshape {} into {}", shape_str(x.shape()), shape_str(shape)));
    target[infer] = x.numel() / known;
  }
  if (shape_numel(target) != x.numel())
    throw Error(fmt::format("reshape: cannot reshape {} ({} elements) into {}", shape_str(x.shape()),
                            x.numel(), shape_str(shape)));
  Tensor src = x.is_contiguous() ? x : contiguous_copy(x);
  Tensor out = make_view(src, target, contiguous_strides(target), src.impl().offset);
  Shape in_shape = x.shape();
  return attach_node(out, "reshape", {x}, [x, in_shape](Tensor g) {
    Tensor r = reshape(g, in_shape);
    g = Tensor();  // r alone views the buffer now, so accumulate_grad can take it
    accumulate_grad(x, std::move(r));
  });
}

Tensor permute(const Tensor& x, const std::vector<int64_t>& dims) {
  int64_t n = x.dim();
  if (static_cast<int64_t>(dims.size()) != n)
    throw Error(fmt::format("permute: {} axes given for shape {}", dims.size(), shape_str(x.shape())));
  std::vector<int64_t> order(n);
  std::vector<bool> seen(n, false);
  for (int64_t i = 0; i < n; ++i) {
    int64_t d = axis_index(dims[i], n, "permute", x.shape());
    if (seen[d]) throw Error(fmt::format("permute: axis {} repeated for shape {}", d, shape_str(x.shape())));
    seen[d] = true;
    order[i] = d;
  }
  Shape shape(n), strides(n);
  for (int64_t i = 0; i < n; ++i) {
    shape[i] = x.shape()[order[i]];
    strides[i] = x.strides()[order[i]];
  }
  Tensor out = make_view(x, shape, strides, x.impl().offset);
  std::vector<int64_t> inverse(n);
  for (int64_t i = 0; i < n; ++i) inverse[order[i]] = i;
  return attach_node(out, "permute", {x}, [x, inverse](const Tensor& g) {
    accumulate_grad(x, contiguous_copy(permute(g, inverse)));
  });
}

Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  int64_t a = axis_index(d0, x.dim(), "transpose", x.shape());
  int64_t b = axis_index(d1, x.dim(), "transpose", x.shape());
  Shape shape = x.shape(), strides = x.strides();
  std::swap(shape[a], shape[b]);
  std::swap(strides[a], strides[b]);
  Tensor out = make_view(x, shape, strides, x.impl().offset);
  return attach_node(out, "transpose", {x}, [x, a, b](const Tensor& g) {
    accumulate_grad(x, contiguous_copy(transpose(g, a, b)));
  });
}

// region += g in place, region a (possibly strided) view of a gradient buffer, g of its shape.
// The backward of slice and select: it adds into the input's gradient where the view sits, with
// no temporary of the input's full shape (a tensor cut into N pieces would otherwise cost N
// full-size buffers in backward).
static void add_into_view(const Tensor& region, const Tensor& g) {
  Tensor gc = g.is_contiguous() ? g : contiguous_copy(g);
  const float* src = gc.data();
  if (region.is_contiguous()) {
    float* dst = region.data();
    const int64_t n = region.numel();
#pragma omp parallel for schedule(static) if (n > (1 << 15))
    for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
    return;
  }
  // Row by row into the strided region.
  const Shape& rs = region.shape();
  const int64_t cols = rs.back(), cs = region.strides().back();
  const int64_t rows = cols ? region.numel() / cols : 0;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t off = 0, rem = r;
    for (int64_t d = static_cast<int64_t>(rs.size()) - 2; d >= 0; --d) {
      off += (rem % rs[d]) * region.strides()[d];
      rem /= rs[d];
    }
    float* dst = region.data() + off;
    const float* row = src + r * cols;
    for (int64_t j = 0; j < cols; ++j) dst[j * cs] += row[j];
  }
}

Tensor slice(const Tensor& x, int64_t axis, int64_t start, int64_t end) {
  int64_t a = axis_index(axis, x.dim(), "slice", x.shape());
  int64_t n = x.shape()[a];
  if (start < 0 || end > n || start > end)
    throw Error(fmt::format("slice: range [{}, {}) out of bounds for axis {} of shape {}", start, end,
                            axis, shape_str(x.shape())));
  Shape shape = x.shape();
  shape[a] = end - start;
  Tensor out = make_view(x, shape, x.strides(), x.impl().offset + start * x.strides()[a]);
  return attach_node(out, "slice", {x}, [x, a, start, end](const Tensor& g) {
    if (x.requires_grad()) add_into_view(slice(grad_buffer(x), a, start, end), g);
  });
}

Tensor select(const Tensor& x, int64_t axis, int64_t index) {
  int64_t a = axis_index(axis, x.dim(), "select", x.shape());
  if (index < 0 || index >= x.shape()[a])
    throw Error(fmt::format("select: index {} out of range for axis {} of shape {}", index, axis,
                            shape_str(x.shape())));
  Shape shape = x.shape(), strides = x.strides();
  shape.erase(shape.begin() + a);
  strides.erase(strides.begin() + a);
  Tensor out = make_view(x, shape, strides, x.impl().offset + index * x.strides()[a]);
  return attach_node(out, "select", {x}, [x, a, index](const Tensor& g) {
    if (!x.requires_grad()) return;
    Tensor buf = grad_buffer(x);
    Shape rs = buf.shape(), rstrides = buf.strides();
    rs.erase(rs.begin() + a);
    rstrides.erase(rstrides.begin() + a);
    add_into_view(make_view(buf, rs, rstrides, buf.impl().offset + index * buf.strides()[a]), g);
  });
}

Tensor concat(const std::vector<Tensor>& xs, int64_t axis) {
  if (xs.empty()) throw Error("concat: no tensors given");
  int64_t n = xs[0].dim();
  int64_t a = axis_index(axis, n, "concat", xs[0].shape());
  Shape shape = xs[0].shape();
  shape[a] = 0;
  for (const Tensor& t : xs) {
    bool ok = t.dim() == n;
    for (int64_t d = 0; ok && d < n; ++d) ok = d == a || t.shape()[d] == xs[0].shape()[d];
    if (!ok)
      throw Error(fmt::format("concat: shape {} does not match {} along axes other than {}",
                              shape_str(t.shape()), shape_str(xs[0].shape()), a));
    shape[a] += t.shape()[a];
  }
  Tensor out = Tensor::empty(shape);
  // out viewed as (outer, shape[a] * inner): each input fills a column band of every row.
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < a; ++d) outer *= shape[d];
  for (int64_t d = a + 1; d < n; ++d) inner *= shape[d];
  int64_t row = shape[a] * inner, col = 0;
  std::vector<int64_t> starts;
  for (const Tensor& t : xs) {
    Tensor tc = t.is_contiguous() ? t : contiguous_copy(t);
    int64_t width = t.shape()[a] * inner;
    for (int64_t o = 0; o < outer; ++o)
      std::copy_n(tc.data() + o * width, width, out.data() + o * row + col);
    starts.push_back(col / std::max<int64_t>(inner, 1));
    col += width;
  }
  return attach_node(out, "concat", xs, [xs, a, starts](const Tensor& g) {
    for (size_t i = 0; i < xs.size(); ++i)
      if (xs[i].requires_grad())
        accumulate_grad(xs[i], contiguous_copy(slice(g, a, starts[i], starts[i] + xs[i].shape()[a])));
  });
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t axis) {
  int64_t a = axis_index(axis, x.dim(), "split", x.shape());
  int64_t total = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  if (total != x.shape()[a])
    throw Error(fmt::format("split: sizes sum to {}, axis {} of shape {} has {}", total, axis,
                            shape_str(x.shape()), x.shape()[a]));
  std::vector<Tensor> parts;
  int64_t start = 0;
  for (int64_t s : sizes) {
    parts.push_back(slice(x, a, start, start + s));
    start += s;
  }
  return parts;
}

}  // namespace lg
