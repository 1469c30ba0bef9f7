// Row groups multiplied by the weight matrix their group names, read in place (no copies of the weights).
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <pthread.h>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace omni {

// Set on a thread when it runs a task this header scheduled on XLA's pool: it is one of the pool's threads.
inline bool& ran_pool_task() {
  thread_local bool ran = false;
  return ran;
}

// True on XLA's intra-op threads (named tf_XLAEigen by jax 0.10; a thread that ran one of our pool tasks counts
// too, should a later XLA name them otherwise), false on the threads that launch programs.
inline bool on_intra_op_thread() {
  thread_local int named = -1;
  if (named < 0) {
    char name[32] = {0};
    pthread_getname_np(pthread_self(), name, sizeof name);
    named = std::strncmp(name, "tf_XLAEigen", 11) == 0;
  }
  return named == 1 || ran_pool_task();
}

// body(i) for every i in [0, n), shared by the calling thread and XLA's intra-op threads (the pool that runs the
// program's other ops: no second thread team competes with it for the cores). Items are claimed one at a time;
// returns when every claimed item is done. A helper the pool starts after the work is over touches nothing.
template <typename F>
void parallel_for(xla::ffi::ThreadPool& pool, long n, const F& body) {
  if (n <= 0) return;
  struct State {
    std::atomic<long> next{0};
    std::atomic<int> active{0};
    std::atomic<bool> closed{false};
  };
  auto state = std::make_shared<State>();
  const F* shared_body = &body;
  const long helpers = std::min<long>(n - 1, std::max<long>(pool.num_threads() - 1, 1));
  for (long h = 0; h < helpers; ++h)
    pool.Schedule([state, n, shared_body]() {
      ran_pool_task() = true;
      state->active.fetch_add(1);
      if (!state->closed.load())
        for (long i; (i = state->next.fetch_add(1)) < n;) (*shared_body)(i);
      state->active.fetch_sub(1);
    });
  for (long i; (i = state->next.fetch_add(1)) < n;) body(i);
  state->closed.store(true);
  while (state->active.load() != 0) std::this_thread::yield();
}

// Calls that read at least this many bytes of weights run on an intra-op thread (run_on_intra_op_thread): the
// hand-off costs ~0.3 ms (the sleeping caller's wake-up), which smaller calls do not win back (16 MB: the code
// predictor's q/k/v and gate/up handed off, 150 calls a frame, made a frame 170-180 -> 224 ms).
constexpr long kHandOffBytes = 64l << 20;

// body() on one of XLA's intra-op threads, where it can share its loops with the pool's other thread at once.
// XLA runs chains of ops inline on the thread that launched the program; a kernel called there and working
// beside the pool often ran at one core's speed (the one-layer decode step's MoE 6.5-8.9 ms instead of 4.9 ms:
// step medians 8.4-9.6 ms with a tail to 14 ms; handed off 7.9-8.6 ms, 90 % under 9-11 ms). So when `large`
// and called elsewhere, the call is handed to the pool and the caller sleeps until it is done. Should the pool
// not start it within 100 ms (no thread to lend: never seen), the caller runs it, so the call always finishes.
template <typename F>
void run_on_intra_op_thread(xla::ffi::ThreadPool& pool, bool large, const F& body) {
  if (!large || pool.num_threads() < 2 || on_intra_op_thread()) {
    body();
    return;
  }
  struct State {
    std::atomic<bool> claimed{false}, done{false};
    std::mutex m;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  const F* shared_body = &body;
  pool.Schedule([state, shared_body]() {
    ran_pool_task() = true;
    if (state->claimed.exchange(true)) return;
    (*shared_body)();
    std::lock_guard<std::mutex> lock(state->m);
    state->done.store(true);
    state->cv.notify_all();
  });
  std::unique_lock<std::mutex> lock(state->m);
  const auto done = [&] { return state->done.load(); };
  if (state->cv.wait_for(lock, std::chrono::milliseconds(100), done)) return;
  if (!state->claimed.exchange(true)) {
    lock.unlock();
    body();
    return;
  }
  state->cv.wait(lock, done);
}

// (matrix index, slot) pairs sorted by matrix: slot s reads input row s / in_div and writes output row s
using Pairs = std::vector<std::pair<long, long>>;

// A run of `sorted` pairs with one matrix.
struct Group { long expert; long first, count; };

std::vector<Group> make_groups(const Pairs& sorted);

// out[slot] = in[slot / in_div] @ W[matrix of slot] for every (matrix, slot) in `sorted`; W holds the matrices
// [num_matrices, K, N] row-major. Both cores share the work; results do not depend on the thread count.
void grouped_matmul(xla::ffi::ThreadPool& pool, const Pairs& sorted, const std::vector<Group>& groups,
                    const float* in, long in_div, long in_stride, const float* W, long K, long N, float* out,
                    long out_stride);

// One weight of a `stream_matmuls` call: out [M, n] = in [M, K] @ w [K, n], both row-major.
struct Matrix { const float* w; long n; float* out; };

// out = in @ w for every matrix of `mats` (they share K and the M <= 8 input rows): the row pieces of all the
// matrices are the work items of one parallel loop, so both cores stream them back to back with no barrier in
// between. Each output equals what `grouped_matmul` gives for that matrix alone (the same sums in the same order).
void stream_matmuls(xla::ffi::ThreadPool& pool, const float* in, long M, long K, const std::vector<Matrix>& mats);

// the most input rows `stream_matmuls` takes
long stream_rows();

}  // namespace omni
