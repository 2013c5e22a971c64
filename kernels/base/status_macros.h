// Status propagation macros (Abseil 20220623 ships none).
//
// Example:
//   FTX_RETURN_IF_ERROR(CheckShapes(a, b));
//   FTX_ASSIGN_OR_RETURN(Tensor t, Tensor::Create(DType::kF32, {4, 8}));
#ifndef FTX_KERNELS_BASE_STATUS_MACROS_H_
#define FTX_KERNELS_BASE_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define FTX_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::absl::Status ftx_status_ = (expr);       \
    if (!ftx_status_.ok()) return ftx_status_; \
  } while (false)

#define FTX_STATUS_CONCAT_INNER_(a, b) a##b
#define FTX_STATUS_CONCAT_(a, b) FTX_STATUS_CONCAT_INNER_(a, b)

#define FTX_ASSIGN_OR_RETURN(lhs, expr)                                        \
  FTX_ASSIGN_OR_RETURN_IMPL_(FTX_STATUS_CONCAT_(ftx_statusor_, __LINE__), lhs, \
                             expr)

#define FTX_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                               \
  if (!statusor.ok()) return statusor.status();         \
  lhs = std::move(statusor).value()

#endif  // FTX_KERNELS_BASE_STATUS_MACROS_H_
