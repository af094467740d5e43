/* The client connection: one explicit state machine from the first byte of a
 * request head to the end of the last response or tunnel. */
#ifndef SWITCHYARD_CONN_H
#define SWITCHYARD_CONN_H

#include "switchyard/worker.h"

/* Called by the listener for every accepted connection. */
void sy_conn_accept(sy_worker *w, sy_listener *l);
/* Closes every connection of the worker at once (shutdown). */
void sy_conn_close_all(sy_worker *w);
/* Graceful stop: idle connections close now, requests in flight end after
 * their response, tunnels go on until they end or the drain timeout. */
void sy_conn_drain_all(sy_worker *w);
/* The worker's handles for writes that completed at once (see flow_write). */
void sy_conn_on_written_check(uv_check_t *h);
void sy_conn_on_written_idle(uv_idle_t *h);
/* The worker's tunnel hub reports ended tunnels here (log line, metrics, counts). */
void sy_conn_tunnel_done(sy_tunnel *t, const sy_tunnel_stats *st, void *arg);

#endif
