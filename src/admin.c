#include "switchyard/admin.h"

#include <dirent.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>

#include "switchyard/flow.h"
#include "switchyard/http.h"
#include "switchyard/resolver.h"
#include "switchyard/limits.h"
#include "switchyard/log.h"
#include "switchyard/metrics.h"
#include "switchyard/status.h"
#include "switchyard/upstream.h"
#include "switchyard/worker.h"

#define SY_ADMIN_MAX_REQ 8192
/* Connections open at once; past it a new one is closed at accept. Probes
 * and scrapes take milliseconds, so this many are only ever held open by
 * clients that stall, each for limits.header_timeout at most. */
#define SY_ADMIN_MAX_CONNS 64

typedef struct sy_admin_conn sy_admin_conn;

struct sy_admin {
  uv_tcp_t tcp;
  uv_timer_t tick;
  int open_handles; /* the listener, the tick and every connection's two */
  int stopping;     /* freed when the last handle is closed */
  sy_admin_conn *conns;
  unsigned nconns;
  sy_admin_state *st;
  sy_status_history history;
};

struct sy_admin_conn {
  uv_tcp_t tcp;
  uv_timer_t deadline; /* for the head, then again for the answer */
  sy_admin *a;
  sy_admin_conn *prev, *next;
  int closing, open_handles; /* freed when both handles are closed */
  char buf[SY_ADMIN_MAX_REQ];
  size_t len;
  uv_write_t wreq;
  sy_buf out;
};

static sy_metrics **tables(sy_admin_state *st, size_t *n) {
  sy_metrics **ms = calloc(st->nworkers + 1, sizeof(*ms));
  size_t k = 0;
  if (!ms) return NULL;
  for (unsigned i = 0; i < st->nworkers; i++)
    if (st->workers[i].env.metrics) ms[k++] = st->workers[i].env.metrics;
  if (st->main) ms[k++] = st->main;
  *n = k;
  return ms;
}

static void pipes(sy_admin_state *st, sy_pipe_pool_stats *sum) {
  memset(sum, 0, sizeof(*sum));
  for (unsigned i = 0; i < st->nworkers; i++) {
    if (!st->workers[i].pipes) continue;
    sy_pipe_pool_stats p;
    sy_pipe_pool_stats_get(st->workers[i].pipes, &p);
    sum->in_use += p.in_use;
    sum->idle += p.idle;
    sum->created += p.created;
    sum->closed += p.closed;
  }
}

static void buffers(sy_admin_state *st, uint64_t *in_use, uint64_t *idle) {
  *in_use = *idle = 0;
  for (unsigned i = 0; i < st->nworkers; i++) {
    uint64_t u, d;
    sy_flow_pool_bytes(&st->workers[i].env.flows, &u, &d);
    *in_use += u;
    *idle += d;
  }
}

/* Descriptors open now: what runs out first in a proxy (two per tunnel). */
static long open_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return -1;
  long n = 0;
  for (struct dirent *e; (e = readdir(d));)
    n += e->d_name[0] != '.';
  closedir(d);
  return n - 1; /* the directory's own descriptor */
}

static void single(sy_buf *b, const char *name, long long v) {
  sy_metrics_header(b, name);
  sy_buf_appendf(b, "%s %lld\n", name, v);
}

/* Per-server series kept in the config snapshot's server state, which every
 * worker and the health checker share (so no worker table holds them). */
enum server_col { COL_UP, COL_ACTIVE, COL_EJECTIONS };

static void server_family(sy_buf *b, const sy_config *cfg, const char *name, enum server_col col) {
  sy_metrics_header(b, name);
  for (size_t u = 0; u < cfg->nupstreams; u++) {
    sy_upstream_cfg *up = &cfg->upstreams[u];
    sy_server_set *set = sy_upstream_acquire(up); /* what DNS gave, as requests see it */
    for (size_t i = 0; set && i < set->nservers; i++) {
      const sy_server_rt *rt = set->servers[i].rt;
      long long v = col == COL_UP ? !__atomic_load_n(&rt->down, __ATOMIC_RELAXED)
                    : col == COL_ACTIVE
                        ? __atomic_load_n(&rt->active, __ATOMIC_RELAXED)
                        : (long long)__atomic_load_n(&rt->ejections, __ATOMIC_RELAXED);
      sy_buf l = {0};
      sy_metrics_label(&l, "upstream", up->name, strlen(up->name));
      const char *text = set->servers[i].addr.text;
      sy_metrics_label(&l, "server", text, strlen(text));
      sy_buf_appendf(b, "%s{%.*s} %lld\n", name, (int)l.len, l.p, v);
      sy_buf_free(&l);
    }
    sy_server_set_unref(set);
  }
}

static void render_metrics(sy_admin_state *st, sy_buf *b) {
  size_t n;
  sy_metrics **ms = tables(st, &n);
  if (ms) sy_metrics_render(ms, n, b);
  free(ms);
  sy_pipe_pool_stats p;
  pipes(st, &p);
  sy_metrics_header(b, "switchyard_pipes");
  sy_buf_appendf(b,
                 "switchyard_pipes{state=\"in_use\"} %llu\n"
                 "switchyard_pipes{state=\"idle\"} %llu\n",
                 (unsigned long long)p.in_use, (unsigned long long)p.idle);
  single(b, "switchyard_pipes_created_total", (long long)p.created);
  uint64_t used, idle;
  buffers(st, &used, &idle);
  sy_metrics_header(b, "switchyard_buffer_bytes");
  sy_buf_appendf(b,
                 "switchyard_buffer_bytes{state=\"in_use\"} %llu\n"
                 "switchyard_buffer_bytes{state=\"idle\"} %llu\n",
                 (unsigned long long)used, (unsigned long long)idle);
  sy_metrics_header(b, "switchyard_reloads_total");
  sy_buf_appendf(b,
                 "switchyard_reloads_total{result=\"ok\"} %llu\n"
                 "switchyard_reloads_total{result=\"failed\"} %llu\n",
                 (unsigned long long)st->reloads_ok, (unsigned long long)st->reloads_failed);
  single(b, "switchyard_config_generation", (long long)st->generation);
  single(b, "switchyard_config_last_reload_success_timestamp_seconds",
         (long long)st->last_reload_success);
  single(b, "switchyard_workers", st->nworkers);
  single(b, "switchyard_access_log_dropped_total", (long long)sy_access_log_dropped());
  sy_buf l = {0};
  sy_metrics_label(&l, "version", st->version ? st->version : "",
                   st->version ? strlen(st->version) : 0);
  sy_metrics_header(b, "switchyard_build_info");
  sy_buf_appendf(b, "switchyard_build_info{%.*s} 1\n", (int)l.len, l.p);
  sy_buf_free(&l);
  single(b, "switchyard_start_time_seconds", (long long)st->start_time);
  long fds = open_fds();
  if (fds >= 0) single(b, "switchyard_open_fds", fds);
  if (sy_limits_fds_budget() != UINT64_MAX) {
    single(b, "switchyard_fd_budget", (long long)sy_limits_fds_budget());
    single(b, "switchyard_fd_budget_used", (long long)sy_limits_fds_used());
  }
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
    single(b, "switchyard_max_fds", rl.rlim_cur == RLIM_INFINITY ? -1 : (long long)rl.rlim_cur);
  server_family(b, st->cfg, "switchyard_upstream_server_up", COL_UP);
  server_family(b, st->cfg, "switchyard_upstream_active_connections", COL_ACTIVE);
  server_family(b, st->cfg, "switchyard_upstream_ejections_total", COL_EJECTIONS);
}

/* The page's figures come from the same text /metrics serves. */
static void render_status_json(sy_admin *a, sy_buf *b) {
  sy_buf m = {0};
  render_metrics(a->st, &m);
  sy_status_json(b, a->st, &a->history, m.p ? m.p : "", m.len);
  sy_buf_free(&m);
}

/* One sample a second for the graphs, taken whether or not anyone looks, so
 * the page shows the last minutes as soon as it opens. */
static void on_tick(uv_timer_t *t) {
  sy_admin *a = t->data;
  sy_buf m = {0};
  render_metrics(a->st, &m);
  sy_status_record(&a->history, m.p ? m.p : "", m.len);
  sy_buf_free(&m);
}

static void respond_with(sy_admin_conn *ac, int status, const char *type, const sy_buf *body,
                         const char *extra) {
  sy_buf_appendf(&ac->out,
                 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
                 "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                 status,
                 status == 200   ? "OK"
                 : status == 401 ? "Unauthorized"
                                 : sy_http_reason(status),
                 type, body->len, extra);
  sy_buf_append(&ac->out, body->p ? body->p : "", body->len);
}

static void respond(sy_admin_conn *ac, int status, const char *type, const sy_buf *body) {
  respond_with(ac, status, type, body, "");
}

/* ---- authentication ---------------------------------------------------------- */

/* Probes stay open: a kubelet or a container HEALTHCHECK has no token. */
static int is_probe(const char *path) {
  return strcmp(path, "/healthz") == 0 || strcmp(path, "/readyz") == 0;
}

/* The Authorization field's value in a request head (NUL-terminated), or NULL. */
static const char *auth_value(const char *head, size_t *len) {
  for (const char *p = strstr(head, "\r\n"); p && p[2] != '\r'; p = strstr(p + 2, "\r\n")) {
    const char *line = p + 2;
    if (strncasecmp(line, "authorization:", 14) != 0) continue;
    const char *v = line + 14, *end = strstr(v, "\r\n");
    while (*v == ' ' || *v == '\t')
      v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
      end--;
    *len = (size_t)(end - v);
    return v;
  }
  return NULL;
}

/* Compares digests, so neither the content nor the length of the token
 * shows in the time taken. */
static int token_equal(const char *given, size_t n, const char *token) {
  unsigned char a[SHA256_DIGEST_LENGTH], b[SHA256_DIGEST_LENGTH];
  SHA256((const unsigned char *)given, n, a);
  SHA256((const unsigned char *)token, strlen(token), b);
  return CRYPTO_memcmp(a, b, sizeof(a)) == 0;
}

/* "Bearer TOKEN", or "Basic base64(user:TOKEN)" (any user) for browsers,
 * which prompt for it after a 401 with a Basic challenge. */
static int authorized(const char *token, const char *head) {
  size_t n;
  const char *v = auth_value(head, &n);
  if (!v) return 0;
  if (n > 7 && strncasecmp(v, "Bearer ", 7) == 0) {
    v += 7, n -= 7;
    while (n && *v == ' ')
      v++, n--;
    return token_equal(v, n, token);
  }
  if (n > 6 && strncasecmp(v, "Basic ", 6) == 0) {
    v += 6, n -= 6;
    while (n && *v == ' ')
      v++, n--;
    if (n == 0 || n % 4 || n > 8192) return 0;
    unsigned char dec[8192 / 4 * 3 + 1];
    int m = EVP_DecodeBlock(dec, (const unsigned char *)v, (int)n);
    if (m < 0) return 0;
    if (n >= 1 && v[n - 1] == '=') m--; /* EVP_DecodeBlock counts the padding as bytes */
    if (n >= 2 && v[n - 2] == '=') m--;
    const unsigned char *colon = memchr(dec, ':', (size_t)m);
    if (!colon) return 0;
    size_t plen = (size_t)m - (size_t)(colon + 1 - dec);
    int ok = token_equal((const char *)colon + 1, plen, token);
    OPENSSL_cleanse(dec, sizeof(dec));
    return ok;
  }
  return 0;
}

static void route(sy_admin_conn *ac, const char *method, const char *path) {
  sy_admin_state *st = ac->a->st;
  sy_buf body = {0};
  int head = strcmp(method, "HEAD") == 0;
  const char *token = st->cfg->admin_token;
  if (token && !is_probe(path) && !authorized(token, ac->buf)) {
    sy_buf_appendf(&body, "unauthorized: send Authorization: Bearer <admin token>\n");
    respond_with(ac, 401, "text/plain", &body,
                 "WWW-Authenticate: Bearer realm=\"switchyard admin\"\r\n"
                 "WWW-Authenticate: Basic realm=\"switchyard admin\", charset=\"UTF-8\"\r\n");
  } else if (strcmp(method, "GET") != 0 && !head) {
    sy_buf_appendf(&body, "method not allowed\n");
    respond(ac, 405, "text/plain", &body);
  } else if (strcmp(path, "/healthz") == 0) {
    sy_buf_appendf(&body, "ok\n");
    respond(ac, 200, "text/plain", &body);
  } else if (strcmp(path, "/readyz") == 0) {
    int resolving = !st->draining && !sy_resolver_settled(st->resolver);
    sy_buf_appendf(&body, st->draining ? "draining\n" : resolving ? "resolving\n" : "ready\n");
    respond(ac, st->draining || resolving ? 503 : 200, "text/plain", &body);
  } else if (strcmp(path, "/metrics") == 0) {
    render_metrics(st, &body);
    respond(ac, 200, "text/plain; version=0.0.4", &body);
  } else if (strcmp(path, "/status.json") == 0) {
    render_status_json(ac->a, &body);
    respond(ac, 200, "application/json", &body);
  } else if (strcmp(path, "/status") == 0 || strcmp(path, "/") == 0) {
    size_t n;
    const char *page = sy_status_page(&n);
    sy_buf_append(&body, page, n);
    respond_with(ac, 200, "text/html; charset=utf-8", &body,
                 "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; "
                 "style-src 'unsafe-inline'; connect-src 'self'\r\n"
                 "X-Content-Type-Options: nosniff\r\n");
  } else {
    sy_buf_appendf(&body, "not found\n");
    respond(ac, 404, "text/plain", &body);
  }
  if (head) {
    char *end = memmem(ac->out.p, ac->out.len, "\r\n\r\n", 4);
    if (end) ac->out.len = (size_t)(end + 4 - ac->out.p);
  }
  sy_buf_free(&body);
}

static void admin_handle_closed(sy_admin *a) {
  if (--a->open_handles == 0 && a->stopping) free(a);
}

static void on_conn_handle_closed(uv_handle_t *h) {
  sy_admin_conn *ac = h->data;
  sy_admin *a = ac->a;
  if (--ac->open_handles == 0) {
    sy_buf_free(&ac->out);
    free(ac);
  }
  admin_handle_closed(a);
}

static void conn_close(sy_admin_conn *ac) {
  if (ac->closing) return;
  ac->closing = 1;
  sy_admin *a = ac->a;
  if (ac->prev)
    ac->prev->next = ac->next;
  else
    a->conns = ac->next;
  if (ac->next) ac->next->prev = ac->prev;
  a->nconns--;
  uv_close((uv_handle_t *)&ac->tcp, on_conn_handle_closed);
  uv_close((uv_handle_t *)&ac->deadline, on_conn_handle_closed);
}

static void on_deadline(uv_timer_t *t) {
  conn_close(t->data);
}

/* limits.header_timeout of the snapshot in force, as for traffic. */
static void deadline_arm(sy_admin_conn *ac) {
  uv_timer_start(&ac->deadline, on_deadline, ac->a->st->cfg->timeouts.header, 0);
}

static void on_written(uv_write_t *req, int status) {
  conn_close(req->data);
}

static void conn_alloc(uv_handle_t *h, size_t sz, uv_buf_t *buf) {
  sy_admin_conn *ac = (sy_admin_conn *)h;
  buf->base = ac->buf + ac->len;
  buf->len = sizeof(ac->buf) - ac->len - 1;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  sy_admin_conn *ac = s->data;
  if (n < 0 || (n == 0 && ac->len == sizeof(ac->buf) - 1)) {
    conn_close(ac);
    return;
  }
  ac->len += (size_t)n;
  ac->buf[ac->len] = 0;
  if (!strstr(ac->buf, "\r\n\r\n")) {
    if (ac->len >= sizeof(ac->buf) - 1) conn_close(ac);
    return;
  }
  uv_read_stop(s);
  deadline_arm(ac); /* a client that does not read its answer holds it no longer */
  char method[16] = "", path[1024] = "";
  if (sscanf(ac->buf, "%15s %1023s", method, path) != 2) {
    sy_buf body = {0};
    sy_buf_appendf(&body, "bad request\n");
    respond(ac, 400, "text/plain", &body);
    sy_buf_free(&body);
  } else {
    char *q = strchr(path, '?');
    if (q) *q = 0;
    route(ac, method, path);
  }
  uv_buf_t b = uv_buf_init(ac->out.p, (unsigned)ac->out.len);
  ac->wreq.data = ac;
  if (uv_write(&ac->wreq, s, &b, 1, on_written) < 0) conn_close(ac);
}

static void on_connection(uv_stream_t *server, int status) {
  sy_admin *a = server->data;
  if (status < 0) {
    /* EMFILE and the like repeat on every poll until they clear */
    sy_log_every_second(SY_LOG_ERROR, "admin listener: accept failed: %s", uv_strerror(status));
    return;
  }
  sy_admin_conn *ac = calloc(1, sizeof(*ac));
  if (!ac) return;
  ac->a = a;
  uv_tcp_init(server->loop, &ac->tcp);
  uv_timer_init(server->loop, &ac->deadline);
  ac->tcp.data = ac->deadline.data = ac;
  ac->open_handles = 2;
  a->open_handles += 2;
  ac->next = a->conns;
  if (a->conns) a->conns->prev = ac;
  a->conns = ac;
  a->nconns++;
  if (uv_accept(server, (uv_stream_t *)&ac->tcp) < 0) {
    conn_close(ac);
    return;
  }
  if (a->nconns > SY_ADMIN_MAX_CONNS) {
    sy_log_every_second(SY_LOG_WARN, "admin listener: %d connections open, closing a new one",
                        SY_ADMIN_MAX_CONNS);
    conn_close(ac);
    return;
  }
  deadline_arm(ac);
  if (uv_read_start((uv_stream_t *)&ac->tcp, conn_alloc, on_read) < 0) conn_close(ac);
}

static void admin_closed(uv_handle_t *h) {
  admin_handle_closed(h->data);
}

/* The listener, the tick and every open connection: the loop then has
 * nothing of ours left, and a client in the middle of a request cannot
 * reach the freed state. */
static void admin_close(sy_admin *a) {
  a->stopping = 1;
  while (a->conns)
    conn_close(a->conns);
  uv_close((uv_handle_t *)&a->tcp, admin_closed);
  uv_close((uv_handle_t *)&a->tick, admin_closed);
}

sy_admin *sy_admin_start(uv_loop_t *loop, const sy_addr *addr, sy_admin_state *st) {
  sy_admin *a = calloc(1, sizeof(*a));
  if (!a) return NULL;
  a->st = st;
  uv_tcp_init(loop, &a->tcp);
  uv_timer_init(loop, &a->tick);
  a->tcp.data = a->tick.data = a;
  a->open_handles = 2;
  int rc = uv_tcp_bind(&a->tcp, (const struct sockaddr *)&addr->sa, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&a->tcp, 128, on_connection);
  if (rc < 0) {
    sy_log_error("admin listener on %s: %s", addr->text, uv_strerror(rc));
    admin_close(a);
    return NULL;
  }
  on_tick(&a->tick); /* the baseline: the first second's rate is measured from here */
  uv_timer_start(&a->tick, on_tick, 1000, 1000);
  return a;
}

void sy_admin_stop(sy_admin *a) {
  if (a) admin_close(a);
}
