// `kiln bench` on the stories260K engine: the report's numbers are present, positive and consistent
// with the workload asked for; bad arguments give one "kiln: error:" line and exit status 1.
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "runtime/benchmark.h"
#include "cli_runner.h"

namespace kiln {
namespace {

using testing::shared_path;
using testing::TempDir;

using testing::kiln;
using testing::Outcome;
using testing::slurp;

void expect_clean_error(const Outcome& o, const std::string& needle) {
  EXPECT_EQ(o.exit_code, 1) << o.err;
  EXPECT_EQ(o.err.rfind("kiln: error: ", 0), 0u) << o.err;
  EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << o.err;
  EXPECT_NE(o.err.find(needle), std::string::npos) << "expected '" << needle << "' in: " << o.err;
  EXPECT_TRUE(o.out.empty()) << o.out;
}

class Bench : public ::testing::Test {
 protected:
  void SetUp() override {
    engine_ = dir_.file("s.kiln");
    const Outcome o = kiln(dir_, "build '" + shared_path("models/stories260K/stories260K.bin") + "' -o '" + engine_ +
                                     "' --max-seq-len 64 --max-batch 8");
    ASSERT_EQ(o.exit_code, 0) << o.err;
  }
  Outcome bench(const std::string& args) { return kiln(dir_, "bench '" + engine_ + "' -t 2 " + args); }

  TempDir dir_;
  std::string engine_;
};

TEST_F(Bench, JsonReportIsConsistentWithTheWorkload) {
  // A 32-token step budget splits the 3 x 40 prompt tokens over 4 prefill steps, one prompt across two.
  const Outcome o = bench("--batch 3 --prompt-len 40 --gen-len 10 --iterations 2 --warmup 1 --max-step-tokens 32 --json");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  const auto r = nlohmann::json::parse(o.out);
  EXPECT_EQ(r["backend"], "cpu");
  EXPECT_EQ(r["batch"], 3);
  EXPECT_EQ(r["prompt_tokens"], 3 * 40 * 2);
  EXPECT_EQ(r["generated_tokens"], 3 * 10 * 2);
  EXPECT_EQ(r["decode_steps"], 9 * 2);
  for (const char* key : {"ttft_ms", "prompt_tokens_per_second", "decode_step_ms_p50", "decode_step_ms_p90",
                          "decode_step_ms_p99", "decode_tokens_per_second", "weight_bytes", "kv_cache_bytes",
                          "arena_bytes", "peak_rss_bytes", "weight_bandwidth_bytes_per_second",
                          "copy_bandwidth_bytes_per_second", "weight_bandwidth_fraction"}) {
    ASSERT_TRUE(r.contains(key)) << key;
    EXPECT_GT(r[key].get<double>(), 0.0) << key;
  }
  EXPECT_EQ(r["peak_device_bytes"], 0);  // the CPU backend holds no device memory
  const double p50 = r["decode_step_ms_p50"], p90 = r["decode_step_ms_p90"], p99 = r["decode_step_ms_p99"];
  EXPECT_LE(p50, p90);
  EXPECT_LE(p90, p99);
  // 18 steps: the nearest-rank p99 is the slowest step, so the mean step is no slower than it.
  EXPECT_GE(r["decode_tokens_per_second"].get<double>() * 1.0001, 3 * 1000.0 / p99);
  // Bandwidth is weights read per p50 step.
  EXPECT_NEAR(r["weight_bandwidth_bytes_per_second"].get<double>(), r["weight_bytes"].get<double>() / (p50 / 1e3),
              1e-6 * r["weight_bandwidth_bytes_per_second"].get<double>());
  EXPECT_FALSE(r.contains("profiles"));
}

TEST_F(Bench, VerboseProfilesEveryLayerOfBothPhases) {
  const Outcome o = bench("--batch 2 --prompt-len 8 --gen-len 4 --iterations 1 --warmup 0 --json --verbose");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  const auto profiles = nlohmann::json::parse(o.out)["profiles"];
  ASSERT_EQ(profiles.size(), 2u);
  EXPECT_EQ(profiles[0]["phase"], "prefill");
  EXPECT_EQ(profiles[0]["num_tokens"], 16);
  EXPECT_EQ(profiles[1]["phase"], "decode");
  EXPECT_EQ(profiles[1]["num_tokens"], 2);
  for (const auto& p : profiles) {
    for (int layer = 0; layer < 5; ++layer) {  // stories260K has 5 layers
      const auto& row = p["rows"]["layers." + std::to_string(layer)];
      ASSERT_TRUE(row.is_object()) << p["rows"].dump();
      EXPECT_GT(row["linear"].get<double>(), 0.0);
      EXPECT_TRUE(row.contains("attention"));
    }
    EXPECT_TRUE(p["rows"].contains("lm_head")) << p["rows"].dump();
    double sum = 0;
    for (const auto& [name, ops] : p["rows"].items()) {
      for (const auto& [op, ms] : ops.items()) sum += ms.get<double>();
    }
    EXPECT_NEAR(sum, p["total_ms"].get<double>(), 1e-9 + 1e-9 * sum);
  }
}

TEST_F(Bench, TablePrintsTheMetrics) {
  const Outcome o = bench("--batch 1 --prompt-len 4 --gen-len 3 --iterations 1 --warmup 0");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  for (const char* metric : {"time to first token", "decode step p50 / p90 / p99", "decode throughput", "peak RSS",
                             "weight bandwidth"}) {
    EXPECT_NE(o.out.find(metric), std::string::npos) << metric << " in:\n" << o.out;
  }
}

TEST_F(Bench, BadArgumentsGiveOneErrorLine) {
  expect_clean_error(bench("--batch 0 --prompt-len 4 --gen-len 4"), "--batch");
  expect_clean_error(bench("--batch 1 --prompt-len 0 --gen-len 4"), "--prompt-len");
  expect_clean_error(bench("--batch 1 --prompt-len 64 --gen-len 2"), "max sequence length 64");
  expect_clean_error(bench("--batch 1 --prompt-len 100 --gen-len 1"), "max sequence length 64");
  expect_clean_error(bench("--batch 9 --prompt-len 4 --gen-len 2"), "max batch 8");
  expect_clean_error(bench("--batch 1 --prompt-len 4 --gen-len 2 --iterations 0"), "iterations");
  expect_clean_error(kiln(dir_, "bench '" + dir_.file("missing.kiln") + "' --batch 1 --prompt-len 4 --gen-len 2"),
                     "missing.kiln");
}

// KILN_CPU_ISA caps the kernels' instruction set (backend/cpu/isa.h); the report names the level that
// ran; a value that is not a level is refused before anything runs.
TEST_F(Bench, CpuIsaEnvironmentCapsTheLevelAndRefusesUnknownValues) {
  ASSERT_EQ(setenv("KILN_CPU_ISA", "scalar", 1), 0);
  const Outcome capped = bench("--batch 1 --prompt-len 4 --gen-len 3 --iterations 1 --warmup 0 --json");
  ASSERT_EQ(setenv("KILN_CPU_ISA", "avx3", 1), 0);
  const Outcome bad = bench("--batch 1 --prompt-len 4 --gen-len 3");
  unsetenv("KILN_CPU_ISA");
  ASSERT_EQ(capped.exit_code, 0) << capped.err;
  EXPECT_EQ(nlohmann::json::parse(capped.out)["cpu_isa"].get<std::string>().rfind("scalar", 0), 0u) << capped.out;
  expect_clean_error(bad, "KILN_CPU_ISA=avx3");
}

// The full sequence length fits exactly: P + G - 1 positions.
TEST_F(Bench, WorkloadFillingTheContextRuns) {
  const Outcome o = bench("--batch 2 --prompt-len 60 --gen-len 5 --iterations 1 --warmup 0 --json");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(nlohmann::json::parse(o.out)["decode_steps"], 4);
}

TEST(BenchProfile, AggregatesPerLayerAndOpKind) {
  const std::vector<NodeTiming> timings = {
      {"embed_tokens", "embedding", 1.0},  {"layers.0.attn.qkv", "linear", 2.0}, {"layers.0.attn", "attention", 3.0},
      {"layers.0.mlp.down", "linear", 4.0}, {"layers.10.attn.qkv", "linear", 5.0}, {"layers.2.attn.qkv", "linear", 6.0},
      {"lm_head", "linear", 7.0},
  };
  const StepProfile p = aggregate_profile("decode", 4, timings);
  EXPECT_EQ(p.rows, (std::vector<std::string>{"layers.0", "layers.2", "layers.10", "embed_tokens", "lm_head"}));
  EXPECT_EQ(p.ops, (std::vector<std::string>{"embedding", "linear", "attention"}));
  EXPECT_EQ(p.ms[0], (std::vector<double>{0.0, 6.0, 3.0}));
  EXPECT_EQ(p.ms[2], (std::vector<double>{0.0, 5.0, 0.0}));
  EXPECT_EQ(p.ms[3], (std::vector<double>{1.0, 0.0, 0.0}));
  EXPECT_DOUBLE_EQ(p.total_ms, 28.0);
}

}  // namespace
}  // namespace kiln
