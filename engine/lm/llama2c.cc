#include "engine/lm/llama2c.h"

#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "arch/attend.h"  // ExpArray
#include "arch/dot.h"
#include "arch/targets.h"
#include "engine/io/file.h"
#include "engine/session/cores.h"
#include "kvsketch/error.h"

namespace kvsketch {
namespace {

// h[i] = silu(h[i]) * g[i], silu(a) = a / (1 + e^-a), with the kernels'
// vector exp (arguments clamped to [-87, 87], where it is exact to 1 ulp;
// beyond, silu is a or 0 to f32 precision).
void SwiGlu(float* h, const float* g, size_t n) {
  float e[256];
  for (size_t i0 = 0; i0 < n; i0 += 256) {
    const size_t m = std::min<size_t>(256, n - i0);
    for (size_t i = 0; i < m; ++i)
      e[i] = std::min(87.0f, std::max(-87.0f, -h[i0 + i]));
    ExpArray(e, e, m);
    for (size_t i = 0; i < m; ++i)
      h[i0 + i] = h[i0 + i] / (1.0f + e[i]) * g[i0 + i];
  }
}

std::string ReadFile(const std::string& path, const char* what) {
  // 64 GiB: a checkpoint larger than this machine's memory is refused
  // before anything is read (ReadRegularFile also caps at half the RAM).
  return ReadRegularFile(path, what, uint64_t(1) << 36);
}

// Sequential reader over a byte buffer that names what ran out.
struct Reader {
  const std::string& bytes;
  const std::string& what;
  size_t at = 0;
  void Need(size_t n, const char* item) const {
    if (n > bytes.size() - at) {
      throw Error(what + ": truncated (reading " + item + " at byte " +
                  std::to_string(at) + " of " + std::to_string(bytes.size()) +
                  ")");
    }
  }
  template <typename T>  // int32_t or float, little-endian as written
  T Get(const char* item) {
    Need(sizeof(T), item);
    T v;
    std::memcpy(&v, bytes.data() + at, sizeof(T));
    at += sizeof(T);
    return v;
  }
  void Floats(float* out, size_t n, const char* item) {
    Need(n * 4, item);
    std::memcpy(out, bytes.data() + at, n * 4);
    for (size_t i = 0; i < n; ++i) {
      if (!std::isfinite(out[i])) {
        throw Error(what + ": non-finite value in " + item + " (element " +
                    std::to_string(i) + ")");
      }
    }
    at += n * 4;
  }
};

LlamaWeights::Matrix ReadMatrix(Reader& r, size_t rows, size_t cols,
                                const char* item) {
  LlamaWeights::Matrix m;
  m.rows = rows;
  m.cols = cols;
  m.stride = PaddedCols(cols);
  m.data.assign(rows * m.stride, 0.0f);
  for (size_t i = 0; i < rows; ++i)
    r.Floats(m.data.data() + i * m.stride, cols, item);
  return m;
}

}  // namespace

LlamaWeights ParseCheckpoint(const std::string& bytes,
                             const std::string& what) {
  Reader r{bytes, what};
  int32_t h[7];
  static const char* kNames[7] = {"dim",     "hidden_dim", "n_layers",
                                  "n_heads", "n_kv_heads", "vocab_size",
                                  "seq_len"};
  for (int i = 0; i < 7; ++i) h[i] = r.Get<int32_t>(kNames[i]);
  for (int i = 0; i < 7; ++i) {
    const int64_t v = i == 5 ? std::abs(int64_t(h[i])) : int64_t(h[i]);
    if (v <= 0 || v > (1 << 20)) {
      throw Error(what + ": header field " + kNames[i] + " = " +
                  std::to_string(h[i]) + " is out of range");
    }
  }
  LlamaWeights w;
  LlamaConfig& c = w.cfg;
  c.dim = size_t(h[0]);
  c.hidden = size_t(h[1]);
  c.layers = size_t(h[2]);
  c.n_heads = size_t(h[3]);
  c.n_kv_heads = size_t(h[4]);
  c.shared_classifier = h[5] > 0;
  c.vocab = size_t(std::abs(int64_t(h[5])));
  c.seq_len = size_t(h[6]);
  if (c.dim % c.n_heads != 0) {
    throw Error(what + ": dim " + std::to_string(c.dim) +
                " is not a multiple of n_heads " + std::to_string(c.n_heads));
  }
  if (c.n_kv_heads > c.n_heads || c.n_heads % c.n_kv_heads != 0) {
    throw Error(what + ": n_heads " + std::to_string(c.n_heads) +
                " is not a multiple of n_kv_heads " +
                std::to_string(c.n_kv_heads));
  }
  if (c.head_dim() % 2 != 0 || c.head_dim() > 512) {
    throw Error(what + ": head_dim " + std::to_string(c.head_dim()) +
                " must be even and at most 512");
  }
  // The exact file size the header implies (with the legacy RoPE tables).
  // Header fields are at most 2^20, so products reach 2^62 and their sum
  // can wrap 64 bits: bound it in floating point first.
  {
    const double Ld = double(c.layers), Dd = double(c.dim),
                 Hd = double(c.hidden), KVd = double(c.kv_dim()),
                 Vd = double(c.vocab);
    const double approx = Vd * Dd * (c.shared_classifier ? 1 : 2) +
                          Ld * Dd * (2 + 2 * Dd + 2 * KVd + 3 * Hd) + Dd +
                          double(c.seq_len) * double(c.head_dim());
    if (approx * 4 + 28 > 0x1p62) {
      throw Error(what + ": the header implies about " +
                  std::to_string(approx * 4) +
                  " bytes of weights (the file has " +
                  std::to_string(bytes.size()) + ")");
    }
  }
  const uint64_t L = c.layers, D = c.dim, H = c.hidden, KV = c.kv_dim();
  const uint64_t floats = uint64_t(c.vocab) * D + L * D * 2 + L * D * D * 2 +
                          L * D * KV * 2 + L * D * H * 3 + D +
                          uint64_t(c.seq_len) * c.head_dim() +
                          (c.shared_classifier ? 0 : uint64_t(c.vocab) * D);
  if (28 + floats * 4 != bytes.size()) {
    throw Error(what + ": size " + std::to_string(bytes.size()) +
                " bytes does not match the header (expected " +
                std::to_string(28 + floats * 4) + ")");
  }
  w.embedding.resize(c.vocab * c.dim);
  r.Floats(w.embedding.data(), w.embedding.size(), "token_embedding_table");
  auto vecs = [&](std::vector<std::vector<float>>& out, const char* item) {
    out.assign(c.layers, std::vector<float>(c.dim));
    for (auto& v : out) r.Floats(v.data(), c.dim, item);
  };
  auto mats = [&](std::vector<LlamaWeights::Matrix>& out, size_t rows,
                  size_t cols, const char* item) {
    for (size_t l = 0; l < c.layers; ++l)
      out.push_back(ReadMatrix(r, rows, cols, item));
  };
  vecs(w.rms_att, "rms_att_weight");
  mats(w.wq, c.dim, c.dim, "wq");
  mats(w.wk, c.kv_dim(), c.dim, "wk");
  mats(w.wv, c.kv_dim(), c.dim, "wv");
  mats(w.wo, c.dim, c.dim, "wo");
  vecs(w.rms_ffn, "rms_ffn_weight");
  mats(w.w1, c.hidden, c.dim, "w1");
  mats(w.w2, c.dim, c.hidden, "w2");
  mats(w.w3, c.hidden, c.dim, "w3");
  w.rms_final.resize(c.dim);
  r.Floats(w.rms_final.data(), c.dim, "rms_final_weight");
  r.at += size_t(c.seq_len) * c.head_dim() * 4;  // legacy freq_cis tables
  if (c.shared_classifier) {
    LlamaWeights::Matrix& m = w.cls;
    m.rows = c.vocab;
    m.cols = c.dim;
    m.stride = PaddedCols(c.dim);
    m.data.assign(m.rows * m.stride, 0.0f);
    for (size_t i = 0; i < c.vocab; ++i) {
      std::copy(w.embedding.begin() + i * c.dim,
                w.embedding.begin() + (i + 1) * c.dim,
                m.data.begin() + i * m.stride);
    }
  } else {
    w.cls = ReadMatrix(r, c.vocab, c.dim, "wcls");
  }
  return w;
}

LlamaWeights LoadCheckpoint(const std::string& path) {
  return ParseCheckpoint(ReadFile(path, "checkpoint"),
                         "checkpoint '" + path + "'");
}

// ---------------------------------------------------------------- tokenizer

Tokenizer Tokenizer::Parse(const std::string& bytes, size_t vocab,
                           const std::string& what) {
  if (vocab < 3 || vocab > (1 << 20)) {
    throw Error(what + ": vocabulary size " + std::to_string(vocab) +
                " is out of range (3 .. 2^20: <unk>, <s>, </s> come first)");
  }
  Reader r{bytes, what};
  const int32_t max_len = r.Get<int32_t>("max_token_length");
  if (max_len <= 0 || max_len > 4096) {
    throw Error(what + ": max_token_length " + std::to_string(max_len) +
                " is out of range");
  }
  Tokenizer t;
  t.pieces_.resize(vocab);
  t.scores_.resize(vocab);
  for (size_t i = 0; i < vocab; ++i) {
    t.scores_[i] = r.Get<float>("score");
    if (!std::isfinite(t.scores_[i])) {
      throw Error(what + ": token " + std::to_string(i) +
                  " has a non-finite score");
    }
    const int32_t len = r.Get<int32_t>("token length");
    if (len < 0 || len > max_len) {
      throw Error(what + ": token " + std::to_string(i) + " has length " +
                  std::to_string(len) + " (max_token_length " +
                  std::to_string(max_len) + ")");
    }
    r.Need(size_t(len), "token bytes");
    t.pieces_[i].assign(bytes.data() + r.at, size_t(len));
    r.at += size_t(len);
  }
  if (r.at != bytes.size()) {
    throw Error(what + ": " + std::to_string(bytes.size() - r.at) +
                " trailing bytes after " + std::to_string(vocab) + " tokens");
  }
  t.sorted_.resize(vocab);
  for (size_t i = 0; i < vocab; ++i) t.sorted_[i] = int(i);
  std::stable_sort(t.sorted_.begin(), t.sorted_.end(), [&](int a, int b) {
    return t.pieces_[size_t(a)] < t.pieces_[size_t(b)];
  });
  return t;
}

Tokenizer Tokenizer::Load(const std::string& path, size_t vocab) {
  return Parse(ReadFile(path, "tokenizer"), vocab, "tokenizer '" + path + "'");
}

int Tokenizer::Lookup(const std::string& s) const {
  auto it = std::lower_bound(
      sorted_.begin(), sorted_.end(), s,
      [&](int a, const std::string& key) { return pieces_[size_t(a)] < key; });
  if (it != sorted_.end() && pieces_[size_t(*it)] == s) return *it;
  return -1;
}

std::vector<int> Tokenizer::Encode(const std::string& text, bool bos) const {
  std::vector<int> tokens;
  if (bos) tokens.push_back(1);
  std::vector<int> sym;  // symbols to merge
  if (!text.empty()) {
    const int prefix = Lookup(" ");
    if (prefix >= 0) sym.push_back(prefix);
  }
  const size_t vocab = pieces_.size();
  for (size_t i = 0; i < text.size();) {
    // One UTF-8 code point (at most 4 bytes).
    size_t n = 1;
    while (i + n < text.size() && n < 4 &&
           (uint8_t(text[i + n]) & 0xC0) == 0x80)
      ++n;
    const int id = Lookup(text.substr(i, n));
    if (id >= 0) {
      sym.push_back(id);
    } else {
      for (size_t b = 0; b < n; ++b) {
        const size_t fb = size_t(uint8_t(text[i + b])) + 3;
        if (fb < vocab) sym.push_back(int(fb));
      }
    }
    i += n;
  }
  // Greedy merges: repeatedly merge the leftmost best-scoring adjacent pair
  // (llama2.c's rule). Pair merges are cached and refreshed locally, so a
  // pass is a scan of floats rather than string lookups.
  std::vector<int> pair_id(sym.size(), -1);
  auto refresh = [&](size_t i) {
    pair_id[i] =
        i + 1 < sym.size()
            ? Lookup(pieces_[size_t(sym[i])] + pieces_[size_t(sym[i + 1])])
            : -1;
  };
  for (size_t i = 0; i < sym.size(); ++i) refresh(i);
  for (;;) {
    float best = -1e10f;
    size_t best_i = SIZE_MAX;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      if (pair_id[i] >= 0 && scores_[size_t(pair_id[i])] > best) {
        best = scores_[size_t(pair_id[i])];
        best_i = i;
      }
    }
    if (best_i == SIZE_MAX) break;
    sym[best_i] = pair_id[best_i];
    sym.erase(sym.begin() + long(best_i) + 1);
    pair_id.erase(pair_id.begin() + long(best_i) + 1);
    refresh(best_i);
    if (best_i > 0) refresh(best_i - 1);
  }
  tokens.insert(tokens.end(), sym.begin(), sym.end());
  return tokens;
}

std::vector<int> Tokenizer::EncodeDocuments(const std::string& text) const {
  static const std::string kSep = "<|endoftext|>";
  static const char* kSpace = " \t\r\n\v\f";
  std::vector<int> out;
  size_t b = 0;
  for (;;) {
    const size_t e = text.find(kSep, b);
    const std::string doc = text.substr(b, e == std::string::npos ? e : e - b);
    const size_t first = doc.find_first_not_of(kSpace);
    if (first != std::string::npos) {
      const size_t last = doc.find_last_not_of(kSpace);
      const std::vector<int> t =
          Encode(doc.substr(first, last - first + 1), true);
      out.insert(out.end(), t.begin(), t.end());
    }
    if (e == std::string::npos) break;
    b = e + kSep.size();
  }
  return out;
}

std::string Tokenizer::Decode(int prev, int token) const {
  if (token < 0 || size_t(token) >= pieces_.size()) {
    throw Error("token " + std::to_string(token) +
                " is outside the vocabulary");
  }
  std::string piece = pieces_[size_t(token)];
  if (prev == 1 && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
  unsigned byte = 0;
  if (piece.size() == 6 && piece.compare(0, 3, "<0x") == 0 && piece[5] == '>' &&
      std::sscanf(piece.c_str(), "<0x%02X>", &byte) == 1) {
    return std::string(1, char(byte));
  }
  return piece;
}

// ------------------------------------------------------------------- runner

SessionConfig LlamaSessionConfig(const LlamaConfig& cfg) {
  SessionConfig s;
  s.layers = cfg.layers;
  s.n_heads = cfg.n_heads;
  s.n_kv_heads = cfg.n_kv_heads;
  s.dk = s.dv = cfg.head_dim();
  s.scale = 1.0f / std::sqrt(float(cfg.head_dim()));
  s.rope_theta = cfg.rope_theta;
  s.rope_interleaved = true;
  return s;
}

struct LlamaRunner::Pool {
  explicit Pool(int threads) : arena(threads) {}
  tbb::task_arena arena;
};

LlamaRunner::LlamaRunner(const LlamaWeights& w, const SessionConfig& session)
    : w_(w), session_(session) {
  const LlamaConfig& c = w.cfg;
  const SessionConfig& sc = session_.config();
  if (sc.layers != c.layers || sc.n_heads != c.n_heads ||
      sc.n_kv_heads != c.n_kv_heads || sc.dk != c.head_dim() ||
      sc.dv != c.head_dim()) {
    throw Error("session configuration does not match the model");
  }
  const size_t dp = PaddedCols(c.dim), hp = PaddedCols(c.hidden);
  x_.assign(dp, 0.0f);
  xb_.assign(dp, 0.0f);
  xb2_.assign(dp, 0.0f);
  hb_.assign(hp, 0.0f);
  hb2_.assign(hp, 0.0f);
  q_.assign(dp, 0.0f);
  k_.assign(c.kv_dim(), 0.0f);
  v_.assign(c.kv_dim(), 0.0f);
  att_.assign(dp, 0.0f);
  logits_.assign(c.vocab, 0.0f);
  const int threads = sc.threads > 0 ? sc.threads : int(DefaultThreads());
  pool_ = std::make_shared<Pool>(threads);
}

void LlamaRunner::MatVec(const LlamaWeights::Matrix& m, const float* x,
                         float* y) {
  // Small products stay on this thread; large ones split rows over oneTBB
  // in fixed chunks (each row's result is independent of the split).
  constexpr size_t kChunkRows = 64;
  if (m.rows * m.stride < (size_t(1) << 16) ||
      pool_->arena.max_concurrency() == 1) {
    kvsketch::MatVec(m.data.data(), m.rows, m.cols, m.stride, x, y);
    return;
  }
  pool_->arena.execute([&] {
    tbb::parallel_for(size_t(0), (m.rows + kChunkRows - 1) / kChunkRows,
                      [&](size_t b) {
                        const size_t r0 = b * kChunkRows;
                        const size_t n = std::min(kChunkRows, m.rows - r0);
                        kvsketch::MatVec(m.data.data() + r0 * m.stride, n,
                                         m.cols, m.stride, x, y + r0);
                      });
  });
}

namespace {

void RmsNorm(float* out, const float* x, const float* w, size_t n) {
  float ss = 0.0f;
  for (size_t i = 0; i < n; ++i) ss += x[i] * x[i];
  ss = 1.0f / std::sqrt(ss / float(n) + 1e-5f);
  for (size_t i = 0; i < n; ++i) out[i] = w[i] * (ss * x[i]);
}

// RoPE on interleaved pairs (x[2i], x[2i+1]) of each head, as llama2.c.
void Rope(float* x, size_t heads, size_t hd, size_t pos, float theta) {
  for (size_t i = 0; i < hd; i += 2) {
    const float freq = 1.0f / std::pow(theta, float(i) / float(hd));
    const float val = float(pos) * freq;
    const float fc = std::cos(val), fs = std::sin(val);
    for (size_t h = 0; h < heads; ++h) {
      float* p = x + h * hd + i;
      const float a = p[0], b = p[1];
      p[0] = a * fc - b * fs;
      p[1] = a * fs + b * fc;
    }
  }
}

}  // namespace

const float* LlamaRunner::Forward(int token) {
  const LlamaConfig& c = w_.cfg;
  if (token < 0 || size_t(token) >= c.vocab) {
    throw Error("token " + std::to_string(token) +
                " is outside the vocabulary");
  }
  const size_t D = c.dim, hd = c.head_dim();
  std::copy(w_.embedding.begin() + size_t(token) * D,
            w_.embedding.begin() + (size_t(token) + 1) * D, x_.begin());
  for (size_t l = 0; l < c.layers; ++l) {
    RmsNorm(xb_.data(), x_.data(), w_.rms_att[l].data(), D);
    MatVec(w_.wq[l], xb_.data(), q_.data());
    MatVec(w_.wk[l], xb_.data(), k_.data());
    MatVec(w_.wv[l], xb_.data(), v_.data());
    Rope(q_.data(), c.n_heads, hd, pos_, c.rope_theta);
    Rope(k_.data(), c.n_kv_heads, hd, pos_, c.rope_theta);
    if (hook_) hook_(l, pos_, q_.data(), k_.data(), v_.data());
    session_.Append(l, k_.data(), v_.data());
    session_.Attend(l, q_.data(), att_.data());
    MatVec(w_.wo[l], att_.data(), xb2_.data());
    for (size_t i = 0; i < D; ++i) x_[i] += xb2_[i];
    RmsNorm(xb_.data(), x_.data(), w_.rms_ffn[l].data(), D);
    MatVec(w_.w1[l], xb_.data(), hb_.data());
    MatVec(w_.w3[l], xb_.data(), hb2_.data());
    SwiGlu(hb_.data(), hb2_.data(), c.hidden);
    MatVec(w_.w2[l], hb_.data(), xb_.data());
    for (size_t i = 0; i < D; ++i) x_[i] += xb_[i];
  }
  RmsNorm(x_.data(), x_.data(), w_.rms_final.data(), D);
  MatVec(w_.cls, x_.data(), logits_.data());
  ++pos_;
  return logits_.data();
}

void LlamaRunner::MatMulBlock(const LlamaWeights::Matrix& m, const float* xt,
                              size_t nn, float* yt) {
  constexpr size_t kChunkRows = 64;
  // Split by the work (a block multiplies a matrix's by its tokens).
  if (m.rows * m.stride * nn < (size_t(1) << 19) ||
      pool_->arena.max_concurrency() == 1) {
    MatMulTransposed(m.data.data(), m.rows, m.cols, m.stride, xt, nn, nn, yt,
                     nn);
    return;
  }
  pool_->arena.execute([&] {
    tbb::parallel_for(
        size_t(0), (m.rows + kChunkRows - 1) / kChunkRows, [&](size_t b) {
          const size_t r0 = b * kChunkRows;
          const size_t rn = std::min(kChunkRows, m.rows - r0);
          MatMulTransposed(m.data.data() + r0 * m.stride, rn, m.cols, m.stride,
                           xt, nn, nn, yt + r0 * nn, nn);
        });
  });
}

namespace {
// dst[c * ds + r] = src[r * ss + c] (op: = or +=) for r < rows, c < cols,
// in 16 x 16 tiles (a tile's rows and columns stay in L1 either way).
template <bool kAdd>
void TransposeTiles(const float* src, size_t rows, size_t cols, size_t ss,
                    float* dst, size_t ds) {
  constexpr size_t kT = 16;
  for (size_t r0 = 0; r0 < rows; r0 += kT) {
    const size_t r1 = std::min(rows, r0 + kT);
    for (size_t c0 = 0; c0 < cols; c0 += kT) {
      const size_t c1 = std::min(cols, c0 + kT);
      for (size_t c = c0; c < c1; ++c) {
        float* out = dst + c * ds;
        for (size_t r = r0; r < r1; ++r) {
          if (kAdd) {
            out[r] += src[r * ss + c];
          } else {
            out[r] = src[r * ss + c];
          }
        }
      }
    }
  }
}

// rows [n][cols] (row stride rs) -> feature-major t [cols][nn], zero
// columns n..nn.
void ToFeatureMajor(const float* rows, size_t n, size_t cols, size_t rs,
                    size_t nn, float* t) {
  TransposeTiles<false>(rows, n, cols, rs, t, nn);
  for (size_t c = 0; c < cols; ++c)
    for (size_t i = n; i < nn; ++i) t[c * nn + i] = 0.0f;
}
}  // namespace

const float* LlamaRunner::ForwardBlock(const int* tokens, size_t n) {
  const LlamaConfig& c = w_.cfg;
  if (n == 0) throw Error("forward: an empty block");
  for (size_t t = 0; t < n; ++t) {
    if (tokens[t] < 0 || size_t(tokens[t]) >= c.vocab) {
      throw Error("token " + std::to_string(tokens[t]) +
                  " is outside the vocabulary");
    }
  }
  const size_t D = c.dim, hd = c.head_dim(), qd = c.n_heads * hd,
               kvd = c.kv_dim(), H = c.hidden, V = c.vocab;
  const size_t nn = (n + 15) / 16 * 16;
  if (block_cap_ < nn) {
    block_cap_ = nn;
    bx_.resize(nn * D);
    bxb_.resize(nn * D);
    bq_.resize(nn * qd);
    bk_.resize(nn * kvd);
    bv_.resize(nn * kvd);
    batt_.resize(nn * qd);
    blogits_.resize(nn * V);
    const size_t widest = std::max({D, qd, H, V});
    tin_.resize(widest * nn);
    tout_.resize(widest * nn);
    th_.resize(H * nn);
    th2_.resize(H * nn);
  }
  for (size_t t = 0; t < n; ++t)
    std::copy(w_.embedding.begin() + size_t(tokens[t]) * D,
              w_.embedding.begin() + (size_t(tokens[t]) + 1) * D,
              bx_.begin() + t * D);
  // Feature-major product, then back to rows [n][cols].
  auto product = [&](const LlamaWeights::Matrix& m, float* rows_out) {
    MatMulBlock(m, tin_.data(), nn, tout_.data());
    TransposeTiles<false>(tout_.data(), m.rows, n, nn, rows_out, m.rows);
  };
  for (size_t l = 0; l < c.layers; ++l) {
    for (size_t t = 0; t < n; ++t)
      RmsNorm(bxb_.data() + t * D, bx_.data() + t * D, w_.rms_att[l].data(), D);
    ToFeatureMajor(bxb_.data(), n, D, D, nn, tin_.data());
    product(w_.wq[l], bq_.data());
    product(w_.wk[l], bk_.data());
    product(w_.wv[l], bv_.data());
    for (size_t t = 0; t < n; ++t) {
      Rope(bq_.data() + t * qd, c.n_heads, hd, pos_ + t, c.rope_theta);
      Rope(bk_.data() + t * kvd, c.n_kv_heads, hd, pos_ + t, c.rope_theta);
      if (hook_)
        hook_(l, pos_ + t, bq_.data() + t * qd, bk_.data() + t * kvd,
              bv_.data() + t * kvd);
    }
    session_.Prefill(l, bq_.data(), bk_.data(), bv_.data(), n, batt_.data());
    ToFeatureMajor(batt_.data(), n, qd, qd, nn, tin_.data());
    MatMulBlock(w_.wo[l], tin_.data(), nn, tout_.data());
    TransposeTiles<true>(tout_.data(), D, n, nn, bx_.data(), D);
    for (size_t t = 0; t < n; ++t) {
      float* x = bx_.data() + t * D;
      RmsNorm(bxb_.data() + t * D, x, w_.rms_ffn[l].data(), D);
    }
    ToFeatureMajor(bxb_.data(), n, D, D, nn, tin_.data());
    MatMulBlock(w_.w1[l], tin_.data(), nn, th_.data());
    MatMulBlock(w_.w3[l], tin_.data(), nn, th2_.data());
    SwiGlu(th_.data(), th2_.data(), H * nn);
    MatMulBlock(w_.w2[l], th_.data(), nn, tout_.data());
    TransposeTiles<true>(tout_.data(), D, n, nn, bx_.data(), D);
  }
  for (size_t t = 0; t < n; ++t)
    RmsNorm(bxb_.data() + t * D, bx_.data() + t * D, w_.rms_final.data(), D);
  ToFeatureMajor(bxb_.data(), n, D, D, nn, tin_.data());
  product(w_.cls, blogits_.data());
  pos_ += n;
  return blogits_.data();
}

}  // namespace kvsketch
