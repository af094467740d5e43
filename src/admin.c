#include "switchyard/admin.h"

#include <stdlib.h>
#include <string.h>

#include "switchyard/http.h"
#include "switchyard/log.h"
#include "switchyard/metrics.h"
#include "switchyard/upstream.h"

#define SY_ADMIN_MAX_REQ 8192

struct sy_admin {
  uv_tcp_t tcp;
  sy_admin_state *st;
};

typedef struct sy_admin_conn {
  uv_tcp_t tcp;
  sy_admin *a;
  char buf[SY_ADMIN_MAX_REQ];
  size_t len;
  uv_write_t wreq;
  sy_buf out;
} sy_admin_conn;

static const char status_page[] =
    "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Switchyard status</title>\n"
    "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}.down{color:#b00}</style>\n"
    "</head><body><h1>Switchyard</h1>\n"
    "<p>generation <span id=\"generation\">?</span>, updated <span id=\"updated\">never</span>"
    "</p>\n<table id=\"counts\"><tr><th>connections open</th><td id=\"conns\">?</td></tr>"
    "<tr><th>requests</th><td id=\"requests\">?</td></tr>"
    "<tr><th>tunnels open</th><td id=\"tunnels_open\">?</td></tr>"
    "<tr><th>pipes in use</th><td id=\"pipes\">?</td></tr></table>\n"
    "<h2>Tunnels by route and protocol</h2><table id=\"tunnels\"><tr><th>route</th>"
    "<th>protocol</th><th>open</th><th>total</th></tr></table>\n"
    "<h2>Upstreams</h2><table id=\"upstreams\"><tr><th>upstream</th><th>server</th>"
    "<th>health</th><th>active connections</th></tr></table>\n"
    "<script>\n"
    "function cell(r,t,c){var d=r.insertCell();d.textContent=t;if(c)d.className=c;}\n"
    "function fill(id,rows,f){var t=document.getElementById(id);"
    "while(t.rows.length>1)t.deleteRow(1);rows.forEach(function(x){f(t.insertRow(),x);});}\n"
    "function refresh(){fetch('/status.json').then(function(r){return r.json();})"
    ".then(function(s){\n"
    " document.getElementById('generation').textContent=s.generation;\n"
    " document.getElementById('conns').textContent=s.connections_open;\n"
    " document.getElementById('requests').textContent=s.requests;\n"
    " document.getElementById('tunnels_open').textContent=s.tunnels_open;\n"
    " document.getElementById('pipes').textContent=s.pipes_in_use;\n"
    " document.getElementById('updated').textContent=new Date().toISOString();\n"
    " fill('tunnels',s.tunnels,function(r,x){cell(r,x.route);cell(r,x.protocol);"
    "cell(r,x.open);cell(r,x.total);});\n"
    " var ups=[];s.upstreams.forEach(function(u){u.servers.forEach(function(v){"
    "ups.push([u.name,v]);});});\n"
    " fill('upstreams',ups,function(r,x){cell(r,x[0]);cell(r,x[1].address);"
    "cell(r,x[1].up?'up':'down',x[1].up?'':'down');cell(r,x[1].active);});\n"
    "}).catch(function(){});}\n"
    "refresh();setInterval(refresh,1000);\n"
    "</script></body></html>\n";

static sy_metrics **tables(sy_admin_state *st, size_t *n) {
  sy_metrics **ms = calloc(st->nworkers + 1, sizeof(*ms));
  size_t k = 0;
  if (!ms) return NULL;
  for (unsigned i = 0; i < st->nworkers; i++)
    if (st->workers[i].metrics) ms[k++] = st->workers[i].metrics;
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

static void render_metrics(sy_admin_state *st, sy_buf *b) {
  size_t n;
  sy_metrics **ms = tables(st, &n);
  if (ms) sy_metrics_render(ms, n, b);
  free(ms);
  sy_pipe_pool_stats p;
  pipes(st, &p);
  sy_buf_appendf(b,
                 "# TYPE switchyard_pipes gauge\nswitchyard_pipes{state=\"in_use\"} %llu\n"
                 "switchyard_pipes{state=\"idle\"} %llu\n",
                 (unsigned long long)p.in_use, (unsigned long long)p.idle);
  sy_buf_appendf(b,
                 "# TYPE switchyard_pipes_created_total counter\n"
                 "switchyard_pipes_created_total %llu\n",
                 (unsigned long long)p.created);
  sy_buf_appendf(b,
                 "# TYPE switchyard_reloads_total counter\n"
                 "switchyard_reloads_total{result=\"ok\"} %llu\n"
                 "switchyard_reloads_total{result=\"failed\"} %llu\n",
                 (unsigned long long)st->reloads_ok, (unsigned long long)st->reloads_failed);
  sy_buf_appendf(b,
                 "# TYPE switchyard_config_generation gauge\nswitchyard_config_generation %llu\n",
                 (unsigned long long)st->generation);
  sy_buf_appendf(b, "# TYPE switchyard_workers gauge\nswitchyard_workers %u\n", st->nworkers);
  sy_buf_appendf(b,
                 "# TYPE switchyard_access_log_dropped_total counter\n"
                 "switchyard_access_log_dropped_total %llu\n",
                 (unsigned long long)sy_access_log_dropped());
  for (int pass = 0; pass < 2; pass++) {
    const char *name =
        pass ? "switchyard_upstream_active_connections" : "switchyard_upstream_server_up";
    sy_buf_appendf(b, "# TYPE %s gauge\n", name);
    for (size_t u = 0; u < st->cfg->nupstreams; u++) {
      sy_upstream_cfg *up = &st->cfg->upstreams[u];
      sy_server_set *set = sy_upstream_acquire(up);
      for (size_t i = 0; set && i < set->nservers; i++) {
        const sy_server_rt *rt = set->servers[i].rt;
        const char *text = set->servers[i].addr.text;
        sy_buf l = {0};
        sy_metrics_label(&l, "upstream", up->name, strlen(up->name));
        sy_metrics_label(&l, "server", text, strlen(text));
        sy_buf_appendf(b, "%s{%.*s} %d\n", name, (int)l.len, l.p,
                       pass ? __atomic_load_n(&rt->active, __ATOMIC_RELAXED)
                            : !__atomic_load_n(&rt->down, __ATOMIC_RELAXED));
        sy_buf_free(&l);
      }
      sy_server_set_unref(set);
    }
  }
}

/* A label value as the exposition format escaped it, back to its text. */
static size_t unescape_label(const char *p, char *out, size_t cap) {
  size_t n = 0;
  for (; *p && *p != '"' && n + 1 < cap; p++) {
    if (*p == '\\' && p[1]) {
      p++;
      out[n++] = *p == 'n' ? '\n' : *p;
    } else {
      out[n++] = *p;
    }
  }
  out[n] = 0;
  return n;
}

/* Tunnel series to JSON rows: the label text is already quoted and escaped
 * for Prometheus, which for these names is valid JSON string content too. */
struct tun_rows {
  sy_buf *b;
  int first;
  sy_metrics **ms;
  size_t n;
};

static void tunnel_row(const char *name, const char *labels, int64_t v, void *arg) {
  struct tun_rows *t = arg;
  if (strcmp(name, "switchyard_tunnels_total") != 0) return;
  const char *r = strstr(labels, "route=\""), *p = strstr(labels, "protocol=\"");
  if (!r || !p) return;
  int64_t open = sy_metrics_get(t->ms, t->n, "switchyard_tunnels_open", labels);
  char route[512], proto[512];
  size_t rl = unescape_label(r + 7, route, sizeof(route));
  size_t pl = unescape_label(p + 10, proto, sizeof(proto));
  sy_buf_appendf(t->b, "%s{", t->first ? "" : ",");
  sy_json_str(t->b, "route", route, rl, 0);
  sy_json_str(t->b, "protocol", proto, pl, 1);
  sy_buf_appendf(t->b, ",\"open\":%lld,\"total\":%lld}", (long long)open, (long long)v);
  t->first = 0;
}

struct fam {
  const char *f;
  int64_t v;
};

static void fam_add(const char *name, const char *labels, int64_t v, void *arg) {
  struct fam *f = arg;
  if (strcmp(name, f->f) == 0) f->v += v;
}

static int64_t family_sum(sy_metrics **ms, size_t n, const char *family) {
  struct fam f = {family, 0};
  sy_metrics_each(ms, n, fam_add, &f);
  return f.v;
}

static void render_status_json(sy_admin_state *st, sy_buf *b) {
  size_t n;
  sy_metrics **ms = tables(st, &n);
  if (!ms) return;
  sy_pipe_pool_stats p;
  pipes(st, &p);
  sy_buf_appendf(b,
                 "{\"generation\":%llu,\"draining\":%s,\"connections_open\":%lld,"
                 "\"requests\":%lld,\"tunnels_open\":%lld,\"pipes_in_use\":%llu,\"tunnels\":[",
                 (unsigned long long)st->generation, st->draining ? "true" : "false",
                 (long long)family_sum(ms, n, "switchyard_connections_open"),
                 (long long)family_sum(ms, n, "switchyard_requests_total"),
                 (long long)family_sum(ms, n, "switchyard_tunnels_open"),
                 (unsigned long long)p.in_use);
  struct tun_rows t = {b, 1, ms, n};
  sy_metrics_each(ms, n, tunnel_row, &t);
  sy_buf_appendf(b, "],\"upstreams\":[");
  for (size_t u = 0; u < st->cfg->nupstreams; u++) {
    sy_upstream_cfg *up = &st->cfg->upstreams[u];
    sy_server_set *set = sy_upstream_acquire(up);
    sy_buf_appendf(b, "%s{", u ? "," : "");
    sy_json_str(b, "name", up->name, strlen(up->name), 0);
    sy_buf_appendf(b, ",\"servers\":[");
    for (size_t i = 0; set && i < set->nservers; i++) {
      const sy_server_cfg *s = &set->servers[i];
      sy_buf_appendf(b, "%s{", i ? "," : "");
      sy_json_str(b, "address", s->addr.text, strlen(s->addr.text), 0);
      sy_buf_appendf(b, ",\"up\":%s,\"active\":%d}",
                     __atomic_load_n(&s->rt->down, __ATOMIC_RELAXED) ? "false" : "true",
                     __atomic_load_n(&s->rt->active, __ATOMIC_RELAXED));
    }
    sy_server_set_unref(set);
    sy_buf_appendf(b, "]}");
  }
  sy_buf_appendf(b, "]}\n");
  free(ms);
}

static void respond(sy_admin_conn *ac, int status, const char *type, const sy_buf *body) {
  sy_buf_appendf(&ac->out,
                 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                 "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                 status, status == 200 ? "OK" : sy_http_reason(status), type, body->len);
  sy_buf_append(&ac->out, body->p ? body->p : "", body->len);
}

static void route(sy_admin_conn *ac, const char *method, const char *path) {
  sy_admin_state *st = ac->a->st;
  sy_buf body = {0};
  int head = strcmp(method, "HEAD") == 0;
  if (strcmp(method, "GET") != 0 && !head) {
    sy_buf_appendf(&body, "method not allowed\n");
    respond(ac, 405, "text/plain", &body);
  } else if (strcmp(path, "/healthz") == 0) {
    sy_buf_appendf(&body, "ok\n");
    respond(ac, 200, "text/plain", &body);
  } else if (strcmp(path, "/readyz") == 0) {
    sy_buf_appendf(&body, st->draining ? "draining\n" : "ready\n");
    respond(ac, st->draining ? 503 : 200, "text/plain", &body);
  } else if (strcmp(path, "/metrics") == 0) {
    render_metrics(st, &body);
    respond(ac, 200, "text/plain; version=0.0.4", &body);
  } else if (strcmp(path, "/status.json") == 0) {
    render_status_json(st, &body);
    respond(ac, 200, "application/json", &body);
  } else if (strcmp(path, "/status") == 0 || strcmp(path, "/") == 0) {
    sy_buf_append(&body, status_page, sizeof(status_page) - 1);
    respond(ac, 200, "text/html; charset=utf-8", &body);
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

static void on_conn_closed(uv_handle_t *h) {
  sy_admin_conn *ac = (sy_admin_conn *)h;
  sy_buf_free(&ac->out);
  free(ac);
}

static void on_written(uv_write_t *req, int status) {
  sy_admin_conn *ac = req->data;
  uv_close((uv_handle_t *)&ac->tcp, on_conn_closed);
}

static void conn_alloc(uv_handle_t *h, size_t sz, uv_buf_t *buf) {
  sy_admin_conn *ac = (sy_admin_conn *)h;
  buf->base = ac->buf + ac->len;
  buf->len = sizeof(ac->buf) - ac->len - 1;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  sy_admin_conn *ac = (sy_admin_conn *)s;
  if (n < 0 || (n == 0 && ac->len == sizeof(ac->buf) - 1)) {
    uv_close((uv_handle_t *)s, on_conn_closed);
    return;
  }
  ac->len += (size_t)n;
  ac->buf[ac->len] = 0;
  if (!strstr(ac->buf, "\r\n\r\n")) {
    if (ac->len >= sizeof(ac->buf) - 1) uv_close((uv_handle_t *)s, on_conn_closed);
    return;
  }
  uv_read_stop(s);
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
  if (uv_write(&ac->wreq, s, &b, 1, on_written) < 0) uv_close((uv_handle_t *)s, on_conn_closed);
}

static void on_connection(uv_stream_t *server, int status) {
  sy_admin *a = server->data;
  if (status < 0) return;
  sy_admin_conn *ac = calloc(1, sizeof(*ac));
  if (!ac) return;
  ac->a = a;
  uv_tcp_init(server->loop, &ac->tcp);
  if (uv_accept(server, (uv_stream_t *)&ac->tcp) < 0 ||
      uv_read_start((uv_stream_t *)&ac->tcp, conn_alloc, on_read) < 0)
    uv_close((uv_handle_t *)&ac->tcp, on_conn_closed);
}

sy_admin *sy_admin_start(uv_loop_t *loop, const sy_addr *addr, sy_admin_state *st) {
  sy_admin *a = calloc(1, sizeof(*a));
  if (!a) return NULL;
  a->st = st;
  uv_tcp_init(loop, &a->tcp);
  a->tcp.data = a;
  int rc = uv_tcp_bind(&a->tcp, (const struct sockaddr *)&addr->sa, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&a->tcp, 128, on_connection);
  if (rc < 0) {
    sy_log_error("admin listener on %s: %s", addr->text, uv_strerror(rc));
    uv_close((uv_handle_t *)&a->tcp, (uv_close_cb)free);
    return NULL;
  }
  return a;
}

void sy_admin_stop(sy_admin *a) {
  if (a) uv_close((uv_handle_t *)&a->tcp, (uv_close_cb)free);
}
