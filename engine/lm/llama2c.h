// A small runner for llama2.c-format checkpoints whose attention goes through
// a kvsketch Session: the first real client of the library.
//
// Checkpoint (legacy v0): 7 int32 -- dim, hidden_dim, n_layers, n_heads,
// n_kv_heads, vocab_size (negative: unshared classifier), seq_len -- then
// float32 weights in llama2.c order. Tokenizer: int32 max_token_length, then
// per token float32 score, int32 length, bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kvsketch/kvsketch.h"

namespace kvsketch {

struct LlamaConfig {
  size_t dim = 0, hidden = 0, layers = 0, n_heads = 0, n_kv_heads = 0;
  size_t vocab = 0, seq_len = 0;
  bool shared_classifier = true;
  float rope_theta = 10000.0f;
  size_t head_dim() const { return dim / n_heads; }
  size_t kv_dim() const { return n_kv_heads * head_dim(); }
};

// Weights as padded rows (stride PaddedCols(in)) so that every matrix-vector
// product goes through arch/ MatVec.
struct LlamaWeights {
  LlamaConfig cfg;
  struct Matrix {
    size_t rows = 0, cols = 0, stride = 0;
    std::vector<float> data;  // [rows][stride], zero padded
  };
  std::vector<float> embedding;                      // [vocab][dim] (unpadded)
  std::vector<std::vector<float>> rms_att, rms_ffn;  // [layers][dim]
  std::vector<Matrix> wq, wk, wv, wo, w1, w2, w3;    // per layer
  std::vector<float> rms_final;
  Matrix cls;  // [vocab][dim]
};

// Parses a checkpoint from memory; throws Error naming the problem (bad
// header, shape, size or non-finite weight).
LlamaWeights ParseCheckpoint(const std::string& bytes, const std::string& what);
LlamaWeights LoadCheckpoint(const std::string& path);

class Tokenizer {
 public:
  // Throws Error naming the problem (truncated file, bad lengths, ...).
  static Tokenizer Parse(const std::string& bytes, size_t vocab,
                         const std::string& what);
  static Tokenizer Load(const std::string& path, size_t vocab);

  // SentencePiece-style BPE as in llama2.c: optional BOS (1), a dummy-prefix
  // space, UTF-8 characters (byte fallback <0xXX> = byte + 3), then greedy
  // merges of the best-scoring pair.
  std::vector<int> Encode(const std::string& text, bool bos) const;
  // A corpus: documents separated by "<|endoftext|>" (the TinyStories
  // convention), each stripped of surrounding whitespace and encoded with
  // BOS, as llama2.c's pretokenizer does.
  std::vector<int> EncodeDocuments(const std::string& text) const;
  // Text of `token` following `prev` (strips the space after BOS, decodes
  // <0xXX> byte tokens).
  std::string Decode(int prev, int token) const;
  size_t size() const { return pieces_.size(); }

 private:
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<int> sorted_;  // indices sorted by piece
  int Lookup(const std::string& s) const;
};

// Per-layer hook: (layer, position, q [n_heads][hd], k [n_kv][hd],
// v [n_kv][hd]) after RoPE -- used to check the runner against traces.
using QkvHook = std::function<void(size_t, size_t, const float*, const float*,
                                   const float*)>;

// One decoding stream: activations plus the kvsketch session holding the
// KV cache. Forward() never allocates.
class LlamaRunner {
 public:
  LlamaRunner(const LlamaWeights& w, const SessionConfig& session);
  // Feeds `token` at the next position; returns the logits [vocab].
  const float* Forward(int token);
  // Feeds n tokens at the next positions with one Session::Prefill per
  // layer; returns the logits of every one ([n][vocab], valid until the next
  // call). Grows its buffers to the largest n seen.
  const float* ForwardBlock(const int* tokens, size_t n);
  size_t position() const { return pos_; }
  // Drops every token at position >= p (Session::Truncate; throws Error,
  // changing nothing, when the cache no longer holds them verbatim).
  void Truncate(size_t p) {
    session_.Truncate(p);
    pos_ = p;
  }
  void Reset() {
    session_.Reset();
    pos_ = 0;
  }
  Session& session() { return session_; }
  void set_hook(QkvHook h) { hook_ = std::move(h); }

 private:
  const LlamaWeights& w_;
  Session session_;
  size_t pos_ = 0;
  QkvHook hook_;
  std::vector<float> x_, xb_, xb2_, hb_, hb2_, q_, k_, v_, att_, logits_;
  // ForwardBlock: per-token rows [n][...] and feature-major copies
  // [features][nn] (nn = n rounded up to 16, zero columns past n) that the
  // block products take.
  std::vector<float> bx_, bxb_, bq_, bk_, bv_, batt_, blogits_;
  std::vector<float> tin_, tout_, th_, th2_;
  size_t block_cap_ = 0;
  // Y^T [m.rows][nn] = m * X^T for X^T [m.cols][nn]: rows of m split over
  // the pool in fixed chunks (results independent of the split).
  void MatMulBlock(const LlamaWeights::Matrix& m, const float* xt, size_t nn,
                   float* yt);
  struct Pool;
  std::shared_ptr<Pool> pool_;  // oneTBB arena for the large matmuls
  void MatVec(const LlamaWeights::Matrix& m, const float* x, float* y);
};

// The session configuration a runner needs for this model (layers, heads,
// dims, scale); the caller sets method and budget.
SessionConfig LlamaSessionConfig(const LlamaConfig& cfg);

}  // namespace kvsketch
