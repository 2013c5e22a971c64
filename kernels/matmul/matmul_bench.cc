// Benchmarks of kernels/matmul on the CPU: GFLOP/s of MatMul (fp32) at
// 1024x1024x1024 and at attention shapes (8192x64x64, L = 512 with E = 64),
// with 1 and 2 threads, next to this core's fp32 FMA peak (BM_FmaPeak: many
// independent register-resident hn::MulAdd chains of the dispatched target).
//
//   bazel run -c opt //kernels/matmul:matmul_bench --
//     --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <cstdint>
#include <fstream>
#include <memory>
#include <string>

#include "benchmark/benchmark.h"
#include "hwy/aligned_allocator.h"
#include "kernels/base/context.h"
#include "kernels/base/tensor_view.h"
#include "kernels/matmul/matmul.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/matmul/matmul_bench.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace ftx {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Independent chains: enough to cover FMA latency times FMA ports (4 x 2 on
// current x86 cores) while all stay in registers.
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
constexpr size_t kFmaChains = 20;
#else
constexpr size_t kFmaChains = 10;
#endif

// Runs `steps` steps of kFmaChains independent vector multiply-add chains and
// returns a value that depends on all of them; *flops_per_step receives the
// floating-point operations of one step.
float FmaChains(int64_t steps, double* flops_per_step) {
  const hn::ScalableTag<float> d;
  using V = hn::Vec<decltype(d)>;
  V acc[kFmaChains];
  HWY_UNROLL(kFmaChains)
  for (size_t i = 0; i < kFmaChains; ++i) {
    acc[i] = hn::Set(d, 1.0f + 1e-3f * static_cast<float>(i));
  }
  const V mul = hn::Set(d, 0.999999f);
  const V add = hn::Set(d, 1e-6f);
  for (int64_t step = 0; step < steps; ++step) {
    HWY_UNROLL(kFmaChains)
    for (size_t i = 0; i < kFmaChains; ++i) {
      acc[i] = hn::MulAdd(acc[i], mul, add);
    }
  }
  V sum = acc[0];
  HWY_UNROLL(kFmaChains)
  for (size_t i = 1; i < kFmaChains; ++i) sum = hn::Add(sum, acc[i]);
  *flops_per_step = 2.0 * kFmaChains * hn::Lanes(d);
  return hn::GetLane(hn::SumOfLanes(d, sum));
}

int64_t ChosenTarget() { return HWY_TARGET; }

}  // namespace HWY_NAMESPACE
}  // namespace ftx
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ftx {
namespace {

HWY_EXPORT(FmaChains);
HWY_EXPORT(ChosenTarget);

void BM_FmaPeak(benchmark::State& state) {
  constexpr int64_t kSteps = 1 << 22;
  double flops_per_step = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        HWY_DYNAMIC_DISPATCH(FmaChains)(kSteps, &flops_per_step));
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(1e-9 * flops_per_step * kSteps * state.iterations(),
                         benchmark::Counter::kIsRate);
}
BENCHMARK(BM_FmaPeak)->Unit(benchmark::kMillisecond)->UseRealTime();

// Args: m, n, k, threads, transpose_b. c[m, n] = a[m, k] @ op(b).
void BM_MatMul(benchmark::State& state) {
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const int threads = static_cast<int>(state.range(3));
  const bool transpose_b = state.range(4) != 0;
  std::unique_ptr<Context> ctx =
      Context::Create({.num_threads = threads}).value();
  hwy::AlignedFreeUniquePtr<float[]> a = hwy::AllocateAligned<float>(m * k);
  hwy::AlignedFreeUniquePtr<float[]> b = hwy::AllocateAligned<float>(k * n);
  hwy::AlignedFreeUniquePtr<float[]> c = hwy::AllocateAligned<float>(m * n);
  for (int64_t i = 0; i < m * k; ++i) a[i] = static_cast<float>(i % 7) - 3.0f;
  for (int64_t i = 0; i < k * n; ++i) b[i] = static_cast<float>(i % 5) - 2.0f;
  const TensorView<const float> a_view(a.get(), {m, k});
  const TensorView<const float> b_view(b.get(),
                                       transpose_b ? Shape{n, k} : Shape{k, n});
  const TensorView<float> c_view(c.get(), {m, n});
  const MatMulOptions options{.transpose_b = transpose_b};
  for (auto _ : state) {
    if (!MatMul(*ctx, a_view, b_view, c_view, options).ok()) {
      state.SkipWithError("MatMul failed");
      break;
    }
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(
      2e-9 * static_cast<double>(m) * n * k * state.iterations(),
      benchmark::Counter::kIsRate);
}
BENCHMARK(BM_MatMul)
    ->ArgNames({"m", "n", "k", "threads", "transpose_b"})
    ->Args({1024, 1024, 1024, 1, 0})
    ->Args({1024, 1024, 1024, 2, 0})
    ->Args({8192, 64, 64, 1, 0})
    ->Args({8192, 64, 64, 2, 0})
    ->Args({1024, 1024, 1024, 1, 1})
    ->Args({512, 512, 64, 1, 0})  // [L, E] @ [E, L]
    ->Args({512, 512, 64, 1, 1})  // Q @ K^T
    ->Args({512, 64, 512, 1, 0})  // P @ V
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

std::string CpuModel() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      return line.substr(line.find(':') + 2);
    }
  }
  return "unknown";
}

const char* HighwayTarget() {
  return hwy::TargetName(HWY_DYNAMIC_DISPATCH(ChosenTarget)());
}

}  // namespace
}  // namespace ftx

int main(int argc, char** argv) {
  benchmark::AddCustomContext("cpu_model", ftx::CpuModel());
  benchmark::AddCustomContext("highway_target", ftx::HighwayTarget());
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
#endif  // HWY_ONCE
