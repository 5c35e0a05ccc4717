#include "compiler/quantize_model.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <thread>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/thread_pool.h"
#include "compiler/calibration_cache.h"
#include "compiler/calibration_prompts.h"
#include "compiler/gptq.h"
#include <xxhash.h>
#include "engine/engine_file.h"
#include "passes/fuse_linears.h"
#include "passes/passes.h"

namespace kiln {

namespace {

// Activation rows kept per matrix for the searches (AWQ, SmoothQuant, clipping, the error check), and
// for GPTQ's Hessian X^T X, which needs more: with 512 rows (a third of the built-in prompts' tokens,
// fewer than down_proj's inputs) GPTQ fits the sample and loses to round to nearest on held-out text.
constexpr int64_t kMaxSampleRows = 512;
constexpr int64_t kGptqSampleRows = 4096;

// ---- calibration: what every Linear / SwiGluLinear reads ----

struct InputStats {
  int64_t width = 0;
  int64_t rows_seen = 0;
  std::vector<double> abs_sum;  // [width] Σ |x|
  std::vector<float> abs_max;   // [width] max |x|
  std::vector<float> samples;   // [sample_rows, width], a uniform reservoir sample of the rows
  int64_t sample_rows = 0;
  std::mt19937_64 rng;
};

class CalibrationObserver final : public ActivationObserver {
 public:
  CalibrationObserver(const Graph& graph, int64_t max_rows) : max_rows_(max_rows) {
    for (size_t i = 0; i < graph.nodes.size(); ++i) {
      const Node& n = graph.nodes[i];
      if ((n.op == OpKind::Linear || n.op == OpKind::SwiGluLinear) && !n.weights.empty()) {
        node_weight_[i] = n.weights[0];
      }
    }
  }
  void observe(size_t node, const float* x, int64_t rows, int64_t width) override {
    const auto it = node_weight_.find(node);
    if (it == node_weight_.end()) return;
    InputStats& s = stats[it->second];
    if (s.width == 0) {
      s.width = width;
      s.abs_sum.assign(width, 0.0);
      s.abs_max.assign(width, 0.0f);
      s.samples.assign(max_rows_ * width, 0.0f);
      s.rng.seed(node);
    }
    for (int64_t r = 0; r < rows; ++r) {
      const float* row = x + r * width;
      for (int64_t k = 0; k < width; ++k) {
        s.abs_sum[k] += std::fabs(row[k]);
        s.abs_max[k] = std::max(s.abs_max[k], std::fabs(row[k]));
      }
      // Reservoir sampling (Algorithm R): every row seen so far is kept with equal probability.
      int64_t slot = s.rows_seen < max_rows_ ? s.rows_seen : -1;
      if (slot < 0) {
        const int64_t j = static_cast<int64_t>(s.rng() % static_cast<uint64_t>(s.rows_seen + 1));
        if (j < max_rows_) slot = j;
      }
      if (slot >= 0) std::copy(row, row + width, s.samples.begin() + slot * width);
      ++s.rows_seen;
    }
    s.sample_rows = std::min(s.rows_seen, max_rows_);
  }
  std::map<std::string, InputStats> stats;

 private:
  int64_t max_rows_;
  std::map<size_t, std::string> node_weight_;
};

void progress_line(bool enabled, const std::string& text, bool done) {
  if (!enabled) return;
  static const bool tty = isatty(STDERR_FILENO) != 0;
  if (tty) {
    fmt::print(stderr, "\r\033[Kkiln: {}{}", text, done ? "\n" : "");
  } else if (done) {
    fmt::print(stderr, "kiln: {}\n", text);
  }
}

// Runs the float graph on the CPU over the prompts and collects each matrix's input statistics.
Result<std::map<std::string, InputStats>> calibrate(const Graph& graph, const WeightStore& weights,
                                                    const std::vector<std::vector<int32_t>>& prompts,
                                                    int64_t seq_len, int threads, bool progress, int64_t max_rows) {
  LoadedEngine engine;  // in memory: the CPU backend reads metadata and tensor views only
  engine.metadata = {{"graph", graph.to_json()}, {"profile", {{"max_seq_len", seq_len}, {"max_batch", 1}}}};
  for (const auto& [name, info] : graph.weights) {
    for (const StoredTensor& part : stored_tensors(name, info)) {
      const TensorView* t = weights.find(part.name);
      if (!t) return make_error("calibration: weight '{}' missing", part.name);
      engine.tensors[part.name] = *t;
    }
  }
  BackendOptions options;
  options.num_threads = threads;
  options.max_sequences = 1;
  options.max_tokens_per_step = seq_len;
  options.max_logit_rows = 1;
  KILN_ASSIGN(std::unique_ptr<Backend> backend, create_cpu_backend(engine, options));
  CalibrationObserver observer(graph, max_rows);
  KILN_TRY(backend->set_activation_observer(&observer));
  const KvGeometry kv = backend->kv_geometry();
  Batch batch;
  std::vector<float> logits(backend->vocab_size());
  const auto t0 = std::chrono::steady_clock::now();
  int64_t tokens = 0;
  for (size_t p = 0; p < prompts.size(); ++p) {
    const std::vector<int32_t>& ids = prompts[p];
    const int64_t n = static_cast<int64_t>(ids.size());
    batch.clear();
    batch.max_blocks_per_seq = static_cast<int32_t>(kv.num_blocks);
    for (int64_t b = 0; b < kv.num_blocks; ++b) batch.block_tables.push_back(static_cast<int32_t>(b));
    for (int64_t i = 0; i < n; ++i) {
      batch.tokens.push_back(ids[i]);
      batch.positions.push_back(static_cast<int32_t>(i));
      batch.token_seq.push_back(0);
    }
    batch.logit_rows.push_back(static_cast<int32_t>(n - 1));
    KILN_TRY(backend->forward(batch, logits.data()));
    tokens += n;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    progress_line(progress, fmt::format("calibrating: prompt {}/{}, {} tokens, {:.1f} s", p + 1, prompts.size(), tokens, s),
                  p + 1 == prompts.size());
  }
  KILN_TRY(backend->set_activation_observer(nullptr));
  return std::move(observer.stats);
}

// ---- float working copies of the weights the passes below change ----

class FloatWeights {
 public:
  explicit FloatWeights(WeightStore& store) : store_(store) {}
  Result<std::vector<float>*> get(const std::string& name) {
    auto it = values_.find(name);
    if (it != values_.end()) return &it->second;
    const TensorView* t = store_.find(name);
    if (!t) return make_error("quantize: weight '{}' not in the store", name);
    return &(values_[name] = tensor_to_f32(*t));
  }
  void mark_changed(const std::string& name) { changed_[name] = true; }
  // Writes changed weights back in their stored dtype (those not replaced by a quantized matrix).
  Status write_back(const Graph& graph) {
    for (const auto& [name, _] : changed_) {
      const auto info = graph.weights.find(name);
      if (info == graph.weights.end() || info->second.quant) continue;
      const TensorView* t = store_.find(name);
      if (!t) continue;
      TensorView f32 = *t;
      std::vector<uint8_t> bytes(values_[name].size() * 4);
      std::memcpy(bytes.data(), values_[name].data(), bytes.size());
      WeightStore tmp;
      tmp.put_owned(name, DType::F32, t->shape, std::move(bytes));
      KILN_ASSIGN(store_.tensors[name], convert_tensor(tmp.tensors.at(name), t->dtype));
    }
    return Status::Ok();
  }

 private:
  WeightStore& store_;
  std::map<std::string, std::vector<float>> values_;
  std::map<std::string, bool> changed_;
};

// ---- where 1/s can go: the producer of a matrix's input ----

struct Fold {
  enum Kind { kNone, kNormWeight, kLinearRows } kind = kNone;
  std::string weight;        // the norm weight, or the producer Linear's matrix
  std::string bias;          // the producer Linear's bias ("" when none)
  int64_t row_offset = 0;    // kLinearRows: channel c of the input is row row_offset + c
  int64_t tie_heads = 1;     // o_proj under GQA: query heads per KV head (their channels share s)
  int64_t head_dim = 0;
  std::string why;           // kNone: why no fold exists
};

int count_readers(const Graph& graph, int32_t value) {
  int readers = 0;
  for (const Node& n : graph.nodes) {
    for (const ValueRef& r : n.inputs) readers += r.value == value && n.output != value ? 1 : 0;
  }
  return readers;
}

int producer_of(const Graph& graph, int32_t value) {
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    const Node& n = graph.nodes[i];
    const bool in_place = !n.inputs.empty() && n.inputs[0].value == n.output;
    if (n.output == value && !in_place) return static_cast<int>(i);
  }
  return -1;
}

int weight_users(const Graph& graph, const std::string& weight) {
  int users = 0;
  for (const Node& n : graph.nodes) users += static_cast<int>(std::count(n.weights.begin(), n.weights.end(), weight));
  return users;
}

Fold find_fold(const Graph& graph, const Node& consumer) {
  Fold fold;
  const ValueRef& in = consumer.op == OpKind::SwiGluLinear ? consumer.inputs[1] : consumer.inputs[0];
  const int p = producer_of(graph, in.value);
  if (p < 0) return fold.why = "its input has no producer", fold;
  const Node& prod = graph.nodes[p];
  if (consumer.op == OpKind::SwiGluLinear || prod.op == OpKind::Linear) {
    // silu(gate) * up: scaling the up rows by 1/s scales the product by 1/s.
    if (prod.op != OpKind::Linear || weight_users(graph, prod.weights[0]) != 1) {
      return fold.why = "the up projection is not a Linear of its own", fold;
    }
    fold.kind = Fold::kLinearRows;
    fold.weight = prod.weights[0];
    fold.bias = prod.weights.size() > 1 ? prod.weights[1] : "";
    fold.row_offset = in.col_offset;
    return fold;
  }
  if (prod.op == OpKind::RmsNorm || prod.op == OpKind::AddRmsNorm) {
    if (count_readers(graph, in.value) != 1 || weight_users(graph, prod.weights[0]) != 1) {
      return fold.why = "its RMSNorm output feeds other nodes too (build without --no-fuse)", fold;
    }
    fold.kind = Fold::kNormWeight;
    fold.weight = prod.weights[0];
    return fold;
  }
  if (prod.op == OpKind::Attention) {
    // out[h, d] = Σ_t p_t v_t[h / g, d]: scaling v row (j, d) by 1/s scales every head of KV head j.
    const ValueRef& v = prod.inputs[2];
    const int vp = producer_of(graph, v.value);
    if (vp < 0 || graph.nodes[vp].op != OpKind::Linear || weight_users(graph, graph.nodes[vp].weights[0]) != 1) {
      return fold.why = "the value projection is not a Linear of its own", fold;
    }
    const Node& vlin = graph.nodes[vp];
    fold.kind = Fold::kLinearRows;
    fold.weight = vlin.weights[0];
    fold.bias = vlin.weights.size() > 1 ? vlin.weights[1] : "";
    fold.row_offset = v.col_offset;
    fold.head_dim = static_cast<int64_t>(prod.attr("head_dim"));
    fold.tie_heads = static_cast<int64_t>(prod.attr("num_heads") / prod.attr("num_kv_heads"));
    return fold;
  }
  return fold.why = fmt::format("its input comes from a {} node", op_name(prod.op)), fold;
}

// ---- quantization of one matrix with input-channel scales s ----

struct Candidate {
  QuantizedMatrix q;
  double rel_error = 0;  // ||X (Wq/s)^T - X W^T|| / ||X W^T|| on the samples
  std::string note;      // set when GPTQ could not run and round to nearest replaced it
};

// Round to nearest with each group's range clipped for the least activation-weighted error
// Σ_k E[x_k^2] (w_k - ŵ_k)^2 (the diagonal of the output error, as llama.cpp's importance matrix; the
// search is quantize_group_clipped's): outliers then cost less precision to everything else in their group.
QuantizedMatrix quantize_clipped(const float* w, int64_t N, int64_t K, const QuantInfo& info,
                                 const std::vector<double>& importance) {
  QuantizedMatrix m = make_quantized_matrix(N, K, info);
  const int64_t groups = quant_groups(info, K);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < groups; ++g) quantize_group_clipped(m, n, g, w + n * K, importance);
  return m;
}

// Quantizes W·diag(s) and measures the output error it makes on the sample rows.
Candidate quantize_scaled(const std::vector<float>& w, int64_t N, int64_t K, const std::vector<float>& s,
                          const QuantInfo& info, const InputStats* stats, const std::vector<float>& y_ref,
                          cpu::ThreadPool& pool, bool clip = false,
                          const std::vector<double>* importance_in = nullptr, bool gptq = false) {
  std::vector<float> scaled(w.size());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) scaled[n * K + k] = w[n * K + k] * s[k];
  // X (Q(W s) / s)^T = (X / s) Q(W s)^T: the scaled samples are what the quantized matrix sees.
  const int64_t M = stats ? stats->sample_rows : 0;
  std::vector<float> xs(M * K), y(M * N);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) xs[m * K + k] = stats->samples[m * K + k] / s[k];
  Candidate c;
  bool done = false;
  if (gptq && M > 0) {
    Result<QuantizedMatrix> q = quantize_gptq(scaled.data(), N, K, info, xs.data(), M, pool, GptqOptions{0.01, true, clip});
    if (q.ok()) {
      c.q = std::move(*q), done = true;
    } else {
      c.note = q.error().message + ": round to nearest instead";
    }
  }
  if (!done) {
    // The clipping importance Σ x^2 per input channel (GPTQ takes it from its Hessian's diagonal).
    std::vector<double> importance;
    if (clip && importance_in) importance = *importance_in;
    if (clip && !importance_in && M > 0) {
      importance.assign(K, 0.0);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t k = 0; k < K; ++k) importance[k] += static_cast<double>(xs[m * K + k]) * xs[m * K + k];
    }
    c.q = importance.empty() ? quantize_rtn(scaled.data(), N, K, info)
                             : quantize_clipped(scaled.data(), N, K, info, importance);
  }
  if (M == 0) return c;
  cpu::matmul_quant(xs.data(), M, K, c.q.view(), nullptr, y.data(), N, pool);
  double err = 0, ref = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    const double d = static_cast<double>(y[i]) - y_ref[i];
    err += d * d;
    ref += static_cast<double>(y_ref[i]) * y_ref[i];
  }
  c.rel_error = ref > 0 ? std::sqrt(err / ref) : (err > 0 ? 1.0 : 0.0);
  return c;
}

std::string short_name(const std::string& weight) {
  std::string s = weight;
  for (const char* prefix : {"model."}) {
    if (s.rfind(prefix, 0) == 0) s = s.substr(std::string(prefix).size());
  }
  const std::string suffix = ".weight";
  if (s.size() > suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0) {
    s.resize(s.size() - suffix.size());
  }
  return s;
}

// AWQ / SmoothQuant for one matrix W[N, K]: the input-channel scales s (AWQ: mean|x|^a, a = 0, 0.05, ...
// 0.95, normalized around 1; SmoothQuant: max|x|^alpha / max|w|^(1 - alpha), alpha = 0.1 ... 0.9, or none)
// whose quantization of W·s errs least on the sampled rows (X / s). Ratio 0 (s = 1) is always a candidate.
// Under GQA (fold.tie_heads > 1) the query heads of one KV head share their scales (the fold into the
// v rows can only scale them together).
struct ScaleChoice {
  double ratio = 0;
  std::vector<float> s;
};
ScaleChoice search_channel_scales(const std::vector<float>& w, int64_t N, int64_t K, const QuantInfo& info,
                                  const InputStats& st, const Fold& fold, bool smooth, cpu::ThreadPool& pool) {
  ScaleChoice choice{0.0, std::vector<float>(K, 1.0f)};
  // The activation statistic the scales grow with: AWQ mean |x|, SmoothQuant max |x|.
  std::vector<double> mean(K);
  for (int64_t k = 0; k < K; ++k) {
    mean[k] = smooth ? st.abs_max[k] : st.abs_sum[k] / static_cast<double>(std::max<int64_t>(st.rows_seen, 1));
  }
  if (fold.tie_heads > 1) {  // one scale per (KV head, dim): average over the query heads sharing it
    const int64_t hd = fold.head_dim, g = fold.tie_heads, heads = K / hd;
    for (int64_t j = 0; j < heads / g; ++j) {
      for (int64_t d = 0; d < hd; ++d) {
        double sum = 0;
        double tied = 0;
        for (int64_t h = j * g; h < (j + 1) * g; ++h) sum += mean[h * hd + d], tied = std::max(tied, mean[h * hd + d]);
        if (!smooth) tied = sum / static_cast<double>(g);  // AWQ: mean of means; SmoothQuant: max of maxima
        for (int64_t h = j * g; h < (j + 1) * g; ++h) mean[h * hd + d] = tied;
      }
    }
  }
  std::vector<float> y_ref(st.sample_rows * N);
  cpu::matmul(st.samples.data(), st.sample_rows, K, w.data(), DType::F32, N, nullptr, y_ref.data(), N, pool);
  std::vector<double> w_max(K, 0.0);  // SmoothQuant: max |W| of each input channel
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) w_max[k] = std::max(w_max[k], static_cast<double>(std::fabs(w[n * K + k])));
  double best = -1;
  const int steps = smooth ? 10 : 20;
  for (int step = 0; step < steps; ++step) {
    // AWQ: a = 0, 0.05, ... 0.95 (a = 0 is round to nearest); SmoothQuant: no smoothing, then
    // alpha = 0.1 ... 0.9 for s = max|x|^alpha / max|w|^(1 - alpha) (Xiao et al. 2023).
    const double a = smooth ? step / 10.0 : step / 20.0;
    std::vector<float> s(K, 1.0f);
    if (smooth && step > 0) {
      for (int64_t k = 0; k < K; ++k) {
        if (mean[k] <= 0 || w_max[k] <= 0) continue;
        s[k] = static_cast<float>(std::clamp(std::pow(mean[k], a) / std::pow(w_max[k], 1.0 - a), 1e-5, 1e5));
      }
    } else if (!smooth) {
      double smax = 0, smin = 1e300;
      for (int64_t k = 0; k < K; ++k) {
        const double v = std::pow(std::max(mean[k], 1e-4), a);
        smax = std::max(smax, v), smin = std::min(smin, v);
        s[k] = static_cast<float>(v);
      }
      const double norm = std::sqrt(smax * smin);  // AWQ's normalization: scales centred on 1
      for (float& v : s) v = static_cast<float>(v / norm);
    }
    const Candidate c = quantize_scaled(w, N, K, s, info, &st, y_ref, pool);
    if (best < 0 || c.rel_error < best) best = c.rel_error, choice.s = s, choice.ratio = a;
  }
  return choice;
}

// The clipping threshold of |x| for a static int8 activation scale (scale = threshold / 127).
//   minmax:     the largest |x| seen (every calibration row, not only the samples);
//   percentile: the 99.99th percentile of |x| over the sample rows;
//   entropy:    TensorRT's entropy calibration: a 2048-bin histogram of |x|; for each candidate
//               threshold bin i >= 128, P = the histogram up to i with the tail folded into bin i-1,
//               Q = P merged into 128 levels and spread back over the non-empty bins; the threshold
//               minimizing KL(P || Q).
double clip_threshold(const std::string& method, const std::vector<float>& abs_values, double abs_max) {
  if (abs_values.empty() || abs_max <= 0) return abs_max;
  if (method == "minmax") return abs_max;
  std::vector<float> v = abs_values;
  if (method == "percentile") {
    const size_t at = std::min(v.size() - 1, static_cast<size_t>(0.9999 * static_cast<double>(v.size())));
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(at), v.end());
    return std::max<double>(v[at], 1e-8);
  }
  constexpr int kBins = 2048, kLevels = 128;
  const double top = *std::max_element(v.begin(), v.end());
  if (top <= 0) return abs_max;
  std::vector<double> hist(kBins, 0.0);
  for (float x : v) hist[std::min(kBins - 1, static_cast<int>(x / top * kBins))] += 1.0;
  double best_kl = 1e300;
  int best_i = kBins;
  for (int i = kLevels; i <= kBins; ++i) {
    std::vector<double> p(hist.begin(), hist.begin() + i);
    for (int j = i; j < kBins; ++j) p[i - 1] += hist[j];  // outliers clip into the last bin
    std::vector<double> q(i, 0.0);
    const double per = static_cast<double>(i) / kLevels;
    for (int l = 0; l < kLevels; ++l) {
      const int b0 = static_cast<int>(l * per), b1 = std::max(b0 + 1, static_cast<int>((l + 1) * per));
      double mass = 0;
      int nonzero = 0;
      for (int b = b0; b < b1 && b < i; ++b) mass += hist[b], nonzero += hist[b] > 0 ? 1 : 0;
      for (int b = b0; b < b1 && b < i; ++b) q[b] = hist[b] > 0 ? mass / nonzero : 0.0;
    }
    double sp = 0, sq = 0;
    for (int b = 0; b < i; ++b) sp += p[b], sq += q[b];
    if (sp <= 0 || sq <= 0) continue;
    double kl = 0;
    for (int b = 0; b < i; ++b) {
      if (p[b] <= 0) continue;
      const double pb = p[b] / sp, qb = q[b] / sq;
      kl += pb * std::log(pb / std::max(qb, 1e-12));
    }
    if (kl < best_kl) best_kl = kl, best_i = i;
  }
  return std::min(abs_max, (best_i + 0.5) * top / kBins);
}

// XXH3-64 of every weight (name, dtype, bytes) the calibration runs on: a cache from other weights,
// another --dtype or another fusion is refused.
std::string weights_hash(const WeightStore& weights) {
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  for (const auto& [name, t] : weights.tensors) {
    XXH3_64bits_update(state, name.data(), name.size());
    const uint8_t dtype = static_cast<uint8_t>(t.dtype);
    XXH3_64bits_update(state, &dtype, 1);
    XXH3_64bits_update(state, t.data, t.nbytes);
  }
  const uint64_t h = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return fmt::format("{:016x}", h);
}

}  // namespace

Result<std::vector<std::string>> read_calibration_prompts(const std::string& path) {
  if (path.empty()) return builtin_calibration_prompts();
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error("--calib {}: cannot open the file", path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  std::vector<std::string> prompts;
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return make_error("--calib {}: the file is empty", path);
  if (text[first] == '{' || text[first] == '"') {  // JSONL
    std::istringstream lines(text);
    std::string line;
    int64_t number = 0;
    while (std::getline(lines, line)) {
      ++number;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_string()) {
        prompts.push_back(j.get<std::string>());
      } else if (j.is_object() && j.contains("text") && j["text"].is_string()) {
        prompts.push_back(j["text"].get<std::string>());
      } else if (j.is_object() && j.contains("prompt") && j["prompt"].is_string()) {
        prompts.push_back(j["prompt"].get<std::string>());
      } else {
        return make_error("--calib {}: line {} is not a JSON string or an object with \"text\" or \"prompt\"", path,
                          number);
      }
    }
  } else {  // paragraphs separated by blank lines
    std::istringstream lines(text);
    std::string line, paragraph;
    while (std::getline(lines, line)) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) {
        if (!paragraph.empty()) prompts.push_back(paragraph), paragraph.clear();
      } else {
        paragraph += (paragraph.empty() ? "" : "\n") + line;
      }
    }
    if (!paragraph.empty()) prompts.push_back(paragraph);
  }
  if (prompts.empty()) return make_error("--calib {}: no prompts in the file", path);
  return prompts;
}

Result<QuantizeModelReport> quantize_model(Graph& graph, WeightStore& weights, const QuantizeModelOptions& options) {
  const bool awq = options.mode == "int4";
  const bool smooth = options.mode == "w8a8";  // SmoothQuant
  const bool int4 = options.mode == "int4" || options.mode == "int4-rtn";
  if (!int4 && options.mode != "int8" && !smooth) {
    return make_error("unknown --quant '{}': expected none, int8, int4, int4-rtn or w8a8", options.mode);
  }
  // int4: groups of 128 unless given; int8: one scale per output channel unless a group size is given.
  const int64_t group_size = options.group_size > 0 ? options.group_size : (int4 ? 128 : 0);
  if (options.group_size < 0 || (group_size > 0 && group_size % kQuantBlock != 0)) {
    return make_error("--group-size {}: groups are a positive multiple of {}", options.group_size, kQuantBlock);
  }
  if (smooth && group_size > 0) return make_error("--group-size: w8a8 has one weight scale per output channel");
  const double max_error = options.max_error >= 0 ? options.max_error : (int4 ? 0.25 : 0.05);
  QuantizeModelReport report;
  const QuantizableWeights targets = quantizable_weights(graph);

  // A calibration cache made for exactly this build replaces calibration and the searches.
  CalibrationCache cache;
  bool from_cache = false;
  if (!options.calib_cache.empty()) {
    cache.key = CalibrationKey{KILN_VERSION, weights_hash(weights), options.mode + (options.gptq ? "+gptq" : ""), group_size,
                               options.calib_method.empty() ? "-" : options.calib_method,
                               options.calib_path.empty() ? "built-in" : options.calib_path, options.calib_samples,
                               options.calib_seq_len};
    std::error_code ec;
    if (std::filesystem::exists(options.calib_cache, ec)) {
      KILN_ASSIGN(CalibrationCache read, read_calibration_cache(options.calib_cache, cache.key));
      for (const auto& [name, m] : read.matrices) {
        if (!graph.weights.count(name)) {
          return make_error("--calib-cache {}: matrix '{}' is not in this model", options.calib_cache, name);
        }
        const int64_t K = graph.weights.at(name).shape[1];
        if ((!m.s.empty() && static_cast<int64_t>(m.s.size()) != K) ||
            (!m.importance.empty() && static_cast<int64_t>(m.importance.size()) != K)) {
          return make_error("--calib-cache {}: matrix '{}' has {} inputs, the cache lists {} scales", options.calib_cache,
                            name, K, std::max(m.s.size(), m.importance.size()));
        }
      }
      cache.matrices = std::move(read.matrices);
      from_cache = true;
      report.notes.push_back(fmt::format("calibration cache {} reused: no calibration, no search", options.calib_cache));
    }
  }

  // Calibration: needed for AWQ's search and for the error each matrix makes (mixed precision).
  // int8 calibrates (for its activation-aware scales and the error check) unless --max-quant-error 0.
  // GPTQ needs the activations themselves, so it calibrates even when a cache holds the searches.
  const bool need_calibration = awq || smooth || max_error > 0 || options.gptq;
  std::map<std::string, InputStats> stats;
  int64_t calib_prompts = 0, calib_tokens = 0;
  if (need_calibration && (!from_cache || options.gptq)) {
    if (!options.tokenizer) {
      if (awq || smooth || options.gptq) {
        return make_error("--quant {}{} calibrates on text prompts and the model has no tokenizer: give --tokenizer{}",
                          options.mode, options.gptq ? " --gptq" : "", awq ? ", or use --quant int4-rtn" : "");
      }
      report.notes.push_back("no tokenizer: no calibration, so no matrix is kept for its error");
    } else {
      KILN_ASSIGN(const std::vector<std::string> texts, read_calibration_prompts(options.calib_path));
      std::vector<std::vector<int32_t>> prompts;
      for (const std::string& text : texts) {
        if (static_cast<int64_t>(prompts.size()) >= options.calib_samples) break;
        std::vector<int32_t> ids = options.tokenizer->encode(text, /*add_bos=*/true);  // as `kiln run -p`
        if (static_cast<int64_t>(ids.size()) > options.calib_seq_len) ids.resize(options.calib_seq_len);
        if (ids.size() < 2) continue;
        calib_tokens += static_cast<int64_t>(ids.size());
        prompts.push_back(std::move(ids));
      }
      if (prompts.empty()) return make_error("calibration: no prompt has two or more tokens");
      calib_prompts = static_cast<int64_t>(prompts.size());
      KILN_ASSIGN(stats, calibrate(graph, weights, prompts, options.calib_seq_len, options.threads, options.progress,
                                   options.gptq ? kGptqSampleRows : kMaxSampleRows));
    }
  }

  cpu::ThreadPool pool(options.threads > 0 ? options.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  FloatWeights fw(weights);
  struct Plan {
    std::string name;
    QuantInfo info;
    std::vector<float> s;  // input-channel scales (all 1: none)
    double ratio = 0;
    bool keep = false;
    std::string why;
  };
  std::vector<Plan> plans;
  for (const std::string& name : targets.names) {
    Plan plan{name, {}, {}, 0, false, ""};
    const WeightInfo& info = graph.weights.at(name);
    const int64_t K = info.shape[1];
    const bool head = name == targets.lm_head;
    plan.info = (int4 && !head) ? QuantInfo{4, std::min(group_size, K), DType::F16, true}
                                : QuantInfo{8, K, DType::F32, false};
    if (options.mode == "int8" && group_size > 0 && group_size < K) plan.info = QuantInfo{8, group_size, DType::F16, false};
    if (smooth && !head) plan.info.act_bits = 8;  // the LM head stays weight-only
    for (const std::string& pattern : options.keep) {
      if (name.find(pattern) != std::string::npos) plan.keep = true, plan.why = "--keep-fp16 " + pattern;
    }
    plan.s.assign(K, 1.0f);
    plans.push_back(std::move(plan));
  }

  // AWQ: per matrix, the ratio a in s = mean|x|^a with the least output error, folded into the producer.
  const auto t0 = std::chrono::steady_clock::now();
  std::map<std::string, std::vector<float>> y_refs;  // X W^T on the samples, per matrix
  std::map<std::string, std::vector<float>> smoothing;  // the scales folded in, per matrix (1 where none)
  auto reference_output = [&](const Plan& plan, const std::vector<float>& w, int64_t N, int64_t K) -> const std::vector<float>& {
    std::vector<float>& y = y_refs[plan.name];
    const InputStats& st = stats.at(plan.name);
    y.assign(st.sample_rows * N, 0.0f);
    cpu::matmul(st.samples.data(), st.sample_rows, K, w.data(), DType::F32, N, nullptr, y.data(), N, pool);
    return y;
  };
  int searched = 0;
  for (Plan& plan : plans) {
    // int8 searches AWQ's activation-aware scales too (the layout stays per channel, symmetric).
    const bool searched_here = (awq && plan.info.bits == 4) || (smooth && plan.info.act_bits == 8) ||
                               (options.mode == "int8" && plan.name != targets.lm_head);
    if (!searched_here || plan.keep) continue;
    if (from_cache ? !cache.matrices.count(plan.name) : !stats.count(plan.name)) continue;
    const Node* consumer = nullptr;
    for (const Node& n : graph.nodes) {
      if ((n.op == OpKind::Linear || n.op == OpKind::SwiGluLinear) && n.weights[0] == plan.name) consumer = &n;
    }
    const Fold fold = find_fold(graph, *consumer);
    if (fold.kind == Fold::kNone) {
      report.notes.push_back(fmt::format("{}: no AWQ scaling ({}): round to nearest", short_name(plan.name), fold.why));
      continue;
    }
    const int64_t N = graph.weights.at(plan.name).shape[0], K = graph.weights.at(plan.name).shape[1];
    KILN_ASSIGN(std::vector<float>* w, fw.get(plan.name));
    if (from_cache) {
      const CachedMatrix& m = cache.matrices.at(plan.name);
      plan.ratio = m.s.empty() ? 0.0 : m.ratio;
      plan.s = m.s.empty() ? std::vector<float>(K, 1.0f) : m.s;
    } else {
      const ScaleChoice choice = search_channel_scales(*w, N, K, plan.info, stats.at(plan.name), fold, smooth, pool);
      plan.ratio = choice.ratio;
      plan.s = choice.s;
    }
    // Fold 1/s into the producer: the float model's function is unchanged.
    if (plan.ratio > 0) {
      KILN_ASSIGN(std::vector<float>* target, fw.get(fold.weight));
      if (fold.kind == Fold::kNormWeight) {
        for (int64_t k = 0; k < K; ++k) (*target)[k] /= plan.s[k];
      } else {
        const int64_t Kp = graph.weights.at(fold.weight).shape[1];
        const int64_t channels = fold.tie_heads > 1 ? K / fold.tie_heads : K;
        for (int64_t c = 0; c < channels; ++c) {
          // Under GQA channel c of the v rows is (KV head j, dim d) = query channel (j * g * hd + d).
          const int64_t q = fold.tie_heads > 1 ? (c / fold.head_dim) * fold.tie_heads * fold.head_dim + c % fold.head_dim : c;
          const float inv = 1.0f / plan.s[q];
          float* row = target->data() + (fold.row_offset + c) * Kp;
          for (int64_t k = 0; k < Kp; ++k) row[k] *= inv;
        }
        if (!fold.bias.empty()) {
          KILN_ASSIGN(std::vector<float>* bias, fw.get(fold.bias));
          for (int64_t c = 0; c < channels; ++c) {
            const int64_t q = fold.tie_heads > 1 ? (c / fold.head_dim) * fold.tie_heads * fold.head_dim + c % fold.head_dim : c;
            (*bias)[fold.row_offset + c] /= plan.s[q];
          }
          fw.mark_changed(fold.bias);
        }
      }
      fw.mark_changed(fold.weight);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) (*w)[n * K + k] *= plan.s[k];
      fw.mark_changed(plan.name);
      // The samples now reach this matrix divided by s.
      if (stats.count(plan.name)) {
        InputStats& mst = stats.at(plan.name);
        for (int64_t m = 0; m < mst.sample_rows; ++m)
          for (int64_t k = 0; k < K; ++k) mst.samples[m * K + k] /= plan.s[k];
      }
    }
    smoothing[plan.name] = plan.ratio > 0 ? plan.s : std::vector<float>(K, 1.0f);
    plan.s.assign(K, 1.0f);  // from here on the weights and samples carry the scaling
    ++searched;
    progress_line(options.progress,
                  fmt::format("{}: {} matrices searched, {:.1f} s", smooth ? "SmoothQuant" : "AWQ", searched,
                              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()),
                  false);
  }
  if (searched > 0) {
    progress_line(options.progress, fmt::format("{}: {} matrices searched", smooth ? "SmoothQuant" : "AWQ", searched), true);
  }

  // Static activation scales (w8a8 with --calib-method): from the smoothed activations.
  if (smooth && !options.calib_method.empty()) {
    if (options.calib_method != "minmax" && options.calib_method != "percentile" && options.calib_method != "entropy") {
      return make_error("unknown --calib-method '{}': expected minmax, percentile or entropy", options.calib_method);
    }
    for (Plan& plan : plans) {
      if (plan.info.act_bits != 8 || plan.keep) continue;
      if (from_cache) {
        if (cache.matrices.count(plan.name)) plan.info.act_scale = cache.matrices.at(plan.name).act_scale;
        continue;
      }
      if (!stats.count(plan.name)) continue;
      const InputStats& st = stats.at(plan.name);
      double abs_max = 0;  // over every calibration row: the statistic was taken before smoothing
      for (int64_t k = 0; k < st.width; ++k) abs_max = std::max(abs_max, static_cast<double>(st.abs_max[k]) / smoothing[plan.name][k]);
      std::vector<float> values(st.samples.begin(), st.samples.begin() + st.sample_rows * st.width);
      for (float& x : values) x = std::fabs(x);
      plan.info.act_scale = static_cast<float>(clip_threshold(options.calib_method, values, abs_max) / 127.0);
    }
  } else if (!options.calib_method.empty() && !smooth) {
    return make_error("--calib-method sets static activation scales, which only --quant w8a8 has");
  }

  // Quantize (every fold is done: rows scaled by later matrices' 1/s are final), measure, decide.
  int64_t quantized = 0, kept = 0, q_params = 0, q_bytes = 0;
  nlohmann::json per_matrix = nlohmann::json::array();
  std::map<double, int> ratio_counts;
  for (Plan& plan : plans) {
    const WeightInfo info = graph.weights.at(plan.name);
    const int64_t N = info.shape[0], K = info.shape[1];
    nlohmann::json entry = {{"weight", plan.name}};
    if (plan.keep) {
      report.notes.push_back(fmt::format("{}: kept in {} ({})", short_name(plan.name), dtype_name(info.dtype), plan.why));
      entry["kept"] = plan.why;
      per_matrix.push_back(entry);
      ++kept;
      continue;
    }
    KILN_ASSIGN(std::vector<float>* w, fw.get(plan.name));
    const InputStats* st = stats.count(plan.name) ? &stats.at(plan.name) : nullptr;
    const std::vector<float> no_ref;
    const std::vector<float>& y_ref = st ? reference_output(plan, *w, N, K) : no_ref;
    // int4 AWQ: the group ranges are also clipped (AWQ's second search), on the final, scaled weights.
    const bool clip = awq && plan.info.bits == 4;
    const CachedMatrix* cached = from_cache && cache.matrices.count(plan.name) ? &cache.matrices.at(plan.name) : nullptr;
    Candidate c = quantize_scaled(*w, N, K, plan.s, plan.info, st, y_ref, pool, clip,
                                  cached && !cached->importance.empty() ? &cached->importance : nullptr,
                                  options.gptq);
    if (!c.note.empty()) report.notes.push_back(fmt::format("{}: {}", short_name(plan.name), c.note));
    if (cached && cached->error >= 0) c.rel_error = cached->error;
    const bool measured = st != nullptr || (cached && cached->error >= 0);
    if (!options.calib_cache.empty() && !from_cache) {
      CachedMatrix& m = cache.matrices[plan.name];
      m.ratio = plan.ratio;
      m.error = st ? c.rel_error : -1.0;
      m.act_scale = plan.info.act_scale;
      m.s = smoothing.count(plan.name) && plan.ratio > 0 ? smoothing.at(plan.name) : std::vector<float>{};
      if (clip && st) {
        m.importance.assign(K, 0.0);
        for (int64_t r = 0; r < st->sample_rows; ++r)
          for (int64_t k = 0; k < K; ++k) m.importance[k] += static_cast<double>(st->samples[r * K + k]) * st->samples[r * K + k];
      }
    }
    y_refs.erase(plan.name);
    entry["layout"] = quant_describe(plan.info, K);
    if (measured) entry["rel_error"] = c.rel_error;
    if ((awq && plan.info.bits == 4) || (options.mode == "int8" && plan.name != targets.lm_head)) {
      entry["awq_ratio"] = plan.ratio, ratio_counts[plan.ratio]++;
    }
    if (smooth && plan.info.act_bits == 8) entry["smooth_alpha"] = plan.ratio, ratio_counts[plan.ratio]++;
    if (plan.info.act_scale > 0) entry["act_scale"] = plan.info.act_scale;
    if (measured && max_error > 0 && c.rel_error > max_error) {
      report.notes.push_back(fmt::format("{}: kept in {}: its {} output error on the calibration prompts is {:.3f} > {:.3f}",
                                         short_name(plan.name), dtype_name(info.dtype), quant_describe(plan.info, K),
                                         c.rel_error, max_error));
      entry["kept"] = fmt::format("error {:.4f} > {:.4f}", c.rel_error, max_error);
      per_matrix.push_back(entry);
      ++kept;
      continue;
    }
    per_matrix.push_back(entry);
    KILN_TRY(set_quantized_weight(graph, weights, plan.name, c.q));
    ++quantized;
    q_params += N * K;
    q_bytes += static_cast<int64_t>(c.q.codes.size() + c.q.scales.size() + c.q.mins.size());
  }
  if (!options.calib_cache.empty() && !from_cache) {
    KILN_TRY(write_calibration_cache(options.calib_cache, cache));
    report.notes.push_back(fmt::format("calibration cache {} written ({} matrices)", options.calib_cache,
                                       cache.matrices.size()));
  }
  KILN_TRY(fw.write_back(graph));
  remove_unused(graph, weights);
  KILN_TRY(graph.validate());

  std::string method = smooth ? "w8a8 SmoothQuant (per-token int8 activations)"
                       : options.mode == "int8" ? "int8 per-channel"
                       : awq                   ? fmt::format("int4 g{} AWQ", group_size)
                                               : fmt::format("int4 g{} round-to-nearest", group_size);
  if (options.mode == "int8" && group_size > 0) method = fmt::format("int8 g{}", group_size);
  report.summary = fmt::format("{}: {} of {} matrices quantized, {:.3f} bits per weight{}{}", method, quantized,
                               plans.size(), q_params ? 8.0 * static_cast<double>(q_bytes) / static_cast<double>(q_params) : 0.0,
                               kept ? fmt::format(", {} kept", kept) : "",
                               calib_prompts ? fmt::format(" ({} calibration prompts, {} tokens)", calib_prompts, calib_tokens) : "");
  if (!ratio_counts.empty()) {
    std::string ratios;
    for (const auto& [a, count] : ratio_counts) ratios += fmt::format("{}{:.2f} x{}", ratios.empty() ? "" : ", ", a, count);
    report.notes.push_back((smooth ? "SmoothQuant alphas chosen (0: no smoothing): " : "AWQ ratios chosen: ") + ratios);
  }
  report.metadata = {{"mode", options.mode},
                     {"group_size", group_size},
                     {"calibration", {{"prompts", calib_prompts}, {"tokens", calib_tokens},
                                      {"source", options.calib_path.empty() ? "built-in" : options.calib_path}}},
                     {"max_error", max_error},
                     {"activations", smooth ? (options.calib_method.empty() ? "int8 dynamic per token"
                                                                            : "int8 static per tensor, " + options.calib_method)
                                            : "float"},
                     {"matrices", per_matrix}};
  return report;
}

}  // namespace kiln
