// The CUDA backend against the same independent references as the CPU backend (tolerances of
// the issue: 2e-2 relative L2 on logits for fp16/bf16, greedy ids up to the first small margin),
// plus llama2.c parity from BOS and batch equivalence on the GPU. Label `gpu`: skipped without one.
#include <cuda_runtime.h>

#include <cstdlib>

#include "backend/cuda/cublas_gemm.h"
#include "backend/cuda/cuda_test_util.h"
#include "parity_checks.h"

namespace kiln {
namespace {

using namespace kiln::testing;

class CudaStoriesReference : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaStoriesReference, MatchesFloat64Reference) {
  GPU_OR_SKIP();
  check_stories_reference(GetParam(), "cuda");
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaStoriesReference, ::testing::Values("fp16", "bf16"));

class CudaHfParity : public ::testing::TestWithParam<HfCase> {};

TEST_P(CudaHfParity, MatchesTransformersFloat64) {
  GPU_OR_SKIP();
  check_hf_golden(GetParam(), "cuda");
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaHfParity, ::testing::ValuesIn(hf_cases({"fp16", "bf16"})),
                         hf_case_name);

TEST(CudaParity, Stories260KFromBosMatchesLlama2c) {
  GPU_OR_SKIP();
  TempDir dir;
  auto model = build_and_load(dir, shared_path("models/stories260K/stories260K.bin"), "fp16", true, 512, 2,
                              512, "cuda");
  ASSERT_TRUE(model);
  const auto expected = read_json(shared_path("models/stories260K/EXPECTED.json"));
  const auto result = greedy(*model, {1}, 128);
  const auto want = expected["greedy_ids_128"].get<std::vector<int32_t>>();
  // fp16 weights: compare up to the first step whose float64 margin is under 0.05.
  const auto golden = read_json(source_path("tests/golden/stories260K_ref.json"));
  std::vector<double> margins;
  for (const auto& c : golden["cases"]) {
    if (c["name"] == "bos") margins = c["margins"].get<std::vector<double>>();
  }
  margins.resize(want.size(), 1.0);  // the reference stores 64 steps; beyond them compare all
  expect_greedy_prefix_equal(result.ids, want, margins, 5e-2, "stories260K cuda fp16 from BOS");
}

// SwiGLU as the epilogue of the gate_up GEMV (gemv_glu) decodes the same greedy ids as the separate
// swiglu kernel, with one kernel fewer per layer: one stories260K engine (built without timed tactics,
// so the choices are the defaults: gate_up on the GEMV at one row, and the down projection, K = 172,
// on swiglu + cuBLASLt) loaded with KILN_CUDA_GLU=1 and =0. The kernel itself is bit-exact
// (CudaGemvGlu in test_cuda_gemv_swiglu).
TEST(CudaParity, GluEpilogueEqualsSeparateSwiglu) {
  GPU_OR_SKIP();
  TempDir dir;
  BuildOptions options;
  options.backend = "cuda";
  options.model_path = shared_path("models/stories260K/stories260K.bin");
  options.output_path = dir.file("stories.kiln");
  options.dtype = "fp16";
  options.max_seq_len = 512;
  options.tune = false;
  const auto report = build_engine(options);
  ASSERT_TRUE(report.ok()) << report.error().message;
  struct RestoreEnv {
    ~RestoreEnv() { unsetenv("KILN_CUDA_GLU"); }
  } restore;
  std::vector<GenerationResult> results;
  std::vector<int64_t> kernels;
  for (const char* glu : {"1", "0"}) {
    ASSERT_EQ(setenv("KILN_CUDA_GLU", glu, 1), 0);
    RuntimeOptions runtime;
    runtime.backend_options.max_tokens_per_step = 512;
    auto model = Model::load(options.output_path, runtime);
    ASSERT_TRUE(model.ok()) << model.error().message;
    results.push_back(greedy(**model, {1, 403, 407, 261}, 48));
    kernels.push_back((*model)->backend().kernels_per_decode_step(1));
  }
  EXPECT_EQ(kernels[1] - kernels[0], 5) << "one swiglu kernel fewer in each of the 5 layers";
  ASSERT_EQ(results[0].ids.size(), 48u);
  EXPECT_EQ(results[0].ids, results[1].ids);  // 47 graph-replayed decode steps
}

// Norms folded into the GEMVs around them (KILN_CUDA_NORM_FUSION=1: the residual add in the epilogue
// of the GEMV producing r, the normalization in the prologue of the GEMV reading the norm) decode the
// same greedy ids as the norm kernels. stories260K without timed tactics: qkv, o_proj and gate_up run
// on the GEMV at one row, the down projection (K = 172) on cuBLASLt, so each layer loses its
// post-attention norm and the first layer its input norm: 6 kernels fewer per step.
TEST(CudaParity, NormFusionEqualsNormKernels) {
  GPU_OR_SKIP();
  TempDir dir;
  BuildOptions options;
  options.backend = "cuda";
  options.model_path = shared_path("models/stories260K/stories260K.bin");
  options.output_path = dir.file("stories.kiln");
  options.dtype = "fp16";
  options.max_seq_len = 512;
  options.tune = false;
  const auto report = build_engine(options);
  ASSERT_TRUE(report.ok()) << report.error().message;
  struct RestoreEnv {
    ~RestoreEnv() { unsetenv("KILN_CUDA_NORM_FUSION"); }
  } restore;
  std::vector<GenerationResult> results;
  std::vector<int64_t> kernels;
  for (const char* fuse : {"1", "0"}) {
    ASSERT_EQ(setenv("KILN_CUDA_NORM_FUSION", fuse, 1), 0);
    RuntimeOptions runtime;
    runtime.backend_options.max_tokens_per_step = 512;
    auto model = Model::load(options.output_path, runtime);
    ASSERT_TRUE(model.ok()) << model.error().message;
    results.push_back(greedy(**model, {1, 403, 407, 261}, 48));
    kernels.push_back((*model)->backend().kernels_per_decode_step(1));
  }
  EXPECT_EQ(kernels[1] - kernels[0], 6);
  ASSERT_EQ(results[0].ids.size(), 48u);
  EXPECT_EQ(results[0].ids, results[1].ids);
}

// A prefill chunk that asks for no logits (the first chunks of a long prompt) runs, and the next
// chunk's logits equal those of the whole prompt in one step.
TEST(CudaParity, PrefillChunkWithoutLogitRows) {
  GPU_OR_SKIP();
  TempDir dir;
  auto model = build_and_load(dir, shared_path("models/stories260K/stories260K.bin"), "fp16", true, 512, 2,
                              512, "cuda");
  ASSERT_TRUE(model);
  Backend& backend = model->backend();
  const std::vector<int32_t> prompt{1, 403, 407, 261, 378, 432, 383};
  std::vector<int32_t> blocks{*model->kv_pool().allocate()};
  auto make = [&](size_t from, size_t to, bool logits) {
    Batch b;
    b.max_blocks_per_seq = static_cast<int32_t>(model->info().max_seq_len / backend.kv_geometry().block_size);
    b.block_tables.assign(b.max_blocks_per_seq, -1);
    b.block_tables[0] = blocks[0];
    for (size_t i = from; i < to; ++i) {
      b.tokens.push_back(prompt[i]);
      b.positions.push_back(static_cast<int32_t>(i));
      b.token_seq.push_back(0);
    }
    if (logits) b.logit_rows.push_back(b.num_tokens() - 1);
    return b;
  };
  std::vector<float> whole(backend.vocab_size()), chunked(backend.vocab_size());
  ASSERT_TRUE(backend.forward(make(0, prompt.size(), true), whole.data()).ok());
  const Status first = backend.forward(make(0, 4, false), nullptr);
  ASSERT_TRUE(first.ok()) << first.error().message;
  ASSERT_TRUE(backend.forward(make(4, prompt.size(), true), chunked.data()).ok());
  double num = 0, den = 0;
  for (size_t i = 0; i < whole.size(); ++i) {
    num += (whole[i] - chunked[i]) * (whole[i] - chunked[i]);
    den += whole[i] * whole[i];
  }
  EXPECT_LT(std::sqrt(num / den), 2e-3);  // fp16 activations, different attention split
  model->kv_pool().free(blocks[0]);
}

// Greedy ids taken on the device (forward_argmax, used by decode loops) equal the host argmax of
// the logits of the same step, for several rows (a decode step of 3 sequences, graph-replayed).
TEST(CudaParity, DeviceArgmaxEqualsHostArgmax) {
  GPU_OR_SKIP();
  TempDir dir;
  auto model =
      build_and_load(dir, shared_path("fixtures/hf-tiny/tiny-llama"), "fp16", true, 512, 2, 512, "cuda");
  ASSERT_TRUE(model);
  Backend& backend = model->backend();
  const int32_t max_blocks =
      static_cast<int32_t>(model->info().max_seq_len / backend.kv_geometry().block_size);
  Batch b;
  b.max_blocks_per_seq = max_blocks;
  std::vector<int32_t> blocks;
  for (int32_t s = 0; s < 3; ++s) {
    blocks.push_back(*model->kv_pool().allocate());
    std::vector<int32_t> row(max_blocks, -1);
    row[0] = blocks.back();
    b.block_tables.insert(b.block_tables.end(), row.begin(), row.end());
    b.tokens.push_back(100 + 7 * s);
    b.positions.push_back(0);
    b.token_seq.push_back(s);
    b.logit_rows.push_back(s);
  }
  for (int rep = 0; rep < 3; ++rep) {  // eager on first use of the bucket, graph replay after
    std::vector<float> logits(3 * backend.vocab_size());
    ASSERT_TRUE(backend.forward(b, logits.data()).ok());
    std::vector<int32_t> host(3), device(3, -1);
    argmax_rows(logits.data(), 3, backend.vocab_size(), host.data());
    ASSERT_TRUE(backend.forward_argmax(b, device.data()).ok());
    EXPECT_EQ(device, host) << "repetition " << rep;
  }
  for (int32_t block : blocks) model->kv_pool().free(block);
}

// Built on a GPU, a cuda engine records the kernel chosen (by timing) for every Linear shape and
// decode bucket; the parity tests above run such engines, so the chosen kernels are also checked.
TEST(CudaParity, BuildRecordsTimedTactics) {
  GPU_OR_SKIP();
  TempDir dir;
  BuildOptions options;
  options.model_path = shared_path("fixtures/hf-tiny/tiny-llama");
  options.output_path = dir.file("t.kiln");
  options.backend = "cuda";
  options.max_batch = 4;
  auto report = build_engine(options);
  ASSERT_TRUE(report.ok()) << report.error().message;
  auto engine = load_engine(options.output_path, LoadOptions{});
  ASSERT_TRUE(engine.ok());
  const auto& tactics = engine->metadata["tactics"];
  ASSERT_TRUE(tactics.is_object()) << report->tactics;
  // The cuBLASLt release that ordered the heuristic list the "algo" indices point into.
  ASSERT_TRUE(tactics.contains("cublaslt_version")) << report->tactics;
  EXPECT_GT(tactics["cublaslt_version"].get<uint64_t>(), 0u);
  // 4 Linear shapes (qkv, o, gate_up, down) + lm_head, each at rows 1, 2, 4 and the prefill step.
  EXPECT_EQ(tactics["linear"].size(), 5u * 4u);
  for (const auto& t : tactics["linear"]) {
    const std::string kernel = t["kernel"].get<std::string>();
    EXPECT_TRUE(kernel == "gemv" || kernel == "cublaslt") << t.dump();
    // The GEMV is timed wherever it applies (up to 8 rows, K a multiple of 8), and never chosen elsewhere.
    const bool gemv_applies = t["m"].get<int64_t>() <= 8 && t["k"].get<int64_t>() % 8 == 0;
    EXPECT_EQ(t["gemv_ms"].get<double>() > 0, gemv_applies) << t.dump();
    if (!gemv_applies) {
      EXPECT_EQ(kernel, "cublaslt") << t.dump();
    }
    EXPECT_GT(t["cublas_ms"].get<double>(), 0) << t.dump();
    EXPECT_GE(t["algo"].get<int>(), 0) << t.dump();
    EXPECT_LT(t["algo"].get<int>(), cuda::CublasGemm::kTunedCandidates) << t.dump();
  }
}

TEST(CudaParity, RefusesAnEngineBuiltForAnotherArchitecture) {
  GPU_OR_SKIP();
  TempDir dir;
  BuildOptions options;
  options.model_path = shared_path("models/stories260K/stories260K.bin");
  options.output_path = dir.file("other.kiln");
  options.backend = "cuda";
  options.device_arch = "sm_75";
  ASSERT_TRUE(build_engine(options).ok());
  auto model = Model::load(options.output_path, RuntimeOptions{});
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.error().message.find("engine built for sm_75, this GPU is sm_"), std::string::npos)
      << model.error().message;
}

}  // namespace
}  // namespace kiln
