// core/tensor.h: the float32 n-d tensor handle, its autograd graph node, and the backward pass.
//
// A Tensor is a cheap handle (one shared_ptr) to a TensorImpl: shape, strides and an
// offset into shared Storage. Views (reshape, transpose, slice) share Storage.
// A tensor produced by a differentiable op while grad mode is on carries a Node:
// the op's name, its inputs, and a closure that adds the op's input gradients into
// the inputs' .grad. backward() walks the nodes in reverse topological order.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace lg {

using Shape = std::vector<int64_t>;

// Every error the engine raises: the message names the op and the shapes involved.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string shape_str(const Shape& shape);  // "(2, 3, 4)"
int64_t shape_numel(const Shape& shape);
Shape contiguous_strides(const Shape& shape);

// Raw float buffer, 64-byte aligned, uninitialised until written.
struct Storage {
  explicit Storage(int64_t size);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  float* data;
  int64_t size;
};

class Tensor;
struct TensorImpl;

// The op that produced a tensor. backward(grad_out) adds into the inputs' gradients.
// The closure captures inputs (or detached copies of the output's storage), never the
// output tensor itself: that would make a shared_ptr cycle and leak the activations.
// grad_out is handed over: the walk keeps no other handle to it, so a closure that takes it
// by value may write an input's gradient over its buffer (see owns_buffer) or pass it on
// with std::move; one that takes const Tensor& just reads it.
struct Node {
  const char* op;
  std::vector<Tensor> inputs;                       // the tensors gradients flow to
  std::function<void(Tensor grad_out)> backward;
  bool released = false;                            // set once backward has run
};

struct TensorImpl {
  TensorImpl();
  ~TensorImpl();
  std::shared_ptr<Storage> storage;
  int64_t offset = 0;
  Shape shape;
  Shape strides;
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;   // contiguous, same shape; created on first accumulation
  std::shared_ptr<Node> node;         // null for leaves and for tensors made without grad
  // Leaves only: called by backward() once this tensor's gradient of that pass is complete
  // (every op that reads it has added its part). Distributed training starts reducing a
  // gradient here, while backward goes on (dist/dist.h).
  std::function<void()> on_grad_ready;
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- creation (always contiguous, never requires grad) ----
  static Tensor empty(const Shape& shape);             // uninitialised
  static Tensor zeros(const Shape& shape);
  static Tensor ones(const Shape& shape);
  static Tensor full(const Shape& shape, float value);
  static Tensor arange(int64_t n);                      // (n,) 0, 1, ..., n-1
  static Tensor from_vector(const std::vector<float>& values, const Shape& shape);

  // ---- shape and data ----
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  const Shape& strides() const { return impl().strides; }
  int64_t dim() const { return static_cast<int64_t>(shape().size()); }
  int64_t size(int64_t d) const;                        // negative d counts from the end
  int64_t numel() const { return shape_numel(shape()); }
  bool is_contiguous() const;
  float* data() const { return impl().storage->data + impl().offset; }  // first element
  float item() const;                                   // value of a one-element tensor
  float at(const std::vector<int64_t>& index) const;    // one element, bounds-checked
  std::vector<float> to_vector() const;                 // values in logical (row-major) order
  bool same_storage(const Tensor& other) const { return impl().storage == other.impl().storage; }

  // ---- autograd ----
  bool requires_grad() const { return impl().requires_grad; }
  Tensor& set_requires_grad(bool on = true);
  Tensor grad() const;                                  // undefined Tensor if none yet
  void zero_grad();                                     // drops the accumulated gradient
  const char* op() const;                               // producing op, "leaf" if none
  // Reverse-mode pass from this tensor. A scalar may omit grad_output (taken as 1).
  void backward() const;
  void backward(const Tensor& grad_output) const;
  Tensor detach() const;                                // same storage, no graph
  // A leaf's hook, run by each backward() through it as soon as its .grad is final for that
  // pass (PyTorch: register_post_accumulate_grad_hook). Runs on the thread running backward;
  // an empty function removes it.
  void set_grad_ready_hook(std::function<void()> hook);

  TensorImpl& impl() const {
    if (!impl_) throw_undefined();
    return *impl_;
  }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

 private:
  [[noreturn]] static void throw_undefined();
  std::shared_ptr<TensorImpl> impl_;
};

// Number of TensorImpl objects alive: tests use it to see activations released.
int64_t live_tensors();
// Bytes of tensor storage allocated now, and the most at any time since the last reset (what a
// step's activations, gradients and weights take, without the allocator's own overhead).
int64_t storage_bytes_live();
int64_t storage_bytes_peak();
void reset_storage_peak();  // the peak becomes the bytes live now

// Grad mode: while off (inside a NoGradGuard), ops record no graph.
bool grad_enabled();
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};
// The opposite, for code that builds a graph while a backward runs (core/recompute.h).
class EnableGradGuard {
 public:
  EnableGradGuard();
  ~EnableGradGuard();
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool previous_;
};

// ---- for op implementations (core/*.cpp and fused ops elsewhere) ----

// Attaches a node to `out` if grad mode is on and any input requires grad.
// Returns `out` (now requiring grad when a node was attached).
Tensor attach_node(Tensor out, const char* op, std::vector<Tensor> inputs,
                   std::function<void(Tensor grad_out)> backward);
// target.grad += g (g has target's shape). Does nothing when target needs no grad. When target
// has no gradient yet and g owns its buffer (owns_buffer), the buffer becomes the gradient
// (pass it with std::move); otherwise g is copied or added.
void accumulate_grad(const Tensor& target, Tensor g);
// True when no other handle or view shares t's buffer and t is contiguous and off the graph:
// a backward may then overwrite it in place, or hand it to accumulate_grad as is.
bool owns_buffer(const Tensor& t);
// target's gradient buffer, created as zeros if it has none yet, for a backward that adds into
// part of it in place (slice). target must require grad.
Tensor grad_buffer(const Tensor& target);

}  // namespace lg
