// The saved activations of a training step, carved front to back from one preallocated buffer.
// A step of a given shape asks for the same sizes every time (MoE experts split a fixed n·k
// rows between them), so after the first step of a shape the slab has its final size and a step
// allocates nothing. Spans stay valid until the next rewind().
#pragma once
#include <cstddef>
#include <span>
#include <vector>

namespace deepmoe {

// Floats in pages of their own (mmap): freeing gives the memory back to the system at once,
// so growing the slab never holds the old and new buffers' pages together.
class PageBuffer {
 public:
  PageBuffer() = default;
  explicit PageBuffer(size_t floats);
  PageBuffer(PageBuffer&& other) noexcept;
  PageBuffer& operator=(PageBuffer&& other) noexcept;
  PageBuffer(const PageBuffer&) = delete;
  PageBuffer& operator=(const PageBuffer&) = delete;
  ~PageBuffer();
  float* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  float* data_ = nullptr;
  size_t size_ = 0;
};

class ActivationSlab {
 public:
  // Starts a new step (or layer): every span handed out before is dead from here on. When the
  // last round asked for more than the slab holds, the slab grows to that size now, once.
  void rewind();
  // n floats, 64-byte aligned, uninitialized. Not thread-safe: carve before a parallel region.
  std::span<float> take(size_t n);
  // Bytes held (the slab plus first-round overflow).
  size_t bytes() const;

 private:
  PageBuffer slab_;
  size_t used_ = 0;  // floats handed out this round, alignment padding included
  // A round that outgrows the slab takes from here, so spans already handed out stay put.
  std::vector<PageBuffer> overflow_;
  size_t overflow_floats_ = 0;
};

}  // namespace deepmoe
