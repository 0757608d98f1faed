#include "engine/sketch/sketch.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include "arch/attend.h"      // AttendGroup, MergePartials
#include "arch/convert.h"     // ConvertRow
#include "arch/prefill.h"     // CausalBlockAttend
#include "arch/quant.h"       // EncodeRow, DecodeRow, HadamardRows
#include "arch/targets.h"     // PaddedCols
#include "engine/io/trace.h"  // ValidateRope
#include "engine/sketch/methods.h"
#include "engine/sketch/pool.h"
#include "engine/sketch/scratch.h"
#include "hwy/base.h"  // HWY_MIN
#include "kvsketch/error.h"

namespace kvsketch {

const char* MethodName(Method m) {
  switch (m) {
#define KVSKETCH_METHOD_NAME(e, name, make, ws) \
  case Method::e:                               \
    return name;
    KVSKETCH_METHODS(KVSKETCH_METHOD_NAME)
#undef KVSKETCH_METHOD_NAME
  }
  return "?";
}

Method ParseMethod(const std::string& name) {
  std::string known;
  for (size_t i = 0; i < kMethodCount; ++i) {
    if (name == MethodName(Method(i))) return Method(i);
    known += (i ? ", " : "") + std::string(MethodName(Method(i)));
  }
  throw Error("unknown method '" + name + "' (known: " + known + ")");
}

Storage ParseStorage(const std::string& name) {
  std::string known;
  for (size_t i = 0; i < kStorageCount; ++i) {
    if (name == StorageName(Storage(i))) return Storage(i);
    known += (i ? ", " : "") + std::string(StorageName(Storage(i)));
  }
  throw Error("unknown storage '" + name + "' (known: " + known + ")");
}

void CheckStoragePair(Storage k, Storage v) {
  if (!SupportedViewPair(k, v)) {
    throw Error(std::string("storage: keys ") + StorageName(k) +
                " with values " + StorageName(v) +
                " is not supported (keys and values must use the same "
                "storage, or both one of f16, q8, q4, q4a)");
  }
}

std::string StorageSummary(const SketchConfig& c) {
  char bits[64];
  const double bk = StorageBits(c.storage_k, c.dk),
               bv = StorageBits(c.storage_v, c.dv);
  if (c.storage_k == c.storage_v && bk == bv) {
    std::snprintf(bits, sizeof(bits), "%.2f", bk);
  } else {
    std::snprintf(bits, sizeof(bits), "%.2f/%.2f", bk, bv);
  }
  const bool rk = RotatedSide(c.storage_k, c.dk, c.rotate),
             rv = RotatedSide(c.storage_v, c.dv, c.rotate);
  return StorageLabel(c.storage_k, c.storage_v) + " (" + bits +
         " bits per element" +
         (rk || rv ? std::string(rk && rv ? ", rotated"
                                          : (rk ? ", keys rotated"
                                                : ", values rotated"))
                   : "") +
         ")";
}

// ---------------------------------------------------------------- Rows

RowsView RowStore::KView(size_t begin, size_t n) const {
  RowsView r;
  r.data = k + begin * kb;
  r.rows = n;
  r.cols = dk;
  r.stride = ks;
  r.type = tk;
  r.rotated = krot;
  return r;
}

RowsView RowStore::VView(size_t begin, size_t n) const {
  RowsView r;
  r.data = v + begin * vb;
  r.rows = n;
  r.cols = dv;
  r.stride = vs;
  r.type = tv;
  r.rotated = vrot;
  return r;
}

namespace {
void PutRow(const float* x, size_t cols, Storage type, bool rot, uint8_t* dst) {
  if (!rot) return EncodeRow(x, cols, type, dst);
  float tmp[kMaxHeadDim];
  std::memcpy(tmp, x, cols * sizeof(float));
  HadamardRows(tmp, 1, cols, cols);
  EncodeRow(tmp, cols, type, dst);
}
void GetRow(Storage type, bool rot, const uint8_t* src, size_t cols, float* x) {
  DecodeRow(type, src, cols, x);
  if (rot) HadamardRows(x, 1, cols, cols);
}
}  // namespace

void RowStore::Put(size_t i, const float* kr, const float* vr) const {
  PutRow(kr, dk, tk, krot, k + i * kb);
  PutRow(vr, dv, tv, vrot, v + i * vb);
}

void RowStore::Get(size_t i, float* kr, float* vr) const {
  GetRow(tk, krot, k + i * kb, dk, kr);
  GetRow(tv, vrot, v + i * vb, dv, vr);
}

void RowStore::Move(size_t dst, size_t src) const {
  if (dst == src) return;
  std::memcpy(k + dst * kb, k + src * kb, kb);
  std::memcpy(v + dst * vb, v + src * vb, vb);
}

// ---------------------------------------------------------------- staged

void InvalidState(const std::string& what) {
  throw IoError("state file: invalid " + what);
}

const uint8_t* StagedState::Where(const void* live, size_t bytes) const {
  const uint8_t* p = static_cast<const uint8_t*>(live);
  if (p < live_ || bytes > size_ || size_t(p - live_) > size_ - bytes) {
    InvalidState("layout (a field lies outside the state)");
  }
  return staged_ + (p - live_);
}

void StagedState::CheckRows(const RowStore& rows, size_t n, float limit,
                            const std::string& what) const {
  if (n == 0) return;
  if (n > rows.cap) InvalidState(what + " count");
  const uint8_t* k = Where(rows.k, n * rows.kb);
  const uint8_t* v = Where(rows.v, n * rows.vb);
  float buf[kMaxHeadDim + 64];
  for (int part = 0; part < 2; ++part) {
    const uint8_t* base = part ? v : k;
    const size_t cols = part ? rows.dv : rows.dk;
    const size_t rb = part ? rows.vb : rows.kb;
    const Storage type = part ? rows.tv : rows.tk;
    const bool quant = IsQuantized(type);
    // Rows the methods derive (merges, means) may exceed the inputs' bound by
    // a rounding error; quantized rows by their quantization error (less
    // than the bound itself: docs/quantization.md).
    const float lim = limit * (quant ? 2.0f : 1.0f + 1e-6f);
    for (size_t i = 0; i < n; ++i) {
      // Copy out (the staged bytes may be unaligned), then decode.
      alignas(64) uint8_t raw[(kMaxHeadDim + 64) * 4];
      std::memcpy(raw, base + i * rb, rb);
      GetRow(type, part ? rows.vrot : rows.krot, raw, cols, buf);
      // Quantized padding is never read as data (the kernels' queries are
      // zero there and the outputs' padding is discarded).
      const size_t check = quant ? cols : PaddedCols(cols);
      for (size_t c = 0; c < check; ++c) {
        const float x = buf[c];
        if (c >= cols ? x != 0.0f : !(std::fabs(x) <= lim)) {
          InvalidState(what + (part ? " value" : " key") + " row " +
                       std::to_string(i) + " column " + std::to_string(c) +
                       (c >= cols
                            ? ": padding is not zero"
                            : ": not finite or beyond " + std::to_string(lim)));
        }
      }
    }
  }
}

template <typename T>
void StagedState::CheckBounded(const T* live, size_t n, double limit,
                               const std::string& what) const {
  if (n == 0) return;
  const uint8_t* p = Where(live, n * sizeof(T));
  for (size_t i = 0; i < n; ++i) {
    T x;
    std::memcpy(&x, p + i * sizeof(T), sizeof(T));
    if (!(std::fabs(double(x)) <= limit)) {  // NaN fails too
      InvalidState(what + " [" + std::to_string(i) +
                   "] = " + std::to_string(x));
    }
  }
}

void StagedState::CheckFloats(const float* live, size_t n, float limit,
                              const std::string& what) const {
  CheckBounded(live, n, double(limit), what);
}

void StagedState::CheckDoubles(const double* live, size_t n,
                               const std::string& what) const {
  CheckBounded(live, n, std::numeric_limits<double>::max(), what);
}

size_t Sketch::RowBytes(const SketchConfig& c) { return StateRowBytes(c); }

RowStore Sketch::CarveRows(const std::string& what, size_t cap) {
  return ItemPool(PoolLayout(what, cfg_), arena_, cap).rows();
}

// ---------------------------------------------------------------- scratch

namespace {
// Append: the padded token and the row leaving the window; the method's
// scratch follows.
struct AppendScratch {
  float *k, *v, *ek, *ev, *rest;
  AppendScratch(ScratchCarver& s, size_t ks, size_t vs)
      : k(s.Take(ks)),
        v(s.Take(vs)),
        ek(s.Take(ks)),
        ev(s.Take(vs)),
        rest(s.Rest()) {}
};
// AttendPartial of Q queries: the padded queries and the compressed
// region's partials; the method's scratch follows.
struct PartialScratch {
  float *qp, *m2, *z2, *N2, *rest;
  PartialScratch(ScratchCarver& s, size_t Q, size_t ks, size_t vs)
      : qp(s.Take(Q * ks)),
        m2(s.Take(Q)),
        z2(s.Take(Q)),
        N2(s.Take(Q * vs)),
        rest(s.Rest()) {}
};
// Attend of G queries: their partials; AttendPartial's scratch follows.
struct AttendScratch {
  float *m, *z, *N, *rest;
  AttendScratch(ScratchCarver& s, size_t G, size_t vs)
      : m(s.Take(G)), z(s.Take(G)), N(s.Take(G * vs)), rest(s.Rest()) {}
};
// Prefill: partials of kMaxGroup queries over the state and over the
// block, and the block kernel's tiles; AttendPartial's or Append's scratch
// follows.
struct PrefillScratch {
  float *pm, *pz, *pN, *bm, *bz, *bN, *tiles, *rest;
  PrefillScratch(ScratchCarver& s, size_t dk, size_t dv, size_t vs)
      : pm(s.Take(kMaxGroup)),
        pz(s.Take(kMaxGroup)),
        pN(s.Take(kMaxGroup * vs)),
        bm(s.Take(kMaxGroup)),
        bz(s.Take(kMaxGroup)),
        bN(s.Take(kMaxGroup * vs)),
        tiles(s.Take(CausalBlockScratchFloats(dk, dv))),
        rest(s.Rest()) {}
};
}  // namespace

size_t Sketch::CommonWorkspaceFloats(const SketchConfig& c) {
  const size_t ks = PaddedCols(c.dk), vs = PaddedCols(c.dv);
  // Attend's partials are within Prefill's (kMaxGroup queries each).
  return HWY_MAX(ScratchFloats<AppendScratch>(ks, vs),
                 ScratchFloats<PartialScratch>(kMaxGroup, ks, vs));
}

size_t Sketch::PrefillWorkspaceFloats(const SketchConfig& c) {
  return ScratchFloats<PrefillScratch>(c.dk, c.dv, PaddedCols(c.dv));
}

// ---------------------------------------------------------------- Sketch

Sketch::Sketch(const SketchConfig& c, Arena& arena, size_t window)
    : cfg_(c),
      arena_(arena),
      ks_(PaddedCols(c.dk)),
      vs_(PaddedCols(c.dv)),
      bytes_at_start_(arena.used()) {
  sinks_ = CarveRows("sinks", c.sinks);
  window_ = CarveRows("window", window);
  window_cap_ = window;
}

size_t Sketch::RemainingBytes() const {
  const size_t spent = arena_.used() - bytes_at_start_;
  return cfg_.budget_bytes > spent ? cfg_.budget_bytes - spent : 0;
}

void Sketch::SaveScalars(StateWriter& w) const {
  w.Put<uint64_t>(tokens_);
  w.Put<double>(key_norm_sum_);
  w.Put<double>(query_norm_sum_);
  w.Put<uint64_t>(queries_);
  w.Put<uint64_t>(sinks_used_);
  w.Put<uint64_t>(window_used_);
  w.Put<uint64_t>(window_head_);
}

void Sketch::LoadScalars(StateReader& r) {
  tokens_ = r.Get<uint64_t>();
  key_norm_sum_ = r.Get<double>();
  query_norm_sum_ = r.Get<double>();
  queries_ = r.Get<uint64_t>();
  sinks_used_ = r.GetAtMost<uint64_t>(sinks_.cap, "sink count");
  window_used_ = r.GetAtMost<uint64_t>(window_cap_, "window count");
  window_head_ =
      r.GetAtMost<uint64_t>(window_cap_ ? window_cap_ - 1 : 0, "window head");
}

void Sketch::CheckState(const StagedState& st) const {
  // Counters: far below 2^62, so no counter derived from them can wrap.
  constexpr uint64_t kMaxCount = uint64_t(1) << 62;
  if (tokens_ >= kMaxCount) InvalidState("token count");
  if (queries_ >= kMaxCount) InvalidState("query count");
  if (sinks_used_ + window_used_ > tokens_) {
    InvalidState("sink/window counts (more rows than tokens)");
  }
  if (sinks_used_ < sinks_.cap && (window_used_ != 0 || tokens_ != sinks_used_))
    InvalidState("sink count (sinks not full but later tokens held)");
  // A ring short of full may be rotated (after a truncation), not empty.
  if (window_used_ == 0 && window_head_ != 0) {
    InvalidState("window head (empty ring but rotated)");
  }
  if (!(key_norm_sum_ >= 0) || !std::isfinite(key_norm_sum_))
    InvalidState("key norm sum");
  if (!(query_norm_sum_ >= 0) || !std::isfinite(query_norm_sum_))
    InvalidState("query norm sum");
  // The kernel temperature divides by both counts.
  if (key_norm_sum_ > 0 && evicted() == 0)
    InvalidState("key norm sum (no evicted tokens)");
  if (query_norm_sum_ > 0 && queries_ == 0)
    InvalidState("query norm sum (no queries)");
  st.CheckRows(sinks_, sinks_used_, RowLimit(), "sink");
  st.CheckRows(window_, window_used_, RowLimit(), "window");
}

float Sketch::QueryKeyRatio() const {
  if (!cfg_.tau_from_queries || queries_ == 0 || key_norm_sum_ <= 0 ||
      evicted() == 0)
    return 1.0f;
  return float((query_norm_sum_ / double(queries_)) /
               (key_norm_sum_ / double(evicted())));
}

size_t Sketch::retained() const {
  return sinks_used_ + window_used_ + CompressedRetained();
}

std::string Sketch::Describe() const {
  return std::string(MethodName(cfg_.method)) +
         " sinks=" + std::to_string(cfg_.sinks) +
         " window=" + std::to_string(window_cap_) + " " +
         StorageLabel(cfg_.storage_k, cfg_.storage_v) +
         (cfg_.rotate &&
                  (IsQuantized(cfg_.storage_k) || IsQuantized(cfg_.storage_v))
              ? " rotated"
              : "");
}

static double Norm(const float* x, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += double(x[i]) * x[i];
  return std::sqrt(s);
}

void Sketch::Append(const float* k, const float* v, float* ws) {
  // Work on padded f32 copies (zero padding is the kernels' contract).
  ScratchCarver carver(ws);
  const AppendScratch s(carver, ks_, vs_);
  float* kp = s.k;
  float* vp = s.v;
  std::memset(kp, 0, ks_ * sizeof(float));
  std::memset(vp, 0, vs_ * sizeof(float));
  std::memcpy(kp, k, cfg_.dk * sizeof(float));
  std::memcpy(vp, v, cfg_.dv * sizeof(float));
  float* rest = s.rest;
  if (sinks_used_ < sinks_.cap) {
    sinks_.Put(sinks_used_++, kp, vp);
  } else if (window_cap_ == 0) {
    Evict(kp, vp, rest);  // straight to the compressed region
    key_norm_sum_ += Norm(k, cfg_.dk);
  } else {
    // Where the token goes in the ring (after a truncation the ring may be
    // short of full with its head anywhere).
    const size_t slot = (window_head_ + window_used_) % window_cap_;
    if (window_used_ == window_cap_) {
      // The oldest window row leaves: hand it to the compressed region
      // first (it may throw, e.g. `exact` when full: nothing changed yet).
      float* ko = s.ek;
      float* vo = s.ev;
      window_.Get(window_head_, ko, vo);
      Evict(ko, vo, rest);
      key_norm_sum_ += Norm(ko, cfg_.dk);
      window_.Put(window_head_, kp, vp);
      window_head_ = (window_head_ + 1) % window_cap_;
    } else {
      window_.Put(slot, kp, vp);
      ++window_used_;
    }
  }
  ++tokens_;
}

size_t Sketch::Truncatable() const {
  const size_t after_sinks = tokens_ - sinks_used_;
  const size_t newest = window_cap_ ? window_used_ : NewestVerbatim();
  // Everything after the sinks still verbatim (nothing compressed or
  // dropped yet): the sinks can go too.
  return newest >= after_sinks ? size_t(tokens_) : newest;
}

void Sketch::Truncate(size_t p, float* ws) {
  if (p > tokens_) {
    throw Error("truncate: position " + std::to_string(p) + " is beyond the " +
                std::to_string(tokens_) + " tokens appended");
  }
  const size_t k = tokens_ - p;
  if (k == 0) return;
  const size_t can = Truncatable();
  if (k > can) {
    throw Error("truncate: " + std::string(MethodName(cfg_.method)) +
                " holds only the newest " + std::to_string(can) +
                " tokens verbatim (positions >= " +
                std::to_string(tokens_ - can) + "); position " +
                std::to_string(p) + " was already compressed or dropped");
  }
  // Newest first: the recent window (or the method's verbatim tail), then
  // the sinks.
  size_t left = k;
  if (window_cap_) {
    const size_t w = HWY_MIN(left, window_used_);
    window_used_ -= w;
    left -= w;
  } else {
    const size_t w = HWY_MIN(left, size_t(tokens_ - sinks_used_));
    tokens_ -= w;
    if (w) DropNewest(w, ws);
    tokens_ += w;
    left -= w;
  }
  sinks_used_ -= left;
  tokens_ = p;
  if (window_used_ == 0) window_head_ = 0;
  if (evicted() == 0) key_norm_sum_ = 0;  // exactly: nothing compressed
}

void Sketch::AppendBlock(const float* K, const float* V, size_t n, float* ws) {
  for (size_t i = 0; i < n; ++i) Append(K + i * cfg_.dk, V + i * cfg_.dv, ws);
}

void Sketch::AttendRange(const Rows& rows, size_t begin, size_t n,
                         const float* qp, size_t G, float* m, float* z,
                         float* N, float* m2, float* z2, float* N2) const {
  if (n == 0) return;
  AttendGroup(rows.KView(begin, n), rows.VView(begin, n), nullptr, qp, G,
              cfg_.scale, m2, z2, N2);
  for (size_t g = 0; g < G; ++g) {
    MergePartials(m + g, z + g, N + g * vs_, m2[g], z2[g], N2 + g * vs_, vs_);
  }
}

void Sketch::EmptyPartial(size_t G, float* m, float* z) {
  for (size_t g = 0; g < G; ++g) {
    m[g] = -std::numeric_limits<float>::infinity();
    z[g] = 0.0f;
  }
}

void Sketch::AttendSinks(const float* qp, size_t G, float* m, float* z,
                         float* N, float* m2, float* z2, float* N2) const {
  for (size_t g = 0; g < G; ++g) {
    m[g] = -std::numeric_limits<float>::infinity();
    z[g] = 0.0f;
    std::memset(N + g * vs_, 0, vs_ * sizeof(float));
  }
  AttendRange(sinks_, 0, sinks_used_, qp, G, m, z, N, m2, z2, N2);
}

void Sketch::Attend(const float* q, size_t G, float* out, float* ws,
                    bool learn) {
  if (G == 0 || G > kMaxGroup) {
    throw Error("attend: group size " + std::to_string(G) + " not in [1, " +
                std::to_string(kMaxGroup) + "]");
  }
  ScratchCarver carver(ws);
  const AttendScratch s(carver, G, vs_);
  float* m = s.m;
  float* z = s.z;
  float* N = s.N;
  AttendPartial(q, 1, 0, G, m, z, N, s.rest, learn);
  for (size_t g = 0; g < G; ++g) {
    const float inv = z[g] > 0.0f ? 1.0f / z[g] : 0.0f;
    for (size_t c = 0; c < cfg_.dv; ++c)
      out[g * cfg_.dv + c] = N[g * vs_ + c] * inv;
  }
}

void Sketch::AttendPartial(const float* q, size_t T, size_t q_stride, size_t G,
                           float* m, float* z, float* N, float* ws,
                           bool learn) {
  const size_t Q = T * G;
  if (G == 0 || T == 0 || Q > kMaxGroup) {
    throw Error("attend: " + std::to_string(Q) + " queries not in [1, " +
                std::to_string(kMaxGroup) + "]");
  }
  // Methods that keep per-query scores size their scratch for the group
  // they were created with (SketchConfig::max_group).
  if (Q > MaxQueriesPerPass()) {
    throw Error("attend: " + std::to_string(Q) + " queries in one call; " +
                MethodName(cfg_.method) + " was created for at most " +
                std::to_string(MaxQueriesPerPass()) + " (max_group)");
  }
  ScratchCarver carver(ws);
  const PartialScratch s(carver, Q, ks_, vs_);
  float* qp = s.qp;
  float* m2 = s.m2;
  float* z2 = s.z2;
  float* N2 = s.N2;
  float* rest = s.rest;
  for (size_t i = 0; i < Q; ++i) {
    const float* qi = q + (i / G) * q_stride + (i % G) * cfg_.dk;
    std::memset(qp + i * ks_, 0, ks_ * sizeof(float));
    std::memcpy(qp + i * ks_, qi, cfg_.dk * sizeof(float));
    if (learn) query_norm_sum_ += Norm(qi, cfg_.dk);
    m[i] = -std::numeric_limits<float>::infinity();
    z[i] = 0.0f;
    std::memset(N + i * vs_, 0, vs_ * sizeof(float));
  }
  if (learn) queries_ += Q;
  AttendRange(sinks_, 0, sinks_used_, qp, Q, m, z, N, m2, z2, N2);
  // The window ring as (up to) two contiguous segments.
  const size_t first = HWY_MIN(window_used_, window_cap_ - window_head_);
  AttendRange(window_, window_head_, first, qp, Q, m, z, N, m2, z2, N2);
  AttendRange(window_, 0, window_used_ - first, qp, Q, m, z, N, m2, z2, N2);
  learning_ = learn;
  AttendCompressed(qp, Q, m2, z2, N2, rest);
  learning_ = true;
  for (size_t g = 0; g < Q; ++g) {
    // A compressed estimate that left f32's range (logit spreads beyond
    // exp's range in a Taylor split, say) is dropped for this query: the
    // answer stays finite, from the exact regions.
    bool finite =
        z2[g] == 0.0f || (std::isfinite(m2[g]) && std::isfinite(z2[g]));
    for (size_t c = 0; c < vs_ && finite && z2[g] != 0.0f; ++c)
      finite = std::isfinite(N2[g * vs_ + c]);
    if (!finite) {
      m2[g] = -std::numeric_limits<float>::infinity();
      z2[g] = 0.0f;
      continue;
    }
    MergePartials(m + g, z + g, N + g * vs_, m2[g], z2[g], N2 + g * vs_, vs_);
  }
  if (learn) Observe(m, z, Q, rest);
}

void Sketch::Prefill(const float* q, size_t q_stride, const float* k,
                     size_t k_stride, const float* v, size_t v_stride, size_t n,
                     size_t G, float* out, size_t out_stride, float* ws) {
  if (G == 0 || G > cfg_.max_group) {
    throw Error("prefill: group size " + std::to_string(G) + " not in [1, " +
                std::to_string(cfg_.max_group) + "]");
  }
  if (n >= (size_t{1} << 31)) {
    throw Error("prefill: " + std::to_string(n) +
                " tokens in one block (at most 2^31 - 1)");
  }
  ScratchCarver carver(ws);
  const PrefillScratch s(carver, cfg_.dk, cfg_.dv, vs_);
  float *pm = s.pm, *pz = s.pz, *pN = s.pN;  // partials over the state
  float *bm = s.bm, *bz = s.bz, *bN = s.bN;  // over the block
  float* tiles = s.tiles;
  float* rest = s.rest;
  // Tokens per block tile (their queries fill the kernel's lanes) and per
  // pass over the state.
  const size_t U = kMaxGroup / G;
  const size_t T = HWY_MIN(U, HWY_MAX(size_t(1), MaxQueriesPerPass() / G));
  for (size_t u0 = 0; u0 < n; u0 += U) {
    const size_t un = HWY_MIN(U, n - u0);
    CausalBlockAttend(q + u0 * q_stride, q_stride, G, cfg_.dk, u0, un, k,
                      k_stride, v, v_stride, cfg_.dv, cfg_.scale, bm, bz, bN,
                      vs_, tiles);
    for (size_t t0 = 0; t0 < un; t0 += T) {
      const size_t tn = HWY_MIN(T, un - t0);
      AttendPartial(q + (u0 + t0) * q_stride, tn, q_stride, G, pm, pz, pN,
                    rest);
      for (size_t j = 0; j < tn; ++j) {
        float* o = out + (u0 + t0 + j) * out_stride;
        for (size_t g = 0; g < G; ++g) {
          const size_t i = j * G + g, b = (t0 + j) * G + g;
          MergePartials(pm + i, pz + i, pN + i * vs_, bm[b], bz[b],
                        bN + b * vs_, vs_);
          const float inv = pz[i] > 0.0f ? 1.0f / pz[i] : 0.0f;
          for (size_t c = 0; c < cfg_.dv; ++c)
            o[g * cfg_.dv + c] = pN[i * vs_ + c] * inv;
        }
      }
    }
  }
  for (size_t j = 0; j < n; ++j)
    Append(k + j * k_stride, v + j * v_stride, rest);
}

// ---------------------------------------------------------------- factory

size_t WorkspaceFloats(const SketchConfig& c) {
  const size_t extra = MethodWorkspaceFloats(c);
  // Every entry point's own arrays (Prefill's in front of Append's or
  // AttendPartial's, which cover Attend's), then the method's.
  return Sketch::PrefillWorkspaceFloats(c) + Sketch::CommonWorkspaceFloats(c) +
         extra;
}

std::unique_ptr<Sketch> Sketch::Create(const SketchConfig& c, Arena& arena) {
  if (c.dk == 0 || c.dv == 0 || c.dk > kMaxHeadDim || c.dv > kMaxHeadDim) {
    throw Error(
        "head dimensions must be in [1, " + std::to_string(kMaxHeadDim) +
        "], got dk=" + std::to_string(c.dk) + " dv=" + std::to_string(c.dv));
  }
  if (!(c.scale > 0.0f) || !std::isfinite(c.scale)) {
    throw Error("score scale must be positive and finite");
  }
  ValidateRope(c.rope_theta, c.rope_dims, c.dk, "rope");
  if (c.block < 2 || c.block > 4096) {
    throw Error("block must be in [2, 4096], got " + std::to_string(c.block));
  }
  if (!(c.risk_ridge >= 0.0f) || !std::isfinite(c.risk_ridge) ||
      c.risk_iterations < 1 || c.risk_iterations > 100000) {
    throw Error("risk: ridge must be finite and >= 0, iterations in [1, 1e5]");
  }
  if (c.max_group == 0 || c.max_group > kMaxGroup) {
    throw Error("group size must be in [1, " + std::to_string(kMaxGroup) + "]");
  }
  const size_t row = RowBytes(c);
  // Rows of the budget as sinks + window carve them (the layout that
  // carves them sizes them: quantized rows, d = 64 q8: 68 bytes, are not
  // multiples of the carve alignment, so the carve, not the division,
  // decides).
  const PoolLayout rows_only("rows", c);
  const auto carved = [&](size_t R) {
    const size_t s = R < c.sinks ? R : c.sinks;
    return rows_only.Bytes(s) + rows_only.Bytes(R - s);
  };
  size_t rows = c.budget_bytes / row;
  while (rows > 0 && carved(rows) > c.budget_bytes) --rows;
  const size_t token_bytes = BudgetBytesForTokens(1, c.dk, c.dv);
  if (c.method != Method::kExact && rows < c.sinks + 2) {
    throw BudgetError(std::string(MethodName(c.method)) + ": budget of " +
                      std::to_string(c.budget_bytes) + " bytes (" +
                      std::to_string(c.budget_bytes / token_bytes) +
                      " tokens) cannot hold " + std::to_string(c.sinks) +
                      " sinks plus a window of at least 2 tokens");
  }
  const size_t before = arena.used();
  std::unique_ptr<Sketch> s = MakeMethod(c, arena, rows);
  s->bytes_ = arena.used() - before;
  if (s->bytes_ > c.budget_bytes) {  // layout bug guard: never exceed
    throw BudgetError(std::string(MethodName(c.method)) + ": layout used " +
                      std::to_string(s->bytes_) + " bytes > budget " +
                      std::to_string(c.budget_bytes));
  }
  return s;
}

}  // namespace kvsketch
