/* Per-worker pool of kernel pipes for the splice tunnel.
 *
 * A pipe is only lent out while a tunnel direction has bytes in flight and is
 * handed back as soon as it is empty, so the number of pipes (two fds each)
 * follows the number of *busy* directions, not the number of open tunnels.
 * Not thread-safe: one pool per worker loop. */
#ifndef SWITCHYARD_PIPEPOOL_H
#define SWITCHYARD_PIPEPOOL_H

#include <stddef.h>
#include <stdint.h>

typedef struct sy_pipe_pool sy_pipe_pool;

typedef struct sy_pipe_pool_stats {
  uint64_t in_use;  /* lent out right now */
  uint64_t idle;    /* kept for reuse right now */
  uint64_t created; /* pipe2() calls that succeeded, ever */
  uint64_t closed;  /* pipes closed (over max_idle, dropped, pool freed), ever */
} sy_pipe_pool_stats;

/* Keeps at most max_idle empty pipes for reuse (0: every returned pipe is closed).
 * NULL on allocation failure. */
sy_pipe_pool *sy_pipe_pool_new(size_t max_idle);

/* Closes the idle pipes. Every lent pipe must have come back first (in_use == 0). */
void sy_pipe_pool_free(sy_pipe_pool *p);

/* fds[0] is the read end, fds[1] the write end, both O_NONBLOCK|O_CLOEXEC, capacity
 * 256 KiB where the kernel allows it. Returns the pipe's capacity in bytes (a
 * multiple of the page size: one slot per page), or -errno from pipe2 (EMFILE,
 * ENFILE). */
int sy_pipe_pool_get(sy_pipe_pool *p, int fds[2]);

/* Gives back an EMPTY pipe with the capacity get reported: pooled, or closed
 * beyond max_idle. fds are set to -1. A pipe still holding bytes must go to
 * sy_pipe_pool_drop instead, or the next borrower would receive another
 * connection's data. */
void sy_pipe_pool_put(sy_pipe_pool *p, int fds[2], int cap);

/* Gives back a pipe that may still hold bytes: closed, never reused. fds set to -1. */
void sy_pipe_pool_drop(sy_pipe_pool *p, int fds[2]);

void sy_pipe_pool_stats_get(const sy_pipe_pool *p, sy_pipe_pool_stats *out);

#endif
