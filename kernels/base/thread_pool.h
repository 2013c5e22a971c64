// A small fixed-size thread pool for data-parallel loops (Highway 1.0.3 has
// none).
//
// ParallelFor splits [0, n) into contiguous chunks, one per thread; the calling
// thread runs the first chunk. Calls from inside a ParallelFor body run inline,
// so nested loops never deadlock.
//
// Example:
//   pool.ParallelFor(rows, [&](int64_t begin, int64_t end) { ... });
#ifndef FTX_KERNELS_BASE_THREAD_POOL_H_
#define FTX_KERNELS_BASE_THREAD_POOL_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace ftx {

class ThreadPool {
 public:
  // num_threads counts the caller: 1 means no worker threads.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Runs body(begin, end) over disjoint chunks covering [0, n). Chunks hold at
  // least `min_chunk` items, so tiny loops stay on one thread.
  void ParallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& body,
                   int64_t min_chunk = 1) const;

 private:
  void WorkerLoop(int worker_index);

  const int num_threads_;
  std::vector<std::thread> workers_;
  mutable std::mutex mutex_;
  mutable std::condition_variable work_ready_;
  mutable std::condition_variable work_done_;
  mutable std::mutex run_mutex_;  // one ParallelFor at a time
  mutable const std::function<void(int64_t, int64_t)>* body_ = nullptr;
  mutable int64_t total_ = 0;
  mutable int active_chunks_ = 0;
  mutable int pending_ = 0;
  mutable uint64_t generation_ = 0;
  bool stopping_ = false;
};

}  // namespace ftx

#endif  // FTX_KERNELS_BASE_THREAD_POOL_H_
