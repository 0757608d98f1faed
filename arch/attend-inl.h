// Per-target attention kernels over rows in any storage, shared by
// arch/attend.cc (float rows) and arch/attend_quant.cc (rows with a
// quantized side). Include after hwy/highway.h, load-inl.h, rows-inl.h,
// hwy/contrib/math/math-inl.h and taylor-inl.h.

#if defined(KVSKETCH_ARCH_ATTEND_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef KVSKETCH_ARCH_ATTEND_INL_H_
#undef KVSKETCH_ARCH_ATTEND_INL_H_
#else
#define KVSKETCH_ARCH_ATTEND_INL_H_
#endif

#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "arch/attend.h"
#include "hwy/cache_control.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace kvsketch {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Rows per online-softmax tile: scores of a tile are computed, then its max,
// then exp of the whole tile with vector Exp, then the value accumulation.
constexpr size_t kTile = 16;
// Software prefetch distance per stream (K and V), in bytes. The hardware
// prefetcher alone left cold attend at ~0.75 of the read bandwidth on the
// development machine (AMD EPYC, AVX3); prefetching every line of the tile
// ~2 KiB ahead brought it to 0.75-1.0 (noisy VM) (see `kvsketch speed`).
constexpr size_t kPrefetchBytes = 2048;

// f16 bits -> f32 for the finite values a validated row holds (normals and
// subnormals), exact on every path: x86 targets with F16C (AVX2 and up) and
// AArch64 convert in one instruction (a quantized tile's scales and offsets
// are 16 to 64 of these per side; the bit trick below is ~9 scalar
// instructions each and was 45 % of a grouped q8 call's tile decoding);
// elsewhere the bits are shifted into place and rescaled by 2^112.
HWY_INLINE float HalfAt(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
  return _cvtsh_ss(h);
#elif HWY_ARCH_ARM_A64 && HWY_COMPILER_GCC
  __fp16 f16;
  std::memcpy(&f16, &h, 2);
  return static_cast<float>(f16);
#else
  const uint32_t bits = uint32_t(h & 0x7FFFu) << 13;
  float f;
  std::memcpy(&f, &bits, 4);
  f *= 5.192296858534828e33f;  // 2^112
  uint32_t out;
  std::memcpy(&out, &f, 4);
  out |= uint32_t(h & 0x8000u) << 16;
  std::memcpy(&f, &out, 4);
  return f;
#endif
}

// Float rows: `cols` is the valid columns rounded up to the tag's lanes.
template <typename T>
struct FloatRows {
  const T* p;
  size_t stride, cols;
  size_t row_bytes() const { return stride * sizeof(T); }
};

// Quantized rows (q8, q4, q4a): `groups` blocks of `block` bytes per row.
struct QuantRows {
  const uint8_t* p;
  size_t rowb, groups, group, block;
  size_t cols;  // valid columns
  bool q8, asym;
  size_t row_bytes() const { return rowb; }
  const uint8_t* Block(size_t r, size_t j) const {
    return p + r * rowb + j * block;
  }
  size_t code_offset() const { return asym ? 4 : 2; }
};

inline QuantRows MakeQuantRows(const RowsView& v) {
  QuantRows r;
  r.p = static_cast<const uint8_t*>(v.data);
  r.rowb = v.row_bytes();
  r.group = QuantGroup(v.cols);
  r.groups = QuantCols(v.cols) / r.group;
  r.block = QuantBlockBytes(v.type, r.group);
  r.q8 = v.type == Storage::kQ8;
  r.asym = v.type == Storage::kQ4A;
  r.cols = v.cols;
  return r;
}

// Max groups of a quantized row (kMaxHeadDim / 8).
constexpr size_t kMaxQuantGroups = kMaxHeadDim / 8;

// A query as 16-bit integers for dot products with quantized keys: codes[c]
// = round(q[c] / scale), scale = max|q| / 32767 (0 for a zero query), and
// the codes' sum per key group (for the q4 offsets). The rounding error, at
// most scale / 2 per element, is 1.5e-5 of the query's largest element:
// small beside the keys' own 8-bit error (1/254 of their group's largest).
struct QueryCodes {
  HWY_ALIGN int16_t codes[kMaxHeadDim];
  int32_t sum[kMaxQuantGroups];  // of the codes, per key group
  float scale;
};

inline void QuantizeQuery(const float* HWY_RESTRICT q, size_t cols,
                          size_t group, QueryCodes* out) {
  float mx = 0.0f;
  for (size_t c = 0; c < cols; ++c) mx = HWY_MAX(mx, std::fabs(q[c]));
  const float inv = mx > 0.0f ? 32767.0f / mx : 0.0f;
  for (size_t c = 0; c < cols; ++c) {
    const float v = std::nearbyint(q[c] * inv);
    out->codes[c] = int16_t(HWY_MIN(32767.0f, HWY_MAX(-32767.0f, v)));
  }
  for (size_t j = 0; j * group < cols; ++j) {
    int32_t sum = 0;
    for (size_t c = 0; c < group; ++c) sum += out->codes[j * group + c];
    out->sum[j] = sum;
  }
  out->scale = mx / 32767.0f;
}

// Lanes that divide what one row side processes per step.
template <typename T, class F>
HWY_INLINE void WithTagFor(const FloatRows<T>& /*rows*/, const RowsView& v,
                           const F& f) {
  WithRowTag(v.stride, f);
}
// A quantized side's step (the q8 group, or half the q4 group: bytes) is a
// multiple of 4 (groups are 8, 16, 24 or 32 elements), so the 1-lane tag is
// never chosen and is not instantiated: a third fewer kernels in this
// translation unit, one of the two slowest to compile.
template <class F>
HWY_INLINE void WithTagFor(const QuantRows& rows, const RowsView& /*v*/,
                           const F& f) {
  WithRowTag</*kMultipleOf4=*/true>(rows.q8 ? rows.group : rows.group / 2, f);
}

template <class D, typename TK>
HWY_INLINE float DotRow(D d, const TK* HWY_RESTRICT k,
                        const float* HWY_RESTRICT q, size_t cols) {
  const size_t N = hn::Lanes(d);
  auto s0 = hn::Zero(d);
  auto s1 = hn::Zero(d);
  size_t i = 0;
  for (; i + 2 * N <= cols; i += 2 * N) {
    s0 = hn::MulAdd(LoadF32(d, k + i), hn::LoadU(d, q + i), s0);
    s1 = hn::MulAdd(LoadF32(d, k + i + N), hn::LoadU(d, q + i + N), s1);
  }
  if (i < cols) s0 = hn::MulAdd(LoadF32(d, k + i), hn::LoadU(d, q + i), s0);
  return hn::GetLane(hn::SumOfLanes(d, hn::Add(s0, s1)));
}

// Scores of rows [r0, r0 + rows) against one query (qsum: unused for float
// rows). For the usual head dimensions (cols <= 8 vectors) the query stays
// in registers, so each row costs only its own loads; otherwise a generic
// loop.
template <class D, typename TK>
HWY_INLINE void ScoreTile(D d, const FloatRows<TK>& KR, size_t r0,
                          const float* HWY_RESTRICT q,
                          const float* HWY_RESTRICT /*qsum*/,
                          const float* HWY_RESTRICT bias, size_t rows,
                          float* HWY_RESTRICT s) {
  const size_t N = hn::Lanes(d);
  const size_t k_stride = KR.stride, kcols = KR.cols;
  const TK* HWY_RESTRICT K = KR.p + r0 * k_stride;
  if (kcols > 8 * N) {
    for (size_t r = 0; r < rows; ++r) {
      s[r] = DotRow(d, K + r * k_stride, q, kcols) + (bias ? bias[r] : 0.0f);
    }
    return;
  }
  const auto z = hn::Zero(d);
  const auto q0 = hn::LoadU(d, q);
  const auto q1 = kcols > 1 * N ? hn::LoadU(d, q + 1 * N) : z;
  const auto q2 = kcols > 2 * N ? hn::LoadU(d, q + 2 * N) : z;
  const auto q3 = kcols > 3 * N ? hn::LoadU(d, q + 3 * N) : z;
  const auto q4 = kcols > 4 * N ? hn::LoadU(d, q + 4 * N) : z;
  const auto q5 = kcols > 5 * N ? hn::LoadU(d, q + 5 * N) : z;
  const auto q6 = kcols > 6 * N ? hn::LoadU(d, q + 6 * N) : z;
  const auto q7 = kcols > 7 * N ? hn::LoadU(d, q + 7 * N) : z;
  for (size_t r = 0; r < rows; ++r) {
    const TK* HWY_RESTRICT k = K + r * k_stride;
    auto a0 = hn::Mul(LoadF32(d, k), q0);
    auto a1 = z;
    if (kcols > 1 * N) a1 = hn::Mul(LoadF32(d, k + 1 * N), q1);
    if (kcols > 2 * N) a0 = hn::MulAdd(LoadF32(d, k + 2 * N), q2, a0);
    if (kcols > 3 * N) a1 = hn::MulAdd(LoadF32(d, k + 3 * N), q3, a1);
    if (kcols > 4 * N) a0 = hn::MulAdd(LoadF32(d, k + 4 * N), q4, a0);
    if (kcols > 5 * N) a1 = hn::MulAdd(LoadF32(d, k + 5 * N), q5, a1);
    if (kcols > 6 * N) a0 = hn::MulAdd(LoadF32(d, k + 6 * N), q6, a0);
    if (kcols > 7 * N) a1 = hn::MulAdd(LoadF32(d, k + 7 * N), q7, a1);
    s[r] = hn::GetLane(hn::SumOfLanes(d, hn::Add(a0, a1))) +
           (bias ? bias[r] : 0.0f);
  }
}

// Codes of a q8 group as f32 lanes [i, i + Lanes).
template <class D>
HWY_INLINE hn::Vec<D> LoadQ8(D d, const uint8_t* HWY_RESTRICT codes, size_t i) {
  const hn::Rebind<int8_t, D> di8;
  const hn::Rebind<int32_t, D> di;
  return hn::ConvertTo(
      d, hn::PromoteTo(
             di, hn::LoadU(di8, reinterpret_cast<const int8_t*>(codes + i))));
}
// Codes of a q4 group's bytes [i, i + Lanes) as the low nibbles (elements
// i..) and high nibbles (elements half + i..), widened to i32.
template <class D>
HWY_INLINE hn::Vec<hn::Rebind<int32_t, D>> LoadQ4Bytes(
    D /*d*/, const uint8_t* HWY_RESTRICT codes, size_t i) {
  const hn::Rebind<uint8_t, D> du8;
  const hn::Rebind<uint32_t, D> du;
  const hn::Rebind<int32_t, D> di;
  return hn::BitCast(di, hn::PromoteTo(du, hn::LoadU(du8, codes + i)));
}

// Quantized keys: per group, the dot of the codes with the query times the
// group's scale, plus offset * (sum of the query over the group).
template <class D>
HWY_INLINE void ScoreTile(D d, const QuantRows& KR, size_t r0,
                          const float* HWY_RESTRICT q,
                          const float* HWY_RESTRICT qsum,
                          const float* HWY_RESTRICT bias, size_t rows,
                          float* HWY_RESTRICT s) {
  const size_t N = hn::Lanes(d);
  const hn::Rebind<int32_t, D> di;
  const size_t g = KR.group, half = g / 2, groups = KR.groups;
  const size_t rowb = KR.rowb, block = KR.block;
  const uint8_t* HWY_RESTRICT base = KR.p + r0 * rowb;
  // One loop per code width (the branch stays out of the row loop).
  if (KR.q8) {
    for (size_t r = 0; r < rows; ++r) {
      const uint8_t* HWY_RESTRICT row = base + r * rowb;
      auto acc = hn::Zero(d);
      for (size_t j = 0; j < groups; ++j) {
        const uint8_t* HWY_RESTRICT codes = row + j * block + 2;
        const float* HWY_RESTRICT qg = q + j * g;
        auto p0 = hn::Zero(d);
        auto p1 = hn::Zero(d);
        size_t i = 0;
        for (; i + 2 * N <= g; i += 2 * N) {
          p0 = hn::MulAdd(LoadQ8(d, codes, i), hn::LoadU(d, qg + i), p0);
          p1 =
              hn::MulAdd(LoadQ8(d, codes, i + N), hn::LoadU(d, qg + i + N), p1);
        }
        if (i < g) {
          p0 = hn::MulAdd(LoadQ8(d, codes, i), hn::LoadU(d, qg + i), p0);
        }
        acc = hn::MulAdd(hn::Set(d, HalfAt(row + j * block)), hn::Add(p0, p1),
                         acc);
      }
      s[r] = hn::GetLane(hn::SumOfLanes(d, acc)) + (bias ? bias[r] : 0.0f);
    }
    return;
  }
  const size_t co = KR.code_offset();
  const bool asym = KR.asym;
  const auto mask = hn::Set(di, 0xF);
  for (size_t r = 0; r < rows; ++r) {
    const uint8_t* HWY_RESTRICT row = base + r * rowb;
    auto acc = hn::Zero(d);
    float off = 0.0f;
    for (size_t j = 0; j < groups; ++j) {
      const uint8_t* HWY_RESTRICT blk = row + j * block;
      const uint8_t* HWY_RESTRICT codes = blk + co;
      const float* HWY_RESTRICT qg = q + j * g;
      const float sc = HalfAt(blk);
      auto p0 = hn::Zero(d);
      auto p1 = hn::Zero(d);
      for (size_t i = 0; i < half; i += N) {
        const auto b = LoadQ4Bytes(d, codes, i);
        p0 = hn::MulAdd(hn::ConvertTo(d, hn::And(b, mask)),
                        hn::LoadU(d, qg + i), p0);
        p1 = hn::MulAdd(hn::ConvertTo(d, hn::ShiftRight<4>(b)),
                        hn::LoadU(d, qg + half + i), p1);
      }
      off += (asym ? HalfAt(blk + 2) : -8.0f * sc) * qsum[j];
      acc = hn::MulAdd(hn::Set(d, sc), hn::Add(p0, p1), acc);
    }
    s[r] = hn::GetLane(hn::SumOfLanes(d, acc)) + off + (bias ? bias[r] : 0.0f);
  }
}

// acc[0, cols) += sum_r p[r] * V[r0 + r]: the accumulator stays in registers
// for the whole tile (four, two or one vectors at a time), V rows come from
// L1.
template <class D, typename TV>
HWY_INLINE void AccumulateTile(D d, const FloatRows<TV>& VR, size_t r0,
                               const float* HWY_RESTRICT p, size_t rows,
                               float* HWY_RESTRICT acc) {
  const size_t N = hn::Lanes(d);
  const size_t v_stride = VR.stride, vcols = VR.cols;
  const TV* HWY_RESTRICT V = VR.p + r0 * v_stride;
  size_t c = 0;
  // Four column vectors at a time: four independent FMA chains per row.
  for (; c + 4 * N <= vcols; c += 4 * N) {
    auto a0 = hn::LoadU(d, acc + c);
    auto a1 = hn::LoadU(d, acc + c + N);
    auto a2 = hn::LoadU(d, acc + c + 2 * N);
    auto a3 = hn::LoadU(d, acc + c + 3 * N);
    for (size_t r = 0; r < rows; ++r) {
      const auto pr = hn::Set(d, p[r]);
      const TV* HWY_RESTRICT v = V + r * v_stride + c;
      a0 = hn::MulAdd(pr, LoadF32(d, v), a0);
      a1 = hn::MulAdd(pr, LoadF32(d, v + N), a1);
      a2 = hn::MulAdd(pr, LoadF32(d, v + 2 * N), a2);
      a3 = hn::MulAdd(pr, LoadF32(d, v + 3 * N), a3);
    }
    hn::StoreU(a0, d, acc + c);
    hn::StoreU(a1, d, acc + c + N);
    hn::StoreU(a2, d, acc + c + 2 * N);
    hn::StoreU(a3, d, acc + c + 3 * N);
  }
  for (; c + 2 * N <= vcols; c += 2 * N) {
    auto a0 = hn::LoadU(d, acc + c);
    auto a1 = hn::LoadU(d, acc + c + N);
    for (size_t r = 0; r < rows; ++r) {
      const auto pr = hn::Set(d, p[r]);
      a0 = hn::MulAdd(pr, LoadF32(d, V + r * v_stride + c), a0);
      a1 = hn::MulAdd(pr, LoadF32(d, V + r * v_stride + c + N), a1);
    }
    hn::StoreU(a0, d, acc + c);
    hn::StoreU(a1, d, acc + c + N);
  }
  if (c < vcols) {
    auto a0 = hn::LoadU(d, acc + c);
    for (size_t r = 0; r < rows; ++r) {
      a0 = hn::MulAdd(hn::Set(d, p[r]), LoadF32(d, V + r * v_stride + c), a0);
    }
    hn::StoreU(a0, d, acc + c);
  }
}

// Quantized values: per group, the weights p[r] * scale enter the codes, and
// sum_r p[r] * offset is added to every element of the group once per tile.
// q8 groups go two at a time (four accumulator chains when a group is two
// vectors, as at d >= 64 with 16 lanes).
template <class D>
HWY_INLINE void AccumulateTile(D d, const QuantRows& VR, size_t r0,
                               const float* HWY_RESTRICT p, size_t rows,
                               float* HWY_RESTRICT acc) {
  const size_t N = hn::Lanes(d);
  const hn::Rebind<int32_t, D> di;
  const size_t g = VR.group, half = g / 2, rowb = VR.rowb;
  const size_t groups = VR.groups, co = VR.code_offset();
  HWY_ALIGN float w[kMaxQuantGroups * kTile];
  float off[kMaxQuantGroups];
  for (size_t j = 0; j < groups; ++j) {
    // Scalar conversions on purpose: they run beside the vector work, and
    // a vector load of scales copied one by one would wait for the copies
    // (no store forwarding); AMD's gathers were slower still.
    const uint8_t* HWY_RESTRICT blk = VR.Block(r0, j);
    float o = 0.0f;
    for (size_t r = 0; r < rows; ++r) {
      const float sc = HalfAt(blk + r * rowb);
      w[j * kTile + r] = p[r] * sc;
      if (!VR.q8) {
        o += p[r] * (VR.asym ? HalfAt(blk + r * rowb + 2) : -8.0f * sc);
      }
    }
    off[j] = o;
  }
  if (VR.q8) {
    size_t j = 0;
    for (; j + 2 <= groups; j += 2) {
      const uint8_t* HWY_RESTRICT c0 = VR.Block(r0, j) + co;
      const uint8_t* HWY_RESTRICT c1 = c0 + VR.block;
      const float* HWY_RESTRICT w0 = w + j * kTile;
      const float* HWY_RESTRICT w1 = w0 + kTile;
      float* HWY_RESTRICT a = acc + j * g;
      size_t c = 0;
      for (; c + 2 * N <= g; c += 2 * N) {
        auto a0 = hn::LoadU(d, a + c);
        auto a1 = hn::LoadU(d, a + c + N);
        auto a2 = hn::LoadU(d, a + g + c);
        auto a3 = hn::LoadU(d, a + g + c + N);
        for (size_t r = 0; r < rows; ++r) {
          const auto wr0 = hn::Set(d, w0[r]);
          const auto wr1 = hn::Set(d, w1[r]);
          a0 = hn::MulAdd(wr0, LoadQ8(d, c0 + r * rowb, c), a0);
          a1 = hn::MulAdd(wr0, LoadQ8(d, c0 + r * rowb, c + N), a1);
          a2 = hn::MulAdd(wr1, LoadQ8(d, c1 + r * rowb, c), a2);
          a3 = hn::MulAdd(wr1, LoadQ8(d, c1 + r * rowb, c + N), a3);
        }
        hn::StoreU(a0, d, a + c);
        hn::StoreU(a1, d, a + c + N);
        hn::StoreU(a2, d, a + g + c);
        hn::StoreU(a3, d, a + g + c + N);
      }
      for (; c < g; c += N) {
        auto a0 = hn::LoadU(d, a + c);
        auto a2 = hn::LoadU(d, a + g + c);
        for (size_t r = 0; r < rows; ++r) {
          a0 = hn::MulAdd(hn::Set(d, w0[r]), LoadQ8(d, c0 + r * rowb, c), a0);
          a2 = hn::MulAdd(hn::Set(d, w1[r]), LoadQ8(d, c1 + r * rowb, c), a2);
        }
        hn::StoreU(a0, d, a + c);
        hn::StoreU(a2, d, a + g + c);
      }
    }
    if (j < groups) {
      const uint8_t* HWY_RESTRICT codes = VR.Block(r0, j) + co;
      const float* HWY_RESTRICT w0 = w + j * kTile;
      float* HWY_RESTRICT a = acc + j * g;
      size_t c = 0;
      for (; c + 2 * N <= g; c += 2 * N) {
        auto a0 = hn::LoadU(d, a + c);
        auto a1 = hn::LoadU(d, a + c + N);
        for (size_t r = 0; r < rows; ++r) {
          const auto wr = hn::Set(d, w0[r]);
          a0 = hn::MulAdd(wr, LoadQ8(d, codes + r * rowb, c), a0);
          a1 = hn::MulAdd(wr, LoadQ8(d, codes + r * rowb, c + N), a1);
        }
        hn::StoreU(a0, d, a + c);
        hn::StoreU(a1, d, a + c + N);
      }
      if (c < g) {
        auto a0 = hn::LoadU(d, a + c);
        for (size_t r = 0; r < rows; ++r) {
          a0 =
              hn::MulAdd(hn::Set(d, w0[r]), LoadQ8(d, codes + r * rowb, c), a0);
        }
        hn::StoreU(a0, d, a + c);
      }
    }
    return;
  }
  const auto mask = hn::Set(di, 0xF);
  for (size_t j = 0; j < groups; ++j) {
    const uint8_t* HWY_RESTRICT codes = VR.Block(r0, j) + co;
    const float* HWY_RESTRICT w0 = w + j * kTile;
    float* HWY_RESTRICT a = acc + j * g;
    const auto vo = hn::Set(d, off[j]);
    for (size_t c = 0; c < half; c += N) {
      // Even and odd rows in separate accumulators: four FMA chains.
      auto a0 = hn::Add(hn::LoadU(d, a + c), vo);
      auto a1 = hn::Add(hn::LoadU(d, a + half + c), vo);
      auto b0 = hn::Zero(d);
      auto b1 = hn::Zero(d);
      // Row r's low and high nibbles into x0, x1.
      const auto add_row = [&](size_t r, auto& x0, auto& x1) {
        const auto wr = hn::Set(d, w0[r]);
        const auto b = LoadQ4Bytes(d, codes + r * rowb, c);
        x0 = hn::MulAdd(wr, hn::ConvertTo(d, hn::And(b, mask)), x0);
        x1 = hn::MulAdd(wr, hn::ConvertTo(d, hn::ShiftRight<4>(b)), x1);
      };
      size_t r = 0;
      for (; r + 2 <= rows; r += 2) {
        add_row(r, a0, a1);
        add_row(r + 1, b0, b1);
      }
      if (r < rows) add_row(r, a0, a1);
      hn::StoreU(hn::Add(a0, b0), d, a + c);
      hn::StoreU(hn::Add(a1, b1), d, a + half + c);
    }
  }
}

template <class KR>
HWY_INLINE void PrefetchTile(const KR& rows, size_t r_ahead) {
  const char* p =
      reinterpret_cast<const char*>(rows.p) + r_ahead * rows.row_bytes();
  const size_t bytes = kTile * rows.row_bytes();
  for (size_t off = 0; off < bytes; off += 64) hwy::Prefetch(p + off);
}

// Rows a tile is prefetched ahead, and the prefetch of tile r0 + that (K and
// V, every cache line) when it exists.
// `bytes`: the distance in bytes (rounded up to whole tiles). One query
// over quantized rows takes twice kPrefetchBytes (AttendT): its q8 tiles take
// about as long as f16 tiles of the same head dimension but hold half the
// bytes, so the same rows ahead keep too few bytes in flight (q8 G = 1, 64K
// rows: d = 128 8-15 % faster, d = 64 0-9 %; q4 unchanged; grouped calls,
// whose tiles take longer, measured 11-16 % slower with it).
template <class KR>
HWY_INLINE size_t PrefetchRows(const KR& K, size_t bytes = kPrefetchBytes) {
  return RoundUp(HWY_MAX(size_t{1}, bytes / K.row_bytes()), kTile);
}
// Grouped calls (AttendGroupT): a tile ahead while a tile of rows is at most
// 2 kPrefetchBytes, else kPrefetchBytes of rows (at least 4). With f32 rows
// at d = 128 a tile is 8 KiB per stream, and a whole tile ahead of both
// streams beside the tile being read and the next tile's keys (scored ahead)
// filled the 32 KiB L1 of the development machine: 4 rows ahead made G = 4
// and 8 calls over 64K rows 17-27 % faster (`kvsketch speed`), while half a
// tile ahead of smaller rows (f16 at d = 64 and 128, f32 at d = 64) was
// 5-20 % slower.
template <class KR>
HWY_INLINE size_t GroupPrefetchRows(const KR& K) {
  const size_t rb = K.row_bytes();
  if (kTile * rb <= 2 * kPrefetchBytes) return kTile;
  return HWY_MAX(size_t{4}, kPrefetchBytes / rb);
}
template <class KR, class VR>
HWY_INLINE void PrefetchAhead(const KR& K, const VR& V, size_t r0, size_t n,
                              size_t pf_rows) {
  if (r0 + kTile + pf_rows <= n) {
    PrefetchTile(K, r0 + pf_rows);
    PrefetchTile(V, r0 + pf_rows);
  }
}

// ------------------------------------------------ grouped queries (G > 1)
//
// A G-query call must cost about what a 1-query call costs: both read the
// same K/V bytes, so the per-query work has to be only the FMAs it needs,
// and they must not wait on loads or on each other. Per tile: blocks of 4
// queries (2 on 16-register targets) meet 4 key rows at a time (16
// independent FMA chains, each key vector loaded and converted once per
// block), each query's 16 scores come out of one reduction tree (no per-row
// horizontal sum); the softmax is vectorised over the tile; then 4 queries'
// weights meet 4 value vectors per row (16 accumulators in registers for the
// whole tile). Quantized rows are decoded to f32 per tile first.

#if HWY_TARGET != HWY_SCALAR
// [N/2 pair sums of lo | N/2 pair sums of hi].
template <class D>
HWY_INLINE hn::Vec<D> Fold2(D d, hn::Vec<D> lo, hn::Vec<D> hi) {
  return hn::Add(hn::ConcatEven(d, hi, lo), hn::ConcatOdd(d, hi, lo));
}
#endif

#if HWY_TARGET != HWY_SCALAR
// part: kTile / 4 vectors, each the fold of four rows' partial-sum vectors
// (N / 4 lanes per row). Each fold halves the vectors; stop at kTile lanes of
// whole sums, written to s in row order.
template <class D>
HWY_INLINE void FoldParts(D d, hn::TFromD<D>* HWY_RESTRICT part,
                          hn::TFromD<D>* HWY_RESTRICT s) {
  const size_t N = hn::Lanes(d);
  for (size_t count = kTile / 4; count * N > kTile; count /= 2) {
    for (size_t j = 0; j < count / 2; ++j) {
      const auto lo = hn::Load(d, part + 2 * j * N);
      const auto hi = hn::Load(d, part + (2 * j + 1) * N);
      hn::Store(Fold2(d, lo, hi), d, part + j * N);
    }
  }
  std::memcpy(s, part, kTile * sizeof(hn::TFromD<D>));
}

// The kTile scores of a tile: row_vec(r) is row r's partial-sum vector (r <
// kTile); four rows are folded at a time, then FoldParts.
template <class D, class RowVec>
HWY_INLINE void TreeScores(D d, const RowVec& row_vec,
                           hn::TFromD<D>* HWY_RESTRICT s) {
  const size_t N = hn::Lanes(d);
  HWY_ALIGN hn::TFromD<D> part[kTile * kTile / 4];
  for (size_t j = 0; j < kTile / 4; ++j) {
    const auto a0 = row_vec(4 * j);
    const auto a1 = row_vec(4 * j + 1);
    const auto a2 = row_vec(4 * j + 2);
    const auto a3 = row_vec(4 * j + 3);
    hn::Store(Fold2(d, Fold2(d, a0, a1), Fold2(d, a2, a3)), d, part + j * N);
  }
  FoldParts(d, part, s);
}
#endif

// True if the reduction tree applies to tag D: at least 4 lanes, a power of
// two (so it divides kTile). Otherwise per-row sums are used.
template <class D>
HWY_INLINE bool TreeLanes(D d) {
  const size_t N = hn::Lanes(d);
  return HWY_TARGET != HWY_SCALAR && hn::MaxLanes(d) >= 4 && N >= 4 &&
         (N & (N - 1)) == 0 && N <= kTile;
}

// Scores of kTile f32 rows (`stride` apart; kcols a multiple of the lanes,
// q zero beyond the valid columns) against one query: row r's partial-sum
// vector, folded four rows at a time and then across the groups, gives the
// kTile sums in order. Requires TreeLanes(d).
template <class D, typename T>
HWY_NOINLINE void ScoreTileTree(D d, const T* HWY_RESTRICT K, size_t stride,
                                size_t kcols, const float* HWY_RESTRICT q,
                                float* HWY_RESTRICT s) {
#if HWY_TARGET != HWY_SCALAR
  if constexpr (hn::MaxLanes(D()) >= 4) {
    const size_t N = hn::Lanes(d);
    if (kcols <= 8 * N) {
      // The query in registers (up to 8 vectors: d = 128 at 16 lanes): each
      // row costs its loads and FMAs.
      const auto z = hn::Zero(d);
      const auto q0 = hn::LoadU(d, q);
      const auto q1 = kcols > 1 * N ? hn::LoadU(d, q + 1 * N) : z;
      const auto q2 = kcols > 2 * N ? hn::LoadU(d, q + 2 * N) : z;
      const auto q3 = kcols > 3 * N ? hn::LoadU(d, q + 3 * N) : z;
      const auto q4 = kcols > 4 * N ? hn::LoadU(d, q + 4 * N) : z;
      const auto q5 = kcols > 5 * N ? hn::LoadU(d, q + 5 * N) : z;
      const auto q6 = kcols > 6 * N ? hn::LoadU(d, q + 6 * N) : z;
      const auto q7 = kcols > 7 * N ? hn::LoadU(d, q + 7 * N) : z;
      const size_t nv = kcols / N;
      const auto row_vec = [&](size_t r) {
        const T* HWY_RESTRICT k = K + r * stride;
        // Two chains when the row is long (FMA latency, not throughput).
        auto a = hn::Mul(LoadF32(d, k), q0);
        auto b = z;
        if (nv > 1) a = hn::MulAdd(LoadF32(d, k + 1 * N), q1, a);
        if (nv > 2) a = hn::MulAdd(LoadF32(d, k + 2 * N), q2, a);
        if (nv > 3) a = hn::MulAdd(LoadF32(d, k + 3 * N), q3, a);
        if (nv > 4) b = hn::Mul(LoadF32(d, k + 4 * N), q4);
        if (nv > 5) b = hn::MulAdd(LoadF32(d, k + 5 * N), q5, b);
        if (nv > 6) b = hn::MulAdd(LoadF32(d, k + 6 * N), q6, b);
        if (nv > 7) b = hn::MulAdd(LoadF32(d, k + 7 * N), q7, b);
        return nv > 4 ? hn::Add(a, b) : a;
      };
      TreeScores(d, row_vec, s);
      return;
    } else {
      const auto row_vec = [&](size_t r) {
        const T* HWY_RESTRICT k = K + r * stride;
        auto a0 = hn::Mul(LoadF32(d, k), hn::LoadU(d, q));
        auto a1 = hn::Mul(LoadF32(d, k + N), hn::LoadU(d, q + N));
        size_t c = 2 * N;
        for (; c + 2 * N <= kcols; c += 2 * N) {
          a0 = hn::MulAdd(LoadF32(d, k + c), hn::LoadU(d, q + c), a0);
          a1 = hn::MulAdd(LoadF32(d, k + c + N), hn::LoadU(d, q + c + N), a1);
        }
        if (c < kcols) {
          a0 = hn::MulAdd(LoadF32(d, k + c), hn::LoadU(d, q + c), a0);
        }
        return hn::Add(a0, a1);
      };
      TreeScores(d, row_vec, s);
      return;
    }
  }
#endif
  HWY_ASSERT(false);  // callers check TreeLanes
  (void)d, (void)K, (void)stride, (void)kcols, (void)q, (void)s;
}

// Scores of a full tile of q8 rows against one query: the per-row loop of
// ScoreTile's q8 branch without its per-row horizontal sum (each row's
// partial-sum vector enters the same reduction tree as ScoreTileTree).
// Requires TreeLanes(d); the lanes divide the group (WithTagFor). (The same
// for q4 measured ~5 % slower in cache: its offset terms need a second pass
// over the rows' scales.)
template <class D>
HWY_NOINLINE void ScoreTileTreeQ8(D d, const QuantRows& KR, size_t r0,
                                  const float* HWY_RESTRICT q,
                                  float* HWY_RESTRICT s) {
#if HWY_TARGET != HWY_SCALAR
  if constexpr (hn::MaxLanes(D()) >= 4) {
    const size_t N = hn::Lanes(d);
    const size_t g = KR.group, groups = KR.groups;
    const size_t rowb = KR.rowb, block = KR.block;
    const uint8_t* HWY_RESTRICT base = KR.p + r0 * rowb;
    const auto row_vec = [&](size_t r) {
      const uint8_t* HWY_RESTRICT row = base + r * rowb;
      auto acc = hn::Zero(d);
      for (size_t j = 0; j < groups; ++j) {
        const uint8_t* HWY_RESTRICT codes = row + j * block + 2;
        const float* HWY_RESTRICT qg = q + j * g;
        auto p = hn::Mul(LoadQ8(d, codes, 0), hn::LoadU(d, qg));
        for (size_t i = N; i < g; i += N) {
          p = hn::MulAdd(LoadQ8(d, codes, i), hn::LoadU(d, qg + i), p);
        }
        acc = hn::MulAdd(hn::Set(d, HalfAt(row + j * block)), p, acc);
      }
      return acc;
    };
    TreeScores(d, row_vec, s);
    return;
  }
#endif
  HWY_ASSERT(false);  // callers check TreeLanes
  (void)d, (void)KR, (void)r0, (void)q, (void)s;
}

// True if the integer scores (ScoreTileTreeQIT: q8, q4, q4a keys) apply to
// float tag D: the group is 1, 2 or 4 times the 16-bit lanes (twice D's)
// and the reduction tree applies.
template <class D>
HWY_INLINE bool IntScoreLanes(D d, const QuantRows& KR) {
  if (!TreeLanes(d)) return false;
  const hn::Repartition<int16_t, D> d16;
  const size_t N16 = hn::Lanes(d16);
  return KR.group == N16 || KR.group == 2 * N16 || KR.group == 4 * N16;
}

// Scores of a full tile of quantized keys against one query's 16-bit codes
// (QueryCodes), in integers: each group's codes widen to 16 bits and meet
// the query codes in a widening multiply-add (x86 pmaddwd, NEON smlal) that
// sums pairs into 32-bit lanes. A group's 16 rows go through the reduction
// tree as integers (exact: at most 32 x 127 x 32767 < 2^31 per row); q4's
// codes are offset by 8, so 8 x the group's query-code sum is subtracted
// (exact). Then the tile's sums are converted, scaled by their key scales (a
// vector conversion of the tile's f16 scales), q4a's offsets times the
// group's query-code sum are added, and all is scaled by the query's scale.
// q4 codes are nibbles: a step widens N16 / 2 bytes to their low nibbles
// (elements i..) and high nibbles (elements group / 2 + i..), side by side,
// so the query codes must be in that order (PermuteQ4Query). The groups
// (kGroups, 0: runtime) and steps per group (kSteps) are compile-time for
// the usual shapes.
template <size_t kGroups, size_t kSteps, class D>
HWY_INLINE void ScoreTileTreeQIT(D d, const QuantRows& KR, size_t r0,
                                 const QueryCodes& qc, float* HWY_RESTRICT s) {
#if HWY_TARGET != HWY_SCALAR
  if constexpr (hn::MaxLanes(D()) >= 4) {
    const hn::Repartition<int16_t, D> d16;
    const hn::Rebind<int8_t, decltype(d16)> d8;
    const hn::Half<decltype(d16)> dh16;
    const hn::Rebind<uint8_t, decltype(dh16)> du8;
    const hn::Repartition<int32_t, D> d32;
    const size_t N16 = hn::Lanes(d16), H = N16 / 2;
    const size_t groups = kGroups ? kGroups : KR.groups;
    const size_t rowb = KR.rowb, block = KR.block, co = KR.code_offset();
    const bool q8 = KR.q8, asym = KR.asym;
    const uint8_t* HWY_RESTRICT base = KR.p + r0 * rowb;
    HWY_ALIGN int32_t sums[kMaxQuantGroups * kTile];
    HWY_ALIGN hwy::float16_t scales[kMaxQuantGroups * kTile];
    HWY_ALIGN hwy::float16_t offs[kMaxQuantGroups * kTile];
    // The tile's f16 scales (and offsets) gathered first: the epilogue reads
    // them as vectors, and a vector load right after the scalar stores that
    // wrote it cannot be forwarded from them (it waits for them to retire).
    for (size_t j = 0; j < groups; ++j) {
      const uint8_t* HWY_RESTRICT blk = base + j * block;
      for (size_t r = 0; r < kTile; ++r) {
        std::memcpy(&scales[j * kTile + r], blk + r * rowb, 2);
      }
      if (asym) {
        for (size_t r = 0; r < kTile; ++r) {
          std::memcpy(&offs[j * kTile + r], blk + r * rowb + 2, 2);
        }
      }
    }
    for (size_t j = 0; j < groups; ++j) {
      const uint8_t* HWY_RESTRICT blk = base + j * block;
      const int16_t* HWY_RESTRICT qg = qc.codes + j * kSteps * N16;
      if (q8) {
        const auto row_vec = [&](size_t r) {
          const int8_t* HWY_RESTRICT codes =
              reinterpret_cast<const int8_t*>(blk + r * rowb + co);
          auto p0 = hn::Zero(d32);
          auto p1 = hn::Zero(d32);
          for (size_t i = 0; i < kSteps; ++i) {
            p0 = hn::ReorderWidenMulAccumulate(
                d32, hn::PromoteTo(d16, hn::LoadU(d8, codes + i * N16)),
                hn::Load(d16, qg + i * N16), p0, p1);
          }
          return hn::Add(p0, p1);
        };
        TreeScores(d32, row_vec, sums + j * kTile);
      } else {
        const auto mask = hn::Set(dh16, 0xF);
        const auto row_vec = [&](size_t r) {
          const uint8_t* HWY_RESTRICT codes = blk + r * rowb + co;
          auto p0 = hn::Zero(d32);
          auto p1 = hn::Zero(d32);
          for (size_t i = 0; i < kSteps; ++i) {
            const auto b = hn::BitCast(
                dh16, hn::PromoteTo(hn::RebindToUnsigned<decltype(dh16)>(),
                                    hn::LoadU(du8, codes + i * H)));
            const auto c =
                hn::Combine(d16, hn::ShiftRight<4>(b), hn::And(b, mask));
            p0 = hn::ReorderWidenMulAccumulate(
                d32, c, hn::Load(d16, qg + i * N16), p0, p1);
          }
          return hn::Add(p0, p1);
        };
        TreeScores(d32, row_vec, sums + j * kTile);
      }
    }
    const hn::CappedTag<float, kTile> dt;
    const hn::Rebind<int32_t, decltype(dt)> dti;
    const hn::Rebind<hwy::float16_t, decltype(dt)> dth;
    const auto vq = hn::Set(dt, qc.scale);
    for (size_t i = 0; i < kTile; i += hn::Lanes(dt)) {
      auto acc = hn::Zero(dt);
      for (size_t j = 0; j < groups; ++j) {
        auto sum = hn::Load(dti, sums + j * kTile + i);
        // q4 codes are offset by 8 (exact in integers).
        if (!q8 && !asym) sum = hn::Sub(sum, hn::Set(dti, 8 * qc.sum[j]));
        acc = hn::MulAdd(
            hn::ConvertTo(dt, sum),
            hn::PromoteTo(dt, hn::Load(dth, scales + j * kTile + i)), acc);
      }
      // q4a: offset x the group's query-code sum (so a score is exactly
      // sum_i k_i q_i over the codes: the rounding bound holds for any offset).
      for (size_t j = 0; asym && j < groups; ++j) {
        acc = hn::MulAdd(hn::PromoteTo(dt, hn::Load(dth, offs + j * kTile + i)),
                         hn::Set(dt, float(qc.sum[j])), acc);
      }
      acc = hn::Mul(acc, vq);
      hn::Store(acc, dt, s + i);
    }
    return;
  }
#endif
  HWY_ASSERT(false);  // callers check IntScoreLanes
  (void)d, (void)KR, (void)r0, (void)qc, (void)s;
}

// The query codes in the order ScoreTileTreeQIT reads q4 nibbles for tag D
// (sums and scale unchanged).
template <class D>
HWY_INLINE void PermuteQ4Query(D /*d*/, const QueryCodes& in, size_t group,
                               size_t groups, QueryCodes* out) {
  const hn::Repartition<int16_t, D> d16;
  const size_t N16 = hn::Lanes(d16), H = N16 / 2, half = group / 2;
  for (size_t j = 0; j < groups; ++j) {
    const int16_t* src = in.codes + j * group;
    int16_t* dst = out->codes + j * group;
    for (size_t i = 0; i * N16 < group; ++i) {
      for (size_t l = 0; l < H; ++l) {
        dst[i * N16 + l] = src[i * H + l];
        dst[i * N16 + H + l] = src[half + i * H + l];
      }
    }
    out->sum[j] = in.sum[j];
  }
  out->scale = in.scale;
}

// Requires IntScoreLanes(d, KR).
template <class D>
HWY_NOINLINE void ScoreTileTreeQI(D d, const QuantRows& KR, size_t r0,
                                  const QueryCodes& qc, float* HWY_RESTRICT s) {
  const hn::Repartition<int16_t, D> d16;
  const size_t steps = KR.group / hn::Lanes(d16);
  const auto with_groups = [&](auto steps_c) {
    constexpr size_t kS = decltype(steps_c)::value;
    switch (KR.groups) {
      case 1:
        return ScoreTileTreeQIT<1, kS>(d, KR, r0, qc, s);
      case 2:
        return ScoreTileTreeQIT<2, kS>(d, KR, r0, qc, s);
      case 4:
        return ScoreTileTreeQIT<4, kS>(d, KR, r0, qc, s);
      default:
        return ScoreTileTreeQIT<0, kS>(d, KR, r0, qc, s);
    }
  };
  if (steps == 1) return with_groups(std::integral_constant<size_t, 1>());
  if (steps == 2) return with_groups(std::integral_constant<size_t, 2>());
  HWY_DASSERT(steps == 4);
  return with_groups(std::integral_constant<size_t, 4>());
}

// Online softmax of a tile for G queries (G = 1 for one-query calls): scores
// s, lane sums zl and weights P kTile apart per query (s[0, rows) valid, padded
// to kTile), accumulators acc_stride apart. First every query's max: when a
// lane exceeds m (the reduction to one max only runs then) the query's
// accumulator and lane sums are rescaled; then all G x kTile weights
// exp(s - m) (zero beyond rows) in one loop, so the queries' independent exp
// chains overlap, each added to zl lane by lane.
// One copy per target (not per tag pair of the callers).
static HWY_NOINLINE void SoftmaxGroupTile(float* HWY_RESTRICT s, size_t rows,
                                          size_t G, float* HWY_RESTRICT m,
                                          float* HWY_RESTRICT zl,
                                          float* HWY_RESTRICT acc,
                                          size_t acc_stride, size_t acc_cols,
                                          float* HWY_RESTRICT P) {
  const hn::CappedTag<float, kTile> d;
  const size_t L = hn::Lanes(d);
  for (size_t g = 0; g < G; ++g) {
    float* HWY_RESTRICT sg = s + g * kTile;
    for (size_t r = rows; r < kTile; ++r) sg[r] = -INFINITY;
    auto vmax = hn::LoadU(d, sg);
    for (size_t i = L; i < kTile; i += L) {
      vmax = hn::Max(vmax, hn::LoadU(d, sg + i));
    }
    if (!hn::AllFalse(d, hn::Gt(vmax, hn::Set(d, m[g])))) {
      const float mt = hn::GetLane(hn::MaxOfLanes(d, vmax));
      const float f = std::exp(m[g] - mt);  // 0 on the first tile
      float* HWY_RESTRICT a = acc + g * acc_stride;
      for (size_t c = 0; c < acc_cols; ++c) a[c] *= f;  // rare: max grows
      const auto vfz = hn::Set(d, f);
      for (size_t i = 0; i < kTile; i += L) {
        float* HWY_RESTRICT z = zl + g * kTile + i;
        hn::StoreU(hn::Mul(hn::LoadU(d, z), vfz), d, z);
      }
      m[g] = mt;
    }
  }
  const auto ninf = hn::Set(d, -INFINITY);
  for (size_t g = 0; g < G; ++g) {
    const auto vm = hn::Set(d, m[g]);
    for (size_t i = g * kTile; i < (g + 1) * kTile; i += L) {
      const auto x = hn::LoadU(d, s + i);
      // Padding rows (-inf) weigh exactly 0.
      const auto e =
          hn::IfThenZeroElse(hn::Eq(x, ninf), hn::Exp(d, hn::Sub(x, vm)));
      hn::StoreU(e, d, P + i);
      hn::StoreU(hn::Add(hn::LoadU(d, zl + i), e), d, zl + i);
    }
  }
}

// One query (G = 1): scores, online softmax and values per tile, straight
// from the stored rows (grouped calls: AttendGroupT below).
template <class DK, class DV, class KR, class VR>
void AttendT(DK dk, DV dv, const KR& K, const VR& V, size_t n,
             const float* HWY_RESTRICT logw, const float* HWY_RESTRICT q,
             const float* HWY_RESTRICT qsum, const QueryCodes* qc,
             float* HWY_RESTRICT m, float* HWY_RESTRICT z,
             float* HWY_RESTRICT acc, size_t acc_cols,
             float* HWY_RESTRICT scores) {
  // Two score buffers: the next tile's scores are computed before this
  // tile's softmax and values, so they overlap the exp latency (the next
  // tile's work is close enough for the out-of-order window).
  HWY_ALIGN float sbuf[2][kTile];
  HWY_ALIGN float p[kTile];
  HWY_ALIGN float zl[kTile] = {};  // per-lane sums of the weights
  const bool tree = TreeLanes(dk);
  const size_t pf_rows =
      PrefetchRows(K, std::is_same<KR, QuantRows>::value ? 2 * kPrefetchBytes
                                                         : kPrefetchBytes);
  // Integer scores when the query has codes and the lanes fit the groups;
  // q4 reads the codes in its nibble order.
  const QueryCodes* qi = nullptr;
  HWY_ALIGN QueryCodes q4codes;
  if constexpr (std::is_same<KR, QuantRows>::value) {
    if (qc && IntScoreLanes(dk, K)) {
      qi = qc;
      if (!K.q8) {
        PermuteQ4Query(dk, *qc, K.group, K.groups, &q4codes);
        qi = &q4codes;
      }
    }
  }
  const auto score = [&](size_t r0, float* HWY_RESTRICT s) {
    const size_t rows = HWY_MIN(kTile, n - r0);
    bool scored = false;
    if (tree && rows == kTile) {
      if constexpr (std::is_same<KR, QuantRows>::value) {
        if (qi) {
          ScoreTileTreeQI(dk, K, r0, *qi, s);
          scored = true;
        } else if (K.q8) {
          ScoreTileTreeQ8(dk, K, r0, q, s);
          scored = true;
        }
      } else {
        ScoreTileTree(dk, K.p + r0 * K.stride, K.stride, K.cols, q, s);
        scored = true;
      }
      if (scored && logw) {
        for (size_t r = 0; r < kTile; ++r) s[r] += logw[r0 + r];
      }
    }
    if (!scored) {
      ScoreTile(dk, K, r0, q, qsum, logw ? logw + r0 : nullptr, rows, s);
    }
    if (scores) {
      for (size_t r = 0; r < rows; ++r) scores[r0 + r] = s[r];
    }
  };
  if (n != 0) score(0, sbuf[0]);
  for (size_t r0 = 0, t = 0; r0 < n; r0 += kTile, ++t) {
    const size_t rows = HWY_MIN(kTile, n - r0);
    PrefetchAhead(K, V, r0, n, pf_rows);
    if (r0 + kTile < n) score(r0 + kTile, sbuf[(t + 1) & 1]);
    float* HWY_RESTRICT s = sbuf[t & 1];
    SoftmaxGroupTile(s, rows, 1, m, zl, acc, acc_cols, acc_cols, p);
    AccumulateTile(dv, V, r0, p, rows, acc);
  }
  float sum = 0.0f;
  for (size_t i = 0; i < kTile; ++i) sum += zl[i];
  *z += sum;
}

// Rows [r0, r0 + rows) as the grouped kernels read them: float rows in
// place (converted in registers by the kernels), quantized rows decoded to f32
// into `buf` ([rows][stride]).
template <class D, typename T>
HWY_INLINE FloatRows<T> TileRows(D /*d*/, const FloatRows<T>& R, size_t r0,
                                 size_t /*rows*/, float* HWY_RESTRICT /*buf*/) {
  return FloatRows<T>{R.p + r0 * R.stride, R.stride, R.cols};
}
// The f16 at byte `src_off` of each group of a tile's rows (0: the scales,
// 2: q4a's offsets) as f32, out[group * kTile + row]; rows past `rows` (never
// read) repeat the first row's.
inline void TileHalves(const QuantRows& R, size_t r0, size_t rows,
                       size_t src_off, float* HWY_RESTRICT out) {
  const uint8_t* HWY_RESTRICT base = R.p + r0 * R.rowb + src_off;
  for (size_t j = 0; j < R.groups; ++j) {
    for (size_t r = 0; r < rows; ++r) {
      out[j * kTile + r] = HalfAt(base + r * R.rowb + j * R.block);
    }
    for (size_t r = rows; r < kTile; ++r) out[j * kTile + r] = out[j * kTile];
  }
}

// Quantized rows decode to what they store (rotated rows stay rotated), all
// quantized columns (whole groups). The tile's f16 scales (and offsets) are
// converted first, out of the row loop (which then has no scalar work and
// no branch on the storage); every group of a row is its codes times a
// broadcast scale (plus offset).
template <class D>
HWY_NOINLINE FloatRows<float> TileRows(D d, const QuantRows& R, size_t r0,
                                       size_t rows, float* HWY_RESTRICT buf) {
  const size_t N = hn::Lanes(d);
  const hn::Rebind<int32_t, D> di;
  const size_t g = R.group, half = g / 2, qcols = R.groups * g;
  const size_t groups = R.groups, rowb = R.rowb, block = R.block;
  const size_t co = R.code_offset();
  const uint8_t* HWY_RESTRICT base = R.p + r0 * rowb;
  HWY_ALIGN float sc[kMaxQuantGroups * kTile];
  HWY_ALIGN float off[kMaxQuantGroups * kTile];
  const hn::CappedTag<float, kTile> dt;
  const size_t T = hn::Lanes(dt);
  // Rows past `rows` (never read) repeat the first row's half.
  TileHalves(R, r0, rows, 0, sc);
  if (R.q8) {
    for (size_t r = 0; r < rows; ++r) {
      const uint8_t* HWY_RESTRICT row = base + r * rowb + co;
      float* HWY_RESTRICT dst = buf + r * qcols;
      for (size_t j = 0; j < groups; ++j) {
        const auto s = hn::Set(d, sc[j * kTile + r]);
        const uint8_t* HWY_RESTRICT codes = row + j * block;
        for (size_t i = 0; i < g; i += N) {
          hn::StoreU(hn::Mul(s, LoadQ8(d, codes, i)), d, dst + j * g + i);
        }
      }
    }
    return FloatRows<float>{buf, qcols, RoundUp(R.cols, N)};
  }
  if (R.asym) {
    TileHalves(R, r0, rows, 2, off);
  } else {
    for (size_t i = 0; i < groups * kTile; i += T) {
      hn::Store(hn::Mul(hn::Load(dt, sc + i), hn::Set(dt, -8.0f)), dt, off + i);
    }
  }
  const auto mask = hn::Set(di, 0xF);
  for (size_t r = 0; r < rows; ++r) {
    const uint8_t* HWY_RESTRICT row = base + r * rowb + co;
    float* HWY_RESTRICT dst = buf + r * qcols;
    for (size_t j = 0; j < groups; ++j) {
      const auto s = hn::Set(d, sc[j * kTile + r]);
      const auto o = hn::Set(d, off[j * kTile + r]);
      const uint8_t* HWY_RESTRICT codes = row + j * block;
      float* HWY_RESTRICT out = dst + j * g;
      for (size_t i = 0; i < half; i += N) {
        const auto b = LoadQ4Bytes(d, codes, i);
        hn::StoreU(hn::MulAdd(s, hn::ConvertTo(d, hn::And(b, mask)), o), d,
                   out + i);
        hn::StoreU(hn::MulAdd(s, hn::ConvertTo(d, hn::ShiftRight<4>(b)), o), d,
                   out + half + i);
      }
    }
  }
  return FloatRows<float>{buf, qcols, RoundUp(R.cols, N)};
}

// Queries per register block of the grouped kernels: 4 where the target has
// 32 vector registers (AVX-512, AArch64: 16 accumulators, 4 query and 4
// row vectors), 2 where it has 16 (AVX2 and older, Armv7).
#if (HWY_ARCH_X86 && HWY_TARGET > HWY_AVX3) || HWY_ARCH_ARM_V7
constexpr size_t kBlockQ = 2;
#else
constexpr size_t kBlockQ = 4;
#endif

// Row sources of the grouped kernels' register blocks: At(c) names column c
// (a multiple of the lanes), Next moves it on by the lanes, Load(d, r, col)
// is row r's vector there as f32. FloatSrc: float rows, converted in
// registers. Q8Src: a tile's q8 rows, each vector its codes times the row's
// group scale in registers, the products TileRows would store (so the
// results are the same), without storing and reloading the decoded tile
// (which took ~45 % of a grouped q8 call at d = 128 in cache).
template <typename T>
struct FloatSrc {
  const T* HWY_RESTRICT p;
  size_t stride;
  struct Col {
    size_t c;
  };
  Col At(size_t c) const { return Col{c}; }
  void Next(Col& col, size_t lanes) const { col.c += lanes; }
  template <class D>
  HWY_INLINE hn::Vec<D> Load(D d, size_t r, const Col& col) const {
    return LoadF32(d, p + r * stride + col.c);
  }
};
struct Q8Src {
  const uint8_t* HWY_RESTRICT p;  // the tile's first row, first code
  size_t rowb, block, group;
  const float* HWY_RESTRICT sc;  // [groups][kTile] scales
  struct Col {
    size_t off, i;  // byte offset in a row, column in the group
    const float* HWY_RESTRICT sc;
  };
  Col At(size_t c) const {
    const size_t j = c / group, i = c - j * group;
    return Col{j * block + i, i, sc + j * kTile};
  }
  void Next(Col& col, size_t lanes) const {
    col.off += lanes;
    col.i += lanes;
    if (col.i == group) {
      col.i = 0;
      col.off += block - group;
      col.sc += kTile;
    }
  }
  template <class D>
  HWY_INLINE hn::Vec<D> Load(D d, size_t r, const Col& col) const {
    return hn::Mul(hn::Set(d, col.sc[r]), LoadQ8(d, p + r * rowb + col.off, 0));
  }
};

#if HWY_TARGET != HWY_SCALAR
// Scores of a full tile (kTile rows `stride` apart; kcols a multiple of the
// lanes, queries zero beyond the valid columns) against kQ queries q_stride
// apart, into s[i * kTile + r]: four rows at a time meet all kQ queries, so
// every key vector loaded (and converted) serves kQ FMAs and every query
// vector 4, with 4 x kQ independent chains. Each query's four row sums fold
// into one vector, then FoldParts as in ScoreTileTree. Requires TreeLanes(d).
template <size_t kQ, class D, class Src>
HWY_NOINLINE void ScoreGroupTile(D d, const Src& K, size_t kcols,
                                 const float* HWY_RESTRICT q, size_t q_stride,
                                 float* HWY_RESTRICT s) {
  static_assert(kQ == 2 || kQ == 4, "queries per block");
  const size_t N = hn::Lanes(d);
  HWY_ALIGN float part[kQ * kTile * kTile / 4];  // [kQ][kTile / 4][N]
  const size_t pstride = kTile / 4 * N;
  const float* HWY_RESTRICT q0p = q;
  const float* HWY_RESTRICT q1p = q + q_stride;
  const float* HWY_RESTRICT q2p = q + (kQ > 2 ? 2 * q_stride : 0);
  const float* HWY_RESTRICT q3p = q + (kQ > 2 ? 3 * q_stride : 0);
  for (size_t j = 0; j < kTile / 4; ++j) {
    const size_t r0 = 4 * j;
    // a<query><row>
    auto a00 = hn::Zero(d), a01 = a00, a02 = a00, a03 = a00;
    auto a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    auto a20 = a00, a21 = a00, a22 = a00, a23 = a00;
    auto a30 = a00, a31 = a00, a32 = a00, a33 = a00;
    auto col = K.At(0);
    for (size_t c = 0; c < kcols; c += N, K.Next(col, N)) {
      const auto x0 = K.Load(d, r0, col);
      const auto x1 = K.Load(d, r0 + 1, col);
      const auto x2 = K.Load(d, r0 + 2, col);
      const auto x3 = K.Load(d, r0 + 3, col);
      const auto q0 = hn::LoadU(d, q0p + c);
      a00 = hn::MulAdd(x0, q0, a00);
      a01 = hn::MulAdd(x1, q0, a01);
      a02 = hn::MulAdd(x2, q0, a02);
      a03 = hn::MulAdd(x3, q0, a03);
      const auto q1 = hn::LoadU(d, q1p + c);
      a10 = hn::MulAdd(x0, q1, a10);
      a11 = hn::MulAdd(x1, q1, a11);
      a12 = hn::MulAdd(x2, q1, a12);
      a13 = hn::MulAdd(x3, q1, a13);
      if constexpr (kQ > 2) {
        const auto q2 = hn::LoadU(d, q2p + c);
        a20 = hn::MulAdd(x0, q2, a20);
        a21 = hn::MulAdd(x1, q2, a21);
        a22 = hn::MulAdd(x2, q2, a22);
        a23 = hn::MulAdd(x3, q2, a23);
        const auto q3 = hn::LoadU(d, q3p + c);
        a30 = hn::MulAdd(x0, q3, a30);
        a31 = hn::MulAdd(x1, q3, a31);
        a32 = hn::MulAdd(x2, q3, a32);
        a33 = hn::MulAdd(x3, q3, a33);
      }
    }
    hn::Store(Fold2(d, Fold2(d, a00, a01), Fold2(d, a02, a03)), d,
              part + j * N);
    hn::Store(Fold2(d, Fold2(d, a10, a11), Fold2(d, a12, a13)), d,
              part + pstride + j * N);
    if constexpr (kQ > 2) {
      hn::Store(Fold2(d, Fold2(d, a20, a21), Fold2(d, a22, a23)), d,
                part + 2 * pstride + j * N);
      hn::Store(Fold2(d, Fold2(d, a30, a31), Fold2(d, a32, a33)), d,
                part + 3 * pstride + j * N);
    }
  }
  for (size_t i = 0; i < kQ; ++i) {
    FoldParts(d, part + i * pstride, s + i * kTile);
  }
}
#endif

#if HWY_TARGET != HWY_SCALAR
// A full tile's scores for all G queries into s[g * kTile + r], log-weights
// added: blocks of kBlockQ (then 2) queries, a last query through single(g).
// Requires TreeLanes(d).
template <class D, class Src, class Single>
HWY_INLINE void ScoreBlocks(D d, const Src& K, size_t kcols,
                            const float* HWY_RESTRICT qs, size_t q_stride,
                            size_t G, const float* HWY_RESTRICT logw,
                            float* HWY_RESTRICT s, const Single& single) {
  size_t g = 0;
  if constexpr (kBlockQ == 4) {
    for (; g + 4 <= G; g += 4) {
      ScoreGroupTile<4>(d, K, kcols, qs + g * q_stride, q_stride,
                        s + g * kTile);
    }
  }
  for (; g + 2 <= G; g += 2) {
    ScoreGroupTile<2>(d, K, kcols, qs + g * q_stride, q_stride, s + g * kTile);
  }
  if (g < G) single(g);
  if (logw) {
    for (size_t i = 0; i < G; ++i) {
      for (size_t r = 0; r < kTile; ++r) s[i * kTile + r] += logw[r];
    }
  }
}
#endif

// The tile's scores for all G queries into s[g * kTile + r] (tile-relative
// rows; log-weights added): full tiles in blocks of kBlockQ (then 2) queries,
// a last single query through ScoreTileTree; partial tiles (and targets
// without the tree) one query and row at a time.
template <class D, typename T>
HWY_INLINE void ScoreGroup(D d, const FloatRows<T>& KT, size_t rows,
                           const float* HWY_RESTRICT qs, size_t q_stride,
                           size_t G, const float* HWY_RESTRICT logw,
                           float* HWY_RESTRICT s) {
#if HWY_TARGET != HWY_SCALAR
  if constexpr (hn::MaxLanes(D()) >= 4) {
    if (rows == kTile && TreeLanes(d)) {
      ScoreBlocks(d, FloatSrc<T>{KT.p, KT.stride}, KT.cols, qs, q_stride, G,
                  logw, s, [&](size_t g) {
                    ScoreTileTree(d, KT.p, KT.stride, KT.cols,
                                  qs + g * q_stride, s + g * kTile);
                  });
      return;
    }
  }
#endif
  for (size_t g = 0; g < G; ++g) {
    ScoreTile(d, KT, 0, qs + g * q_stride, nullptr, logw, rows, s + g * kTile);
  }
}

// acc_i[c0, c0 + kC N) += sum_r P[i][r] * V[r][c0, ...) for i < kQ (P rows
// kTile apart, accumulators at acc[i]): kQ x kC accumulators in registers
// for the whole tile; each row costs kC value loads (converted) and kQ
// broadcasts for kQ x kC independent FMAs.
template <size_t kQ, size_t kC, class D, class Src>
HWY_INLINE void AccumulateBlock(D d, const Src& V, size_t c0,
                                const float* HWY_RESTRICT P, size_t rows,
                                float* const* acc) {
  static_assert((kQ == 2 || kQ == 4) && (kC == 1 || kC == 2 || kC == 4),
                "block shape");
  const size_t N = hn::Lanes(d);
  float* HWY_RESTRICT p0 = acc[0] + c0;
  float* HWY_RESTRICT p1 = acc[1] + c0;
  float* HWY_RESTRICT p2 = acc[kQ > 2 ? 2 : 0] + c0;
  float* HWY_RESTRICT p3 = acc[kQ > 2 ? 3 : 0] + c0;
  // a<query><column vector>
  auto a00 = hn::LoadU(d, p0), a01 = a00, a02 = a00, a03 = a00;
  auto a10 = hn::LoadU(d, p1), a11 = a10, a12 = a10, a13 = a10;
  auto a20 = a00, a21 = a00, a22 = a00, a23 = a00;
  auto a30 = a00, a31 = a00, a32 = a00, a33 = a00;
  if constexpr (kC > 1) {
    a01 = hn::LoadU(d, p0 + N);
    a11 = hn::LoadU(d, p1 + N);
  }
  if constexpr (kC > 2) {
    a02 = hn::LoadU(d, p0 + 2 * N);
    a03 = hn::LoadU(d, p0 + 3 * N);
    a12 = hn::LoadU(d, p1 + 2 * N);
    a13 = hn::LoadU(d, p1 + 3 * N);
  }
  if constexpr (kQ > 2) {
    a20 = hn::LoadU(d, p2);
    a30 = hn::LoadU(d, p3);
    if constexpr (kC > 1) {
      a21 = hn::LoadU(d, p2 + N);
      a31 = hn::LoadU(d, p3 + N);
    }
    if constexpr (kC > 2) {
      a22 = hn::LoadU(d, p2 + 2 * N);
      a23 = hn::LoadU(d, p2 + 3 * N);
      a32 = hn::LoadU(d, p3 + 2 * N);
      a33 = hn::LoadU(d, p3 + 3 * N);
    }
  }
  auto col0 = V.At(c0), col1 = col0, col2 = col0, col3 = col0;
  if constexpr (kC > 1) V.Next(col1 = col0, N);
  if constexpr (kC > 2) {
    V.Next(col2 = col1, N);
    V.Next(col3 = col2, N);
  }
  for (size_t r = 0; r < rows; ++r) {
    const auto v0 = V.Load(d, r, col0);
    auto v1 = v0, v2 = v0, v3 = v0;
    if constexpr (kC > 1) v1 = V.Load(d, r, col1);
    if constexpr (kC > 2) {
      v2 = V.Load(d, r, col2);
      v3 = V.Load(d, r, col3);
    }
    const auto w0 = hn::Set(d, P[r]);
    const auto w1 = hn::Set(d, P[kTile + r]);
    auto w2 = w0, w3 = w0;
    if constexpr (kQ > 2) {
      w2 = hn::Set(d, P[2 * kTile + r]);
      w3 = hn::Set(d, P[3 * kTile + r]);
    }
    a00 = hn::MulAdd(w0, v0, a00);
    a10 = hn::MulAdd(w1, v0, a10);
    if constexpr (kQ > 2) {
      a20 = hn::MulAdd(w2, v0, a20);
      a30 = hn::MulAdd(w3, v0, a30);
    }
    if constexpr (kC > 1) {
      a01 = hn::MulAdd(w0, v1, a01);
      a11 = hn::MulAdd(w1, v1, a11);
      if constexpr (kQ > 2) {
        a21 = hn::MulAdd(w2, v1, a21);
        a31 = hn::MulAdd(w3, v1, a31);
      }
    }
    if constexpr (kC > 2) {
      a02 = hn::MulAdd(w0, v2, a02);
      a03 = hn::MulAdd(w0, v3, a03);
      a12 = hn::MulAdd(w1, v2, a12);
      a13 = hn::MulAdd(w1, v3, a13);
      if constexpr (kQ > 2) {
        a22 = hn::MulAdd(w2, v2, a22);
        a23 = hn::MulAdd(w2, v3, a23);
        a32 = hn::MulAdd(w3, v2, a32);
        a33 = hn::MulAdd(w3, v3, a33);
      }
    }
  }
  hn::StoreU(a00, d, p0);
  hn::StoreU(a10, d, p1);
  if constexpr (kC > 1) {
    hn::StoreU(a01, d, p0 + N);
    hn::StoreU(a11, d, p1 + N);
  }
  if constexpr (kC > 2) {
    hn::StoreU(a02, d, p0 + 2 * N);
    hn::StoreU(a03, d, p0 + 3 * N);
    hn::StoreU(a12, d, p1 + 2 * N);
    hn::StoreU(a13, d, p1 + 3 * N);
  }
  if constexpr (kQ > 2) {
    hn::StoreU(a20, d, p2);
    hn::StoreU(a30, d, p3);
    if constexpr (kC > 1) {
      hn::StoreU(a21, d, p2 + N);
      hn::StoreU(a31, d, p3 + N);
    }
    if constexpr (kC > 2) {
      hn::StoreU(a22, d, p2 + 2 * N);
      hn::StoreU(a23, d, p2 + 3 * N);
      hn::StoreU(a32, d, p3 + 2 * N);
      hn::StoreU(a33, d, p3 + 3 * N);
    }
  }
}

// kQ queries' values for one tile: column blocks of kMaxC vectors (16
// accumulators with kQ = 4 on 32-register targets, 8 otherwise), the
// remaining columns one vector at a time.
template <size_t kQ, class D, class Src>
HWY_INLINE void AccumulateQueries(D d, const Src& V, size_t cols,
                                  const float* HWY_RESTRICT P, size_t rows,
                                  float* const* acc) {
  constexpr size_t kMaxC = kBlockQ * 4 / kQ;
  const size_t N = hn::Lanes(d);
  size_t c = 0;
  if constexpr (kMaxC >= 4) {
    for (; c + 4 * N <= cols; c += 4 * N) {
      AccumulateBlock<kQ, 4>(d, V, c, P, rows, acc);
    }
  }
  for (; c + 2 * N <= cols; c += 2 * N) {
    AccumulateBlock<kQ, 2>(d, V, c, P, rows, acc);
  }
  for (; c < cols; c += N) {
    AccumulateBlock<kQ, 1>(d, V, c, P, rows, acc);
  }
}

// The whole group's values for one tile: blocks of kBlockQ queries (a block
// with fewer queries left runs on zero weights into `spare`), then a pair,
// then a last query on its own. P: [kMaxGroup][kTile], rows >= G zero.
template <class D, typename TV>
HWY_NOINLINE void AccumulateGroup(D d, const FloatRows<TV>& VR,
                                  const float* HWY_RESTRICT P, size_t rows,
                                  size_t G, float* HWY_RESTRICT acc,
                                  size_t acc_stride,
                                  float* HWY_RESTRICT spare) {
  const FloatSrc<TV> V{VR.p, VR.stride};
  const size_t cols = VR.cols;
  size_t g0 = 0;
  if constexpr (kBlockQ == 4) {
    // Three queries left: a block of four with one zero-weight query.
    for (; g0 + 3 <= G; g0 += 4) {
      float* accp[4];
      for (size_t i = 0; i < 4; ++i) {
        accp[i] = g0 + i < G ? acc + (g0 + i) * acc_stride : spare;
      }
      AccumulateQueries<4>(d, V, cols, P + g0 * kTile, rows, accp);
    }
  }
  for (; g0 + 2 <= G; g0 += 2) {
    float* accp[2] = {acc + g0 * acc_stride, acc + (g0 + 1) * acc_stride};
    AccumulateQueries<2>(d, V, cols, P + g0 * kTile, rows, accp);
  }
  if (g0 < G) {
    AccumulateTile(d, VR, 0, P + g0 * kTile, rows, acc + g0 * acc_stride);
  }
}
// q8 values (all quantized columns, `cols`) of a group that fits one register
// block (2 <= G <= kBlockQ): one block of 2 or 4 queries, those past G on zero
// weights (P's rows >= G) into `spare`.
template <class D>
HWY_NOINLINE void AccumulateGroupQ8(D d, const Q8Src& V, size_t cols,
                                    const float* HWY_RESTRICT P, size_t rows,
                                    size_t G, float* HWY_RESTRICT acc,
                                    size_t acc_stride,
                                    float* HWY_RESTRICT spare) {
  HWY_DASSERT(G >= 2 && G <= kBlockQ);
  float* accp[kBlockQ];
  for (size_t i = 0; i < kBlockQ; ++i) {
    accp[i] = i < G ? acc + i * acc_stride : spare;
  }
  if constexpr (kBlockQ == 4) {
    if (G > 2) return AccumulateQueries<4>(d, V, cols, P, rows, accp);
  }
  AccumulateQueries<2>(d, V, cols, P, rows, accp);
}

// A tile of q8 rows as a Q8Src; sc: [groups][kTile] for the scales.
inline Q8Src MakeQ8Src(const QuantRows& R, size_t r0, size_t rows,
                       float* HWY_RESTRICT sc) {
  TileHalves(R, r0, rows, 0, sc);
  return Q8Src{R.p + r0 * R.rowb + R.code_offset(), R.rowb, R.block, R.group,
               sc};
}

#if HWY_TARGET != HWY_SCALAR
// ScoreGroup's full-tile path over q8 keys (kcols: all quantized columns); a
// last query goes through a pair with itself. Requires TreeLanes(d).
template <class D>
HWY_NOINLINE void ScoreGroupQ8(D d, const Q8Src& K, size_t kcols,
                               const float* HWY_RESTRICT qs, size_t q_stride,
                               size_t G, const float* HWY_RESTRICT logw,
                               float* HWY_RESTRICT s) {
  if constexpr (hn::MaxLanes(D()) >= 4) {
    ScoreBlocks(d, K, kcols, qs, q_stride, G, logw, s, [&](size_t g) {
      HWY_ALIGN float pair[2 * kTile];
      ScoreGroupTile<2>(d, K, kcols, qs + g * q_stride, 0, pair);
      std::memcpy(s + g * kTile, pair, kTile * sizeof(float));
    });
  }
}
#endif

template <class DK, class DV, class KR, class VR>
void AttendGroupT(DK dk, DV dv, const KR& K, const VR& V, size_t n,
                  const float* HWY_RESTRICT logw, const float* HWY_RESTRICT qs,
                  size_t q_stride, size_t G, float* HWY_RESTRICT m,
                  float* HWY_RESTRICT z, float* HWY_RESTRICT acc,
                  size_t acc_stride, size_t acc_cols,
                  float* HWY_RESTRICT scores) {
  // Two score buffers: the next tile's scores are computed before this
  // tile's softmax and values (independent FMAs beside the exp chains).
  HWY_ALIGN float sbuf[2][kMaxGroup * kTile];
  HWY_ALIGN float P[kMaxGroup * kTile];
  HWY_ALIGN float zl[kMaxGroup * kTile];  // per-lane sums of the weights
  for (size_t i = 0; i < G * kTile; ++i) zl[i] = 0.0f;
  // Weights of the query a block pads with (zero), and where its
  // accumulator goes.
  for (size_t i = G * kTile; i < kMaxGroup * kTile; ++i) P[i] = 0.0f;
  HWY_ALIGN float spare[kMaxHeadDim];
  for (size_t c = 0; c < acc_stride; ++c) spare[c] = 0.0f;
  // Quantized rows of the tile decoded to f32: at most kTile x kMaxHeadDim.
  constexpr bool kQuantK = std::is_same<KR, QuantRows>::value;
  constexpr bool kQuantV = std::is_same<VR, QuantRows>::value;
  HWY_ALIGN float kbuf[kQuantK ? kTile * kMaxHeadDim : 1];
  HWY_ALIGN float vbuf[kQuantV ? kTile * kMaxHeadDim : 1];
  // q8 tiles' scales, when their rows are read in registers (Q8Src): for one
  // register block of queries. With more, each block would widen and scale
  // the codes again; decoding the tile once measured faster there
  // (kvsketch_microbench in cache: at G = 4 registers 7-13 % faster, at
  // G = 8 3-10 % slower).
  const bool fuse_q8 = G <= kBlockQ;
  HWY_ALIGN float ksc[kQuantK ? kMaxQuantGroups * kTile : 1];
  HWY_ALIGN float vsc[kQuantV ? kMaxQuantGroups * kTile : 1];
  (void)ksc;  // unused on HWY_SCALAR
  const size_t pf_rows = GroupPrefetchRows(K);
  const auto score = [&](size_t r0, float* HWY_RESTRICT s) {
    const size_t rows = HWY_MIN(kTile, n - r0);
    // The keys of the tile after this one (V's prefetch: before values).
    if (r0 + kTile + pf_rows <= n) PrefetchTile(K, r0 + pf_rows);
    const float* HWY_RESTRICT lw = logw ? logw + r0 : nullptr;
    bool scored = false;
#if HWY_TARGET != HWY_SCALAR
    if constexpr (kQuantK) {
      if (fuse_q8 && K.q8 && rows == kTile && TreeLanes(dk)) {
        ScoreGroupQ8(dk, MakeQ8Src(K, r0, rows, ksc), K.groups * K.group, qs,
                     q_stride, G, lw, s);
        scored = true;
      }
    }
#endif
    if (!scored) {
      ScoreGroup(dk, TileRows(dk, K, r0, rows, kbuf), rows, qs, q_stride, G, lw,
                 s);
    }
    if (scores) {
      for (size_t g = 0; g < G; ++g) {
        for (size_t r = 0; r < rows; ++r) {
          scores[g * n + r0 + r] = s[g * kTile + r];
        }
      }
    }
  };
  if (n != 0) score(0, sbuf[0]);
  for (size_t r0 = 0, t = 0; r0 < n; r0 += kTile, ++t) {
    const size_t rows = HWY_MIN(kTile, n - r0);
    if (r0 + kTile < n) score(r0 + kTile, sbuf[(t + 1) & 1]);
    float* HWY_RESTRICT s = sbuf[t & 1];
    SoftmaxGroupTile(s, rows, G, m, zl, acc, acc_stride, acc_cols, P);
    if (r0 + kTile + pf_rows <= n) PrefetchTile(V, r0 + pf_rows);
    if constexpr (kQuantV) {
      if (fuse_q8 && V.q8) {
        AccumulateGroupQ8(dv, MakeQ8Src(V, r0, rows, vsc), V.groups * V.group,
                          P, rows, G, acc, acc_stride, spare);
        continue;
      }
    }
    auto VT = TileRows(dv, V, r0, rows, vbuf);
    if constexpr (kQuantV)
      VT.cols = VT.stride;  // the accumulator: whole groups
    AccumulateGroup(dv, VT, P, rows, G, acc, acc_stride, spare);
  }
  for (size_t g = 0; g < G; ++g) {
    float sum = 0.0f;
    for (size_t i = 0; i < kTile; ++i) sum += zl[g * kTile + i];
    z[g] += sum;
  }
}

// Residual sums of a Taylor-split attention (see ResidualAccumulate).
template <class DK, class DV, class KR, class VR>
void ResidualT(DK dk, DV dv, const KR& K, const VR& V, size_t n,
               const float* HWY_RESTRICT logw, const float* HWY_RESTRICT qs,
               const float* HWY_RESTRICT qsum, float shift,
               const float* HWY_RESTRICT shifts, float ref, int degree,
               float* HWY_RESTRICT N, float* HWY_RESTRICT Z) {
  const hn::CappedTag<float, 16> d;
  const size_t L = hn::Lanes(d);
  HWY_ALIGN float s[kTile];
  HWY_ALIGN float bias[kTile];
  float zsum = 0.0f;
  for (size_t r0 = 0; r0 < n; r0 += kTile) {
    const size_t rows = HWY_MIN(kTile, n - r0);
    ScoreTile(dk, K, r0, qs, qsum, nullptr, rows, s);
    for (size_t r = 0; r < rows; ++r) {
      const float sh = shifts ? shifts[r0 + r] : shift;
      s[r] -= sh;                                         // x_j
      bias[r] = (logw ? logw[r0 + r] : 0.0f) + sh - ref;  // log factor
    }
    for (size_t r = rows; r < kTile; ++r) {
      s[r] = 0.0f;
      bias[r] = -INFINITY;
    }
    for (size_t i = 0; i < kTile; i += L) {
      const auto fac = hn::Exp(d, hn::LoadU(d, bias + i));
      const auto res = TaylorResidual(d, hn::LoadU(d, s + i), degree);
      // A zero factor (skipped rows, padding) must not meet an infinite
      // residual: 0 * inf would be NaN.
      const auto w =
          hn::IfThenZeroElse(hn::Eq(fac, hn::Zero(d)), hn::Mul(fac, res));
      hn::StoreU(w, d, s + i);
    }
    for (size_t r = 0; r < rows; ++r) zsum += s[r];
    AccumulateTile(dv, V, r0, s, rows, N);
  }
  *Z += zsum;
}

// ------------------------------------------------- queries in, outputs out

// Columns a row side processes, for the chosen lanes.
template <typename T>
HWY_INLINE void AdjustCols(FloatRows<T>& r, size_t lanes, const RowsView& v) {
  r.cols = RoundUp(v.cols, lanes);
}
HWY_INLINE void AdjustCols(QuantRows& /*r*/, size_t /*lanes*/,
                           const RowsView& /*v*/) {}
// Columns of the accumulator the online softmax rescales.
template <typename T>
HWY_INLINE size_t AccCols(const FloatRows<T>& r, size_t /*acc_stride*/) {
  return r.cols;
}
HWY_INLINE size_t AccCols(const QuantRows& /*r*/, size_t acc_stride) {
  return acc_stride;
}

// Values accumulate straight into N unless they are quantized (then a
// scratch [G][QuantCols] is rotated back if needed and copied to N).
template <class VR>
constexpr bool kDirectOutput = !std::is_same<VR, QuantRows>::value;

// Scaled (and, for rotated keys, rotated) copies of G queries [G][q_stride],
// plus their sums per quantization group of the keys (qsum [G][groups]).
// Returns q_stride.
inline size_t PrepareQueries(const RowsView& K, const float* q, size_t G,
                             float scale, float* HWY_RESTRICT qs,
                             float* HWY_RESTRICT qsum) {
  const bool quant = IsQuantized(K.type);
  const size_t q_stride = quant ? QuantCols(K.cols) : K.stride;
  for (size_t g = 0; g < G; ++g) {
    float* row = qs + g * q_stride;
    for (size_t c = 0; c < K.cols; ++c) row[c] = q[g * K.stride + c] * scale;
    for (size_t c = K.cols; c < q_stride; ++c) row[c] = 0.0f;
    if (K.rotated) HadamardInPlace(row, K.cols);
    if (quant) {
      const size_t grp = QuantGroup(K.cols), groups = q_stride / grp;
      for (size_t j = 0; j < groups; ++j) {
        float sum = 0.0f;
        for (size_t c = 0; c < grp; ++c) sum += row[j * grp + c];
        qsum[g * kMaxQuantGroups + j] = sum;
      }
    }
  }
  return q_stride;
}

inline size_t AccStride(const RowsView& V) {
  return IsQuantized(V.type) ? QuantCols(V.cols) : V.stride;
}
inline void FinishOutputs(const RowsView& V, size_t G, float* HWY_RESTRICT acc,
                          size_t acc_stride, float* HWY_RESTRICT N) {
  for (size_t g = 0; g < G; ++g) {
    float* a = acc + g * acc_stride;
    if (V.rotated) HadamardInPlace(a, V.cols);
    float* out = N + g * V.stride;
    for (size_t c = 0; c < V.cols; ++c) out[c] = a[c];
    for (size_t c = V.cols; c < V.stride; ++c) out[c] = 0.0f;
  }
}

// Calls f(dk, dv, keys, values) with each side's lanes and its row source
// adjusted to them.
template <class KR, class VR, class F>
HWY_INLINE void WithSides(const KR& kr, const VR& vr, const RowsView& K,
                          const RowsView& V, const F& f) {
  WithTagFor(kr, K, [&](auto dk) {
    WithTagFor(vr, V, [&](auto dv) {
      auto k2 = kr;
      auto v2 = vr;
      AdjustCols(k2, hn::Lanes(dk), K);
      AdjustCols(v2, hn::Lanes(dv), V);
      f(dk, dv, k2, v2);
    });
  });
}

template <class KR, class VR>
void AttendRows(const KR& kr, const VR& vr, const RowsView& K,
                const RowsView& V, const float* logw, const float* q, size_t G,
                float scale, float* m, float* z, float* N, float* scores) {
  // Scaled copies of the queries (stack; Attend never allocates).
  HWY_ALIGN float qs[kMaxGroup * kMaxHeadDim];
  HWY_ALIGN float qsum[kMaxGroup * kMaxQuantGroups];
  constexpr bool direct = kDirectOutput<VR>;
  HWY_ALIGN float scratch[direct ? 1 : kMaxGroup * kMaxHeadDim];
  const size_t q_stride = PrepareQueries(K, q, G, scale, qs, qsum);
  // One query against quantized keys: integer products (ScoreTileTreeQIT).
  HWY_ALIGN QueryCodes qc;
  const bool int_keys = G == 1 && IsQuantized(K.type);
  if (int_keys) QuantizeQuery(qs, q_stride, QuantGroup(K.cols), &qc);
  float* acc = direct ? N : scratch;
  const size_t acc_stride = direct ? V.stride : AccStride(V);
  for (size_t g = 0; g < G; ++g) {
    m[g] = -std::numeric_limits<float>::infinity();
    z[g] = 0.0f;
    for (size_t c = 0; c < acc_stride; ++c) acc[g * acc_stride + c] = 0.0f;
  }
  WithSides(
      kr, vr, K, V, [&](auto dk, auto dv, const auto& k2, const auto& v2) {
        if (G == 1) {
          AttendT(dk, dv, k2, v2, K.rows, logw, qs, qsum,
                  int_keys ? &qc : nullptr, m, z, acc, AccCols(v2, acc_stride),
                  scores);
        } else {
          AttendGroupT(dk, dv, k2, v2, K.rows, logw, qs, q_stride, G, m, z, acc,
                       acc_stride, AccCols(v2, acc_stride), scores);
        }
      });
  if (!direct) FinishOutputs(V, G, acc, acc_stride, N);
}

// ------------------------------------------------ many queries (AttendMany)
//
// P queries over the same rows (risk's probes: up to 96 per pass over its
// pool) with the queries in vector lanes: qt [cols][Pp] holds them
// transposed (scaled, rotated like the keys, zero past P), each tile's rows
// are decoded to f32 once for all queries, a score block is 4 rows x kQB
// query vectors (each key element broadcast against kQB query vectors) and a
// value block kC columns x kQB query vectors (each value element broadcast
// against the rows' weights). No per-query reduction tree and no per-block
// row conversion: ~d / lanes FMAs per row and query for the scores and as
// many for the values.

// Scores of rows k0, k0 + kst, .. (4 rows) against query vectors qt[x][0,
// kQB lanes) into out[i * Pp + j * N] (row i, query vector j), plus lw[i].
template <size_t kQB, class D>
HWY_INLINE void ManyScoreBlock(D d, const float* HWY_RESTRICT k0, size_t kst,
                               size_t dk, const float* HWY_RESTRICT qt,
                               size_t Pp, const float* lw,
                               float* HWY_RESTRICT out) {
  static_assert(kQB == 1 || kQB == 2 || kQB == 4, "query vectors per block");
  const size_t N = hn::Lanes(d);
  const float* HWY_RESTRICT k1 = k0 + kst;
  const float* HWY_RESTRICT k2 = k1 + kst;
  const float* HWY_RESTRICT k3 = k2 + kst;
  // a<query vector><row>
  auto a00 = hn::Zero(d), a01 = a00, a02 = a00, a03 = a00;
  auto a10 = a00, a11 = a00, a12 = a00, a13 = a00;
  auto a20 = a00, a21 = a00, a22 = a00, a23 = a00;
  auto a30 = a00, a31 = a00, a32 = a00, a33 = a00;
  for (size_t x = 0; x < dk; ++x) {
    const float* HWY_RESTRICT qx = qt + x * Pp;
    const auto b0 = hn::Set(d, k0[x]);
    const auto b1 = hn::Set(d, k1[x]);
    const auto b2 = hn::Set(d, k2[x]);
    const auto b3 = hn::Set(d, k3[x]);
    const auto q0 = hn::LoadU(d, qx);
    a00 = hn::MulAdd(q0, b0, a00);
    a01 = hn::MulAdd(q0, b1, a01);
    a02 = hn::MulAdd(q0, b2, a02);
    a03 = hn::MulAdd(q0, b3, a03);
    if constexpr (kQB > 1) {
      const auto q1 = hn::LoadU(d, qx + N);
      a10 = hn::MulAdd(q1, b0, a10);
      a11 = hn::MulAdd(q1, b1, a11);
      a12 = hn::MulAdd(q1, b2, a12);
      a13 = hn::MulAdd(q1, b3, a13);
    }
    if constexpr (kQB > 2) {
      const auto q2 = hn::LoadU(d, qx + 2 * N);
      a20 = hn::MulAdd(q2, b0, a20);
      a21 = hn::MulAdd(q2, b1, a21);
      a22 = hn::MulAdd(q2, b2, a22);
      a23 = hn::MulAdd(q2, b3, a23);
      const auto q3 = hn::LoadU(d, qx + 3 * N);
      a30 = hn::MulAdd(q3, b0, a30);
      a31 = hn::MulAdd(q3, b1, a31);
      a32 = hn::MulAdd(q3, b2, a32);
      a33 = hn::MulAdd(q3, b3, a33);
    }
  }
  const auto l0 = hn::Set(d, lw[0]), l1 = hn::Set(d, lw[1]);
  const auto l2 = hn::Set(d, lw[2]), l3 = hn::Set(d, lw[3]);
  hn::StoreU(hn::Add(a00, l0), d, out);
  hn::StoreU(hn::Add(a01, l1), d, out + Pp);
  hn::StoreU(hn::Add(a02, l2), d, out + 2 * Pp);
  hn::StoreU(hn::Add(a03, l3), d, out + 3 * Pp);
  if constexpr (kQB > 1) {
    hn::StoreU(hn::Add(a10, l0), d, out + N);
    hn::StoreU(hn::Add(a11, l1), d, out + Pp + N);
    hn::StoreU(hn::Add(a12, l2), d, out + 2 * Pp + N);
    hn::StoreU(hn::Add(a13, l3), d, out + 3 * Pp + N);
  }
  if constexpr (kQB > 2) {
    hn::StoreU(hn::Add(a20, l0), d, out + 2 * N);
    hn::StoreU(hn::Add(a21, l1), d, out + Pp + 2 * N);
    hn::StoreU(hn::Add(a22, l2), d, out + 2 * Pp + 2 * N);
    hn::StoreU(hn::Add(a23, l3), d, out + 3 * Pp + 2 * N);
    hn::StoreU(hn::Add(a30, l0), d, out + 3 * N);
    hn::StoreU(hn::Add(a31, l1), d, out + Pp + 3 * N);
    hn::StoreU(hn::Add(a32, l2), d, out + 2 * Pp + 3 * N);
    hn::StoreU(hn::Add(a33, l3), d, out + 3 * Pp + 3 * N);
  }
}

// acc[c * Pp + j * N] (kC columns, kQB query vectors) times alpha[j], plus
// sum_r W[r][j] * v[r][c] over the tile's rows (v0: the tile at column c0).
template <size_t kC, size_t kQB, class D>
HWY_INLINE void ManyValueBlock(D d, const float* HWY_RESTRICT v0, size_t vst,
                               size_t rows, const float* HWY_RESTRICT W,
                               size_t Pp, const float* HWY_RESTRICT alpha,
                               float* HWY_RESTRICT acc) {
  static_assert(kQB == 1 || kQB == 2 || kQB == 4, "query vectors per block");
  static_assert(kC == 1 || kC == 4, "columns per block");
  const size_t N = hn::Lanes(d);
  const auto f0 = hn::LoadU(d, alpha);
  auto f1 = f0, f2 = f0, f3 = f0;
  if constexpr (kQB > 1) f1 = hn::LoadU(d, alpha + N);
  if constexpr (kQB > 2) {
    f2 = hn::LoadU(d, alpha + 2 * N);
    f3 = hn::LoadU(d, alpha + 3 * N);
  }
  // a<query vector><column>
  const auto a_at = [&](size_t c, size_t j, hn::Vec<D> f) {
    return hn::Mul(hn::LoadU(d, acc + c * Pp + j * N), f);
  };
  auto a00 = a_at(0, 0, f0), a01 = a00, a02 = a00, a03 = a00;
  auto a10 = a00, a11 = a00, a12 = a00, a13 = a00;
  auto a20 = a00, a21 = a00, a22 = a00, a23 = a00;
  auto a30 = a00, a31 = a00, a32 = a00, a33 = a00;
  if constexpr (kC > 1) {
    a01 = a_at(1, 0, f0);
    a02 = a_at(2, 0, f0);
    a03 = a_at(3, 0, f0);
  }
  if constexpr (kQB > 1) {
    a10 = a_at(0, 1, f1);
    if constexpr (kC > 1) {
      a11 = a_at(1, 1, f1);
      a12 = a_at(2, 1, f1);
      a13 = a_at(3, 1, f1);
    }
  }
  if constexpr (kQB > 2) {
    a20 = a_at(0, 2, f2);
    a30 = a_at(0, 3, f3);
    if constexpr (kC > 1) {
      a21 = a_at(1, 2, f2);
      a22 = a_at(2, 2, f2);
      a23 = a_at(3, 2, f2);
      a31 = a_at(1, 3, f3);
      a32 = a_at(2, 3, f3);
      a33 = a_at(3, 3, f3);
    }
  }
  for (size_t r = 0; r < rows; ++r) {
    const float* HWY_RESTRICT vr = v0 + r * vst;
    const float* HWY_RESTRICT wr = W + r * Pp;
    const auto b0 = hn::Set(d, vr[0]);
    auto b1 = b0, b2 = b0, b3 = b0;
    if constexpr (kC > 1) {
      b1 = hn::Set(d, vr[1]);
      b2 = hn::Set(d, vr[2]);
      b3 = hn::Set(d, vr[3]);
    }
    const auto w0 = hn::LoadU(d, wr);
    a00 = hn::MulAdd(w0, b0, a00);
    if constexpr (kC > 1) {
      a01 = hn::MulAdd(w0, b1, a01);
      a02 = hn::MulAdd(w0, b2, a02);
      a03 = hn::MulAdd(w0, b3, a03);
    }
    if constexpr (kQB > 1) {
      const auto w1 = hn::LoadU(d, wr + N);
      a10 = hn::MulAdd(w1, b0, a10);
      if constexpr (kC > 1) {
        a11 = hn::MulAdd(w1, b1, a11);
        a12 = hn::MulAdd(w1, b2, a12);
        a13 = hn::MulAdd(w1, b3, a13);
      }
    }
    if constexpr (kQB > 2) {
      const auto w2 = hn::LoadU(d, wr + 2 * N);
      const auto w3 = hn::LoadU(d, wr + 3 * N);
      a20 = hn::MulAdd(w2, b0, a20);
      a30 = hn::MulAdd(w3, b0, a30);
      if constexpr (kC > 1) {
        a21 = hn::MulAdd(w2, b1, a21);
        a22 = hn::MulAdd(w2, b2, a22);
        a23 = hn::MulAdd(w2, b3, a23);
        a31 = hn::MulAdd(w3, b1, a31);
        a32 = hn::MulAdd(w3, b2, a32);
        a33 = hn::MulAdd(w3, b3, a33);
      }
    }
  }
  const auto put = [&](hn::Vec<D> a, size_t c, size_t j) {
    hn::StoreU(a, d, acc + c * Pp + j * N);
  };
  put(a00, 0, 0);
  if constexpr (kC > 1) put(a01, 1, 0), put(a02, 2, 0), put(a03, 3, 0);
  if constexpr (kQB > 1) {
    put(a10, 0, 1);
    if constexpr (kC > 1) put(a11, 1, 1), put(a12, 2, 1), put(a13, 3, 1);
  }
  if constexpr (kQB > 2) {
    put(a20, 0, 2);
    put(a30, 0, 3);
    if constexpr (kC > 1) {
      put(a21, 1, 2), put(a22, 2, 2), put(a23, 3, 2);
      put(a31, 1, 3), put(a32, 2, 3), put(a33, 3, 3);
    }
  }
}

// Online softmax of a tile's scores S [rows][Pp] (in place: the weights
// exp(s - m), exactly 0 for s = -inf) per query lane; mv, zv: the running
// maxima and sums; alpha: the factor exp(m_old - m_new) the accumulators
// take (0 before the first finite score).
template <class D>
HWY_INLINE void ManySoftmax(D d, float* HWY_RESTRICT S, size_t rows, size_t Pp,
                            float* HWY_RESTRICT mv, float* HWY_RESTRICT zv,
                            float* HWY_RESTRICT alpha) {
  const size_t N = hn::Lanes(d);
  const auto ninf = hn::Set(d, -INFINITY);
  for (size_t j = 0; j < Pp; j += N) {
    auto mx = ninf;
    for (size_t r = 0; r < rows; ++r) {
      mx = hn::Max(mx, hn::LoadU(d, S + r * Pp + j));
    }
    const auto mo = hn::LoadU(d, mv + j);
    const auto mn = hn::Max(mo, mx);
    const auto f =
        hn::IfThenZeroElse(hn::Eq(mo, ninf), hn::Exp(d, hn::Sub(mo, mn)));
    auto z0 = hn::Mul(hn::LoadU(d, zv + j), f), z1 = hn::Zero(d);
    size_t r = 0;
    for (; r + 2 <= rows; r += 2) {
      const auto x0 = hn::LoadU(d, S + r * Pp + j);
      const auto x1 = hn::LoadU(d, S + (r + 1) * Pp + j);
      const auto e0 =
          hn::IfThenZeroElse(hn::Eq(x0, ninf), hn::Exp(d, hn::Sub(x0, mn)));
      const auto e1 =
          hn::IfThenZeroElse(hn::Eq(x1, ninf), hn::Exp(d, hn::Sub(x1, mn)));
      hn::StoreU(e0, d, S + r * Pp + j);
      hn::StoreU(e1, d, S + (r + 1) * Pp + j);
      z0 = hn::Add(z0, e0);
      z1 = hn::Add(z1, e1);
    }
    if (r < rows) {
      const auto x0 = hn::LoadU(d, S + r * Pp + j);
      const auto e0 =
          hn::IfThenZeroElse(hn::Eq(x0, ninf), hn::Exp(d, hn::Sub(x0, mn)));
      hn::StoreU(e0, d, S + r * Pp + j);
      z0 = hn::Add(z0, e0);
    }
    hn::StoreU(mn, d, mv + j);
    hn::StoreU(hn::Add(z0, z1), d, zv + j);
    hn::StoreU(f, d, alpha + j);
  }
}

// A tile's rows as f32 [rows][stride] for AttendManyT: float rows converted
// into buf (f32 full tiles in place), quantized rows decoded (TileRows).
template <class D, typename T>
HWY_INLINE FloatRows<float> ManyTile(D d, const FloatRows<T>& R, size_t r0,
                                     size_t rows, float* HWY_RESTRICT buf) {
  if constexpr (std::is_same<T, float>::value) {
    if (rows == kTile)
      return FloatRows<float>{R.p + r0 * R.stride, R.stride, R.cols};
  }
  const size_t N = hn::Lanes(d);
  for (size_t r = 0; r < rows; ++r) {
    const T* HWY_RESTRICT src = R.p + (r0 + r) * R.stride;
    for (size_t c = 0; c < R.cols; c += N) {
      hn::StoreU(LoadF32(d, src + c), d, buf + r * R.cols + c);
    }
  }
  return FloatRows<float>{buf, R.cols, R.cols};
}
template <class D>
HWY_INLINE FloatRows<float> ManyTile(D d, const QuantRows& R, size_t r0,
                                     size_t rows, float* HWY_RESTRICT buf) {
  return TileRows(d, R, r0, rows, buf);
}

// Score blocks of kQB query vectors for one tile's 4-row blocks.
template <size_t kQB, class D>
HWY_INLINE void ManyScores(D d, const FloatRows<float>& KT, size_t rows,
                           size_t kc, const float* HWY_RESTRICT qt, size_t Pp,
                           size_t j, const float* HWY_RESTRICT lw,
                           float* HWY_RESTRICT S) {
  for (size_t r = 0; r < rows; r += 4) {
    ManyScoreBlock<kQB>(d, KT.p + r * KT.stride, KT.stride, kc, qt + j, Pp,
                        lw + r, S + r * Pp + j);
  }
}
template <size_t kQB, class D>
HWY_INLINE void ManyValues(D d, const FloatRows<float>& VT, size_t rows,
                           size_t vc, const float* HWY_RESTRICT S, size_t Pp,
                           size_t j, const float* HWY_RESTRICT alpha,
                           float* HWY_RESTRICT acc) {
  size_t c = 0;
  for (; c + 4 <= vc; c += 4) {
    ManyValueBlock<4, kQB>(d, VT.p + c, VT.stride, rows, S + j, Pp, alpha + j,
                           acc + c * Pp + j);
  }
  for (; c < vc; ++c) {
    ManyValueBlock<1, kQB>(d, VT.p + c, VT.stride, rows, S + j, Pp, alpha + j,
                           acc + c * Pp + j);
  }
}

// Calls f(kQB-constant, j) for the query vectors' blocks: kBlockQ, then 2,
// then 1 vectors.
template <class D, class F>
HWY_INLINE void ForQueryBlocks(D d, size_t Pp, const F& f) {
  const size_t N = hn::Lanes(d), PV = Pp / N;
  size_t v = 0;
  if constexpr (kBlockQ == 4) {
    for (; v + 4 <= PV; v += 4) f(std::integral_constant<size_t, 4>(), v * N);
  }
  for (; v + 2 <= PV; v += 2) f(std::integral_constant<size_t, 2>(), v * N);
  for (; v < PV; ++v) f(std::integral_constant<size_t, 1>(), v * N);
}

// AttendManyT's queries, running softmax and accumulators.
struct ManyState {
  size_t kc, vc, Pp;
  const float* HWY_RESTRICT qt;
  float* HWY_RESTRICT mv;
  float* HWY_RESTRICT zv;
  float* HWY_RESTRICT acc;
  float* HWY_RESTRICT S;
  float* HWY_RESTRICT alpha;
};
// The math of one decoded tile (f32 rows, whatever the storage). Not
// inlined, so each target compiles it once rather than once per pair of row
// tags (WithSides), which had made attend_quant.cc and attend.cc the build's
// slowest files by far; one call per tile of kTile rows x P queries costs
// nothing measurable (kvsketch_microbench BM_AttendMany within noise).
template <class D>
HWY_NOINLINE void ManyTileMath(D d, const ManyState& st,
                               const FloatRows<float>& KT,
                               const FloatRows<float>& VT, size_t rows,
                               const float* HWY_RESTRICT lw) {
  const size_t Pp = st.Pp;
  ForQueryBlocks(d, Pp, [&](auto qb, size_t j) {
    ManyScores<decltype(qb)::value>(d, KT, rows, st.kc, st.qt, Pp, j, lw, st.S);
  });
  ManySoftmax(d, st.S, rows, Pp, st.mv, st.zv, st.alpha);
  ForQueryBlocks(d, Pp, [&](auto qb, size_t j) {
    ManyValues<decltype(qb)::value>(d, VT, rows, st.vc, st.S, Pp, j, st.alpha,
                                    st.acc);
  });
}

template <class DK, class DV, class KR, class VR>
void AttendManyT(DK dk, DV dv, const KR& K, const VR& V, size_t n,
                 const float* HWY_RESTRICT logw, const ManyState& st,
                 float* HWY_RESTRICT kt, float* HWY_RESTRICT vt) {
  for (size_t r0 = 0; r0 < n; r0 += kTile) {
    const size_t rows = HWY_MIN(kTile, n - r0);
    const FloatRows<float> KT = ManyTile(dk, K, r0, rows, kt);
    const FloatRows<float> VT = ManyTile(dv, V, r0, rows, vt);
    // Score blocks are 4 rows: rows past the tile's are zero (their scores
    // are computed and never read).
    const size_t rows4 = RoundUp(rows, size_t{4});
    for (size_t r = rows; r < rows4; ++r) {
      for (size_t x = 0; x < st.kc; ++x) kt[r * KT.stride + x] = 0.0f;
    }
    HWY_ALIGN float lw[kTile];
    for (size_t r = 0; r < kTile; ++r) {
      lw[r] = logw && r < rows ? logw[r0 + r] : 0.0f;
    }
    ManyTileMath(hn::CappedTag<float, kTile>(), st, KT, VT, rows, lw);
  }
}

// Sizes of AttendManyRows' scratch (floats, each part a multiple of kTile).
inline size_t ManyTileCols(size_t cols, size_t stride) {
  return RoundUp(HWY_MAX(stride, QuantCols(cols)), kTile);
}

template <class KR, class VR>
void AttendManyRows(const KR& kr, const VR& vr, const RowsView& K,
                    const RowsView& V, const float* logw, const float* q,
                    size_t P, float scale, float* m, float* z, float* N,
                    float* HWY_RESTRICT ws) {
  const size_t Pp = RoundUp(P, kTile), kc = K.cols, vc = V.cols;
  float* HWY_RESTRICT qt = ws;
  float* HWY_RESTRICT acc = qt + RoundUp(kc * Pp, kTile);
  float* HWY_RESTRICT S = acc + RoundUp(vc * Pp, kTile);
  float* HWY_RESTRICT mv = S + kTile * Pp;
  float* HWY_RESTRICT zv = mv + Pp;
  float* HWY_RESTRICT alpha = zv + Pp;
  float* HWY_RESTRICT kt = alpha + Pp;
  float* HWY_RESTRICT vt = kt + kTile * ManyTileCols(K.cols, K.stride);
  // The queries scaled (and rotated like the keys), transposed.
  HWY_ALIGN float row[kMaxHeadDim];
  for (size_t p = 0; p < Pp; ++p) {
    for (size_t c = 0; c < kc; ++c) {
      row[c] = p < P ? q[p * K.stride + c] * scale : 0.0f;
    }
    if (K.rotated && p < P) HadamardInPlace(row, kc);
    for (size_t c = 0; c < kc; ++c) qt[c * Pp + p] = row[c];
  }
  for (size_t p = 0; p < Pp; ++p) {
    mv[p] = -std::numeric_limits<float>::infinity();
    zv[p] = 0.0f;
  }
  for (size_t i = 0; i < vc * Pp; ++i) acc[i] = 0.0f;
  const ManyState st{kc, vc, Pp, qt, mv, zv, acc, S, alpha};
  WithSides(kr, vr, K, V,
            [&](auto dk, auto dv, const auto& k2, const auto& v2) {
              AttendManyT(dk, dv, k2, v2, K.rows, logw, st, kt, vt);
            });
  for (size_t p = 0; p < P; ++p) {
    m[p] = mv[p];
    z[p] = zv[p];
    for (size_t c = 0; c < vc; ++c) row[c] = acc[c * Pp + p];
    if (V.rotated) HadamardInPlace(row, vc);
    float* out = N + p * V.stride;
    for (size_t c = 0; c < vc; ++c) out[c] = row[c];
    for (size_t c = vc; c < V.stride; ++c) out[c] = 0.0f;
  }
}

template <class KR, class VR>
void ResidualRows(const KR& kr, const VR& vr, const RowsView& K,
                  const RowsView& V, const float* logw, const float* q,
                  float scale, float shift, const float* shifts, float ref,
                  int degree, float* N, float* Z) {
  HWY_ALIGN float qs[kMaxHeadDim];
  HWY_ALIGN float qsum[kMaxQuantGroups];
  constexpr bool direct = kDirectOutput<VR>;
  HWY_ALIGN float scratch[direct ? 1 : kMaxHeadDim];
  PrepareQueries(K, q, 1, scale, qs, qsum);
  // The residual adds to N: accumulate the rotated / quantized part apart,
  // then add it back.
  float* acc = direct ? N : scratch;
  const size_t acc_stride = direct ? V.stride : AccStride(V);
  if (!direct) {
    for (size_t c = 0; c < acc_stride; ++c) acc[c] = 0.0f;
  }
  WithSides(kr, vr, K, V,
            [&](auto dk, auto dv, const auto& k2, const auto& v2) {
              ResidualT(dk, dv, k2, v2, K.rows, logw, qs, qsum, shift, shifts,
                        ref, degree, acc, Z);
            });
  if (!direct) {
    if (V.rotated) HadamardInPlace(acc, V.cols);
    for (size_t c = 0; c < V.cols; ++c) N[c] += acc[c];
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace kvsketch
HWY_AFTER_NAMESPACE();

#endif  // per-target include guard
