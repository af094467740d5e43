#include "switchyard/upstream.h"

#include <sched.h>
#include <stdlib.h>
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

/* splitmix64's finaliser: FNV-1a's low bits are weak, and the table index
 * and the Maglev permutations need all 64 bits mixed. */
static uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

static unsigned weight(const sy_server_cfg *s) {
  return s->weight ? s->weight : 1;
}

/* ---- server sets ------------------------------------------------------------ */

/* Order of the Maglev fill: by address text, then weight, so two proxies
 * given the same servers in any order (DNS shuffles its answers) build the
 * same table. */
static int before(const sy_server_cfg *x, const sy_server_cfg *y) {
  int c = strcmp(x->addr.text, y->addr.text);
  return c < 0 || (c == 0 && x->weight < y->weight);
}

/* Maglev (Eisenbud et al., NSDI 2016): every server walks its own
 * permutation of the slots, derived from its address text, and claims the
 * next free slot on each of its turns; a server of weight w takes w turns per
 * round. Runs on the main thread when a set is built, never per request. */
static int build_maglev(sy_server_set *set) {
  size_t n = set->nservers;
  const uint32_t m = SY_MAGLEV_SIZE;
  uint8_t order[SY_MAX_SERVERS];
  uint32_t offset[SY_MAX_SERVERS], skip[SY_MAX_SERVERS], next[SY_MAX_SERVERS];
  set->table = malloc(m);
  if (!set->table) return -1;
  memset(set->table, 0xff, m);
  for (size_t i = 0; i < n; i++) {
    order[i] = (uint8_t)i;
    const char *t = set->servers[i].addr.text;
    uint64_t h = sy_hash_bytes(t, strlen(t));
    offset[i] = (uint32_t)(mix64(h) % m);
    skip[i] = (uint32_t)(mix64(h ^ 0x5851f42d4c957f2dull) % (m - 1)) + 1;
    next[i] = 0;
  }
  for (size_t i = 1; i < n; i++) /* insertion sort: n <= 64, built rarely */
    for (size_t j = i; j > 0 && before(&set->servers[order[j]], &set->servers[order[j - 1]]); j--) {
      uint8_t t = order[j];
      order[j] = order[j - 1];
      order[j - 1] = t;
    }
  uint32_t filled = 0;
  while (filled < m) {
    for (size_t k = 0; k < n && filled < m; k++) {
      uint8_t i = order[k];
      for (unsigned turn = weight(&set->servers[i]); turn && filled < m; turn--) {
        uint32_t slot;
        do
          slot = (uint32_t)((offset[i] + (uint64_t)next[i]++ * skip[i]) % m);
        while (set->table[slot] != 0xff);
        set->table[slot] = i;
        filled++;
      }
    }
  }
  return 0;
}

sy_server_set *sy_server_set_new(sy_server_cfg *servers, size_t n, int owned, int hashed) {
  if (n > SY_MAX_SERVERS) return NULL;
  sy_server_set *set = calloc(1, sizeof(*set));
  if (!set) return NULL;
  set->refs = 1;
  set->servers = servers;
  set->nservers = n;
  set->owned = owned;
  static uint32_t serials;
  uint32_t serial = __atomic_add_fetch(&serials, 1, __ATOMIC_RELAXED);
  for (size_t i = 0; i < n; i++) {
    servers[i].set_serial = serial;
    servers[i].set_index = (uint32_t)i;
  }
  if (hashed && n && build_maglev(set) < 0) {
    set->owned = 0; /* the caller keeps what it passed on failure */
    sy_server_set_unref(set);
    return NULL;
  }
  return set;
}

void sy_server_set_ref(sy_server_set *set) {
  if (!set->pinned) __atomic_add_fetch(&set->refs, 1, __ATOMIC_RELAXED);
}

void sy_server_set_unref(sy_server_set *set) {
  if (!set || set->pinned || __atomic_sub_fetch(&set->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
  if (set->owned) {
    for (size_t i = 0; i < set->nservers; i++) {
      free(set->servers[i].addr.text);
      free(set->servers[i].addr.host);
      if (set->servers[i].rt) sy_server_rt_unref(set->servers[i].rt);
    }
    free(set->servers);
  }
  free(set->table);
  free(set);
}

/* `set_readers` counts acquires between their load of the pointer and their
 * increment of the set's count. The publisher swaps the pointer first: once
 * it then sees no reader, no acquire can still hold the old pointer without
 * its reference, and the old set can go. */
sy_server_set *sy_upstream_acquire(sy_upstream_cfg *up) {
  if (!up->dynamic) return up->set; /* pinned: lives as long as the snapshot */
  __atomic_add_fetch(&up->set_readers, 1, __ATOMIC_SEQ_CST);
  sy_server_set *set = __atomic_load_n(&up->set, __ATOMIC_SEQ_CST);
  if (set) __atomic_add_fetch(&set->refs, 1, __ATOMIC_RELAXED);
  __atomic_sub_fetch(&up->set_readers, 1, __ATOMIC_RELEASE);
  return set;
}

void sy_upstream_publish(sy_upstream_cfg *up, sy_server_set *set) {
  sy_server_set *old = __atomic_exchange_n(&up->set, set, __ATOMIC_SEQ_CST);
  /* A reader is inside for a handful of instructions: this waits at most a
   * preempted worker's time slice, and only when a set changes. */
  while (__atomic_load_n(&up->set_readers, __ATOMIC_SEQ_CST))
    sched_yield();
  sy_server_set_unref(old);
}

int sy_upstream_init_set(sy_upstream_cfg *up) {
  int hashed = up->balance == SY_BALANCE_HASH;
  size_t nstatic = 0;
  for (size_t i = 0; i < up->nservers; i++)
    nstatic += !up->servers[i].dns;
  sy_server_set *set;
  if (nstatic == up->nservers) {
    set = sy_server_set_new(up->servers, up->nservers, 0, hashed);
    if (set) set->pinned = 1;
  } else {
    /* The IP-address servers of an upstream that also names hosts: a copy,
     * which the resolver's sets extend with the names' addresses. */
    sy_server_cfg *s = nstatic ? calloc(nstatic, sizeof(*s)) : NULL;
    if (nstatic && !s) return -1;
    size_t k = 0;
    for (size_t i = 0; i < up->nservers; i++) {
      if (up->servers[i].dns) continue;
      s[k] = up->servers[i];
      s[k].addr.text = strdup(up->servers[i].addr.text);
      s[k].addr.host = strdup(up->servers[i].addr.host);
      sy_server_rt_ref(s[k].rt);
      k++;
      if (!s[k - 1].addr.text || !s[k - 1].addr.host) break;
    }
    set = sy_server_set_new(s, k, 1, hashed);
    if (set && k < nstatic) { /* a strdup failed */
      sy_server_set_unref(set);
      return -1;
    }
    if (!set) {
      for (size_t i = 0; i < k; i++) {
        free(s[i].addr.text);
        free(s[i].addr.host);
        sy_server_rt_unref(s[i].rt);
      }
      free(s);
    }
  }
  if (!set) return -1;
  up->set = set;
  return 0;
}

void sy_upstream_free_set(sy_upstream_cfg *up) {
  if (up->set) up->set->pinned = 0;
  sy_server_set_unref(up->set);
  up->set = NULL;
}

/* ---- picking ---------------------------------------------------------------- */

static int usable(const sy_server_cfg *s, uint64_t now_ms) {
  if (!__atomic_load_n(&s->rt->down, __ATOMIC_RELAXED)) return 1;
  /* A server no probe watches (any more: a reload may have removed the
   * checks that ejected it) gets a new chance once its rest is over. */
  if (__atomic_load_n(&s->rt->probed, __ATOMIC_RELAXED)) return 0;
  return now_ms >= __atomic_load_n(&s->rt->down_until_ms, __ATOMIC_RELAXED);
}

static int open_to(const sy_server_set *set, size_t i, uint64_t tried, uint64_t now_ms) {
  return !(tried & (1ull << i)) && usable(&set->servers[i], now_ms);
}

/* Weighted slot -> server: server i owns weight_i consecutive slots. */
static size_t slot_server(const sy_server_set *set, uint64_t slot) {
  uint64_t total = 0;
  for (size_t i = 0; i < set->nservers; i++)
    total += weight(&set->servers[i]);
  slot %= total ? total : 1;
  for (size_t i = 0; i < set->nservers; i++) {
    unsigned w = weight(&set->servers[i]);
    if (slot < w) return i;
    slot -= w;
  }
  return 0;
}

static int pick_least_conn(sy_upstream_cfg *up, const sy_server_set *set, uint64_t tried,
                           uint64_t now_ms) {
  /* Fewest open connections per unit of weight (tunnels count: a WebSocket
   * fleet's load is its open tunnels); ties go round-robin. */
  size_t n = set->nservers;
  unsigned start = __atomic_fetch_add(&up->rr_next, 1, __ATOMIC_RELAXED);
  int best = -1;
  uint64_t best_score = UINT64_MAX;
  for (size_t k = 0; k < n; k++) {
    size_t i = (start + k) % n;
    const sy_server_cfg *s = &set->servers[i];
    if (!open_to(set, i, tried, now_ms)) continue;
    int a = __atomic_load_n(&s->rt->active, __ATOMIC_RELAXED);
    uint64_t score = ((uint64_t)(a < 0 ? 0 : a) << 16) / weight(s);
    if (score < best_score) {
      best_score = score;
      best = (int)i;
    }
  }
  return best;
}

/* The key's server in the Maglev table; when that one is down or tried, the
 * key is rehashed into the table again, so the keys of a server that is out
 * spread over the others in proportion to their weights, and every other key
 * stays where it was. */
static int pick_hash(const sy_server_set *set, uint64_t tried, uint64_t key_hash, uint64_t now_ms) {
  uint64_t h = mix64(key_hash);
  for (unsigned probe = 0; probe < 4 * SY_MAX_SERVERS; probe++) {
    size_t i = set->table[(probe ? mix64(h + probe) : h) % SY_MAGLEV_SIZE];
    if (open_to(set, i, tried, now_ms)) return (int)i;
  }
  /* Unlucky probes (few servers left of many): the first open one. */
  size_t first = set->table[h % SY_MAGLEV_SIZE];
  for (size_t k = 0; k < set->nservers; k++) {
    size_t i = (first + k) % set->nservers;
    if (open_to(set, i, tried, now_ms)) return (int)i;
  }
  return SY_PICK_NONE_LEFT;
}

int sy_upstream_pick_set(sy_upstream_cfg *up, const sy_server_set *set, uint64_t tried,
                         uint64_t key_hash, uint64_t now_ms) {
  size_t n = set ? set->nservers : 0;
  int any_up = 0, candidates = 0;
  for (size_t i = 0; i < n; i++) {
    int u = usable(&set->servers[i], now_ms);
    any_up |= u;
    candidates += u && !(tried & (1ull << i));
  }
  if (!any_up) return SY_PICK_ALL_DOWN;
  if (!candidates) return SY_PICK_NONE_LEFT;

  if (up->balance == SY_BALANCE_LEAST_CONN) return pick_least_conn(up, set, tried, now_ms);
  if (up->balance == SY_BALANCE_HASH && set->table) return pick_hash(set, tried, key_hash, now_ms);
  size_t first = slot_server(set, __atomic_fetch_add(&up->rr_next, 1, __ATOMIC_RELAXED));
  /* The chosen server, else the next usable one in order. */
  for (size_t k = 0; k < n; k++) {
    size_t i = (first + k) % n;
    if (open_to(set, i, tried, now_ms)) return (int)i;
  }
  return SY_PICK_NONE_LEFT;
}

int sy_upstream_pick(sy_upstream_cfg *up, uint64_t tried, uint64_t key_hash, uint64_t now_ms) {
  /* A static upstream's set never changes and indexes up->servers itself. */
  if (up->dynamic || !up->set) return SY_PICK_ALL_DOWN;
  return sy_upstream_pick_set(up, up->set, tried, key_hash, now_ms);
}

int sy_server_eject(sy_server_rt *rt) {
  if (__atomic_exchange_n(&rt->down, 1, __ATOMIC_RELAXED)) return 0;
  __atomic_add_fetch(&rt->ejections, 1, __ATOMIC_RELAXED);
  return 1;
}

void sy_upstream_report(const sy_upstream_cfg *up, const sy_server_cfg *s, int ok,
                        uint64_t now_ms) {
  if (ok) {
    __atomic_store_n(&s->rt->fails, 0, __ATOMIC_RELAXED);
    /* Back from a passive rest: up again (active checks decide on their own). */
    if (!__atomic_load_n(&s->rt->probed, __ATOMIC_RELAXED) &&
        __atomic_exchange_n(&s->rt->down, 0, __ATOMIC_RELAXED))
      sy_log_info("upstream %s: server %s is back", up->name, s->addr.text);
    return;
  }
  unsigned limit = up->health.unhealthy ? up->health.unhealthy : 3;
  int f = __atomic_add_fetch(&s->rt->fails, 1, __ATOMIC_RELAXED);
  if ((unsigned)f >= limit) {
    /* Read by usable() only while no probe watches the server. */
    __atomic_store_n(&s->rt->down_until_ms, now_ms + SY_PASSIVE_REST_MS, __ATOMIC_RELAXED);
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

static void release_sets(sy_config *cfg) {
  for (size_t i = 0; i < cfg->nupstreams; i++)
    sy_upstream_free_set(&cfg->upstreams[i]);
}

int sy_upstream_prepare(sy_config *cfg) {
  for (size_t i = 0; i < cfg->nupstreams; i++)
    if (sy_upstream_init_set(&cfg->upstreams[i]) < 0) {
      for (size_t k = 0; k < i; k++)
        sy_upstream_free_set(&cfg->upstreams[k]);
      return -1;
    }
  cfg->release = release_sets;
  return 0;
}
