#include "io/gguf.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <set>

#include "core/error.h"
#include "io/mapped_file.h"

namespace deepmoe {

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read little-endian
constexpr uint64_t kMaxElements = uint64_t(1) << 48;

bool is_valid_value_type(uint32_t t) { return t <= uint32_t(GgufValueType::F64); }

// Smallest encoding of one value of the type (bounds counts before anything is allocated).
uint64_t min_value_bytes(GgufValueType t) {
  switch (t) {
    case GgufValueType::U8:
    case GgufValueType::I8:
    case GgufValueType::Bool: return 1;
    case GgufValueType::U16:
    case GgufValueType::I16: return 2;
    case GgufValueType::U32:
    case GgufValueType::I32:
    case GgufValueType::F32: return 4;
    case GgufValueType::U64:
    case GgufValueType::I64:
    case GgufValueType::F64:
    case GgufValueType::String: return 8;
    case GgufValueType::Array: return 12;
  }
  return 1;
}

class Cursor {
 public:
  Cursor(std::span<const uint8_t> bytes, const std::string& file) : bytes_(bytes), file_(file) {}
  size_t offset() const { return offset_; }
  size_t remaining() const { return bytes_.size() - offset_; }

  const uint8_t* take(uint64_t n, const std::string& what) {
    if (n > remaining())
      fail("{}: truncated: {} needs {} bytes at offset {}, the file has {} left", file_, what, n, offset_, remaining());
    const uint8_t* p = bytes_.data() + offset_;
    offset_ += size_t(n);
    return p;
  }
  template <typename T>
  T read(const std::string& what) {
    T value;
    std::memcpy(&value, take(sizeof(T), what), sizeof(T));  // little-endian hosts only (x86-64)
    return value;
  }
  std::string string(const std::string& what) {
    const uint64_t length = read<uint64_t>(what + " length");
    const uint8_t* p = take(length, what);
    return {reinterpret_cast<const char*>(p), size_t(length)};
  }

 private:
  std::span<const uint8_t> bytes_;
  const std::string& file_;
  size_t offset_ = 0;
};

void read_scalar(Cursor& in, GgufValueType type, GgufValue& v, const std::string& what) {
  switch (type) {
    case GgufValueType::U8: v.integer = in.read<uint8_t>(what); break;
    case GgufValueType::U16: v.integer = in.read<uint16_t>(what); break;
    case GgufValueType::U32: v.integer = in.read<uint32_t>(what); break;
    case GgufValueType::U64: v.integer = int64_t(in.read<uint64_t>(what)); break;
    case GgufValueType::I8: v.integer = in.read<int8_t>(what); break;
    case GgufValueType::I16: v.integer = in.read<int16_t>(what); break;
    case GgufValueType::I32: v.integer = in.read<int32_t>(what); break;
    case GgufValueType::I64: v.integer = in.read<int64_t>(what); break;
    case GgufValueType::F32: v.float_value = in.read<float>(what); break;
    case GgufValueType::F64: v.float_value = in.read<double>(what); break;
    case GgufValueType::Bool: v.bool_value = in.read<uint8_t>(what) != 0; break;
    case GgufValueType::String: v.string_value = in.string(what); break;
    case GgufValueType::Array: break;  // handled by the caller
  }
}

GgufValue read_value(Cursor& in, const std::string& file, const std::string& key) {
  GgufValue v;
  const uint32_t type = in.read<uint32_t>("type of " + key);
  if (!is_valid_value_type(type)) fail("{}: key {}: unknown value type {}", file, key, type);
  v.type = GgufValueType(type);
  if (v.type != GgufValueType::Array) {
    read_scalar(in, v.type, v, key);
    return v;
  }
  const uint32_t element = in.read<uint32_t>("element type of " + key);
  if (!is_valid_value_type(element)) fail("{}: key {}: unknown array element type {}", file, key, element);
  v.element_type = GgufValueType(element);
  if (v.element_type == GgufValueType::Array) fail("{}: key {}: arrays of arrays are not supported", file, key);
  const uint64_t count = in.read<uint64_t>("length of " + key);
  if (count > in.remaining() / min_value_bytes(v.element_type))
    fail("{}: key {}: array of {} elements does not fit in the file", file, key, count);
  // What a file can make us hold is bounded by its size: one-byte elements stay one byte, and
  // no vector grows by doubling past the count (a string array still takes up to 4x its bytes,
  // 32 per 8-byte empty string).
  switch (v.element_type) {
    case GgufValueType::U8:
    case GgufValueType::I8:
    case GgufValueType::Bool: {
      const uint8_t* p = in.take(count, key);
      v.bytes.assign(p, p + count);
      if (v.element_type == GgufValueType::Bool)
        for (uint8_t& b : v.bytes) b = b != 0;
      return v;
    }
    case GgufValueType::String: v.strings.reserve(size_t(count)); break;
    case GgufValueType::F32:
    case GgufValueType::F64: v.floats.reserve(size_t(count)); break;
    default: v.ints.reserve(size_t(count)); break;
  }
  for (uint64_t i = 0; i < count; ++i) {
    GgufValue e;
    read_scalar(in, v.element_type, e, key);
    switch (v.element_type) {
      case GgufValueType::String: v.strings.push_back(std::move(e.string_value)); break;
      case GgufValueType::F32:
      case GgufValueType::F64: v.floats.push_back(e.float_value); break;
      default: v.ints.push_back(e.integer); break;
    }
  }
  return v;
}

uint64_t align_up(uint64_t v, uint64_t alignment) { return (v + alignment - 1) / alignment * alignment; }

bool known_ggml_type(uint32_t t) {
  switch (GgmlType(t)) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::Q4_0:
    case GgmlType::Q8_0:
    case GgmlType::BF16: return true;
  }
  return false;
}

void write_raw(std::vector<uint8_t>& out, const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  out.insert(out.end(), b, b + n);
}
template <typename T>
void put(std::vector<uint8_t>& out, T v) {
  write_raw(out, &v, sizeof(T));
}
void put_string(std::vector<uint8_t>& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  write_raw(out, s.data(), s.size());
}

bool is_byte_type(GgufValueType t) {
  return t == GgufValueType::U8 || t == GgufValueType::I8 || t == GgufValueType::Bool;
}

void put_scalar(std::vector<uint8_t>& out, GgufValueType type, const GgufValue& v, size_t index, bool element) {
  const int64_t i = !element                ? v.integer
                    : is_byte_type(type)    ? (index < v.bytes.size() ? int64_t(int8_t(v.bytes[index])) : 0)
                    : index < v.ints.size() ? v.ints[index]
                                            : 0;
  const uint64_t u = uint64_t(i);
  const double f = element ? (index < v.floats.size() ? v.floats[index] : 0) : v.float_value;
  switch (type) {
    case GgufValueType::U8: put<uint8_t>(out, uint8_t(u)); break;
    case GgufValueType::U16: put<uint16_t>(out, uint16_t(u)); break;
    case GgufValueType::U32: put<uint32_t>(out, uint32_t(u)); break;
    case GgufValueType::U64: put<uint64_t>(out, u); break;
    case GgufValueType::I8: put<int8_t>(out, int8_t(i)); break;
    case GgufValueType::I16: put<int16_t>(out, int16_t(i)); break;
    case GgufValueType::I32: put<int32_t>(out, int32_t(i)); break;
    case GgufValueType::I64: put<int64_t>(out, i); break;
    case GgufValueType::F32: put<float>(out, float(f)); break;
    case GgufValueType::F64: put<double>(out, f); break;
    case GgufValueType::Bool: put<uint8_t>(out, element ? uint8_t(i != 0) : uint8_t(v.bool_value)); break;
    case GgufValueType::String: put_string(out, element ? v.strings[index] : v.string_value); break;
    case GgufValueType::Array: break;
  }
}

}  // namespace

namespace {
GgufValue of_type(GgufValueType type) {
  GgufValue g;
  g.type = type;
  return g;
}
}  // namespace

GgufValue GgufValue::u32(uint32_t v) {
  GgufValue g = of_type(GgufValueType::U32);
  g.integer = v;
  return g;
}
GgufValue GgufValue::i32(int32_t v) {
  GgufValue g = of_type(GgufValueType::I32);
  g.integer = v;
  return g;
}
GgufValue GgufValue::f32(float v) {
  GgufValue g = of_type(GgufValueType::F32);
  g.float_value = v;
  return g;
}
GgufValue GgufValue::boolean(bool v) {
  GgufValue g = of_type(GgufValueType::Bool);
  g.bool_value = v;
  return g;
}
GgufValue GgufValue::string(std::string v) {
  GgufValue g = of_type(GgufValueType::String);
  g.string_value = std::move(v);
  return g;
}
GgufValue GgufValue::string_array(std::vector<std::string> v) {
  GgufValue g = of_type(GgufValueType::Array);
  g.element_type = GgufValueType::String;
  g.strings = std::move(v);
  return g;
}
GgufValue GgufValue::i32_array(std::vector<int64_t> v) {
  GgufValue g = of_type(GgufValueType::Array);
  g.element_type = GgufValueType::I32;
  g.ints = std::move(v);
  return g;
}

const char* ggml_type_name(GgmlType type) {
  switch (type) {
    case GgmlType::F32: return "f32";
    case GgmlType::F16: return "f16";
    case GgmlType::Q4_0: return "q4_0";
    case GgmlType::Q8_0: return "q8_0";
    case GgmlType::BF16: return "bf16";
  }
  return "?";
}

int64_t ggml_block_values(GgmlType type) { return type == GgmlType::Q4_0 || type == GgmlType::Q8_0 ? 32 : 1; }

int64_t ggml_block_bytes(GgmlType type) {
  switch (type) {
    case GgmlType::F32: return 4;
    case GgmlType::F16:
    case GgmlType::BF16: return 2;
    case GgmlType::Q4_0: return 18;  // f16 scale + 32 4-bit values
    case GgmlType::Q8_0: return 34;  // f16 scale + 32 int8 values
  }
  return 1;
}

int64_t GgufTensor::numel() const {
  int64_t n = 1;
  for (const int64_t d : dims) n *= d;
  return n;
}

const GgufValue* GgufFile::find(const std::string& key) const {
  const auto it = metadata.find(key);
  return it == metadata.end() ? nullptr : &it->second;
}

const GgufTensor* GgufFile::find_tensor(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

uint32_t GgufFile::get_u32(const std::string& key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) fail("{}: missing key {}", file, key);
  if (v->type != GgufValueType::U32 && v->type != GgufValueType::I32 && v->type != GgufValueType::U64)
    fail("{}: key {} is not an integer", file, key);
  if (v->integer < 0 || v->integer > int64_t(UINT32_MAX)) fail("{}: key {} is out of range", file, key);
  return uint32_t(v->integer);
}

float GgufFile::get_f32(const std::string& key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) fail("{}: missing key {}", file, key);
  if (v->type != GgufValueType::F32 && v->type != GgufValueType::F64) fail("{}: key {} is not a float", file, key);
  return float(v->float_value);
}

std::string GgufFile::get_string(const std::string& key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) fail("{}: missing key {}", file, key);
  if (v->type != GgufValueType::String) fail("{}: key {} is not a string", file, key);
  return v->string_value;
}

GgufFile parse_gguf(std::span<const uint8_t> bytes, const std::string& file) {
  GgufFile out;
  out.file = file;
  Cursor in(bytes, file);
  const uint32_t magic = in.read<uint32_t>("magic");
  if (magic != kMagic) fail("{}: not a GGUF file (bad magic)", file);
  out.version = in.read<uint32_t>("version");
  if (out.version != 2 && out.version != 3) fail("{}: GGUF version {} is not supported (2 or 3)", file, out.version);
  const uint64_t n_tensors = in.read<uint64_t>("tensor count");
  const uint64_t n_kv = in.read<uint64_t>("key/value count");
  // A key/value takes at least 13 bytes and a tensor info at least 28: counts beyond that are lies.
  if (n_kv > in.remaining() / 13) fail("{}: {} key/values cannot fit in the file", file, n_kv);
  if (n_tensors > in.remaining() / 28) fail("{}: {} tensors cannot fit in the file", file, n_tensors);
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = in.string("key");
    if (key.empty()) fail("{}: key/value {} has an empty key", file, i);
    GgufValue value = read_value(in, file, key);
    if (!out.metadata.emplace(key, std::move(value)).second) fail("{}: duplicate key {}", file, key);
  }
  if (const GgufValue* a = out.find("general.alignment")) {
    if (a->type != GgufValueType::U32) fail("{}: general.alignment must be a u32", file);
    const uint64_t alignment = uint64_t(a->integer);
    if (alignment == 0 || (alignment & (alignment - 1)) != 0 || alignment > (1u << 20))
      fail("{}: general.alignment {} is not a power of two up to 1 MiB", file, alignment);
    out.alignment = uint32_t(alignment);
  }
  struct Info {
    uint64_t offset, n_bytes;
  };
  std::vector<Info> infos;
  std::set<std::string> names;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensor t;
    t.name = in.string("tensor name");
    if (t.name.empty()) fail("{}: tensor {} has an empty name", file, i);
    if (!names.insert(t.name).second) fail("{}: duplicate tensor {}", file, t.name);
    const uint32_t n_dims = in.read<uint32_t>("dimension count of " + t.name);
    if (n_dims < 1 || n_dims > 4) fail("{}: tensor {}: {} dimensions (1 to 4 allowed)", file, t.name, n_dims);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t extent = in.read<uint64_t>("dimensions of " + t.name);
      if (extent == 0 || __builtin_mul_overflow(numel, extent, &numel) || numel > kMaxElements)
        fail("{}: tensor {}: shape is empty or too large", file, t.name);
      t.dims.push_back(int64_t(extent));
    }
    const uint32_t type = in.read<uint32_t>("type of " + t.name);
    if (!known_ggml_type(type)) fail("{}: tensor {}: ggml type {} is not supported", file, t.name, type);
    t.type = GgmlType(type);
    const uint64_t block = uint64_t(ggml_block_values(t.type));
    if (uint64_t(t.dims[0]) % block != 0)
      fail("{}: tensor {}: row of {} values is not a whole number of {}-value {} blocks", file, t.name, t.dims[0],
           block, ggml_type_name(t.type));
    const uint64_t offset = in.read<uint64_t>("offset of " + t.name);
    if (offset % out.alignment != 0)
      fail("{}: tensor {}: offset {} is not aligned to {}", file, t.name, offset, out.alignment);
    infos.push_back({offset, numel / block * uint64_t(ggml_block_bytes(t.type))});
    out.tensors.push_back(std::move(t));
  }
  const uint64_t data_start = align_up(in.offset(), out.alignment);
  const uint64_t data_size = data_start <= bytes.size() ? bytes.size() - data_start : 0;
  for (size_t i = 0; i < out.tensors.size(); ++i) {
    GgufTensor& t = out.tensors[i];
    uint64_t end = 0;
    if (__builtin_add_overflow(infos[i].offset, infos[i].n_bytes, &end) || end > data_size)
      fail("{}: tensor {}: data [{}, +{}) lies outside the file's {} data bytes (truncated file?)", file, t.name,
           infos[i].offset, infos[i].n_bytes, data_size);
    t.data = bytes.data() + data_start + infos[i].offset;
    t.n_bytes = size_t(infos[i].n_bytes);
  }
  // Writers lay tensors one after another; overlapping ones would let a small file claim any
  // number of elements (and of experts, each then a weight view of its own).
  std::vector<size_t> by_offset(out.tensors.size());
  for (size_t i = 0; i < by_offset.size(); ++i) by_offset[i] = i;
  std::sort(by_offset.begin(), by_offset.end(), [&](size_t a, size_t b) { return infos[a].offset < infos[b].offset; });
  for (size_t k = 1; k < by_offset.size(); ++k) {
    const size_t before = by_offset[k - 1], after = by_offset[k];
    if (infos[before].offset + infos[before].n_bytes > infos[after].offset)
      fail("{}: tensors {} and {} overlap", file, out.tensors[before].name, out.tensors[after].name);
  }
  return out;
}

GgufWriter::GgufWriter(uint32_t alignment) : alignment_(alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) fail("gguf: alignment {} is not a power of two", alignment);
  if (alignment != 32) add("general.alignment", GgufValue::u32(alignment));
}

void GgufWriter::add(const std::string& key, GgufValue value) { metadata_.emplace_back(key, std::move(value)); }

void GgufWriter::add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> dims, Producer produce) {
  int64_t numel = 1;
  for (const int64_t d : dims) numel *= d;
  if (dims.empty() || dims.size() > 4 || dims[0] % ggml_block_values(type) != 0)
    fail("gguf: tensor {}: {} values per row do not make whole {} blocks", name, dims.empty() ? 0 : dims[0],
         ggml_type_name(type));
  const size_t n_bytes = size_t(numel / ggml_block_values(type) * ggml_block_bytes(type));
  tensors_.push_back({name, type, std::move(dims), n_bytes, std::move(produce)});
}

void GgufWriter::add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> dims,
                            std::vector<uint8_t> data) {
  auto shared = std::make_shared<std::vector<uint8_t>>(std::move(data));
  add_tensor(name, type, std::move(dims), [shared] { return *shared; });
}

std::vector<uint8_t> GgufWriter::header() const {
  std::vector<uint8_t> out;
  put<uint32_t>(out, kMagic);
  put<uint32_t>(out, 3);
  put<uint64_t>(out, tensors_.size());
  put<uint64_t>(out, metadata_.size());
  for (const auto& [key, v] : metadata_) {
    put_string(out, key);
    put<uint32_t>(out, uint32_t(v.type));
    if (v.type != GgufValueType::Array) {
      put_scalar(out, v.type, v, 0, false);
      continue;
    }
    put<uint32_t>(out, uint32_t(v.element_type));
    const size_t count = v.element_type == GgufValueType::String ? v.strings.size()
                         : (v.element_type == GgufValueType::F32 || v.element_type == GgufValueType::F64)
                             ? v.floats.size()
                         : is_byte_type(v.element_type) ? v.bytes.size()
                                                        : v.ints.size();
    put<uint64_t>(out, count);
    for (size_t i = 0; i < count; ++i) put_scalar(out, v.element_type, v, i, true);
  }
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    put_string(out, t.name);
    put<uint32_t>(out, uint32_t(t.dims.size()));
    for (const int64_t d : t.dims) put<uint64_t>(out, uint64_t(d));
    put<uint32_t>(out, uint32_t(t.type));
    put<uint64_t>(out, offset);
    offset = align_up(offset + t.n_bytes, alignment_);
  }
  out.resize(align_up(out.size(), alignment_), 0);
  return out;
}

std::vector<uint8_t> GgufWriter::tensor_bytes(const Pending& t) const {
  std::vector<uint8_t> bytes = t.produce();
  if (bytes.size() != t.n_bytes)
    fail("gguf: tensor {}: produced {} bytes, expected {}", t.name, bytes.size(), t.n_bytes);
  bytes.resize(align_up(bytes.size(), alignment_), 0);
  return bytes;
}

std::vector<uint8_t> GgufWriter::serialize() const {
  std::vector<uint8_t> out = header();
  for (const auto& t : tensors_) {
    const auto bytes = tensor_bytes(t);
    out.insert(out.end(), bytes.begin(), bytes.end());
  }
  return out;
}

void GgufWriter::write(const std::string& path) const {
  AtomicFile file(path);
  file.write(header());
  for (const auto& t : tensors_) file.write(tensor_bytes(t));
  file.commit();
}

}  // namespace deepmoe
