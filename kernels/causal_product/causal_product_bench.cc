// Benchmark of kernels/causal_product on the CPU: N = 1, H = 8, E = D = 64 and
// L in {1024, 4096, 8192}, forward and backward, on one thread and on all
// hardware threads. GFLOP/s counts 4 * L * E * D flops per (n, h) for the
// forward (two multiply-adds per state element and step) and three times that
// for the backward (three sweeps of the same form).
//
//   bazel run -c opt //kernels/causal_product:causal_product_bench
#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "benchmark/benchmark.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor.h"
#include "kernels/causal_product/causal_product.h"
#include "tests/util/random.h"

namespace ftx {
namespace {

constexpr int64_t kBatch = 1, kHeads = 8, kQkDim = 64, kValueDim = 64;

Tensor RandomTensor(const Shape& shape, uint64_t seed) {
  Tensor tensor = Tensor::Create(DType::kF32, shape).value();
  const std::vector<float> values =
      testing::RandomUniformVector(tensor.NumElements(), seed);
  std::copy(values.begin(), values.end(), tensor.data<float>());
  return tensor;
}

struct Problem {
  explicit Problem(int64_t length)
      : qk_shape{kBatch, length, kHeads, kQkDim},
        value_shape{kBatch, length, kHeads, kValueDim},
        queries(RandomTensor(qk_shape, 1)),
        keys(RandomTensor(qk_shape, 2)),
        values(RandomTensor(value_shape, 3)),
        d_out(RandomTensor(value_shape, 4)),
        out(RandomTensor(value_shape, 5)),
        d_queries(RandomTensor(qk_shape, 6)),
        d_keys(RandomTensor(qk_shape, 7)),
        d_values(RandomTensor(value_shape, 8)) {}

  Shape qk_shape, value_shape;
  Tensor queries, keys, values, d_out, out, d_queries, d_keys, d_values;
};

// range(0): L; range(1): threads (0 = all hardware threads).
std::unique_ptr<Context> ContextFor(const benchmark::State& state) {
  return Context::Create({.num_threads = static_cast<int>(state.range(1))})
      .value();
}

double ForwardFlops(int64_t length) {
  return 4.0 * kBatch * kHeads * length * kQkDim * kValueDim;
}

void SetCounters(benchmark::State& state, double flops_per_call,
                 const Context& ctx) {
  state.counters["GFLOP/s"] = benchmark::Counter(
      flops_per_call * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = ctx.num_threads();
}

void BM_CausalProductForward(benchmark::State& state) {
  const int64_t length = state.range(0);
  const auto ctx = ContextFor(state);
  Problem p(length);
  for (auto _ : state) {
    const absl::Status status =
        CausalProduct(*ctx, p.queries.view<float>(), p.keys.view<float>(),
                      p.values.view<float>(), p.out.view<float>());
    if (!status.ok()) state.SkipWithError(status.ToString().c_str());
    benchmark::DoNotOptimize(p.out.data<float>());
  }
  SetCounters(state, ForwardFlops(length), *ctx);
}

void BM_CausalProductBackward(benchmark::State& state) {
  const int64_t length = state.range(0);
  const auto ctx = ContextFor(state);
  Problem p(length);
  for (auto _ : state) {
    const absl::Status status =
        CausalProductBackward(*ctx, p.queries.view<float>(),
                              p.keys.view<float>(), p.values.view<float>(),
                              p.d_out.view<float>(), p.d_queries.view<float>(),
                              p.d_keys.view<float>(), p.d_values.view<float>());
    if (!status.ok()) state.SkipWithError(status.ToString().c_str());
    benchmark::DoNotOptimize(p.d_values.data<float>());
  }
  SetCounters(state, 3 * ForwardFlops(length), *ctx);
}

void Sizes(benchmark::internal::Benchmark* benchmark) {
  for (int64_t threads : {1, 0}) {
    for (int64_t length : {1024, 4096, 8192}) {
      benchmark->Args({length, threads});
    }
  }
  benchmark->ArgNames({"L", "threads"})
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

BENCHMARK(BM_CausalProductForward)->Apply(Sizes);
BENCHMARK(BM_CausalProductBackward)->Apply(Sizes);

}  // namespace
}  // namespace ftx
