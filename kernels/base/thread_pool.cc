#include "kernels/base/thread_pool.h"

#include <algorithm>

namespace ftx {
namespace {

// True on pool workers, and on a caller while it runs its own chunk.
thread_local bool in_parallel_region = false;

// Chunk `index` of `chunks` equal parts of [0, n).
void ChunkBounds(int64_t n, int chunks, int index, int64_t* begin,
                 int64_t* end) {
  *begin = n * index / chunks;
  *end = n * (index + 1) / chunks;
}

}  // namespace

ThreadPool::ThreadPool(int num_threads)
    : num_threads_(std::max(1, num_threads)) {
  for (int i = 1; i < num_threads_; ++i) {
    workers_.emplace_back([this, i] { WorkerLoop(i); });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  work_ready_.notify_all();
  for (std::thread& worker : workers_) worker.join();
}

void ThreadPool::WorkerLoop(int worker_index) {
  in_parallel_region = true;
  uint64_t seen_generation = 0;
  while (true) {
    const std::function<void(int64_t, int64_t)>* body;
    int64_t total;
    int chunks;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      work_ready_.wait(
          lock, [&] { return stopping_ || generation_ != seen_generation; });
      if (stopping_) return;
      seen_generation = generation_;
      body = body_;
      total = total_;
      chunks = active_chunks_;
    }
    if (worker_index < chunks) {
      int64_t begin, end;
      ChunkBounds(total, chunks, worker_index, &begin, &end);
      (*body)(begin, end);
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) work_done_.notify_one();
    }
  }
}

void ThreadPool::ParallelFor(int64_t n,
                             const std::function<void(int64_t, int64_t)>& body,
                             int64_t min_chunk) const {
  if (n <= 0) return;
  const int64_t max_chunks =
      std::max<int64_t>(1, n / std::max<int64_t>(1, min_chunk));
  const int chunks =
      static_cast<int>(std::min<int64_t>(num_threads_, max_chunks));
  if (chunks == 1 || in_parallel_region) {
    body(0, n);
    return;
  }
  std::lock_guard<std::mutex> run_lock(run_mutex_);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    body_ = &body;
    total_ = n;
    active_chunks_ = chunks;
    pending_ = chunks - 1;
    ++generation_;
  }
  work_ready_.notify_all();
  int64_t begin, end;
  ChunkBounds(n, chunks, 0, &begin, &end);
  in_parallel_region = true;
  body(begin, end);
  in_parallel_region = false;
  std::unique_lock<std::mutex> lock(mutex_);
  work_done_.wait(lock, [&] { return pending_ == 0; });
}

}  // namespace ftx
