#include "kernels/base/tensor.h"

#include "gtest/gtest.h"

namespace ftx {
namespace {

TEST(TensorTest, CreateIsZeroedAndAligned) {
  auto tensor = Tensor::Create(DType::kF32, {3, 5, 7});
  ASSERT_TRUE(tensor.ok()) << tensor.status();
  EXPECT_EQ(tensor->NumElements(), 105);
  EXPECT_EQ(tensor->nbytes(), 420u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(tensor->raw_data()) % kTensorAlignment,
            0u);
  const float* data = tensor->data<float>();
  for (int i = 0; i < 105; ++i) EXPECT_EQ(data[i], 0.0f);
}

TEST(TensorTest, RejectsBadShapes) {
  auto negative = Tensor::Create(DType::kF32, {3, -1});
  EXPECT_EQ(negative.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(negative.status().message().find("negative"), std::string::npos);
  auto too_deep = Tensor::Create(DType::kF32, {1, 2, 3, 4, 5});
  EXPECT_EQ(too_deep.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_deep.status().message().find("rank 5"), std::string::npos);
}

TEST(TensorTest, CudaWithoutBuildOrDeviceIsAnError) {
  auto tensor = Tensor::Create(DType::kF32, {4}, Device::Cuda());
#ifndef FTX_HAVE_CUDA
  EXPECT_EQ(tensor.status().code(), absl::StatusCode::kUnimplemented);
#else
  (void)tensor;
#endif
}

TEST(TensorTest, MoveTransfersOwnership) {
  auto created = Tensor::Create(DType::kF32, {4});
  ASSERT_TRUE(created.ok());
  Tensor a = std::move(created).value();
  a.data<float>()[2] = 5.0f;
  Tensor b = std::move(a);
  EXPECT_EQ(a.raw_data(), nullptr);
  EXPECT_EQ(b.data<float>()[2], 5.0f);
}

TEST(TensorTest, CopyFromChecksShapeAndCopies) {
  auto a = Tensor::Create(DType::kF32, {2, 3});
  auto b = Tensor::Create(DType::kF32, {6});
  auto c = Tensor::Create(DType::kF32, {5});
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  for (int i = 0; i < 6; ++i) a->data<float>()[i] = static_cast<float>(i);
  ASSERT_TRUE(b->CopyFrom(*a).ok());
  EXPECT_EQ(b->data<float>()[5], 5.0f);
  EXPECT_EQ(c->CopyFrom(*a).code(), absl::StatusCode::kInvalidArgument);
}

TEST(TensorViewTest, SliceSelectAndStrides) {
  float data[2 * 3 * 4];
  for (int i = 0; i < 24; ++i) data[i] = static_cast<float>(i);
  TensorView<float> view(data, {2, 3, 4});
  EXPECT_TRUE(view.IsContiguous());
  EXPECT_EQ(view.stride(0), 12);
  EXPECT_EQ(view.at(1, 2, 3), 23.0f);
  TensorView<float> cols = view.Slice(2, 1, 3);  // [2, 3, 2], strided
  EXPECT_FALSE(cols.IsContiguous());
  EXPECT_EQ(cols.at(1, 0, 1), 14.0f);
  TensorView<float> row = view.Select(1, 2);  // [2, 4]
  EXPECT_EQ(row.rank(), 2);
  EXPECT_EQ(row.at(1, 0), 20.0f);
  TensorView<const float> as_const = view;
  EXPECT_EQ(as_const.at(0, 1, 1), 5.0f);
}

TEST(TensorViewTest, AsMatrixCollapsesLeadingAxes) {
  float data[2 * 3 * 8];
  TensorView<float> view(data, {2, 3, 8});
  ASSERT_TRUE(LeadingAxesCollapse(view));
  MatrixView<float> m = AsMatrix(view.Slice(2, 0, 5));
  EXPECT_EQ(m.rows, 6);
  EXPECT_EQ(m.cols, 5);
  EXPECT_EQ(m.row_stride, 8);
  // Slicing the middle axis breaks even row spacing.
  EXPECT_FALSE(LeadingAxesCollapse(view.Slice(1, 0, 2)));
}

}  // namespace
}  // namespace ftx
