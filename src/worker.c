#include "switchyard/worker.h"

#include <errno.h>
#include <stddef.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "switchyard/conn.h"
#include "switchyard/cpus.h"
#include "switchyard/limits.h"
#include "switchyard/log.h"

static uint64_t conns_total; /* all workers; atomic */

static sy_worker *container_of_env(sy_conn_env *env) {
  return (sy_worker *)((char *)env - offsetof(sy_worker, env));
}

/* Every worker, so one whose connection ends can wake another whose
 * listener paused at max_connections (the limit is per process). */
static sy_worker *registry[SY_WORKERS_MAX];
/* Workers with a listener paused at max_connections: a closing connection
 * looks for them only when there are any. */
static int paused_workers;

uint64_t sy_worker_total_conns(void) {
  return __atomic_load_n(&conns_total, __ATOMIC_RELAXED);
}

int sy_listen_reuseport(const struct sockaddr *sa, int backlog, int incoming_cpu) {
  int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) goto fail;
  /* Before listen: the socket joins the group with its CPU already set. */
  if (incoming_cpu >= 0)
    setsockopt(fd, SOL_SOCKET, SO_INCOMING_CPU, &incoming_cpu, sizeof(incoming_cpu));
  /* "[::]:8080" takes IPv4 clients too (as ::ffff:a.b.c.d) whatever the
   * host's net.ipv6.bindv6only says; a host that forbids it keeps IPv6 only. */
  int zero = 0;
  if (sa->sa_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
  /* Accepted sockets inherit it: one system call per listener instead of one
   * per connection. */
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  socklen_t len =
      sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  if (bind(fd, sa, len) < 0 || listen(fd, backlog) < 0) goto fail;
  return fd;
fail:;
  int err = -errno;
  close(fd);
  return err;
}

static uint64_t fd_budget = UINT64_MAX;

void sy_worker_set_fd_budget(uint64_t n) {
  fd_budget = n;
}

uint64_t sy_worker_max_conns(const sy_config *cfg) {
  uint64_t m = cfg->limits.max_connections;
  return m < fd_budget ? m : fd_budget;
}

static int at_limit(sy_worker *w) {
  return sy_worker_total_conns() >= sy_worker_max_conns(w->env.cfg);
}

/* The descriptor budget is short: the listeners pause (connections wait in
 * the kernel's backlog) and look again shortly, since descriptors also come
 * back without a connection ending (pipes, pooled upstream connections). */
#define BUDGET_RETRY_MS 100

static void on_budget_retry(uv_timer_t *t);

/* May this worker take one more connection? Takes its two descriptors. */
static int can_accept(sy_worker *w, int *by_budget) {
  *by_budget = 0;
  if (at_limit(w)) return 0;
  if (sy_limits_fds_take(2) == 0) return 1;
  *by_budget = 1;
  if (!uv_is_active((uv_handle_t *)&w->budget_timer))
    uv_timer_start(&w->budget_timer, on_budget_retry, BUDGET_RETRY_MS, 0);
  return 0;
}

/* Accepts per readiness at most; the (level-triggered) poll calls again for
 * the rest, after the loop's other work. */
#define ACCEPTS_PER_TURN 64

static void on_listen_ready(uv_poll_t *p, int status, int events);

static void pause_listener(sy_worker *w, sy_listener *l, int by_budget) {
  if (l->paused) return;
  /* The connections wait in the kernel's queue until the listener polls again. */
  l->paused = 1;
  uv_poll_stop(&l->poll);
  if (!__atomic_load_n(&w->paused_any, __ATOMIC_RELAXED))
    __atomic_add_fetch(&paused_workers, 1, __ATOMIC_ACQ_REL);
  __atomic_store_n(&w->paused_any, 1, __ATOMIC_RELEASE);
  /* A connection that ended on another worker between our check and the
   * stores above saw no worker paused and woke nobody: look again. Each
   * side orders its store before its load with a full fence (on_conn_gone),
   * so one of the two sees the other. */
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  if (!by_budget && !at_limit(w)) {
    __atomic_store_n(&w->resume_req, 1, __ATOMIC_RELEASE);
    uv_async_send(&w->wakeup);
  }
  sy_metrics_add(w->env.metrics, "switchyard_listener_pauses_total", NULL, 1);
  if (by_budget)
    sy_log_every_second(SY_LOG_WARN, "descriptor budget (%llu) in use: not accepting on %s for now",
                        (unsigned long long)sy_limits_fds_budget(), l->cfg->addr.text);
  else
    sy_log_every_second(SY_LOG_WARN, "max_connections (%llu) reached: not accepting on %s",
                        (unsigned long long)sy_worker_max_conns(w->env.cfg), l->cfg->addr.text);
}

/* Our own accept4 rather than libuv's: it returns the peer's address, which
 * libuv's drops (a getpeername per connection), and the socket goes straight
 * to the connection code's epoll set without a libuv handle. */
static void on_listen_ready(uv_poll_t *p, int status, int events) {
  sy_listener *l = p->data;
  sy_worker *w = l->w;
  if (status < 0) {
    sy_log_every_second(SY_LOG_ERROR, "accept on %s: %s", l->cfg->addr.text, uv_strerror(status));
    return;
  }
  for (int i = 0; i < ACCEPTS_PER_TURN; i++) {
    int by_budget;
    if (!can_accept(w, &by_budget)) {
      pause_listener(w, l, by_budget);
      return;
    }
    struct sockaddr_storage peer;
    socklen_t len = sizeof(peer);
    int fd = accept4(l->fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      sy_limits_fds_give(2); /* taken by can_accept for a connection that did not come */
      if (err == EINTR || err == ECONNABORTED) continue;
      /* EMFILE and friends: the poll reports the socket again, so this can
       * repeat at poll rate; keep serving, log once a second. */
      if (err != EAGAIN && err != EWOULDBLOCK)
        sy_log_every_second(SY_LOG_ERROR, "accept on %s: %s", l->cfg->addr.text, strerror(err));
      return;
    }
    __atomic_add_fetch(&conns_total, 1, __ATOMIC_RELAXED);
    w->nconns++;
    w->accepted++;
    sy_conn_accept(&w->env, fd, &peer, l->cfg);
  }
}

static void resume_paused(sy_worker *w) {
  int still = 0;
  for (sy_listener *l = w->listeners; l; l = l->next) {
    if (!l->paused) continue;
    int by_budget;
    if (!can_accept(w, &by_budget)) {
      still = 1;
      continue;
    }
    sy_limits_fds_give(2); /* the poll's callback takes them per connection */
    l->paused = 0;
    uv_poll_start(&l->poll, UV_READABLE, on_listen_ready);
  }
  if (!still && __atomic_load_n(&w->paused_any, __ATOMIC_RELAXED))
    __atomic_sub_fetch(&paused_workers, 1, __ATOMIC_ACQ_REL);
  __atomic_store_n(&w->paused_any, still, __ATOMIC_RELEASE);
}

static void on_budget_retry(uv_timer_t *t) {
  sy_worker *w = t->data;
  if (!w->env.stopping) resume_paused(w);
}

static void on_listener_closed(uv_handle_t *h) {
  sy_listener *l = h->data;
  close(l->fd);
  free(l);
}

static int bind_listener(sy_worker *w, const sy_listener_cfg *lc) {
  sy_listener *l = calloc(1, sizeof(*l));
  if (!l) return UV_ENOMEM;
  l->w = w;
  l->cfg = lc;
  l->fd = sy_listen_reuseport((const struct sockaddr *)&lc->addr.sa, 511, w->cpu);
  int rc = l->fd < 0 ? l->fd : uv_poll_init(&w->loop, &l->poll, l->fd);
  if (rc < 0) {
    sy_log_error("listen on %s: %s", lc->addr.text, uv_strerror(rc));
    if (l->fd >= 0) close(l->fd);
    free(l);
    return rc;
  }
  l->poll.data = l;
  uv_poll_start(&l->poll, UV_READABLE, on_listen_ready);
  l->next = w->listeners;
  w->listeners = l;
  return 0;
}

static void close_listeners(sy_worker *w) {
  sy_listener *l = w->listeners;
  w->listeners = NULL;
  while (l) {
    sy_listener *next = l->next;
    uv_close((uv_handle_t *)&l->poll, on_listener_closed);
    l = next;
  }
}

static int same_addr(const sy_addr *a, const sy_addr *b) {
  return a->salen == b->salen && memcmp(&a->sa, &b->sa, a->salen) == 0;
}

/* A reload keeps the sockets of listeners whose address stays (so nothing
 * queued in the kernel is lost), binds the new ones and closes the rest. */
static void apply_listeners(sy_worker *w, sy_config *cfg) {
  sy_listener *old = w->listeners, *keep = NULL;
  w->listeners = NULL;
  for (size_t i = 0; i < cfg->nlisteners; i++) {
    const sy_listener_cfg *lc = &cfg->listeners[i];
    sy_listener **pp = &old, *found = NULL;
    for (; *pp; pp = &(*pp)->next)
      if (same_addr(&(*pp)->cfg->addr, &lc->addr)) {
        found = *pp;
        *pp = found->next;
        break;
      }
    if (found) {
      found->cfg = lc;
      found->next = keep;
      keep = found;
    } else {
      sy_listener *saved = w->listeners;
      w->listeners = NULL;
      if (bind_listener(w, lc) == 0) {
        w->listeners->next = keep;
        keep = w->listeners;
      }
      w->listeners = saved;
    }
  }
  w->listeners = old;
  close_listeners(w);
  w->listeners = keep;
}

/* A burst of connections (say, handshakes that became tunnels) leaves the heap
 * full of freed buffers between long-lived tunnels, and glibc only returns the
 * top of a heap by itself: without this the RSS would stay at the burst's peak.
 * malloc_trim gives back every free page; it costs a few milliseconds, so it
 * runs only when much is free, at most every 10 s and once after a burst. */
#define TRIM_MIN_FREE (4u << 20)
#define TRIM_PERIOD_MS 10000
#define TRIM_AFTER_BURST_MS 200

/* The buffers conn.c keeps for reuse serve connections only: with none left
 * they are memory an idle worker holds for nothing. */
static void on_conn_gone(sy_conn_env *env);

static void drop_caches(sy_worker *w) {
  sy_conn_env_trim(&w->env);
}

/* Under AddressSanitizer malloc is the sanitizer's and glibc's arenas hold
 * nothing; mallinfo2 would set them up on first use, which is not
 * thread-safe: two workers' first trims raced in it (SEGV in int_mallinfo).
 * Outside it the first malloc, on the main thread, has set them up. */
#if defined(__SANITIZE_ADDRESS__)
static void give_back_free_pages(void) {}
#else
static void give_back_free_pages(void) {
  struct mallinfo2 mi = mallinfo2();
  if (mi.fordblks > TRIM_MIN_FREE && mi.fordblks > mi.uordblks / 4) malloc_trim(0);
}
#endif

static void on_trim(uv_timer_t *t);

static void arm_burst(sy_worker *w) {
  w->idle_mark = w->accepted;
  w->trim_burst = 1;
  uv_timer_start(&w->trim_timer, on_trim, TRIM_AFTER_BURST_MS, TRIM_PERIOD_MS);
}

static void on_trim(uv_timer_t *t) {
  sy_worker *w = t->data;
  /* Quiet: no connection and none accepted since the timer was armed (or last
   * fired). Under steady short-lived traffic (handshakes that become tunnels)
   * the connection list empties many times a second, and releasing on each
   * empty moment only made the next connections fault the same pages in again. */
  int quiet = !w->env.conns && w->accepted == w->idle_mark;
  w->idle_mark = w->accepted;
  if (w->trim_burst) {
    w->trim_burst = 0;
    if (!quiet) {
      if (!w->env.conns) arm_burst(w); /* the list is empty again: time another window */
      return;
    }
    /* Counted here only: the periodic tick of an idle worker has nothing to give. */
    sy_metrics_add(w->env.metrics, "switchyard_idle_memory_releases_total", NULL, 1);
  }
  if (quiet) drop_caches(w);
  give_back_free_pages();
}

static void on_conns_idle(sy_conn_env *env) {
  sy_worker *w = container_of_env(env);
  if (w->env.stopping || w->trim_burst) return; /* already timing this quiet spell */
  arm_burst(w);
}

int sy_worker_init(sy_worker *w, unsigned id, sy_config *cfg) {
  memset(w, 0, sizeof(*w));
  w->id = id;
  /* Read here, on the main thread, whose mask is still the process's. */
  w->cpu = cfg->worker_cpu_affinity ? sy_cpu_nth(id) : -1;
  pthread_mutex_init(&w->mu, NULL);
  int rc = uv_loop_init(&w->loop);
  if (rc < 0) return rc;
  w->env.cfg = sy_config_ref(cfg);
  w->pipes = sy_pipe_pool_new(64);
  w->env.metrics = sy_metrics_new(sy_metrics_capacity(cfg));
  w->env.upool = sy_upool_new(&w->loop, 4096);
  if (!w->pipes || !w->env.metrics || !w->env.upool) return UV_ENOMEM;
  if (!(w->env.ev = sy_evset_new(&w->loop)) ||
      !(w->env.tunnels = sy_tunnel_hub_new(w->env.ev, w->pipes, sy_conn_tunnel_done)))
    return UV_ENOMEM;
  sy_tunnel_hub_set_progress(w->env.tunnels, sy_conn_tunnel_progress, 1000);
  uv_timer_init(&w->loop, &w->drain_timer);
  w->drain_timer.data = w;
  uv_timer_init(&w->loop, &w->budget_timer);
  w->budget_timer.data = w;
  uv_unref((uv_handle_t *)&w->budget_timer);
  w->env.loop = &w->loop;
  w->env.conn_gone = on_conn_gone;
  w->env.conns_idle = on_conns_idle;
  sy_conn_env_init(&w->env);
  uv_timer_init(&w->loop, &w->trim_timer);
  w->trim_timer.data = w;
  uv_timer_start(&w->trim_timer, on_trim, TRIM_PERIOD_MS, TRIM_PERIOD_MS);
  uv_unref((uv_handle_t *)&w->trim_timer); /* never what keeps a worker running */
  /* Scripts and health checks probe the first listener: it listens last, so
   * once it accepts, every listener does. */
  for (size_t i = cfg->nlisteners; i-- > 0;)
    if ((rc = bind_listener(w, &cfg->listeners[i])) < 0) return rc;
  return 0;
}

static void finish_if_drained(sy_worker *w) {
  if (w->env.stopping && !w->env.conns && !sy_tunnel_hub_count(w->env.tunnels)) {
    if (!uv_is_closing((uv_handle_t *)&w->drain_timer))
      uv_close((uv_handle_t *)&w->drain_timer, NULL);
    if (!uv_is_closing((uv_handle_t *)&w->budget_timer))
      uv_close((uv_handle_t *)&w->budget_timer, NULL);
    if (!uv_is_closing((uv_handle_t *)&w->trim_timer))
      uv_close((uv_handle_t *)&w->trim_timer, NULL);
    if (!uv_is_closing((uv_handle_t *)&w->wakeup)) uv_close((uv_handle_t *)&w->wakeup, NULL);
  }
}

static void on_conn_gone(sy_conn_env *env) {
  sy_worker *w = container_of_env(env);
  sy_limits_fds_give(2);
  __atomic_sub_fetch(&conns_total, 1, __ATOMIC_RELAXED);
  w->nconns--;
  if (w->env.stopping) {
    finish_if_drained(w);
    return;
  }
  resume_paused(w);
  __atomic_thread_fence(__ATOMIC_SEQ_CST); /* pairs with pause_listener's */
  if (at_limit(w) || !__atomic_load_n(&paused_workers, __ATOMIC_ACQUIRE)) return;
  for (unsigned i = 0; i < SY_WORKERS_MAX; i++) {
    sy_worker *x = __atomic_load_n(&registry[i], __ATOMIC_ACQUIRE);
    if (x && x != w && __atomic_load_n(&x->paused_any, __ATOMIC_ACQUIRE)) {
      __atomic_store_n(&x->resume_req, 1, __ATOMIC_RELEASE);
      uv_async_send(&x->wakeup);
    }
  }
}

static void on_drain_timeout(uv_timer_t *t) {
  sy_worker *w = t->data;
  if (w->env.conns || sy_tunnel_hub_count(w->env.tunnels))
    sy_log_info("worker %u: drain timeout, closing %llu connection(s)", w->id,
                (unsigned long long)w->nconns);
  sy_conn_close_all(&w->env);
  finish_if_drained(w);
}

static void on_wakeup(uv_async_t *a) {
  sy_worker *w = a->data;
  pthread_mutex_lock(&w->mu);
  sy_config *next = w->pending;
  w->pending = NULL;
  int stop = w->stop;
  pthread_mutex_unlock(&w->mu);
  if (next && !w->env.stopping) {
    apply_listeners(w, next);
    sy_config_unref(w->env.cfg);
    w->env.cfg = next; /* connections keep the snapshot they started with */
    resume_paused(w);
  } else if (next) {
    sy_config_unref(next);
  }
  if (__atomic_exchange_n(&w->resume_req, 0, __ATOMIC_ACQ_REL) && !w->env.stopping)
    resume_paused(w);
  if (stop && stop > w->env.stopping) {
    w->env.stopping = stop;
    close_listeners(w);
    sy_upool_free(w->env.upool); /* idle upstream connections would keep the loop alive */
    w->env.upool = NULL;
    if (stop == SY_STOP_NOW) {
      sy_conn_close_all(&w->env);
    } else {
      sy_conn_drain_all(&w->env);
      uv_timer_start(&w->drain_timer, on_drain_timeout, w->env.cfg->timeouts.drain, 0);
    }
    finish_if_drained(w);
  }
}

static void *worker_main(void *arg) {
  sy_worker *w = arg;
  if (w->cpu >= 0) {
    /* With its listeners' SO_INCOMING_CPU: a connection stays on the CPU
     * whose softirq took its packets, caches warm, no cross-CPU wake-up. */
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(w->cpu, &set);
    int rc = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    if (rc) sy_log_warn("worker %u: cannot pin to CPU %d: %s", w->id, w->cpu, strerror(rc));
  }
  sy_evset_run(w->env.ev);
  return NULL;
}

int sy_worker_start(sy_worker *w) {
  int rc = uv_async_init(&w->loop, &w->wakeup, on_wakeup);
  if (rc < 0) return rc;
  w->wakeup.data = w;
  if (pthread_create(&w->thread, NULL, worker_main, w)) return UV_EAGAIN;
  w->started = 1;
  if (w->id < SY_WORKERS_MAX) __atomic_store_n(&registry[w->id], w, __ATOMIC_RELEASE);
  return 0;
}

void sy_worker_reload(sy_worker *w, sy_config *cfg) {
  pthread_mutex_lock(&w->mu);
  if (w->pending) sy_config_unref(w->pending);
  w->pending = sy_config_ref(cfg);
  pthread_mutex_unlock(&w->mu);
  uv_async_send(&w->wakeup);
}

void sy_worker_stop(sy_worker *w, enum sy_stop how) {
  pthread_mutex_lock(&w->mu);
  if ((int)how > w->stop) w->stop = how;
  pthread_mutex_unlock(&w->mu);
  uv_async_send(&w->wakeup);
}

void sy_worker_join(sy_worker *w) {
  if (!w->started) return;
  pthread_join(w->thread, NULL);
  if (w->id < SY_WORKERS_MAX) __atomic_store_n(&registry[w->id], NULL, __ATOMIC_RELEASE);
}

static void close_walk(uv_handle_t *h, void *arg) {
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

void sy_worker_destroy(sy_worker *w) {
  if (!w->env.cfg) return; /* never initialised */
  /* Whatever is left (a failed start) closes here, and its callbacks run. */
  if (w->env.upool) { /* a failed start: close what the pool holds */
    sy_upool_free(w->env.upool);
    w->env.upool = NULL;
  }
  sy_tunnel_hub_free(w->env.tunnels); /* its handles close on the run below */
  w->env.tunnels = NULL;
  sy_evset_free(w->env.ev);
  w->env.ev = NULL;
  if (!w->started) {
    close_listeners(w);
    uv_walk(&w->loop, close_walk, NULL);
  }
  uv_run(&w->loop, UV_RUN_DEFAULT);
  uv_loop_close(&w->loop);
  if (w->pipes) sy_pipe_pool_free(w->pipes);
  drop_caches(w);
  sy_metrics_free(w->env.metrics);
  if (w->env.cfg) sy_config_unref(w->env.cfg);
  if (w->pending) sy_config_unref(w->pending);
  pthread_mutex_destroy(&w->mu);
  memset(w, 0, sizeof(*w));
}
