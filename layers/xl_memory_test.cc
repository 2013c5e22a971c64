// Transformer-XL memory: the update (append, keep the last max_mem_len),
// shift_mem_down's rotation, and causal "full" attention from the new
// positions over cat(memory, x) with AttnMask::Causal(M), which must equal
// causal attention over the whole concatenated sequence at those positions;
// central-difference gradient of x through the attention (the memory is
// constant), bad arguments.
#include "layers/xl_memory.h"

#include <cmath>
#include <string>
#include <vector>

#include "attention/full.h"
#include "gtest/gtest.h"
#include "tests/util/gradcheck.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

TEST(XlMemoryTest, UpdateKeepsTheLastPositions) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  const int64_t B = 2, M = 3, T = 4, C = 2;
  std::vector<float> memory(B * M * C), hidden(B * T * C);
  for (size_t i = 0; i < memory.size(); ++i) memory[i] = 100 + i;
  for (size_t i = 0; i < hidden.size(); ++i) hidden[i] = 200 + i;
  const TensorView<const float> mem_view(memory.data(), {B, M, C});
  const TensorView<const float> hidden_view(hidden.data(), {B, T, C});
  for (int64_t max_len : {0, 5, 7, 10, 2}) {
    auto xl = XlMemory::Create({.max_mem_len = max_len});
    ASSERT_TRUE(xl.ok());
    auto updated = xl->Update(*ctx, mem_view, hidden_view);
    ASSERT_TRUE(updated.ok());
    const int64_t kept =
        max_len == 0 ? M + T : std::min<int64_t>(max_len, M + T);
    ASSERT_EQ(updated->shape(), (Shape{B, kept, C}));
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < kept; ++t) {
        const int64_t source = M + T - kept + t;
        for (int64_t c = 0; c < C; ++c) {
          const float expected = source < M
                                     ? memory[(b * M + source) * C + c]
                                     : hidden[(b * T + source - M) * C + c];
          EXPECT_EQ(updated->data<float>()[(b * kept + t) * C + c], expected);
        }
      }
    }
  }
  auto xl = XlMemory::Create({.max_mem_len = 3});
  auto first = xl->Update(*ctx, {}, hidden_view);  // no memory yet
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->shape(), (Shape{B, 3, C}));
  EXPECT_EQ(first->data<float>()[0], hidden[1 * C]);
}

TEST(XlMemoryTest, ShiftMemDownRotates) {
  std::vector<std::string> mems = {"m0", "m1", "m2", "m3"};
  XlMemory::Create({.shift_mem_down = 1})->ShiftDown(mems);
  EXPECT_EQ(mems, (std::vector<std::string>{"m1", "m2", "m3", "m0"}));
  XlMemory::Create({.shift_mem_down = 4})->ShiftDown(mems);
  EXPECT_EQ(mems, (std::vector<std::string>{"m1", "m2", "m3", "m0"}));
  XlMemory::Create({})->ShiftDown(mems);
  EXPECT_EQ(mems, (std::vector<std::string>{"m1", "m2", "m3", "m0"}));
}

constexpr int64_t kB = 2, kM = 5, kT = 4, kH = 2, kE = 3, kC = kH * kE;

// Causal softmax attention over a whole sequence z [B, S, H, E] used as
// queries, keys and values; returns rows [first, S).
std::vector<double> CausalSelfAttention(const std::vector<double>& z, int64_t S,
                                        int64_t first) {
  const int64_t rows = S - first;
  std::vector<double> out(kB * rows * kC, 0.0);
  const double scale = 1 / std::sqrt(static_cast<double>(kE));
  for (int64_t b = 0; b < kB; ++b) {
    for (int64_t h = 0; h < kH; ++h) {
      for (int64_t i = first; i < S; ++i) {
        std::vector<double> p(i + 1);
        double max_score = -1e300, total = 0;
        for (int64_t j = 0; j <= i; ++j) {
          double dot = 0;
          for (int64_t e = 0; e < kE; ++e) {
            dot += z[((b * S + i) * kH + h) * kE + e] *
                   z[((b * S + j) * kH + h) * kE + e];
          }
          p[j] = dot * scale;
          max_score = std::max(max_score, p[j]);
        }
        for (double& v : p) total += (v = std::exp(v - max_score));
        for (int64_t j = 0; j <= i; ++j) {
          for (int64_t e = 0; e < kE; ++e) {
            out[((b * rows + i - first) * kH + h) * kE + e] +=
                p[j] / total * z[((b * S + j) * kH + h) * kE + e];
          }
        }
      }
    }
  }
  return out;
}

TEST(XlMemoryTest, AttentionOverMemoryEqualsFullSequence) {
  auto ctx = Context::Create({.num_threads = 1}).value();
  const std::vector<float> memory =
      testing::RandomNormalVector(kB * kM * kC, 1);
  const std::vector<float> x = testing::RandomNormalVector(kB * kT * kC, 2);
  std::vector<float> kv(kB * (kM + kT) * kC);
  ASSERT_TRUE(XlMemory::ConcatKeyValueInput(
                  *ctx, TensorView<const float>(memory.data(), {kB, kM, kC}),
                  TensorView<const float>(x.data(), {kB, kT, kC}),
                  TensorView<float>(kv.data(), {kB, kM + kT, kC}))
                  .ok());
  FullAttention full({.attention_dropout = 0.0f});
  AttentionInputs inputs;
  inputs.queries = TensorView<const float>(x.data(), {kB, kT, kH, kE});
  inputs.keys = TensorView<const float>(kv.data(), {kB, kM + kT, kH, kE});
  inputs.values = inputs.keys;
  inputs.attn_mask = XlMemory::CausalMask(kM);
  std::vector<float> out(kB * kT * kC);
  AttentionCache cache;
  ASSERT_TRUE(full.Forward(*ctx, inputs,
                           TensorView<float>(out.data(), {kB, kT, kH, kE}),
                           &cache)
                  .ok());
  // The whole sequence [memory; x], attended causally, at positions M...
  auto whole = [&](const std::vector<double>& xs) {
    std::vector<double> z(kB * (kM + kT) * kC);
    for (int64_t b = 0; b < kB; ++b) {
      for (int64_t i = 0; i < kM * kC; ++i)
        z[b * (kM + kT) * kC + i] = memory[b * kM * kC + i];
      for (int64_t i = 0; i < kT * kC; ++i) {
        z[(b * (kM + kT) + kM) * kC + i] = xs[b * kT * kC + i];
      }
    }
    return CausalSelfAttention(z, kM + kT, kM);
  };
  const auto x64 = testing::Cast<double>(x);
  EXPECT_TRUE(testing::AllNear(out, whole(x64), {1e-5, 1e-4}));

  // d_x = d_queries + (d_keys + d_values)[:, M:]; the memory is constant.
  const std::vector<float> d_out = testing::RandomUniformVector(out.size(), 3);
  std::vector<float> d_q(out.size()), d_k(kv.size()), d_v(kv.size());
  ASSERT_TRUE(
      full.Backward(*ctx, inputs, cache,
                    TensorView<const float>(d_out.data(), {kB, kT, kH, kE}),
                    {TensorView<float>(d_q.data(), {kB, kT, kH, kE}),
                     TensorView<float>(d_k.data(), {kB, kM + kT, kH, kE}),
                     TensorView<float>(d_v.data(), {kB, kM + kT, kH, kE})})
          .ok());
  for (size_t i = 0; i < d_k.size(); ++i) d_k[i] += d_v[i];
  std::vector<float> d_x(x.size());
  ASSERT_TRUE(XlMemory::ConcatKeyValueInputBackward(
                  *ctx, kM,
                  TensorView<const float>(d_k.data(), {kB, kM + kT, kC}),
                  TensorView<float>(d_x.data(), {kB, kT, kC}))
                  .ok());
  for (size_t i = 0; i < d_x.size(); ++i) d_x[i] += d_q[i];
  const auto w = testing::Cast<double>(d_out);
  EXPECT_TRUE(testing::GradientMatches(
      [&](const auto& v) { return testing::Dot(w, whole(v)); }, x64,
      testing::Cast<double>(d_x), {1e-5, 1e-3}));
}

TEST(XlMemoryTest, BadArgumentsAreInvalidArgument) {
  EXPECT_EQ(XlMemory::Create({.max_mem_len = -1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(XlMemory::Create({.shift_mem_down = -2}).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto ctx = Context::Create({.num_threads = 1}).value();
  std::vector<float> buffer(128);
  auto xl = XlMemory::Create({.max_mem_len = 4});
  const auto status =
      xl->Update(*ctx, TensorView<const float>(buffer.data(), {2, 3, 5}),
                 TensorView<const float>(buffer.data(), {2, 3, 4}));
  EXPECT_EQ(status.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.status().message().find("memory"), std::string::npos);
  EXPECT_EQ(XlMemory::ConcatKeyValueInput(
                *ctx, TensorView<const float>(buffer.data(), {1, 2, 3}),
                TensorView<const float>(buffer.data(), {1, 2, 3}),
                TensorView<float>(buffer.data() + 64, {1, 5, 3}))
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(XlMemory::ConcatKeyValueInputBackward(
                *ctx, 3, TensorView<const float>(buffer.data(), {1, 4, 3}),
                TensorView<float>(buffer.data() + 64, {1, 2, 3}))
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ftx
