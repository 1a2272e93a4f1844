#include "io/jsonl.h"

#include <fstream>

#include "core/error.h"

namespace deepmoe {

void for_each_jsonl_object(const std::string& path,
                           const std::function<void(const nlohmann::json&, const std::string&)>& each) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot open", path);
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto object = nlohmann::json::parse(line, nullptr, false);
    const std::string where = fmt::format("{}:{}", path, number);
    if (object.is_discarded() || !object.is_object()) fail("{}: not a JSON object", where);
    each(object, where);
  }
}

std::string string_field(const nlohmann::json& object, const char* name, const std::string& where, bool non_empty) {
  const auto it = object.find(name);
  if (it == object.end() || !it->is_string() || (non_empty && it->get_ref<const std::string&>().empty()))
    fail("{}: '{}' must be a {}string", where, name, non_empty ? "non-empty " : "");
  return it->get<std::string>();
}

}  // namespace deepmoe
