// Fused selective scan (Mamba S6) for CPU float32: forward and backward.
//
// The recurrence, per batch row b and channel d, over time t = 0 .. L-1 and
// state index n = 0 .. N-1 (h_{-1} = 0):
//
//     Ā_t[n] = exp(Δ_t A[n])                        zero-order hold
//     h_t[n] = Ā_t[n] h_{t-1}[n] + Δ_t B_t[n] x_t     state update
//     y_t    = Σ_n C_t[n] h_t[n] + D x_t              readout + skip
//
// Layout (all contiguous, row-major):
//     x, delta (= Δ), dy, dx, ddelta      (batch, L, D)
//     A                                    (D, N)
//     B, C, dB, dC                         (batch, L, N)
//     D (optional skip)                    (D,)
//
// Algorithm
//   * Every (b, d) pair is an independent scalar-input recurrence with an
//     N-vector state, so the work is parallelised over pairs with OpenMP and
//     the inner loop over n is vectorised (AVX-512: 16 lanes; exp is inlined
//     below so the whole loop body vectorises without calls).
//   * Forward keeps the state of one pair in an N-float buffer (L1) and writes
//     only y (and, asked for, the last state, where decoding carries on); the
//     (B, L, D, N) trajectory is never materialised. Nothing but
//     the inputs is saved for backward.
//   * Backward recomputes the states of one (b, d) pair into a small
//     (L + 1) x N buffer (and Ā into an L x N one, so exp runs once per
//     element), then runs the reverse recurrence
//         g_t = C_t dy_t + Ā_{t+1} ⊙ g_{t+1}          (g_t = dLoss/dh_t)
//     and reads every gradient off it:
//         dx_t     = D dy_t + Δ_t Σ_n g_t B_t
//         dΔ_t     = x_t Σ_n g_t B_t + Σ_n g_t Ā_t A h_{t-1}
//         dA[d,n]  = Σ_{b,t} g_t Ā_t Δ_t h_{t-1}
//         dB_t[n]  = Σ_d g_t Δ_t x_t      dC_t[n] = Σ_d dy_t h_t
//         dD[d]    = Σ_{b,t} dy_t x_t
//   * Reductions without atomics: dA and dD are written per (b, d) and summed
//     over b at the end; dB and dC sum over d, so backward parallelises over
//     (b, chunk of channels) tasks, each accumulating into its own (L, N) slice
//     of a (batch, chunks, L, N) buffer summed over chunks at the end (with one
//     chunk per batch row, enough when batch >= 2 x threads, nothing to sum).
//
// Also here, for the same build: conv_silu (a causal depthwise conv and SiLU in one
// pass) and Mamba's decoding step (block_step, rows_times; see the sections below).
//
// Build: torch.utils.cpp_extension.load with -O3 -march=native -ffast-math
// -fopenmp (see ssm_bridge/core/scan.py, which also falls back to PyTorch).

// Only the headers used (not <torch/extension.h>): halves the first-use build time.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

namespace {

// exp(v) for the vectorised loops: Cody-Waite range reduction v = k ln2 + r,
// |r| <= ln2/2, a degree-6 polynomial for e^r (Cephes expf, ~1 ulp, as
// accurate as libm's expf) and 2^k built in the exponent bits. Inlining it lets
// gcc vectorise the whole loop body (a libmvec call would spill registers).
// v is clamped to [-87.3, 88.3]: below, exp gives ~1.2e-38 instead of a
// denormal or 0, an absolute difference under 1e-37 (here v = Δ A <= 0, and
// Ā only ever multiplies a finite state). Built with -ffast-math, so a NaN in
// A is not propagated through Ā (NaNs in x, Δ, B, C still reach y).
inline float fast_exp(float v) {
  v = std::fmin(std::fmax(v, -87.3f), 88.3f);
  const float k = std::nearbyint(v * 1.44269504088896341f);
  const float r = v - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

void check_inputs(const at::Tensor& x, const at::Tensor& delta, const at::Tensor& A,
                  const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D) {
  for (const at::Tensor* t : {&x, &delta, &A, &B, &C}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous(),
                "selective_scan (C++): expected contiguous float32 CPU tensors");
  }
  TORCH_CHECK(x.dim() == 3 && delta.sizes() == x.sizes(), "x, delta: (batch, L, D)");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == x.size(2), "A: (D, N)");
  const auto bln = std::vector<int64_t>{x.size(0), x.size(1), A.size(1)};
  TORCH_CHECK(B.sizes() == bln && C.sizes() == bln, "B, C: (batch, L, N)");
  if (D) {
    TORCH_CHECK(D->device().is_cpu() && D->scalar_type() == at::kFloat && D->is_contiguous() &&
                D->dim() == 1 && D->size(0) == x.size(2), "D: contiguous float32 (D,)");
  }
}

int num_threads() {
  return static_cast<int>(at::get_num_threads());
}

// The checks of the conv and decoding kernels (their Python callers check first).
void check_f32(const at::Tensor& t, const char* name, std::initializer_list<int64_t> shape) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
              "ssm_bridge C++ kernel: ", name, " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(t.sizes().equals(shape), "ssm_bridge C++ kernel: ", name, " has shape ",
              t.sizes(), ", expected ", at::IntArrayRef(shape));
}

const float* data_or_null(const std::optional<at::Tensor>& t, const char* name, int64_t n) {
  if (!t) return nullptr;
  check_f32(*t, name, {n});
  return t->data_ptr<float>();
}

}  // namespace

// {y} = selective_scan(x, delta, A, B, C, D): (batch, L, D); with return_last,
// {y, h_{L-1}}: the state after the last token (batch, D, N), as decoding carries on.
std::vector<at::Tensor> scan_fwd(const at::Tensor& x, const at::Tensor& delta,
                                 const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                                 const std::optional<at::Tensor>& D, bool return_last) {
  check_inputs(x, delta, A, B, C, D);
  const int64_t batch = x.size(0), L = x.size(1), dim = x.size(2), N = A.size(1);
  at::Tensor y = at::empty_like(x);
  at::Tensor last = return_last ? at::empty({batch, dim, N}, x.options()) : at::Tensor();
  float* __restrict plast = return_last ? last.data_ptr<float>() : nullptr;
  const float* __restrict px = x.data_ptr<float>();
  const float* __restrict pdt = delta.data_ptr<float>();
  const float* __restrict pA = A.data_ptr<float>();
  const float* __restrict pB = B.data_ptr<float>();
  const float* __restrict pC = C.data_ptr<float>();
  const float* __restrict pD = D ? D->data_ptr<float>() : nullptr;
  float* __restrict py = y.data_ptr<float>();

#pragma omp parallel num_threads(num_threads())
  {
    std::vector<float> h_buf(N);
    float* __restrict h = h_buf.data();
#pragma omp for schedule(static)
    for (int64_t pair = 0; pair < batch * dim; ++pair) {
      const int64_t b = pair / dim, d = pair % dim;
      const float* __restrict Ad = pA + d * N;
      const float skip = pD ? pD[d] : 0.0f;
      std::fill(h, h + N, 0.0f);
      for (int64_t t = 0; t < L; ++t) {
        const int64_t i = (b * L + t) * dim + d;  // index into (batch, L, D)
        const float dt = pdt[i], dtx = dt * px[i];
        const float* __restrict Bt = pB + (b * L + t) * N;
        const float* __restrict Ct = pC + (b * L + t) * N;
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int64_t n = 0; n < N; ++n) {
          h[n] = fast_exp(dt * Ad[n]) * h[n] + dtx * Bt[n];
          acc += Ct[n] * h[n];
        }
        py[i] = acc + skip * px[i];
      }
      if (plast) std::copy(h, h + N, plast + pair * N);  // pair = b * dim + d
    }
  }
  return return_last ? std::vector<at::Tensor>{y, last} : std::vector<at::Tensor>{y};
}

// Gradients (dx, ddelta, dA, dB, dC, dD) of <dy, y> + <dlast, h_{L-1}>; dD is
// undefined when D is None, dlast (batch, D, N) is optional (the last state unused).
std::vector<at::Tensor> scan_bwd(const at::Tensor& dy, const at::Tensor& x,
                                 const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& B, const at::Tensor& C,
                                 const std::optional<at::Tensor>& D,
                                 const std::optional<at::Tensor>& dlast) {
  check_inputs(x, delta, A, B, C, D);
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.is_contiguous() && dy.scalar_type() == at::kFloat,
              "dy: contiguous float32 like x");
  TORCH_CHECK(!dlast || (dlast->sizes() == at::IntArrayRef({x.size(0), x.size(2), A.size(1)}) &&
                         dlast->is_contiguous() && dlast->scalar_type() == at::kFloat),
              "dlast: contiguous float32 (batch, D, N)");
  const int64_t batch = x.size(0), L = x.size(1), dim = x.size(2), N = A.size(1);
  // Enough (b, channel-chunk) tasks to keep every thread busy; one chunk per
  // batch row when the batch alone suffices (then dB, dC need no reduction).
  const int64_t threads = num_threads(), rows = std::max<int64_t>(batch, 1);
  const int64_t chunks =
      std::clamp<int64_t>((2 * threads + rows - 1) / rows, 1, std::max<int64_t>(dim, 1));
  const int64_t per_chunk = (dim + chunks - 1) / chunks;

  at::Tensor dx = at::empty_like(x), ddelta = at::empty_like(x);
  at::Tensor dA_part = at::empty({batch, dim, N}, x.options());      // summed over b below
  at::Tensor dD_part = at::empty({batch, dim}, x.options());         // summed over b below
  at::Tensor dB_part = at::zeros({batch, chunks, L, N}, x.options());  // summed over chunks
  at::Tensor dC_part = at::zeros({batch, chunks, L, N}, x.options());

  const float* __restrict pdy = dy.data_ptr<float>();
  const float* __restrict px = x.data_ptr<float>();
  const float* __restrict pdt = delta.data_ptr<float>();
  const float* __restrict pA = A.data_ptr<float>();
  const float* __restrict pB = B.data_ptr<float>();
  const float* __restrict pC = C.data_ptr<float>();
  const float* __restrict pD = D ? D->data_ptr<float>() : nullptr;
  const float* __restrict pdlast = dlast ? dlast->data_ptr<float>() : nullptr;
  float* __restrict pdx = dx.data_ptr<float>();
  float* __restrict pddt = ddelta.data_ptr<float>();
  float* __restrict pdA = dA_part.data_ptr<float>();
  float* __restrict pdD = dD_part.data_ptr<float>();
  float* __restrict pdB = dB_part.data_ptr<float>();
  float* __restrict pdC = dC_part.data_ptr<float>();

#pragma omp parallel num_threads(num_threads())
  {
    std::vector<float> hs_buf((L + 1) * N), as_buf(L * N), g_buf(N);
    float* __restrict as = as_buf.data();  // as[t * N + n] = Ā_t[n]
    float* __restrict hs = hs_buf.data();  // hs[(t + 1) * N + n] = h_t[n], hs[n] = h_{-1} = 0
    float* __restrict carry = g_buf.data();  // Ā_{t+1} ⊙ g_{t+1}
#pragma omp for schedule(static)
    for (int64_t task = 0; task < batch * chunks; ++task) {
      const int64_t b = task / chunks, chunk = task % chunks;
      float* __restrict dB_acc = pdB + task * L * N;  // this task's (L, N) slice
      float* __restrict dC_acc = pdC + task * L * N;
      const int64_t d_end = std::min(dim, (chunk + 1) * per_chunk);
      for (int64_t d = chunk * per_chunk; d < d_end; ++d) {
        const float* __restrict Ad = pA + d * N;
        const float skip = pD ? pD[d] : 0.0f;
        // 1. Recompute the forward states of this (b, d) pair.
        std::fill(hs, hs + N, 0.0f);
        for (int64_t t = 0; t < L; ++t) {
          const int64_t i = (b * L + t) * dim + d;
          const float dt = pdt[i], dtx = dt * px[i];
          const float* __restrict Bt = pB + (b * L + t) * N;
          const float* __restrict h_prev = hs + t * N;
          float* __restrict h = hs + (t + 1) * N;
          float* __restrict a = as + t * N;
#pragma omp simd
          for (int64_t n = 0; n < N; ++n) {
            a[n] = fast_exp(dt * Ad[n]);
            h[n] = a[n] * h_prev[n] + dtx * Bt[n];
          }
        }
        // 2. Reverse recurrence, reading every gradient off g_t (g_{L-1} also takes
        //    the last state's gradient: it enters as the carry).
        if (pdlast) {
          std::copy(pdlast + (b * dim + d) * N, pdlast + (b * dim + d + 1) * N, carry);
        } else {
          std::fill(carry, carry + N, 0.0f);
        }
        float dD_acc = 0.0f;
        float* __restrict dA_acc = pdA + (b * dim + d) * N;
        std::fill(dA_acc, dA_acc + N, 0.0f);
        for (int64_t t = L - 1; t >= 0; --t) {
          const int64_t i = (b * L + t) * dim + d;
          const float dt = pdt[i], xt = px[i], g_y = pdy[i], dtx = dt * xt;
          const float* __restrict Bt = pB + (b * L + t) * N;
          const float* __restrict Ct = pC + (b * L + t) * N;
          const float* __restrict h_prev = hs + t * N;
          const float* __restrict h = hs + (t + 1) * N;
          const float* __restrict at = as + t * N;
          float* __restrict dBt = dB_acc + t * N;
          float* __restrict dCt = dC_acc + t * N;
          float gB = 0.0f, g_dA = 0.0f;
#pragma omp simd reduction(+ : gB, g_dA)
          for (int64_t n = 0; n < N; ++n) {
            const float a = at[n];
            const float g = Ct[n] * g_y + carry[n];  // dLoss/dh_t
            const float w = g * a * h_prev[n];       // dLoss/d(Δ_t A[n])
            gB += g * Bt[n];
            g_dA += w * Ad[n];
            dA_acc[n] += w * dt;
            dBt[n] += g * dtx;
            dCt[n] += g_y * h[n];
            carry[n] = a * g;
          }
          pdx[i] = skip * g_y + dt * gB;
          pddt[i] = xt * gB + g_dA;
          dD_acc += g_y * xt;
        }
        pdD[b * dim + d] = dD_acc;
      }
    }
  }
  at::Tensor dB = chunks == 1 ? dB_part.view({batch, L, N}) : dB_part.sum(1);
  at::Tensor dC = chunks == 1 ? dC_part.view({batch, L, N}) : dC_part.sum(1);
  at::Tensor dD = D ? dD_part.sum(0) : at::Tensor();
  return {dx, ddelta, dA_part.sum(0), dB, dC, dD};
}

// ------------------------------------------------------------------ causal conv
// SiLU(depthwise causal conv over time) in one pass, for a forward that needs no
// gradient (ScanDirection.conv_silu; the PyTorch path is SiLU(causal_conv(x))):
//   out[b, t, d] = SiLU(bias[d] + Σ_k w[d, k] x[b, t - K + 1 + k, d]),  x before 0 is 0.
// x: (batch, L, D) with unit stride over D (a view of in_proj's output is fine).
at::Tensor conv_silu(const at::Tensor& x, const at::Tensor& w,
                     const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 3 && x.device().is_cpu() && x.scalar_type() == at::kFloat &&
              x.stride(2) == 1, "conv_silu (C++): x must be a float32 CPU (batch, L, D) tensor "
              "with unit stride over D");
  const int64_t batch = x.size(0), L = x.size(1), D = x.size(2), K = w.size(1);
  check_f32(w, "conv weight", {D, K});
  const float* pb = data_or_null(bias, "conv bias", D);
  const float* pw = w.data_ptr<float>();
  std::vector<float> wt(K * D);  // transposed, wt[k * D + d], so the loops run over d
  for (int64_t d = 0; d < D; ++d) {
    for (int64_t k = 0; k < K; ++k) wt[k * D + d] = pw[d * K + k];
  }
  at::Tensor out = at::empty({batch, L, D}, x.options());
  const float* px = x.data_ptr<float>();
  float* po = out.data_ptr<float>();
  const int64_t sb = x.stride(0), st = x.stride(1);
  at::parallel_for(0, batch * L, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / L, t = row % L;
      float* __restrict o = po + row * D;
      for (int64_t d = 0; d < D; ++d) o[d] = pb ? pb[d] : 0.0f;
      for (int64_t k = std::max<int64_t>(0, K - 1 - t); k < K; ++k) {
        const float* __restrict xk = px + b * sb + (t - K + 1 + k) * st;
        const float* __restrict wk = wt.data() + k * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] += wk[d] * xk[d];
      }
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] = o[d] / (1.0f + fast_exp(-o[d]));
    }
  });
  return out;
}

// ------------------------------------------------------------------ decoding
// One token through a whole Mamba block, for generation at small batch
// (ssm_bridge/mamba/step.py; its PyTorch twin is mamba_step.block_step_ref).
// At batch 1 a token is bound by reading the weights once from memory, so the
// matrix-vector products stream each weight row once for all rows of the batch,
// split over threads by rows when the matrix is large (MKL's sgemv stays on one
// thread: about half the bandwidth of two). Between them the conv is one serial pass
// per channel, and Δ, the scan step and the gate are shared by channel chunks.

namespace {

float silu(float v) { return v / (1.0f + std::exp(-v)); }

float softplus(float v) { return v > 20.0f ? v : std::log1p(std::exp(v)); }  // as torch's

// u[b] = RMSNorm(x[b]) * weight for the batch rows of H floats.
void rms_norm_rows(const float* x, const float* weight, float eps, int64_t batch, int64_t H,
                   float* u) {
  for (int64_t b = 0; b < batch; ++b) {
    double ss = 0.0;
    for (int64_t i = 0; i < H; ++i) ss += double(x[b * H + i]) * x[b * H + i];
    const float scale = 1.0f / std::sqrt(float(ss / H) + eps);
    for (int64_t i = 0; i < H; ++i) u[b * H + i] = x[b * H + i] * scale * weight[i];
  }
}

// xc[b, d] = SiLU(bias[d] + Σ_k w[d, k] [window, xs][k]) for the new input xs[b, d] (rows
// `ld` apart); the window (batch, D, K-1), the K-1 inputs before, moves on by one.
void conv_step(const float* xs, int64_t ld, const float* w, const float* bias, int64_t batch,
               int64_t D, int64_t K, float* window, float* xc) {
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t d = 0; d < D; ++d) {
      float* win = window + (b * D + d) * (K - 1);
      const float now = xs[b * ld + d];
      float acc = (bias ? bias[d] : 0.0f) + w[d * K + K - 1] * now;
      for (int64_t k = 0; k < K - 1; ++k) acc += w[d * K + k] * win[k];
      for (int64_t k = 0; k + 1 < K - 1; ++k) win[k] = win[k + 1];
      if (K > 1) win[K - 2] = now;
      xc[b * D + d] = silu(acc);
    }
  }
}

// The scan step and the gate for channels d0 <= d < d1: Δ = softplus(dt_w[d] . dt + dt_b[d])
// from dbc[b] = (dt (R), B (N), C (N)); h = exp(Δ A) h + Δ B x; g = (C . h + D x) SiLU(z),
// with A = -exp(A_log), x = xc[b], z the second half of xz[b] (rows of 2D). h (batch, D, N).
void scan_step(const float* dbc, int64_t R, int64_t N, const float* xc, const float* xz,
               const float* dt_w, const float* dt_b, const float* A_log, const float* skip,
               int64_t batch, int64_t D, int64_t d0, int64_t d1, float* hs, float* g) {
  for (int64_t b = 0; b < batch; ++b) {
    const float* __restrict dt = dbc + b * (R + 2 * N);
    const float* __restrict Bt = dt + R;
    const float* __restrict Ct = Bt + N;
    for (int64_t d = d0; d < d1; ++d) {
      const float* __restrict Al = A_log + d * N;
      float acc = dt_b[d];
      for (int64_t r = 0; r < R; ++r) acc += dt_w[d * R + r] * dt[r];
      const float delta = softplus(acc), xt = xc[b * D + d], dtx = delta * xt;
      float* __restrict h = hs + (b * D + d) * N;
      float y = 0.0f;
#pragma omp simd reduction(+ : y)
      for (int64_t n = 0; n < N; ++n) {
        h[n] = fast_exp(-delta * fast_exp(Al[n])) * h[n] + dtx * Bt[n];
        y += Ct[n] * h[n];
      }
      g[b * D + d] = (y + skip[d] * xt) * silu(xz[b * 2 * D + D + d]);
    }
  }
}

// Helper threads that join the calling thread on the chunks of one job (the decoding
// step's matrix-vector products, ~50 per token). Chunks are claimed one at a time from
// one atomic word, job number | chunk count | next chunk, so the caller never waits for a
// helper the OS has not run yet, only for chunks a helper is in the middle of. (An
// OpenMP region's barrier waits for every thread: on a loaded 2-core machine that cost a
// time slice per product, 1.2 GB/s against 7 GB/s on one thread.)
class ChunkPool {
 public:
  static constexpr int64_t MAX_CHUNKS = 0xffff;

  // fn(chunk) for every chunk < n <= MAX_CHUNKS, on the caller and up to `helpers` helper
  // threads. A second caller while one runs (two Python threads decoding) works alone.
  void run(int64_t n, int helpers, const std::function<void(int64_t)>& fn) {
    std::unique_lock<std::mutex> mine(run_mutex_, std::try_to_lock);
    if (!mine.owns_lock() || helpers < 1 || n < 2) {
      for (int64_t c = 0; c < n; ++c) fn(c);
      return;
    }
    while (threads_ < helpers) {  // started on first use, never stopped (detached)
      const int index = threads_++;
      std::thread([this, index] { serve(index); }).detach();
    }
    const uint32_t job = job_.load(std::memory_order_relaxed) + 1;
    fn_.store(&fn);
    helpers_.store(helpers);
    done_.store(0);
    next_.store(uint64_t(job) << 32 | uint64_t(n) << 16);  // chunk 0 of n
    job_.store(job);
    { std::lock_guard<std::mutex> lock(sleep_mutex_); }  // no helper misses the wake-up
    wake_.notify_all();
    work(job, &fn);
    while (done_.load() < n) std::this_thread::yield();  // chunks helpers are running
  }

 private:
  // Claims and runs chunks of `job` until none is left. The word carries the job's
  // number and chunk count, so a helper holding an older or newer job's fields claims
  // nothing: a claim succeeds only while the caller is inside that very job.
  void work(uint32_t job, const std::function<void(int64_t)>* fn) {
    uint64_t cur = next_.load();
    while (uint32_t(cur >> 32) == job && (cur & 0xffff) < ((cur >> 16) & 0xffff)) {
      if (next_.compare_exchange_weak(cur, cur + 1)) {
        (*fn)(int64_t(cur & 0xffff));
        done_.fetch_add(1);
        cur = next_.load();
      }
    }
  }

  void serve(int index) {
    uint32_t seen = 0;
    while (true) {
      uint32_t job = job_.load();
      for (int spin = 0; job == seen && spin < 2000; ++spin) {  // ~0.1 ms, then sleep
        pause();
        job = job_.load();
      }
      if (job == seen) {
        std::unique_lock<std::mutex> lock(sleep_mutex_);
        wake_.wait(lock, [&] { return job_.load() != seen; });
        continue;
      }
      seen = job;
      if (index < helpers_.load()) work(job, fn_.load());
    }
  }

  static void pause() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    std::this_thread::yield();
#endif
  }

  std::mutex run_mutex_, sleep_mutex_;
  std::condition_variable wake_;
  std::atomic<uint32_t> job_{0};
  std::atomic<uint64_t> next_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<const std::function<void(int64_t)>*> fn_{nullptr};
  std::atomic<int> helpers_{0};
  int threads_ = 0;  // only touched under run_mutex_
};

ChunkPool& chunk_pool() {
  static ChunkPool* pool = new ChunkPool();  // never destroyed: its threads outlive exit
  return *pool;
}

// Eight floats as one vector (GCC/Clang vector extension: one AVX register on x86).
typedef float f32x8 __attribute__((vector_size(32)));

inline f32x8 load8(const float* p) {
  f32x8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// out[i] = row_i . v for the R rows r, r + K, ..., r + (R-1) K: one accumulator each, so R
// weight streams are in flight and each load of v feeds R products. (Written with vectors:
// gcc's own vectorisation of this loop read ~30% slower with two threads.)
template <int R>
void rows_dot(const float* __restrict r, int64_t K, const float* __restrict v, float* out) {
  f32x8 acc[R] = {};
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const f32x8 vk = load8(v + k);
    for (int i = 0; i < R; ++i) acc[i] += load8(r + i * K + k) * vk;
  }
  for (int i = 0; i < R; ++i) {
    float sum = 0.0f;
    for (int j = 0; j < 8; ++j) sum += acc[i][j];
    for (int64_t j = k; j < K; ++j) sum += r[i * K + j] * v[j];
    out[i] = sum;
  }
}

// y[b, m] = W[m] . v[b] (+ bias[m]) for m < M, b < batch. W: (M, K) contiguous; v, y:
// rows of K and M floats, `ldv` and `ldy` apart. Eight rows at a time (rows_dot); chunks
// of ~64 KiB of rows go to the ChunkPool's threads when the matrix has 256 KiB or more.
void gemv(const float* __restrict W, const float* __restrict bias, int64_t M, int64_t K,
          const float* __restrict v, int64_t ldv, float* __restrict y, int64_t ldy,
          int64_t batch) {
  constexpr int64_t R = 8;
  const int64_t blocks = (M + R - 1) / R;
  const int64_t per_chunk = std::max({int64_t{1}, 2048 / std::max<int64_t>(K, 1),  // blocks
                                      blocks / ChunkPool::MAX_CHUNKS + 1});
  const int64_t chunks = (blocks + per_chunk - 1) / per_chunk;
  const int helpers = M * K >= (int64_t{1} << 16) ? num_threads() - 1 : 0;
  chunk_pool().run(chunks, helpers, [&](int64_t chunk) {
    const int64_t end = std::min(blocks, (chunk + 1) * per_chunk);
    for (int64_t blk = chunk * per_chunk; blk < end; ++blk) {
      const int64_t m0 = blk * R, rows = std::min(R, M - m0);
      for (int64_t b = 0; b < batch; ++b) {
        float out[R];
        if (rows == R) {
          rows_dot<R>(W + m0 * K, K, v + b * ldv, out);
        } else {
          for (int64_t r = 0; r < rows; ++r) rows_dot<1>(W + (m0 + r) * K, K, v + b * ldv, out + r);
        }
        for (int64_t r = 0; r < rows; ++r) {
          y[b * ldy + m0 + r] = out[r] + (bias ? bias[m0 + r] : 0.0f);
        }
      }
    }
  });
}

}  // namespace

// One token through a Mamba block: x (batch, H) -> x + out_proj(y * SiLU(z)), where
//   u = RMSNorm(x); (xs, z) = in_proj(u); xc = SiLU(causal conv of [window, xs]);
//   (dt, B, C) = x_proj(xc); Δ = softplus(dt_proj(dt)); A = -exp(A_log);
//   h = exp(Δ A) h + Δ B xc; y = C . h + D xc.
// conv_state (batch, D, K-1) and ssm_state (batch, D, N) move on by one token, in place.
at::Tensor mamba_block_step(const at::Tensor& x, const at::Tensor& norm_w, double eps,
                            const at::Tensor& in_w, const std::optional<at::Tensor>& in_b,
                            const at::Tensor& conv_w, const std::optional<at::Tensor>& conv_b,
                            const at::Tensor& xproj_w, const at::Tensor& dt_w,
                            const at::Tensor& dt_b, const at::Tensor& A_log,
                            const at::Tensor& skip, const at::Tensor& out_w,
                            const std::optional<at::Tensor>& out_b, at::Tensor& conv_state,
                            at::Tensor& ssm_state) {
  TORCH_CHECK(x.dim() == 2 && A_log.dim() == 2 && conv_w.dim() == 3 && dt_w.dim() == 2,
              "mamba block step (C++): x (batch, H), A_log (D, N), conv_w (D, 1, K), "
              "dt_w (D, R)");
  const int64_t batch = x.size(0), H = x.size(1), D = A_log.size(0), N = A_log.size(1);
  const int64_t K = conv_w.size(2), R = dt_w.size(1), P = R + 2 * N;
  check_f32(x, "x", {batch, H});
  check_f32(norm_w, "norm weight", {H});
  check_f32(in_w, "in_proj weight", {2 * D, H});
  check_f32(conv_w, "conv weight", {D, 1, K});
  check_f32(xproj_w, "x_proj weight", {P, D});
  check_f32(dt_w, "dt_proj weight", {D, R});
  check_f32(dt_b, "dt_proj bias", {D});
  check_f32(A_log, "A_log", {D, N});
  check_f32(skip, "D", {D});
  check_f32(out_w, "out_proj weight", {H, D});
  check_f32(conv_state, "conv state", {batch, D, K - 1});
  check_f32(ssm_state, "ssm state", {batch, D, N});
  const float* in_bias = data_or_null(in_b, "in_proj bias", 2 * D);
  const float* conv_bias = data_or_null(conv_b, "conv bias", D);
  const float* out_bias = data_or_null(out_b, "out_proj bias", H);

  // Scratch: u (batch, H), xz (batch, 2D), xc (batch, D), dbc (batch, P), g (batch, D).
  at::Tensor scratch = at::empty({batch * (H + 4 * D + P)}, x.options());
  float* u = scratch.data_ptr<float>();
  float* xz = u + batch * H;
  float* xc = xz + batch * 2 * D;
  float* dbc = xc + batch * D;
  float* g = dbc + batch * P;
  const float* px = x.data_ptr<float>();
  rms_norm_rows(px, norm_w.data_ptr<float>(), float(eps), batch, H, u);
  gemv(in_w.data_ptr<float>(), in_bias, 2 * D, H, u, H, xz, 2 * D, batch);
  conv_step(xz, 2 * D, conv_w.data_ptr<float>(), conv_bias, batch, D, K,
            conv_state.data_ptr<float>(), xc);
  gemv(xproj_w.data_ptr<float>(), nullptr, P, D, xc, D, dbc, P, batch);
  const int64_t per_chunk = 128;  // channels: ~10 us of exp per chunk, 12 chunks at D=1536
  chunk_pool().run((D + per_chunk - 1) / per_chunk, num_threads() - 1, [&](int64_t chunk) {
    scan_step(dbc, R, N, xc, xz, dt_w.data_ptr<float>(), dt_b.data_ptr<float>(),
              A_log.data_ptr<float>(), skip.data_ptr<float>(), batch, D, chunk * per_chunk,
              std::min(D, (chunk + 1) * per_chunk), ssm_state.data_ptr<float>(), g);
  });
  at::Tensor out = at::empty({batch, H}, x.options());
  float* po = out.data_ptr<float>();
  gemv(out_w.data_ptr<float>(), out_bias, H, D, g, D, po, H, batch);
  for (int64_t i = 0; i < batch * H; ++i) po[i] += px[i];  // the residual
  return out;
}

// y (batch, M) = v (batch, K) @ W.T for W (M, K): the output head of a decoding step.
at::Tensor rows_times(const at::Tensor& v, const at::Tensor& W) {
  TORCH_CHECK(v.dim() == 2 && W.dim() == 2, "rows_times: v (batch, K), W (M, K)");
  check_f32(v, "v", {v.size(0), W.size(1)});
  check_f32(W, "W", {W.size(0), W.size(1)});
  at::Tensor y = at::empty({v.size(0), W.size(0)}, v.options());
  gemv(W.data_ptr<float>(), nullptr, W.size(0), W.size(1), v.data_ptr<float>(), W.size(1),
       y.data_ptr<float>(), W.size(0), v.size(0));
  return y;
}

// x (batch, H) through consecutive blocks in one call: each item of `blocks` holds the 13
// arguments of mamba_block_step after x, then conv_state and ssm_state. Read with the GIL,
// run without it: no Python between the layers (between them it cost ~4 ms a token at the
// 130M shape, its caches emptied by each layer's weights).
at::Tensor blocks_step(at::Tensor x, const py::list& blocks) {
  struct Block {
    at::Tensor norm_w;
    double eps;
    at::Tensor in_w;
    std::optional<at::Tensor> in_b;
    at::Tensor conv_w;
    std::optional<at::Tensor> conv_b;
    at::Tensor xproj_w, dt_w, dt_b, A_log, skip, out_w;
    std::optional<at::Tensor> out_b;
    at::Tensor conv_state, ssm_state;
  };
  const auto tensor = [](py::handle h) { return h.cast<at::Tensor>(); };
  const auto optional = [](py::handle h) -> std::optional<at::Tensor> {
    if (h.is_none()) return std::nullopt;
    return h.cast<at::Tensor>();
  };
  std::vector<Block> args;
  for (py::handle item : blocks) {
    const py::tuple t = item.cast<py::tuple>();
    TORCH_CHECK(t.size() == 15, "blocks_step: each block is a tuple of 15 (see mamba_step)");
    args.push_back({tensor(t[0]), t[1].cast<double>(), tensor(t[2]), optional(t[3]),
                    tensor(t[4]), optional(t[5]), tensor(t[6]), tensor(t[7]), tensor(t[8]),
                    tensor(t[9]), tensor(t[10]), tensor(t[11]), optional(t[12]), tensor(t[13]),
                    tensor(t[14])});
  }
  py::gil_scoped_release release;  // other Python threads (a server) run meanwhile
  for (Block& a : args) {
    x = mamba_block_step(x, a.norm_w, a.eps, a.in_w, a.in_b, a.conv_w, a.conv_b, a.xproj_w,
                         a.dt_w, a.dt_b, a.A_log, a.skip, a.out_w, a.out_b, a.conv_state,
                         a.ssm_state);
  }
  return x;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused selective scan (Mamba S6) for CPU float32; see selective_scan.cpp.";
  m.def("fwd", &scan_fwd, "[y] or [y, last state] = selective_scan(x, delta, A, B, C, D)");
  m.def("bwd", &scan_bwd, "(dx, ddelta, dA, dB, dC, dD) = backward of selective_scan");
  m.def("conv_silu", &conv_silu, "SiLU(depthwise causal conv1d) of x (batch, L, D)");
  m.def("blocks_step", &blocks_step, "one decoding step through Mamba blocks, states in place");
  m.def("rows_times", &rows_times, "v @ W.T streaming W once (decoding's output head)",
        py::call_guard<py::gil_scoped_release>());  // without the GIL, as blocks_step
}
