#include "switchyard/upstream.h"

#include <string.h>

#include "switchyard/http.h"
#include "switchyard/log.h"

uint64_t sy_hash_bytes(const void *p, size_t n) {
  const unsigned char *b = p;
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++)
    h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

static unsigned weight(const sy_server_cfg *s) {
  return s->weight ? s->weight : 1;
}

static int usable(sy_server_cfg *s, uint64_t now_ms) {
  if (!__atomic_load_n(&s->rt->down, __ATOMIC_RELAXED)) return 1;
  /* A passively ejected server (no active check to revive it) gets a new
   * chance once its rest is over. */
  uint64_t until = __atomic_load_n(&s->rt->down_until_ms, __ATOMIC_RELAXED);
  return until && now_ms >= until;
}

/* Weighted slot -> server: server i owns weight_i consecutive slots. */
static int slot_server(const sy_upstream_cfg *up, uint64_t slot) {
  unsigned total = 0;
  for (size_t i = 0; i < up->nservers; i++)
    total += weight(&up->servers[i]);
  slot %= total ? total : 1;
  for (size_t i = 0; i < up->nservers; i++) {
    unsigned w = weight(&up->servers[i]);
    if (slot < w) return (int)i;
    slot -= w;
  }
  return 0;
}

int sy_upstream_pick(sy_upstream_cfg *up, uint64_t tried, uint64_t key_hash, uint64_t now_ms) {
  size_t n = up->nservers < 64 ? up->nservers : 64;
  int any_up = 0, candidates = 0;
  for (size_t i = 0; i < n; i++) {
    int u = usable(&up->servers[i], now_ms);
    any_up |= u;
    candidates += u && !(tried & (1ull << i));
  }
  if (!any_up) return SY_PICK_ALL_DOWN;
  if (!candidates) return SY_PICK_NONE_LEFT;

  if (up->balance == SY_BALANCE_LEAST_CONN) {
    /* Fewest open connections per unit of weight (tunnels count: a WebSocket
     * fleet's load is its open tunnels); ties go round-robin. */
    unsigned start = __atomic_fetch_add(&up->rr_next, 1, __ATOMIC_RELAXED);
    int best = -1;
    uint64_t best_score = UINT64_MAX;
    for (size_t k = 0; k < n; k++) {
      size_t i = (start + k) % n;
      sy_server_cfg *s = &up->servers[i];
      if ((tried & (1ull << i)) || !usable(s, now_ms)) continue;
      int a = __atomic_load_n(&s->rt->active, __ATOMIC_RELAXED);
      uint64_t score = ((uint64_t)(a < 0 ? 0 : a) << 16) / weight(s);
      if (score < best_score) {
        best_score = score;
        best = (int)i;
      }
    }
    return best;
  }
  uint64_t slot = up->balance == SY_BALANCE_HASH
                      ? key_hash
                      : __atomic_fetch_add(&up->rr_next, 1, __ATOMIC_RELAXED);
  int first = slot_server(up, slot);
  /* The preferred server, else the next usable one in order: the same key
   * keeps landing on the same server while it is up. */
  for (size_t k = 0; k < n; k++) {
    size_t i = ((size_t)first + k) % n;
    if (!(tried & (1ull << i)) && usable(&up->servers[i], now_ms)) return (int)i;
  }
  return SY_PICK_NONE_LEFT;
}

int sy_server_eject(sy_server_rt *rt) {
  if (__atomic_exchange_n(&rt->down, 1, __ATOMIC_RELAXED)) return 0;
  __atomic_add_fetch(&rt->ejections, 1, __ATOMIC_RELAXED);
  return 1;
}

/* Health probes are cleartext and skipped for TLS upstreams (see health.c):
 * those keep passive ejection's timed rest, or an ejected server would wait
 * for a check that never runs. */
static int active_checks(const sy_upstream_cfg *up) {
  return up->health.enabled && !up->tls.enabled;
}

void sy_upstream_report(const sy_upstream_cfg *up, const sy_server_cfg *s, int ok,
                        uint64_t now_ms) {
  if (ok) {
    __atomic_store_n(&s->rt->fails, 0, __ATOMIC_RELAXED);
    /* Back from a passive rest: up again (active checks decide on their own). */
    if (!active_checks(up) && __atomic_exchange_n(&s->rt->down, 0, __ATOMIC_RELAXED))
      sy_log_info("upstream %s: server %s is back", up->name, s->addr.text);
    return;
  }
  unsigned limit = up->health.unhealthy ? up->health.unhealthy : 3;
  int f = __atomic_add_fetch(&s->rt->fails, 1, __ATOMIC_RELAXED);
  if ((unsigned)f >= limit) {
    __atomic_store_n(&s->rt->down_until_ms, active_checks(up) ? 0 : now_ms + SY_PASSIVE_REST_MS,
                     __ATOMIC_RELAXED);
    if (sy_server_eject(s->rt))
      sy_log_error("upstream %s: server %s ejected after %d failed connects", up->name,
                   s->addr.text, f);
  }
}

void sy_upstream_active_add(const sy_server_cfg *s, int delta) {
  __atomic_add_fetch(&s->rt->active, delta, __ATOMIC_RELAXED);
}

uint64_t sy_upstream_key(const sy_upstream_cfg *up, const sy_head *h, const char *base,
                         const char *client_ip) {
  if (up->balance != SY_BALANCE_HASH || !up->hash_key) return 0;
  const char *k = up->hash_key;
  if (strncmp(k, "header:", 7) == 0) {
    const sy_field *f = sy_head_find(h, base, k + 7);
    return f ? sy_hash_bytes(base + f->value.off, f->value.len) : 0;
  }
  if (strncmp(k, "cookie:", 7) == 0) {
    for (size_t i = 0; i < h->nfields; i++) {
      if (!sy_str_ieq(sy_span_str(base, h->fields[i].name), "cookie")) continue;
      sy_str v;
      if (sy_http_cookie(sy_span_str(base, h->fields[i].value), k + 7, &v))
        return sy_hash_bytes(v.p, v.len);
    }
    return 0;
  }
  return sy_hash_bytes(client_ip, strlen(client_ip)); /* hash(client) */
}
