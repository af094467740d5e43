/* Upstream server choice: balancing (round_robin, least_conn, consistent
 * hash), weights, health (active checks flip `down`; passive ejection after
 * consecutive connect failures). State lives in the config snapshot as
 * atomics, shared by every worker.
 *
 * The servers of an upstream are a server set: immutable once built,
 * reference-counted, replaced as a whole when DNS answers change. A request
 * acquires the current set once and keeps it while anything points at one of
 * its servers (its upstream connection, a tunnel), so a server that leaves
 * the set takes no new connection while its open ones carry on. */
#ifndef SWITCHYARD_UPSTREAM_H
#define SWITCHYARD_UPSTREAM_H

#include <stdint.h>

#include "switchyard/config.h"
#include "switchyard/http.h"

/* How long a passively ejected server rests before it is tried again, when
 * no active health check watches it. */
#define SY_PASSIVE_REST_MS 10000

/* The balancer tracks tried servers in a 64-bit set. */
#define SY_MAX_SERVERS 64

/* Maglev lookup table size: a prime far above SY_MAX_SERVERS, so adding or
 * removing one of N servers moves close to 1/N of the keys. */
#define SY_MAGLEV_SIZE 65537u

typedef struct sy_server_set {
  int refs;
  size_t nservers;
  sy_server_cfg *servers;
  int owned;      /* servers and their addresses belong to the set */
  int pinned;     /* a static upstream's: never replaced, freed with the snapshot,
                     so references are not counted (no shared write per request) */
  uint8_t *table; /* hash balancing: slot -> server index; NULL otherwise */
} sy_server_set;

enum { SY_PICK_NONE_LEFT = -1, SY_PICK_ALL_DOWN = -2 };

/* A set over `servers` (at most SY_MAX_SERVERS; NULL when n is 0 is fine),
 * with a Maglev table when `hashed`. The table depends only on each server's
 * addr.text and weight, never on their order. `owned`: the set frees the
 * array, the address strings and drops each server's rt reference. Returns
 * the set with one reference, NULL when out of memory. */
sy_server_set *sy_server_set_new(sy_server_cfg *servers, size_t n, int owned, int hashed);
void sy_server_set_ref(sy_server_set *set);
void sy_server_set_unref(sy_server_set *set);

/* The upstream's current set, with a reference for the caller (never NULL
 * after load; an upstream whose names resolve to nothing has an empty set).
 * Lock-free and allocation-free: any worker, any time. */
sy_server_set *sy_upstream_acquire(sy_upstream_cfg *up);
/* Main thread: makes `set` (the caller's reference) the current one and
 * drops the previous set's reference once no acquire can still be reading it. */
void sy_upstream_publish(sy_upstream_cfg *up, sy_server_set *set);
/* Builds the set of a freshly loaded upstream: its IP-address servers (all
 * of them, shared with up->servers, when it has no DNS name). 0 or -1. */
int sy_upstream_init_set(sy_upstream_cfg *up);
/* Every upstream's set of a freshly loaded snapshot (after
 * sy_config_adopt_state on a reload, so carried-over server state is in
 * them), released with the snapshot. 0, or -1 when out of memory. */
int sy_upstream_prepare(sy_config *cfg);
/* Drops the upstream's set (config teardown). */
void sy_upstream_free_set(sy_upstream_cfg *up);

/* Picks a server index in `set` for this request: `tried` marks servers
 * already tried (bit i = set->servers[i]); `key_hash` feeds hash balancing.
 * Returns the index, SY_PICK_NONE_LEFT when every usable server was tried,
 * or SY_PICK_ALL_DOWN when no server is up or there is none (503). `now_ms`
 * lets ejected servers come back. */
int sy_upstream_pick_set(sy_upstream_cfg *up, const sy_server_set *set, uint64_t tried,
                         uint64_t key_hash, uint64_t now_ms);

/* The same on up->servers, for callers that index that array: right for an
 * upstream without DNS names (its set is that array); an upstream with names
 * must go through sy_upstream_acquire + sy_upstream_pick_set, and gets
 * SY_PICK_ALL_DOWN here. */
int sy_upstream_pick(sy_upstream_cfg *up, uint64_t tried, uint64_t key_hash, uint64_t now_ms);

/* Passive health: a connect to the server failed (or succeeded). */
void sy_upstream_report(const sy_upstream_cfg *up, const sy_server_cfg *s, int ok, uint64_t now_ms);

/* A connection to (or tunnel through) the server opened (+1) or ended (-1):
 * least_conn's count. */
void sy_upstream_active_add(const sy_server_cfg *s, int delta);

/* The hash balancing input of a request: hash(header:X), hash(cookie:NAME)
 * or hash(client), what keeps a user on one server; 0 for other balancing.
 * A missing header or cookie hashes as nothing (one server). */
uint64_t sy_upstream_key(const sy_upstream_cfg *up, const sy_head *h, const char *base,
                         const char *client_ip);

/* Marks the server down; 1 if it was up (then counted as an ejection, in
 * rt->ejections: switchyard_upstream_ejections_total), 0 if it was down already. */
int sy_server_eject(sy_server_rt *rt);

/* FNV-1a, for hash keys. */
uint64_t sy_hash_bytes(const void *p, size_t n);

#endif
