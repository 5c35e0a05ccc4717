#include "server/metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <functional>

namespace kiln {

Histogram::Histogram(std::vector<double> upper_bounds)
    : upper_bounds_(std::move(upper_bounds)), counts_(upper_bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  const size_t bucket =
      std::lower_bound(upper_bounds_.begin(), upper_bounds_.end(), value) - upper_bounds_.begin();
  std::lock_guard<std::mutex> lock(mutex_);
  ++counts_[bucket];
  sum_ += value;
}

Histogram::Snapshot Histogram::snapshot() const {
  std::lock_guard<std::mutex> lock(mutex_);
  Snapshot s;
  s.upper_bounds = upper_bounds_;
  uint64_t running = 0;
  for (size_t i = 0; i < upper_bounds_.size(); ++i) {
    running += counts_[i];
    s.cumulative_counts.push_back(running);
  }
  s.count = running + counts_.back();
  s.sum = sum_;
  return s;
}

const char* outcome_label(RequestOutcome outcome) {
  switch (outcome) {
    case RequestOutcome::Success:
      return "success";
    case RequestOutcome::Cancelled:
      return "cancelled";
    case RequestOutcome::Invalid:
      return "invalid";
    case RequestOutcome::Overloaded:
      return "overloaded";
    case RequestOutcome::Error:
      return "error";
    case RequestOutcome::kCount:
      break;
  }
  return "unknown";
}

// Buckets as vLLM's (vllm/v1/metrics/loggers.py), which dashboards already expect.
ModelMetrics::ModelMetrics()
    : time_to_first_token({0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                           7.5, 10.0, 20.0, 40.0, 80.0}),
      inter_token_latency(
          {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0}),
      request_duration(
          {0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0}) {}

std::string escape_label_value(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

namespace {

// Go's strconv.FormatFloat(v, 'g', -1, 64) is what Prometheus clients print; fmt's shortest
// round-trip form parses back to the same double, which is what the format requires.
std::string number(double v) { return fmt::format("{}", v); }

void family(std::string& out, const char* name, const char* type, const char* help) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

}  // namespace

std::string render_prometheus(const std::vector<NamedMetrics>& models) {
  std::string out;
  auto per_model = [&](const char* name, const char* type, const char* help,
                       const std::function<double(const ModelMetrics&)>& value) {
    family(out, name, type, help);
    for (const NamedMetrics& m : models) {
      out += fmt::format("{}{{model=\"{}\"}} {}\n", name, escape_label_value(m.model),
                         number(value(*m.metrics)));
    }
  };
  auto histogram = [&](const char* name, const char* help,
                       const std::function<const Histogram&(const ModelMetrics&)>& h) {
    family(out, name, "histogram", help);
    for (const NamedMetrics& m : models) {
      const Histogram::Snapshot s = h(*m.metrics).snapshot();
      const std::string label = escape_label_value(m.model);
      for (size_t i = 0; i < s.upper_bounds.size(); ++i) {
        out += fmt::format("{}_bucket{{model=\"{}\",le=\"{}\"}} {}\n", name, label, number(s.upper_bounds[i]),
                           s.cumulative_counts[i]);
      }
      out += fmt::format("{}_bucket{{model=\"{}\",le=\"+Inf\"}} {}\n", name, label, s.count);
      out += fmt::format("{}_sum{{model=\"{}\"}} {}\n", name, label, number(s.sum));
      out += fmt::format("{}_count{{model=\"{}\"}} {}\n", name, label, s.count);
    }
  };

  family(out, "kiln_requests_total", "counter", "Requests finished, by outcome.");
  for (const NamedMetrics& m : models) {
    for (int o = 0; o < static_cast<int>(RequestOutcome::kCount); ++o) {
      out +=
          fmt::format("kiln_requests_total{{model=\"{}\",status=\"{}\"}} {}\n", escape_label_value(m.model),
                      outcome_label(static_cast<RequestOutcome>(o)), m.metrics->requests[o].load());
    }
  }
  per_model("kiln_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.",
            [](const ModelMetrics& m) { return static_cast<double>(m.prompt_tokens.load()); });
  per_model("kiln_generation_tokens_total", "counter", "Tokens generated.",
            [](const ModelMetrics& m) { return static_cast<double>(m.generation_tokens.load()); });
  histogram("kiln_time_to_first_token_seconds", "Time from a request's arrival to its first token.",
            [](const ModelMetrics& m) -> const Histogram& { return m.time_to_first_token; });
  histogram("kiln_inter_token_latency_seconds", "Time between consecutive tokens of a sequence.",
            [](const ModelMetrics& m) -> const Histogram& { return m.inter_token_latency; });
  histogram("kiln_request_duration_seconds", "Time from a request's arrival to its end.",
            [](const ModelMetrics& m) -> const Histogram& { return m.request_duration; });
  per_model("kiln_queue_length", "gauge", "Requests waiting to be scheduled.",
            [](const ModelMetrics& m) { return static_cast<double>(m.waiting.load()); });
  per_model("kiln_running_sequences", "gauge", "Sequences holding KV blocks.",
            [](const ModelMetrics& m) { return static_cast<double>(m.running.load()); });
  per_model("kiln_kv_blocks_used", "gauge", "KV cache blocks referenced by sequences.",
            [](const ModelMetrics& m) { return static_cast<double>(m.kv_blocks_used.load()); });
  per_model("kiln_kv_blocks_free", "gauge", "KV cache blocks available (free or cached and unreferenced).",
            [](const ModelMetrics& m) { return static_cast<double>(m.kv_blocks_free.load()); });
  per_model("kiln_kv_blocks_total", "gauge", "KV cache blocks.",
            [](const ModelMetrics& m) { return static_cast<double>(m.kv_blocks_total.load()); });
  per_model("kiln_kv_blocks_used_peak", "gauge", "Most KV cache blocks referenced at once since start.",
            [](const ModelMetrics& m) { return static_cast<double>(m.kv_blocks_used_peak.load()); });
  per_model("kiln_kv_cache_bytes", "gauge", "Memory of the whole KV cache (its budget), bytes.",
            [](const ModelMetrics& m) { return static_cast<double>(m.kv_cache_bytes.load()); });
  per_model("kiln_prefix_cache_query_tokens_total", "counter", "Prompt tokens looked up in the prefix cache.",
            [](const ModelMetrics& m) { return static_cast<double>(m.prefix_cache_query_tokens.load()); });
  per_model("kiln_prefix_cache_hit_tokens_total", "counter", "Prompt tokens found in the prefix cache.",
            [](const ModelMetrics& m) { return static_cast<double>(m.prefix_cache_hit_tokens.load()); });
  per_model("kiln_prefix_cache_hit_rate", "gauge",
            "Hit tokens / query tokens of the prefix cache (0 before any).", [](const ModelMetrics& m) {
              const double q = static_cast<double>(m.prefix_cache_query_tokens.load());
              return q > 0 ? static_cast<double>(m.prefix_cache_hit_tokens.load()) / q : 0.0;
            });
  per_model("kiln_preemptions_total", "counter", "Sequences preempted for lack of KV blocks.",
            [](const ModelMetrics& m) { return static_cast<double>(m.preemptions.load()); });
  return out;
}

}  // namespace kiln
