#include "layers/axial_positions.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/base/rng.h"
#include "kernels/base/status_macros.h"

namespace ftx {
namespace {

// A [B, T, C] activation view (or [T, C] when `allow_rank2`), CPU, unit stride
// in C.
template <typename T>
absl::Status CheckActivation(const char* op, const char* name,
                             const TensorView<T>& view, int64_t dim,
                             bool allow_rank2) {
  const bool rank_ok = view.rank() == 3 || (allow_rank2 && view.rank() == 2);
  if (!rank_ok || view.dim(view.rank() - 1) != dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " must be ", allow_rank2 ? "[T, C] or " : "",
        "[B, T, C] with C = ", dim, ", got ", view.shape().ToString()));
  }
  if (view.data() == nullptr && view.NumElements() > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " has null data"));
  }
  if (view.device().type != DeviceType::kCpu) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, " must be on the CPU"));
  }
  if (view.stride(view.rank() - 1) != 1 && dim > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", name, " must have unit stride in its last axis"));
  }
  return absl::OkStatus();
}

// A [T, C] view as [1, T, C].
template <typename T>
TensorView<T> AsBatched(const TensorView<T>& view) {
  if (view.rank() != 2) return view;
  return TensorView<T>(view.data(), {1, view.dim(0), view.dim(1)},
                       {view.dim(0) * view.stride(0), view.stride(0), 1},
                       view.device());
}

}  // namespace

AxialPositionsConfig AxialPositionsConfig::Performer(int64_t dim,
                                                     int64_t max_seq_len) {
  AxialPositionsConfig config;
  config.dim = dim;
  config.shape = {(max_seq_len + 63) / 64, 64};
  return config;
}

absl::Status AxialPositions::CheckConfig(const char* op,
                                         const Context& ctx) const {
  if (config_.dim < 1 || config_.shape[0] < 1 || config_.shape[1] < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": dim and both axial shape entries must be >= 1, got dim ",
        config_.dim, " and shape (", config_.shape[0], ", ", config_.shape[1],
        ")"));
  }
  if (!summed() &&
      (config_.axial_dims[0] < 1 || config_.axial_dims[1] < 1 ||
       config_.axial_dims[0] + config_.axial_dims[1] != config_.dim)) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": axial_dims (", config_.axial_dims[0], ", ",
                     config_.axial_dims[1],
                     ") must be positive and sum to dim = ", config_.dim));
  }
  if (ctx.device().type != DeviceType::kCpu) {
    return absl::UnimplementedError(
        absl::StrCat(op, ": only the CPU path exists"));
  }
  return absl::OkStatus();
}

absl::Status AxialPositions::CheckWeights(
    const char* op, const char* prefix, TensorView<const float> weights_0,
    TensorView<const float> weights_1) const {
  const std::vector<ParamShape> shapes = ParamShapes();
  const TensorView<const float> weights[] = {weights_0, weights_1};
  for (int axis = 0; axis < 2; ++axis) {
    const TensorView<const float>& w = weights[axis];
    if (w.shape() != shapes[axis].shape || !w.IsContiguous() ||
        w.data() == nullptr || w.device().type != DeviceType::kCpu) {
      return absl::InvalidArgumentError(absl::StrCat(
          op, ": ", prefix, shapes[axis].name, " must be a contiguous CPU ",
          shapes[axis].shape.ToString(), " tensor, got ",
          w.shape().ToString()));
    }
  }
  return absl::OkStatus();
}

absl::Status AxialPositions::CheckRange(const char* op, int64_t offset,
                                        int64_t length) const {
  if (offset < 0 || offset + length > max_seq_len()) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": positions [", offset, ", ", offset + length,
        ") do not fit the axial shape's max_seq_len = ", max_seq_len()));
  }
  return absl::OkStatus();
}

absl::Status AxialPositions::InitParams(const Context& ctx,
                                        TensorView<float> weights_0,
                                        TensorView<float> weights_1,
                                        uint64_t seed) const {
  FTX_RETURN_IF_ERROR(CheckConfig("AxialPositions", ctx));
  FTX_RETURN_IF_ERROR(CheckWeights("AxialPositions", "", weights_0, weights_1));
  FTX_RETURN_IF_ERROR(FillNormal(ctx, weights_0, 0.0f, 1.0f, {.seed = seed}));
  return FillNormal(
      ctx, weights_1, 0.0f, 1.0f,
      {.seed = seed, .offset = static_cast<uint64_t>(weights_0.NumElements())});
}

absl::Status AxialPositions::Table(const Context& ctx,
                                   TensorView<const float> weights_0,
                                   TensorView<const float> weights_1,
                                   int64_t offset,
                                   TensorView<float> table) const {
  if (table.rank() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("AxialPositions: table must be [T, C], got ",
                     table.shape().ToString()));
  }
  const TensorView<float> batched = AsBatched(table);
  FTX_RETURN_IF_ERROR(
      CheckActivation("AxialPositions", "table", batched, config_.dim, false));
  FTX_RETURN_IF_ERROR(CheckConfig("AxialPositions", ctx));
  FTX_RETURN_IF_ERROR(CheckRange("AxialPositions", offset, table.dim(0)));
  for (int64_t t = 0; t < table.dim(0); ++t) {
    std::fill(&table.at(t, 0), &table.at(t, 0) + config_.dim, 0.0f);
  }
  return Forward(ctx, weights_0, weights_1, offset, batched);
}

absl::Status AxialPositions::Forward(const Context& ctx,
                                     TensorView<const float> weights_0,
                                     TensorView<const float> weights_1,
                                     int64_t offset,
                                     TensorView<float> x) const {
  FTX_RETURN_IF_ERROR(CheckConfig("AxialPositions", ctx));
  FTX_RETURN_IF_ERROR(
      CheckActivation("AxialPositions", "x", x, config_.dim, false));
  FTX_RETURN_IF_ERROR(CheckWeights("AxialPositions", "", weights_0, weights_1));
  FTX_RETURN_IF_ERROR(CheckRange("AxialPositions", offset, x.dim(1)));
  const int64_t columns = config_.shape[1];
  const int64_t dim_0 = AxisDim(0), dim_1 = AxisDim(1);
  const bool sum = summed();
  ctx.pool().ParallelFor(x.dim(1), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t p = offset + t;
      const float* w0 = weights_0.data() + (p / columns) * dim_0;
      const float* w1 = weights_1.data() + (p % columns) * dim_1;
      for (int64_t b = 0; b < x.dim(0); ++b) {
        float* row = &x.at(b, t);
        if (sum) {
          for (int64_t c = 0; c < dim_0; ++c) row[c] += w0[c] + w1[c];
        } else {
          for (int64_t c = 0; c < dim_0; ++c) row[c] += w0[c];
          for (int64_t c = 0; c < dim_1; ++c) row[dim_0 + c] += w1[c];
        }
      }
    }
  });
  return absl::OkStatus();
}

absl::Status AxialPositions::Backward(const Context& ctx, int64_t offset,
                                      TensorView<const float> d_y,
                                      TensorView<float> d_weights_0,
                                      TensorView<float> d_weights_1) const {
  const char* op = "AxialPositionsBackward";
  FTX_RETURN_IF_ERROR(CheckConfig(op, ctx));
  FTX_RETURN_IF_ERROR(CheckActivation(op, "d_y", d_y, config_.dim, true));
  FTX_RETURN_IF_ERROR(CheckWeights(op, "d_", d_weights_0, d_weights_1));
  const TensorView<const float> d_out = AsBatched(d_y);
  const int64_t length = d_out.dim(1);
  FTX_RETURN_IF_ERROR(CheckRange(op, offset, length));
  if (length == 0) return absl::OkStatus();
  const int64_t columns = config_.shape[1];
  const int64_t dim_0 = AxisDim(0), dim_1 = AxisDim(1);
  // Column offset of axis 1's part of d_y: 0 when summed.
  const int64_t start_1 = summed() ? 0 : dim_0;

  // Rows: row r holds the positions [r K, (r + 1) K) that fall in the range.
  const int64_t first_row = offset / columns;
  const int64_t last_row = (offset + length - 1) / columns;
  ctx.pool().ParallelFor(
      last_row - first_row + 1, [&](int64_t begin, int64_t end) {
        for (int64_t r = first_row + begin; r < first_row + end; ++r) {
          float* d_w0 = d_weights_0.data() + r * dim_0;
          const int64_t t_begin = std::max<int64_t>(r * columns - offset, 0);
          const int64_t t_end =
              std::min<int64_t>((r + 1) * columns - offset, length);
          for (int64_t t = t_begin; t < t_end; ++t) {
            for (int64_t b = 0; b < d_out.dim(0); ++b) {
              const float* g = &d_out.at(b, t);
              for (int64_t c = 0; c < dim_0; ++c) d_w0[c] += g[c];
            }
          }
        }
      });
  // Columns: column k holds the positions p = k (mod K).
  ctx.pool().ParallelFor(columns, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      float* d_w1 = d_weights_1.data() + k * dim_1;
      for (int64_t t = ((k - offset) % columns + columns) % columns; t < length;
           t += columns) {
        for (int64_t b = 0; b < d_out.dim(0); ++b) {
          const float* g = &d_out.at(b, t) + start_1;
          for (int64_t c = 0; c < dim_1; ++c) d_w1[c] += g[c];
        }
      }
    }
  });
  return absl::OkStatus();
}

}  // namespace ftx
