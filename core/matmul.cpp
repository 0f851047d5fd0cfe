// core/matmul.cpp: (batched) matrix products through cblas_sgemm, and BLAS thread control.
//
// The only file that includes cblas.h. A transposed view is handed to BLAS as a
// transpose flag with its leading dimension, never copied; the backward products
// dA = dC B^T and dB = A^T dC flip those flags the same way.
#include <cblas.h>
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>

#include "core/blas.h"
#include "core/gemm_bf16.h"
#include "core/ops.h"
#include "core/precision.h"

namespace lg {

void set_num_threads(int n) {
  if (n <= 0) return;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int get_num_threads() { return omp_get_max_threads(); }

const char* blas_corename() { return openblas_get_corename(); }

// A tall product is cut into bands of C's rows (below): kBandRows each, the last band taking the
// remainder, for products of at least kBandWork multiply-adds (M N K).
static constexpr int64_t kBandRows = 256, kBandWork = int64_t{1} << 22;

void sgemm_whole(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), 1.0f, A, static_cast<int>(lda), B,
              static_cast<int>(ldb), beta, C, static_cast<int>(ldc));
}

// C (M, N), row-major, ldc = N unless given = op(A) (M, K) @ op(B) (K, N).
//
// A tall product (the projections of a long sequence: 4096 x 384 x 128) runs as bands of C's
// rows, each a one-thread product (OpenBLAS runs one thread inside a parallel region), taken by
// the threads as they come free. OpenBLAS's own threading splits such shapes less well: at
// 4096 x 384 x 128 on two threads, one call reaches 112 GFLOP/s and the bands 179, where one
// thread reaches 86-100 (`charlm_bench gemm --variants sgemm1,sgemm,openblas`). OpenBLAS's
// rounding depends on the shape of the product it is given, so the bands are fixed by M alone:
// a banded product has the same values on any number of threads, and inside the data-parallel
// step's shards, where its bands run one after another.
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (beta == 0.0f)
      for (int64_t i = 0; i < M; ++i) std::fill_n(C + i * ldc, N, 0.0f);
    return;
  }
  const int64_t bands = M / kBandRows;
  if (bands < 2 || M * N * K < kBandWork) {
    sgemm_whole(trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc);
    return;
  }
#pragma omp parallel for schedule(dynamic) if (!omp_in_parallel())
  for (int64_t b = 0; b < bands; ++b) {
    const int64_t r0 = b * kBandRows, r1 = b + 1 == bands ? M : r0 + kBandRows;
    sgemm_whole(trans_a, trans_b, r1 - r0, N, K, A + (trans_a ? r0 : r0 * lda), lda, B, ldb, beta, C + r0 * ldc,
                 ldc);
  }
}

// The last two axes of a tensor as a BLAS operand: a (batch of) logical (rows, cols)
// matrix stored either row-major (trans = false) or as the transpose of one.
struct Operand {
  Tensor keep;                 // keeps the storage alive (a copy if the view was not BLAS-able)
  const float* data = nullptr;
  int64_t batch = 1, batch_stride = 0;  // batch_stride 0: one matrix shared by every batch entry
  int64_t rows = 0, cols = 0, ld = 1;
  bool trans = false;
  bool foldable() const { return !trans && (batch == 1 || batch_stride == rows * ld); }
};

static bool blas_layout(const Tensor& t, bool& trans, int64_t& ld, int64_t& batch_stride) {
  int64_t n = t.dim();
  int64_t rows = t.shape()[n - 2], cols = t.shape()[n - 1];
  int64_t s0 = t.strides()[n - 2], s1 = t.strides()[n - 1];
  if ((s1 == 1 || cols == 1) && s0 >= std::max<int64_t>(cols, 1)) {
    trans = false;
    ld = s0;
  } else if ((s0 == 1 || rows == 1) && s1 >= std::max<int64_t>(rows, 1)) {
    trans = true;
    ld = s1;
  } else if (rows == 1 && cols == 1) {
    trans = false;
    ld = 1;
  } else {
    return false;
  }
  // The batch axes must collapse into one stride (axes of size 1 do not matter).
  batch_stride = 0;
  int64_t expect = -1;
  for (int64_t d = n - 3; d >= 0; --d) {
    if (t.shape()[d] == 1) continue;
    if (expect >= 0 && t.strides()[d] != expect) return false;
    if (expect < 0) batch_stride = t.strides()[d];
    expect = t.strides()[d] * t.shape()[d];
  }
  return true;
}

static Operand operand(const Tensor& t) {
  Operand op;
  op.keep = t;
  if (!blas_layout(t, op.trans, op.ld, op.batch_stride)) {
    op.keep = contiguous_copy(t);
    blas_layout(op.keep, op.trans, op.ld, op.batch_stride);
  }
  int64_t n = t.dim();
  op.data = op.keep.data();
  op.rows = t.shape()[n - 2];
  op.cols = t.shape()[n - 1];
  op.batch = 1;
  for (int64_t d = 0; d < n - 2; ++d) op.batch *= t.shape()[d];
  if (op.batch == 1) op.batch_stride = 0;
  return op;
}

// A contiguous (batch, rows, cols) result viewed as an operand.
static Operand operand_of_result(const Tensor& t, int64_t batch) {
  Operand op = operand(t);
  op.batch = batch;
  op.batch_stride = batch == 1 ? 0 : op.rows * op.cols;
  return op;
}

static Operand shared_operand(const Operand& op, int64_t batch) {
  Operand o = op;
  o.batch = batch;
  o.batch_stride = 0;
  return o;
}

// C_i (M, N) (+)= op(A_i) @ op(B_i) for i < batch; with accumulate the batch is summed into
// one C (used for the gradient of an operand shared by every batch entry).
static void batched(const Operand& A, bool flip_a, const Operand& B, bool flip_b, int64_t batch,
                    float* C, bool sum_batches) {
  bool ta = A.trans != flip_a, tb = B.trans != flip_b;
  int64_t M = flip_a ? A.cols : A.rows, K = flip_a ? A.rows : A.cols;
  int64_t N = flip_b ? B.rows : B.cols;
  // One big product when the batch folds into A's rows (B shared, A not transposed).
  if (!sum_batches && B.batch_stride == 0 && !flip_a && A.foldable() && batch > 1) {
    sgemm(ta, tb, batch * M, N, K, A.data, A.ld, B.data, B.ld, 0.0f, C, N);
    return;
  }
  // A^T dC summed over the batch: fold the batch into the shared K of both.
  if (sum_batches && flip_a && A.foldable() && B.foldable() && batch > 1) {
    sgemm(true, tb, M, N, batch * K, A.data, A.ld, B.data, B.ld, 0.0f, C, N);
    return;
  }
  for (int64_t i = 0; i < batch; ++i)
    sgemm(ta, tb, M, N, K, A.data + i * A.batch_stride, A.ld, B.data + i * B.batch_stride, B.ld,
          sum_batches && i > 0 ? 1.0f : 0.0f, sum_batches ? C : C + i * M * N, N);
}

Tensor matmul(const Tensor& a, const Tensor& b) {
  auto fail = [&](const char* why) {
    return Error(fmt::format("matmul: {} ({} @ {})", why, shape_str(a.shape()), shape_str(b.shape())));
  };
  if (a.dim() < 2 || b.dim() < 2) throw fail("both operands need at least 2 axes");
  if (a.size(-1) != b.size(-2)) throw fail("inner dimensions differ");
  Shape batch_a(a.shape().begin(), a.shape().end() - 2), batch_b(b.shape().begin(), b.shape().end() - 2);
  if (!batch_a.empty() && !batch_b.empty() && batch_a != batch_b) throw fail("batch axes differ");
  Shape out_shape = batch_a.empty() ? batch_b : batch_a;
  int64_t batch = shape_numel(out_shape);
  int64_t M = a.size(-2), N = b.size(-1);
  out_shape.push_back(M);
  out_shape.push_back(N);

  Operand A = operand(a), B = operand(b);
  bool shared_a = batch_a.empty() && batch > 1, shared_b = batch_b.empty() && batch > 1;
  if (shared_a) A = shared_operand(A, batch);
  if (shared_b) B = shared_operand(B, batch);
  Tensor out = Tensor::empty(out_shape);
  batched(A, false, B, false, batch, out.data(), false);

  return attach_node(out, "matmul", {a, b}, [a, b, A, B, batch, shared_a, shared_b](const Tensor& g) {
    Tensor gc = g.is_contiguous() ? g : contiguous_copy(g);
    Operand G = operand_of_result(gc, batch);
    if (a.requires_grad()) {
      // dA = dC @ B^T, summed over the batch when A was shared.
      Tensor ga = Tensor::empty(a.shape());
      batched(G, false, B, true, batch, ga.data(), shared_a);
      accumulate_grad(a, std::move(ga));
    }
    if (b.requires_grad()) {
      // dB = A^T @ dC, summed over the batch when B was shared.
      Tensor gb = Tensor::empty(b.shape());
      batched(A, true, G, false, batch, gb.data(), shared_b);
      accumulate_grad(b, std::move(gb));
    }
  });
}

// y = x W^T + b as one op: the bias is written into y first and the product added onto it
// (beta = 1), and the backward takes db as column sums of the gradient directly, instead of
// a broadcast add and its sum_to. x (..., in) folds into (N, in) rows.
// dW (out, in) = g^T x over N rows of g (N, out) and x (N, in). OpenBLAS splits a product
// among threads along its output, which for this shape (a small dW from a long sum over rows)
// leaves the threads waiting on each other: at N = 4096, 384 x 128, two threads take 1.94 ms
// where one takes 2.97. Outside a parallel region and for N >= 2 kRowsPerPart, the rows are cut
// into parts fixed by N alone (at most 8, at least kRowsPerPart rows each), the threads take the
// parts' products as they come free, and the parts are added in order: 1.46 ms on two threads,
// and the same values on any number. Inside a parallel region (the data-parallel step's shards)
// and for shorter sums it is one product, as before.
static void weight_gradient(const float* g, const float* x, int64_t N, int64_t out, int64_t in, float* gw) {
  constexpr int64_t kRowsPerPart = 256, kMaxParts = 8;
  const int64_t parts = std::min(kMaxParts, N / kRowsPerPart);
  if (parts < 2 || omp_in_parallel()) {
    sgemm(true, false, out, in, N, g, out, x, in, 0.0f, gw, in);
    return;
  }
  Tensor partial = Tensor::empty({parts - 1, out, in});  // every element written below
#pragma omp parallel for schedule(dynamic)
  for (int64_t p = 0; p < parts; ++p) {
    const int64_t r0 = N * p / parts, r1 = N * (p + 1) / parts;
    float* dst = p == 0 ? gw : partial.data() + (p - 1) * out * in;
    sgemm(true, false, out, in, r1 - r0, g + r0 * out, out, x + r0 * in, in, 0.0f, dst, in);
  }
  const int64_t n = out * in;
  const float* rest = partial.data();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    float acc = gw[i];
    for (int64_t p = 1; p < parts; ++p) acc += rest[(p - 1) * n + i];
    gw[i] = acc;
  }
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  if (x.dim() < 1 || weight.dim() != 2 || x.size(-1) != weight.size(1) ||
      (bias.defined() && bias.shape() != Shape{weight.size(0)}))
    throw Error(fmt::format("linear: input {} does not fit weight {} and bias {}", shape_str(x.shape()),
                            shape_str(weight.shape()), bias.defined() ? shape_str(bias.shape()) : "none"));
  int64_t in = weight.size(1), out_features = weight.size(0);
  int64_t N = x.numel() / std::max<int64_t>(in, 1);
  Tensor xc = x.is_contiguous() ? x : contiguous_copy(x);        // (N, in)
  Tensor w = weight.is_contiguous() ? weight : contiguous_copy(weight);  // (out, in)
  Shape out_shape = x.shape();
  out_shape.back() = out_features;
  Tensor y = Tensor::empty(out_shape);                           // (N, out)
  Tensor b = !bias.defined() || bias.is_contiguous() ? bias : contiguous_copy(bias);
  // bf16 mixed precision (core/precision.h): the three products take bf16-rounded inputs and sum
  // in fp32; the bias, its gradient and everything around them stay fp32. The bf16 product starts
  // its sums from the bias row itself; for sgemm the bias rows are written into y first.
  const bool bf16 = matmul_precision() == Precision::bf16;
  if (bias.defined() && !bf16) {
    const float* pb = b.data();
    float* py = y.data();
#pragma omp parallel for schedule(static) if (N * out_features > (1 << 15))
    for (int64_t r = 0; r < N; ++r) std::copy_n(pb, out_features, py + r * out_features);
  }
  if (bf16)
    gemm_bf16(false, true, N, out_features, in, xc.data(), in, w.data(), in, y.data(), out_features, false,
              bias.defined() ? b.data() : nullptr);
  else
    sgemm(false, true, N, out_features, in, xc.data(), in, w.data(), in, bias.defined() ? 1.0f : 0.0f,
          y.data(), out_features);
  return attach_node(y, "linear", {x, weight, bias}, [x, xc, weight, w, bias, N, in, out_features, bf16](const Tensor& g) {
    Tensor gc = g.is_contiguous() ? g : contiguous_copy(g);     // (N, out)
    if (x.requires_grad()) {
      Tensor gx = Tensor::empty(x.shape());                     // dx = g W
      if (bf16)
        gemm_bf16(false, false, N, in, out_features, gc.data(), out_features, w.data(), in, gx.data(), in, false);
      else
        sgemm(false, false, N, in, out_features, gc.data(), out_features, w.data(), in, 0.0f, gx.data(), in);
      accumulate_grad(x, std::move(gx));
    }
    if (weight.requires_grad()) {
      Tensor gw = Tensor::empty(weight.shape());                // dW = g^T x
      if (bf16)
        gemm_bf16(true, false, out_features, in, N, gc.data(), out_features, xc.data(), in, gw.data(), in, false);
      else
        weight_gradient(gc.data(), xc.data(), N, out_features, in, gw.data());
      accumulate_grad(weight, std::move(gw));
    }
    if (bias.defined() && bias.requires_grad()) {
      Tensor gb = Tensor::zeros({out_features});                // db = column sums of g, rows in order
      float* pb = gb.data();
      const float* pg = gc.data();
      // Each thread takes a range of columns and adds the rows in order: the same sums on any
      // thread count.
#pragma omp parallel if (N * out_features > (1 << 16))
      {
        const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
        const int64_t j0 = out_features * t / nt, j1 = out_features * (t + 1) / nt;
        // 64 columns at a time, their sums held in registers down all the rows
        constexpr int64_t kCols = 64;
        for (int64_t c0 = j0; c0 < j1; c0 += kCols) {
          const int64_t nc = std::min(kCols, j1 - c0);
          float acc[kCols] = {};
          if (nc == kCols) {
            for (int64_t r = 0; r < N; ++r) {
              const float* row = pg + r * out_features + c0;
#pragma omp simd
              for (int64_t j = 0; j < kCols; ++j) acc[j] += row[j];
            }
          } else {
            for (int64_t r = 0; r < N; ++r)
              for (int64_t j = 0; j < nc; ++j) acc[j] += pg[r * out_features + c0 + j];
          }
          std::copy_n(acc, nc, pb + c0);
        }
      }
      accumulate_grad(bias, std::move(gb));
    }
  });
}

}  // namespace lg
