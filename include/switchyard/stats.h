/* What the proxy counts for requests, upstream servers and tunnels, and under
 * which labels: the connection code says what happened, this module turns it
 * into series of the worker's metrics table.
 *
 * Every label value comes from the configuration (route, upstream and server
 * names, allowed upgrade tokens as written there) or from a fixed set, never
 * from the client, so no request can add series. Series are found by number
 * (config serial, family, route/upstream/server index, class) in the table's
 * cache: after the first request of a kind, no label text is built or hashed.
 *
 * All functions run on the worker's thread. `lb` is a scratch buffer for
 * label text (the worker's, capacity kept). `cfg` is the snapshot `route` and
 * `server` belong to; route NULL means no route matched. */
#ifndef SWITCHYARD_STATS_H
#define SWITCHYARD_STATS_H

#include <stdint.h>

#include "switchyard/config.h"
#include "switchyard/http.h"
#include "switchyard/metrics.h"
#include "switchyard/tunnel.h"

/* A route as logs and metrics name it: its name, or "#<index>" written into
 * idx; "" for no route. */
const char *sy_stats_route_name(const sy_route_cfg *route, char idx[32]);

/* The `protocol` label for an upgrade token on a route: the allow_upgrades
 * entry that lets it through, as written in the file; under "*", the token's
 * well-known name (websocket, h2c, TLS/1.x, connect-udp, connect-ip); else
 * "other" (not allowed, unknown, no route). */
const char *sy_stats_protocol(const sy_route_cfg *route, const char *token, size_t len);

/* A response completed (the proxy's own included): requests_total{route,class}
 * and request_duration_seconds{route}, or upgrade_duration_seconds{route} for
 * a 101. `server`, when the status came from that server (a 101 included):
 * upstream_requests_total{upstream,server,class} too. ns: from the request's
 * first byte. */
void sy_stats_response(sy_metrics *m, sy_buf *lb, const sy_config *cfg, const sy_route_cfg *route,
                       const sy_server_cfg *server, int status, uint64_t ns);

/* An upgrade request answered: upgrades_total{protocol,outcome}, protocol per
 * sy_stats_protocol (token: the one switched to, else the first offered). */
void sy_stats_upgrade(sy_metrics *m, sy_buf *lb, const sy_config *cfg, const sy_route_cfg *route,
                      const char *token, size_t len, const char *outcome);
/* A tunnel opened (delta 1) or closed (-1): tunnels_open{route,protocol}, and
 * on open tunnels_total; protocol per sy_stats_protocol. */
void sy_stats_tunnel_count(sy_metrics *m, sy_buf *lb, const sy_config *cfg,
                           const sy_route_cfg *route, const char *proto, int delta);

/* A connect to a server of the route's upstream succeeded after ns
 * (upstream_connect_seconds{upstream}); the first response byte came ns after
 * the request went out (upstream_first_byte_seconds{upstream}). */
void sy_stats_connect(sy_metrics *m, sy_buf *lb, const sy_config *cfg, const sy_route_cfg *route,
                      uint64_t ns);
void sy_stats_first_byte(sy_metrics *m, sy_buf *lb, const sy_config *cfg, const sy_route_cfg *route,
                         uint64_t ns);

/* Per-server events: a failed connect
 * (upstream_connect_failures_total{upstream,server}); a request that failed
 * on this server and goes to another (or a fresh connection):
 * upstream_retries_total{upstream,server}. */
enum sy_stats_server_event { SY_STATS_CONNECT_FAILURE, SY_STATS_RETRY };
void sy_stats_server(sy_metrics *m, sy_buf *lb, const sy_config *cfg, const sy_route_cfg *route,
                     const sy_server_cfg *server, enum sy_stats_server_event ev);

/* Tunnel payload moved (a progress report, or the remainder at the end):
 * tunnel_bytes_total{route,direction}, tunnel_spliced/copied_bytes_total. */
void sy_stats_tunnel_bytes(sy_metrics *m, sy_buf *lb, const sy_config *cfg,
                           const sy_route_cfg *route, const sy_tunnel_bytes *d);

/* A tunnel ended after ns: tunnel_duration_seconds{route}. */
void sy_stats_tunnel_end(sy_metrics *m, sy_buf *lb, const sy_config *cfg, const sy_route_cfg *route,
                         uint64_t ns);

#endif
