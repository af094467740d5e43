/* A worker: one thread, one libuv loop, its own SO_REUSEPORT listening sockets,
 * its own pipe pool, tunnel hub, metrics table and connection list. Nothing on the
 * per-request path is shared between workers except the upstream cursors and
 * per-server counters (atomics in the config snapshot). */
#ifndef SWITCHYARD_WORKER_H
#define SWITCHYARD_WORKER_H

#include <pthread.h>
#include <stdint.h>
#include <uv.h>

#include "switchyard/base.h"
#include "switchyard/config.h"
#include "switchyard/metrics.h"
#include "switchyard/pipepool.h"
#include "switchyard/tunnel.h"
#include "switchyard/upool.h"

typedef struct sy_conn sy_conn;
typedef struct sy_worker sy_worker;

typedef struct sy_listener {
  uv_tcp_t tcp;
  sy_worker *w;
  const sy_listener_cfg *cfg; /* in the worker's current snapshot */
  struct sy_listener *next;
  int paused; /* not accepting: max_connections reached */
} sy_listener;

/* Flow buffers kept for reuse per worker (64 KiB each, 8 MiB at most; dropped
 * when the worker has no connection). Enough for 64 requests in flight: with
 * 32, 50 keep-alive clients overflowed it, and freeing the extra buffers made
 * glibc give the top of the heap back and fault it in again (a madvise every
 * ~50 requests). */
#define SY_BUF_CACHE 128
/* TLS: ciphertext read blocks and encrypted-batch buffers kept for reuse. */
#define SY_BLK_CACHE 32
#define SY_CIPHER_CACHE 16

enum sy_stop { SY_RUN = 0, SY_DRAIN, SY_STOP_NOW };

struct sy_worker {
  unsigned id;
  uv_loop_t loop;
  uv_async_t wakeup; /* reload and stop requests from the main thread */
  uv_timer_t drain_timer;
  uv_timer_t trim_timer; /* gives memory freed by a burst back to the system */
  pthread_t thread;
  pthread_mutex_t mu; /* guards `pending` and `stop` */
  sy_config *pending; /* a reloaded snapshot waiting to be taken */
  int stop;           /* enum sy_stop, requested */
  sy_config *cfg;     /* snapshot new connections take a reference of */
  sy_listener *listeners;
  sy_pipe_pool *pipes;
  sy_metrics *metrics;
  sy_upool *upool;                         /* idle upstream keep-alive connections */
  sy_conn *conns;                          /* intrusive list, for reload and shutdown */
  sy_tunnel_hub *tunnels;                  /* spliced tunnels, whose connections are gone */
  struct sy_flow *written, **written_tail; /* writes done at once (conn.c) */
  uv_check_t written_check;
  uv_idle_t written_idle;
  sy_buf labels;                 /* metric labels being built (conn.c): capacity kept */
  char *buf_cache[SY_BUF_CACHE]; /* idle flow buffers (conn.c) */
  unsigned nbuf_cache;
  char *blk_cache[SY_BLK_CACHE]; /* SY_CIPHER_BLOCK each (conn.c) */
  unsigned nblk_cache;
  struct {
    char *p;
    size_t cap;
  } cipher_cache[SY_CIPHER_CACHE];
  unsigned ncipher_cache;
  struct { /* series counted per connection (sy_metrics_add_cell) */
    int64_t *accepted, *open, *to_upstream, *to_client, *spliced, *copied;
  } cell;
  int stopping; /* enum sy_stop, in effect on the loop */
  uint64_t nconns;
  uint64_t accepted, idle_mark; /* accepts so far; and at the trim timer's last arming */
  int trim_burst;               /* the trim timer is armed for the end of a burst */
  int started;
  int paused_any; /* a listener waits at max_connections (atomic) */
  int resume_req; /* another worker saw the count drop (atomic) */
};

/* Binds the worker's listeners (SO_REUSEPORT). Returns 0 or a negative uv error. */
int sy_worker_init(sy_worker *w, unsigned id, sy_config *cfg);
int sy_worker_start(sy_worker *w); /* runs the loop on a new thread */
/* Thread-safe requests to the loop. */
void sy_worker_reload(sy_worker *w, sy_config *cfg);
void sy_worker_stop(sy_worker *w, enum sy_stop how);
void sy_worker_join(sy_worker *w);
void sy_worker_destroy(sy_worker *w);

/* Called by conn when a connection ends: lets a draining worker finish, and
 * a worker at max_connections accept again. */
void sy_worker_conn_gone(sy_worker *w);
/* Called by conn when the worker's last connection struct is freed (tunnels
 * may remain): a burst is over, so freed heap memory is handed back soon. */
void sy_worker_conns_idle(sy_worker *w);
/* The most connections the descriptor limit allows (set once at start,
 * before the workers run); sy_worker_max_conns is limits.max_connections
 * capped by it. */
void sy_worker_set_fd_budget(uint64_t n);
uint64_t sy_worker_max_conns(const sy_config *cfg);
/* Connections open in the whole process (all workers), for max_connections. */
uint64_t sy_worker_total_conns(void);
/* Tunnels open in the whole process, for limits.max_tunnels. */
void sy_worker_tunnels_add(int delta);
uint64_t sy_worker_total_tunnels(void);
/* limits.max_connections_per_client: 0 when this address may connect once
 * more (then counted), -1 when it is at the limit. */
int sy_client_acquire(const char *ip, uint64_t limit);
void sy_client_release(const char *ip);

/* Binds a listening TCP socket with SO_REUSEPORT (libuv 1.44 has no flag for
 * it): socket, setsockopt, bind, listen, uv_tcp_open. */
int sy_listen_reuseport(uv_loop_t *loop, uv_tcp_t *tcp, const struct sockaddr *sa, int backlog);

#endif
