// MMLU's CSV files are user input: any bytes parse into rows of fields or throw Error (a quote
// left open, text after a closing quote), never crash or hang; the fields hold only input bytes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "core/error.h"
#include "eval/csv.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    size_t bytes = 0;
    for (const auto& row : deepmoe::eval::parse_csv(text, "fuzz.csv"))
      for (const auto& field : row) bytes += field.size();
    if (bytes > size) std::abort();  // a field made of more than the input
  } catch (const deepmoe::Error&) {
  }
  return 0;
}
