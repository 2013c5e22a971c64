// Scalar reference of kernels/cross_entropy (the oracle for the Highway and
// CUDA versions): per-row cross-entropy of logits against integer targets with
// an ignore index and label smoothing, its backward pass, and the mean over the
// rows that are not ignored. Templated on the element type so tests can run it
// in double. Rows of a matrix are `stride` elements apart.
//
//   log_p[r, :] = log_softmax(logits[r, :])
//   loss[r]     = -(1 - eps) * log_p[r, t_r] - (eps / V) * sum_c log_p[r, c]
//   d_logits[r, c] = d_loss[r] * (softmax(logits[r, :])[c]
//                                 - (1 - eps) * [c == t_r] - eps / V)
//
// as torch.nn.functional.cross_entropy(logits, targets, reduction="none",
// ignore_index=ignore_index, label_smoothing=eps); a row with t_r ==
// ignore_index has loss 0 and a zero gradient. Targets are assumed valid.
// Gradient convention: d_logits is written (=).
#ifndef FTX_KERNELS_REFERENCE_CROSS_ENTROPY_REF_H_
#define FTX_KERNELS_REFERENCE_CROSS_ENTROPY_REF_H_

#include <cmath>
#include <cstdint>
#include <vector>

namespace ftx::reference {

namespace cross_entropy_internal {

// log_softmax of one row into log_p.
template <typename T>
void LogSoftmaxRow(int64_t vocab, const T* logits, T* log_p) {
  T row_max = logits[0];
  for (int64_t c = 1; c < vocab; ++c) {
    if (logits[c] > row_max) row_max = logits[c];
  }
  T sum = 0;
  for (int64_t c = 0; c < vocab; ++c) sum += std::exp(logits[c] - row_max);
  const T log_sum = std::log(sum);
  for (int64_t c = 0; c < vocab; ++c) {
    log_p[c] = (logits[c] - row_max) - log_sum;
  }
}

}  // namespace cross_entropy_internal

// losses[r] as above for logits [rows, vocab]; probabilities (may be null)
// receives softmax(logits) for every row, ignored or not. vocab >= 1.
template <typename T>
void CrossEntropyForward(int64_t rows, int64_t vocab, const T* logits,
                         int64_t logits_stride, const int32_t* targets,
                         int32_t ignore_index, T label_smoothing, T* losses,
                         T* probabilities, int64_t probabilities_stride) {
  std::vector<T> log_p(vocab);
  for (int64_t r = 0; r < rows; ++r) {
    cross_entropy_internal::LogSoftmaxRow(vocab, logits + r * logits_stride,
                                          log_p.data());
    if (probabilities != nullptr) {
      for (int64_t c = 0; c < vocab; ++c) {
        probabilities[r * probabilities_stride + c] = std::exp(log_p[c]);
      }
    }
    if (targets[r] == ignore_index) {
      losses[r] = 0;
      continue;
    }
    T sum_log_p = 0;
    for (int64_t c = 0; c < vocab; ++c) sum_log_p += log_p[c];
    losses[r] = -(1 - label_smoothing) * log_p[targets[r]] -
                (label_smoothing / static_cast<T>(vocab)) * sum_log_p;
  }
}

// d_logits[r, :] as above; rows with targets[r] == ignore_index get zeros.
// d_logits is written (=).
template <typename T>
void CrossEntropyBackward(int64_t rows, int64_t vocab, const T* logits,
                          int64_t logits_stride, const int32_t* targets,
                          int32_t ignore_index, T label_smoothing,
                          const T* d_losses, T* d_logits,
                          int64_t d_logits_stride) {
  std::vector<T> log_p(vocab);
  for (int64_t r = 0; r < rows; ++r) {
    T* d_row = d_logits + r * d_logits_stride;
    if (targets[r] == ignore_index) {
      for (int64_t c = 0; c < vocab; ++c) d_row[c] = 0;
      continue;
    }
    cross_entropy_internal::LogSoftmaxRow(vocab, logits + r * logits_stride,
                                          log_p.data());
    for (int64_t c = 0; c < vocab; ++c) {
      const T one_hot = c == targets[r] ? 1 : 0;
      d_row[c] =
          d_losses[r] * (std::exp(log_p[c]) - (1 - label_smoothing) * one_hot -
                         label_smoothing / static_cast<T>(vocab));
    }
  }
}

// Returns the mean of losses over the rows whose target is not ignore_index
// and writes d_losses[r] = 1 / count for those rows, 0 for ignored rows (the
// gradient of that mean). With every row ignored the mean is 0 and d_losses is
// all 0 (torch's reduction="mean" gives NaN there).
template <typename T>
T MeanLoss(int64_t rows, const T* losses, const int32_t* targets,
           int32_t ignore_index, T* d_losses) {
  int64_t count = 0;
  T sum = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (targets[r] == ignore_index) continue;
    ++count;
    sum += losses[r];
  }
  const T weight = count > 0 ? T(1) / static_cast<T>(count) : T(0);
  for (int64_t r = 0; r < rows; ++r) {
    d_losses[r] = targets[r] == ignore_index ? T(0) : weight;
  }
  return count > 0 ? sum / static_cast<T>(count) : T(0);
}

}  // namespace ftx::reference

#endif  // FTX_KERNELS_REFERENCE_CROSS_ENTROPY_REF_H_
