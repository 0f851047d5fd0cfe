// core/cpu.h: which hand-vectorised kernels run: those of a native build, or a portable build's choice.
//
// A native build (LATENTGRAD_NATIVE=ON, the default) compiles everything for the building
// machine's CPU and chooses nothing at run time. A portable build (LATENTGRAD_NATIVE=OFF)
// compiles for baseline x86-64, compiles the kernels that gain most from AVX-512 a second
// time for AVX-512, and runs those where the CPU has AVX-512. The kernels that have both
// copies call run_avx512_kernels(); nothing else needs to know.
#pragma once

namespace lg {

#if defined(LATENTGRAD_DISPATCH)
inline constexpr bool kPortableBuild = true;
#else
inline constexpr bool kPortableBuild = false;
#endif

// True when a portable build runs its AVX-512 kernels: the CPU has AVX-512 (F, DQ, BW, VL), and
// neither the environment variable LATENTGRAD_ISA=generic nor force_generic_kernels says
// otherwise. Always false in a native build, whose kernels are compiled for its CPU already.
// LATENTGRAD_ISA is read once, at the first call: empty or "auto" chooses by the CPU,
// "generic" takes the portable kernels, "avx512" the AVX-512 ones (an error on a CPU without).
bool run_avx512_kernels();

// "native" in a native build; "avx512" or "generic" in a portable one, as run_avx512_kernels.
const char* cpu_kernels();

// For tests: true makes a portable build run its portable kernels, false lets it choose again
// as above. Returns the previous setting. Changes nothing in a native build.
bool force_generic_kernels(bool force);

}  // namespace lg
