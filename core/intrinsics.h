// core/intrinsics.h: <immintrin.h> for the hand-vectorised kernels.
//
// GCC 12's AVX-512 headers start some intrinsics (unpacks, min/max, rounding) from
// _mm512_undefined_ps() and then warn, at every use, that it is (maybe) used uninitialized
// (GCC bug 105593, fixed in GCC 13). The warnings are silenced for the header alone.
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
