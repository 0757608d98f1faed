/* kvsketch C ABI: an opaque session handle, status codes, no exceptions.
 *
 *   kvs_config cfg;
 *   kvs_config_init(&cfg);             (sets struct_size and every default)
 *   cfg.layers = 5; cfg.n_heads = 8; cfg.n_kv_heads = 4; cfg.dk = cfg.dv = 8;
 *   cfg.budget_tokens_per_head = 64;
 *   kvs_session* s = NULL;
 *   if (kvs_create(&cfg, &s) != KVS_OK) puts(kvs_last_error(NULL));
 *   kvs_append(s, layer, k, v, 1);  kvs_attend(s, layer, q, out);
 *   kvs_destroy(s);
 */
#ifndef KVSKETCH_KVSKETCH_C_H_
#define KVSKETCH_KVSKETCH_C_H_

#include <stddef.h>
#include <stdint.h>

#include "kvsketch/version.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum kvs_status {
  KVS_OK = 0,
  KVS_INVALID_ARGUMENT = 1, /* shapes, NaN/Inf, layer out of range, ... */
  KVS_BUDGET = 2,           /* the configuration or a token does not fit */
  KVS_IO = 3,               /* save/load: file, format, checksum, mismatch */
  KVS_INTERNAL = 4
} kvs_status;

/* Methods and storages. DEFAULT (0) picks the library's default: method
 * risk, storage f16 (storage_k / storage_v: `storage`). */
/* In C++ both enums have int as their fixed underlying type, so any int a
 * caller passes is a valid value that the library can reject by name. */
#ifdef __cplusplus
#define KVS_ENUM_INT : int
#else
#define KVS_ENUM_INT
#endif
typedef enum kvs_method KVS_ENUM_INT {
  KVS_METHOD_DEFAULT = 0,
  KVS_METHOD_EXACT = 1,
  KVS_METHOD_WINDOW = 2,
  KVS_METHOD_UNIFORM = 3,
  KVS_METHOD_BALANCE = 4,
  KVS_METHOD_TAYLOR = 5,
  KVS_METHOD_HASHED = 6,
  KVS_METHOD_H2O = 7,
  KVS_METHOD_TOVA = 8,
  KVS_METHOD_RISK = 9,
  KVS_METHOD_BLURRY = 10
} kvs_method;

typedef enum kvs_storage KVS_ENUM_INT {
  KVS_STORAGE_DEFAULT = 0,
  KVS_STORAGE_F32 = 1,
  KVS_STORAGE_F16 = 2,
  KVS_STORAGE_BF16 = 3,
  KVS_STORAGE_Q8 = 4,
  KVS_STORAGE_Q4 = 5,
  KVS_STORAGE_Q4A = 6
} kvs_storage;

/* "risk", "q8", ...: the names the CLI and the C++ API use (DEFAULT: the
 * default's name); NULL for a value outside the enum. */
const char* kvs_method_name(kvs_method m);
const char* kvs_storage_name(kvs_storage s);
/* Name -> enum; KVS_INVALID_ARGUMENT (kvs_last_error(NULL) lists the known
 * names) for an unknown one. */
kvs_status kvs_method_from_name(const char* name, kvs_method* out);
kvs_status kvs_storage_from_name(const char* name, kvs_storage* out);

/* Every field has a default (kvs_config_init). struct_size is the size of
 * the struct the caller was compiled with (kvs_config_init sets it): a
 * library newer than the caller's header gives fields past struct_size their
 * defaults; a struct_size larger than this library's kvs_config, or smaller
 * than its first published layout, is refused with KVS_INVALID_ARGUMENT.
 * Fields are only ever appended. */
typedef struct kvs_config {
  size_t struct_size;
  size_t layers, n_heads, n_kv_heads, dk, dv;
  float scale;         /* 0: 1/sqrt(dk) */
  kvs_method method;   /* DEFAULT: risk, the recommended default */
  size_t budget_bytes; /* exactly one of the three budgets */
  size_t budget_bytes_per_head;
  size_t budget_tokens_per_head;
  const float* head_weights; /* NULL or [layers * n_kv_heads] */
  kvs_storage storage;       /* DEFAULT: f16 */
  /* Keys' / values' storage (DEFAULT: `storage`); equal, or both among
   * f16, q8, q4, q4a. */
  kvs_storage storage_k, storage_v;
  int rotate;  /* 1 (default): quantized rows of a power-of-two head dim are
                  stored Hadamard-rotated; 0: not */
  int threads; /* 0: the performance cores (big.LITTLE), else all cores */
  uint64_t seed;
  size_t sinks; /* exact first tokens (default 4) */
  long window;  /* exact recent tokens; -1: method default */
  /* RoPE of the keys and queries you pass (theta 0: none or unknown). The
   * default method, risk, rotates its probe queries forward to future
   * positions with it; give it whenever the model uses RoPE. */
  float rope_theta;     /* e.g. 10000 (llama) */
  size_t rope_dims;     /* rotated dims per head, even; 0: all of dk */
  int rope_interleaved; /* 1: pairs (x[2i], x[2i+1]) as llama2.c/Meta;
                           0: halves (x[i], x[i + dims/2]) as NeoX/HF */
  /* ---- since 0.2: method knobs ---- */
  size_t block;       /* balance: items per coreset halving (default 64) */
  int degree;         /* taylor / hashed: Taylor degree 0-2 (default 1) */
  float window_share; /* default window as a share of the budget; < 0
                         (default): the method's (0.5; risk 0.25) */
  size_t probes;      /* risk: probe queries kept; 0 (default): from the
                         budget */
  /* ---- since 0.3: the caller's thread pool ---- */
  /* Optional (NULL: kvsketch's own pool). parallel_for(parallel_user, n,
   * task, task_ctx) must call task(task_ctx, i, worker) for each i in [0, n)
   * with worker in [0, threads) -- set threads (> 0) to your pool's worker
   * count -- never two at once with the same worker, and return when they
   * have run. Tasks it does not run run on the calling thread afterwards,
   * each exactly once. Not for sequences of a context. */
  void (*parallel_for)(void* parallel_user, size_t n,
                       void (*task)(void* task_ctx, size_t i, size_t worker),
                       void* task_ctx);
  void* parallel_user;
} kvs_config;

typedef struct kvs_stats {
  size_t struct_size; /* sizeof(kvs_stats): kvs_stats st = KVS_STATS_INIT; */
  size_t arena_bytes, accounted_bytes, state_bytes, scratch_bytes;
  size_t retained, tokens;
} kvs_stats;
#define KVS_STATS_INIT \
  { sizeof(kvs_stats), 0, 0, 0, 0, 0, 0 }

/* Optional: every failed call also reports its status and message here
 * (from the thread that made the call; the callback must be thread-safe).
 * NULL turns it off. Process-wide. */
typedef void (*kvs_log_fn)(kvs_status status, const char* message, void* user);
void kvs_set_log(kvs_log_fn fn, void* user);

typedef struct kvs_session kvs_session;

/* Fills defaults (struct_size, method and storage DEFAULT, 4 sinks, window
 * -1, no RoPE (theta 0, interleaved pairs when set), rotate 1, block 64,
 * degree 1, window_share -1, probes 0).
 *
 * Threads: a session may be called from several threads; its calls are
 * serialized (one runs at a time, using all of the session's threads), so
 * concurrent calls are correct but not faster. kvs_last_error(s) belongs to
 * the session: read it from the thread that made the failed call before
 * that session is used again. Different sessions are independent. */
void kvs_config_init(kvs_config* cfg);
kvs_status kvs_create(const kvs_config* cfg, kvs_session** out);
void kvs_destroy(kvs_session* s);
/* k: [n][n_kv_heads][dk], v: [n][n_kv_heads][dv]. */
kvs_status kvs_append(kvs_session* s, size_t layer, const float* k,
                      const float* v, size_t n);
/* q: [n_heads][dk] -> out: [n_heads][dv]. */
kvs_status kvs_attend(kvs_session* s, size_t layer, const float* q, float* out);
/* Batched causal prefill of n tokens of one layer: q [n][n_heads][dk], k
 * [n][n_kv_heads][dk], v [n][n_kv_heads][dv] -> out [n][n_heads][dv]; token
 * t attends to the state before the block and to the block's tokens up to t,
 * the block's own tokens read verbatim; then the block is appended (see
 * Session::Prefill in kvsketch.h). */
kvs_status kvs_prefill(kvs_session* s, size_t layer, const float* q,
                       const float* k, const float* v, size_t n, float* out);
/* Explicit positions (llama_batch's pos): a layer's tokens take positions 0,
 * 1, ... as appended; *position = the one the layer's next token takes
 * (kvs_truncate(s, p) sets it to p). kvs_append_at / kvs_prefill_at first
 * check that position equals it, else KVS_INVALID_ARGUMENT naming both
 * (nothing changes): positions are consecutive, no gaps. */
kvs_status kvs_position(const kvs_session* s, size_t layer, size_t* position);
kvs_status kvs_append_at(kvs_session* s, size_t layer, size_t position,
                         const float* k, const float* v, size_t n);
kvs_status kvs_prefill_at(kvs_session* s, size_t layer, size_t position,
                          const float* q, const float* k, const float* v,
                          size_t n, float* out);
kvs_status kvs_stats_get(const kvs_session* s, kvs_stats* out);
kvs_status kvs_save(const kvs_session* s, const char* path);
kvs_status kvs_load(kvs_session* s, const char* path);
/* The same state in caller memory (llama_state_get_size / get_data /
 * set_data): *size = the bytes a state of this configuration takes (the same
 * for every state of it); kvs_state_get writes them to dst (capacity bytes;
 * KVS_INVALID_ARGUMENT and nothing written when smaller) and sets *written;
 * kvs_state_set validates everything first and leaves the session unchanged
 * on any error (KVS_IO). */
kvs_status kvs_state_size(const kvs_session* s, size_t* size);
kvs_status kvs_state_get(const kvs_session* s, void* dst, size_t capacity,
                         size_t* written);
kvs_status kvs_state_set(kvs_session* s, const void* src, size_t size);
/* kvs_attend without learning: the same answer, no query statistic changes
 * (for speculative verification). */
kvs_status kvs_attend_readonly(kvs_session* s, size_t layer, const float* q,
                               float* out);
/* Rollback (positions count the tokens appended, from 0): drops every token
 * at position >= p in every layer while each head still holds them
 * verbatim, else KVS_INVALID_ARGUMENT naming how far it can go (session
 * unchanged). kvs_min_truncate_position gives the smallest p that works now;
 * see Session::Truncate in kvsketch.h for each method's reach. */
kvs_status kvs_truncate(kvs_session* s, size_t p);
kvs_status kvs_min_truncate_position(const kvs_session* s, size_t* p);
/* A new session with s's configuration and state (its own memory). */
kvs_status kvs_fork(const kvs_session* s, kvs_session** out);
/* Forgets every token: the session is as newly created, in the same memory.
 * Fails only when memory for the per-head objects runs out; the session then
 * refuses every call and must be destroyed. */
kvs_status kvs_reset(kvs_session* s);
/* Message of the last failed call on this session (or of kvs_create when s
 * is NULL, per thread). Valid until the next call. */
/* Several sequences in one context (see kvsketch::Context): one thread pool,
 * one per-thread scratch and max_sequences slots of state memory, allocated
 * once and sized from `base`. kvs_sequence_create gives a kvs_session (every
 * call above applies; cfg NULL: `base`; a different budget up to base's,
 * method, storage or seed is fine when it fits) or KVS_BUDGET when every
 * slot is taken; kvs_destroy frees its slot. Calls on different sequences
 * may run at once from different threads; calls on one sequence are
 * serialized. Sequences keep the context alive: destroy them in any order. */
typedef struct kvs_context kvs_context;
kvs_status kvs_context_create(const kvs_config* base, size_t max_sequences,
                              kvs_context** out);
void kvs_context_destroy(kvs_context* c);
kvs_status kvs_sequence_create(kvs_context* c, const kvs_config* cfg,
                               kvs_session** out);
kvs_status kvs_context_sequences(const kvs_context* c, size_t* in_use,
                                 size_t* max_sequences);
/* Every live sequence's state in one buffer (since 0.4; see
 * Context::SaveState): *size = the bytes; kvs_context_state_get writes them
 * (KVS_INVALID_ARGUMENT, nothing written, when capacity is smaller);
 * kvs_context_state_set restores them into the sequences in the same slots
 * (create the same sequences in the same order first), validating all of
 * them before any changes (KVS_IO naming the problem). No sequence may be
 * created, destroyed or called meanwhile. Messages: kvs_last_error(NULL). */
kvs_status kvs_context_state_size(const kvs_context* c, size_t* size);
kvs_status kvs_context_state_get(const kvs_context* c, void* dst,
                                 size_t capacity, size_t* written);
kvs_status kvs_context_state_set(kvs_context* c, const void* src, size_t size);
const char* kvs_last_error(const kvs_session* s);
const char* kvs_version(void);

#ifdef __cplusplus
}
#endif

#endif /* KVSKETCH_KVSKETCH_C_H_ */
