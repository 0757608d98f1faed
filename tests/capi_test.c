/* Uses only kvsketch_c.h, compiled as C. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvsketch/kvsketch_c.h"

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      return 1;                                                                \
    }                                                                          \
  } while (0)

/* Exact causal attention in double over rows [lo, hi) of a kv head, plus
 * rows [0, sinks): out[dv] for query q. */
static void Reference(const float* K, const float* V, size_t stride_rows,
                      size_t head, size_t d, size_t sinks, size_t lo, size_t hi,
                      const float* q, double scale, double* out) {
  double m = -1e300, z = 0.0, acc[8] = {0};
  size_t r, c;
  for (r = 0; r < hi; ++r) {
    double s = 0.0;
    if (r >= sinks && r < lo) continue;
    for (c = 0; c < d; ++c)
      s += (double)K[(r * stride_rows + head) * d + c] * (double)q[c];
    if (s * scale > m) m = s * scale;
  }
  for (r = 0; r < hi; ++r) {
    double s = 0.0, w;
    if (r >= sinks && r < lo) continue;
    for (c = 0; c < d; ++c)
      s += (double)K[(r * stride_rows + head) * d + c] * (double)q[c];
    w = exp(s * scale - m);
    z += w;
    for (c = 0; c < d; ++c) acc[c] += w * V[(r * stride_rows + head) * d + c];
  }
  for (c = 0; c < d; ++c) out[c] = acc[c] / z;
}

/* exact and window through the C ABI against the double reference: every
 * output of every query head within 1e-5 (f32 storage). */
static int CheckAgainstReference(const char* method, size_t budget,
                                 size_t sinks, size_t window) {
  enum { T = 120, KV = 2, H = 4, D = 8 };
  static float K[T * KV * D], V[T * KV * D];
  float q[H * D], out[H * D];
  kvs_config cfg;
  kvs_session* s = NULL;
  size_t t, i, h, c;
  double ref[8], worst = 0.0;
  kvs_config_init(&cfg);
  cfg.layers = 1;
  cfg.n_heads = H;
  cfg.n_kv_heads = KV;
  cfg.dk = cfg.dv = D;
  CHECK(kvs_method_from_name(method, &cfg.method) == KVS_OK);
  cfg.storage = KVS_STORAGE_F32;
  cfg.budget_tokens_per_head = budget;
  cfg.sinks = sinks;
  cfg.threads = 1;
  if (kvs_create(&cfg, &s) != KVS_OK) {
    fprintf(stderr, "%s: %s\n", method, kvs_last_error(NULL));
    return 1;
  }
  for (t = 0; t < T; ++t) {
    for (i = 0; i < KV * D; ++i) {
      K[t * KV * D + i] = (float)sin(0.3 * (double)(t * 16 + i) + 0.01 * t);
      V[t * KV * D + i] = (float)cos(0.17 * (double)(t * 16 + i));
    }
    CHECK(kvs_append(s, 0, K + t * KV * D, V + t * KV * D, 1) == KVS_OK);
    for (i = 0; i < H * D; ++i)
      q[i] = (float)(2.0 * cos(0.05 * (double)(t * 32 + i)));
    CHECK(kvs_attend(s, 0, q, out) == KVS_OK);
    for (h = 0; h < H; ++h) {
      const size_t kvh = h / (H / KV);
      const size_t lo = t + 1 > window + sinks ? t + 1 - window : 0;
      Reference(K, V, KV, kvh, D, sinks, lo, t + 1, q + h * D,
                1.0 / sqrt((double)D), ref);
      for (c = 0; c < D; ++c) {
        const double e = fabs(ref[c] - (double)out[h * D + c]);
        if (e > worst) worst = e;
      }
    }
  }
  kvs_destroy(s);
  if (worst > 1e-5) {
    fprintf(stderr, "%s: max abs error %g vs the reference\n", method, worst);
    return 1;
  }
  return 0;
}

/* Token t of the test stream of the sessions below (2 KV heads, 4 query
 * heads, head_dim 8): k, v [16], q [32]. */
static void TestToken(size_t t, float* k, float* v, float* q) {
  size_t i;
  for (i = 0; i < 16; ++i) {
    k[i] = (float)sin(0.3 * (double)(t * 16 + i));
    v[i] = (float)cos(0.2 * (double)(t * 16 + i));
  }
  for (i = 0; i < 32; ++i) q[i] = (float)sin(0.07 * (double)(t * 32 + i));
}

/* Tokens [from, to) appended and asked to both sessions: 0 when every answer
 * is the same bit for bit. */
static int Lockstep(kvs_session* a, kvs_session* b, size_t from, size_t to) {
  float k[16], v[16], q[32], oa[32], ob[32];
  size_t t, i;
  for (t = from; t < to; ++t) {
    TestToken(t, k, v, q);
    CHECK(kvs_append(a, 0, k, v, 1) == KVS_OK);
    CHECK(kvs_append(b, 0, k, v, 1) == KVS_OK);
    CHECK(kvs_attend(a, 0, q, oa) == KVS_OK);
    CHECK(kvs_attend(b, 0, q, ob) == KVS_OK);
    for (i = 0; i < 32; ++i) CHECK(oa[i] == ob[i]);
  }
  return 0;
}

/* A caller's pool: the tasks in reverse order on the calling thread. */
static int g_pool_calls = 0;
static void ReversePool(void* user, size_t n,
                        void (*task)(void* ctx, size_t i, size_t worker),
                        void* ctx) {
  size_t i;
  ++*(int*)user;
  for (i = n; i-- > 0;) task(ctx, i, i % 2);
}
/* A pool that must never be called (past a caller's struct_size). */
static int g_wrong_pool = 0;
static void WrongPool(void* user, size_t n,
                      void (*task)(void* ctx, size_t i, size_t worker),
                      void* ctx) {
  (void)user, (void)n, (void)task, (void)ctx;
  g_wrong_pool = 1;
}

static int g_log_calls = 0;
static kvs_status g_log_status = KVS_OK;
static char g_log_message[256];
static void CountLog(kvs_status status, const char* message, void* user) {
  ++g_log_calls;
  g_log_status = status;
  strncpy(g_log_message, message, sizeof(g_log_message) - 1);
  g_log_message[sizeof(g_log_message) - 1] = '\0';
  *(int*)user += 1;
}

int main(void) {
  kvs_config cfg;
  kvs_session* s = NULL;
  kvs_stats st = KVS_STATS_INIT;
  float k[2 * 8], v[2 * 8], q[4 * 8], out[4 * 8], out2[4 * 8];
  size_t t, i;
  kvs_config_init(&cfg);
  cfg.layers = 2;
  cfg.n_heads = 4;
  cfg.n_kv_heads = 2;
  cfg.dk = 8;
  cfg.dv = 8;
  cfg.budget_tokens_per_head = 32;
  cfg.threads = 2;
  CHECK(kvs_create(&cfg, &s) == KVS_OK);
  for (t = 0; t < 200; ++t) {
    for (i = 0; i < 16; ++i) {
      k[i] = (float)sin(0.1 * (double)(t * 16 + i));
      v[i] = (float)cos(0.07 * (double)(t * 16 + i));
    }
    CHECK(kvs_append(s, t % 2, k, v, 1) == KVS_OK);
  }
  for (i = 0; i < 32; ++i) q[i] = (float)i / 32.0f;
  CHECK(kvs_attend(s, 0, q, out) == KVS_OK);
  for (i = 0; i < 32; ++i) CHECK(isfinite(out[i]));
  CHECK(kvs_stats_get(s, &st) == KVS_OK);
  CHECK(st.tokens == 100);
  /* storage NULL = f16: 32 fp32 tokens of budget hold up to 64 tokens. */
  CHECK(st.retained <= 4 * 64);
  CHECK(st.retained > 4 * 32);
  CHECK(st.accounted_bytes <= st.arena_bytes);
  /* Bad input: a status code and a message, state unchanged. */
  k[3] = NAN;
  CHECK(kvs_append(s, 0, k, v, 1) == KVS_INVALID_ARGUMENT);
  CHECK(kvs_last_error(s)[0] != '\0');
  CHECK(kvs_append(s, 9, v, v, 1) == KVS_INVALID_ARGUMENT);
  CHECK(kvs_attend(s, 0, q, out2) == KVS_OK);
  for (i = 0; i < 32; ++i) CHECK(out[i] == out2[i]);
  CHECK(kvs_load(s, "/nonexistent/kvsketch.state") == KVS_IO);
  kvs_destroy(s);
  /* RoPE reaches the session: risk rotates its probes with it, so the same
   * stream answers differently with and without it; a bad RoPE is rejected. */
  {
    kvs_session* a = NULL;
    kvs_session* b = NULL;
    float qa[4 * 8], oa[4 * 8], ob[4 * 8];
    double diff = 0.0;
    cfg.layers = 1;
    cfg.budget_tokens_per_head = 24;
    cfg.threads = 1;
    CHECK(kvs_create(&cfg, &a) == KVS_OK);
    cfg.rope_theta = 10000.0f;
    CHECK(kvs_create(&cfg, &b) == KVS_OK);
    for (t = 0; t < 300; ++t) {
      for (i = 0; i < 16; ++i) {
        k[i] = (float)(3.0 * sin(0.37 * (double)(t * 16 + i) + 0.001 * t * t));
        v[i] = (float)cos(0.11 * (double)(t * 16 + i));
      }
      for (i = 0; i < 32; ++i) {
        qa[i] = (float)(2.0 * cos(0.23 * (double)(t * 32 + i)));
      }
      CHECK(kvs_append(a, 0, k, v, 1) == KVS_OK);
      CHECK(kvs_append(b, 0, k, v, 1) == KVS_OK);
      CHECK(kvs_attend(a, 0, qa, oa) == KVS_OK);
      CHECK(kvs_attend(b, 0, qa, ob) == KVS_OK);
      for (i = 0; i < 32; ++i) diff += fabs((double)oa[i] - (double)ob[i]);
    }
    CHECK(diff > 1e-3);
    kvs_destroy(a);
    kvs_destroy(b);
    cfg.rope_dims = 3;
    CHECK(kvs_create(&cfg, &a) == KVS_INVALID_ARGUMENT);
    CHECK(a == NULL);
    cfg.rope_dims = 0;
    cfg.rope_theta = 0.0f;
  }
  /* Keys and values stored apart: q8 keys with q4 values hold more tokens
   * than f16 in the same bytes; unsupported pairs and names are rejected. */
  {
    kvs_session* a = NULL;
    kvs_stats sa = KVS_STATS_INIT;
    cfg.storage_k = KVS_STORAGE_Q8;
    cfg.storage_v = KVS_STORAGE_Q4;
    CHECK(kvs_create(&cfg, &a) == KVS_OK);
    for (t = 0; t < 200; ++t) {
      for (i = 0; i < 16; ++i) {
        k[i] = (float)sin(0.3 * (double)(t * 16 + i));
        v[i] = (float)cos(0.7 * (double)(t * 16 + i));
      }
      CHECK(kvs_append(a, 0, k, v, 1) == KVS_OK);
    }
    CHECK(kvs_attend(a, 0, q, out) == KVS_OK);
    for (i = 0; i < 32; ++i) CHECK(isfinite(out[i]));
    CHECK(kvs_stats_get(a, &sa) == KVS_OK);
    /* 24 f32 tokens of 8 + 8 dims: 48 f16 rows, here rows of 10 + 6 bytes. */
    CHECK(sa.retained > 2 * 48);
    kvs_destroy(a);
    a = NULL;
    cfg.storage_k = KVS_STORAGE_F32;
    CHECK(kvs_create(&cfg, &a) == KVS_INVALID_ARGUMENT);
    CHECK(strstr(kvs_last_error(NULL), "not supported") != NULL);
    cfg.storage_k = (kvs_storage)42;
    CHECK(kvs_create(&cfg, &a) == KVS_INVALID_ARGUMENT);
    CHECK(strstr(kvs_last_error(NULL), "not a kvs_storage") != NULL);
    CHECK(a == NULL);
    cfg.storage_k = KVS_STORAGE_DEFAULT;
    cfg.storage_v = KVS_STORAGE_DEFAULT;
  }
  /* Answers equal exact attention (exact) and sinks + window (window). */
  CHECK(CheckAgainstReference("exact", 120, 4, 1000) == 0);
  CHECK(CheckAgainstReference("window", 24, 4, 20) == 0);
  /* Save / load through C: the loaded session answers bit-identically; a
   * corrupted file is KVS_IO with a message, the session unchanged. */
  {
    kvs_session* a = NULL;
    kvs_session* b = NULL;
    float oa[4 * 8], ob[4 * 8];
    const char* path = "capi_test_state.kvs";
    FILE* f;
    kvs_config_init(&cfg);
    cfg.layers = 1;
    cfg.n_heads = 4;
    cfg.n_kv_heads = 2;
    cfg.dk = cfg.dv = 8;
    cfg.budget_tokens_per_head = 24;
    cfg.threads = 1;
    CHECK(kvs_create(&cfg, &a) == KVS_OK);
    CHECK(kvs_create(&cfg, &b) == KVS_OK);
    for (t = 0; t < 150; ++t) {
      for (i = 0; i < 16; ++i) {
        k[i] = (float)sin(0.21 * (double)(t * 16 + i));
        v[i] = (float)cos(0.13 * (double)(t * 16 + i));
      }
      for (i = 0; i < 32; ++i) q[i] = (float)sin(0.05 * (double)(t + i));
      CHECK(kvs_append(a, 0, k, v, 1) == KVS_OK);
      CHECK(kvs_attend(a, 0, q, oa) == KVS_OK);
    }
    CHECK(kvs_save(a, path) == KVS_OK);
    CHECK(kvs_load(b, path) == KVS_OK);
    CHECK(kvs_attend(a, 0, q, oa) == KVS_OK);
    CHECK(kvs_attend(b, 0, q, ob) == KVS_OK);
    for (i = 0; i < 32; ++i) CHECK(oa[i] == ob[i]);
    f = fopen(path, "r+b");
    CHECK(f != NULL);
    CHECK(fseek(f, 200, SEEK_SET) == 0);
    CHECK(fputc(0x5a, f) != EOF);
    fclose(f);
    CHECK(kvs_load(b, path) == KVS_IO);
    CHECK(kvs_last_error(b)[0] != '\0');
    CHECK(kvs_attend(b, 0, q, ob) == KVS_OK);
    CHECK(kvs_attend(a, 0, q, oa) == KVS_OK);
    for (i = 0; i < 32; ++i) CHECK(oa[i] == ob[i]);
    remove(path);
    /* The state in caller memory: the size is fixed, a short buffer is an
     * error that writes nothing, a good one restores b bit for bit, a
     * corrupted one is KVS_IO with b unchanged. */
    {
      size_t size = 0, size2 = 0, written = 7;
      unsigned char* buf;
      CHECK(kvs_state_size(a, &size) == KVS_OK);
      CHECK(size > 0);
      buf = (unsigned char*)malloc(size + 1);
      CHECK(buf != NULL);
      memset(buf, 0xee, size + 1);
      CHECK(kvs_state_get(a, buf, size - 1, &written) == KVS_INVALID_ARGUMENT);
      CHECK(written == 0);
      CHECK(buf[0] == 0xee);
      CHECK(strstr(kvs_last_error(a), "needs") != NULL);
      CHECK(kvs_state_get(a, buf, size + 1, &written) == KVS_OK);
      CHECK(written == size);
      CHECK(kvs_reset(b) == KVS_OK);
      CHECK(kvs_state_size(b, &size2) == KVS_OK);
      CHECK(size2 == size);
      CHECK(kvs_state_set(b, buf, size) == KVS_OK);
      CHECK(kvs_attend(a, 0, q, oa) == KVS_OK);
      CHECK(kvs_attend(b, 0, q, ob) == KVS_OK);
      for (i = 0; i < 32; ++i) CHECK(oa[i] == ob[i]);
      buf[size / 2] ^= 0x40;
      CHECK(kvs_state_set(b, buf, size) == KVS_IO);
      CHECK(kvs_state_set(b, buf, 10) == KVS_IO);
      CHECK(kvs_state_set(b, NULL, size) == KVS_INVALID_ARGUMENT);
      CHECK(kvs_attend(a, 0, q, oa) == KVS_OK);
      CHECK(kvs_attend(b, 0, q, ob) == KVS_OK);
      for (i = 0; i < 32; ++i) CHECK(oa[i] == ob[i]);
      free(buf);
    }
    /* Reset: as new (the same answers as a fresh session's). */
    {
      kvs_session* fresh = NULL;
      kvs_stats st = KVS_STATS_INIT;
      CHECK(kvs_create(&cfg, &fresh) == KVS_OK);
      CHECK(kvs_reset(a) == KVS_OK);
      CHECK(kvs_stats_get(a, &st) == KVS_OK);
      CHECK(st.tokens == 0);
      CHECK(st.retained == 0);
      for (t = 0; t < 60; ++t) {
        for (i = 0; i < 16; ++i) {
          k[i] = (float)cos(0.17 * (double)(t * 16 + i));
          v[i] = (float)sin(0.11 * (double)(t * 16 + i));
        }
        for (i = 0; i < 32; ++i) q[i] = (float)cos(0.07 * (double)(t + i));
        CHECK(kvs_append(a, 0, k, v, 1) == KVS_OK);
        CHECK(kvs_append(fresh, 0, k, v, 1) == KVS_OK);
        CHECK(kvs_attend(a, 0, q, oa) == KVS_OK);
        CHECK(kvs_attend(fresh, 0, q, ob) == KVS_OK);
        for (i = 0; i < 32; ++i) CHECK(oa[i] == ob[i]);
      }
      CHECK(kvs_reset(NULL) == KVS_INVALID_ARGUMENT);
      kvs_destroy(fresh);
    }
    kvs_destroy(a);
    kvs_destroy(b);
  }
  /* Prefill: 40 tokens in one call answer as 40 append + attend calls
   * (exact, f32); a bad layer or a NaN query changes nothing. */
  {
    enum { NT = 40 };
    kvs_session* a = NULL;
    kvs_session* b = NULL;
    static float pq[NT * 4 * 8], pk[NT * 2 * 8], pv[NT * 2 * 8],
        pout[NT * 4 * 8];
    double worst = 0.0;
    kvs_stats st = KVS_STATS_INIT;
    kvs_config_init(&cfg);
    cfg.layers = 1;
    cfg.n_heads = 4;
    cfg.n_kv_heads = 2;
    cfg.dk = cfg.dv = 8;
    cfg.method = KVS_METHOD_EXACT;
    cfg.storage = KVS_STORAGE_F32;
    cfg.budget_tokens_per_head = 64;
    cfg.threads = 1;
    CHECK(kvs_create(&cfg, &a) == KVS_OK);
    CHECK(kvs_create(&cfg, &b) == KVS_OK);
    for (i = 0; i < NT * 16; ++i) {
      pk[i] = (float)sin(0.37 * (double)i);
      pv[i] = (float)cos(0.23 * (double)i);
    }
    for (i = 0; i < NT * 32; ++i) pq[i] = (float)sin(0.11 * (double)i + 1.0);
    CHECK(kvs_prefill(b, 0, pq, pk, pv, NT, pout) == KVS_OK);
    for (t = 0; t < NT; ++t) {
      CHECK(kvs_append(a, 0, pk + t * 16, pv + t * 16, 1) == KVS_OK);
      CHECK(kvs_attend(a, 0, pq + t * 32, out) == KVS_OK);
      for (i = 0; i < 32; ++i) {
        const double e = fabs((double)out[i] - (double)pout[t * 32 + i]);
        if (e > worst) worst = e;
      }
    }
    CHECK(worst < 1e-5);
    CHECK(kvs_prefill(b, 1, pq, pk, pv, 4, pout) == KVS_INVALID_ARGUMENT);
    pq[5] = (float)NAN;
    CHECK(kvs_prefill(b, 0, pq, pk, pv, 4, pout) == KVS_INVALID_ARGUMENT);
    CHECK(strstr(kvs_last_error(b), "queries") != NULL);
    CHECK(kvs_prefill(NULL, 0, pq, pk, pv, 4, pout) == KVS_INVALID_ARGUMENT);
    CHECK(kvs_stats_get(b, &st) == KVS_OK);
    CHECK(st.tokens == NT);
    kvs_destroy(a);
    kvs_destroy(b);
  }
  /* Rollback, read-only attends and forks through C: a regenerate. */
  {
    kvs_session* a = NULL;
    kvs_session* f = NULL;
    size_t minp = 99;
    kvs_stats st = KVS_STATS_INIT;
    kvs_config_init(&cfg);
    cfg.layers = 1;
    cfg.n_heads = 4;
    cfg.n_kv_heads = 2;
    cfg.dk = cfg.dv = 8;
    cfg.budget_tokens_per_head = 48;
    cfg.threads = 1;
    cfg.rope_theta = 10000.0f;
    CHECK(kvs_create(&cfg, &a) == KVS_OK); /* risk, the default */
    for (t = 0; t < 100; ++t) {
      TestToken(t, k, v, q);
      CHECK(kvs_append(a, 0, k, v, 1) == KVS_OK);
      CHECK(kvs_attend_readonly(a, 0, q, out2) == KVS_OK);
      CHECK(kvs_attend(a, 0, q, out) == KVS_OK);
      for (i = 0; i < 32; ++i) CHECK(out[i] == out2[i]);
    }
    CHECK(kvs_fork(a, &f) == KVS_OK);
    CHECK(f != NULL);
    /* An answer of 3 tokens, then regenerate it: back to 100. */
    for (t = 100; t < 103; ++t) {
      CHECK(kvs_append(a, 0, k, v, 1) == KVS_OK);
      CHECK(kvs_attend(a, 0, q, out) == KVS_OK);
    }
    CHECK(kvs_min_truncate_position(a, &minp) == KVS_OK);
    CHECK(minp <= 100);
    CHECK(kvs_truncate(a, 100) == KVS_OK);
    CHECK(kvs_stats_get(a, &st) == KVS_OK);
    CHECK(st.tokens == 100);
    CHECK(kvs_truncate(a, 3) == KVS_INVALID_ARGUMENT);
    CHECK(strstr(kvs_last_error(a), "verbatim") != NULL);
    /* Explicit positions: after the truncate the next is 100; a gap or a
     * rewrite is refused naming both, and changes nothing. */
    {
      size_t pos = 0;
      float pq[4 * 8 * 2], pk[2 * 8 * 2], pv[2 * 8 * 2], po[4 * 8 * 2];
      for (i = 0; i < 4 * 8 * 2; ++i) pq[i] = po[i] = 0.01f * (float)i;
      for (i = 0; i < 2 * 8 * 2; ++i) pk[i] = pv[i] = 0.02f * (float)i;
      CHECK(kvs_position(a, 0, &pos) == KVS_OK);
      CHECK(pos == 100);
      CHECK(kvs_append_at(a, 0, 101, k, v, 1) == KVS_INVALID_ARGUMENT);
      CHECK(strstr(kvs_last_error(a), "next position is 100") != NULL);
      CHECK(kvs_append_at(a, 0, 99, k, v, 1) == KVS_INVALID_ARGUMENT);
      CHECK(strstr(kvs_last_error(a), "Truncate(99)") != NULL);
      CHECK(kvs_stats_get(a, &st) == KVS_OK);
      CHECK(st.tokens == 100);
      CHECK(kvs_append_at(a, 0, 100, k, v, 1) == KVS_OK);
      CHECK(kvs_prefill_at(a, 0, 100, pq, pk, pv, 2, po) ==
            KVS_INVALID_ARGUMENT);
      CHECK(kvs_prefill_at(a, 0, 101, pq, pk, pv, 2, po) == KVS_OK);
      CHECK(kvs_position(a, 0, &pos) == KVS_OK);
      CHECK(pos == 103);
      CHECK(kvs_position(a, 1, &pos) == KVS_INVALID_ARGUMENT);
      CHECK(kvs_truncate(a, 100) == KVS_OK);
    }
    CHECK(kvs_stats_get(f, &st) == KVS_OK);
    CHECK(st.tokens == 100); /* the fork did not follow */
    CHECK(kvs_fork(NULL, &f) == KVS_INVALID_ARGUMENT);
    kvs_destroy(f);
    kvs_destroy(a);
  }
  /* A context with two sequence slots: sequences answer as standalone
   * sessions, a third is KVS_BUDGET, a destroyed one frees its slot, and the
   * context may go first. */
  {
    kvs_context* ctx = NULL;
    kvs_session* s1 = NULL;
    kvs_session* s2 = NULL;
    kvs_session* s3 = NULL;
    kvs_session* alone = NULL;
    size_t in_use = 0, max_seq = 0;
    kvs_config_init(&cfg);
    cfg.layers = 1;
    cfg.n_heads = 4;
    cfg.n_kv_heads = 2;
    cfg.dk = cfg.dv = 8;
    cfg.budget_tokens_per_head = 48;
    cfg.threads = 2;
    CHECK(kvs_context_create(&cfg, 2, &ctx) == KVS_OK);
    CHECK(kvs_sequence_create(ctx, NULL, &s1) == KVS_OK);
    CHECK(kvs_sequence_create(ctx, &cfg, &s2) == KVS_OK);
    CHECK(kvs_sequence_create(ctx, NULL, &s3) == KVS_BUDGET);
    CHECK(s3 == NULL);
    CHECK(strstr(kvs_last_error(NULL), "slots") != NULL);
    CHECK(kvs_context_sequences(ctx, &in_use, &max_seq) == KVS_OK);
    CHECK(in_use == 2);
    CHECK(max_seq == 2);
    CHECK(kvs_create(&cfg, &alone) == KVS_OK);
    CHECK(Lockstep(s1, alone, 0, 120) == 0);
    TestToken(120, k, v, q);
    /* The whole context's state: to a buffer, on, and back. */
    {
      size_t size = 0, written = 0;
      char* buf;
      float before[32];
      CHECK(kvs_context_state_size(ctx, &size) == KVS_OK);
      CHECK(size > 32);
      buf = (char*)malloc(size);
      CHECK(buf != NULL);
      CHECK(kvs_context_state_get(ctx, buf, size - 1, &written) ==
            KVS_INVALID_ARGUMENT);
      CHECK(written == 0);
      CHECK(kvs_context_state_get(ctx, buf, size, &written) == KVS_OK);
      CHECK(written == size);
      CHECK(kvs_attend(s1, 0, q, before) == KVS_OK);
      CHECK(kvs_append(s1, 0, k, v, 1) == KVS_OK);
      CHECK(kvs_append(s2, 0, k, v, 1) == KVS_OK);
      CHECK(kvs_context_state_set(ctx, buf, size) == KVS_OK);
      CHECK(kvs_attend(s1, 0, q, out) == KVS_OK);
      for (i = 0; i < 32; ++i) CHECK(out[i] == before[i]);
      buf[size - 3] ^= 1; /* the second sequence's bytes */
      CHECK(kvs_context_state_set(ctx, buf, size) == KVS_IO);
      CHECK(strstr(kvs_last_error(NULL), "slot 1") != NULL);
      CHECK(kvs_context_state_set(NULL, buf, size) == KVS_INVALID_ARGUMENT);
      CHECK(kvs_context_state_size(ctx, NULL) == KVS_INVALID_ARGUMENT);
      CHECK(kvs_attend(s1, 0, q, out) == KVS_OK);
      for (i = 0; i < 32; ++i) CHECK(out[i] == before[i]);
      free(buf);
    }
    kvs_destroy(s2);
    CHECK(kvs_sequence_create(ctx, NULL, &s3) == KVS_OK);
    kvs_context_destroy(ctx); /* the sequences keep it alive */
    CHECK(kvs_attend(s1, 0, q, out) == KVS_OK);
    CHECK(kvs_append(s3, 0, k, v, 1) == KVS_OK);
    kvs_destroy(s1);
    kvs_destroy(s3);
    kvs_destroy(alone);
  }
  /* The evolvable ABI: names <-> enums, struct_size, the 0.2 knobs, the log
   * callback, version macros. */
  {
    kvs_session* a = NULL;
    kvs_session* b = NULL;
    kvs_method mm;
    kvs_storage ss;
    int user_calls = 0, m;
    char ver[32];
    kvs_stats st = KVS_STATS_INIT;
    for (m = KVS_METHOD_EXACT; m <= KVS_METHOD_BLURRY; ++m) {
      CHECK(kvs_method_name((kvs_method)m) != NULL);
      CHECK(kvs_method_from_name(kvs_method_name((kvs_method)m), &mm) ==
            KVS_OK);
      CHECK(mm == (kvs_method)m);
    }
    for (m = KVS_STORAGE_F32; m <= KVS_STORAGE_Q4A; ++m) {
      CHECK(kvs_storage_from_name(kvs_storage_name((kvs_storage)m), &ss) ==
            KVS_OK);
      CHECK(ss == (kvs_storage)m);
    }
    CHECK(strcmp(kvs_method_name(KVS_METHOD_DEFAULT), "risk") == 0);
    CHECK(strcmp(kvs_storage_name(KVS_STORAGE_DEFAULT), "f16") == 0);
    CHECK(kvs_method_name((kvs_method)11) == NULL);
    CHECK(kvs_storage_name((kvs_storage)-1) == NULL);
    CHECK(kvs_method_from_name("riskk", &mm) == KVS_INVALID_ARGUMENT);
    CHECK(strstr(kvs_last_error(NULL), "known: exact") != NULL);
    CHECK(kvs_storage_from_name(NULL, &ss) == KVS_INVALID_ARGUMENT);
    snprintf(ver, sizeof ver, "%d.%d.%d", KVSKETCH_VERSION_MAJOR,
             KVSKETCH_VERSION_MINOR, KVSKETCH_VERSION_PATCH);
    CHECK(strcmp(ver, kvs_version()) == 0);
    CHECK(KVSKETCH_VERSION_NUMBER >= 200);

    kvs_config_init(&cfg);
    CHECK(cfg.struct_size == sizeof(kvs_config));
    cfg.layers = 1;
    cfg.n_heads = 4;
    cfg.n_kv_heads = 2;
    cfg.dk = cfg.dv = 8;
    cfg.budget_tokens_per_head = 48;
    cfg.threads = 1;
    /* A caller built against the first layout (it ends before `block`):
     * the fields it does not know keep their defaults, whatever the bytes
     * there hold; its answers equal a session with the defaults. */
    CHECK(kvs_create(&cfg, &a) == KVS_OK);
    cfg.struct_size = offsetof(kvs_config, block);
    cfg.block = 1;     /* invalid if it were read */
    cfg.degree = 77;   /* likewise */
    cfg.probes = 9999; /* likewise */
    CHECK(kvs_create(&cfg, &b) == KVS_OK);
    CHECK(Lockstep(a, b, 0, 120) == 0);
    kvs_destroy(b);
    b = NULL;
    /* The caller's thread pool: the same answers as kvsketch's own; a 0.2
     * caller's bytes past its struct_size are never read as a pool. */
    {
      kvs_session* p = NULL;
      kvs_config pc;
      kvs_config_init(&pc);
      pc.layers = 1;
      pc.n_heads = 4;
      pc.n_kv_heads = 2;
      pc.dk = pc.dv = 8;
      pc.budget_tokens_per_head = 6000; /* large: heads go to the pool */
      pc.threads = 2;
      CHECK(kvs_create(&pc, &p) == KVS_OK);
      pc.parallel_for = ReversePool;
      pc.parallel_user = &g_pool_calls;
      CHECK(kvs_create(&pc, &b) == KVS_OK);
      CHECK(Lockstep(p, b, 0, 120) == 0);
      CHECK(g_pool_calls > 0);
      kvs_destroy(b);
      b = NULL;
      pc.threads = 0; /* a pool needs its worker count */
      CHECK(kvs_create(&pc, &b) == KVS_INVALID_ARGUMENT);
      CHECK(strstr(kvs_last_error(NULL), "worker count") != NULL);
      pc.threads = 2;
      pc.parallel_for = WrongPool;
      pc.struct_size = offsetof(kvs_config, parallel_for);
      CHECK(kvs_create(&pc, &b) == KVS_OK);
      kvs_destroy(p);
      p = NULL;
      pc.struct_size = sizeof(kvs_config);
      pc.parallel_for = NULL;
      CHECK(kvs_create(&pc, &p) == KVS_OK);
      CHECK(Lockstep(p, b, 0, 40) == 0);
      CHECK(g_wrong_pool == 0);
      kvs_destroy(b);
      b = NULL;
      kvs_destroy(p);
    }
    /* Sizes no layout has: refused, naming struct_size. */
    cfg.struct_size = 8;
    CHECK(kvs_create(&cfg, &b) == KVS_INVALID_ARGUMENT);
    CHECK(strstr(kvs_last_error(NULL), "struct_size") != NULL);
    cfg.struct_size = sizeof(kvs_config) + 8;
    CHECK(kvs_create(&cfg, &b) == KVS_INVALID_ARGUMENT);
    cfg.struct_size = 0; /* memset instead of kvs_config_init */
    CHECK(kvs_create(&cfg, &b) == KVS_INVALID_ARGUMENT);
    CHECK(b == NULL);
    /* The 0.2 knobs are read and validated. */
    kvs_config_init(&cfg);
    cfg.layers = 1;
    cfg.n_heads = 4;
    cfg.n_kv_heads = 2;
    cfg.dk = cfg.dv = 8;
    cfg.budget_tokens_per_head = 48;
    cfg.threads = 1;
    cfg.probes = 4;
    cfg.window_share = 0.5f;
    CHECK(kvs_create(&cfg, &b) == KVS_OK);
    for (t = 0; t < 120; ++t) {
      TestToken(t, k, v, q);
      CHECK(kvs_append(b, 0, k, v, 1) == KVS_OK);
      CHECK(kvs_attend(b, 0, q, out2) == KVS_OK);
    }
    CHECK(kvs_stats_get(a, &st) == KVS_OK);
    {
      const size_t held_default = st.retained;
      CHECK(kvs_stats_get(b, &st) == KVS_OK);
      /* fewer probes: more of the budget for tokens */
      CHECK(st.retained > held_default);
    }
    kvs_destroy(b);
    b = NULL;
    cfg.probes = 0;
    cfg.window_share = 1.5f;
    CHECK(kvs_create(&cfg, &b) == KVS_INVALID_ARGUMENT);
    CHECK(strstr(kvs_last_error(NULL), "window_share") != NULL);
    cfg.window_share = -1.0f;
    cfg.method = KVS_METHOD_BALANCE;
    cfg.block = 1;
    CHECK(kvs_create(&cfg, &b) == KVS_INVALID_ARGUMENT);
    CHECK(strstr(kvs_last_error(NULL), "block") != NULL);
    cfg.block = 32;
    cfg.degree = 3;
    CHECK(kvs_create(&cfg, &b) == KVS_INVALID_ARGUMENT);
    CHECK(strstr(kvs_last_error(NULL), "degree") != NULL);
    cfg.degree = 1;
    cfg.method = (kvs_method)99;
    CHECK(kvs_create(&cfg, &b) == KVS_INVALID_ARGUMENT);
    CHECK(strstr(kvs_last_error(NULL), "not a kvs_method") != NULL);
    cfg.method = KVS_METHOD_BALANCE;
    CHECK(kvs_create(&cfg, &b) == KVS_OK);
    kvs_destroy(b);
    b = NULL;
    /* kvs_stats: struct_size must be set. */
    st.struct_size = 0;
    CHECK(kvs_stats_get(a, &st) == KVS_INVALID_ARGUMENT);
    CHECK(strstr(kvs_last_error(a), "struct_size") != NULL);
    st.struct_size = sizeof(kvs_stats);
    /* The log callback sees every failure with its status and message. */
    kvs_set_log(CountLog, &user_calls);
    CHECK(kvs_attend(a, 7, q, out) == KVS_INVALID_ARGUMENT);
    CHECK(g_log_calls == 1);
    CHECK(user_calls == 1);
    CHECK(g_log_status == KVS_INVALID_ARGUMENT);
    CHECK(strcmp(g_log_message, kvs_last_error(a)) == 0);
    CHECK(kvs_attend(a, 0, q, out) == KVS_OK);
    CHECK(g_log_calls == 1);
    cfg.struct_size = 3;
    CHECK(kvs_create(&cfg, &b) == KVS_INVALID_ARGUMENT);
    CHECK(g_log_calls == 2);
    kvs_set_log(NULL, NULL);
    CHECK(kvs_attend(a, 7, q, out) == KVS_INVALID_ARGUMENT);
    CHECK(g_log_calls == 2);
    kvs_destroy(a);
  }
  /* Sizes that would overflow are clear errors, not crashes. */
  kvs_config_init(&cfg);
  cfg.layers = (size_t)1 << (sizeof(size_t) * 8 - 1);
  cfg.n_heads = 4;
  cfg.n_kv_heads = 2;
  cfg.dk = cfg.dv = 8;
  cfg.budget_tokens_per_head = 24;
  CHECK(kvs_create(&cfg, &s) == KVS_INVALID_ARGUMENT);
  CHECK(s == NULL);
  {
    const float w = 1.0f;
    cfg.head_weights = &w;
    CHECK(kvs_create(&cfg, &s) == KVS_INVALID_ARGUMENT);
    cfg.head_weights = NULL;
  }
  cfg.layers = 1;
  /* Creation errors. */
  cfg.n_heads = 3;
  CHECK(kvs_create(&cfg, &s) == KVS_INVALID_ARGUMENT);
  CHECK(s == NULL);
  CHECK(kvs_last_error(NULL)[0] != '\0');
  printf("capi_test: kvsketch %s OK\n", kvs_version());
  return 0;
}
