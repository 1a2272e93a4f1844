// Training's gradients have the weights' shape: a ModelWeights view over the trainer's flat f32
// gradient buffer, passed to each layer's backward beside the weights. Its matrices are written
// through grad_data (the view's pointers are const because weights are read-only everywhere else).
#pragma once
#include "kernels/matmul.h"

namespace deepmoe {

inline float* grad_data(const WeightMatrix& gradient) { return static_cast<float*>(const_cast<void*>(gradient.data)); }
inline float* grad_data(const float* gradient) { return const_cast<float*>(gradient); }

}  // namespace deepmoe
