// nn/latent_attention_avx512.cpp: the fused latent attention scan for M = 16 latents of head
// size d = 32 or 64 and a window W <= 16, with AVX-512: each per-latent quantity (write score,
// running max, normaliser, read score, probability) is one 16-float register, and so are the 16
// window scores; a row of d floats is d / 16 registers.
//
// The same recurrence, forward and backward, as the generic kernels in
// nn/latent_attention_fused.cpp (read that file's header first); only the layout differs. There
// a position's M dot products q . SK_m are M horizontal reductions; here the forward keeps SK
// transposed, (d, M), so the M scores are d broadcast multiply-adds into one register:
//   scores = sum_i q[i] SK^T[i, :].
// Each product that would need a reduction along d per latent gets the layout that makes it a
// sum of broadcast rows instead:
//   forward:         SK^T (d, M) for q . SK_m,      SV (M, d) for sum_m w_m SV_m
//   backward pass 1: SV^T (d, M) for dO . SV_m,     SK (M, d) for dq = sum_m c_m SK_m
// The update of an element, SK[m][i] <- SK[m][i] r_m + e_m kr_t[i], is the same multiply-add in
// either layout, so the backward's replay reproduces the forward's sums to the last bit. The
// reductions that remain (16 window dot products; the carry's kr_t . RX_m + v_t . RY_m) go 16 at
// a time through one transposing reduction, sum16.
//
// Rounding differs from the generic kernels (sums are added in another order); the tests check
// the two against each other and against the chunked path.
#include "nn/latent_attention_scan.h"

#if defined(__AVX512F__)
#include <algorithm>
#include <limits>

#include "core/fastmath.h"
#include "core/intrinsics.h"
#endif

namespace lg::nn::latent_scan {

#if !defined(__AVX512F__)

bool avx512_fits(const Dims&) { return false; }
void forward_head_avx512(const Dims&, const HeadRows&) {}
void forward_head_pair_avx512(const Dims&, const HeadRows&, const HeadRows&) {}
void backward_head_avx512(const Dims&, const HeadRows&, const float*, float*, float*, float*, float*, float*,
                          float*) {}

#else

namespace {

constexpr int kM = 16;

// out[j] = the sum of v[j]'s 16 lanes, for j = 0..15: halving the lanes and the vectors together
// (4 rounds, 15 additions) instead of 16 separate reductions.
inline __m512 sum16(const __m512* v) {
  __m512 w[8], u[4], s[2];
  for (int k = 0; k < 8; ++k)  // 8 partial sums of v[2k] in lanes 0-7, of v[2k+1] in 8-15
    w[k] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0xEE));
  for (int k = 0; k < 4; ++k)  // 4 each, 4 vectors per register
    u[k] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * k], w[2 * k + 1], 0x88),
                         _mm512_shuffle_f32x4(w[2 * k], w[2 * k + 1], 0xDD));
  for (int k = 0; k < 2; ++k)  // 2 each
    s[k] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * k], u[2 * k + 1], 0x44), _mm512_shuffle_ps(u[2 * k], u[2 * k + 1], 0xEE));
  const __m512 t = _mm512_add_ps(_mm512_shuffle_ps(s[0], s[1], 0x88), _mm512_shuffle_ps(s[0], s[1], 0xDD));
  // t holds v's sums in the order 0 4 8 12 1 5 9 13 ...: a 4 x 4 transpose, its own inverse
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), t);
}

inline __m512 bcast(const float* x) { return _mm512_set1_ps(*x); }

// a (16 floats) = sum_i x[i] rows[i] over kD rows of 16 floats, with four accumulators.
template <int kD>
inline __m512 sum_rows(const float* x, const float (*rows)[kM]) {
  __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  for (int i = 0; i < kD; i += 4)
    for (int j = 0; j < 4; ++j) a[j] = _mm512_fmadd_ps(bcast(x + i + j), _mm512_load_ps(rows[i + j]), a[j]);
  return _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
}

// A row of kD floats as kD / 16 registers.
template <int kD>
struct Row {
  static constexpr int kV = kD / 16;
  __m512 r[kV];
  static Row load(const float* x) {
    Row v;
    for (int h = 0; h < kV; ++h) v.r[h] = _mm512_loadu_ps(x + 16 * h);
    return v;
  }
  static Row zero() {
    Row v;
    for (int h = 0; h < kV; ++h) v.r[h] = _mm512_setzero_ps();
    return v;
  }
  void store(float* x) const {
    for (int h = 0; h < kV; ++h) _mm512_storeu_ps(x + 16 * h, r[h]);
  }
};

// o += sum_{j < n} w[j] rows[j] over n rows of kD floats, with two sets of accumulators.
template <int kD>
inline void add_weighted(const float* w, const float* rows, int64_t stride, int64_t n, Row<kD>& o) {
  constexpr int kV = Row<kD>::kV;
  Row<kD> a = Row<kD>::zero(), b = Row<kD>::zero();
  int64_t j = 0;
  for (; j + 2 <= n; j += 2) {
    const float *r0 = rows + j * stride, *r1 = r0 + stride;
    for (int h = 0; h < kV; ++h) a.r[h] = _mm512_fmadd_ps(bcast(w + j), _mm512_loadu_ps(r0 + 16 * h), a.r[h]);
    for (int h = 0; h < kV; ++h) b.r[h] = _mm512_fmadd_ps(bcast(w + j + 1), _mm512_loadu_ps(r1 + 16 * h), b.r[h]);
  }
  if (j < n)
    for (int h = 0; h < kV; ++h)
      a.r[h] = _mm512_fmadd_ps(bcast(w + j), _mm512_loadu_ps(rows + j * stride + 16 * h), a.r[h]);
  for (int h = 0; h < kV; ++h) o.r[h] = _mm512_add_ps(o.r[h], _mm512_add_ps(a.r[h], b.r[h]));
}

// sum_m w[m] rows[m] over the 16 latents' rows.
template <int kD>
inline Row<kD> weighted16(const float* w, const float* rows, int64_t stride) {
  Row<kD> o = Row<kD>::zero();
  add_weighted<kD>(w, rows, stride, kM, o);
  return o;
}

// The 16 dot products x . row(s), row(s) = rows + s d for s = s0 + j, lane j, for the lanes in
// `valid`; 0 in the others.
template <int kD>
inline __m512 window_dots(const float* x, const float* rows, int64_t s0, __mmask16 valid) {
  const Row<kD> xs = Row<kD>::load(x);
  __m512 acc[16];
  for (int j = 0; j < 16; ++j) {
    if (valid >> j & 1) {
      const float* r = rows + (s0 + j) * kD;
      acc[j] = _mm512_mul_ps(xs.r[0], _mm512_loadu_ps(r));
      for (int h = 1; h < Row<kD>::kV; ++h) acc[j] = _mm512_fmadd_ps(xs.r[h], _mm512_loadu_ps(r + 16 * h), acc[j]);
    } else {
      acc[j] = _mm512_setzero_ps();
    }
  }
  return sum16(acc);
}

// Window slots j of position t: s = t - W + 1 + j, valid for j < W and s >= 0.
inline __mmask16 window_mask(int64_t t, int64_t W) {
  const int64_t j0 = std::max<int64_t>(0, W - 1 - t);
  return static_cast<__mmask16>(((1u << W) - 1) & ~((1u << j0) - 1));
}

}  // namespace

bool avx512_fits(const Dims& n) { return n.M == kM && (n.d == 32 || n.d == 64) && n.W <= 16; }

namespace {

// One head's state in the forward: the latents and the running sums, transposed where the read
// takes 16 dot products (LT, SKT), and small buffers from which single lanes are broadcast.
template <int kD>
struct ForwardState {
  alignas(64) float LT[kD][kM], SKT[kD][kM], SV[kM][kD];
  alignas(64) float rb[kM], eb[kM], wb[kM], pwb[16];
  __m512 mu, Z;
};

// NH heads in lockstep, stage by stage. A position's stages form one chain of dependent steps
// (scores, max, exponentials, normaliser, the read's softmax and its sums); with two heads, one
// head's step runs while the other's waits on its latency.
template <int NH, int kD>
void forward_heads(const Dims& n, const HeadRows* hs) {
  constexpr int kV = Row<kD>::kV;
  const int64_t T = n.T, W = n.W, Pw = kM + W;
  const __m512 scale = _mm512_set1_ps(n.scale), neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  ForwardState<kD> st[NH];
  for (int k = 0; k < NH; ++k) {
    for (int m = 0; m < kM; ++m)
      for (int i = 0; i < kD; ++i) st[k].LT[i][m] = hs[k].l[m * kD + i];
    std::fill_n(&st[k].SKT[0][0], kD * kM, 0.0f);
    std::fill_n(&st[k].SV[0][0], kM * kD, 0.0f);
    st[k].mu = neg_inf;
    st[k].Z = _mm512_setzero_ps();
  }
  for (int64_t t = 0; t < T; ++t) {
    __m512 inv_z[NH];
    // Write: a = l . k_t / sqrt(d), the running max, rescale r and new-term weight e, then
    // Z <- Z r + e, SK <- SK r + e kr_t, SV <- SV r + e v_t.
    for (int k = 0; k < NH; ++k) {
      const HeadRows& h = hs[k];
      ForwardState<kD>& S = st[k];
      const float *kt = h.k + t * kD, *krt = h.kr + t * kD, *vt = h.v + t * kD;
      const __m512 a = _mm512_mul_ps(sum_rows<kD>(kt, S.LT), scale);
      const __m512 mu_new = _mm512_max_ps(S.mu, a);
      const __m512 r = fast_exp16(_mm512_sub_ps(S.mu, mu_new)), e = fast_exp16(_mm512_sub_ps(a, mu_new));
      S.mu = mu_new;
      S.Z = _mm512_fmadd_ps(S.Z, r, e);
      inv_z[k] = _mm512_div_ps(_mm512_set1_ps(1.0f), S.Z);
      if (h.mu) {
        _mm512_storeu_ps(h.mu + t * kM, S.mu);
        _mm512_storeu_ps(h.Z + t * kM, S.Z);
        _mm512_storeu_ps(h.E + t * kM, e);
      }
      for (int i = 0; i < kD; ++i)
        _mm512_store_ps(S.SKT[i], _mm512_fmadd_ps(_mm512_load_ps(S.SKT[i]), r, _mm512_mul_ps(e, bcast(krt + i))));
      _mm512_store_ps(S.rb, r);
      _mm512_store_ps(S.eb, e);
      const Row<kD> v = Row<kD>::load(vt);
      for (int m = 0; m < kM; ++m) {
        const __m512 rm = bcast(S.rb + m), em = bcast(S.eb + m);
        for (int h = 0; h < kV; ++h)
          _mm512_store_ps(S.SV[m] + 16 * h,
                          _mm512_fmadd_ps(_mm512_load_ps(S.SV[m] + 16 * h), rm, _mm512_mul_ps(em, v.r[h])));
      }
    }
    // Read: one softmax over the 16 latent scores q . SK_m / Z_m and the window's q . kr_s.
    __m512 p_lat[NH], p_win[NH];
    const __mmask16 valid = window_mask(t, W);
    for (int k = 0; k < NH; ++k) {
      const HeadRows& h = hs[k];
      const float* qt = h.q + t * kD;
      const __m512 s = _mm512_mul_ps(sum_rows<kD>(qt, st[k].SKT), inv_z[k]);
      if (h.S) _mm512_storeu_ps(h.S + t * kM, s);
      const __m512 s_lat = _mm512_mul_ps(s, scale);
      __m512 s_win = neg_inf;
      if (W > 0) s_win = _mm512_mask_mul_ps(neg_inf, valid, window_dots<kD>(qt, h.kr, t - W + 1, valid), scale);
      const float mx = std::max(_mm512_reduce_max_ps(s_lat), _mm512_reduce_max_ps(s_win));
      p_lat[k] = fast_exp16(_mm512_sub_ps(s_lat, _mm512_set1_ps(mx)));
      p_win[k] = fast_exp16(_mm512_sub_ps(s_win, _mm512_set1_ps(mx)));
    }
    // o_t = sum_m (P_m / Z_m) SV_m + sum_j P_j v_s
    for (int k = 0; k < NH; ++k) {
      const HeadRows& h = hs[k];
      ForwardState<kD>& S = st[k];
      const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(_mm512_add_ps(p_lat[k], p_win[k])));
      const __m512 pl = _mm512_mul_ps(p_lat[k], inv), pw = _mm512_mul_ps(p_win[k], inv);
      if (h.P) {
        _mm512_storeu_ps(h.P + t * Pw, pl);
        _mm512_mask_storeu_ps(h.P + t * Pw + kM, static_cast<__mmask16>((1u << W) - 1), pw);
      }
      _mm512_store_ps(S.wb, _mm512_mul_ps(pl, inv_z[k]));
      Row<kD> o = weighted16<kD>(S.wb, S.SV[0], kD);
      if (W > 0) {
        _mm512_store_ps(S.pwb, pw);
        const int64_t j0 = W - 1 - std::min<int64_t>(W - 1, t);  // slots j < j0 are before position 0
        add_weighted<kD>(S.pwb + j0, h.v + (t - W + 1 + j0) * kD, kD, W - j0, o);
      }
      o.store(h.o + t * h.o_stride);
    }
  }
}

// The backward of one head: two passes over its positions (nn/latent_attention_fused.cpp).
template <int kD>
void backward_head(const Dims& n, const HeadRows& h, const float* go, float* dq, float* dk, float* dkr, float* dv,
                   float* dl, float* rows) {
  constexpr int kV = Row<kD>::kV;
  const int64_t T = n.T, W = n.W, Pw = kM + W;
  const __m512 scale = _mm512_set1_ps(n.scale), one = _mm512_set1_ps(1.0f);
  const __mmask16 window_slots = static_cast<__mmask16>((1u << W) - 1);
  // Per position, what pass 2 needs of pass 1, 16 floats each: x, y (X_t / Z_t = x q_t and
  // Y_t / Z_t = y dO_t), c_t / Z_t, the rescale factor r_t = exp(mu_{t-1} - mu_t) (pass 2's decay
  // at t - 1), and the window's dsigma / sqrt(d).
  enum { kX, kY, kC, kR, kWin, kRow };
  static_assert(kRow * kM == kAvx512BackwardScratch);
  alignas(64) float buf_a[kM], buf_b[kM], buf_d[kM];

  // Pass 1, t = 0, 1, ...: replay the sums (SK as rows, SV transposed), then the read's softmax
  // backward and dq's latent part.
  {
    alignas(64) float SK[kM][kD] = {}, SVT[kD][kM] = {};
    __m512 mu_prev = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t t = 0; t < T; ++t) {
      const float *krt = h.kr + t * kD, *vt = h.v + t * kD, *got = go + t * h.o_stride;
      float* row = rows + t * kRow * kM;
      const __m512 mu = _mm512_loadu_ps(h.mu + t * kM), e = _mm512_loadu_ps(h.E + t * kM);
      const __m512 r = fast_exp16(_mm512_sub_ps(mu_prev, mu));
      mu_prev = mu;
      _mm512_store_ps(buf_a, r);
      _mm512_store_ps(buf_b, e);
      const Row<kD> kr = Row<kD>::load(krt);
      for (int m = 0; m < kM; ++m) {
        const __m512 rm = bcast(buf_a + m), em = bcast(buf_b + m);
        for (int c = 0; c < kV; ++c)
          _mm512_store_ps(SK[m] + 16 * c,
                          _mm512_fmadd_ps(_mm512_load_ps(SK[m] + 16 * c), rm, _mm512_mul_ps(em, kr.r[c])));
      }
      for (int i = 0; i < kD; ++i)
        _mm512_store_ps(SVT[i], _mm512_fmadd_ps(_mm512_load_ps(SVT[i]), r, _mm512_mul_ps(e, bcast(vt + i))));
      const __m512 inv_z = _mm512_div_ps(one, _mm512_loadu_ps(h.Z + t * kM));
      // dsigma = P (dP - P . dP), dP_m = dO . SV_m / Z_m, dP_s = dO . v_s
      const __m512 dp = _mm512_mul_ps(sum_rows<kD>(got, SVT), inv_z);
      const __mmask16 valid = window_mask(t, W);
      const __m512 dp_win = W > 0 ? window_dots<kD>(got, h.v, t - W + 1, valid) : _mm512_setzero_ps();
      const __m512 p_lat = _mm512_loadu_ps(h.P + t * Pw);
      const __m512 p_win = _mm512_maskz_loadu_ps(window_slots, h.P + t * Pw + kM);
      const __m512 p_dp =
          _mm512_set1_ps(_mm512_reduce_add_ps(_mm512_fmadd_ps(p_lat, dp, _mm512_mul_ps(p_win, dp_win))));
      const __m512 ds_lat = _mm512_mul_ps(p_lat, _mm512_sub_ps(dp, p_dp));
      const __m512 ds_win = _mm512_mul_ps(p_win, _mm512_sub_ps(dp_win, p_dp));
      // X / Z = x q_t, Y / Z = y dO_t; c / Z = x (q_t . Kl) + y (dO_t . Vl) = x S + y dP
      const __m512 x = _mm512_mul_ps(_mm512_mul_ps(ds_lat, scale), inv_z), y = _mm512_mul_ps(p_lat, inv_z);
      _mm512_storeu_ps(row + kX * kM, x);
      _mm512_storeu_ps(row + kY * kM, y);
      _mm512_storeu_ps(row + kC * kM, _mm512_fmadd_ps(x, _mm512_loadu_ps(h.S + t * kM), _mm512_mul_ps(y, dp)));
      _mm512_storeu_ps(row + kR * kM, r);
      _mm512_storeu_ps(row + kWin * kM, _mm512_mul_ps(ds_win, scale));
      // dq_t = sum_m x_m SK_m  (+ the window's part, in pass 2)
      weighted16<kD>(row + kX * kM, SK[0], kD).store(dq + t * kD);
    }
  }

  // Pass 2, t = T-1, ..., 0: dq's window part, the window's dkr and dv, then the carry
  // R_t = (X_t, Y_t, c_t) / Z_t + exp(mu_t - mu_{t+1}) R_{t+1} and the write's gradients.
  alignas(64) float RX[kM][kD] = {}, RY[kM][kD] = {}, DL[kM][kD] = {};
  __m512 Rc = _mm512_setzero_ps();
  for (int64_t t = T - 1; t >= 0; --t) {
    const float *qt = h.q + t * kD, *got = go + t * h.o_stride, *kt = h.k + t * kD, *krt = h.kr + t * kD,
                *vt = h.v + t * kD;
    const float* row = rows + t * kRow * kM;
    const Row<kD> q = Row<kD>::load(qt), g = Row<kD>::load(got);
    Row<kD> dqt = Row<kD>::load(dq + t * kD);
    if (W > 0) {
      const float* ds_win = row + kWin * kM;
      const float* p_win = h.P + t * Pw + kM;
      for (int64_t j = W - 1 - std::min<int64_t>(W - 1, t); j < W; ++j) {
        const int64_t s = t - W + 1 + j;
        const float* krs = h.kr + s * kD;
        const __m512 ds = bcast(ds_win + j), p = bcast(p_win + j);
        float *dkrs = dkr + s * kD, *dvs = dv + s * kD;
        for (int c = 0; c < kV; ++c) {
          dqt.r[c] = _mm512_fmadd_ps(ds, _mm512_loadu_ps(krs + 16 * c), dqt.r[c]);
          _mm512_storeu_ps(dkrs + 16 * c, _mm512_fmadd_ps(ds, q.r[c], _mm512_loadu_ps(dkrs + 16 * c)));
          _mm512_storeu_ps(dvs + 16 * c, _mm512_fmadd_ps(p, g.r[c], _mm512_loadu_ps(dvs + 16 * c)));
        }
      }
    }
    // The window terms of positions t' >= t are in, so dkr_t, dv_t go on in registers.
    Row<kD> dkrt = Row<kD>::load(dkr + t * kD), dvt = Row<kD>::load(dv + t * kD);
    const __m512 e = _mm512_loadu_ps(h.E + t * kM);
    const float* decay = t + 1 < T ? row + kRow * kM + kR * kM : nullptr;  // r_{t+1}; 0 past the end
    const __m512 c = _mm512_loadu_ps(row + kC * kM);
    Rc = decay ? _mm512_fmadd_ps(_mm512_loadu_ps(decay), Rc, c) : c;
    _mm512_store_ps(buf_a, decay ? _mm512_loadu_ps(decay) : _mm512_setzero_ps());
    _mm512_store_ps(buf_d, e);
    const float *xs = row + kX * kM, *ys = row + kY * kM;
    const Row<kD> kr = Row<kD>::load(krt), v = Row<kD>::load(vt);
    __m512 part[kM];  // kr_t . RX_m + v_t . RY_m, lane by lane
    for (int m = 0; m < kM; ++m) {
      const __m512 dc = bcast(buf_a + m), xm = bcast(xs + m), ym = bcast(ys + m), em = bcast(buf_d + m);
      __m512 rx[kV], ry[kV];
      for (int c = 0; c < kV; ++c) {
        rx[c] = _mm512_fmadd_ps(dc, _mm512_load_ps(RX[m] + 16 * c), _mm512_mul_ps(xm, q.r[c]));
        ry[c] = _mm512_fmadd_ps(dc, _mm512_load_ps(RY[m] + 16 * c), _mm512_mul_ps(ym, g.r[c]));
        _mm512_store_ps(RX[m] + 16 * c, rx[c]);
        _mm512_store_ps(RY[m] + 16 * c, ry[c]);
        dkrt.r[c] = _mm512_fmadd_ps(em, rx[c], dkrt.r[c]);
        dvt.r[c] = _mm512_fmadd_ps(em, ry[c], dvt.r[c]);
      }
      // v's terms from the last register down, then kr's: at d = 32,
      // kr0 rx0 + (kr1 rx1 + (v0 ry0 + v1 ry1))
      __m512 sum = _mm512_mul_ps(v.r[kV - 1], ry[kV - 1]);
      for (int c = kV - 2; c >= 0; --c) sum = _mm512_fmadd_ps(v.r[c], ry[c], sum);
      for (int c = kV - 1; c >= 0; --c) sum = _mm512_fmadd_ps(kr.r[c], rx[c], sum);
      part[m] = sum;
    }
    // da = e (kr_t . RX + v_t . RY - Rc); dk_t = sum_m da_m l_m / sqrt(d); dl_m += da_m k_t / sqrt(d)
    const __m512 da = _mm512_mul_ps(_mm512_mul_ps(e, _mm512_sub_ps(sum16(part), Rc)), scale);
    _mm512_store_ps(buf_a, da);
    const Row<kD> dkt = weighted16<kD>(buf_a, h.l, kD);
    const Row<kD> k = Row<kD>::load(kt);
    for (int m = 0; m < kM; ++m) {
      const __m512 dam = bcast(buf_a + m);
      for (int c = 0; c < kV; ++c)
        _mm512_store_ps(DL[m] + 16 * c, _mm512_fmadd_ps(dam, k.r[c], _mm512_load_ps(DL[m] + 16 * c)));
    }
    dqt.store(dq + t * kD);
    dkt.store(dk + t * kD);
    dkrt.store(dkr + t * kD);
    dvt.store(dv + t * kD);
  }
  for (int m = 0; m < kM; ++m)
    for (int i = 0; i < kD; ++i) dl[m * kD + i] += DL[m][i];
}

}  // namespace

void forward_head_avx512(const Dims& n, const HeadRows& h) {
  (n.d == 64 ? forward_heads<1, 64> : forward_heads<1, 32>)(n, &h);
}

void forward_head_pair_avx512(const Dims& n, const HeadRows& h0, const HeadRows& h1) {
  const HeadRows hs[2] = {h0, h1};
  (n.d == 64 ? forward_heads<2, 64> : forward_heads<2, 32>)(n, hs);
}

void backward_head_avx512(const Dims& n, const HeadRows& h, const float* go, float* dq, float* dk, float* dkr,
                          float* dv, float* dl, float* rows) {
  (n.d == 64 ? backward_head<64> : backward_head<32>)(n, h, go, dq, dk, dkr, dv, dl, rows);
}

#endif

}  // namespace lg::nn::latent_scan
