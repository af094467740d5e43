/* A TCP socket driven by the worker's edge-triggered epoll set (evset.h) with
 * our own recv and writev: the part of libuv's stream the connection code
 * uses (read start/stop with a buffer lent per read, ordered writes with a
 * callback each, shutdown after the queued writes, connect, close), with the
 * same promises: no callback from inside the call that caused it, writes in
 * order, and on close every pending request called back with UV_ECANCELED
 * before the close callback.
 *
 * The socket is added to the set once, for reading and writing, when it is
 * opened or connected, and stays there: a stopped read costs nothing (the
 * readiness is remembered and acted on when reading starts again), and
 * sy_sock_release gives the descriptor away still registered, which is how a
 * connection hands its sockets to a tunnel without a system call. */
#ifndef SWITCHYARD_SOCK_H
#define SWITCHYARD_SOCK_H

#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <uv.h>

#include "switchyard/evset.h"

typedef struct sy_sock sy_sock;
typedef struct sy_sock_wreq sy_sock_wreq;

/* A buffer for the next read (len 0: none now; the read callback then gets
 * UV_ENOBUFS and the bytes wait in the kernel). */
typedef void (*sy_sock_alloc_cb)(sy_sock *s, uv_buf_t *buf);
/* n > 0 bytes read; 0 nothing now (the buffer comes back); UV_EOF (reading
 * stops); another negative: an error (UV_ENOBUFS: see alloc). */
typedef void (*sy_sock_read_cb)(sy_sock *s, ssize_t n, const uv_buf_t *buf);
typedef void (*sy_sock_write_cb)(sy_sock_wreq *w, int status);
/* connect and shutdown: 0 or a UV_E* error. */
typedef void (*sy_sock_cb)(sy_sock *s, int status);
typedef void (*sy_sock_close_cb)(sy_sock *s);

struct sy_sock_wreq {
  sy_later later; /* its callback, due */
  sy_sock *handle;
  void *data;
  sy_sock_write_cb cb;
  sy_sock_wreq *next;
  uv_buf_t *bufs; /* small, or allocated when more */
  uint32_t nbufs, idx;
  int status;
  int owned; /* bufs is the request's own copy */
  uv_buf_t small[4];
};

struct sy_sock {
  sy_evset *ev;
  int fd;
  void *data;
  sy_sock_alloc_cb alloc_cb;
  sy_sock_read_cb read_cb;
  sy_sock_cb connect_cb, shutdown_cb;
  sy_sock_close_cb close_cb;
  sy_sock_wreq *wq, **wq_tail; /* not yet written (the head perhaps in part) */
  sy_later later;              /* reads due, and connect/shutdown callbacks */
  sy_later closed;             /* the close callback, queued behind everything it owes */
  int conn_status;             /* the connect's result, while its callback is due */
  int shut_status;
  /* Edge-triggered readiness as last learnt: set by events, cleared by
   * EAGAIN or by a short read (which proves the socket empty). */
  unsigned readable : 1, writable : 1, rdhup : 1, failed : 1; /* failed: EPOLLERR|EPOLLHUP seen */
  unsigned reading : 1, connecting : 1, connected_due : 1, shut_wanted : 1, shut_due : 1;
  unsigned closing : 1, held : 1;
};

/* A socket with no descriptor yet (connect makes one). */
void sy_sock_init(sy_sock *s, sy_evset *ev);
/* Drives an open, non-blocking socket: adds it to the set. -errno on failure
 * (the descriptor stays the caller's). */
int sy_sock_open(sy_sock *s, int fd);
/* A new non-blocking socket connecting to addr; the callback follows. A
 * failure to even start (no descriptor: UV_EMFILE...) is returned here. */
int sy_sock_connect(sy_sock *s, const struct sockaddr *addr, sy_sock_cb cb);
int sy_sock_read_start(sy_sock *s, sy_sock_alloc_cb alloc, sy_sock_read_cb cb);
void sy_sock_read_stop(sy_sock *s);
int sy_sock_is_reading(const sy_sock *s);
/* Queues bufs (the array is copied, the bytes are not: they must stay until
 * the callback). Tried at once when nothing is queued. */
int sy_sock_write(sy_sock_wreq *w, sy_sock *s, const uv_buf_t *bufs, unsigned n,
                  sy_sock_write_cb cb);
/* The same, with bufs used in place: the array (not only the bytes) stays
 * the caller's until the callback, and is changed as the write advances. */
int sy_sock_write_inplace(sy_sock_wreq *w, sy_sock *s, uv_buf_t *bufs, unsigned n,
                          sy_sock_write_cb cb);
/* shutdown(SHUT_WR) once the queued writes are out. */
int sy_sock_shutdown(sy_sock *s, sy_sock_cb cb);
/* Closes the descriptor now; callbacks as the header says. */
void sy_sock_close(sy_sock *s, sy_sock_close_cb cb);
int sy_sock_is_closing(const sy_sock *s);
/* Gives the descriptor away, still in the set (sy_evset_retarget takes its
 * events over); the sock then closes as sy_sock_close would, without
 * touching the descriptor. -1 if it cannot be given: reads or writes in
 * flight, or no descriptor. */
int sy_sock_release(sy_sock *s, sy_sock_close_cb cb);
int sy_sock_fd(const sy_sock *s);
size_t sy_sock_write_queue_size(const sy_sock *s);

#endif
