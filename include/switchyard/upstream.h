/* Upstream server choice: balancing (round_robin, least_conn, hash), weights,
 * health (active checks flip `down`; passive ejection after consecutive
 * connect failures). State lives in the config snapshot as atomics, shared
 * by every worker. */
#ifndef SWITCHYARD_UPSTREAM_H
#define SWITCHYARD_UPSTREAM_H

#include <stdint.h>

#include "switchyard/config.h"
#include "switchyard/http.h"

/* How long a passively ejected server rests before it is tried again, when
 * no active health check watches it. */
#define SY_PASSIVE_REST_MS 10000

enum { SY_PICK_NONE_LEFT = -1, SY_PICK_ALL_DOWN = -2 };

/* Picks a server index for this request: `tried` marks servers already tried
 * (bit i = server i); `key_hash` feeds hash balancing. Returns the index,
 * SY_PICK_NONE_LEFT when every usable server was tried, or SY_PICK_ALL_DOWN
 * when no server is up (503). `now_ms` lets ejected servers come back. */
int sy_upstream_pick(sy_upstream_cfg *up, uint64_t tried, uint64_t key_hash, uint64_t now_ms);

/* Passive health: a connect to the server failed (or succeeded). */
void sy_upstream_report(const sy_upstream_cfg *up, const sy_server_cfg *s, int ok,
                        uint64_t now_ms);

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
