// ModelWeights::view_f32: the layers' weight structs over train::Parameters' flat buffer, so the
// same layer code runs over the training values and over their gradients.
#include "core/error.h"
#include "model/tensor_list.h"
#include "model/weights.h"

namespace deepmoe {

std::unique_ptr<ModelWeights> ModelWeights::view_f32(const Config& config, const float* base,
                                                     std::span<const int64_t> offsets, const uint16_t* bf16_base,
                                                     bool transposed_keys) {
  auto view = std::make_unique<ModelWeights>();
  view->config = config;
  size_t index = 0;
  for_each_tensor(config, *view, [&](const TensorInfo& t, TensorSlot slot) {
    if (index >= offsets.size()) fail("weights view: {} offsets for a longer tensor list", offsets.size());
    const int64_t offset = offsets[index++];
    if (offset < 0) return;  // not held here (another rank's expert): the slot stays empty
    if (slot.vector) {
      *slot.vector = base + offset;
    } else {
      // The router stays f32, as HF's DeepSeek computes it: a rounding flip of the selection would
      // change which experts a token sees, not just a few bits of its output.
      const bool bf16 = bf16_base && t.role != TensorRole::Router;
      slot.matrix->format = bf16 ? WeightFormat::BF16 : WeightFormat::F32;
      slot.matrix->data = bf16 ? static_cast<const void*>(bf16_base + offset) : base + offset;
      slot.matrix->rows = t.shape[0];
      slot.matrix->cols = t.shape[1];
    }
  });
  view->derive_matrices(transposed_keys);
  return view;
}

}  // namespace deepmoe
