// config.json is user input: any text must parse into a validated Config or throw Error.
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto json = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return 0;
  try {
    const deepmoe::Config config = deepmoe::parse_config(json);
    (void)config.softmax_scale();
  } catch (const deepmoe::Error&) {
  }
  return 0;
}
