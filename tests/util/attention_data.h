// Test data and checks shared by the attention mechanism tests.
//
// AttentionData holds random Q, K, V stored as slices of wider per-token
// buffers
// ([N, T, H, E + pad]), so every mechanism is exercised on views strided in all
// leading axes. ExpectGradientsMatch runs a mechanism's Forward and Backward
// and compares d_queries, d_keys and d_values with central differences of a
// double reference forward.
#ifndef FTX_TESTS_UTIL_ATTENTION_DATA_H_
#define FTX_TESTS_UTIL_ATTENTION_DATA_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "attention/attention.h"
#include "attention/recurrent.h"
#include "gtest/gtest.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx::testing {

struct AttentionCase {
  int64_t n, l, s, h, e, d;  // batch, queries, keys, heads, qk dim, value dim
};

class AttentionData {
 public:
  AttentionData(const AttentionCase& c, uint64_t seed, int64_t pad = 2,
                double low = -1.0, double high = 1.0)
      : case_(c),
        pad_(pad),
        q_(RandomUniformVector(c.n * c.l * c.h * (c.e + pad), seed, low, high)),
        k_(RandomUniformVector(c.n * c.s * c.h * (c.e + pad), seed + 1, low,
                               high)),
        v_(RandomUniformVector(c.n * c.s * c.h * (c.d + pad), seed + 2, low,
                               high)) {}

  const AttentionCase& shape() const { return case_; }
  TensorView<const float> queries() const { return View(q_, case_.l, case_.e); }
  TensorView<const float> keys() const { return View(k_, case_.s, case_.e); }
  TensorView<const float> values() const { return View(v_, case_.s, case_.d); }

  AttentionInputs Inputs() const {
    AttentionInputs inputs;
    inputs.queries = queries();
    inputs.keys = keys();
    inputs.values = values();
    return inputs;
  }

  int64_t OutSize() const { return case_.n * case_.l * case_.h * case_.d; }
  Shape OutShape() const { return {case_.n, case_.l, case_.h, case_.d}; }

  // Row-major copy of a rank-4 view in double.
  static std::vector<double> Dense(const TensorView<const float>& view) {
    std::vector<double> dense;
    dense.reserve(view.NumElements());
    for (int64_t a = 0; a < view.dim(0); ++a)
      for (int64_t b = 0; b < view.dim(1); ++b)
        for (int64_t c = 0; c < view.dim(2); ++c)
          for (int64_t d = 0; d < view.dim(3); ++d)
            dense.push_back(view.at(a, b, c, d));
    return dense;
  }

 private:
  TensorView<const float> View(const std::vector<float>& storage, int64_t steps,
                               int64_t width) const {
    const int64_t w = width + pad_;
    return TensorView<const float>(storage.data(),
                                   {case_.n, steps, case_.h, width},
                                   {steps * case_.h * w, case_.h * w, w, 1});
  }

  AttentionCase case_;
  int64_t pad_;
  std::vector<float> q_, k_, v_;
};

// reference(q, k, v) -> out, all dense [N, T, H, *] in double.
using ReferenceAttention = std::function<std::vector<double>(
    const std::vector<double>&, const std::vector<double>&,
    const std::vector<double>&)>;

// Runs attention.Forward (with a cache) and Backward on `inputs` with a random
// d_out and checks every input gradient against central differences of
// `reference`.
inline void ExpectGradientsMatch(const Context& ctx, Attention& attention,
                                 const AttentionData& data,
                                 AttentionInputs inputs,
                                 const ReferenceAttention& reference,
                                 Tolerance tolerance = {2e-5, 1e-4}) {
  const AttentionCase& c = data.shape();
  AttentionCache cache;
  std::vector<float> out(data.OutSize());
  ASSERT_TRUE(attention
                  .Forward(ctx, inputs,
                           TensorView<float>(out.data(), data.OutShape()),
                           &cache)
                  .ok());
  const std::vector<float> d_out = RandomUniformVector(out.size(), 99);
  std::vector<float> d_q(c.n * c.l * c.h * c.e), d_k(c.n * c.s * c.h * c.e),
      d_v(c.n * c.s * c.h * c.d);
  const AttentionGrads grads{
      TensorView<float>(d_q.data(), {c.n, c.l, c.h, c.e}),
      TensorView<float>(d_k.data(), {c.n, c.s, c.h, c.e}),
      TensorView<float>(d_v.data(), {c.n, c.s, c.h, c.d})};
  const absl::Status status = attention.Backward(
      ctx, inputs, cache,
      TensorView<const float>(d_out.data(), data.OutShape()), grads);
  ASSERT_TRUE(status.ok()) << status;

  const std::vector<double> w(d_out.begin(), d_out.end());
  const std::vector<double> q = AttentionData::Dense(inputs.queries);
  const std::vector<double> k = AttentionData::Dense(inputs.keys);
  const std::vector<double> v = AttentionData::Dense(inputs.values);
  EXPECT_TRUE(
      GradientMatches([&](const auto& x) { return Dot(w, reference(x, k, v)); },
                      q, Cast<double>(d_q), tolerance))
      << "d_queries";
  EXPECT_TRUE(
      GradientMatches([&](const auto& x) { return Dot(w, reference(q, x, v)); },
                      k, Cast<double>(d_k), tolerance))
      << "d_keys";
  EXPECT_TRUE(
      GradientMatches([&](const auto& x) { return Dot(w, reference(q, k, x)); },
                      v, Cast<double>(d_v), tolerance))
      << "d_values";
}

// Runs `attention` step by step over the L positions of `data` (the key and
// value of step l are those of position l, so L == S); returns the outputs as
// [N, L, H, D].
inline std::vector<float> StepThrough(const Context& ctx,
                                      RecurrentAttention& attention,
                                      const AttentionData& data) {
  const AttentionCase& c = data.shape();
  const std::vector<double> q = AttentionData::Dense(data.queries());
  const std::vector<double> k = AttentionData::Dense(data.keys());
  const std::vector<double> v = AttentionData::Dense(data.values());
  std::vector<float> result(c.n * c.l * c.h * c.d);
  std::unique_ptr<RecurrentState> state = attention.NewState();
  std::vector<float> query(c.n * c.h * c.e), key(c.n * c.h * c.e),
      value(c.n * c.h * c.d), out(c.n * c.h * c.d);
  for (int64_t l = 0; l < c.l; ++l) {
    for (int64_t n = 0; n < c.n; ++n) {
      for (int64_t i = 0; i < c.h * c.e; ++i) {
        query[n * c.h * c.e + i] = q[(n * c.l + l) * c.h * c.e + i];
        key[n * c.h * c.e + i] = k[(n * c.s + l) * c.h * c.e + i];
      }
      for (int64_t i = 0; i < c.h * c.d; ++i) {
        value[n * c.h * c.d + i] = v[(n * c.s + l) * c.h * c.d + i];
      }
    }
    const absl::Status status = attention.Step(
        ctx, TensorView<const float>(query.data(), {c.n, c.h, c.e}),
        TensorView<const float>(key.data(), {c.n, c.h, c.e}),
        TensorView<const float>(value.data(), {c.n, c.h, c.d}),
        TensorView<float>(out.data(), {c.n, c.h, c.d}), *state);
    EXPECT_TRUE(status.ok()) << status;
    EXPECT_EQ(state->steps(), l + 1);
    for (int64_t n = 0; n < c.n; ++n) {
      for (int64_t i = 0; i < c.h * c.d; ++i) {
        result[(n * c.l + l) * c.h * c.d + i] = out[n * c.h * c.d + i];
      }
    }
  }
  return result;
}

}  // namespace ftx::testing

#endif  // FTX_TESTS_UTIL_ATTENTION_DATA_H_
