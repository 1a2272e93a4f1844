// The task formats beyond MMLU: HellaSwag from llama-perplexity's six-line text (choices as the
// endings after " "; a lost line caught where it shifts a gold index), GSM8K's prompts for lm-eval's gsm8k and
// gsm8k_cot against strings written out by hand, and the answer filters and exact_match worked by
// hand through Python's regex semantics (first or last match, backtracking, `$` before a final
// newline, split('####') left to right).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "eval/backend.h"
#include "eval/gsm8k.h"
#include "eval/hellaswag.h"

namespace deepmoe::eval {
namespace {

namespace fs = std::filesystem;

class TaskFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("deepmoe_eval_tasks_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name, std::ios::binary) << text;
    return (dir_ / name).string();
  }
  // The Error's message, or a test failure when `load` throws none.
  template <typename Load>
  std::string error_of(Load&& load) {
    try {
      load();
    } catch (const Error& e) {
      return e.what();
    }
    ADD_FAILURE() << "no error";
    return "";
  }
  fs::path dir_;
};

using HellaSwagTest = TaskFileTest;

TEST_F(HellaSwagTest, SixLinesPerTaskWithSpacedEndings) {
  const std::string path = write("hs.txt",
                                 "Baking: A cook cracks two eggs into a bowl. She\n"
                                 "2\n"
                                 "paints the bowl blue.\n"
                                 "throws the bowl at the moon.\n"
                                 "whisks them with a fork.\n"
                                 "sings to the eggs loudly.\r\n"
                                 "Gardening: A man kneels by a flower bed. He\r\n"
                                 "0\r\n"
                                 "pulls out a weed.\r\n"
                                 "eats the soil.\r\n"
                                 "plants a bicycle.\r\n"
                                 "reads the flowers a story.\r\n"
                                 "\n\n");
  const auto tasks = load_hellaswag(path);
  ASSERT_EQ(tasks.size(), 2u);
  EXPECT_EQ(tasks[0].context, "Baking: A cook cracks two eggs into a bowl. She");
  EXPECT_EQ(tasks[0].choices, (std::vector<std::string>{"paints the bowl blue.", "throws the bowl at the moon.",
                                                        "whisks them with a fork.", "sings to the eggs loudly."}));
  EXPECT_EQ(tasks[0].delimiter, " ");
  EXPECT_EQ(tasks[0].gold, 2);
  EXPECT_EQ(tasks[1].context, "Gardening: A man kneels by a flower bed. He");  // CRLF: no '\r' kept
  EXPECT_EQ(tasks[1].choices[3], "reads the flowers a story.");
  EXPECT_EQ(tasks[1].gold, 0);
}

TEST_F(HellaSwagTest, BadGoldIndexShortFileAndEmptyFileAreErrorsNamingTheLine) {
  const std::string task = "ctx\n1\na\nb\nc\nd\n";
  std::string e = error_of([&] { load_hellaswag(write("gold.txt", task + "ctx\n4\na\nb\nc\nd\n")); });
  EXPECT_NE(e.find("gold.txt:8: the gold ending's index must be 0, 1, 2 or 3, found '4'"), std::string::npos) << e;
  // A line lost mid-file: the next task's context lands among the endings, its index's line is
  // read as the second task's context, and its first ending (line 8) as an index.
  e = error_of([&] { load_hellaswag(write("lost.txt", "ctx\n1\na\nb\nc\n" + task + task)); });
  EXPECT_NE(e.find("lost.txt:8: the gold ending's index must be"), std::string::npos) << e;
  e = error_of([&] { load_hellaswag(write("short.txt", task + "ctx\n0\na\n")); });
  EXPECT_NE(e.find("short.txt:9: the file ends mid-task (9 lines"), std::string::npos) << e;
  e = error_of([&] { load_hellaswag(write("empty.txt", "\r\n\n")); });
  EXPECT_NE(e.find("empty.txt: no tasks"), std::string::npos) << e;
  EXPECT_THROW(load_hellaswag((dir_ / "missing.txt").string()), Error);
}

// Invented problems in GSM8K's shape (a worked answer ending "#### N").
const Problem kAnn{"Ann has 2 cups and buys 3 more. How many cups does she have?", "2 + 3 = <<2+3=5>>5\n#### 5"};
const Problem kBo{"Bo reads 4 pages a day for 2 days. How many pages?", "4 * 2 = <<4*2=8>>8\n#### 8"};
const Problem kCy{"Cy has 10 pens and loses 1. How many are left?", "10 - 1 = 9\n#### 9"};

TEST(Gsm8k, PlainPromptIsQuestionAnswerWithWholeAnswersAsTargets) {
  EXPECT_EQ(gsm8k_prompt(Gsm8kVariant::Plain, {kAnn, kBo}, kCy),
            "Question: Ann has 2 cups and buys 3 more. How many cups does she have?\n"
            "Answer: 2 + 3 = <<2+3=5>>5\n#### 5\n\n"
            "Question: Bo reads 4 pages a day for 2 days. How many pages?\n"
            "Answer: 4 * 2 = <<4*2=8>>8\n#### 8\n\n"
            "Question: Cy has 10 pens and loses 1. How many are left?\nAnswer:");
  EXPECT_EQ(gsm8k_prompt(Gsm8kVariant::Plain, {}, kCy),
            "Question: Cy has 10 pens and loses 1. How many are left?\nAnswer:");
}

TEST(Gsm8k, CotPromptIsQAWithTargetsAfterTheLastHashes) {
  // A chain-of-thought row (no "####") is its own target, stripped; a train row gives its number.
  const Problem chain{kAnn.question, "  Ann had 2 cups. 2 + 3 = 5. The answer is 5.\n"};
  EXPECT_EQ(gsm8k_prompt(Gsm8kVariant::Cot, {chain, kBo}, kCy),
            "Q: Ann has 2 cups and buys 3 more. How many cups does she have?\n"
            "A: Ann had 2 cups. 2 + 3 = 5. The answer is 5.\n\n"
            "Q: Bo reads 4 pages a day for 2 days. How many pages?\n"
            "A: 8\n\n"
            "Q: Cy has 10 pens and loses 1. How many are left?\nA:");
  // lm-eval's build_qa_turn: a shot whose target is empty adds no delimiter at all.
  EXPECT_EQ(gsm8k_prompt(Gsm8kVariant::Cot, {{"q1", "sum ####"}}, {"q2", "x"}), "Q: q1\nA:Q: q2\nA:");
}

TEST(Gsm8k, TargetsSplitOnHashesLeftToRightAsPythonDoes) {
  EXPECT_EQ(gsm8k_target(Gsm8kVariant::Plain, kAnn.answer), kAnn.answer);
  EXPECT_EQ(gsm8k_target(Gsm8kVariant::Cot, kAnn.answer), "5");
  EXPECT_EQ(gsm8k_target(Gsm8kVariant::Cot, "a #### 1 #### 2\u00a0\n"), "2");  // the last; Unicode space stripped
  EXPECT_EQ(gsm8k_target(Gsm8kVariant::Cot, "x #####5"), "#5");                // "####" then "#5", not "x #" "5"
}

TEST(Gsm8k, VariantsDefaults) {
  EXPECT_EQ(parse_gsm8k_variant("gsm8k"), Gsm8kVariant::Plain);
  EXPECT_EQ(parse_gsm8k_variant("gsm8k-cot"), Gsm8kVariant::Cot);
  EXPECT_EQ(parse_gsm8k_variant("gsm8k_cot"), Gsm8kVariant::Cot);
  EXPECT_THROW(parse_gsm8k_variant("gsm8k-cot-llama"), Error);
  EXPECT_EQ(gsm8k_default_fewshot(Gsm8kVariant::Plain), 5);
  EXPECT_EQ(gsm8k_default_fewshot(Gsm8kVariant::Cot), 8);
  EXPECT_EQ(gsm8k_max_gen_toks(Gsm8kVariant::Plain), 256);
  EXPECT_EQ(gsm8k_max_gen_toks(Gsm8kVariant::Cot), 256);
  EXPECT_EQ(gsm8k_stop_sequences(Gsm8kVariant::Plain), (std::vector<std::string>{"Question:", "</s>", "<|im_end|>"}));
  EXPECT_EQ(gsm8k_stop_sequences(Gsm8kVariant::Cot), (std::vector<std::string>{"Q:", "</s>", "<|im_end|>"}));
  // The generation ends at the earliest stop, whichever is listed first.
  EXPECT_EQ(
      cut_at_stop_sequences(" 3 + 4 = 7\n#### 7\n\nQuestion: next</s>", gsm8k_stop_sequences(Gsm8kVariant::Plain)),
      " 3 + 4 = 7\n#### 7\n\n");
  EXPECT_EQ(cut_at_stop_sequences("The answer is 7.</s>Q: more", gsm8k_stop_sequences(Gsm8kVariant::Cot)),
            "The answer is 7.");
  EXPECT_EQ(cut_at_stop_sequences("no stop", {"", "Q:"}), "no stop");
}

TEST(Gsm8k, StrictMatchTakesTheFirstNumberAfterItsMarker) {
  EXPECT_EQ(extract_strict(Gsm8kVariant::Plain, " 600 + 634 = 1,234\n#### 1,234\n#### 99"), "1,234");
  EXPECT_TRUE(exact_match("1,234", "600 + 634 = <<600+634=1234>>1234\n#### 1234"));
  EXPECT_EQ(extract_strict(Gsm8kVariant::Plain, "It fell 3 degrees.\n#### -3"), "-3");
  EXPECT_TRUE(exact_match("-3", "#### -3"));
  EXPECT_FALSE(exact_match("3", "#### -3"));
  EXPECT_EQ(extract_strict(Gsm8kVariant::Plain, "#### $5"), kInvalidAnswer);  // "$" is not in the class
  EXPECT_EQ(extract_strict(Gsm8kVariant::Plain, "The answer is 5."), kInvalidAnswer);
  EXPECT_EQ(extract_strict(Gsm8kVariant::Cot, "3 + 39 = 42. The answer is 42."), "42");
  EXPECT_EQ(extract_strict(Gsm8kVariant::Cot, "The answer is 7.\nThe answer is 9."), "7");
  EXPECT_EQ(extract_strict(Gsm8kVariant::Cot, "The answer is -0.5!"), "-0.5");
  // The pattern's last "." is any character: at the very end it takes the number's last digit.
  EXPECT_EQ(extract_strict(Gsm8kVariant::Cot, "The answer is 42"), "4");
  // ...but not a newline.
  EXPECT_EQ(extract_strict(Gsm8kVariant::Cot, "The answer is 6\n"), kInvalidAnswer);
  EXPECT_EQ(extract_strict(Gsm8kVariant::Cot, "I do not know."), kInvalidAnswer);
}

TEST(Gsm8k, FlexibleExtractTakesTheLastNumber) {
  EXPECT_EQ(extract_flexible("3 apples and 17 pears"), "17");
  EXPECT_EQ(extract_flexible("so she pays $5."), "$5.");
  EXPECT_TRUE(exact_match("$5.", "5 * 1 = 5\n#### 5"));
  EXPECT_EQ(extract_flexible("from 4 down to -12 degrees"), "-12");
  EXPECT_EQ(extract_flexible("just 7"), "7");  // one digit: the second alternative
  EXPECT_EQ(extract_flexible("1,000 and then 2,500.5, done"), "2,500.5,");
  EXPECT_TRUE(exact_match("2,500.5,", "#### 2500.5"));
  EXPECT_EQ(extract_flexible("no digits here"), kInvalidAnswer);
  EXPECT_EQ(extract_flexible(""), kInvalidAnswer);
}

TEST(Gsm8k, ExactMatchRemovesCommasDollarsTheWorkingAndOneFinalDot) {
  EXPECT_TRUE(exact_match("17.", "#### 17"));
  EXPECT_FALSE(exact_match("17..", "#### 17"));     // only the last "." goes
  EXPECT_TRUE(exact_match("5.\n", "5\n"));          // Python's `$` also matches before a final newline
  EXPECT_TRUE(exact_match("7", "#### 3\n#### 7"));  // the working up to the last "#### "
  EXPECT_FALSE(exact_match("7", "#### 7 "));        // nothing strips the reference's trailing space
  EXPECT_FALSE(exact_match("1.5", "#### 15"));
  // "[invalid]" matches no number; only a reference that is itself "[invalid]", in any case.
  EXPECT_FALSE(exact_match(extract_strict(Gsm8kVariant::Cot, "no answer"), gsm8k_target(Gsm8kVariant::Cot, "#### 0")));
  EXPECT_FALSE(exact_match(kInvalidAnswer, "invalid"));
  EXPECT_TRUE(exact_match("[INVALID]", kInvalidAnswer));
}

using Gsm8kJsonlTest = TaskFileTest;

TEST_F(Gsm8kJsonlTest, ProblemsLoadAndEveryMalformedLineIsNamed) {
  const std::string good = R"({"question": "q?", "answer": "a\n#### 1", "id": 7})";
  const auto problems = load_gsm8k_jsonl(write("ok.jsonl", good + "\n\n" + good + "\r\n"));
  ASSERT_EQ(problems.size(), 2u);
  EXPECT_EQ(problems[0].question, "q?");
  EXPECT_EQ(problems[1].answer, "a\n#### 1");
  const std::pair<const char*, const char*> cases[] = {
      {R"({"question": "q?"})", "'answer' must be a non-empty string"},
      {R"({"question": "q?", "answer": 5})", "'answer' must be a non-empty string"},
      {R"({"question": "", "answer": "5"})", "'question' must be a non-empty string"},
      {R"(["q?", "5"])", "not a JSON object"},
      {R"({"question": "q?", "answer": )", "not a JSON object"},
  };
  for (const auto& [line, why] : cases) {
    const std::string text = good + "\n" + line + "\n";  // clang before 16 cannot capture a structured binding
    const std::string e = error_of([&] { load_gsm8k_jsonl(write("bad.jsonl", text)); });
    EXPECT_NE(e.find("bad.jsonl:2: "), std::string::npos) << e;
    EXPECT_NE(e.find(why), std::string::npos) << e;
  }
  const std::string e = error_of([&] { load_gsm8k_jsonl(write("empty.jsonl", "\n \n")); });
  EXPECT_NE(e.find("empty.jsonl: no problems"), std::string::npos) << e;
}

}  // namespace
}  // namespace deepmoe::eval
