// GGUF, llama.cpp's file format (version 2 and 3): "GGUF", u32 version, u64 tensor count, u64
// key/value count, the key/values, the tensor infos (name, dims innermost first, ggml type,
// offset), then the tensor data from an aligned start. The reader trusts nothing: every count,
// length, offset and shape is checked against the file's size with overflow-safe arithmetic,
// and anything malformed is one Error naming the file and what is wrong.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace deepmoe {

enum class GgufValueType : uint32_t {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  Bool = 7,
  String = 8,
  Array = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
};

// One metadata value. Scalars keep their on-disk type (llama.cpp checks types exactly), arrays
// their element type; numbers are held widened, except arrays of one-byte elements (a file must
// not make us hold 8 bytes for each of its bytes).
struct GgufValue {
  GgufValueType type = GgufValueType::U32;
  GgufValueType element_type = GgufValueType::U32;  // arrays only
  int64_t integer = 0;  // every integer type (a u64 above INT64_MAX wraps negative: out of range)
  double float_value = 0;
  bool bool_value = false;
  std::string string_value;
  std::vector<int64_t> ints;         // integer arrays of 2- to 8-byte elements
  std::vector<uint8_t> bytes;        // u8, i8 (two's complement) and bool (0 or 1) arrays, as compact as on disk
  std::vector<double> floats;        // f32 / f64 arrays
  std::vector<std::string> strings;  // string arrays

  static GgufValue u32(uint32_t v);
  static GgufValue i32(int32_t v);
  static GgufValue f32(float v);
  static GgufValue boolean(bool v);
  static GgufValue string(std::string v);
  static GgufValue string_array(std::vector<std::string> v);
  static GgufValue i32_array(std::vector<int64_t> v);
};

// ggml tensor types this engine reads or writes.
enum class GgmlType : uint32_t { F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8, BF16 = 30 };
const char* ggml_type_name(GgmlType type);
// Values per block and bytes per block (1 and the element size for plain types).
int64_t ggml_block_values(GgmlType type);
int64_t ggml_block_bytes(GgmlType type);

struct GgufTensor {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<int64_t> dims;  // ggml order: dims[0] is the contiguous (innermost) one
  const uint8_t* data = nullptr;
  size_t n_bytes = 0;
  int64_t numel() const;
};

struct GgufFile {
  uint32_t version = 3;
  uint32_t alignment = 32;
  std::map<std::string, GgufValue> metadata;
  std::vector<GgufTensor> tensors;  // in file order; data points into the parsed bytes

  const GgufValue* find(const std::string& key) const;
  const GgufTensor* find_tensor(const std::string& name) const;
  // Typed lookups that throw Error naming the key (and the file) when absent or of another type.
  uint32_t get_u32(const std::string& key) const;
  float get_f32(const std::string& key) const;
  std::string get_string(const std::string& key) const;
  std::string file;  // for error messages
};

// Parses GGUF bytes (named `file_name` in errors). Tensor data stay in `bytes` (zero copy).
GgufFile parse_gguf(std::span<const uint8_t> bytes, const std::string& file_name);

// Writes a GGUF file: metadata in insertion order, tensors at aligned, sequential offsets (as
// llama.cpp requires). Tensor bytes are produced one tensor at a time while writing, so a model
// larger than memory converts; the file is written under a temporary name, flushed and renamed.
class GgufWriter {
 public:
  using Producer = std::function<std::vector<uint8_t>()>;
  explicit GgufWriter(uint32_t alignment = 32);
  void add(const std::string& key, GgufValue value);
  // dims in ggml order; the producer must return exactly the bytes the type and dims need.
  void add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> dims, Producer produce);
  void add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> dims, std::vector<uint8_t> data);
  std::vector<uint8_t> serialize() const;
  void write(const std::string& path) const;

 private:
  struct Pending {
    std::string name;
    GgmlType type;
    std::vector<int64_t> dims;
    size_t n_bytes;
    Producer produce;
  };
  std::vector<uint8_t> header() const;  // everything before the data, padded to the alignment
  std::vector<uint8_t> tensor_bytes(const Pending& t) const;
  uint32_t alignment_;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<Pending> tensors_;
};

}  // namespace deepmoe
