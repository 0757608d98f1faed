/* Uses only kvsketch_c.h, compiled as C. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "kvsketch/kvsketch_c.h"

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      return 1;                                                                \
    }                                                                          \
  } while (0)

int main(void) {
  kvs_config cfg;
  kvs_session* s = NULL;
  kvs_stats st;
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
  /* Creation errors. */
  cfg.n_heads = 3;
  CHECK(kvs_create(&cfg, &s) == KVS_INVALID_ARGUMENT);
  CHECK(s == NULL);
  CHECK(kvs_last_error(NULL)[0] != '\0');
  printf("capi_test: kvsketch %s OK\n", kvs_version());
  return 0;
}
