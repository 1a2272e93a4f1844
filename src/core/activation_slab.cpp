#include "core/activation_slab.h"

#include <sys/mman.h>

#include <new>
#include <utility>

namespace deepmoe {

namespace {
constexpr size_t kAlignFloats = 16;  // 64 bytes: whole cache lines, aligned SIMD loads
size_t round_up(size_t n) { return (n + kAlignFloats - 1) / kAlignFloats * kAlignFloats; }
}  // namespace

PageBuffer::PageBuffer(size_t floats) : size_(floats) {
  if (floats == 0) return;
  void* p = mmap(nullptr, floats * sizeof(float), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  data_ = static_cast<float*>(p);  // page-aligned, so every 16-float step stays 64-byte aligned
}

PageBuffer::PageBuffer(PageBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

PageBuffer& PageBuffer::operator=(PageBuffer&& other) noexcept {
  if (this != &other) {
    this->~PageBuffer();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

PageBuffer::~PageBuffer() {
  if (data_ != nullptr) munmap(data_, size_ * sizeof(float));
  data_ = nullptr;
}

void ActivationSlab::rewind() {
  overflow_.clear();
  overflow_floats_ = 0;
  if (used_ > slab_.size()) {
    slab_ = PageBuffer();  // the old pages go back before the new ones are touched
    slab_ = PageBuffer(used_);
  }
  used_ = 0;
}

std::span<float> ActivationSlab::take(size_t n) {
  const size_t padded = round_up(n);
  const size_t start = used_;
  used_ += padded;
  if (used_ <= slab_.size()) return {slab_.data() + start, n};
  overflow_.emplace_back(padded);
  overflow_floats_ += padded;
  return {overflow_.back().data(), n};
}

size_t ActivationSlab::bytes() const { return (slab_.size() + overflow_floats_) * sizeof(float); }

}  // namespace deepmoe
