// Everything the per-level kernels (kernels.inc) use from outside, included by each
// isa_<name>.cpp BEFORE its target pragmas: library code (ATen, the standard library) must be
// compiled for the baseline of the architecture, never for the level of one file, or an inline
// function that the linker keeps from that file could execute an instruction this CPU lacks.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>  // intrinsics of the bf16 micro-kernel; each carries its own target
#endif

#include "../lambda_math.h"
#include "buffer_cache.h"
#include "isa.h"
#include "positional_method.h"

// Inline helpers of the kernels: always inlined into the tile loops of their own level.
#define LK_INLINE inline __attribute__((always_inline))
