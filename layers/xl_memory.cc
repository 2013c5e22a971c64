#include "layers/xl_memory.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/base/status_macros.h"

namespace ftx {
namespace {

constexpr char kOp[] = "XlMemory";

absl::Status CheckCpu(const Context& ctx) {
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(kOp, ": only CPU contexts are supported"));
  }
  return absl::OkStatus();
}

// A contiguous CPU [B, X, C] view; batch / channels < 0 are not checked.
absl::Status CheckSequence(absl::string_view name, TensorView<const float> view,
                           int64_t batch, int64_t channels) {
  if (view.rank() != 3 || (batch >= 0 && view.dim(0) != batch) ||
      (channels >= 0 && view.dim(2) != channels)) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": ", name, " must be [B, T, C]",
        batch >= 0 ? absl::StrCat(" with B = ", batch, ", C = ", channels) : "",
        ", got ", view.shape().ToString()));
  }
  if ((view.data() == nullptr && !view.empty()) || !view.IsContiguous() ||
      view.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": ", name, " must be a contiguous CPU view"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<XlMemory> XlMemory::Create(const XlMemoryConfig& config) {
  if (config.max_mem_len < 0 || config.shift_mem_down < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": max_mem_len and shift_mem_down must be >= 0, got ",
                     config.max_mem_len, " and ", config.shift_mem_down));
  }
  return XlMemory(config);
}

int64_t XlMemory::UpdatedLength(int64_t memory_length,
                                int64_t hidden_length) const {
  const int64_t total = memory_length + hidden_length;
  return config_.max_mem_len == 0 ? total
                                  : std::min(total, config_.max_mem_len);
}

absl::StatusOr<Tensor> XlMemory::Update(const Context& ctx,
                                        TensorView<const float> memory,
                                        TensorView<const float> hidden) const {
  FTX_RETURN_IF_ERROR(CheckCpu(ctx));
  FTX_RETURN_IF_ERROR(CheckSequence("hidden", hidden, -1, -1));
  const int64_t B = hidden.dim(0), T = hidden.dim(1), C = hidden.dim(2);
  const bool has_memory = !IsAbsent(memory);
  if (has_memory) FTX_RETURN_IF_ERROR(CheckSequence("memory", memory, B, C));
  const int64_t M = has_memory ? memory.dim(1) : 0;
  const int64_t kept = UpdatedLength(M, T);
  FTX_ASSIGN_OR_RETURN(Tensor updated,
                       Tensor::Create(DType::kF32, {B, kept, C}));
  float* out = updated.data<float>();
  const int64_t skip =
      M + T - kept;  // leading positions of cat(memory, hidden)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < kept; ++t) {
      const int64_t source = skip + t;
      const float* row =
          source < M ? &memory.at(b, source) : &hidden.at(b, source - M);
      std::copy(row, row + C, out + (b * kept + t) * C);
    }
  }
  return updated;
}

absl::Status XlMemory::ConcatKeyValueInput(const Context& ctx,
                                           TensorView<const float> memory,
                                           TensorView<const float> x,
                                           TensorView<float> out) {
  FTX_RETURN_IF_ERROR(CheckCpu(ctx));
  FTX_RETURN_IF_ERROR(CheckSequence("x", x, -1, -1));
  const int64_t B = x.dim(0), T = x.dim(1), C = x.dim(2);
  const bool has_memory = !IsAbsent(memory);
  if (has_memory) FTX_RETURN_IF_ERROR(CheckSequence("memory", memory, B, C));
  const int64_t M = has_memory ? memory.dim(1) : 0;
  FTX_RETURN_IF_ERROR(CheckSequence("out", out, B, C));
  if (out.dim(1) != M + T) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": out must have M + T = ", M + T, " positions, got ",
                     out.dim(1)));
  }
  for (int64_t b = 0; b < B; ++b) {
    if (M > 0) std::copy_n(&memory.at(b, 0), M * C, &out.at(b, 0));
    std::copy_n(&x.at(b, 0), T * C, &out.at(b, M));
  }
  return absl::OkStatus();
}

absl::Status XlMemory::ConcatKeyValueInputBackward(
    const Context& ctx, int64_t memory_length, TensorView<const float> d_out,
    TensorView<float> d_x) {
  FTX_RETURN_IF_ERROR(CheckCpu(ctx));
  FTX_RETURN_IF_ERROR(CheckSequence("d_x", d_x, -1, -1));
  FTX_RETURN_IF_ERROR(CheckSequence("d_out", d_out, d_x.dim(0), d_x.dim(2)));
  const int64_t T = d_x.dim(1), C = d_x.dim(2);
  if (memory_length < 0 || d_out.dim(1) != memory_length + T) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": d_out has ", d_out.dim(1),
        " positions but memory_length + T = ", memory_length, " + ", T));
  }
  for (int64_t b = 0; b < d_x.dim(0); ++b) {
    std::copy_n(&d_out.at(b, memory_length), T * C, &d_x.at(b, 0));
  }
  return absl::OkStatus();
}

}  // namespace ftx
