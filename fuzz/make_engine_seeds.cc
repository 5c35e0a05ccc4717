// Writes a few small, valid engines into a directory: the seed corpus for fuzz_engine.
//   make_engine_seeds <out_dir>
#include <cstdio>
#include <string>
#include <vector>

#include "engine/engine_file.h"

namespace {

struct Seed {
  const char* file;
  kiln::EngineWriteSpec spec;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <out_dir>\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  const std::vector<float> weights = {1.0f, -2.0f, 0.5f, 3.25f, 0.0f, -0.125f};
  const std::vector<uint16_t> halves = {0x3c00, 0xc000, 0x3800};
  const std::vector<int32_t> ids = {1, 2, 3, 4};

  std::vector<Seed> seeds;
  seeds.push_back({"empty.engine", {"cpu", "x86_64", nlohmann::json::object(), {}}});
  seeds.push_back(
      {"one_tensor.engine",
       {"cpu", "x86_64-avx2", {{"model", "seed"}}, {{"w", kiln::DType::F32, {2, 3}, weights.data(), 24}}}});
  seeds.push_back({"graph.engine",
                   {"cuda",
                    "sm_90",
                    {{"config", {{"dim", 3}, {"n_layers", 1}}},
                     {"graph", {{"nodes", {{{"op", "matmul"}, {"inputs", {"x", "w"}}, {"output", "y"}}}}}}},
                    {{"w", kiln::DType::F32, {3, 2}, weights.data(), 24},
                     {"scale", kiln::DType::F16, {3}, halves.data(), 6},
                     {"empty", kiln::DType::BF16, {0, 4}, nullptr, 0},
                     {"ids", kiln::DType::I32, {4}, ids.data(), 16}}}});

  for (const Seed& seed : seeds) {
    const kiln::Status status = kiln::write_engine(dir + "/" + seed.file, seed.spec);
    if (!status.ok()) {
      std::fprintf(stderr, "%s\n", status.error().message.c_str());
      return 1;
    }
  }
  return 0;
}
