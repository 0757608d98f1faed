/* Minimal C embedding: one layer, GQA 2:1, 64-token budget per KV head. */
#include <kvsketch/kvsketch_c.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

int main(void) {
  kvs_config cfg;
  kvs_session* s = NULL;
  float k[2 * 8], v[2 * 8], q[4 * 8], out[4 * 8];
  int t, i;
  kvs_config_init(&cfg);
  cfg.layers = 1;
  cfg.n_heads = 4;
  cfg.n_kv_heads = 2;
  cfg.dk = cfg.dv = 8;
  cfg.budget_tokens_per_head = 64;
  cfg.rope_theta = 10000.0f; /* the model's RoPE: risk (the default) uses it */
  if (kvs_create(&cfg, &s) != KVS_OK) {
    fprintf(stderr, "kvs_create: %s\n", kvs_last_error(NULL));
    return 1;
  }
  for (t = 0; t < 1000; ++t) {
    for (i = 0; i < 16; ++i) {
      k[i] = (float)sin(0.01 * t + i);
      v[i] = (float)cos(0.02 * t + i);
    }
    if (kvs_append(s, 0, k, v, 1) != KVS_OK) return 1;
  }
  for (i = 0; i < 32; ++i) q[i] = 0.1f * (float)i;
  if (kvs_attend(s, 0, q, out) != KVS_OK) {
    fprintf(stderr, "kvs_attend: %s\n", kvs_last_error(s));
    return 1;
  }
  /* The state to caller memory and back into a fresh session. */
  {
    kvs_session* copy = NULL;
    size_t size = 0, written = 0;
    unsigned char* buf;
    if (kvs_state_size(s, &size) != KVS_OK) return 1;
    buf = (unsigned char*)malloc(size);
    if (!buf || kvs_state_get(s, buf, size, &written) != KVS_OK) return 1;
    if (kvs_create(&cfg, &copy) != KVS_OK ||
        kvs_state_set(copy, buf, written) != KVS_OK) {
      fprintf(stderr, "state: %s\n", kvs_last_error(copy));
      return 1;
    }
    free(buf);
    kvs_destroy(copy);
  }
  printf("C consumer: kvsketch %s (header %d.%d), out[0] = %.4f\n",
         kvs_version(), KVSKETCH_VERSION_MAJOR, KVSKETCH_VERSION_MINOR, out[0]);
  kvs_destroy(s);
  return 0;
}
