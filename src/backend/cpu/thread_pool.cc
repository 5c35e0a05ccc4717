// ThreadPool: persistent workers, one job at a time, chunks claimed from a shared atomic word.
//
// Protocol for job g:
//   caller: fills the job fields, stores claim = {g, 0 claimed, num_chunks} (release), bumps
//           `generation` to wake workers, claims chunks itself, then waits until chunks_done ==
//           num_chunks.
//   worker: on a new generation, claims chunks by compare-exchange on `claim` while its job id is
//           the one it last loaded and chunks remain; runs each; bumps chunks_done (release).
// The caller waits for the *work*, not for every worker to check in: a worker that the OS has
// descheduled (another process on the core) costs nothing unless it already holds a chunk, and
// on a busy 2-core machine that was the difference between 1.3k and 8k tok/s for a tiny model.
// No ABA: a worker reads the job fields only after a successful claim of job g, and the caller
// rewrites them only after every chunk of g (including that one) reported done. The 32-bit job
// id in `claim` makes a claim attempt that raced with a newer job fail instead of taking its chunk.
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

  // The current job; written by the caller before `claim` is published (release), read by a
  // thread only after it claimed a chunk of that job (acquire).
  Trampoline trampoline = nullptr;
  void* body = nullptr;
  int64_t n = 0;
  int64_t chunk = 1;

  // claim = job id (bits 32..63) | chunks claimed (bits 16..31) | number of chunks (bits 0..15).
  std::atomic<uint64_t> claim{0};
  std::atomic<int64_t> chunks_done{0};
  uint32_t job_id = 0;  // caller only

  std::atomic<uint64_t> generation{0};
  std::atomic<bool> stop{false};

  std::mutex sleep_mutex;
  std::condition_variable wake;
  std::atomic<int> sleepers{0};

  std::mutex dispatch_mutex;  // serializes concurrent callers

  static constexpr uint64_t kMaxChunks = 0xFFFF;

  // Claims and runs chunks of the job published in `claim` until none are left or a newer job
  // replaced it.
  void run_chunks() {
    uint64_t word = claim.load(std::memory_order_acquire);
    for (;;) {
      const uint64_t claimed = (word >> 16) & 0xFFFF, total = word & 0xFFFF;
      if (claimed >= total) return;
      if (!claim.compare_exchange_weak(word, word + (uint64_t{1} << 16), std::memory_order_acquire,
                                       std::memory_order_acquire)) {
        continue;  // `word` now holds the current value: another claim, or a newer job
      }
      const int64_t begin = static_cast<int64_t>(claimed) * chunk;
      trampoline(body, begin, std::min(n, begin + chunk));
      chunks_done.fetch_add(1, std::memory_order_release);
      word += uint64_t{1} << 16;  // expected value of our next claim
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

  const int64_t num_chunks = (n + chunk - 1) / chunk;
  if (num_chunks > static_cast<int64_t>(State::kMaxChunks)) {  // far beyond 4 chunks per thread
    trampoline(body, 0, n);
    return;
  }

  s.trampoline = trampoline;
  s.body = body;
  s.n = n;
  s.chunk = chunk;
  s.chunks_done.store(0, std::memory_order_relaxed);
  ++s.job_id;
  s.claim.store((uint64_t{s.job_id} << 32) | static_cast<uint64_t>(num_chunks), std::memory_order_release);
  s.publish();

  t_inside_job = true;
  s.run_chunks();
  t_inside_job = false;

  for (int i = 0; s.chunks_done.load(std::memory_order_acquire) != num_chunks; ++i) {
    if (i < kSpinIterations) {
      cpu_relax();
    } else {
      std::this_thread::yield();  // a worker holding a chunk may be descheduled; give it our core
    }
  }
}

}  // namespace kiln::cpu
