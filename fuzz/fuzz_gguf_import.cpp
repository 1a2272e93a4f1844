// A .gguf given to any command that loads a model: the metadata mapped to a config (config_json
// and parse_config) and the tensors presented under HF names must either give views that lie
// inside the file or throw Error. import_gguf maps a path, so each input is written to a file.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "core/error.h"
#include "model/gguf_import.h"

namespace {

// One file per process, removed when the fuzzer exits.
struct ScratchFile {
  std::string path = "/tmp/deepmoe_fuzz_gguf_import." + std::to_string(getpid()) + ".gguf";
  ~ScratchFile() { std::remove(path.c_str()); }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const ScratchFile scratch;
  const std::string& path = scratch.path;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  const bool written = std::fwrite(data, 1, size, f) == size;
  if (std::fclose(f) != 0 || !written) return 0;
  try {
    const deepmoe::GgufCheckpoint checkpoint = deepmoe::import_gguf(path);
    (void)checkpoint.config.softmax_scale();
    for (const auto& [name, view] : checkpoint.reader->tensors()) {
      volatile uint8_t sink = 0;
      if (view.n_bytes) sink = view.data[view.n_bytes - 1];  // past the mapping: a crash
      (void)sink;
    }
  } catch (const deepmoe::Error&) {
  }
  return 0;
}
