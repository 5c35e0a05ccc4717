// End-to-end parity of the CPU backend against independent references:
//   - llama2.c run.c's greedy ids for stories260K (shared/models/stories260K/EXPECTED.json),
//   - our float64 numpy reference of the same checkpoint (tests/golden/stories260K_ref.json),
//   - transformers' float64 outputs for HF models (shared/fixtures/hf-tiny, tests/fixtures/hf).
#include "parity_checks.h"

namespace kiln {
namespace {

using namespace kiln::testing;

TEST(Parity, Stories260KMatchesLlama2cRunC) {
  TempDir dir;
  auto model = build_and_load(dir, shared_path("models/stories260K/stories260K.bin"), "fp32");
  ASSERT_TRUE(model);
  const auto expected = read_json(shared_path("models/stories260K/EXPECTED.json"));
  const auto from_bos = greedy(*model, expected["prompt_ids"].get<std::vector<int32_t>>(), 128);
  EXPECT_EQ(from_bos.ids, expected["greedy_ids_128"].get<std::vector<int32_t>>());
  const auto& text_case = expected["prompt_case"];
  // run.c's -n counts prompt positions too: 128 steps from a 5-token prompt generate 124 tokens.
  const auto from_text = greedy(*model, text_case["prompt_ids"].get<std::vector<int32_t>>(),
                                static_cast<int>(text_case["greedy_ids_128"].size()));
  EXPECT_EQ(from_text.ids, text_case["greedy_ids_128"].get<std::vector<int32_t>>());
}

class Stories260KReference : public ::testing::TestWithParam<std::string> {};

TEST_P(Stories260KReference, MatchesFloat64ReferenceForEveryPrompt) { check_stories_reference(GetParam(), "cpu"); }

INSTANTIATE_TEST_SUITE_P(Dtypes, Stories260KReference, ::testing::Values("fp32", "fp16", "bf16"));

class HfParity : public ::testing::TestWithParam<HfCase> {};

TEST_P(HfParity, MatchesTransformersFloat64) { check_hf_golden(GetParam(), "cpu"); }

INSTANTIATE_TEST_SUITE_P(Fixtures, HfParity, ::testing::ValuesIn(hf_cases({"fp32", "fp16", "bf16"})), hf_case_name);

}  // namespace
}  // namespace kiln
