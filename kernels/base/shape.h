// Shape: up to four dimensions, row-major. Axis legend used across ftx:
// attention [N, L, H, E] (batch, queries, heads, qk dim; S keys, D value dim),
// layers [B, T, C] (batch, time, channels; V vocabulary).
#ifndef FTX_KERNELS_BASE_SHAPE_H_
#define FTX_KERNELS_BASE_SHAPE_H_

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ftx {

inline constexpr int kMaxRank = 4;

class Shape {
 public:
  Shape() = default;
  // Precondition: dims.size() <= kMaxRank (checked by the Tensor/View
  // factories).
  Shape(std::initializer_list<int64_t> dims) {
    for (int64_t d : dims) {
      if (rank_ < kMaxRank) dims_[rank_] = d;
      ++rank_;
    }
  }

  int rank() const { return rank_; }
  int64_t dim(int axis) const { return dims_[axis]; }
  int64_t operator[](int axis) const { return dims_[axis]; }
  const std::array<int64_t, kMaxRank>& dims() const { return dims_; }
  void set_dim(int axis, int64_t value) { dims_[axis] = value; }

  // True when the rank fits and no dimension is negative.
  bool IsValid() const {
    if (rank_ < 0 || rank_ > kMaxRank) return false;
    for (int i = 0; i < rank_; ++i) {
      if (dims_[i] < 0) return false;
    }
    return true;
  }

  int64_t NumElements() const {
    int64_t n = 1;
    for (int i = 0; i < rank_ && i < kMaxRank; ++i) n *= dims_[i];
    return n;
  }

  bool operator==(const Shape& other) const {
    if (rank_ != other.rank_) return false;
    for (int i = 0; i < rank_ && i < kMaxRank; ++i) {
      if (dims_[i] != other.dims_[i]) return false;
    }
    return true;
  }
  bool operator!=(const Shape& other) const { return !(*this == other); }

  std::string ToString() const {
    const int shown = rank_ < kMaxRank ? rank_ : kMaxRank;
    return absl::StrCat(
        "[", absl::StrJoin(dims_.begin(), dims_.begin() + shown, ", "),
        rank_ > kMaxRank ? ", ..." : "", "]");
  }

 private:
  std::array<int64_t, kMaxRank> dims_{};
  int rank_ = 0;
};

}  // namespace ftx

#endif  // FTX_KERNELS_BASE_SHAPE_H_
