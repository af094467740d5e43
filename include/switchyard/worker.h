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
#include "switchyard/conn.h"
#include "switchyard/pipepool.h"

typedef struct sy_worker sy_worker;

typedef struct sy_listener {
  uv_poll_t poll; /* readable: connections wait; stopped while paused */
  int fd;
  sy_worker *w;
  const sy_listener_cfg *cfg; /* in the worker's current snapshot */
  struct sy_listener *next;
  int paused; /* not accepting: max_connections reached */
} sy_listener;

enum sy_stop { SY_RUN = 0, SY_DRAIN, SY_STOP_NOW };

struct sy_worker {
  unsigned id;
  int cpu; /* worker_cpu_affinity: the CPU it runs on and takes connections from; -1 none */
  uv_loop_t loop;
  uv_async_t wakeup; /* reload and stop requests from the main thread */
  uv_timer_t drain_timer;
  uv_timer_t budget_timer; /* paused by the descriptor budget: look again soon */
  uv_timer_t trim_timer;   /* gives memory freed by a burst back to the system */
  pthread_t thread;
  pthread_mutex_t mu; /* guards `pending` and `stop` */
  sy_config *pending; /* a reloaded snapshot waiting to be taken */
  int stop;           /* enum sy_stop, requested */
  /* What the worker lends its connections: the loop, the snapshot new
   * connections take a reference of (env.cfg), metrics, the upstream pool,
   * the tunnel hub (spliced tunnels, whose connections are gone), and
   * env.stopping (enum sy_stop, in effect on the loop). */
  sy_conn_env env;
  sy_listener *listeners;
  sy_pipe_pool *pipes;
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

/* The most connections the descriptor limit allows (set once at start,
 * before the workers run); sy_worker_max_conns is limits.max_connections
 * capped by it. */
void sy_worker_set_fd_budget(uint64_t n);
uint64_t sy_worker_max_conns(const sy_config *cfg);
/* Connections open in the whole process (all workers), for max_connections. */
uint64_t sy_worker_total_conns(void);
/* Binds a listening TCP socket with SO_REUSEPORT: socket, setsockopt, bind,
 * listen. incoming_cpu >= 0: the kernel (6.2+) hands this socket the
 * connections whose SYN that CPU handled (SO_INCOMING_CPU); -1: its share of
 * the reuseport hash. The non-blocking socket, or -errno. */
int sy_listen_reuseport(const struct sockaddr *sa, int backlog, int incoming_cpu);

#endif
