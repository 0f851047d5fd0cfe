// apps/demo_mlp.cpp: the engine in forty lines: a two-layer MLP learns y = sin(3x) by gradient descent.
#include <fmt/format.h>

#include <cmath>
#include <cstdlib>

#include "core/ops.h"

using namespace lg;

int main(int argc, char** argv) {
  int steps = argc > 1 ? std::atoi(argv[1]) : 2000;
  if (steps <= 0) {
    fmt::print(stderr, "usage: demo_mlp [STEPS > 0]\n");
    return 2;
  }
  Rng rng(0);
  // Data: 256 points x in [-1, 1], targets sin(3x).
  Tensor x = uniform({256, 1}, rng, -1.0f, 1.0f);      // (N, 1)
  Tensor y = Tensor::empty({256, 1});                  // (N, 1)
  for (int i = 0; i < 256; ++i) y.data()[i] = std::sin(3.0f * x.data()[i]);

  // Parameters of a 1 -> 64 -> 1 network.
  Tensor w1 = randn({1, 64}, rng, 1.0f).set_requires_grad();   // (1, 64)
  Tensor b1 = Tensor::zeros({64}).set_requires_grad();          // (64,)
  Tensor w2 = randn({64, 1}, rng, 0.1f).set_requires_grad();   // (64, 1)
  Tensor b2 = Tensor::zeros({1}).set_requires_grad();           // (1,)
  std::vector<Tensor> params = {w1, b1, w2, b2};

  const float lr = 0.05f;
  for (int step = 0; step <= steps; ++step) {
    Tensor hidden = tanh(add(matmul(x, w1), b1));       // (N, 64)
    Tensor pred = add(matmul(hidden, w2), b2);          // (N, 1)
    Tensor loss = mean(pow_scalar(sub(pred, y), 2.0f)); // ()
    for (Tensor& p : params) p.zero_grad();
    loss.backward();
    {
      NoGradGuard no_grad;  // the update itself is not part of any graph
      for (Tensor& p : params) {
        float* v = p.data();
        const float* g = p.grad().data();
        for (int64_t i = 0; i < p.numel(); ++i) v[i] -= lr * g[i];
      }
    }
    if (step % (steps / 10 > 0 ? steps / 10 : 1) == 0) fmt::print("step {:5d}  mse {:.6f}\n", step, loss.item());
  }
  return 0;
}
