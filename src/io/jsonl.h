// Data files in JSON Lines (evaluation tasks, SFT conversations, preference pairs): one object per
// line, blank lines skipped, every error naming the file and line.
#pragma once
#include <nlohmann/json.hpp>

#include <functional>
#include <string>

namespace deepmoe {

// Calls `each(object, "path:line")` for every non-blank line. Throws Error naming the file when it
// cannot be opened, and file:line for a line that is not a JSON object.
void for_each_jsonl_object(const std::string& path,
                           const std::function<void(const nlohmann::json&, const std::string&)>& each);

// object[name] as a string; throws Error "<where>: '<name>' must be a (non-empty) string".
std::string string_field(const nlohmann::json& object, const char* name, const std::string& where,
                         bool non_empty = false);

}  // namespace deepmoe
