// Serving metrics per model, rendered in the Prometheus text exposition format (version 0.0.4:
// https://prometheus.io/docs/instrumenting/exposition_formats/). Counters and histograms are
// written by the engine worker (a few times per step) and read by /metrics; gauges are snapshots
// the worker stores after each step.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace kiln {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double value);

  struct Snapshot {
    std::vector<double> upper_bounds;
    std::vector<uint64_t> cumulative_counts;  // [bounds] observations <= each bound
    uint64_t count = 0;
    double sum = 0;
  };
  Snapshot snapshot() const;

 private:
  mutable std::mutex mutex_;
  std::vector<double> upper_bounds_;
  std::vector<uint64_t> counts_;  // [bounds + 1] per bucket, the last one above every bound
  double sum_ = 0;
};

// How a request ended, the status label of kiln_requests_total.
enum class RequestOutcome : int { Success = 0, Cancelled, Invalid, Overloaded, Error, kCount };
const char* outcome_label(RequestOutcome outcome);

struct ModelMetrics {
  ModelMetrics();

  std::array<std::atomic<uint64_t>, static_cast<size_t>(RequestOutcome::kCount)> requests{};
  std::atomic<uint64_t> prompt_tokens{0};
  std::atomic<uint64_t> generation_tokens{0};
  Histogram time_to_first_token;  // seconds, request arrival to its first token
  Histogram inter_token_latency;  // seconds between consecutive tokens of a sequence
  Histogram request_duration;     // seconds, arrival to the last choice finished

  // Gauges and totals the worker snapshots after each step.
  std::atomic<int64_t> waiting{0};
  std::atomic<int64_t> running{0};
  std::atomic<int64_t> kv_blocks_used{0};
  std::atomic<int64_t> kv_blocks_free{0};
  std::atomic<int64_t> kv_blocks_total{0};
  std::atomic<int64_t> kv_blocks_used_peak{0};  // most blocks referenced at once since start
  std::atomic<int64_t> kv_cache_bytes{0};       // device (or host) memory of the whole KV cache
  std::atomic<int64_t> prefix_cache_query_tokens{0};
  std::atomic<int64_t> prefix_cache_hit_tokens{0};
  std::atomic<int64_t> preemptions{0};

  void count(RequestOutcome outcome) { ++requests[static_cast<size_t>(outcome)]; }
};

struct NamedMetrics {
  std::string model;
  const ModelMetrics* metrics;
};

// All families, each with # HELP and # TYPE once, one sample per model.
std::string render_prometheus(const std::vector<NamedMetrics>& models);

// A Prometheus label value: backslash, double quote and newline escaped.
std::string escape_label_value(const std::string& value);

}  // namespace kiln
