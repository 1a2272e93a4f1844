// Any byte string given to the GGUF parser must either parse into tensors that lie inside the
// buffer or throw Error: never crash, read out of bounds, allocate without bound or hang.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/error.h"
#include "io/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto file = deepmoe::parse_gguf({data, size}, "fuzz.gguf");
    for (const auto& t : file.tensors) {
      if (t.data < data || t.data + t.n_bytes > data + size) std::abort();  // a lie got through
      volatile uint8_t sink = 0;
      if (t.n_bytes) sink = t.data[t.n_bytes - 1];  // ASan checks the read
      (void)sink;
    }
  } catch (const deepmoe::Error&) {
  }
  return 0;
}
