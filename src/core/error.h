// Errors are exceptions that carry their context ("file: tensor: what went wrong").
// User input never aborts the process: the CLI catches Error and prints one line.
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace deepmoe {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Throws Error with a fmt-formatted message.
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace deepmoe
