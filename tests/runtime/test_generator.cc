// Generation loop: stop strings (text cut before them, also when split across tokens), streaming
// (the pieces concatenate to the final text and never hold a stop string), max tokens, the end of
// the context, and seeded sampling.
#include "runtime/generator.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::build_and_load;
using testing::shared_path;
using testing::TempDir;

class Generator : public ::testing::Test {
 protected:
  void SetUp() override {
    BuildOptions options;
    options.model_path = shared_path("models/stories260K/stories260K.bin");
    options.tokenizer_path = shared_path("models/stories260K/tok512.bin");
    options.output_path = dir_.file("s.kiln");
    options.max_seq_len = 64;
    ASSERT_TRUE(build_engine(options).ok());
    RuntimeOptions runtime;
    runtime.backend_options.num_threads = 1;
    auto model = Model::load(options.output_path, runtime);
    ASSERT_TRUE(model.ok()) << model.error().message;
    model_ = std::move(model).value();
  }
  GenerationRequest greedy(int n) {
    GenerationRequest r;
    r.prompt_ids = model_->tokenizer()->encode("Once upon a time", true);
    r.max_new_tokens = n;
    r.sampling.temperature = 0.0f;
    return r;
  }
  TempDir dir_;
  std::unique_ptr<Model> model_;
};

TEST_F(Generator, StopStringCutsTheTextAndStreamingAgrees) {
  // Greedy text: ", there was a little girl named Lily. She loved to play outside..."
  for (const std::string stop : {"Lily", "girl named", ".", "play outside"}) {
    GenerationRequest r = greedy(40);
    r.stop_strings = {"never appears", stop};
    std::string streamed;
    auto result = generate(*model_, r, [&](std::string_view piece) { streamed += piece; });
    ASSERT_TRUE(result.ok()) << result.error().message;
    EXPECT_EQ(result->finish_reason, "stop") << stop;
    EXPECT_EQ(result->text.find(stop), std::string::npos) << stop;
    EXPECT_EQ(streamed, result->text) << stop;
    const auto full = generate(*model_, greedy(40));
    ASSERT_TRUE(full.ok());
    EXPECT_EQ(full->text.rfind(result->text + stop, 0), 0u) << "text must end right before '" << stop << "'";
  }
}

TEST_F(Generator, MaxTokensAndContextEnd) {
  auto result = generate(*model_, greedy(5));
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->ids.size(), 5u);
  EXPECT_EQ(result->finish_reason, "length");
  // 5 prompt tokens in a 64-token context: at most 59 new positions exist.
  GenerationRequest long_request = greedy(1000);
  long_request.ignore_eos = true;
  result = generate(*model_, long_request);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->finish_reason, "context");
  EXPECT_EQ(result->ids.size() + long_request.prompt_ids.size(), 64u);
  EXPECT_EQ(model_->kv_pool().num_free(), model_->kv_pool().num_blocks());  // blocks returned
}

TEST_F(Generator, SeededSamplingIsReproducible) {
  GenerationRequest r = greedy(30);
  r.sampling = SamplingParams{.temperature = 1.0f, .top_k = 40, .top_p = 0.9f, .seed = 123};
  auto a = generate(*model_, r), b = generate(*model_, r);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->ids, b->ids);
  r.sampling.seed = 124;
  auto c = generate(*model_, r);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(a->ids, c->ids);
}

// Without a repetition penalty the backend draws each token (forward_sample); asking for the last
// prompt logits makes generate() draw the first token on the host (Sampler::sample) instead. Both
// follow sample_row on the same stream, so the ids agree, and so do the later tokens: the two paths
// consume one uniform per token alike.
TEST_F(Generator, BackendSamplingEqualsHostSampling) {
  for (const SamplingParams& p :
       {SamplingParams{.temperature = 1.0f, .top_p = 0.9f, .seed = 5},
        SamplingParams{.temperature = 1.5f, .top_k = 50, .min_p = 0.02f, .seed = 6}}) {
    GenerationRequest r = greedy(20);
    r.sampling = p;
    auto on_backend = generate(*model_, r);
    r.want_last_logits = true;
    auto first_on_host = generate(*model_, r);
    ASSERT_TRUE(on_backend.ok() && first_on_host.ok());
    EXPECT_EQ(on_backend->ids, first_on_host->ids);
    EXPECT_EQ(first_on_host->last_logits.size(), static_cast<size_t>(model_->info().vocab_size));
  }
}

}  // namespace
}  // namespace kiln
