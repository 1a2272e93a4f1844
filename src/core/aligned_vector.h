// std::vector whose storage starts on a 64-byte boundary. For buffers that kernels read with
// 64-byte loads: on Zen 5 a load that crosses two cache lines costs two load slots
// (bench/instruction_throughput.c), and malloc only promises 16-byte alignment.
#pragma once
#include <cstddef>
#include <new>
#include <vector>

namespace deepmoe {

template <typename T>
struct CacheLineAllocator {
  using value_type = T;
  static constexpr std::align_val_t kAlignment{64};
  CacheLineAllocator() = default;
  template <typename U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlignment)); }
  void deallocate(T* p, size_t) { ::operator delete(p, kAlignment); }
  template <typename U>
  bool operator==(const CacheLineAllocator<U>&) const {
    return true;
  }
};

template <typename T>
using AlignedVector = std::vector<T, CacheLineAllocator<T>>;

}  // namespace deepmoe
