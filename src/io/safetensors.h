// The safetensors format: an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data.
// The parser trusts nothing: every offset and size is checked against the file length.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "io/mapped_file.h"

namespace deepmoe {

struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // points into the mapped file (zero copy)
  size_t n_bytes = 0;
  std::string file;  // for error messages
  // Not an HF tensor but a part of one (a GGUF's attn_k_b/attn_v_b, halves of kv_b_proj):
  // loaded, never written out as it is; converters write the HF tensor instead.
  bool derived = false;

  int64_t numel() const;
};

// Parses the header of a safetensors file held in `bytes` (named `file_name` in errors).
// Returned views point into `bytes`. Throws Error on anything malformed.
std::vector<TensorView> parse_safetensors(std::span<const uint8_t> bytes, const std::string& file_name);

struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::span<const uint8_t> data;
};

// Serializes tensors (in the given order) into safetensors bytes.
std::vector<uint8_t> serialize_safetensors(const std::vector<TensorToWrite>& tensors);

struct TensorHeader {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
};

// Streams a safetensors file tensor by tensor (for checkpoints larger than memory) through an
// AtomicFile that finish() commits: the file appears whole or not at all.
class SafetensorsWriter {
 public:
  SafetensorsWriter(const std::string& path, const std::vector<TensorHeader>& tensors);
  // The data of the next tensor, in header order, exactly its size in bytes.
  void write_next(std::span<const uint8_t> data);
  void finish();

 private:
  std::string path_;
  AtomicFile file_;
  std::vector<TensorHeader> tensors_;
  size_t next_ = 0;
};

// All tensors of a HuggingFace model directory: `model.safetensors`, or the shards listed in
// `model.safetensors.index.json`. Files stay mapped while the reader lives.
class CheckpointReader {
 public:
  explicit CheckpointReader(const std::string& model_dir, LoadOptions load = {});
  // Tensors that another format (GGUF) presents under HF names; `file` stays mapped.
  CheckpointReader(std::string source, std::unique_ptr<MappedFile> file, std::map<std::string, TensorView> tensors);

  // nullptr when absent.
  const TensorView* find(const std::string& name) const;
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::string& dir() const { return dir_; }
  const std::vector<std::unique_ptr<MappedFile>>& files() const { return files_; }

 private:
  void add_file(const std::string& path, LoadOptions load);

  std::string dir_;
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::map<std::string, TensorView> tensors_;
};

}  // namespace deepmoe
