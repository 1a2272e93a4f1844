// Instructions per cycle of the operations the quantized decode kernels are made of, each in 12
// independent chains (so throughput, not latency, sets the pace). Shows what bounds a kernel:
// on the Zen 5 machines here a 64-byte load issues once per cycle but a 16- or 32-byte load
// twice, and vpdpbusd, vpermt2w and FMA share two pipes (docs/benchmarks.md, issue 5).
//
//   gcc -O2 -mavx512f -mavx512bw -mavx512vnni bench/instruction_throughput.c -o /tmp/ipc
//   /tmp/ipc GHZ      (GHZ: the core clock, e.g. 4.3; without it, instructions per ns)
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

#define CHAINS(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11)
#define CLOBBERS "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11"
#define MEASURE(NAME, PER_CHAIN, OP)                                                        \
  {                                                                                         \
    const long n = 50000000;                                                                \
    const double start = now();                                                             \
    for (long i = 0; i < n; ++i) __asm__ volatile(CHAINS(OP)::"r"(buffer) : CLOBBERS);      \
    const double rate = 12.0 * PER_CHAIN * (double)n / (now() - start) / 1e9;               \
    printf("%-34s %5.2f per %s\n", NAME, ghz > 0 ? rate / ghz : rate, ghz > 0 ? "cycle" : "ns"); \
  }

#define LOAD64(k) "vmovdqu64 (%0), %%zmm" #k "\n"
#define LOAD64_SPLIT(k) "vmovdqu64 32(%0), %%zmm" #k "\n"
#define LOAD32(k) "vmovdqu (%0), %%ymm" #k "\n"
#define LOAD16(k) "vmovdqu (%0), %%xmm" #k "\n"
#define AND64(k) "vpandd %%zmm31, %%zmm" #k ", %%zmm" #k "\n"
#define DPBUSD64(k) "vpdpbusd %%zmm31, %%zmm30, %%zmm" #k "\n"
#define PERMW64(k) "vpermt2w %%zmm31, %%zmm30, %%zmm" #k "\n"
#define FMA64(k) "vfmadd231ps %%zmm31, %%zmm30, %%zmm" #k "\n"
#define DPBUSD_PERMW(k) DPBUSD64(k) PERMW64(k)
#define DPBUSD_AND(k) DPBUSD64(k) AND64(k)

int main(int argc, char** argv) {
  const double ghz = argc > 1 ? atof(argv[1]) : 0.0;
  static char buffer[256] __attribute__((aligned(64)));
  MEASURE("64-byte load (vmovdqu64 zmm)", 1, LOAD64)
  MEASURE("64-byte load across two lines", 1, LOAD64_SPLIT)
  MEASURE("32-byte load (vmovdqu ymm)", 1, LOAD32)
  MEASURE("16-byte load (vmovdqu xmm)", 1, LOAD16)
  MEASURE("vpandd zmm", 1, AND64)
  MEASURE("vpdpbusd zmm", 1, DPBUSD64)
  MEASURE("vpermt2w zmm", 1, PERMW64)
  MEASURE("vfmadd231ps zmm", 1, FMA64)
  MEASURE("vpdpbusd + vpermt2w (instructions)", 2, DPBUSD_PERMW)
  MEASURE("vpdpbusd + vpandd (instructions)", 2, DPBUSD_AND)
  return 0;
}
