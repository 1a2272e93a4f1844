#include "io/safetensors.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <set>

#include "core/error.h"

namespace deepmoe {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // as the reference implementation limits it

// a * b into *out, false on overflow.
bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | p[i];
  return value;
}

void put_u64_le(uint64_t value, std::vector<uint8_t>* out) {
  for (int i = 0; i < 8; ++i) out->push_back(uint8_t(value >> (8 * i)));
}

TensorView parse_entry(const std::string& name, const nlohmann::json& entry, const uint8_t* data, uint64_t data_size,
                       const std::string& file) {
  if (!entry.is_object()) fail("{}: tensor {}: header entry is not an object", file, name);
  const auto dtype_it = entry.find("dtype");
  const auto shape_it = entry.find("shape");
  const auto offsets_it = entry.find("data_offsets");
  if (dtype_it == entry.end() || !dtype_it->is_string()) fail("{}: tensor {}: missing string 'dtype'", file, name);
  if (shape_it == entry.end() || !shape_it->is_array()) fail("{}: tensor {}: missing array 'shape'", file, name);
  if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2)
    fail("{}: tensor {}: 'data_offsets' must be [begin, end]", file, name);

  TensorView view;
  view.name = name;
  view.file = file;
  const std::string dtype = dtype_it->get<std::string>();
  if (!parse_dtype(dtype, &view.dtype)) fail("{}: tensor {}: unsupported dtype {}", file, name, dtype);

  // Every extent is bounded, a zero included: the product of the others (not 0, which would hide
  // them) must stay small, so that no later product of the shape's int64s overflows.
  uint64_t nonzero_product = 1;
  bool has_zero = false;
  for (const auto& dim : *shape_it) {
    if (!dim.is_number_unsigned()) fail("{}: tensor {}: shape holds a non-integer", file, name);
    const uint64_t extent = dim.get<uint64_t>();
    if (extent > uint64_t(INT64_MAX))
      fail("{}: tensor {}: shape holds {}, more than a 64-bit signed integer holds", file, name, extent);
    has_zero = has_zero || extent == 0;
    if (extent != 0 &&
        (!checked_mul(nonzero_product, extent, &nonzero_product) || nonzero_product > (uint64_t(1) << 48)))
      fail("{}: tensor {}: shape is too large", file, name);
    view.shape.push_back(int64_t(extent));
  }
  const uint64_t numel = has_zero ? 0 : nonzero_product;
  uint64_t expected_bytes = 0;
  if (!checked_mul(numel, dtype_size(view.dtype), &expected_bytes))
    fail("{}: tensor {}: shape is too large", file, name);

  const auto& begin_json = (*offsets_it)[0];
  const auto& end_json = (*offsets_it)[1];
  if (!begin_json.is_number_unsigned() || !end_json.is_number_unsigned())
    fail("{}: tensor {}: data_offsets must be non-negative integers", file, name);
  const uint64_t begin = begin_json.get<uint64_t>();
  const uint64_t end = end_json.get<uint64_t>();
  if (begin > end || end > data_size)
    fail("{}: tensor {}: data_offsets [{}, {}] outside the {} data bytes (truncated file?)", file, name, begin, end,
         data_size);
  if (end - begin != expected_bytes)
    fail("{}: tensor {}: {} data bytes but dtype {} and shape need {}", file, name, end - begin, dtype, expected_bytes);
  view.data = data + begin;
  view.n_bytes = size_t(expected_bytes);
  return view;
}

}  // namespace

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t extent : shape) n *= extent;
  return n;
}

std::vector<TensorView> parse_safetensors(std::span<const uint8_t> bytes, const std::string& file_name) {
  if (bytes.size() < 8) fail("{}: too short for a safetensors file ({} bytes)", file_name, bytes.size());
  const uint64_t header_size = read_u64_le(bytes.data());
  if (header_size > kMaxHeaderBytes)
    fail("{}: header length {} exceeds the {}-byte limit", file_name, header_size, kMaxHeaderBytes);
  if (header_size > bytes.size() - 8)
    fail("{}: header length {} exceeds the file size {} (truncated file?)", file_name, header_size, bytes.size());
  const char* header_begin = reinterpret_cast<const char*>(bytes.data() + 8);
  nlohmann::json header = nlohmann::json::parse(header_begin, header_begin + header_size,
                                                /*callback=*/nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) fail("{}: header is not valid JSON", file_name);
  if (!header.is_object()) fail("{}: header is not a JSON object", file_name);

  const uint8_t* data = bytes.data() + 8 + header_size;
  const uint64_t data_size = bytes.size() - 8 - header_size;
  std::vector<TensorView> views;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    views.push_back(parse_entry(name, entry, data, data_size, file_name));
  }
  return views;
}

namespace {

uint64_t tensor_bytes(const TensorHeader& tensor) {
  uint64_t count = 1;
  for (int64_t extent : tensor.shape) count *= uint64_t(extent);
  return count * dtype_size(tensor.dtype);
}

// The 8-byte length and the JSON header, padded so the data starts 8-byte aligned.
std::vector<uint8_t> header_bytes(const std::vector<TensorHeader>& tensors) {
  // ordered_json keeps our order, so the offsets we assign increase along the file.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  uint64_t offset = 0;
  for (const auto& tensor : tensors) {
    const uint64_t size = tensor_bytes(tensor);
    header[tensor.name] = {
        {"dtype", dtype_name(tensor.dtype)}, {"shape", tensor.shape}, {"data_offsets", {offset, offset + size}}};
    offset += size;
  }
  std::string text = header.dump();
  while (text.size() % 8 != 0) text.push_back(' ');
  std::vector<uint8_t> out;
  put_u64_le(text.size(), &out);
  out.insert(out.end(), text.begin(), text.end());
  return out;
}

}  // namespace

std::vector<uint8_t> serialize_safetensors(const std::vector<TensorToWrite>& tensors) {
  std::vector<TensorHeader> headers;
  for (const auto& tensor : tensors) {
    headers.push_back({tensor.name, tensor.dtype, tensor.shape});
    if (tensor_bytes(headers.back()) != tensor.data.size())
      fail("serialize_safetensors: tensor {} has {} bytes, its shape needs {}", tensor.name, tensor.data.size(),
           tensor_bytes(headers.back()));
  }
  std::vector<uint8_t> out = header_bytes(headers);
  for (const auto& tensor : tensors) out.insert(out.end(), tensor.data.begin(), tensor.data.end());
  return out;
}

SafetensorsWriter::SafetensorsWriter(const std::string& path, const std::vector<TensorHeader>& tensors)
    : path_(path), file_(path), tensors_(tensors) {
  file_.write(header_bytes(tensors_));
}

void SafetensorsWriter::write_next(std::span<const uint8_t> data) {
  if (next_ >= tensors_.size()) fail("{}: more tensors written than declared", path_);
  const TensorHeader& tensor = tensors_[next_++];
  if (data.size() != tensor_bytes(tensor))
    fail("{}: tensor {} has {} bytes, its shape needs {}", path_, tensor.name, data.size(), tensor_bytes(tensor));
  file_.write(data);
}

void SafetensorsWriter::finish() {
  if (next_ != tensors_.size()) fail("{}: {} of {} tensors written", path_, next_, tensors_.size());
  file_.commit();
}

CheckpointReader::CheckpointReader(const std::string& model_dir, LoadOptions load) : dir_(model_dir) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(model_dir)) fail("{}: not a model directory", model_dir);
  const fs::path index_path = fs::path(model_dir) / "model.safetensors.index.json";
  const fs::path single_path = fs::path(model_dir) / "model.safetensors";
  if (fs::exists(index_path)) {
    const auto index = nlohmann::json::parse(read_text_file(index_path.string()), nullptr, false);
    if (index.is_discarded() || !index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
      fail("{}: expected a JSON object with a 'weight_map' object", index_path.string());
    std::set<std::string> shards;
    for (const auto& [name, file] : index["weight_map"].items()) {
      if (!file.is_string()) fail("{}: weight_map[{}] is not a file name", index_path.string(), name);
      const std::string shard = file.get<std::string>();
      if (shard.find('/') != std::string::npos || shard.find("..") != std::string::npos)
        fail("{}: weight_map[{}] names a file outside the directory", index_path.string(), name);
      shards.insert(shard);
    }
    for (const auto& shard : shards) add_file((fs::path(model_dir) / shard).string(), load);
    for (const auto& [name, file] : index["weight_map"].items()) {
      const auto it = tensors_.find(name);
      if (it == tensors_.end())
        fail("{}: lists tensor {} in {}, which does not hold it", index_path.string(), name, file.get<std::string>());
    }
  } else if (fs::exists(single_path)) {
    add_file(single_path.string(), load);
  } else {
    fail("{}: no model.safetensors or model.safetensors.index.json", model_dir);
  }
}

CheckpointReader::CheckpointReader(std::string source, std::unique_ptr<MappedFile> file,
                                   std::map<std::string, TensorView> tensors)
    : dir_(std::move(source)), tensors_(std::move(tensors)) {
  files_.push_back(std::move(file));
}

void CheckpointReader::add_file(const std::string& path, LoadOptions load) {
  files_.push_back(std::make_unique<MappedFile>(path, load));
  for (auto& view : parse_safetensors(files_.back()->bytes(), path)) {
    if (tensors_.count(view.name)) fail("{}: tensor {} appears in two files", path, view.name);
    std::string name = view.name;
    tensors_.emplace(std::move(name), std::move(view));
  }
}

const TensorView* CheckpointReader::find(const std::string& name) const {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

}  // namespace deepmoe
