#include "backend/cpu/thread_pool.h"

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace kiln::cpu {
namespace {

TEST(ThreadPool, NumThreadsIsAtLeastOne) {
  EXPECT_EQ(ThreadPool(0).num_threads(), 1);
  EXPECT_EQ(ThreadPool(1).num_threads(), 1);
  EXPECT_EQ(ThreadPool(3).num_threads(), 3);
}

TEST(ThreadPool, CoversEveryIndexExactlyOnceWithValidChunks) {
  for (int threads : {1, 2, 3, 4}) {
    ThreadPool pool(threads);
    for (int64_t n : {1, 2, 7, 12, 13, 100, 1000, 4097}) {
      for (int64_t min_chunk : {1, 3, 16, 5000}) {
        std::vector<std::atomic<int>> hits(n);
        std::mutex mu;
        std::vector<std::pair<int64_t, int64_t>> chunks;
        pool.parallel_for(n, min_chunk, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) hits[i].fetch_add(1);
          std::lock_guard<std::mutex> lock(mu);
          chunks.emplace_back(begin, end);
        });
        for (int64_t i = 0; i < n; ++i) {
          ASSERT_EQ(hits[i].load(), 1) << "n=" << n << " i=" << i;
        }
        for (auto [begin, end] : chunks) {
          ASSERT_LT(begin, end);
          if (end != n) {
            EXPECT_GE(end - begin, min_chunk) << "only the last chunk may be short";
          }
        }
      }
    }
  }
}

TEST(ThreadPool, ZeroOrNegativeRangeNeverCallsBody) {
  ThreadPool pool(2);
  int calls = 0;
  pool.parallel_for(0, 1, [&](int64_t, int64_t) { ++calls; });
  pool.parallel_for(-5, 1, [&](int64_t, int64_t) { ++calls; });
  EXPECT_EQ(calls, 0);
}

TEST(ThreadPool, RangeWithinOneChunkRunsInlineOnCaller) {
  ThreadPool pool(3);
  const auto caller = std::this_thread::get_id();
  std::thread::id ran_on;
  int calls = 0;
  pool.parallel_for(10, 16, [&](int64_t begin, int64_t end) {
    ran_on = std::this_thread::get_id();
    ++calls;
    EXPECT_EQ(begin, 0);
    EXPECT_EQ(end, 10);
  });
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(ran_on, caller);
}

TEST(ThreadPool, UsesWorkerThreadsForLargeRanges) {
  ThreadPool pool(2);
  const auto caller = std::this_thread::get_id();
  std::atomic<bool> saw_worker{false};
  // Each chunk sleeps, so the caller cannot take them all before the worker wakes.
  for (int attempt = 0; attempt < 20 && !saw_worker; ++attempt) {
    pool.parallel_for(64, 1, [&](int64_t, int64_t) {
      if (std::this_thread::get_id() != caller) saw_worker = true;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    });
  }
  EXPECT_TRUE(saw_worker.load());
}

TEST(ThreadPool, ThousandsOfRapidCallsAllComplete) {
  for (int threads : {1, 2, 4}) {
    ThreadPool pool(threads);
    std::vector<int64_t> data(257, 0);
    for (int iter = 0; iter < 5000; ++iter) {
      pool.parallel_for(static_cast<int64_t>(data.size()), 8, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) data[i] += i;
      });
    }
    for (size_t i = 0; i < data.size(); ++i) ASSERT_EQ(data[i], 5000 * static_cast<int64_t>(i));
  }
}

TEST(ThreadPool, WakesWorkersThatFellAsleep) {
  ThreadPool pool(3);
  std::atomic<int64_t> sum{0};
  for (int iter = 0; iter < 5; ++iter) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // longer than the spin phase
    pool.parallel_for(1000, 10, [&](int64_t begin, int64_t end) {
      int64_t local = 0;
      for (int64_t i = begin; i < end; ++i) local += i;
      sum += local;
    });
  }
  EXPECT_EQ(sum.load(), 5 * (999 * 1000 / 2));
}

TEST(ThreadPool, NestedParallelForRunsInline) {
  ThreadPool pool(2);
  std::atomic<int64_t> total{0};
  pool.parallel_for(8, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      pool.parallel_for(100, 1, [&](int64_t b, int64_t e) { total += e - b; });
    }
  });
  EXPECT_EQ(total.load(), 800);
}

TEST(ThreadPool, ConcurrentCallersAreSerializedCorrectly) {
  ThreadPool pool(2);
  std::atomic<int64_t> a{0}, b{0};
  auto caller = [&](std::atomic<int64_t>& counter) {
    for (int iter = 0; iter < 500; ++iter) {
      pool.parallel_for(100, 4, [&](int64_t begin, int64_t end) { counter += end - begin; });
    }
  };
  std::thread t1(caller, std::ref(a)), t2(caller, std::ref(b));
  t1.join();
  t2.join();
  EXPECT_EQ(a.load(), 500 * 100);
  EXPECT_EQ(b.load(), 500 * 100);
}

TEST(ThreadPool, RepeatedConstructionRunAndShutdown) {
  // Shuts down right after a job, while workers are still spinning or just finishing.
  for (int i = 0; i < 200; ++i) {
    ThreadPool pool(1 + i % 4);
    std::atomic<int64_t> count{0};
    pool.parallel_for(64, 1, [&](int64_t begin, int64_t end) { count += end - begin; });
    ASSERT_EQ(count.load(), 64);
  }
}

}  // namespace
}  // namespace kiln::cpu
