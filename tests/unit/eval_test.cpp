// The evaluation tasks' inputs: CSV as MMLU writes it (quotes, doubled quotes, commas and newlines
// in fields, CRLF), MMLU posed as lm-evaluation-harness's default task poses it (checked against a
// prompt written out by hand), the generic JSONL's errors, and lm-eval's standard error.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "eval/csv.h"
#include "eval/mmlu.h"
#include "eval/multiple_choice.h"

namespace deepmoe::eval {
namespace {

namespace fs = std::filesystem;

TEST(Csv, QuotedFieldsKeepCommasNewlinesAndQuotes) {
  const auto rows = parse_csv("a,\"b, c\",\"say \"\"hi\"\"\"\r\n\"two\nlines\",,x\nlast,row", "t.csv");
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0], (std::vector<std::string>{"a", "b, c", "say \"hi\""}));
  EXPECT_EQ(rows[1], (std::vector<std::string>{"two\nlines", "", "x"}));
  EXPECT_EQ(rows[2], (std::vector<std::string>{"last", "row"}));
}

TEST(Csv, AnOpenQuoteOrTextAfterAClosingQuoteIsAnErrorNamingTheLine) {
  try {
    parse_csv("a,b\nc,\"never closed\n", "t.csv");
    ADD_FAILURE() << "an open quote parsed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("t.csv:2: a quoted field is never closed"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_csv("\"a\"b,c\n", "t.csv"), Error);
}

class MmluTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("deepmoe_mmlu_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "dev");
    fs::create_directories(dir_ / "test");
  }
  void TearDown() override { fs::remove_all(dir_); }
  void write(const fs::path& path, const std::string& text) { std::ofstream(path) << text; }
  fs::path dir_;
};

TEST_F(MmluTest, OneShotPromptIsLmEvalsDefaultTemplate) {
  write(dir_ / "dev" / "toy_subject_dev.csv", "\"What is 1+1, roughly?\",1,2,3,4,B\nSecond dev,w,x,y,z,A\n");
  write(dir_ / "test" / "toy_subject_test.csv", "  Pick a letter.  ,\"a, b\",c,d,e,D\n");
  const auto subjects = load_mmlu(dir_.string(), "test", 1);
  ASSERT_EQ(subjects.size(), 1u);
  EXPECT_EQ(subjects[0].name, "toy_subject");
  ASSERT_EQ(subjects[0].questions.size(), 1u);
  const Question& q = subjects[0].questions[0];
  EXPECT_EQ(q.context,
            "The following are multiple choice questions (with answers) about toy subject.\n\n"
            "What is 1+1, roughly?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
            "Pick a letter.\nA. a, b\nB. c\nC. d\nD. e\nAnswer:");
  EXPECT_EQ(q.choices, (std::vector<std::string>{"A", "B", "C", "D"}));
  EXPECT_EQ(q.delimiter, " ");
  EXPECT_EQ(q.gold, 3);
  // Zero-shot: the subject line and the question alone.
  EXPECT_EQ(load_mmlu(dir_.string(), "test", 0)[0].questions[0].context,
            "The following are multiple choice questions (with answers) about toy subject.\n\n"
            "Pick a letter.\nA. a, b\nB. c\nC. d\nD. e\nAnswer:");
}

TEST_F(MmluTest, BadRowsAndTooFewExamplesAreErrorsNamingTheFile) {
  write(dir_ / "test" / "s_test.csv", "q,a,b,c,d,E\n");
  try {
    load_mmlu(dir_.string(), "test", 0);
    ADD_FAILURE() << "an answer of E loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("s_test.csv: row 1: expected question,A,B,C,D,answer"), std::string::npos)
        << e.what();
  }
  write(dir_ / "test" / "s_test.csv", "q,a,b,c,d,A\n");
  write(dir_ / "dev" / "s_dev.csv", "q,a,b,c,d,A\n");
  EXPECT_THROW(load_mmlu(dir_.string(), "test", 2), Error);  // one dev question for two shots
  EXPECT_THROW(load_mmlu((dir_ / "nothing").string(), "test", 0), Error);
}

TEST(MultipleChoiceJsonl, EveryMalformedLineIsNamed) {
  const fs::path path = fs::temp_directory_path() / ("deepmoe_mc_" + std::to_string(::getpid()) + ".jsonl");
  const std::pair<const char*, const char*> cases[] = {
      {"{\"context\": \"a\", \"choices\": [\"b\"], \"gold\": 0}", "at least two"},
      {"{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"gold\": 2}", "'gold' must be the index"},
      {"{\"context\": 3, \"choices\": [\"b\", \"c\"], \"gold\": 0}", "'context' must be a string"},
      {"{\"context\": \"a\", \"choices\": [\"b\", \"\"], \"gold\": 0}", "non-empty string"},
      {"[1, 2]", "not a JSON object"},
  };
  for (const auto& [line, why] : cases) {
    std::ofstream(path) << "{\"context\": \"ok\", \"choices\": [\" x\", \" y\"], \"gold\": 1}\n" << line << "\n";
    try {
      load_multiple_choice_jsonl(path.string());
      ADD_FAILURE() << line << " loaded";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(":2: "), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
    }
  }
  fs::remove(path);
}

TEST(MultipleChoice, StandardErrorIsTheSampleDeviationOverRootN) {
  const Metric m = mean_of({1, 0, 1, 1});
  EXPECT_DOUBLE_EQ(m.value, 0.75);
  // sample variance of {1,0,1,1}: (3 * 0.0625 + 0.5625) / 3 = 0.25; / n = 0.0625
  EXPECT_DOUBLE_EQ(m.stderr_, 0.25);
  // acc_norm divides by the choice's characters (Python's len, as lm-eval), without the delimiter:
  // "éé" is 2 characters (4 bytes), "abc" 3. -2.2 / 2 = -1.1 < -3 / 3 = -1; counting bytes
  // (-0.55) or the delimiter (-0.73 against -0.75) would pick the first.
  const Question q{"c", {"\xc3\xa9\xc3\xa9", "abc"}, 1, " "};
  const QuestionResult r = judge(q, {{-2.2, 2, false}, {-3.0, 1, false}});
  EXPECT_EQ(r.predicted, 0);
  EXPECT_EQ(r.predicted_norm, 1);
  EXPECT_FALSE(r.correct);
  EXPECT_TRUE(r.correct_norm);
}

}  // namespace
}  // namespace deepmoe::eval
