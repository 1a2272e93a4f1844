// GRPO's pieces on their own: group advantages, the clipped surrogate with the k3 KL penalty worked
// by hand and against finite differences, and the rewards (answers extracted as exact match reads
// them, the format and regex rewards, an external program that answers, fails, lies or hangs).
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <thread>

#include "core/error.h"
#include "train/grpo_objective.h"
#include "train/rewards.h"

namespace deepmoe::train {
namespace {

TEST(Grpo, AdvantagesAreStandardizedWithinEachGroup) {
  const std::vector<double> rewards = {1, 0, 0, 1, 1, 1, 1, 1};
  const auto a = group_advantages(rewards, 4);
  const double expected = 0.5 / (std::sqrt(1.0 / 3.0) + 1e-4);  // mean 0.5, unbiased std sqrt(1/3)
  EXPECT_NEAR(a[0], expected, 1e-12);
  EXPECT_NEAR(a[1], -expected, 1e-12);
  for (size_t i = 4; i < 8; ++i) EXPECT_EQ(a[i], 0.0);  // all equal: nothing to learn from the group
  EXPECT_THROW(group_advantages(rewards, 3), Error);
}

TEST(Grpo, TheClippedSurrogateAndItsKlPenaltyWorkedByHand) {
  GrpoRow row{{0, 1, 1}, {0, -1, -2}, {0, -1.5, -2}, 2.0};
  auto metrics = std::make_shared<std::map<std::string, double>>();
  const TokenObjective objective = grpo_objective({row}, 3, {0.2, 0.1, 1.0}, metrics);
  const std::vector<double> logprobs = {-9, -0.8, -2.5};
  std::vector<double> gradient(3);
  const double loss = objective(logprobs, gradient);
  // Token 1: ratio e^0.2 > 1.2, the clipped branch is the min (no surrogate gradient);
  // token 2: ratio e^-0.5 inside, A ratio flows. KL_t = π_ref/π − log(π_ref/π) − 1.
  const double kl1 = std::exp(-0.7) + 0.7 - 1, kl2 = std::exp(0.5) - 0.5 - 1;
  EXPECT_NEAR(loss, -0.5 * ((1.2 * 2 - 0.1 * kl1) + (std::exp(-0.5) * 2 - 0.1 * kl2)), 1e-12);
  EXPECT_EQ(gradient[0], 0.0);
  EXPECT_NEAR(gradient[1], -0.5 * (0 - 0.1 * (1 - std::exp(-0.7))), 1e-12);
  EXPECT_NEAR(gradient[2], -0.5 * (std::exp(-0.5) * 2 - 0.1 * (1 - std::exp(0.5))), 1e-12);
  EXPECT_NEAR((*metrics)["clip_fraction"], 0.5, 1e-12);
  EXPECT_NEAR((*metrics)["kl"], 0.5 * (kl1 + kl2), 1e-12);
}

TEST(Grpo, TheGradientIsTheObjectivesDerivative) {
  std::mt19937 rng(3);
  std::normal_distribution<double> noise(0.0, 0.3);
  std::vector<GrpoRow> rows;
  std::vector<double> logprobs;
  for (int r = 0; r < 4; ++r) {
    GrpoRow row{{0, 1, 1, 1, 0}, {}, {}, noise(rng) * 3};
    for (int t = 0; t < 5; ++t) {
      const double lp = -1.0 + noise(rng);
      logprobs.push_back(lp);
      row.old_logprobs.push_back(lp + noise(rng));
      row.ref_logprobs.push_back(lp + noise(rng));
    }
    rows.push_back(row);
  }
  auto metrics = std::make_shared<std::map<std::string, double>>();
  const TokenObjective objective = grpo_objective(rows, 5, {0.2, 0.05, 8.0}, metrics);
  std::vector<double> gradient(logprobs.size()), ignored(logprobs.size());
  objective(logprobs, gradient);
  for (size_t i = 0; i < logprobs.size(); ++i) {
    std::vector<double> up = logprobs, down = logprobs;
    up[i] += 1e-6;
    down[i] -= 1e-6;
    const double numeric = (objective(up, ignored) - objective(down, ignored)) / 2e-6;
    EXPECT_NEAR(gradient[i], numeric, 1e-6) << "position " << i;
  }
}

TEST(Rewards, FinalAnswersAsExactMatchReadsThem) {
  EXPECT_EQ(final_answer("12 + 7 = 19\n#### 19"), "19");
  EXPECT_EQ(final_answer("so 3 and then 1,234."), "1234");
  EXPECT_EQ(final_answer("It costs $-5."), "-5");
  EXPECT_EQ(final_answer("no number here"), "");
  const auto exact = builtin_reward("exact");
  EXPECT_EQ(
      exact->score(
          {{"q", " 12 + 7 = 19\n#### 19", "19"}, {"q", "#### 20", "19"}, {"q", "19.0", "19"}, {"q", "nothing", "19"}}),
      (std::vector<double>{1, 0, 1, 0}));
  const auto format = builtin_reward("format");
  EXPECT_EQ(format->score({{"", " <think>3+4</think> 7", ""}, {"", "<think>3+4</think>", ""}, {"", "7", ""}}),
            (std::vector<double>{1, 0, 0}));
  const auto regex = builtin_reward("regex:#### \\d+");
  EXPECT_EQ(regex->score({{"", "x #### 7", ""}, {"", "#### x", ""}}), (std::vector<double>{1, 0}));
  EXPECT_THROW(builtin_reward("bleu"), Error);
}

TEST(Rewards, AnExternalProgramScoresOrTheStepIsSkipped) {
  const std::vector<Completion> two = {{"p", "a", "1"}, {"p", "b", "2"}};
  EXPECT_EQ(external_reward("cat >/dev/null; printf '1\\n0.5\\n'")->score(two), (std::vector<double>{1, 0.5}));
  // It reads what it scores: the answer field of each line.
  EXPECT_EQ(external_reward("sed -n 's/.*\"answer\":\"\\([0-9]*\\)\".*/\\1/p'")->score(two),
            (std::vector<double>{1, 2}));
  EXPECT_THROW(external_reward("cat >/dev/null; exit 3")->score(two), RewardFailed);
  EXPECT_THROW(external_reward("exit 0")->score(std::vector<Completion>(20000, {"p", "a long completion", "1"})),
               RewardFailed);  // gone before reading its input: no SIGPIPE for us, one error
  EXPECT_THROW(external_reward("cat >/dev/null; echo 1; echo nope")->score(two), RewardFailed);
  EXPECT_THROW(external_reward("cat >/dev/null; echo 1")->score(two), RewardFailed);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(external_reward("sleep 30", 0.5)->score(two), RewardFailed);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 5.0);
}

TEST(Rewards, ATimedOutProgramTakesWhatItStartedWithIt) {
  const std::string pid_file = ::testing::TempDir() + "reward_child.pid";
  std::remove(pid_file.c_str());
  EXPECT_THROW(external_reward("sleep 30 & echo $! >" + pid_file + "; wait", 0.5)->score({{"p", "a", "1"}}),
               RewardFailed);
  std::ifstream in(pid_file);
  pid_t child = 0;
  ASSERT_TRUE(in >> child) << "the program did not start its child";
  // Killed with its process group: gone, or a zombie left for whoever reaps orphans here.
  const auto dead = [child] {
    std::ifstream stat("/proc/" + std::to_string(child) + "/stat");
    std::string pid, name, state;
    return kill(child, 0) != 0 || !(stat >> pid >> name >> state) || state == "Z";
  };
  bool gone = false;
  for (int i = 0; i < 100 && !gone; ++i) {
    gone = dead();
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(gone) << "the program's child " << child << " outlived the timeout";
  if (!gone) kill(child, SIGKILL);
  std::remove(pid_file.c_str());
}

}  // namespace
}  // namespace deepmoe::train
