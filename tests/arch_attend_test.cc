#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "arch/attend.h"
#include "arch/convert.h"
#include "arch/prefill.h"
#include "arch/quant.h"
#include "arch/reference.h"
#include "arch/targets.h"
#include "doctest/doctest.h"
#include "tests/all_targets.h"

namespace kvsketch {
namespace {

struct Rows {
  size_t n, d, stride;
  Storage type;
  std::vector<float> f32;      // the values as stored, converted back to f32
  std::vector<uint16_t> half;  // storage for f16/bf16
  RowsView View() const {
    RowsView v;
    v.data = type == Storage::kF32 ? static_cast<const void*>(f32.data())
                                   : static_cast<const void*>(half.data());
    v.rows = n;
    v.cols = d;
    v.stride = stride;
    v.type = type;
    return v;
  }
};

Rows MakeRows(size_t n, size_t d, Storage type, std::mt19937& rng,
              float sigma) {
  Rows r{n, d, PaddedCols(d), type, {}, {}};
  std::normal_distribution<float> g(0.0f, sigma);
  r.f32.assign(n * r.stride, 0.0f);
  r.half.assign(n * r.stride, 0);
  for (size_t i = 0; i < n; ++i) {
    for (size_t c = 0; c < d; ++c) {
      const float x = g(rng);
      const size_t at = i * r.stride + c;
      if (type == Storage::kF16) {
        r.half[at] = F32ToF16Bits(x);
        r.f32[at] = F16BitsToF32(r.half[at]);
      } else if (type == Storage::kBF16) {
        r.half[at] = F32ToBF16Bits(x);
        r.f32[at] = BF16BitsToF32(r.half[at]);
      } else {
        r.f32[at] = x;
      }
    }
  }
  return r;
}

TEST_CASE("a group's answers equal each query's alone") {
  // The grouped kernel (G >= 2: blocks of 4 (or 2) queries meet blocks of 4
  // key rows and of 4 (or 2) value vectors in registers) against G
  // single-query calls: the same answers up to the order of the additions.
  // G = 2..16 (Qwen's 7 included: a block of four with a zero-weight query;
  // 9 and 10 leave one and two queries past the blocks of four), every dtype
  // and head dim (200: column blocks plus single vectors).
  test::ForEachTarget("AttendGroup", [](const char*) {
    for (Storage type : {Storage::kF32, Storage::kF16, Storage::kBF16}) {
      for (size_t d : {8u, 20u, 64u, 128u, 200u}) {
        for (size_t G : {2u, 4u, 7u, 8u, 9u, 10u, 16u}) {
          const size_t n = 75;
          std::mt19937 rng(unsigned(d * 31 + G));
          const Rows K = MakeRows(n, d, type, rng, 1.0f);
          const Rows V = MakeRows(n, d, type, rng, 2.0f);
          const Rows Q = MakeRows(G, d, Storage::kF32, rng, 1.5f);
          std::vector<float> logw(n);
          for (size_t i = 0; i < n; ++i) logw[i] = float(i % 5) * 0.3f;
          std::vector<float> m(G), z(G), N(G * V.stride), sc(G * n);
          AttendGroup(K.View(), V.View(), logw.data(), Q.f32.data(), G, 0.2f,
                      m.data(), z.data(), N.data(), sc.data());
          for (size_t g = 0; g < G; ++g) {
            float m1, z1;
            std::vector<float> N1(V.stride), s1(n);
            AttendGroup(K.View(), V.View(), logw.data(),
                        Q.f32.data() + g * Q.stride, 1, 0.2f, &m1, &z1,
                        N1.data(), s1.data());
            INFO(std::string(StorageName(type))
                 << " d=" << d << " G=" << G << " g=" << g);
            // Both shift by their max score; the maxima agree to rounding.
            CHECK(test::Near(m[g], m1, 1e-5, 1e-5));
            const double shift = std::exp(double(m[g]) - double(m1));
            CHECK(test::Near(double(z[g]) * shift, z1, 1e-5, 0));
            double norm = 0;
            for (size_t c = 0; c < d; ++c) norm += double(N1[c]) * N1[c];
            for (size_t c = 0; c < V.stride; ++c) {
              CHECK(test::Near(double(N[g * V.stride + c]) * shift, N1[c], 0,
                               2e-6 * std::sqrt(norm) + 1e-6));
            }
            for (size_t i = 0; i < n; ++i) {
              CHECK(test::Near(sc[g * n + i], s1[i], 1e-5, 1e-5));
            }
          }
        }
      }
    }
  });
}

TEST_CASE("Attend matches the double reference (f32/f16/bf16, G=1..5)") {
  test::ForEachTarget("AttendGroup", [](const char*) {
    for (Storage type : {Storage::kF32, Storage::kF16, Storage::kBF16}) {
      for (size_t d : {4u, 8u, 12u, 20u, 64u, 128u}) {
        for (size_t n : {1u, 5u, 16u, 17u, 100u, 333u}) {
          for (size_t G : {1u, 2u, 5u, 9u, 16u}) {
            std::mt19937 rng(unsigned(d * 1000 + n * 10 + G));
            const Rows K = MakeRows(n, d, type, rng, 1.0f);
            const Rows V = MakeRows(n, d, type, rng, 3.0f);
            const Rows Q = MakeRows(G, d, Storage::kF32, rng, 1.0f);
            std::vector<float> logw(n);
            for (size_t i = 0; i < n; ++i) logw[i] = float(i % 3) * 0.5f;
            const float scale = 1.0f / std::sqrt(float(d));
            std::vector<float> m(G), z(G), N(G * V.stride, -1.0f),
                scores(G * n);
            AttendGroup(K.View(), V.View(), logw.data(), Q.f32.data(), G, scale,
                        m.data(), z.data(), N.data(), scores.data());
            for (size_t g = 0; g < G; ++g) {
              double rm, rz;
              std::vector<double> rn(d);
              ref::Attend(K.f32.data(), K.stride, d, V.f32.data(), V.stride, d,
                          n, logw.data(), Q.f32.data() + g * Q.stride, scale,
                          &rm, &rz, rn.data());
              INFO(std::string(StorageName(type))
                   << " d=" << d << " n=" << n << " G=" << G << " g=" << g);
              CHECK(test::Near(m[g], rm, 1e-5, 1e-5));
              // Compare the full denominator e^m Z in log space.
              CHECK(test::Near(m[g] + std::log(z[g]), rm + std::log(rz), 0,
                               1e-5 * (1 + std::fabs(rm))));
              double norm = 0;
              for (size_t c = 0; c < d; ++c) norm += rn[c] * rn[c] / (rz * rz);
              for (size_t c = 0; c < d; ++c) {
                // The output N/Z does not depend on the shift m.
                const double got = double(N[g * V.stride + c]) / z[g];
                CHECK(test::Near(got, rn[c] / rz, 1e-4,
                                 1e-5 * std::sqrt(norm) + 1e-6));
              }
              for (size_t c = d; c < V.stride; ++c) {
                CHECK(N[g * V.stride + c] == 0.0f);  // padding stays zero
              }
              for (size_t i = 0; i < n; ++i) {
                const double s =
                    scale * ref::Dot(K.f32.data() + i * K.stride,
                                     Q.f32.data() + g * Q.stride, d) +
                    logw[i];
                CHECK(test::Near(scores[g * n + i], s, 1e-5, 1e-5));
              }
            }
          }
        }
      }
    }
  });
}

TEST_CASE("MergePartials of two halves equals attending the concatenation") {
  test::ForEachTarget("MergePartials", [](const char*) {
    std::mt19937 rng(5);
    const size_t d = 24, n = 200;
    const Rows K = MakeRows(n, d, Storage::kF32, rng, 2.0f);
    const Rows V = MakeRows(n, d, Storage::kF32, rng, 1.0f);
    const Rows Q = MakeRows(1, d, Storage::kF32, rng, 2.0f);
    float m, z, m1, z1, m2, z2;
    std::vector<float> N(K.stride), N1(K.stride), N2(K.stride);
    Attend(K.View(), V.View(), nullptr, Q.f32.data(), 0.3f, &m, &z, N.data());
    for (size_t split : {0u, 1u, 77u, 199u, 200u}) {
      RowsView k1 = K.View(), v1 = V.View(), k2 = K.View(), v2 = V.View();
      k1.rows = v1.rows = split;
      k2.rows = v2.rows = n - split;
      k2.data = K.f32.data() + split * K.stride;
      v2.data = V.f32.data() + split * V.stride;
      Attend(k1, v1, nullptr, Q.f32.data(), 0.3f, &m1, &z1, N1.data());
      Attend(k2, v2, nullptr, Q.f32.data(), 0.3f, &m2, &z2, N2.data());
      MergePartials(&m1, &z1, N1.data(), m2, z2, N2.data(), d);
      INFO("split=" << split);
      CHECK(m1 == doctest::Approx(m).epsilon(1e-6));
      CHECK(z1 == doctest::Approx(z).epsilon(1e-5));
      for (size_t c = 0; c < d; ++c) {
        CHECK(test::Near(N1[c], N[c], 1e-5, 1e-5));
      }
    }
  });
}

TEST_CASE("vector exp: max relative error over [-87, 88] below 2e-7") {
  test::ForEachTarget("ExpArray", [](const char*) {
    const size_t n = 100003;  // not a multiple of any vector length
    std::vector<float> x(n), y(n);
    for (size_t i = 0; i < n; ++i) x[i] = -87.0f + 175.0f * float(i) / n;
    ExpArray(x.data(), y.data(), n);
    double worst = 0;
    for (size_t i = 0; i < n; ++i) {
      const double want = std::exp(double(x[i]));
      worst = std::max(worst, std::fabs(y[i] - want) / want);
    }
    MESSAGE("exp max relative error " << worst);
    CHECK(worst < 2e-7);
  });
}

TEST_CASE("f16/bf16 row conversion matches the scalar conversions") {
  test::ForEachTarget("ConvertRow", [](const char*) {
    std::mt19937 rng(11);
    std::normal_distribution<float> g(0.0f, 10.0f);
    for (size_t n : {1u, 7u, 16u, 33u, 1000u}) {
      std::vector<float> src(n), back(n);
      for (auto& x : src) x = g(rng);
      src[0] = 1e-6f;  // an f16 subnormal
      std::vector<uint16_t> h(n);
      for (Storage t : {Storage::kF16, Storage::kBF16}) {
        ConvertRow(src.data(), t, h.data(), n);
        ConvertRowToF32(t, h.data(), back.data(), n);
        for (size_t i = 0; i < n; ++i) {
          const uint16_t want =
              t == Storage::kF16 ? F32ToF16Bits(src[i]) : F32ToBF16Bits(src[i]);
          const float wantf =
              t == Storage::kF16 ? F16BitsToF32(want) : BF16BitsToF32(want);
          INFO(std::string(StorageName(t)) << " i=" << i << " x=" << src[i]);
          CHECK(h[i] == want);
          CHECK(back[i] == wantf);
        }
      }
    }
  });
}

TEST_CASE("CausalBlockAttend equals the causal reference on every target") {
  test::ForEachTarget("CausalBlockAttend", [](const char*) {
    std::mt19937 rng(77);
    std::normal_distribution<float> g(0.0f, 1.0f);
    struct Shape {
      size_t G, dk, dv, t0, tn;
    };
    const Shape shapes[] = {
        {1, 1, 1, 0, 1},    {1, 5, 3, 0, 16},   {1, 8, 8, 7, 9},
        {2, 64, 64, 0, 8},  {4, 64, 64, 37, 4}, {1, 128, 128, 250, 16},
        {3, 17, 40, 13, 5}, {16, 8, 8, 3, 1},   {2, 12, 12, 21, 8},
        {1, 24, 24, 9, 16}, {1, 64, 64, 0, 300}};
    for (const Shape& sh : shapes) {
      const size_t n = sh.t0 + sh.tn, M = sh.tn * sh.G;
      const size_t q_stride = sh.G * sh.dk + 3, k_stride = sh.dk + 1,
                   v_stride = sh.dv + 2, n_stride = sh.dv + 5;
      std::vector<float> q(sh.tn * q_stride), K(n * k_stride), V(n * v_stride);
      for (auto& x : q) x = 2.0f * g(rng);  // peaked: the max moves often
      for (auto& x : K) x = g(rng);
      for (auto& x : V) x = g(rng);
      const float scale = 1.0f / std::sqrt(float(sh.dk));
      std::vector<float> m(M), z(M), N(M * n_stride, -3.0f);
      std::vector<float> scratch(CausalBlockScratchFloats(sh.dk, sh.dv));
      CausalBlockAttend(q.data(), q_stride, sh.G, sh.dk, sh.t0, sh.tn, K.data(),
                        k_stride, V.data(), v_stride, sh.dv, scale, m.data(),
                        z.data(), N.data(), n_stride, scratch.data());
      std::vector<double> rm(M), rz(M), rN(M * sh.dv);
      ref::CausalBlock(q.data(), q_stride, sh.G, sh.dk, sh.t0, sh.tn, K.data(),
                       k_stride, V.data(), v_stride, sh.dv, scale, rm.data(),
                       rz.data(), rN.data());
      for (size_t i = 0; i < M; ++i) {
        INFO("G=" << sh.G << " dk=" << sh.dk << " dv=" << sh.dv
                  << " t0=" << sh.t0 << " tn=" << sh.tn << " i=" << i);
        REQUIRE(z[i] > 0.0f);
        // Same normaliser e^m z and the same answer N / z.
        CHECK(test::Near(m[i] + std::log(double(z[i])), rm[i] + std::log(rz[i]),
                         0, 2e-5 * (1 + std::fabs(rm[i]))));
        for (size_t c = 0; c < n_stride; ++c) {
          if (c >= sh.dv) {
            CHECK(N[i * n_stride + c] == 0.0f);
            continue;
          }
          CHECK(test::Near(N[i * n_stride + c] / z[i],
                           rN[i * sh.dv + c] / rz[i], 0, 2e-5));
        }
      }
    }
  });
}

// A stored row (any storage) as the f32 row it stands for, decoded by the
// scalar definitions (a rotated row rotated back: the transform is its own
// inverse).
void RefDecodeRow(Storage type, bool rotated, const uint8_t* src, size_t d,
                  float* dst) {
  if (IsQuantized(type)) {
    std::vector<double> x(d), y(d);
    ref::DequantizeRow(src, d, type, x.data());
    if (rotated) ref::Hadamard(x.data(), d, y.data());
    for (size_t c = 0; c < d; ++c) dst[c] = float(rotated ? y[c] : x[c]);
    return;
  }
  for (size_t c = 0; c < d; ++c) {
    if (type == Storage::kF32) {
      std::memcpy(dst + c, src + 4 * c, 4);
    } else {
      uint16_t h;
      std::memcpy(&h, src + 2 * c, 2);
      dst[c] = type == Storage::kF16 ? F16BitsToF32(h) : BF16BitsToF32(h);
    }
  }
}

TEST_CASE(
    "AttendMany equals each query's AttendGroup and the double reference "
    "(every storage pair)") {
  // The many-query kernel (queries in vector lanes: score blocks of 4 rows x
  // 1/2/4 query vectors, value blocks of 4 or 1 columns) against one
  // AttendGroup call per query over the same stored rows: equal up to the
  // order of the additions (as the grouped kernel: quantized rows decoded
  // to f32 per tile). P from 1 to 100 (past one, two and several
  // blocks of query vectors), partial tiles and 4-row blocks (n = 1, 5, 17,
  // 70), head dims with column tails (13, 20) and rotated quantized rows.
  // Each query's answer is also checked against the double reference on the
  // rows as stored (decoded by the scalar definitions).
  test::ForEachTarget("AttendMany", [](const char*) {
    const std::pair<Storage, Storage> pairs[] = {
        {Storage::kF32, Storage::kF32},   {Storage::kF16, Storage::kF16},
        {Storage::kBF16, Storage::kBF16}, {Storage::kQ8, Storage::kQ8},
        {Storage::kQ4, Storage::kF16},    {Storage::kF16, Storage::kQ4A}};
    for (const auto& kv : pairs) {
      for (size_t d : {8u, 13u, 20u, 64u, 128u}) {
        for (size_t n : {1u, 5u, 17u, 70u}) {
          for (size_t P : {1u, 3u, 16u, 17u, 40u, 100u}) {
            std::mt19937 rng(unsigned(d * 7919 + n * 31 + P));
            std::normal_distribution<float> g(0.0f, 1.0f);
            RowsView views[2];
            std::vector<uint8_t> bytes[2];
            const Storage types[2] = {kv.first, kv.second};
            for (int side = 0; side < 2; ++side) {
              const Storage t = types[side];
              const size_t rb = StorageRowBytes(t, d);
              bytes[side].assign(n * rb, 0);
              std::vector<float> row(d);
              for (size_t i = 0; i < n; ++i) {
                for (auto& x : row) x = g(rng) * (side ? 2.0f : 1.0f);
                EncodeRow(row.data(), d, t, bytes[side].data() + i * rb);
              }
              RowsView& v = views[side];
              v.data = bytes[side].data();
              v.rows = n;
              v.cols = d;
              v.stride = PaddedCols(d);
              v.type = t;
              v.rotated = RotatedSide(t, d, true);
            }
            const RowsView &K = views[0], &V = views[1];
            // The rows as the double reference reads them.
            std::vector<float> ref_rows[2];
            for (int side = 0; side < 2; ++side) {
              ref_rows[side].assign(n * views[side].stride, 0.0f);
              const size_t rb = StorageRowBytes(types[side], d);
              for (size_t i = 0; i < n; ++i) {
                RefDecodeRow(types[side], views[side].rotated,
                             bytes[side].data() + i * rb, d,
                             ref_rows[side].data() + i * views[side].stride);
              }
            }
            std::vector<float> q(P * K.stride, 0.0f);
            for (size_t p = 0; p < P; ++p)
              for (size_t c = 0; c < d; ++c) q[p * K.stride + c] = g(rng);
            std::vector<float> logw(n);
            for (size_t i = 0; i < n; ++i) logw[i] = float(i % 7) * -0.4f;
            const float scale = 1.0f / std::sqrt(float(d));
            std::vector<float> m(P), z(P), N(P * V.stride, -1.0f);
            std::vector<float> ws(
                AttendManyScratchFloats(P, d, d, K.stride, V.stride) + 16);
            float* wsa = reinterpret_cast<float*>(
                (reinterpret_cast<uintptr_t>(ws.data()) + 63) & ~uintptr_t{63});
            AttendMany(K, V, logw.data(), q.data(), P, scale, m.data(),
                       z.data(), N.data(), wsa);
            for (size_t p = 0; p < P; ++p) {
              // Two copies of the query: the grouped kernel's f32 scores (a
              // lone query over quantized keys takes integer scores).
              float m2[2], z2[2];
              std::vector<float> q2(2 * K.stride), N2(2 * V.stride);
              for (size_t c = 0; c < K.stride; ++c)
                q2[c] = q2[K.stride + c] = q[p * K.stride + c];
              AttendGroup(K, V, logw.data(), q2.data(), 2, scale, m2, z2,
                          N2.data());
              const float m1 = m2[0], z1 = z2[0];
              const float* N1 = N2.data();
              INFO(std::string(StorageName(K.type))
                   << "/" << StorageName(V.type) << " d=" << d << " n=" << n
                   << " P=" << P << " p=" << p);
              CHECK(test::Near(m[p], m1, 1e-5, 1e-5));
              const double shift = std::exp(double(m[p]) - double(m1));
              CHECK(test::Near(double(z[p]) * shift, z1, 1e-5, 0));
              double norm = 0;
              for (size_t c = 0; c < d; ++c) norm += double(N1[c]) * N1[c];
              for (size_t c = 0; c < d; ++c) {
                CHECK(test::Near(double(N[p * V.stride + c]) * shift, N1[c], 0,
                                 3e-6 * std::sqrt(norm) + 1e-6));
              }
              for (size_t c = d; c < V.stride; ++c) {
                CHECK(N[p * V.stride + c] == 0.0f);  // padding zero
              }
              // And against the double reference directly: the denominator
              // e^m Z in log space, the output N / Z.
              double rm, rz;
              std::vector<double> rn(d);
              ref::Attend(ref_rows[0].data(), K.stride, d, ref_rows[1].data(),
                          V.stride, d, n, logw.data(), q.data() + p * K.stride,
                          scale, &rm, &rz, rn.data());
              CHECK(test::Near(m[p] + std::log(z[p]), rm + std::log(rz), 0,
                               1e-5 * (1 + std::fabs(rm))));
              double rnorm = 0;
              for (size_t c = 0; c < d; ++c) rnorm += rn[c] * rn[c];
              rnorm = std::sqrt(rnorm) / rz;
              for (size_t c = 0; c < d; ++c) {
                CHECK(test::Near(double(N[p * V.stride + c]) / z[p], rn[c] / rz,
                                 0, 1e-5 * rnorm + 1e-6));
              }
            }
          }
        }
      }
    }
  });
}

}  // namespace
}  // namespace kvsketch
