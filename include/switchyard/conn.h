/* The client connection: one explicit state machine from the first byte of a
 * request head to the end of the last response or tunnel (src/conn/).
 *
 * A connection never sees the worker that runs it: the worker lends it an
 * environment (its loop, the current config snapshot, metrics, pools, the
 * tunnel hub) and two callbacks, and connections report back only through
 * those. */
#ifndef SWITCHYARD_CONN_H
#define SWITCHYARD_CONN_H

#include <stdint.h>
#include <uv.h>

#include "switchyard/config.h"
#include "switchyard/evset.h"
#include "switchyard/flow.h"
#include "switchyard/metrics.h"
#include "switchyard/tunnel.h"
#include "switchyard/upool.h"

typedef struct sy_conn sy_conn;
typedef struct sy_conn_env sy_conn_env;

struct sy_conn_env {
  /* Written by the worker, read by its connections. */
  uv_loop_t *loop;
  sy_evset *ev;   /* the worker's epoll set: every socket of a connection is in it */
  sy_config *cfg; /* the snapshot new connections take a reference of */
  sy_metrics *metrics;
  sy_upool *upool; /* idle upstream keep-alive connections; NULL once stopping */
  sy_tunnel_hub *tunnels;
  int stopping; /* nonzero: finish what is in flight, keep nothing alive */
  /* A connection ended (counts drop; a draining worker may finish). */
  void (*conn_gone)(sy_conn_env *env);
  /* The last connection struct was freed (tunnels may remain): a burst is
   * over, memory can go back to the system soon. */
  void (*conns_idle)(sy_conn_env *env);

  /* Owned by the connection code; the worker only tests `conns` for NULL. */
  sy_conn *conns;     /* intrusive list, for reload and shutdown */
  sy_flow_pool flows; /* buffer caches */
  sy_buf labels;      /* metric labels being built: capacity kept */
  struct {            /* series counted per connection (sy_metrics_add_cell) */
    int64_t *accepted, *open, *to_upstream, *to_client, *spliced, *copied;
  } cell;
};

/* Sets up the parts the connection code owns (after loop is set). */
void sy_conn_env_init(sy_conn_env *env);
/* Gives cached memory back (the worker has no connection left). */
void sy_conn_env_trim(sy_conn_env *env);

/* A connection accepted on a listener of `lcfg`: fd (non-blocking) and the
 * peer's address from accept4. Takes the descriptor. */
void sy_conn_accept(sy_conn_env *env, int fd, const struct sockaddr_storage *peer,
                    const sy_listener_cfg *lcfg);
/* Closes every connection at once (shutdown). */
void sy_conn_close_all(sy_conn_env *env);
/* Graceful stop: idle connections close now, requests in flight end after
 * their response, tunnels go on until they end or the drain timeout. */
void sy_conn_drain_all(sy_conn_env *env);
/* The tunnel hub reports ended tunnels here (log line, metrics, counts)... */
void sy_conn_tunnel_done(sy_tunnel *t, const sy_tunnel_stats *st, void *arg);
/* ...and, about once a second, the bytes open tunnels moved (live metrics). */
void sy_conn_tunnel_progress(sy_tunnel *t, const sy_tunnel_bytes *d, void *arg);

#endif
