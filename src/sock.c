#include "switchyard/sock.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/uio.h>
#include <unistd.h>

/* Reads per readiness before the socket waits for the end of the turn. */
#define SOCK_READS 32
#define SOCK_EVENTS (EPOLLIN | EPOLLOUT | EPOLLRDHUP)

static void sock_on_later(sy_later *l);
static void sock_on_closed(sy_later *l);
static void sock_work(sy_sock *s);

void sy_sock_init(sy_sock *s, sy_evset *ev) {
  *s = (sy_sock){.ev = ev, .fd = -1};
  s->wq_tail = &s->wq;
  s->later.fn = sock_on_later;
  s->closed.fn = sock_on_closed;
}

int sy_sock_fd(const sy_sock *s) {
  return s->fd;
}

int sy_sock_is_closing(const sy_sock *s) {
  return s->closing;
}

int sy_sock_is_reading(const sy_sock *s) {
  return s->reading;
}

size_t sy_sock_write_queue_size(const sy_sock *s) {
  size_t n = 0;
  for (const sy_sock_wreq *w = s->wq; w; w = w->next)
    for (uint32_t i = w->idx; i < w->nbufs; i++)
      n += w->bufs[i].len;
  return n;
}

static void sock_due(sy_sock *s) {
  sy_evset_later(s->ev, &s->later);
}

static void sock_on_event(void *obj, unsigned tag, uint32_t x) {
  sy_sock *s = obj;
  if (s->closing) return;
  if (x & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) s->readable = 1;
  if (x & (EPOLLRDHUP | EPOLLHUP)) s->rdhup = 1;
  if (x & (EPOLLOUT | EPOLLHUP | EPOLLERR)) s->writable = 1;
  if (x & (EPOLLHUP | EPOLLERR)) s->failed = 1;
  sock_work(s);
}

static int sock_register(sy_sock *s, int fd) {
  int r = sy_evset_add(s->ev, fd, SOCK_EVENTS, sock_on_event, s, 0);
  if (r < 0) return r;
  s->fd = fd;
  s->held = 1;
  sy_evset_hold(s->ev, 1);
  return 0;
}

int sy_sock_open(sy_sock *s, int fd) {
  int r = sock_register(s, fd);
  if (r == 0) s->writable = 1; /* a fresh connection has room; the ADD reports the rest */
  return r;
}

/* ---- reading ------------------------------------------------------------------ */

static void sock_read(sy_sock *s) {
  for (int i = 0; i < SOCK_READS; i++) {
    if (!s->reading || s->closing || !s->readable) return;
    uv_buf_t buf = {0};
    s->alloc_cb(s, &buf);
    if (!buf.base || !buf.len) {
      /* The bytes wait in the kernel; a read_start asks again. */
      s->read_cb(s, UV_ENOBUFS, &buf);
      return;
    }
    ssize_t n;
    do
      n = recv(s->fd, buf.base, buf.len, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        s->readable = 0;
        s->read_cb(s, 0, &buf);
      } else {
        int err = -errno;
        s->reading = 0;
        s->read_cb(s, err, &buf);
      }
      return;
    }
    if (n == 0) {
      s->reading = 0;
      s->read_cb(s, UV_EOF, &buf);
      return;
    }
    /* A short read emptied the socket; after a FIN was reported the next
     * read finds the end, which no further event would announce. */
    int drained = (size_t)n < buf.len && !s->rdhup;
    if (drained) s->readable = 0;
    s->read_cb(s, n, &buf);
    if (drained) return;
  }
  /* Its share read: the rest on the next turn, after the other sockets. */
  if (s->reading && s->readable && !s->closing) sy_evset_next(s->ev, &s->later);
}

int sy_sock_read_start(sy_sock *s, sy_sock_alloc_cb alloc, sy_sock_read_cb cb) {
  if (s->closing || s->fd < 0) return UV_EINVAL;
  s->alloc_cb = alloc;
  s->read_cb = cb;
  /* A readiness learnt while not reading gets no second edge: act on it, on
   * the next turn - a read restarted by a write's callback would otherwise
   * chain read, write, callback within one turn and starve the other sockets
   * (a TLS relay did). */
  if (s->readable && !s->connecting) sy_evset_next(s->ev, &s->later);
  s->reading = 1;
  return 0;
}

void sy_sock_read_stop(sy_sock *s) {
  s->reading = 0;
}

/* ---- writing ------------------------------------------------------------------ */

static void write_on_done(sy_later *l) {
  sy_sock_wreq *w = (sy_sock_wreq *)l;
  if (w->owned && w->bufs != w->small) free(w->bufs);
  w->bufs = NULL;
  w->cb(w, w->status);
}

static void write_finish(sy_sock *s, int status) {
  sy_sock_wreq *w = s->wq;
  s->wq = w->next;
  if (!s->wq) s->wq_tail = &s->wq;
  w->next = NULL;
  w->status = status;
  sy_evset_later(s->ev, &w->later);
}

/* Advances bufs past n written bytes; 1 when all are written. */
static int bufs_advance(uv_buf_t *b, uint32_t nb, uint32_t *idx, size_t n) {
  while (*idx < nb) {
    if (n < b[*idx].len) {
      b[*idx].base += n;
      b[*idx].len -= n;
      return 0;
    }
    n -= b[*idx].len;
    (*idx)++;
  }
  return 1;
}

/* One writev of at most IOV_MAX buffers; learns that the socket is full from
 * EAGAIN or from a write shorter than what was offered. */
static ssize_t sock_writev(sy_sock *s, const uv_buf_t *b, uint32_t n) {
  if (n > IOV_MAX) n = IOV_MAX;
  ssize_t r;
  do /* uv_buf_t has iovec's layout on Unix */
    r = writev(s->fd, (const struct iovec *)b, (int)n);
  while (r < 0 && errno == EINTR);
  if (r < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) s->writable = 0;
    return -errno;
  }
  size_t offered = 0;
  for (uint32_t i = 0; i < n && offered <= (size_t)r; i++)
    offered += b[i].len;
  if ((size_t)r < offered) s->writable = 0;
  return r;
}

static void sock_do_shutdown(sy_sock *s) {
  s->shut_wanted = 0;
  s->shut_status = shutdown(s->fd, SHUT_WR) < 0 ? -errno : 0;
  s->shut_due = 1;
  sock_due(s);
}

static void sock_write_queued(sy_sock *s) {
  while (s->wq && s->writable) {
    sy_sock_wreq *w = s->wq;
    ssize_t r = sock_writev(s, w->bufs + w->idx, w->nbufs - w->idx);
    if (r == -EAGAIN || r == -EWOULDBLOCK) return;
    if (r < 0) {
      write_finish(s, (int)r);
      continue;
    }
    if (bufs_advance(w->bufs, w->nbufs, &w->idx, (size_t)r)) write_finish(s, 0);
  }
  if (!s->wq && s->shut_wanted) sock_do_shutdown(s);
}

static int sock_queue(sy_sock_wreq *w, sy_sock *s, uv_buf_t *bufs, unsigned n,
                      sy_sock_write_cb cb) {
  w->later = (sy_later){.fn = write_on_done}; /* the request may be reused or uninitialised */
  w->handle = s;
  w->cb = cb;
  w->next = NULL;
  w->idx = 0;
  w->status = 0;
  w->bufs = bufs;
  w->nbufs = n;
  int was_empty = !s->wq;
  *s->wq_tail = w;
  s->wq_tail = &w->next;
  if (was_empty && !s->connecting) sock_write_queued(s);
  return 0;
}

int sy_sock_write(sy_sock_wreq *w, sy_sock *s, const uv_buf_t *bufs, unsigned n,
                  sy_sock_write_cb cb) {
  if (s->closing || s->fd < 0) return UV_EPIPE;
  uv_buf_t *b = n <= 4 ? w->small : malloc(n * sizeof(*bufs));
  if (!b) return UV_ENOMEM;
  for (unsigned i = 0; i < n; i++)
    b[i] = bufs[i];
  w->owned = 1;
  return sock_queue(w, s, b, n, cb);
}

int sy_sock_write_inplace(sy_sock_wreq *w, sy_sock *s, uv_buf_t *bufs, unsigned n,
                          sy_sock_write_cb cb) {
  if (s->closing || s->fd < 0) return UV_EPIPE;
  w->owned = 0;
  return sock_queue(w, s, bufs, n, cb);
}

int sy_sock_shutdown(sy_sock *s, sy_sock_cb cb) {
  if (s->closing || s->fd < 0 || s->shut_wanted || s->shut_due) return UV_EINVAL;
  s->shutdown_cb = cb;
  s->shut_wanted = 1;
  if (!s->wq && !s->connecting) sock_do_shutdown(s);
  return 0;
}

/* ---- connecting ---------------------------------------------------------------- */

int sy_sock_connect(sy_sock *s, const struct sockaddr *addr, sy_sock_cb cb) {
  if (s->fd >= 0 || s->closing) return UV_EINVAL;
  int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int r = sock_register(s, fd);
  if (r < 0) {
    close(fd);
    return r;
  }
  s->connect_cb = cb;
  socklen_t len =
      addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  do
    r = connect(fd, addr, len);
  while (r < 0 && errno == EINTR);
  if (r == 0 || errno == ECONNREFUSED) {
    /* Done (or refused) at once, as loopback may: the callback still comes later. */
    s->conn_status = r == 0 ? 0 : UV_ECONNREFUSED;
    s->writable = r == 0;
    s->connected_due = 1;
    s->connecting = 1;
    sock_due(s);
    return 0;
  }
  if (errno != EINPROGRESS) {
    r = -errno;
    sy_evset_forget(s->ev, fd, 0);
    close(fd);
    s->fd = -1;
    s->held = 0;
    sy_evset_hold(s->ev, -1);
    return r;
  }
  s->connecting = 1;
  return 0;
}

static void sock_connected(sy_sock *s, int status) {
  s->connecting = 0;
  s->connected_due = 0;
  s->connect_cb(s, status);
}

/* ---- events and deferred work --------------------------------------------------- */

static void sock_work(sy_sock *s) {
  if (s->connecting) {
    if (s->connected_due || !s->writable) return;
    /* A socket still connecting reports no EPOLLOUT: writable without an
     * error or hang-up is connected, and only a failure needs the system call
     * that says why. */
    int err = 0;
    socklen_t len = sizeof(err);
    if (s->failed && getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    sock_connected(s, -err);
    if (s->closing || err) return;
  }
  /* Also a shutdown asked for while connecting with nothing queued. */
  if (s->writable && (s->wq || s->shut_wanted)) sock_write_queued(s);
  if (s->closing) return;
  if (s->reading && s->readable) sock_read(s);
}

static void sock_on_later(sy_later *l) {
  sy_sock *s = (sy_sock *)((char *)l - offsetof(sy_sock, later));
  if (s->closing) return; /* the close's own item reports what is owed */
  if (s->connected_due) {
    sock_connected(s, s->conn_status);
    if (s->closing) return;
    sock_write_queued(s); /* what waited for the connect: writes, then the shutdown */
  }
  if (s->shut_due) {
    s->shut_due = 0;
    s->shutdown_cb(s, s->shut_status);
    if (s->closing) return;
  }
  if (s->reading && s->readable && !s->connecting) sock_read(s);
}

static void sock_on_closed(sy_later *l) {
  sy_sock *s = (sy_sock *)((char *)l - offsetof(sy_sock, closed));
  if (s->connecting) {
    s->connecting = s->connected_due = 0;
    s->connect_cb(s, UV_ECANCELED);
  }
  if (s->shut_wanted || s->shut_due) {
    int st = s->shut_due ? s->shut_status : UV_ECANCELED;
    s->shut_wanted = s->shut_due = 0;
    s->shutdown_cb(s, st);
  }
  if (s->held) {
    s->held = 0;
    sy_evset_hold(s->ev, -1);
  }
  s->close_cb(s);
}

static void sock_end(sy_sock *s, sy_sock_close_cb cb) {
  s->closing = 1;
  s->reading = 0;
  s->close_cb = cb;
  while (s->wq)
    write_finish(s, UV_ECANCELED);
  /* Queued behind the cancelled writes, so their callbacks come first, and
   * behind the sock's other item if that waits for the next turn (it finds
   * the sock closing and does nothing; the close callback may free both). */
  if (s->later.queued == 2)
    sy_evset_next(s->ev, &s->closed);
  else
    sy_evset_later(s->ev, &s->closed);
}

void sy_sock_close(sy_sock *s, sy_sock_close_cb cb) {
  if (s->closing) return;
  if (s->fd >= 0) {
    sy_evset_forget(s->ev, s->fd, 0);
    close(s->fd);
    s->fd = -1;
  }
  sock_end(s, cb);
}

int sy_sock_release(sy_sock *s, sy_sock_close_cb cb) {
  if (s->closing || s->fd < 0 || s->wq || s->connecting || s->shut_wanted) return -1;
  int fd = s->fd;
  s->fd = -1;
  sock_end(s, cb);
  return fd;
}
