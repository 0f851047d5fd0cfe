// core/tensor.cpp: tensor storage, creation, gradient accumulation and the backward pass.
#include "core/tensor.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "core/ops.h"

namespace lg {

// ============================================================================
// Shapes and storage
// ============================================================================

std::string shape_str(const Shape& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (int64_t i = static_cast<int64_t>(shape.size()) - 1; i >= 0; --i) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

// Freed buffers are kept by size class and handed out again. A training step allocates
// the same shapes every iteration, so after the first step almost every allocation is a
// hit, and large buffers skip malloc's mmap/munmap and the page faults that follow.
// Size classes (eight per doubling, see storage_bytes) keep sizes that change every call
// (attention scores during generation) from filling the pool with one buffer per size.
// (Sanitizer builds bypass the pool so that use-after-free is still caught.)
class BufferPool {
 public:
  float* take(size_t bytes) {
#ifndef LG_NO_POOL
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(bytes);
      if (it != free_.end() && !it->second.empty()) {
        float* p = it->second.back();
        it->second.pop_back();
        cached_ -= bytes;
        return p;
      }
    }
#endif
    return static_cast<float*>(std::aligned_alloc(64, bytes));
  }
  void give(float* p, [[maybe_unused]] size_t bytes) {
#ifndef LG_NO_POOL
    std::lock_guard<std::mutex> lock(mutex_);
    if (cached_ + bytes <= kMaxCachedBytes) {
      free_[bytes].push_back(p);
      cached_ += bytes;
      return;
    }
#endif
    std::free(p);
  }

 private:
  static constexpr size_t kMaxCachedBytes = size_t{4} << 30;
  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<float*>> free_;
  [[maybe_unused]] size_t cached_ = 0;  // unused when LG_NO_POOL bypasses the pool
};

// Never destroyed: tensors with static storage may outlive any static pool object.
static BufferPool& pool() {
  static BufferPool* p = new BufferPool;
  return *p;
}

// Bytes allocated for n floats: rounded up to a multiple of 1/8 of the largest power of two
// below it (at most 12.5% more than asked) and of 64 (aligned_alloc wants a multiple of
// the alignment).
static size_t storage_bytes(int64_t n) {
  size_t bytes = static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(float);
  size_t step = std::max<size_t>(64, std::bit_floor(bytes) / 8);
  return (bytes + step - 1) / step * step;
}

static std::atomic<int64_t> g_storage_live{0}, g_storage_peak{0};
int64_t storage_bytes_live() { return g_storage_live.load(); }
int64_t storage_bytes_peak() { return g_storage_peak.load(); }
void reset_storage_peak() { g_storage_peak.store(g_storage_live.load()); }

Storage::Storage(int64_t n) : size(n) {
  data = pool().take(storage_bytes(n));
  if (!data) throw Error(fmt::format("out of memory allocating {} floats", n));
  const int64_t live = g_storage_live += static_cast<int64_t>(storage_bytes(n));
  for (int64_t peak = g_storage_peak.load(); live > peak && !g_storage_peak.compare_exchange_weak(peak, live);) {
  }
}

Storage::~Storage() {
  g_storage_live -= static_cast<int64_t>(storage_bytes(size));
  pool().give(data, storage_bytes(size));
}

// ============================================================================
// TensorImpl lifetime: a live counter, and iterative teardown of deep graphs
// ============================================================================

static std::atomic<int64_t> g_live{0};
int64_t live_tensors() { return g_live.load(); }

// Destroying the last handle to a 100,000-op chain would recurse once per node
// (impl -> node -> input impl -> ...). Instead, a dying impl hands its node to a
// thread-local list that the outermost destructor drains in a loop.
static thread_local bool t_tearing_down = false;
static thread_local std::vector<std::shared_ptr<Node>> t_dead_nodes;

TensorImpl::TensorImpl() { ++g_live; }

TensorImpl::~TensorImpl() {
  --g_live;
  if (!node && !grad) return;
  if (node) t_dead_nodes.push_back(std::move(node));
  grad.reset();
  if (t_tearing_down) return;
  t_tearing_down = true;
  while (!t_dead_nodes.empty()) {
    std::shared_ptr<Node> n = std::move(t_dead_nodes.back());
    t_dead_nodes.pop_back();
    n.reset();  // may push more nodes; the loop picks them up
  }
  t_tearing_down = false;
}

// ============================================================================
// Grad mode
// ============================================================================

static thread_local bool t_grad_enabled = true;
bool grad_enabled() { return t_grad_enabled; }
NoGradGuard::NoGradGuard() : previous_(t_grad_enabled) { t_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { t_grad_enabled = previous_; }
EnableGradGuard::EnableGradGuard() : previous_(t_grad_enabled) { t_grad_enabled = true; }
EnableGradGuard::~EnableGradGuard() { t_grad_enabled = previous_; }

// ============================================================================
// Creation and access
// ============================================================================

static Tensor make_contiguous(const Shape& shape) {
  for (int64_t d : shape)
    if (d < 0) throw Error(fmt::format("tensor: negative dimension in shape {}", shape_str(shape)));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(shape_numel(shape));
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  return Tensor(std::move(impl));
}

Tensor Tensor::empty(const Shape& shape) { return make_contiguous(shape); }

Tensor Tensor::full(const Shape& shape, float value) {
  Tensor t = make_contiguous(shape);
  float* p = t.data();
  const int64_t n = t.numel();
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) p[i] = value;
  return t;
}

Tensor Tensor::zeros(const Shape& shape) { return full(shape, 0.0f); }
Tensor Tensor::ones(const Shape& shape) { return full(shape, 1.0f); }

Tensor Tensor::arange(int64_t n) {
  Tensor t = make_contiguous({n});
  for (int64_t i = 0; i < n; ++i) t.data()[i] = static_cast<float>(i);
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& values, const Shape& shape) {
  if (static_cast<int64_t>(values.size()) != shape_numel(shape))
    throw Error(fmt::format("from_vector: {} values do not fill shape {}", values.size(),
                            shape_str(shape)));
  Tensor t = make_contiguous(shape);
  std::copy(values.begin(), values.end(), t.data());
  return t;
}

void Tensor::throw_undefined() { throw Error("tensor: use of an undefined (empty) Tensor handle"); }

int64_t Tensor::size(int64_t d) const {
  int64_t n = dim();
  int64_t k = d < 0 ? d + n : d;
  if (k < 0 || k >= n)
    throw Error(fmt::format("size: dimension {} out of range for shape {}", d, shape_str(shape())));
  return shape()[k];
}

bool Tensor::is_contiguous() const { return strides() == contiguous_strides(shape()) || numel() <= 1; }


float Tensor::item() const {
  if (numel() != 1)
    throw Error(fmt::format("item: tensor of shape {} has {} elements, not 1", shape_str(shape()),
                            numel()));
  return data()[0];
}

float Tensor::at(const std::vector<int64_t>& index) const {
  if (static_cast<int64_t>(index.size()) != dim())
    throw Error(fmt::format("at: {} indices for shape {}", index.size(), shape_str(shape())));
  int64_t off = 0;
  for (int64_t i = 0; i < dim(); ++i) {
    if (index[i] < 0 || index[i] >= shape()[i])
      throw Error(fmt::format("at: index {} out of range for dimension {} of shape {}", index[i],
                              i, shape_str(shape())));
    off += index[i] * strides()[i];
  }
  return data()[off];
}

std::vector<float> Tensor::to_vector() const {
  Tensor c = is_contiguous() ? *this : contiguous(*this);
  return std::vector<float>(c.data(), c.data() + c.numel());
}

// ============================================================================
// Autograd
// ============================================================================

Tensor& Tensor::set_requires_grad(bool on) {
  if (impl().node && !on)
    throw Error(fmt::format("set_requires_grad: '{}' output is part of a graph; use detach()",
                            impl().node->op));
  impl().requires_grad = on;
  return *this;
}

Tensor Tensor::grad() const { return impl().grad ? Tensor(impl().grad) : Tensor(); }
void Tensor::zero_grad() { impl().grad.reset(); }
const char* Tensor::op() const { return impl().node ? impl().node->op : "leaf"; }

void Tensor::set_grad_ready_hook(std::function<void()> hook) {
  if (impl().node) throw Error(fmt::format("set_grad_ready_hook: '{}' output is not a leaf", impl().node->op));
  impl().on_grad_ready = std::move(hook);
}

Tensor Tensor::detach() const {
  auto d = std::make_shared<TensorImpl>();
  d->storage = impl().storage;
  d->offset = impl().offset;
  d->shape = impl().shape;
  d->strides = impl().strides;
  return Tensor(std::move(d));
}

Tensor attach_node(Tensor out, const char* op, std::vector<Tensor> inputs,
                   std::function<void(Tensor)> backward) {
  if (!grad_enabled()) return out;
  bool any = false;
  for (const Tensor& t : inputs) any = any || (t.defined() && t.requires_grad());
  if (!any) return out;
  auto node = std::make_shared<Node>();
  node->op = op;
  node->inputs = std::move(inputs);
  node->backward = std::move(backward);
  out.impl().node = std::move(node);
  out.impl().requires_grad = true;
  return out;
}

void accumulate_grad(const Tensor& target, Tensor g) {
  if (!target.defined() || !target.requires_grad()) return;
  if (g.shape() != target.shape())
    throw Error(fmt::format("backward: gradient of shape {} for tensor of shape {} (op '{}')",
                            shape_str(g.shape()), shape_str(target.shape()), target.op()));
  TensorImpl& t = target.impl();
  if (!t.grad) {
    // Take the buffer when nobody else can see it; otherwise copy.
    Tensor c = owns_buffer(g) ? g : contiguous_copy(g);
    t.grad = c.impl_ptr();
    return;
  }
  Tensor acc(t.grad);
  add_into(acc, g);
}

bool owns_buffer(const Tensor& t) {
  return t.defined() && t.impl_ptr().use_count() == 1 && t.impl().storage.use_count() == 1 && t.is_contiguous() &&
         !t.impl().node;
}

Tensor grad_buffer(const Tensor& target) {
  TensorImpl& t = target.impl();
  if (!t.requires_grad) throw Error(fmt::format("grad_buffer: '{}' output does not require grad", target.op()));
  if (!t.grad) t.grad = Tensor::zeros(t.shape).impl_ptr();
  return Tensor(t.grad);
}

void Tensor::backward() const {
  if (numel() != 1)
    throw Error(fmt::format("backward: output of shape {} is not a scalar; pass a gradient",
                            shape_str(shape())));
  backward(Tensor::ones(shape()));
}

void Tensor::backward(const Tensor& grad_output) const {
  if (!requires_grad())
    throw Error("backward: tensor does not require grad (no input of its graph requires grad)");
  if (grad_output.shape() != shape())
    throw Error(fmt::format("backward: gradient of shape {} for output of shape {}",
                            shape_str(grad_output.shape()), shape_str(shape())));
  if (impl().node && impl().node->released)
    throw Error(fmt::format("backward: the graph through '{}' was already released by an earlier "
                            "backward",
                            impl().node->op));
  NoGradGuard no_grad;

  // Iterative depth-first search for a topological order (inputs before outputs).
  std::vector<std::shared_ptr<TensorImpl>> order;
  std::unordered_set<TensorImpl*> visited;
  std::vector<std::pair<std::shared_ptr<TensorImpl>, size_t>> stack;
  stack.emplace_back(impl_, 0);
  visited.insert(impl_.get());
  while (!stack.empty()) {
    auto& [t, next] = stack.back();
    Node* n = t->node.get();
    if (n && n->released)
      throw Error(fmt::format("backward: the graph through '{}' was already released by an "
                              "earlier backward",
                              n->op));
    if (n && next < n->inputs.size()) {
      const Tensor& in = n->inputs[next++];
      if (in.defined() && in.requires_grad() && visited.insert(in.impl_ptr().get()).second)
        stack.emplace_back(in.impl_ptr(), 0);
    } else {
      order.push_back(std::move(t));
      stack.pop_back();
    }
  }

  // Leaves with a grad-ready hook: how many uses (node inputs) each has left to run. A leaf's
  // gradient is final once the last op reading it has run its backward.
  std::unordered_map<TensorImpl*, int64_t> uses_left;
  for (const auto& t : order)
    if (!t->node && t->on_grad_ready) uses_left[t.get()] = 0;
  if (!uses_left.empty())
    for (const auto& t : order)
      if (t->node)
        for (const Tensor& in : t->node->inputs)
          if (auto u = uses_left.find(in.impl_ptr().get()); u != uses_left.end()) ++u->second;

  accumulate_grad(*this, grad_output);
  if (!impl().node && impl().on_grad_ready) impl().on_grad_ready();  // backward from a leaf
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    TensorImpl& t = **it;
    if (!t.node) continue;  // a leaf: its .grad is the result
    // The node's output gradient is handed over (moved): nobody reads it after this point.
    if (t.grad) t.node->backward(Tensor(std::move(t.grad)));
    if (!uses_left.empty())
      for (const Tensor& in : t.node->inputs)
        if (auto u = uses_left.find(in.impl_ptr().get()); u != uses_left.end() && --u->second == 0)
          u->first->on_grad_ready();
    // Release the graph: drop the closure and inputs (the activations they hold) and
    // the intermediate gradient, which nobody reads after this point.
    t.node->backward = nullptr;
    t.node->inputs.clear();
    t.node->released = true;
    t.grad.reset();
  }
}

}  // namespace lg
