/* A worker: one thread, one libuv loop, its own SO_REUSEPORT listening sockets,
 * its own pipe pool and connection list. Nothing on the per-request path is
 * shared between workers except the round-robin cursor (atomic). */
#ifndef SWITCHYARD_WORKER_H
#define SWITCHYARD_WORKER_H

#include <pthread.h>
#include <stdint.h>
#include <uv.h>

#include "switchyard/config.h"
#include "switchyard/pipepool.h"

typedef struct sy_conn sy_conn;
typedef struct sy_worker sy_worker;

typedef struct sy_listener {
  uv_tcp_t tcp;
  sy_worker *w;
  const sy_listener_cfg *cfg;
  int open;
} sy_listener;

typedef struct sy_worker_stats {
  uint64_t accepted, requests, tunnels, tunnels_open, conns_open;
} sy_worker_stats;

struct sy_worker {
  unsigned id;
  uv_loop_t loop;
  uv_async_t wakeup; /* stop requests from the main thread */
  pthread_t thread;
  sy_config *cfg; /* snapshot new connections take a reference of */
  sy_listener *listeners;
  size_t nlisteners;
  sy_pipe_pool *pipes;
  sy_conn *conns; /* intrusive list, for shutdown */
  int stopping;
  sy_worker_stats stats;
};

/* Binds the worker's listeners (SO_REUSEPORT). Returns 0 or a negative uv error. */
int sy_worker_init(sy_worker *w, unsigned id, sy_config *cfg);
int sy_worker_start(sy_worker *w); /* runs the loop on a new thread */
void sy_worker_stop(sy_worker *w); /* thread-safe: asks the loop to end */
void sy_worker_join(sy_worker *w);
void sy_worker_destroy(sy_worker *w);

/* Binds a listening TCP socket with SO_REUSEPORT (libuv 1.44 has no flag for
 * it): socket, setsockopt, bind, listen, uv_tcp_open. */
int sy_listen_reuseport(uv_loop_t *loop, uv_tcp_t *tcp, const struct sockaddr *sa, int backlog);

#endif
