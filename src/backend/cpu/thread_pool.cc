// ThreadPool: persistent workers, one job at a time, chunks claimed from a shared atomic counter.
//
// Protocol for job g (generation counter `generation`):
//   caller: fills the job fields, sets workers_pending = #workers, bumps generation to g, wakes
//           sleepers, claims chunks itself, then waits until workers_pending == 0.
//   worker: sees generation g, claims chunks until none are left, decrements workers_pending.
// Every worker acknowledges every job before the next one is published, so a slow worker can never
// mistake job g+1's fields for job g's (no ABA), and the job fields need no further synchronization.
#include "backend/cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace kiln::cpu {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// ~2^11 pause instructions is roughly 20-100 us depending on the core: long enough to bridge the
// gap between consecutive kernels of one forward pass, short enough not to matter when idle.
constexpr int kSpinIterations = 1 << 11;

// Set on pool threads and on a caller while it runs a job: a nested parallel_for runs inline.
thread_local bool t_inside_job = false;

}  // namespace

struct ThreadPool::State {
  int num_threads = 1;
  std::vector<std::thread> workers;

  // The current job; written by the caller before `generation` is bumped (release), read by
  // workers after they observe the bump (acquire).
  Trampoline trampoline = nullptr;
  void* body = nullptr;
  int64_t n = 0;
  int64_t chunk = 1;
  std::atomic<int64_t> next_begin{0};
  std::atomic<int> workers_pending{0};

  std::atomic<uint64_t> generation{0};
  std::atomic<bool> stop{false};

  std::mutex sleep_mutex;
  std::condition_variable wake;
  std::atomic<int> sleepers{0};

  std::mutex dispatch_mutex;  // serializes concurrent callers

  void run_chunks() {
    for (;;) {
      const int64_t begin = next_begin.fetch_add(chunk, std::memory_order_relaxed);
      if (begin >= n) return;
      trampoline(body, begin, std::min(n, begin + chunk));
    }
  }

  void worker_loop() {
    t_inside_job = true;
    uint64_t seen = 0;
    for (;;) {
      uint64_t g = generation.load(std::memory_order_acquire);
      for (int i = 0; g == seen && i < kSpinIterations; ++i) {
        cpu_relax();
        g = generation.load(std::memory_order_acquire);
      }
      if (g == seen) {
        std::unique_lock<std::mutex> lock(sleep_mutex);
        // seq_cst increment, then seq_cst re-check: pairs with the caller's seq_cst bump followed by
        // its seq_cst read of `sleepers`, so either we see the new job or the caller sees us asleep.
        sleepers.fetch_add(1);
        wake.wait(lock, [&] { return generation.load() != seen; });
        sleepers.fetch_sub(1);
        g = generation.load(std::memory_order_acquire);
      }
      seen = g;
      if (stop.load(std::memory_order_acquire)) return;
      run_chunks();
      workers_pending.fetch_sub(1, std::memory_order_release);
    }
  }

  void publish() {
    generation.fetch_add(1);  // seq_cst, see worker_loop
    if (sleepers.load() > 0) {
      // Taking the mutex orders us after any worker that is between its check and its wait.
      { std::lock_guard<std::mutex> lock(sleep_mutex); }
      wake.notify_all();
    }
  }
};

ThreadPool::ThreadPool(int num_threads) : state_(new State) {
  state_->num_threads = std::max(1, num_threads);
  state_->workers.reserve(state_->num_threads - 1);
  for (int i = 1; i < state_->num_threads; ++i) {
    state_->workers.emplace_back([s = state_] { s->worker_loop(); });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> dispatch(state_->dispatch_mutex);
    state_->stop.store(true, std::memory_order_release);
    state_->publish();
  }
  for (auto& t : state_->workers) t.join();
  delete state_;
}

int ThreadPool::num_threads() const { return state_->num_threads; }

void ThreadPool::run(int64_t n, int64_t min_chunk, Trampoline trampoline, void* body) {
  if (n <= 0) return;
  min_chunk = std::max<int64_t>(1, min_chunk);
  State& s = *state_;
  if (s.num_threads == 1 || n <= min_chunk || t_inside_job) {
    trampoline(body, 0, n);
    return;
  }
  std::lock_guard<std::mutex> dispatch(s.dispatch_mutex);

  // About 4 chunks per thread balances uneven progress (a descheduled worker on a busy machine)
  // against the cost of claiming a chunk. Rounding to a multiple of min_chunk keeps chunk starts
  // aligned to the caller's blocking (e.g. matmul's row tiles).
  const int64_t target = (n + 4 * s.num_threads - 1) / (4 * s.num_threads);
  const int64_t chunk = (std::max(min_chunk, target) + min_chunk - 1) / min_chunk * min_chunk;

  s.trampoline = trampoline;
  s.body = body;
  s.n = n;
  s.chunk = chunk;
  s.next_begin.store(0, std::memory_order_relaxed);
  s.workers_pending.store(static_cast<int>(s.workers.size()), std::memory_order_relaxed);
  s.publish();

  t_inside_job = true;
  s.run_chunks();
  t_inside_job = false;

  for (int i = 0; s.workers_pending.load(std::memory_order_acquire) != 0; ++i) {
    if (i < kSpinIterations) {
      cpu_relax();
    } else {
      std::this_thread::yield();  // a worker may be descheduled; give it our core
    }
  }
}

}  // namespace kiln::cpu
