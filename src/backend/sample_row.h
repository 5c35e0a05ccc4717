// Sampling one token from one row of logits: the exact semantics shared by the host (sample_row) and
// the CUDA kernel (backend/cuda/sampling.cu), which return the same id for the same logits, parameters
// and uniform, bit for bit. Order as HF's logits processors (TemperatureLogitsWarper ->
// TopKLogitsWarper -> TopPLogitsWarper -> MinPLogitsWarper -> multinomial draw):
//
//   greedy   temperature <= 0 (or NaN, or so small that 1 / temperature is inf), top_k == 1, or a
//            row whose largest logit is not finite: the lowest id among the largest non-NaN logits
//            (0 when every logit is NaN).
//   p_i      = exp_nonpositive((l_i - m) * (1 / T)), m the largest non-NaN logit, T the temperature:
//            unnormalized, so the most likely token has p = 1 exactly. NaN and -inf logits have p = 0.
//   w_i      = floor(p_i * 2^40), the token's mass as an integer. Masses are summed as integers, so
//            every sum is exact and independent of summation order: the kernel's parallel sums equal
//            the host's serial ones, and top-p boundaries and draws agree exactly. (p < 2^-40 has no
//            mass: such a token is never drawn, which float sampling could only do with probability
//            below 1e-12 anyway.)
//   top-k    (0 < top_k < vocab) keep p >= t_k, t_k the k-th largest p (ties at the boundary kept).
//   top-p    (top_p < 1) over the kept set of mass Z: keep p >= v, v the largest p of a kept token
//            such that the mass of kept tokens with p >= v reaches need = clamp(ceil(top_p * Z), 1, Z)
//            (top_p * Z in double): the smallest head of the sorted distribution reaching top_p, ties
//            kept. top_p <= 0 keeps the most likely token(s).
//   min-p    (min_p > 0) keep p >= min(min_p, 1) (relative to p_max = 1, as HF's MinPLogitsWarper).
//   draw     target = floor(u * Z_kept) (double product; u clamped to [0, 1)): walk the kept tokens
//            with w > 0 in increasing id order summing w; the first whose running sum exceeds
//            target is drawn. target < Z_kept always, so some token is.
//
// Every kept set above is "p >= threshold", so the whole pipeline is one threshold: the largest of
// t_k, v and min_p. Radix selection on the bit patterns of p (non-negative floats order as their bits)
// finds t_k and v in O(vocab) without a sort, as in FlashInfer's and vLLM's top-k/top-p kernels' use
// of order statistics; the implementations here are our own.
//
// This header is included by CUDA sources (C++17) as well as by host code.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__CUDACC__)
#define KILN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define KILN_HOST_DEVICE inline
#endif

namespace kiln {

// Per logit row sampling for Backend::forward_sample(), semantics above.
struct RowSampling {
  float temperature = 0;  // 0 (or top_k == 1): greedy, lowest id on ties
  int32_t top_k = 0;      // 0: off
  float top_p = 1;        // 1: off
  float min_p = 0;        // 0: off
  float uniform = 0;      // the draw in [0, 1), from the request's own seeded random stream
};

// Vocabularies up to 2^24 - 1 tokens: the sum of all masses (each <= 2^40) then fits in 64 bits.
inline constexpr int64_t kMaxSampleVocab = (int64_t{1} << 24) - 1;

namespace sampling {

// Exactly rounded float operations that no compiler contracts into an FMA or reorders (nvcc would
// fuse a * b + c by default; host code is compiled with -ffp-contract=off): the same inputs give
// the same bits on the host and the device.
#if defined(__CUDA_ARCH__)
KILN_HOST_DEVICE float mul(float a, float b) { return __fmul_rn(a, b); }
KILN_HOST_DEVICE float add(float a, float b) { return __fadd_rn(a, b); }
KILN_HOST_DEVICE float sub(float a, float b) { return __fsub_rn(a, b); }
KILN_HOST_DEVICE float div(float a, float b) { return __fdiv_rn(a, b); }
KILN_HOST_DEVICE double dmul(double a, double b) { return __dmul_rn(a, b); }
KILN_HOST_DEVICE float bits_to_float(uint32_t b) { return __uint_as_float(b); }
KILN_HOST_DEVICE uint32_t float_to_bits(float f) { return __float_as_uint(f); }
#else
KILN_HOST_DEVICE float mul(float a, float b) { return a * b; }
KILN_HOST_DEVICE float add(float a, float b) { return a + b; }
KILN_HOST_DEVICE float sub(float a, float b) { return a - b; }
KILN_HOST_DEVICE float div(float a, float b) { return a / b; }
KILN_HOST_DEVICE double dmul(double a, double b) { return a * b; }
KILN_HOST_DEVICE float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
KILN_HOST_DEVICE uint32_t float_to_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}
#endif

// exp(x) for x <= 0 from exactly rounded +, -, * only (Cephes expf: Cody-Waite reduction by ln 2
// split so that n * C1 is exact, degree-5 minimax polynomial), so host and device agree bit for bit;
// within 2 ulp of exp (tests/backend/test_sample_row.cc). Below -86 (exp < 5e-38, where 2^n would
// reach subnormals) and for NaN it is 0; exp_nonpositive(0) == 1 exactly.
KILN_HOST_DEVICE float exp_nonpositive(float x) {
  if (!(x >= -86.0f)) return 0.0f;
  if (x > 0.0f) x = 0.0f;
  // n = round-to-nearest(x / ln 2) by the 1.5 * 2^23 trick (exact for |t| < 2^22).
  const float t = mul(x, 1.44269504088896341f);
  const float n = sub(add(t, 12582912.0f), 12582912.0f);
  float r = sub(x, mul(n, 0.693359375f));  // exact (Sterbenz): C1 has 9 significant bits
  r = sub(r, mul(n, -2.12194440e-4f));
  float y = 1.9875691500e-4f;
  y = add(mul(y, r), 1.3981999507e-3f);
  y = add(mul(y, r), 8.3334519073e-3f);
  y = add(mul(y, r), 4.1665795894e-2f);
  y = add(mul(y, r), 1.6666665459e-1f);
  y = add(mul(y, r), 5.0000001201e-1f);
  y = add(add(mul(y, mul(r, r)), r), 1.0f);
  const int32_t e = static_cast<int32_t>(n);  // in [-124, 0]: 2^e is a normal float
  return mul(y, bits_to_float(static_cast<uint32_t>(e + 127) << 23));
}

// True when the row is sampled greedily (see the header comment); inv_temperature = 1 / T.
KILN_HOST_DEVICE bool is_greedy(const RowSampling& s, float inv_temperature) {
  return !(s.temperature > 0.0f) || s.top_k == 1 || !(inv_temperature <= 3.40282347e38f);
}
KILN_HOST_DEVICE float inverse_temperature(float temperature) { return div(1.0f, temperature); }

// The bit pattern of p_i (non-negative: orders as p). m is the largest logit (finite).
KILN_HOST_DEVICE uint32_t prob_key(float logit, float max_logit, float inv_temperature) {
  return float_to_bits(exp_nonpositive(mul(sub(logit, max_logit), inv_temperature)));
}
// w_i = floor(p_i * 2^40).
KILN_HOST_DEVICE uint64_t key_mass(uint32_t key) {
  return static_cast<uint64_t>(mul(bits_to_float(key), 1099511627776.0f));
}
inline constexpr uint32_t kOneKey = 0x3f800000u;  // bits of 1.0f

// The top-p mass to reach: clamp(ceil(top_p * Z), 1, Z).
KILN_HOST_DEVICE uint64_t top_p_need(float top_p, uint64_t mass) {
  const double x = dmul(static_cast<double>(top_p > 0.0f ? top_p : 0.0f), static_cast<double>(mass));
  const double c = ceil(x);
  uint64_t need = c >= 18446744073709551615.0 ? mass : static_cast<uint64_t>(c);
  if (need < 1) need = 1;
  return need > mass ? mass : need;
}
// The min-p threshold key: bits of min(min_p, 1) (min_p > 0).
KILN_HOST_DEVICE uint32_t min_p_key(float min_p) { return min_p >= 1.0f ? kOneKey : float_to_bits(min_p); }
// floor(u * Z) with u clamped to [0, 1): always < Z for Z >= 2^40.
KILN_HOST_DEVICE uint64_t draw_target(float uniform, uint64_t mass) {
  float u = uniform >= 0.0f ? uniform : 0.0f;  // NaN -> 0
  if (u >= 1.0f) u = 0.99999994f;              // the largest float below 1
  return static_cast<uint64_t>(dmul(static_cast<double>(u), static_cast<double>(mass)));
}

}  // namespace sampling

// Scratch of sample_row, sized on first use for the vocabulary: sampling then allocates nothing.
struct SampleScratch {
  std::vector<uint32_t> keys;  // [vocab] bit patterns of p
};

// The host implementation of the semantics above (radix selection, as the kernel). logits: [vocab].
int32_t sample_row(const float* logits, int64_t vocab, const RowSampling& s, SampleScratch& scratch);

}  // namespace kiln
