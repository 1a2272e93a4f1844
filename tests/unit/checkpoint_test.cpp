// Checkpoints and atomic writes: files appear whole or not at all and are flushed with their
// directory; a resume verifies checksums and the config, and falls back past corrupt checkpoints.
// fsync is interposed below (the test binary's definition wins over libc's for the whole
// program) so the tests can see which directories are flushed and make a flush fail.
#include "train/checkpoint.h"

#include <dlfcn.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "core/error.h"
#include "io/checksum.h"
#include "io/gguf.h"
#include "io/mapped_file.h"
#include "io/safetensors.h"
#include "model/hf_directory.h"
#include "model/random_init.h"
#include "tokenizer/bpe_trainer.h"

namespace {

std::set<std::string> g_synced_directories;  // every directory fsync'd since the last clear()
bool g_fail_file_fsync = false, g_fail_directory_fsync = false;

}  // namespace

extern "C" int fsync(int fd) {
  using Fsync = int (*)(int);
  static const auto real = reinterpret_cast<Fsync>(::dlsym(RTLD_NEXT, "fsync"));
  struct stat info {};
  const bool directory = ::fstat(fd, &info) == 0 && S_ISDIR(info.st_mode);
  if ((directory && g_fail_directory_fsync) || (!directory && g_fail_file_fsync)) {
    errno = EIO;
    return -1;
  }
  if (directory) {
    std::error_code ignored;
    g_synced_directories.insert(std::filesystem::read_symlink("/proc/self/fd/" + std::to_string(fd), ignored).string());
  }
  return real(fd);
}

namespace deepmoe {
namespace {

namespace fs = std::filesystem;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

size_t open_descriptors() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& entry : fs::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

std::span<const uint8_t> bytes_of(const std::string& text) {
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

class AtomicWriteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("deepmoe_checkpoint_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    dir_ = fs::canonical(dir_);
    g_synced_directories.clear();
  }
  void TearDown() override {
    g_fail_file_fsync = g_fail_directory_fsync = false;
    fs::remove_all(dir_);
  }
  fs::path dir_;
};

TEST(Checksum, Xxh64MatchesXxhsum) {
  // Digests printed by `xxhsum -H1` (Debian's xxhash 0.8.1); the lengths cover the 32-byte
  // stripes and each tail (8, 4 and 1 bytes).
  const auto of = [](const std::string& text) { return xxh64(bytes_of(text)); };
  const auto counting = [](size_t n, size_t repeat) {
    std::string text;
    for (size_t r = 0; r < repeat; ++r)
      for (size_t i = 0; i < n; ++i) text.push_back(char(i));
    return text;
  };
  EXPECT_EQ(of(""), 0xef46db3751d8e999ULL);
  EXPECT_EQ(of("abc"), 0x44bc2cf5ad770999ULL);
  EXPECT_EQ(of("Hello, World!"), 0xc49aacf8080fe47fULL);
  EXPECT_EQ(of(counting(37, 1)), 0xd93fa2dfee5c24c9ULL);
  EXPECT_EQ(of(counting(45, 1)), 0x10fdd84d6409abdfULL);
  EXPECT_EQ(of(counting(256, 3)), 0x8e03c838c596036fULL);
}

TEST_F(AtomicWriteTest, AtomicFileNeverFollowsASymlinkAtTheOldTemporaryName) {
  // "config.json.tmp" was the fixed temporary name, opened with O_TRUNC: a symlink planted there
  // had its target overwritten, and the symlink itself was then renamed into place.
  const fs::path path = dir_ / "config.json", victim = dir_ / "victim";
  write_text(victim, "precious");
  fs::create_symlink(victim, dir_ / "config.json.tmp");
  write_file_atomically(path.string(), bytes_of("new"));
  EXPECT_EQ(read_file(victim), "precious");
  EXPECT_FALSE(fs::is_symlink(path));
  EXPECT_EQ(read_file(path), "new");
}

TEST_F(AtomicWriteTest, TwoAtomicFilesOfOnePathDoNotShareATemporary) {
  const fs::path path = dir_ / "out.bin";
  AtomicFile first(path.string()), second(path.string());
  EXPECT_NE(first.temporary_path(), second.temporary_path());
  first.write(bytes_of("aaaa"));
  second.write(bytes_of("bb"));
  first.commit();
  EXPECT_EQ(read_file(path), "aaaa");
  second.commit();
  EXPECT_EQ(read_file(path), "bb");
}

TEST_F(AtomicWriteTest, AtomicFileLeavesNothingBehindWithoutCommit) {
  const fs::path path = dir_ / "out.bin";
  write_text(path, "old");
  {
    AtomicFile file(path.string());
    file.write(bytes_of("half"));
  }
  EXPECT_EQ(read_file(path), "old");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST_F(AtomicWriteTest, AtomicFileClosesItsDescriptorWhenTheFlushFails) {
  const fs::path path = dir_ / "out.bin";
  write_text(path, "old");
  const size_t before = open_descriptors();
  g_fail_file_fsync = true;
  {
    AtomicFile file(path.string());
    file.write(bytes_of("new"));
    EXPECT_THROW(file.commit(), Error);
    EXPECT_EQ(open_descriptors(), before);  // closed by commit itself, not only by the destructor
  }
  EXPECT_EQ(open_descriptors(), before);
  EXPECT_EQ(read_file(path), "old");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST_F(AtomicWriteTest, SyncDirectoryReportsErrors) {
  try {
    sync_directory((dir_ / "missing").string());
    ADD_FAILURE() << "no error for a missing directory";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what();
  }
  g_fail_directory_fsync = true;
  EXPECT_THROW(sync_directory(dir_.string()), Error);
  // A failed directory flush after the rename is an error of the write too.
  EXPECT_THROW(write_file_atomically((dir_ / "x").string(), bytes_of("x")), Error);
}

TEST_F(AtomicWriteTest, EveryAtomicWriterFlushesItsDirectory) {
  const auto flushes = [&](const fs::path& dir, const std::function<void()>& write) {
    g_synced_directories.clear();
    write();
    return g_synced_directories.count(dir.string()) == 1;
  };
  EXPECT_TRUE(flushes(dir_, [&] { write_file_atomically((dir_ / "a.bin").string(), bytes_of("a")); }));
  EXPECT_TRUE(flushes(dir_, [&] {
    SafetensorsWriter writer((dir_ / "b.safetensors").string(), {{"x", DType::F32, {1}}});
    writer.write_next(bytes_of("abcd"));
    writer.finish();
  }));
  EXPECT_TRUE(flushes(dir_, [&] {
    GgufWriter writer;
    writer.add("general.alignment", GgufValue::u32(32));
    writer.write((dir_ / "c.gguf").string());
  }));
  const fs::path hf = dir_ / "hf";
  EXPECT_TRUE(flushes(hf, [&] {
    write_hf_directory(hf.string(), "{}", {{"x", DType::F32, {1}, [] { return std::vector<uint8_t>(4); }}},
                       {"{}", "{}"});
  }));
  const fs::path tokenizer = dir_ / "tokenizer";
  fs::create_directories(tokenizer);
  EXPECT_TRUE(flushes(tokenizer, [&] { write_trained_tokenizer({}, {}, tokenizer.string()); }));
}

// A small model saved as checkpoints under dir_/run, with moments and steps set as if trained.
constexpr const char* kConfig = R"({
  "model_type": "deepseek_v3", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
  "moe_intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "q_lora_rank": 16,
  "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8,
  "n_routed_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
  "n_group": 2, "topk_group": 1)";

class CheckpointTest : public AtomicWriteTest {
 protected:
  // The model of kConfig plus `extra` config fields (e.g. another rope_theta).
  train::Parameters model(const std::string& extra = "") {
    const std::string name = "model" + std::to_string(models_++);
    write_text(dir_ / (name + ".json"), std::string(kConfig) + extra + "}");
    write_random_checkpoint((dir_ / (name + ".json")).string(), (dir_ / name).string(), 7, DType::F32);
    return train::Parameters::load((dir_ / name).string());
  }

  // Saves step `step` with values and moments that depend on `seed`; returns the values saved.
  std::vector<float> save(train::Parameters& p, int64_t step, uint64_t seed, const train::SaveMoment& at_moment = {}) {
    train::Optimizer optimizer(p, {});
    std::mt19937 rng{uint32_t(seed)};
    std::normal_distribution<float> normal;
    for (auto& v : p.values()) v = normal(rng);
    for (auto& v : optimizer.first_moment()) v = normal(rng);
    for (auto& v : optimizer.second_moment()) v = std::abs(normal(rng));
    optimizer.set_steps_taken(step);
    train::save_checkpoint(run_.string(), step, p, optimizer, {{"step", step}, {"optimizer_steps", step}}, 10,
                           at_moment);
    return p.values();
  }

  fs::path checkpoint(int64_t step) const { return run_ / "checkpoints" / ("step-" + std::to_string(step)); }

  // Flips one bit of a float near the end of the file: still a well-formed safetensors file,
  // only the numbers are wrong, as a bad disk or a bad copy leaves it.
  static void corrupt(const fs::path& file) {
    std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
    io.seekg(-3, std::ios::end);
    const char byte = char(io.get() ^ 0x01);
    io.seekp(-3, std::ios::end);
    io.put(byte);
  }

  fs::path run_;
  int models_ = 0;

  void SetUp() override {
    AtomicWriteTest::SetUp();
    run_ = dir_ / "run";
  }
};

TEST_F(CheckpointTest, LoadRestoresWhatWasSaved) {
  train::Parameters p = model();
  const std::vector<float> values = save(p, 2, 1);
  train::Parameters q = model();
  train::Optimizer optimizer(q, {});
  const nlohmann::json state = train::load_checkpoint(checkpoint(2).string(), q, optimizer);
  EXPECT_EQ(q.values(), values);
  EXPECT_EQ(optimizer.steps_taken(), 2);
  EXPECT_EQ(state["step"], 2);
  EXPECT_EQ(state["checksums"]["model.safetensors"], file_checksum((checkpoint(2) / "model.safetensors").string()));
}

// A multi-process save: the moments in three files of one shard each, cut inside tensors. Loaded
// by a rank that holds experts 2-3 only (another layout of the flat buffer), every moment it
// needs is reassembled by name; without one of the files, the load refuses and changes nothing.
TEST_F(CheckpointTest, MomentsShardedOverRanksReassembleInAnotherLayout) {
  train::Parameters p = model();
  train::Optimizer optimizer(p, {});
  std::mt19937 rng{3};
  std::normal_distribution<float> normal;
  for (auto& v : optimizer.first_moment()) v = normal(rng);
  for (auto& v : optimizer.second_moment()) v = std::abs(normal(rng));
  const size_t total = p.values().size(), a = total / 3 + 5, b = 2 * total / 3 + 11;
  const std::vector<dist::Shard> shards = {{0, a}, {a, b}, {b, total}};
  const auto save_files = [&](int64_t step, const std::vector<int>& which) {
    train::begin_checkpoint(run_.string(), step);
    const std::string dir = train::partial_checkpoint_dir(run_.string(), step);
    p.save(dir);
    std::vector<std::string> files = {"model.safetensors", "config.json"}, optimizer_files;
    for (const int r : which) {
      const dist::Shard s = shards[size_t(r)];
      const train::MomentShard piece{s, std::span<const float>(optimizer.first_moment()).subspan(s.begin, s.size()),
                                     std::span<const float>(optimizer.second_moment()).subspan(s.begin, s.size())};
      const std::string name = "optimizer-" + std::to_string(r) + ".safetensors";
      train::write_moments((fs::path(dir) / name).string(), p, {&piece, 1});
      files.push_back(name);
      optimizer_files.push_back(name);
    }
    train::finish_checkpoint(run_.string(), step,
                             {{"step", step}, {"optimizer_steps", step}, {"optimizer_files", optimizer_files}},
                             train::checksums_of(dir, files), 10);
  };
  save_files(2, {0, 1, 2});
  save_files(3, {0, 2});  // the middle shard's file left out

  train::Parameters q = train::Parameters::load((dir_ / "model0").string(), {2, 2});
  ASSERT_LT(q.values().size(), p.values().size());
  train::Optimizer restored(q, {});
  train::load_checkpoint(checkpoint(2).string(), q, restored);
  for (const train::ParameterTensor& t : q.tensors()) {
    const train::ParameterTensor* whole = p.find(t.name);
    ASSERT_NE(whole, nullptr) << t.name;
    for (size_t i = 0; i < t.size; ++i) {
      ASSERT_EQ(restored.first_moment()[t.offset + i], optimizer.first_moment()[whole->offset + i]) << t.name;
      ASSERT_EQ(restored.second_moment()[t.offset + i], optimizer.second_moment()[whole->offset + i]) << t.name;
      ASSERT_EQ(q.values()[t.offset + i], p.values()[whole->offset + i]) << t.name;
    }
  }
  EXPECT_EQ(restored.steps_taken(), 2);

  const std::vector<float> before = restored.first_moment();
  try {
    train::load_checkpoint(checkpoint(3).string(), q, restored);
    ADD_FAILURE() << "moments with a shard missing loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is missing or malformed"), std::string::npos) << e.what();
  }
  EXPECT_EQ(restored.first_moment(), before);
}

TEST_F(CheckpointTest, LoadRefusesACorruptModelFileUnderAValidStateJson) {
  train::Parameters p = model();
  save(p, 2, 1);
  corrupt(checkpoint(2) / "model.safetensors");
  train::Parameters q = model();
  const std::vector<float> before = q.values();
  train::Optimizer optimizer(q, {});
  try {
    train::load_checkpoint(checkpoint(2).string(), q, optimizer);
    ADD_FAILURE() << "a corrupt model.safetensors loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("step-2/model.safetensors: corrupt"), std::string::npos) << e.what();
  }
  EXPECT_EQ(q.values(), before);  // untouched
}

TEST_F(CheckpointTest, LoadRefusesAnotherConfigWithTheSameParameterCount) {
  train::Parameters p = model();
  save(p, 2, 1);
  train::Parameters other = model(R"(, "rope_theta": 50000.0)");
  ASSERT_EQ(other.values().size(), p.values().size());
  train::Optimizer optimizer(other, {});
  try {
    train::load_checkpoint(checkpoint(2).string(), other, optimizer);
    ADD_FAILURE() << "a checkpoint of another config loaded";
  } catch (const train::ConfigMismatch& e) {
    EXPECT_NE(std::string(e.what()).find("rope_theta 10000, this run's has 50000"), std::string::npos) << e.what();
  }
}

TEST_F(CheckpointTest, ResumeFallsBackToTheNewestGoodCheckpoint) {
  train::Parameters p = model();
  const std::vector<float> good = save(p, 2, 1);
  save(p, 4, 2);
  save(p, 6, 3);
  corrupt(checkpoint(6) / "model.safetensors");
  fs::resize_file(checkpoint(4) / "optimizer.safetensors", 100);
  train::Parameters q = model();
  train::Optimizer optimizer(q, {});
  const train::ResumedCheckpoint resumed = train::resume_newest_good(run_.string(), q, optimizer);
  EXPECT_EQ(resumed.dir, checkpoint(2).string());
  EXPECT_EQ(resumed.state["step"], 2);
  EXPECT_EQ(q.values(), good);
  ASSERT_EQ(resumed.skipped.size(), 2u);
  EXPECT_EQ(resumed.skipped[0].first, checkpoint(6).string());
  EXPECT_NE(resumed.skipped[0].second.find("model.safetensors: corrupt"), std::string::npos);
  EXPECT_EQ(resumed.skipped[1].first, checkpoint(4).string());
  EXPECT_NE(resumed.skipped[1].second.find("optimizer.safetensors: corrupt"), std::string::npos);
}

TEST_F(CheckpointTest, ResumeFailsInOneLineWhenNoCheckpointVerifies) {
  train::Parameters p = model();
  save(p, 2, 1);
  corrupt(checkpoint(2) / "model.safetensors");
  train::Optimizer optimizer(p, {});
  try {
    train::resume_newest_good(run_.string(), p, optimizer);
    ADD_FAILURE() << "resumed from a corrupt checkpoint";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("no usable checkpoint"), std::string::npos) << what;
    EXPECT_NE(what.find("step-2/model.safetensors"), std::string::npos) << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
  }
}

TEST_F(CheckpointTest, ResumeStopsAtAnotherConfigInsteadOfFallingBack) {
  train::Parameters p = model();
  save(p, 2, 1);
  save(p, 4, 2);
  train::Parameters other = model(R"(, "routed_scaling_factor": 2.0)");
  train::Optimizer optimizer(other, {});
  EXPECT_THROW(train::resume_newest_good(run_.string(), other, optimizer), train::ConfigMismatch);
}

TEST_F(CheckpointTest, SavingAStepAgainKeepsACompleteCheckpointAtEveryMoment) {
  // A throw from the hook stands in for a crash at that moment of the second save of step 2.
  train::Parameters p = model();
  const std::vector<float> first = save(p, 2, 1);
  const auto loads = [&](const std::vector<float>& expected) {
    train::Parameters q = model();
    train::Optimizer optimizer(q, {});
    train::load_checkpoint(checkpoint(2).string(), q, optimizer);
    return q.values() == expected;
  };
  for (const std::string moment : {"before swap", "after swap"}) {
    const auto crash = [&](const std::string& now) {
      if (now == moment) throw Error("crash " + moment);
    };
    EXPECT_THROW(save(p, 2, 2, crash), Error) << moment;
    EXPECT_TRUE(loads(moment == "before swap" ? first : p.values())) << moment;
  }
  const std::vector<float> last = save(p, 2, 3);
  EXPECT_TRUE(loads(last));
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(run_ / "checkpoints")) names.push_back(entry.path().filename());
  EXPECT_EQ(names, std::vector<std::string>{"step-2"});
}

}  // namespace
}  // namespace deepmoe
