#include "eval/backend.h"

#include <algorithm>

namespace deepmoe::eval {

std::string cut_at_stop_sequences(std::string_view text, const std::vector<std::string>& stops) {
  size_t end = text.size();
  for (const std::string& stop : stops)
    if (!stop.empty()) end = std::min(end, text.find(stop));
  return std::string(text.substr(0, end));
}

}  // namespace deepmoe::eval
