// A fixed pool of worker threads for data-parallel kernels. parallel_for splits [0, n) into
// contiguous chunks, runs them on the workers and the calling thread, and returns when all are done.
// No allocation per call (the body is passed by reference, not as std::function).
//
// Dispatch is spin-then-sleep: after a job, workers spin for a few tens of microseconds waiting for
// the next one (a decode step issues hundreds of kernels back to back), then sleep on a condition
// variable so an idle server burns no CPU. parallel_for is safe to call from several threads (calls
// are serialized) and from inside a body (the nested call runs inline on the calling thread).
#pragma once

#include <cstdint>
#include <type_traits>

namespace kiln::cpu {

class ThreadPool {
 public:
  explicit ThreadPool(int num_threads);  // total threads including the caller; >= 1
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const;

  // body(begin, end) over chunks of [0, n); chunks never smaller than min_chunk (except the last).
  template <class F>
  void parallel_for(int64_t n, int64_t min_chunk, F&& body) {
    run(n, min_chunk, &invoke<F>, &body);
  }

 private:
  using Trampoline = void (*)(void* body, int64_t begin, int64_t end);
  template <class F>
  static void invoke(void* body, int64_t begin, int64_t end) {
    (*static_cast<std::remove_reference_t<F>*>(body))(begin, end);
  }
  void run(int64_t n, int64_t min_chunk, Trampoline trampoline, void* body);

  struct State;
  State* state_;
};

}  // namespace kiln::cpu
