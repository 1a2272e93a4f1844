#include "model/random_init.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "core/error.h"
#include "io/mapped_file.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/tensor_list.h"

namespace deepmoe {

namespace {

struct Distribution {
  float mean, std_dev;
};
Distribution distribution_of(const TensorInfo& t) {
  const float std_dev = t.init == Init::Projection  ? float(1.0 / std::sqrt(double(t.shape.back())))
                        : t.init == Init::Embedding ? 1.0f
                                                    : 0.1f;
  return {t.init == Init::Norm ? 1.0f : 0.0f, std_dev};
}

}  // namespace

void fill_random(const TensorInfo& t, uint64_t seed, float* out) {
  uint64_t hash = 1469598103934665603ull;  // FNV-1a of the name, so the seed is the same everywhere
  for (const char ch : t.hf_name) hash = (hash ^ uint8_t(ch)) * 1099511628211ull;
  std::mt19937_64 rng(seed ^ hash);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const Distribution d = distribution_of(t);
  for (int64_t i = 0; i < t.numel(); ++i) out[i] = d.mean + d.std_dev * normal(rng);
}

void write_random_checkpoint(const std::string& config_path, const std::string& out_dir, uint64_t seed, DType dtype) {
  if (dtype != DType::F32 && dtype != DType::BF16) fail("init: --dtype must be f32 or bf16");
  const std::string config_text = read_text_file(config_path);
  const Config config = load_config(config_path);
  std::filesystem::create_directories(out_dir);

  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const std::vector<TensorInfo> tensors = tensor_list(config);
  std::vector<TensorHeader> headers;
  for (const TensorInfo& t : tensors) headers.push_back({t.hf_name, dtype, t.shape});
  SafetensorsWriter writer((std::filesystem::path(out_dir) / "model.safetensors").string(), headers);
  std::vector<uint8_t> bytes;
  for (const TensorInfo& t : tensors) {  // in list order: the values a seed gives stay put
    const int64_t count = t.numel();
    const auto [mean, std_dev] = distribution_of(t);
    bytes.resize(size_t(count) * dtype_size(dtype));
    for (int64_t i = 0; i < count; ++i) {
      const float value = mean + std_dev * normal(rng);
      if (dtype == DType::F32) {
        std::memcpy(bytes.data() + i * 4, &value, 4);
      } else {
        const uint16_t bits = f32_to_bf16(value);
        std::memcpy(bytes.data() + i * 2, &bits, 2);
      }
    }
    writer.write_next(bytes);
  }
  writer.finish();
  const std::string config_out = (std::filesystem::path(out_dir) / "config.json").string();
  write_file_atomically(config_out, {reinterpret_cast<const uint8_t*>(config_text.data()), config_text.size()});
}

}  // namespace deepmoe
