#include "switchyard/worker.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "switchyard/conn.h"
#include "switchyard/log.h"

int sy_listen_reuseport(uv_loop_t *loop, uv_tcp_t *tcp, const struct sockaddr *sa, int backlog) {
  int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -errno;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
    goto fail;
  socklen_t len = sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                            : sizeof(struct sockaddr_in);
  if (bind(fd, sa, len) < 0 || listen(fd, backlog) < 0)
    goto fail;
  int rc = uv_tcp_init(loop, tcp);
  if (rc == 0)
    rc = uv_tcp_open(tcp, fd);
  if (rc < 0) {
    close(fd);
    return rc;
  }
  return 0;
fail:;
  int err = -errno;
  close(fd);
  return err;
}

static void on_accept(uv_stream_t *s, int status) {
  sy_listener *l = s->data;
  if (status < 0) {
    sy_log_error("accept on %s: %s", l->cfg->addr.text, uv_strerror(status));
    return;
  }
  sy_conn_accept(l->w, l);
}

int sy_worker_init(sy_worker *w, unsigned id, sy_config *cfg) {
  memset(w, 0, sizeof(*w));
  w->id = id;
  int rc = uv_loop_init(&w->loop);
  if (rc < 0)
    return rc;
  w->cfg = sy_config_ref(cfg);
  w->pipes = sy_pipe_pool_new(64);
  w->listeners = calloc(cfg->nlisteners, sizeof(*w->listeners));
  if (!w->listeners || !w->pipes)
    return UV_ENOMEM;
  for (size_t i = 0; i < cfg->nlisteners; i++) {
    sy_listener *l = &w->listeners[i];
    l->w = w;
    l->cfg = &cfg->listeners[i];
    rc = sy_listen_reuseport(&w->loop, &l->tcp, (const struct sockaddr *)&l->cfg->addr.sa, 511);
    if (rc < 0) {
      sy_log_error("listen on %s: %s", l->cfg->addr.text, uv_strerror(rc));
      return rc;
    }
    l->open = 1;
    w->nlisteners = i + 1;
    l->tcp.data = l;
    rc = uv_listen((uv_stream_t *)&l->tcp, 511, on_accept);
    if (rc < 0)
      return rc;
  }
  return 0;
}

static void close_walk(uv_handle_t *h, void *arg) {
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

static void on_wakeup(uv_async_t *a) {
  sy_worker *w = a->data;
  if (!w->stopping)
    return;
  for (size_t i = 0; i < w->nlisteners; i++)
    if (w->listeners[i].open && !uv_is_closing((uv_handle_t *)&w->listeners[i].tcp))
      uv_close((uv_handle_t *)&w->listeners[i].tcp, NULL);
  sy_conn_close_all(w);
  uv_close((uv_handle_t *)&w->wakeup, NULL);
}

static void *worker_main(void *arg) {
  sy_worker *w = arg;
  uv_run(&w->loop, UV_RUN_DEFAULT);
  return NULL;
}

int sy_worker_start(sy_worker *w) {
  int rc = uv_async_init(&w->loop, &w->wakeup, on_wakeup);
  if (rc < 0)
    return rc;
  w->wakeup.data = w;
  return pthread_create(&w->thread, NULL, worker_main, w) ? UV_EAGAIN : 0;
}

void sy_worker_stop(sy_worker *w) {
  __atomic_store_n(&w->stopping, 1, __ATOMIC_SEQ_CST);
  uv_async_send(&w->wakeup);
}

void sy_worker_join(sy_worker *w) {
  pthread_join(w->thread, NULL);
}

void sy_worker_destroy(sy_worker *w) {
  /* Close whatever is left (a failed init) and let the callbacks run. */
  uv_walk(&w->loop, close_walk, NULL);
  uv_run(&w->loop, UV_RUN_DEFAULT);
  uv_loop_close(&w->loop);
  free(w->listeners);
  if (w->pipes)
    sy_pipe_pool_free(w->pipes);
  if (w->cfg)
    sy_config_unref(w->cfg);
  memset(w, 0, sizeof(*w));
}
