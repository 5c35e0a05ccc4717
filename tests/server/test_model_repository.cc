// kiln serve --model-repo: DIR/<model>/<version>/model.kiln, every model's highest version served at
// start; load (a version, or the highest), reload and unload over the API; a request running on a
// model that is unloaded finishes on it while new ones get 404.
#include <filesystem>

#include "server/model_repository.h"
#include "server_test_util.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::TempDir;

class ModelRepositoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string engine = testing::build_stories260k(dir_, 512);
    for (const char* version : {"a/1", "a/3", "b/2"}) {
      fs::create_directories(fs::path(dir_.path()) / "repo" / version);
      fs::copy_file(engine, fs::path(dir_.path()) / "repo" / version / "model.kiln");
    }
    fs::create_directories(fs::path(dir_.path()) / "repo" / "a" / "notes");  // not a version
    fs::create_directories(fs::path(dir_.path()) / "repo" / "a" / "4");      // a version without an engine
    fs::create_directories(fs::path(dir_.path()) / "repo" / "empty");        // a model without versions
    repository_ = std::make_unique<ModelRepository>(dir_.file("repo"), registry_,
                                                    testing::single_thread_runtime(), WorkerOptions{});
    ASSERT_TRUE(repository_->load_all().ok());
    ServerOptions options;
    options.host = "127.0.0.1";
    options.port = 0;
    server_ = std::make_unique<HttpServer>(registry_, options, repository_.get());
    const Result<int> port = server_->bind();
    ASSERT_TRUE(port.ok());
    port_ = *port;
    client_ = std::make_unique<httplib::Client>("127.0.0.1", port_);
    client_->set_read_timeout(60, 0);
    thread_ = std::thread([this] { server_->serve(); });
  }
  void TearDown() override {
    server_->shutdown(std::chrono::milliseconds(0));
    thread_.join();
    registry_.stop_all();
  }

  int complete(const std::string& model) {
    auto res = client_->Post("/v1/completions",
                             json({{"model", model}, {"prompt", "Once"}, {"max_tokens", 3}}).dump(),
                             "application/json");
    return res ? res->status : -1;
  }
  json get(const std::string& path) {
    auto res = client_->Get(path);
    EXPECT_TRUE(res && res->status == 200);
    return res ? json::parse(res->body) : json();
  }
  int post(const std::string& path, const std::string& body = "") {
    auto res = client_->Post(path, body, "application/json");
    return res ? res->status : -1;
  }

  TempDir dir_;
  ModelRegistry registry_;
  std::unique_ptr<ModelRepository> repository_;
  std::unique_ptr<HttpServer> server_;
  std::unique_ptr<httplib::Client> client_;
  std::thread thread_;
  int port_ = -1;
};

TEST_F(ModelRepositoryTest, ServesTheHighestVersionOfEveryModel) {
  const json models = get("/v1/models");
  ASSERT_EQ(models["data"].size(), 2u);
  EXPECT_EQ(models["data"][0]["id"], "a");
  EXPECT_EQ(models["data"][1]["id"], "b");
  const json index = get("/v1/repository/index")["data"];
  ASSERT_EQ(index.size(), 2u) << index.dump();
  EXPECT_EQ(index[0], json({{"name", "a"},
                            {"versions", {1, 3}},
                            {"loaded_version", 3},
                            {"pinned_versions", json::array()},
                            {"state", "READY"}}));
  EXPECT_EQ(index[1], json({{"name", "b"},
                            {"versions", {2}},
                            {"loaded_version", 2},
                            {"pinned_versions", json::array()},
                            {"state", "READY"}}));
  EXPECT_EQ(complete("a"), 200);
  EXPECT_EQ(complete("b"), 200);
  EXPECT_EQ(complete(""), 400) << "several models: 'model' is required";
}

TEST_F(ModelRepositoryTest, LoadAndUnloadOverTheApi) {
  EXPECT_EQ(post("/v1/repository/models/b/unload"), 200);
  EXPECT_EQ(complete("b"), 404);
  EXPECT_EQ(get("/v1/repository/index")["data"][1]["state"], "UNAVAILABLE");
  EXPECT_EQ(post("/v1/repository/models/b/unload"), 404) << "not loaded";
  EXPECT_EQ(post("/v1/repository/models/b/load"), 200);
  EXPECT_EQ(complete("b"), 200);

  EXPECT_EQ(post("/v1/repository/models/a/load", R"({"version": 1})"), 200);
  EXPECT_EQ(get("/v1/repository/index")["data"][0]["loaded_version"], 1);
  EXPECT_EQ(complete("a"), 200);
  EXPECT_EQ(post("/v1/repository/models/a/load", R"({"version": 4})"), 404) << "version 4 has no engine";
  EXPECT_EQ(post("/v1/repository/models/a/load", R"({"version": "1"})"), 400);
  EXPECT_EQ(post("/v1/repository/models/nope/load"), 404);
  EXPECT_EQ(post("/v1/repository/models/empty/load"), 404);
  EXPECT_EQ(get("/v1/repository/index")["data"][0]["loaded_version"], 1) << "failed loads change nothing";
}

// "model@version" selects a version loaded beside the default one.
TEST_F(ModelRepositoryTest, ModelAtVersionServesAPinnedVersionBesideTheDefault) {
  EXPECT_EQ(complete("a@1"), 404) << "not loaded yet";
  EXPECT_EQ(post("/v1/repository/models/a@1/load"), 200);
  EXPECT_EQ(complete("a@1"), 200);
  EXPECT_EQ(complete("a"), 200) << "the default version keeps serving";
  const json a = get("/v1/repository/index")["data"][0];
  EXPECT_EQ(a["loaded_version"], 3);
  EXPECT_EQ(a["pinned_versions"], json({1}));
  const json models = get("/v1/models")["data"];
  ASSERT_EQ(models.size(), 3u);
  EXPECT_EQ(models[1]["id"], "a@1");
  EXPECT_EQ(post("/v1/repository/models/a@1/load", R"({"version": 3})"), 400) << "two versions named";
  EXPECT_EQ(post("/v1/repository/models/a@x/load"), 400);
  EXPECT_EQ(post("/v1/repository/models/a@4/load"), 404) << "version 4 has no engine";
  EXPECT_EQ(post("/v1/repository/models/a@1/unload"), 200);
  EXPECT_EQ(complete("a@1"), 404);
  EXPECT_EQ(complete("a"), 200);
}

TEST_F(ModelRepositoryTest, UnloadingLetsRunningRequestsFinish) {
  json events;
  std::thread running([&] {
    httplib::Client client("127.0.0.1", port_);
    client.set_read_timeout(60, 0);
    auto res = client.Post(
        "/v1/completions",
        json(
            {{"model", "a"}, {"prompt", "Once"}, {"max_tokens", 400}, {"ignore_eos", true}, {"stream", true}})
            .dump(),
        "application/json");
    if (res && res->status == 200) events = json(testing::parse_sse(res->body));
  });
  std::shared_ptr<EngineWorker> a = registry_.find("a");
  while (a->active_requests() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(post("/v1/repository/models/a/unload"), 200);
  a.reset();  // the running request alone keeps the worker now
  EXPECT_EQ(complete("a"), 404);
  running.join();
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.back(), "[DONE]");
  EXPECT_EQ(events[events.size() - 2]["choices"][0]["finish_reason"], "length");
}

}  // namespace
}  // namespace kiln
