// Benchmark of step-wise decoding (TransformerWrapper::Step, the step form of
// models/generate): the time of one Step at context length L in {64, 256,
// 1024, 2048} for a decoder of dim 256, depth 4, heads 4 (dim_head 64), 256
// tokens, batch 1, one thread, with "full" (a KV cache: O(L) per step) and
// "causal-linear" (running sums: O(1) per step in L). Each repetition prefills
// L tokens outside the timing, then times 64 consecutive steps (positions
// L .. L + 63).
//
//   bazel run -c opt //models:generate_bench
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "attention/builtin.h"
#include "benchmark/benchmark.h"
#include "kernels/base/context.h"
#include "models/param_store.h"
#include "models/transformer.h"

namespace ftx {
namespace {

constexpr int64_t kSteps = 64;
constexpr int64_t kVocab = 256;

struct Decoder {
  std::unique_ptr<Context> ctx;
  AttentionRegistry registry;
  std::unique_ptr<TransformerWrapper> model;
  std::unique_ptr<ParamStore> store;
};

std::unique_ptr<Decoder> MakeDecoder(const std::string& attention) {
  auto decoder = std::make_unique<Decoder>();
  decoder->ctx = Context::Create({.num_threads = 1}).value();
  RegisterBuiltinAttentions(decoder->registry).IgnoreError();
  TransformerConfig config;
  config.dim = 256;
  config.depth = 4;
  config.heads = 4;
  config.dim_head = 64;
  config.causal = true;
  config.attention = attention;
  config.num_tokens = kVocab;
  config.max_seq_len = 2048 + kSteps;
  config.seed = 1;
  decoder->model =
      TransformerWrapper::Create(config, decoder->registry).value();
  decoder->store = std::make_unique<ParamStore>(
      ParamStore::Create(decoder->model->ParamShapes()).value());
  decoder->model->InitParams(*decoder->ctx, *decoder->store).IgnoreError();
  return decoder;
}

int32_t TokenAt(int64_t position) {
  return static_cast<int32_t>((position * 31 + 7) % kVocab);
}

absl::Status StepAt(Decoder& decoder, DecodeState& state,
                    std::vector<float>& logits) {
  const int32_t token = TokenAt(state.position());
  return decoder.model->Step(*decoder.ctx, *decoder.store,
                             TensorView<const int32_t>(&token, {1}), state,
                             TensorView<float>(logits.data(), {1, kVocab}));
}

void BM_DecodeStep(benchmark::State& bench, const std::string& attention) {
  const int64_t context = bench.range(0);
  static std::unique_ptr<Decoder> full, causal_linear;
  std::unique_ptr<Decoder>& decoder =
      attention == "full" ? full : causal_linear;
  if (decoder == nullptr) decoder = MakeDecoder(attention);
  DecodeState state = decoder->model->NewDecodeState(1).value();
  std::vector<float> logits(kVocab);
  for (int64_t t = 0; t < context; ++t) {
    if (!StepAt(*decoder, state, logits).ok()) {
      bench.SkipWithError("prefill failed");
      return;
    }
  }
  for (auto _ : bench) {
    if (!StepAt(*decoder, state, logits).ok()) {
      bench.SkipWithError("step failed");
      return;
    }
    benchmark::DoNotOptimize(logits.data());
  }
  bench.counters["context"] = static_cast<double>(context);
}

void Contexts(benchmark::internal::Benchmark* b) {
  for (int64_t context : {64, 256, 1024, 2048}) b->Arg(context);
  b->Iterations(kSteps)
      ->Repetitions(5)
      ->ReportAggregatesOnly(true)
      ->UseRealTime()
      ->Unit(benchmark::kMicrosecond);
}

BENCHMARK_CAPTURE(BM_DecodeStep, full, std::string("full"))->Apply(Contexts);
BENCHMARK_CAPTURE(BM_DecodeStep, causal_linear, std::string("causal-linear"))
    ->Apply(Contexts);

}  // namespace
}  // namespace ftx
