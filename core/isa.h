// core/isa.h: the instruction set this translation unit is compiled for, as a namespace name.
//
// A portable build (LATENTGRAD_NATIVE=OFF) compiles most files for baseline x86-64 and the
// AVX-512 kernels with AVX-512 flags. A header's inline function included by both is then two
// different machine codes under one name, and the linker keeps one copy for the whole program:
// if it keeps the AVX-512 one, a CPU without AVX-512 stops on an illegal instruction. So headers
// with such functions (fastmath.h, row_kernels.h) put them in `inline namespace LG_ISA`: each
// instruction set's copies get names of their own, and callers do not see the difference.
#pragma once

#if defined(__AVX512F__)
#define LG_ISA isa_avx512
#elif defined(__AVX2__) && defined(__FMA__)
#define LG_ISA isa_avx2
#else
#define LG_ISA isa_generic
#endif
