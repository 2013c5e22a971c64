// LearningRateSchedule: the warm-up and cosine curve at key steps (values
// worked out by hand), monotonicity, the constant schedule, bad configs.
#include "models/schedule.h"

#include <cmath>
#include <string>

#include "gtest/gtest.h"

namespace ftx {
namespace {

// max 1.0, min 0.1, warm-up 10 steps, cosine over steps 10..110.
WarmupCosineConfig ExampleConfig() {
  WarmupCosineConfig config;
  config.max_lr = 1.0;
  config.min_lr = 0.1;
  config.warmup_steps = 10;
  config.total_steps = 110;
  return config;
}

TEST(ScheduleTest, WarmupCosineAtKeySteps) {
  auto schedule = LearningRateSchedule::WarmupCosine(ExampleConfig());
  ASSERT_TRUE(schedule.ok()) << schedule.status();
  // Warm-up: (s + 1) / 10 of max_lr.
  EXPECT_DOUBLE_EQ(schedule->LearningRate(0), 0.1);
  EXPECT_DOUBLE_EQ(schedule->LearningRate(4), 0.5);
  EXPECT_DOUBLE_EQ(schedule->LearningRate(9), 1.0);
  // Cosine: 0.1 + 0.45 * (1 + cos(pi * (s - 10) / 100)).
  EXPECT_DOUBLE_EQ(schedule->LearningRate(10), 1.0);
  EXPECT_NEAR(schedule->LearningRate(35), 0.8681980515339464, 1e-15);
  EXPECT_NEAR(schedule->LearningRate(60), 0.55, 1e-15);
  EXPECT_NEAR(schedule->LearningRate(85), 0.2318019484660536, 1e-15);
  EXPECT_NEAR(schedule->LearningRate(109),
              0.1 + 0.45 * (1 - 0.9995065603657316), 1e-15);
  // Then min_lr for good; negative steps count as step 0.
  EXPECT_DOUBLE_EQ(schedule->LearningRate(110), 0.1);
  EXPECT_DOUBLE_EQ(schedule->LearningRate(1000000), 0.1);
  EXPECT_DOUBLE_EQ(schedule->LearningRate(-5), 0.1);
}

TEST(ScheduleTest, RisesThenFallsMonotonically) {
  auto schedule = LearningRateSchedule::WarmupCosine(ExampleConfig());
  ASSERT_TRUE(schedule.ok());
  for (int64_t step = 1; step < 130; ++step) {
    const double previous = schedule->LearningRate(step - 1);
    const double current = schedule->LearningRate(step);
    if (step < 10) {
      EXPECT_GT(current, previous) << "step " << step;
    } else {
      EXPECT_LE(current, previous) << "step " << step;
    }
    EXPECT_GE(current, 0.1);
    EXPECT_LE(current, 1.0);
  }
}

TEST(ScheduleTest, NoWarmupStartsAtMaxAndZeroMinimumEndsAtZero) {
  WarmupCosineConfig config;
  config.max_lr = 3e-4;
  config.warmup_steps = 0;
  config.total_steps = 4;
  auto schedule = LearningRateSchedule::WarmupCosine(config);
  ASSERT_TRUE(schedule.ok());
  EXPECT_DOUBLE_EQ(schedule->LearningRate(0), 3e-4);
  // cos(pi / 4) = sqrt(2) / 2; cos(pi / 2) = 0.
  EXPECT_NEAR(schedule->LearningRate(1), 1.5e-4 * (1 + std::sqrt(0.5)), 1e-18);
  EXPECT_NEAR(schedule->LearningRate(2), 1.5e-4, 1e-18);
  EXPECT_EQ(schedule->LearningRate(4), 0.0);
}

TEST(ScheduleTest, ConstantIsTheSameAtEveryStep) {
  auto schedule = LearningRateSchedule::Constant(2.5e-4);
  ASSERT_TRUE(schedule.ok());
  for (int64_t step : {0, 1, 2, 1000, -3}) {
    EXPECT_EQ(schedule->LearningRate(step), 2.5e-4) << "step " << step;
  }
}

TEST(ScheduleTest, BadConfigsNameTheField) {
  auto expect_error = [](const absl::Status& status, const char* needle) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(needle), std::string::npos) << status;
  };
  expect_error(LearningRateSchedule::Constant(-1.0).status(), "lr");
  expect_error(LearningRateSchedule::Constant(NAN).status(), "lr");
  WarmupCosineConfig config = ExampleConfig();
  config.min_lr = -0.1;
  expect_error(LearningRateSchedule::WarmupCosine(config).status(), "min_lr");
  config = ExampleConfig();
  config.max_lr = 0.05;
  expect_error(LearningRateSchedule::WarmupCosine(config).status(), "max_lr");
  config = ExampleConfig();
  config.warmup_steps = -1;
  expect_error(LearningRateSchedule::WarmupCosine(config).status(),
               "warmup_steps");
  config = ExampleConfig();
  config.total_steps = 10;
  expect_error(LearningRateSchedule::WarmupCosine(config).status(),
               "total_steps");
}

}  // namespace
}  // namespace ftx
