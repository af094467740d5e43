#include "switchyard/pipepool.h"

#include "switchyard/limits.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

/* What the tunnel splices at most into an empty pipe. Fewer, larger moves cost
 * less CPU per byte; the kernel memory this pins exists only while a direction
 * has bytes in flight. Asking for it also undoes a larger default on 64
 * KiB-page kernels. */
#define POOL_PIPE_SIZE (256 * 1024)

struct sy_pipe_pool {
  size_t max_idle;
  size_t nidle;
  uint64_t in_use, created, closed;
  struct {
    int fds[2];
    int cap;
  } idle[]; /* LIFO: the most recently used pipe is the most likely cache-hot */
};

sy_pipe_pool *sy_pipe_pool_new(size_t max_idle) {
  if (max_idle > (SIZE_MAX - sizeof(sy_pipe_pool)) / sizeof(((sy_pipe_pool *)0)->idle[0]))
    return NULL;
  sy_pipe_pool *p = calloc(1, sizeof(*p) + max_idle * sizeof(p->idle[0]));
  if (!p) return NULL;
  p->max_idle = max_idle;
  return p;
}

static void pool_close(sy_pipe_pool *p, int fds[2]) {
  close(fds[0]);
  close(fds[1]);
  sy_limits_pipe_give();
  fds[0] = fds[1] = -1;
  p->closed++;
}

void sy_pipe_pool_free(sy_pipe_pool *p) {
  if (!p) return;
  /* A tunnel still holding a pipe would later put it into freed memory. */
  assert(p->in_use == 0);
  while (p->nidle > 0)
    pool_close(p, p->idle[--p->nidle].fds);
  free(p);
}

int sy_pipe_pool_get(sy_pipe_pool *p, int fds[2]) {
  if (p->nidle > 0) {
    p->nidle--;
    fds[0] = p->idle[p->nidle].fds[0];
    fds[1] = p->idle[p->nidle].fds[1];
    p->in_use++;
    return p->idle[p->nidle].cap;
  }
  /* Out of budget is EMFILE to the caller: the tunnel copies instead. */
  if (sy_limits_pipe_take() < 0) {
    fds[0] = fds[1] = -1;
    return -EMFILE;
  }
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) {
    int err = errno;
    sy_limits_pipe_give();
    fds[0] = fds[1] = -1;
    return -err;
  }
  /* Best effort: over fs.pipe-user-pages-soft the kernel may refuse, and a smaller
   * pipe only means shorter splices, not a failure. */
  int cap = fcntl(fds[1], F_SETPIPE_SZ, POOL_PIPE_SIZE);
  if (cap < 0) cap = fcntl(fds[1], F_GETPIPE_SZ);
  if (cap <= 0) cap = 4096; /* the least a pipe can be */
  p->created++;
  p->in_use++;
  return cap;
}

void sy_pipe_pool_put(sy_pipe_pool *p, int fds[2], int cap) {
  assert(p->in_use > 0);
  p->in_use--;
#ifndef NDEBUG
  /* Reusing a pipe with bytes in it would leak one connection's data into
   * another: worth a syscall in debug builds to catch a caller's accounting bug. */
  int queued = 0;
  if (ioctl(fds[0], FIONREAD, &queued) == 0 && queued != 0) {
    assert(!"sy_pipe_pool_put: pipe not empty");
    pool_close(p, fds);
    return;
  }
#endif
  if (p->nidle < p->max_idle) {
    p->idle[p->nidle].fds[0] = fds[0];
    p->idle[p->nidle].fds[1] = fds[1];
    p->idle[p->nidle].cap = cap;
    p->nidle++;
    fds[0] = fds[1] = -1;
    return;
  }
  pool_close(p, fds);
}

void sy_pipe_pool_drop(sy_pipe_pool *p, int fds[2]) {
  assert(p->in_use > 0);
  p->in_use--;
  pool_close(p, fds);
}

/* May be called from another thread (the admin listener): word-sized relaxed
 * loads give a value the worker really had, if not a consistent set. */
void sy_pipe_pool_stats_get(const sy_pipe_pool *p, sy_pipe_pool_stats *out) {
  out->in_use = __atomic_load_n(&p->in_use, __ATOMIC_RELAXED);
  out->idle = __atomic_load_n(&p->nidle, __ATOMIC_RELAXED);
  out->created = __atomic_load_n(&p->created, __ATOMIC_RELAXED);
  out->closed = __atomic_load_n(&p->closed, __ATOMIC_RELAXED);
}
