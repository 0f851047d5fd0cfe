// core/recompute.cpp: the recomputed op: forward without a graph, backward that builds one and runs through
// it.
#include "core/recompute.h"

namespace lg {

Tensor recomputed(const std::function<Tensor(const Tensor&)>& f, const Tensor& x) {
  if (!grad_enabled() || !x.requires_grad()) return f(x);
  Tensor out;
  {
    NoGradGuard no_graph;
    out = f(x);
  }
  return attach_node(out, "recomputed", {x}, [f, x](Tensor grad_out) {
    Tensor input = x.detach();  // a leaf on x's storage: the inner graph ends here
    input.set_requires_grad();
    Tensor again;
    {
      EnableGradGuard graph;  // backward runs with grad mode off
      again = f(input);
    }
    again.backward(grad_out);  // into the parameters f reads, and into input
    if (input.grad().defined()) accumulate_grad(x, input.grad());
  });
}

}  // namespace lg
