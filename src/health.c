#include "switchyard/health.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "switchyard/log.h"
#include "switchyard/upstream.h"

typedef struct sy_check sy_check;

struct sy_health {
  uv_loop_t *loop;
  sy_config *cfg;
  sy_metrics *metrics;
  sy_check *checks;
  size_t nchecks;
  sy_server_set **sets; /* per upstream: the servers being checked (held) */
  int open_handles;     /* freed when it reaches 0 after stop */
  int stopped;
};

struct sy_check {
  sy_health *h;
  sy_upstream_cfg *up;
  sy_server_cfg *s;
  uv_timer_t interval; /* next check */
  uv_timer_t deadline; /* this check's timeout */
  uv_tcp_t *tcp;       /* the probe in flight, or NULL */
  uv_connect_t creq;
  uv_write_t wreq;
  char req[SY_HEALTH_PATH_MAX + 512]; /* a name is at most 253 bytes */
  char resp[64];
  size_t resp_len;
};

static void health_free(sy_health *h) {
  for (size_t u = 0; h->sets && u < h->cfg->nupstreams; u++)
    sy_server_set_unref(h->sets[u]);
  free(h->sets);
  sy_config_unref(h->cfg);
  free(h->checks);
  free(h);
}

static void on_handle_closed(uv_handle_t *hd) {
  sy_health *h = hd->data;
  if (--h->open_handles == 0 && h->stopped) health_free(h);
}

static void on_tcp_closed(uv_handle_t *hd) {
  sy_health *h = ((sy_check *)hd->data)->h;
  free(hd);
  if (--h->open_handles == 0 && h->stopped) health_free(h);
}

static void probe_close(sy_check *k) {
  if (k->tcp) {
    uv_close((uv_handle_t *)k->tcp, on_tcp_closed);
    k->tcp = NULL;
  }
}

static void record(sy_check *k, int ok, const char *why) {
  sy_health *h = k->h;
  uv_timer_stop(&k->deadline);
  probe_close(k);
  sy_buf labels = {0};
  sy_metrics_label(&labels, "upstream", k->up->name, strlen(k->up->name));
  sy_metrics_label(&labels, "server", k->s->addr.text, strlen(k->s->addr.text));
  sy_metrics_label(&labels, "result", ok ? "ok" : "failed", ok ? 2 : 6);
  sy_buf_append(&labels, "", 1);
  sy_metrics_add(h->metrics, "switchyard_health_checks_total", labels.p, 1);
  sy_buf_free(&labels);
  sy_server_rt *rt = k->s->rt;
  if (ok) {
    rt->probe_fail_run = 0;
    if (++rt->probe_ok_run >= k->up->health.healthy &&
        __atomic_load_n(&rt->down, __ATOMIC_RELAXED)) {
      __atomic_store_n(&rt->fails, 0, __ATOMIC_RELAXED);
      __atomic_store_n(&rt->down, 0, __ATOMIC_RELAXED);
      sy_log_info("upstream %s: server %s is healthy again", k->up->name, k->s->addr.text);
    }
  } else {
    rt->probe_ok_run = 0;
    if (++rt->probe_fail_run >= k->up->health.unhealthy && sy_server_eject(rt))
      sy_log_error("upstream %s: server %s is down (health check: %s)", k->up->name,
                   k->s->addr.text, why);
  }
}

static void on_deadline(uv_timer_t *t) {
  record(t->data, 0, "timed out");
}

static void resp_alloc(uv_handle_t *hd, size_t sz, uv_buf_t *buf) {
  sy_check *k = hd->data;
  buf->base = k->resp + k->resp_len;
  buf->len = sizeof(k->resp) - k->resp_len - 1;
}

static void on_resp(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  sy_check *k = s->data;
  if (n < 0 || (n == 0 && k->resp_len == sizeof(k->resp) - 1)) {
    record(k, 0, "connection closed before a status line");
    return;
  }
  k->resp_len += (size_t)n;
  k->resp[k->resp_len] = 0;
  if (k->resp_len < 12) /* "HTTP/1.1 200" */
    return;
  int status = 0;
  if (sscanf(k->resp, "HTTP/1.%*d %d", &status) != 1) {
    record(k, 0, "not an HTTP response");
    return;
  }
  char why[32];
  snprintf(why, sizeof(why), "status %d", status);
  record(k, status >= 200 && status < 400, why);
}

static void on_req_written(uv_write_t *req, int status) {
  sy_check *k = req->data;
  if (status < 0 && k->tcp && (uv_stream_t *)k->tcp == req->handle)
    record(k, 0, uv_strerror(status));
}

static void on_probe_connect(uv_connect_t *req, int status) {
  sy_check *k = req->data;
  if (!k->tcp || (uv_stream_t *)k->tcp != req->handle)
    return; /* an old probe that was already given up */
  if (status < 0) {
    record(k, 0, uv_strerror(status));
    return;
  }
  uv_buf_t b = uv_buf_init(k->req, (unsigned)strlen(k->req));
  k->wreq.data = k;
  if (uv_write(&k->wreq, (uv_stream_t *)k->tcp, &b, 1, on_req_written) < 0 ||
      uv_read_start((uv_stream_t *)k->tcp, resp_alloc, on_resp) < 0)
    record(k, 0, "write failed");
}

static void on_interval(uv_timer_t *t) {
  sy_check *k = t->data;
  if (k->tcp) return; /* the previous probe has not ended (its deadline will end it) */
  k->tcp = malloc(sizeof(uv_tcp_t));
  if (!k->tcp) return;
  uv_tcp_init(k->h->loop, k->tcp);
  k->tcp->data = k;
  k->h->open_handles++;
  k->resp_len = 0;
  k->creq.data = k;
  if (uv_tcp_connect(&k->creq, k->tcp, (const struct sockaddr *)&k->s->addr.sa, on_probe_connect) <
      0) {
    record(k, 0, "connect failed");
    return;
  }
  uv_timer_start(&k->deadline, on_deadline, k->up->health.timeout, 0);
}

/* Checks the servers of each upstream's current set (DNS may change it: the
 * caller starts the checks again then). */
sy_health *sy_health_start(uv_loop_t *loop, sy_config *cfg, sy_metrics *m) {
  size_t n = 0;
  sy_health *h = calloc(1, sizeof(*h));
  if (!h || !(h->sets = calloc(cfg->nupstreams ? cfg->nupstreams : 1, sizeof(*h->sets)))) {
    free(h);
    return NULL;
  }
  h->cfg = sy_config_ref(cfg);
  for (size_t u = 0; u < cfg->nupstreams; u++)
    if (cfg->upstreams[u].health.enabled) {
      h->sets[u] = sy_upstream_acquire(&cfg->upstreams[u]);
      n += h->sets[u] ? h->sets[u]->nservers : 0;
    }
  if (!n || !(h->checks = calloc(n, sizeof(sy_check)))) {
    health_free(h);
    return NULL;
  }
  h->loop = loop;
  h->metrics = m;
  for (size_t u = 0; u < cfg->nupstreams; u++) {
    sy_upstream_cfg *up = &cfg->upstreams[u];
    if (!up->health.enabled) continue;
    if (up->tls.enabled) {
      /* Probes speak cleartext HTTP only: against a TLS server they would
       * fail and eject every server. Passive ejection still applies. */
      sy_log_error("upstream %s: active health checks are not supported over TLS yet; "
                   "relying on passive ejection",
                   up->name);
      continue;
    }
    for (size_t i = 0; h->sets[u] && i < h->sets[u]->nservers; i++) {
      sy_check *k = &h->checks[h->nchecks++];
      k->h = h;
      k->up = up;
      k->s = &h->sets[u]->servers[i];
      __atomic_store_n(&k->s->rt->probed, 1, __ATOMIC_RELAXED);
      /* Host as written: for a server found by DNS, its name, not the
       * address it resolved to. */
      const char *host = k->s->addr.host;
      int v6 = strchr(host, ':') != NULL;
      snprintf(k->req, sizeof(k->req),
               "GET %s HTTP/1.1\r\nHost: %s%s%s:%u\r\nUser-Agent: switchyard-health\r\n"
               "Connection: close\r\n\r\n",
               up->health.path ? up->health.path : "/", v6 ? "[" : "", host, v6 ? "]" : "",
               (unsigned)k->s->addr.port);
      uv_timer_init(loop, &k->interval);
      uv_timer_init(loop, &k->deadline);
      k->interval.data = k->deadline.data = k;
      h->open_handles += 2;
      /* First probe at once: a dead server should not wait an interval. */
      uv_timer_start(&k->interval, on_interval, 0, up->health.interval);
    }
  }
  if (!h->nchecks) {
    health_free(h);
    return NULL;
  }
  return h;
}

void sy_health_stop(sy_health *h) {
  if (!h) return;
  h->stopped = 1;
  for (size_t i = 0; i < h->nchecks; i++) {
    sy_check *k = &h->checks[i];
    __atomic_store_n(&k->s->rt->probed, 0, __ATOMIC_RELAXED);
    probe_close(k);
    k->interval.data = k->deadline.data = h;
    uv_close((uv_handle_t *)&k->interval, on_handle_closed);
    uv_close((uv_handle_t *)&k->deadline, on_handle_closed);
  }
}
