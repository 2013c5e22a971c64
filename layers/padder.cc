#include "layers/padder.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "absl/strings/str_cat.h"

namespace ftx {

absl::StatusOr<Padder> Padder::Create(int64_t input_size) {
  if (input_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("Padder: input_size must be >= 1, got ", input_size));
  }
  return Padder(input_size);
}

template <typename T>
absl::Status Padder::Check(const char* op, const Context& ctx,
                           const TensorView<T>& short_view,
                           const char* short_name,
                           const TensorView<T>& long_view,
                           const char* long_name) const {
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat("Padder::", op, ": only the CPU path exists so far"));
  }
  const int rank = long_view.rank();
  const bool shapes_ok =
      (rank == 2 || rank == 3) && short_view.rank() == rank &&
      long_view.dim(1) == input_size_ &&
      short_view.dim(0) == long_view.dim(0) && short_view.dim(1) >= 1 &&
      short_view.dim(1) <= input_size_ &&
      (rank == 2 || short_view.dim(2) == long_view.dim(2));
  if (!shapes_ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Padder::", op, ": ", short_name, " ", short_view.shape().ToString(),
        " and ", long_name, " ", long_view.shape().ToString(),
        " must be [B, T(, C)] and [B, input_size ", input_size_,
        "(, C)] with 1 <= T <= input_size"));
  }
  if (short_view.data() == nullptr || long_view.data() == nullptr ||
      !short_view.IsContiguous() || !long_view.IsContiguous()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Padder::", op, ": ", short_name, " and ", long_name,
                     " must be contiguous views with data"));
  }
  return absl::OkStatus();
}

namespace {

// Copies the first T of n rows of every batch item, zeroing the rest of the
// long side when padding.
template <typename T>
void CopyRows(const T* from, int64_t from_rows, T* to, int64_t to_rows,
              int64_t batch, int64_t width) {
  const int64_t rows = std::min(from_rows, to_rows);
  for (int64_t b = 0; b < batch; ++b) {
    T* target = to + b * to_rows * width;
    std::memcpy(target, from + b * from_rows * width, sizeof(T) * rows * width);
    std::fill(target + rows * width, target + to_rows * width, T{0});
  }
}

}  // namespace

absl::Status Padder::Pad(const Context& ctx, TensorView<const float> x,
                         TensorView<float> padded) const {
  if (absl::Status status =
          Check<const float>("Pad", ctx, x, "x", padded, "padded");
      !status.ok()) {
    return status;
  }
  CopyRows(x.data(), x.dim(1), padded.data(), input_size_, x.dim(0), x.dim(2));
  return absl::OkStatus();
}

absl::Status Padder::PadTokens(const Context& ctx,
                               TensorView<const int32_t> tokens,
                               TensorView<int32_t> padded) const {
  if (absl::Status status = Check<const int32_t>("PadTokens", ctx, tokens,
                                                 "tokens", padded, "padded");
      !status.ok()) {
    return status;
  }
  CopyRows(tokens.data(), tokens.dim(1), padded.data(), input_size_,
           tokens.dim(0), 1);
  return absl::OkStatus();
}

absl::Status Padder::Strip(const Context& ctx, TensorView<const float> padded,
                           TensorView<float> out) const {
  if (absl::Status status =
          Check<const float>("Strip", ctx, out, "out", padded, "padded");
      !status.ok()) {
    return status;
  }
  CopyRows(padded.data(), input_size_, out.data(), out.dim(1), out.dim(0),
           out.dim(2));
  return absl::OkStatus();
}

}  // namespace ftx
