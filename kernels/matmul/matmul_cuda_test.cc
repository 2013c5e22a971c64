// kernels/matmul on a CUDA device (cuBLAS) against the scalar reference in
// double: transposes, alpha/beta, NaN in an unread c, strided rows, batches
// with broadcast, and the backward with accumulation and broadcast (skips
// without a device).
#include <algorithm>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/base/tensor.h"
#include "kernels/matmul/matmul.h"
#include "kernels/reference/matmul_ref.h"
#include "tests/util/random.h"
#include "tests/util/tolerance.h"

namespace ftx {
namespace {

using ::ftx::testing::AllNear;
using ::ftx::testing::Tolerance;

// A device operand: `batch` items of rows x cols (batch 0: a rank-2 view),
// rows padded by `padding` floats and items `gap_rows` rows apart beyond
// their own rows. host() holds the values, on the host, in the same layout.
class DeviceMatrix {
 public:
  DeviceMatrix(int64_t batch, int64_t rows, int64_t cols, uint64_t seed,
               int64_t gap_rows = 0, int64_t padding = 3)
      : batch_(batch),
        rows_(rows),
        cols_(cols),
        item_rows_(rows + gap_rows),
        stride_(cols + padding),
        host_(testing::RandomUniformVector(
            std::max<int64_t>(batch, 1) * item_rows_ * stride_, seed)) {
    Upload();
  }

  TensorView<float> view() {
    float* data = device_.data<float>();
    if (batch_ == 0) {
      return TensorView<float>(data, {rows_, cols_}, {stride_, 1, 0, 0},
                               Device::Cuda());
    }
    return TensorView<float>(data, {batch_, rows_, cols_},
                             {item_rows_ * stride_, stride_, 1, 0},
                             Device::Cuda());
  }
  TensorView<const float> const_view() { return view(); }

  void Fill(float value) {
    ForEachElement([&](int64_t index) { host_[index] = value; });
    Upload();
  }

  // The items' values (read back from the device), dense, in double.
  std::vector<double> Dense() {
    Tensor host = device_.To(Device::Cpu()).value();
    const float* values = host.data<float>();
    std::vector<double> dense;
    ForEachElement([&](int64_t index) { dense.push_back(values[index]); });
    return dense;
  }

  template <typename T>
  reference::BatchedMatrix<T> Reference(T* dense) const {
    return {dense, cols_, batch_ == 0 ? 0 : rows_ * cols_};
  }

 private:
  template <class Body>
  void ForEachElement(const Body& body) const {
    for (int64_t item = 0; item < std::max<int64_t>(batch_, 1); ++item) {
      for (int64_t row = 0; row < rows_; ++row) {
        for (int64_t col = 0; col < cols_; ++col) {
          body((item * item_rows_ + row) * stride_ + col);
        }
      }
    }
  }

  void Upload() {
    Tensor host =
        Tensor::Create(DType::kF32, {static_cast<int64_t>(host_.size())})
            .value();
    std::copy(host_.begin(), host_.end(), host.data<float>());
    device_ = host.To(Device::Cuda()).value();
  }

  int64_t batch_, rows_, cols_, item_rows_, stride_;
  std::vector<float> host_;
  Tensor device_;
};

struct Problem {
  Problem(int64_t m, int64_t n, int64_t k, int64_t a_batch = 0,
          int64_t b_batch = 0, int64_t a_gap_rows = 0,
          MatMulOptions options = {})
      : m(m),
        n(n),
        k(k),
        a_batch(a_batch),
        b_batch(b_batch),
        a_gap_rows(a_gap_rows),
        options(options) {}

  int64_t m, n, k;
  int64_t a_batch, b_batch;  // 0: rank 2
  int64_t a_gap_rows;
  MatMulOptions options;
};

int64_t BatchOf(const Problem& p) { return std::max(p.a_batch, p.b_batch); }

struct Operands {
  Operands(const Problem& p, uint64_t seed)
      : a(p.a_batch, p.options.transpose_a ? p.k : p.m,
          p.options.transpose_a ? p.m : p.k, seed, p.a_gap_rows),
        b(p.b_batch, p.options.transpose_b ? p.n : p.k,
          p.options.transpose_b ? p.k : p.n, seed + 1),
        c(BatchOf(p), p.m, p.n, seed + 2) {}
  DeviceMatrix a, b, c;
};

reference::MatMulDims DimsOf(const Problem& p) {
  return {std::max<int64_t>(BatchOf(p), 1), p.m, p.n, p.k};
}

reference::MatMulParams<double> ParamsOf(const MatMulOptions& options) {
  return {options.transpose_a, options.transpose_b, options.alpha,
          options.beta};
}

Tolerance SumTolerance(int64_t k) { return {4e-7 * (k + 4), 2e-5}; }

std::string Describe(const Problem& p) {
  return absl::StrCat("m=", p.m, " n=", p.n, " k=", p.k, " a_batch=", p.a_batch,
                      " b_batch=", p.b_batch, " gap=", p.a_gap_rows,
                      " transpose_a=", p.options.transpose_a,
                      " transpose_b=", p.options.transpose_b);
}

const bool kBools[] = {false, true};

class MatMulCudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (CudaDeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
    ctx_ = Context::Create({.device = Device::Cuda()}).value();
  }

  void ExpectMatchesReference(const Problem& p, bool nan_in_c = false) {
    SCOPED_TRACE(Describe(p));
    Operands x(p, p.m + 3 * p.n + 5 * p.k);
    if (nan_in_c) x.c.Fill(std::numeric_limits<float>::quiet_NaN());
    std::vector<double> a = x.a.Dense(), b = x.b.Dense(), c = x.c.Dense();
    reference::MatMul<double>(DimsOf(p), x.a.Reference<const double>(a.data()),
                              x.b.Reference<const double>(b.data()),
                              x.c.Reference(c.data()), ParamsOf(p.options));
    ASSERT_TRUE(
        MatMul(*ctx_, x.a.const_view(), x.b.const_view(), x.c.view(), p.options)
            .ok());
    EXPECT_TRUE(AllNear(x.c.Dense(), c, SumTolerance(p.k)));
  }

  std::unique_ptr<Context> ctx_;
};

TEST_F(MatMulCudaTest, ForwardMatchesReference) {
  for (bool transpose_a : kBools) {
    for (bool transpose_b : kBools) {
      MatMulOptions options{.transpose_a = transpose_a,
                            .transpose_b = transpose_b,
                            .alpha = 1.5f,
                            .beta = -0.5f};
      for (const Problem& shape :
           {Problem(1, 1, 1), Problem(7, 33, 17), Problem(129, 131, 257)}) {
        Problem p = shape;
        p.options = options;
        ExpectMatchesReference(p);
        p.options.beta = 0.0f;
        ExpectMatchesReference(p, /*nan_in_c=*/true);
      }
      // Both batched; shared b (folded into one GEMM, and not when a's items
      // are gapped); shared a.
      ExpectMatchesReference({17, 33, 7, 3, 3, 0, options});
      ExpectMatchesReference({17, 33, 7, 4, 0, 0, options});
      ExpectMatchesReference({5, 40, 19, 3, 0, 2, options});
      ExpectMatchesReference({13, 9, 33, 0, 5, 0, options});
    }
  }
}

TEST_F(MatMulCudaTest, EmptyProductScalesC) {
  ExpectMatchesReference({4, 5, 0, 0, 0, 0, {.beta = 2.0f}});
  ExpectMatchesReference({4, 5, 0, 3, 3, 0, {.beta = 0.0f}},
                         /*nan_in_c=*/true);
}

TEST_F(MatMulCudaTest, BackwardMatchesReference) {
  const Problem shapes[] = {
      {17, 33, 7},          {7, 16, 33, 3, 3},  // both batched
      {17, 33, 9, 4, 0},     // shared b, evenly spaced rows of a
      {5, 17, 16, 3, 0, 2},  // shared b, gapped a
      {13, 9, 33, 0, 5},     // shared a
  };
  for (Problem p : shapes) {
    for (bool transpose_a : kBools) {
      for (bool transpose_b : kBools) {
        for (bool accumulate : kBools) {
          p.options = {.transpose_a = transpose_a,
                       .transpose_b = transpose_b,
                       .alpha = -1.25f};
          const MatMulGradOptions grad_options{.accumulate_a = accumulate,
                                               .accumulate_b = !accumulate};
          SCOPED_TRACE(Describe(p) +
                       " accumulate_a=" + std::to_string(accumulate));
          Operands x(p, 50), grads(p, 60);
          std::vector<double> a = x.a.Dense(), b = x.b.Dense(),
                              d_c = x.c.Dense();
          std::vector<double> d_a = grads.a.Dense(), d_b = grads.b.Dense();
          reference::MatMulBackward<double>(
              DimsOf(p), x.a.Reference<const double>(a.data()),
              x.b.Reference<const double>(b.data()),
              x.c.Reference<const double>(d_c.data()),
              x.a.Reference(d_a.data()), x.b.Reference(d_b.data()),
              ParamsOf(p.options), grad_options.accumulate_a,
              grad_options.accumulate_b);
          ASSERT_TRUE(MatMulBackward(*ctx_, x.a.const_view(), x.b.const_view(),
                                     x.c.const_view(), grads.a.view(),
                                     grads.b.view(), p.options, grad_options)
                          .ok());
          const int64_t batch = std::max<int64_t>(BatchOf(p), 1);
          EXPECT_TRUE(AllNear(grads.a.Dense(), d_a, SumTolerance(batch * p.n)));
          EXPECT_TRUE(AllNear(grads.b.Dense(), d_b, SumTolerance(batch * p.m)));
        }
      }
    }
  }
}

TEST_F(MatMulCudaTest, HostTensorIsAnError) {
  Operands x(Problem(3, 4, 5), 1);
  std::vector<float> host(15);
  const absl::Status status =
      MatMul(*ctx_, TensorView<const float>(host.data(), {3, 5}),
             x.b.const_view(), x.c.view());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(status.message()).find("a is on cpu"),
            std::string::npos)
      << status;
}

}  // namespace
}  // namespace ftx
