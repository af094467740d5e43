#include "switchyard/resolver.h"

#include <ares.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "switchyard/log.h"
#include "switchyard/upstream.h"

/* Per attempt; c-ares doubles it on each try after the first. A resolver
 * that never answers costs a name about 3 s, and no other name waits. */
#define QUERY_TIMEOUT_MS 1000
#define QUERY_TRIES 2
/* Floor on any refresh, whatever min_ttl says: a TTL of 0 must not turn
 * into a query loop. */
#define REFRESH_FLOOR_MS 250

typedef struct ipaddr {
  int family; /* AF_INET or AF_INET6 */
  unsigned char a[16];
} ipaddr;

enum outcome { O_NONE = 0, O_OK, O_EMPTY, O_FAILED };

typedef struct rname {
  sy_resolver *r;
  char *host;
  ipaddr addrs[SY_RESOLVER_MAX_ADDRS];
  size_t naddrs;
  enum outcome outcome; /* of the last lookup */
  int refs;             /* the list (with the timer), a lookup in flight */
  int in_flight, used, linked;
  uv_timer_t timer; /* next lookup */
  struct rname *next;
} rname;

typedef struct rpoll {
  uv_poll_t poll; /* first member: the close callback finds the struct */
  ares_socket_t fd;
  sy_resolver *r;
  struct rpoll *next;
} rpoll;

typedef struct rcfg {
  sy_config *cfg;
  struct rcfg *next;
} rcfg;

typedef struct gauge {
  char *upstream;
  int64_t value;
  struct gauge *next;
} gauge;

struct sy_resolver {
  uv_loop_t *loop;
  sy_metrics *m;
  void (*on_change)(void *);
  void *arg;
  ares_channel ch; /* NULL until the first attach succeeds */
  char *servers;   /* the channel's name servers as "a:p,b:p"; "" = resolv.conf */
  uv_timer_t ares_timer;
  rpoll *polls;
  rname *names;
  /* Every attached configuration something still uses, newest first: a
   * connection keeps the snapshot it started with, so an older snapshot's
   * upstreams keep following DNS until its last connection is gone. */
  rcfg *cfgs;
  gauge *gauges;
  int handles, stopped;
  int settled; /* sy_resolver_settled, sticky */
};

static void free_if_done(sy_resolver *r) {
  if (!r->stopped || r->handles) return;
  while (r->gauges) {
    gauge *g = r->gauges;
    r->gauges = g->next;
    free(g->upstream);
    free(g);
  }
  free(r->servers);
  free(r);
}

static void on_closed(uv_handle_t *h) {
  sy_resolver *r = h->data;
  r->handles--;
  free_if_done(r);
}

/* ---- c-ares on the loop ------------------------------------------------------ */

static void reschedule(sy_resolver *r);

static void on_ares_timer(uv_timer_t *t) {
  sy_resolver *r = t->data;
  if (r->ch) ares_process_fd(r->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
  reschedule(r);
}

static void reschedule(sy_resolver *r) {
  struct timeval tv, *tp = r->ch && !r->stopped ? ares_timeout(r->ch, NULL, &tv) : NULL;
  if (!tp) {
    uv_timer_stop(&r->ares_timer);
    return;
  }
  uint64_t ms = (uint64_t)tp->tv_sec * 1000 + (uint64_t)tp->tv_usec / 1000 + 1;
  uv_timer_start(&r->ares_timer, on_ares_timer, ms, 0);
}

static void on_poll(uv_poll_t *p, int status, int events) {
  rpoll *rp = (rpoll *)p;
  sy_resolver *r = rp->r;
  ares_socket_t fd = rp->fd;
  if (!r->ch) return;
  /* An error on the socket: let c-ares read it and see the failure. */
  ares_process_fd(r->ch, status < 0 || (events & UV_READABLE) ? fd : ARES_SOCKET_BAD,
                  status < 0 || (events & UV_WRITABLE) ? fd : ARES_SOCKET_BAD);
  reschedule(r);
}

static void on_poll_closed(uv_handle_t *h) {
  sy_resolver *r = ((rpoll *)h)->r;
  free(h);
  r->handles--;
  free_if_done(r);
}

static void poll_close(sy_resolver *r, rpoll **pp) {
  rpoll *rp = *pp;
  *pp = rp->next;
  uv_close((uv_handle_t *)&rp->poll, on_poll_closed);
}

/* c-ares opens, watches and closes its sockets; we mirror that with polls. */
static void on_sock_state(void *arg, ares_socket_t fd, int readable, int writable) {
  sy_resolver *r = arg;
  rpoll **pp = &r->polls;
  while (*pp && (*pp)->fd != fd)
    pp = &(*pp)->next;
  if (!readable && !writable) {
    if (*pp) poll_close(r, pp); /* closed now, before c-ares may reuse the fd */
    return;
  }
  rpoll *rp = *pp;
  if (!rp) {
    if (!(rp = calloc(1, sizeof(*rp)))) return;
    if (uv_poll_init(r->loop, &rp->poll, fd) < 0) {
      free(rp);
      sy_log_error("resolver: cannot watch a DNS socket");
      return;
    }
    rp->fd = fd;
    rp->r = r;
    rp->next = r->polls;
    r->polls = rp;
    r->handles++;
  }
  uv_poll_start(&rp->poll, (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0), on_poll);
}

static char *servers_csv(const sy_resolver_cfg *rc) {
  size_t len = 1;
  for (size_t i = 0; i < rc->nnameservers; i++)
    len += strlen(rc->nameservers[i]) + 1;
  char *s = calloc(1, len);
  if (!s) return NULL;
  for (size_t i = 0; i < rc->nnameservers; i++) {
    if (i) strcat(s, ",");
    strcat(s, rc->nameservers[i]);
  }
  return s;
}

static void lookup(rname *n);

/* A channel for these name servers; the old one's lookups end with
 * ARES_EDESTRUCTION and are asked again on the new one. */
static int set_channel(sy_resolver *r, const sy_resolver_cfg *rc) {
  char *csv = servers_csv(rc);
  if (!csv) return -1;
  if (r->ch && strcmp(csv, r->servers) == 0) {
    free(csv);
    return 0;
  }
  struct ares_options o;
  memset(&o, 0, sizeof o);
  o.sock_state_cb = on_sock_state;
  o.sock_state_cb_data = r;
  o.timeout = QUERY_TIMEOUT_MS;
  o.tries = QUERY_TRIES;
  ares_channel ch;
  int rc2 =
      ares_init_options(&ch, &o, ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
  if (rc2 == ARES_SUCCESS && *csv) rc2 = ares_set_servers_ports_csv(ch, csv);
  if (rc2 != ARES_SUCCESS) {
    sy_log_error("resolver: cannot use name servers \"%s\": %s", *csv ? csv : "/etc/resolv.conf",
                 ares_strerror(rc2));
    if (rc2 != ARES_SUCCESS && ch) ares_destroy(ch);
    free(csv);
    return -1;
  }
  ares_channel old = r->ch;
  r->ch = ch;
  free(r->servers);
  r->servers = csv;
  if (old) ares_destroy(old); /* lookups in flight end (EDESTRUCTION) and go again */
  return 0;
}

/* ---- names ------------------------------------------------------------------- */

static void name_unref(rname *n) {
  if (--n->refs) return;
  free(n->host);
  free(n);
}

static void on_name_timer_closed(uv_handle_t *h) {
  rname *n = h->data;
  sy_resolver *r = n->r;
  name_unref(n);
  r->handles--;
  free_if_done(r);
}

static rname *find_name(sy_resolver *r, const char *host) {
  for (rname *n = r->names; n; n = n->next)
    if (strcasecmp(n->host, host) == 0) return n;
  return NULL;
}

static void on_refresh(uv_timer_t *t) {
  lookup(t->data);
}

static void ipaddr_text(const ipaddr *a, char *out, size_t cap) {
  inet_ntop(a->family, a->a, out, (socklen_t)cap);
}

/* ---- server sets ------------------------------------------------------------- */

static void gauge_set(sy_resolver *r, const char *upstream, int64_t v) {
  gauge *g = r->gauges;
  int fresh = 0;
  while (g && strcmp(g->upstream, upstream) != 0)
    g = g->next;
  if (!g) {
    if (!(g = calloc(1, sizeof(*g))) || !(g->upstream = strdup(upstream))) {
      free(g);
      return;
    }
    g->next = r->gauges;
    r->gauges = g;
    fresh = 1; /* shown from the start, 0 included */
  }
  if (v == g->value && !fresh) return;
  sy_buf l = {0};
  sy_metrics_label(&l, "upstream", upstream, strlen(upstream));
  sy_buf_append(&l, "", 1);
  sy_metrics_add(r->m, "switchyard_upstream_servers", l.p, v - g->value);
  sy_buf_free(&l);
  g->value = v;
}

static void count(sy_resolver *r, const char *metric, const char *upstream, const char *result,
                  int64_t n) {
  if (!n) return;
  sy_buf l = {0};
  sy_metrics_label(&l, "upstream", upstream, strlen(upstream));
  if (result) sy_metrics_label(&l, "result", result, strlen(result));
  sy_buf_append(&l, "", 1);
  sy_metrics_add(r->m, metric, l.p, n);
  sy_buf_free(&l);
}

static sy_server_rt *rt_from(const sy_server_set *prev, const char *text) {
  for (size_t i = 0; prev && i < prev->nservers; i++)
    if (strcmp(prev->servers[i].addr.text, text) == 0) {
      sy_server_rt_ref(prev->servers[i].rt);
      return prev->servers[i].rt;
    }
  sy_server_rt *rt = calloc(1, sizeof(*rt));
  if (rt) rt->refs = 1;
  return rt;
}

static int has_text(const sy_server_cfg *s, size_t n, const char *text) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(s[i].addr.text, text) == 0) return 1;
  return 0;
}

/* One server of the set being built; 0, or -1 when out of memory. */
static int add_server(sy_server_cfg *out, size_t *k, const char *text, const char *host,
                      const struct sockaddr_storage *sa, socklen_t salen, uint16_t port,
                      unsigned weight, sy_server_rt *rt) {
  sy_server_cfg *s = &out[*k];
  memset(s, 0, sizeof(*s));
  s->addr.text = strdup(text);
  s->addr.host = strdup(host);
  s->rt = rt;
  if (!s->addr.text || !s->addr.host || !rt) {
    free(s->addr.text);
    free(s->addr.host);
    if (rt) sy_server_rt_unref(rt);
    return -1;
  }
  s->addr.port = port;
  s->addr.sa = *sa;
  s->addr.salen = salen;
  s->weight = weight;
  (*k)++;
  return 0;
}

/* The upstream's servers now: its IP-address entries, then every address of
 * each of its names (the first one kept where two entries give the same
 * address and port), at most SY_MAX_SERVERS. `prev` lends the runtime state
 * of servers that stay. Publishes the set; returns how many addresses did
 * not fit. */
static size_t rebuild(sy_resolver *r, sy_upstream_cfg *up, const sy_server_set *prev, int log) {
  sy_server_cfg *out = calloc(SY_MAX_SERVERS, sizeof(*out));
  size_t k = 0, dropped = 0;
  if (!out) {
    sy_log_error("upstream %s: out of memory building its servers", up->name);
    return 0;
  }
  for (size_t i = 0; i < up->nservers; i++) {
    const sy_server_cfg *e = &up->servers[i];
    if (!e->dns) {
      if (k < SY_MAX_SERVERS && !has_text(out, k, e->addr.text)) {
        sy_server_rt_ref(e->rt);
        add_server(out, &k, e->addr.text, e->addr.host, &e->addr.sa, e->addr.salen, e->addr.port,
                   e->weight, e->rt);
      }
      continue;
    }
    const rname *n = find_name(r, e->addr.host);
    for (size_t j = 0; n && j < n->naddrs; j++) {
      char ip[INET6_ADDRSTRLEN], text[INET6_ADDRSTRLEN + 10];
      struct sockaddr_storage sa;
      socklen_t salen;
      memset(&sa, 0, sizeof sa);
      ipaddr_text(&n->addrs[j], ip, sizeof ip);
      if (n->addrs[j].family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&sa;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(e->addr.port);
        memcpy(&sin->sin_addr, n->addrs[j].a, 4);
        salen = sizeof(*sin);
        snprintf(text, sizeof text, "%s:%u", ip, e->addr.port);
      } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&sa;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(e->addr.port);
        memcpy(&sin6->sin6_addr, n->addrs[j].a, 16);
        salen = sizeof(*sin6);
        snprintf(text, sizeof text, "[%s]:%u", ip, e->addr.port);
      }
      if (has_text(out, k, text)) continue;
      if (k == SY_MAX_SERVERS) {
        dropped++;
        continue;
      }
      /* The host stays the name as written: it is the SNI and the name the
       * certificate is verified against, as for a server given by address. */
      add_server(out, &k, text, e->addr.host, &sa, salen, e->addr.port, e->weight,
                 rt_from(prev, text));
    }
  }
  sy_server_set *set = sy_server_set_new(out, k, 1, up->balance == SY_BALANCE_HASH);
  if (!set) {
    sy_log_error("upstream %s: out of memory building its servers; keeping the current ones",
                 up->name);
    for (size_t i = 0; i < k; i++) {
      free(out[i].addr.text);
      free(out[i].addr.host);
      sy_server_rt_unref(out[i].rt);
    }
    free(out);
    return 0;
  }
  if (log && dropped)
    sy_log_error("upstream %s: %zu address(es) over the limit of %d servers left out", up->name,
                 dropped, SY_MAX_SERVERS);
  sy_upstream_publish(up, set);
  return dropped;
}

static const sy_upstream_cfg *find_upstream(const sy_config *cfg, const char *name) {
  for (size_t i = 0; cfg && i < cfg->nupstreams; i++)
    if (strcmp(cfg->upstreams[i].name, name) == 0) return &cfg->upstreams[i];
  return NULL;
}

static int uses(const sy_upstream_cfg *up, const char *host) {
  for (size_t i = 0; i < up->nservers; i++)
    if (up->servers[i].dns && strcasecmp(up->servers[i].addr.host, host) == 0) return 1;
  return 0;
}

/* Drops the snapshots nothing else uses any more (only our reference). */
static void prune_cfgs(sy_resolver *r) {
  rcfg **pp = &r->cfgs;
  if (*pp) pp = &(*pp)->next; /* the current one stays */
  while (*pp) {
    rcfg *c = *pp;
    if (__atomic_load_n(&c->cfg->refs, __ATOMIC_ACQUIRE) == 1) {
      *pp = c->next;
      sy_config_unref(c->cfg);
      free(c);
    } else {
      pp = &c->next;
    }
  }
}

/* ---- answers ----------------------------------------------------------------- */

static int ipaddr_cmp(const void *a, const void *b) {
  const ipaddr *x = a, *y = b;
  if (x->family != y->family) return x->family == AF_INET ? -1 : 1;
  return memcmp(x->a, y->a, x->family == AF_INET ? 4 : 16);
}

static const char *result_label(int status, size_t naddrs) {
  switch (status) {
  case ARES_SUCCESS:
    return naddrs ? "ok" : "nodata";
  case ARES_ENOTFOUND:
    return "nxdomain";
  case ARES_ENODATA:
    return "nodata";
  case ARES_ETIMEOUT:
    return "timeout";
  default:
    return "error";
  }
}

static void log_change(const rname *n, size_t total, uint64_t delay) {
  char list[512] = "";
  size_t len = 0, i = 0;
  for (; i < n->naddrs && len + INET6_ADDRSTRLEN + 8 < sizeof list; i++) {
    char ip[INET6_ADDRSTRLEN];
    ipaddr_text(&n->addrs[i], ip, sizeof ip);
    len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", i ? ", " : "", ip);
  }
  if (i < n->naddrs || n->naddrs < total) /* the line stays short */
    snprintf(list + len, sizeof list - len, "%s...", len ? ", " : "");
  sy_log_info("resolver: %s: %zu address(es) (%s), next lookup in %llu ms", n->host, n->naddrs,
              list, (unsigned long long)delay);
}

static void on_answer(void *arg, int status, int timeouts, struct ares_addrinfo *res) {
  rname *n = arg;
  sy_resolver *r = n->r;
  n->in_flight = 0;
  if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED || r->stopped || !n->linked) {
    /* A replaced channel: ask the new one. */
    if (status == ARES_EDESTRUCTION && !r->stopped && n->linked)
      uv_timer_start(&n->timer, on_refresh, 0, 0);
    if (res) ares_freeaddrinfo(res);
    name_unref(n);
    return;
  }
  ipaddr got[SY_RESOLVER_MAX_ADDRS];
  size_t ngot = 0, total = 0;
  int ttl = -1;
  for (struct ares_addrinfo_node *a = res && status == ARES_SUCCESS ? res->nodes : NULL; a;
       a = a->ai_next) {
    ipaddr x;
    memset(&x, 0, sizeof x);
    x.family = a->ai_family;
    if (a->ai_family == AF_INET)
      memcpy(x.a, &((struct sockaddr_in *)a->ai_addr)->sin_addr, 4);
    else if (a->ai_family == AF_INET6)
      memcpy(x.a, &((struct sockaddr_in6 *)a->ai_addr)->sin6_addr, 16);
    else
      continue;
    if (ttl < 0 || a->ai_ttl < ttl) ttl = a->ai_ttl;
    int dup = 0;
    for (size_t i = 0; i < ngot && !dup; i++)
      dup = ipaddr_cmp(&got[i], &x) == 0;
    if (dup) continue;
    total++;
    if (ngot < SY_RESOLVER_MAX_ADDRS) {
      got[ngot++] = x;
    } else {
      /* Keep the lowest addresses, so every replica keeps the same ones. */
      size_t hi = 0;
      for (size_t i = 1; i < ngot; i++)
        if (ipaddr_cmp(&got[i], &got[hi]) > 0) hi = i;
      if (ipaddr_cmp(&x, &got[hi]) < 0) got[hi] = x;
    }
  }
  if (res) ares_freeaddrinfo(res);
  qsort(got, ngot, sizeof got[0], ipaddr_cmp);

  const sy_resolver_cfg *rc = &r->cfgs->cfg->resolver;
  int failed = status != ARES_SUCCESS && status != ARES_ENOTFOUND && status != ARES_ENODATA;
  uint64_t delay = failed || !ngot || ttl < 0 ? rc->min_ttl : (uint64_t)ttl * 1000;
  if (delay < rc->min_ttl) delay = rc->min_ttl;
  if (delay > rc->max_ttl) delay = rc->max_ttl;
  if (delay < REFRESH_FLOOR_MS) delay = REFRESH_FLOOR_MS;
  if (failed && delay < QUERY_TIMEOUT_MS) delay = QUERY_TIMEOUT_MS;
  const char *label = result_label(status, ngot);

  enum outcome was = n->outcome;
  int changed = 0;
  if (!failed) {
    changed = ngot != n->naddrs || (ngot && memcmp(got, n->addrs, ngot * sizeof got[0]) != 0);
    memcpy(n->addrs, got, ngot * sizeof got[0]);
    n->naddrs = ngot;
    n->outcome = ngot ? O_OK : O_EMPTY;
  } else {
    n->outcome = O_FAILED;
  }
  /* One line per change of what the name gives. */
  if (changed && ngot)
    log_change(n, total, delay);
  else if (n->outcome == O_EMPTY && (changed || was != O_EMPTY))
    sy_log_error("resolver: %s: %s; its servers are out until it resolves", n->host,
                 status == ARES_ENOTFOUND ? "no such name (NXDOMAIN)" : "no address records");
  else if (failed && was != O_FAILED)
    sy_log_error("resolver: %s: lookup failed: %s (%d timeouts); keeping %zu address(es), "
                 "retrying every %llu ms",
                 n->host, ares_strerror(status), timeouts, n->naddrs, (unsigned long long)delay);
  else if (!failed && was == O_FAILED && !changed && ngot)
    sy_log_info("resolver: %s: answering again, %zu address(es) unchanged", n->host, ngot);
  if (total > ngot && (changed || was != O_OK))
    sy_log_error("resolver: %s: %zu addresses, only %d used", n->host, total,
                 SY_RESOLVER_MAX_ADDRS);

  prune_cfgs(r);
  int newest = 1;
  for (rcfg *c = r->cfgs; c; c = c->next, newest = 0) {
    for (size_t u = 0; u < c->cfg->nupstreams; u++) {
      sy_upstream_cfg *up = &c->cfg->upstreams[u];
      if (!uses(up, n->host)) continue;
      if (newest) {
        count(r, "switchyard_dns_resolutions_total", up->name, label, 1);
        count(r, "switchyard_dns_records_dropped_total", up->name, NULL, (int64_t)(total - ngot));
      }
      if (!changed) continue;
      size_t dropped = rebuild(r, up, up->set, newest);
      if (!newest) continue;
      count(r, "switchyard_dns_records_dropped_total", up->name, NULL, (int64_t)dropped);
      gauge_set(r, up->name, (int64_t)up->set->nservers);
    }
  }
  if (changed && r->on_change) r->on_change(r->arg);
  if (n->linked) uv_timer_start(&n->timer, on_refresh, delay, 0);
  name_unref(n);
}

static void lookup(rname *n) {
  sy_resolver *r = n->r;
  if (n->in_flight || !r->ch || r->stopped || !n->linked) return;
  n->in_flight = 1;
  n->refs++;
  struct ares_addrinfo_hints h;
  memset(&h, 0, sizeof h);
  h.ai_family = AF_UNSPEC;
  h.ai_flags = ARES_AI_NOSORT;
  /* May answer at once (hosts file, bad name): on_answer copes. */
  ares_getaddrinfo(r->ch, n->host, NULL, &h, on_answer, n);
  reschedule(r);
}

static rname *add_name(sy_resolver *r, const char *host) {
  rname *n = calloc(1, sizeof(*n));
  if (!n || !(n->host = strdup(host))) {
    free(n);
    return NULL;
  }
  n->r = r;
  n->refs = 1;
  n->linked = 1;
  uv_timer_init(r->loop, &n->timer);
  n->timer.data = n;
  r->handles++;
  n->next = r->names;
  r->names = n;
  return n;
}

static void drop_name(sy_resolver *r, rname **pp) {
  rname *n = *pp;
  *pp = n->next;
  n->linked = 0; /* a lookup in flight finds out in on_answer */
  uv_close((uv_handle_t *)&n->timer, on_name_timer_closed);
}

/* ---- life cycle -------------------------------------------------------------- */

sy_resolver *sy_resolver_new(uv_loop_t *loop, sy_metrics *m, void (*on_change)(void *), void *arg) {
  int rc = ares_library_init(ARES_LIB_INIT_ALL);
  if (rc != ARES_SUCCESS) {
    sy_log_error("resolver: c-ares: %s", ares_strerror(rc));
    return NULL;
  }
  sy_resolver *r = calloc(1, sizeof(*r));
  if (!r) return NULL;
  r->loop = loop;
  r->m = m;
  r->on_change = on_change;
  r->arg = arg;
  uv_timer_init(loop, &r->ares_timer);
  r->ares_timer.data = r;
  r->handles = 1;
  return r;
}

int sy_resolver_attach(sy_resolver *r, sy_config *cfg) {
  int need = 0;
  for (size_t u = 0; u < cfg->nupstreams; u++)
    need |= cfg->upstreams[u].dynamic;
  /* Without a DNS name, no channel: nothing reads resolv.conf or opens a socket. */
  int rc = need || r->ch ? set_channel(r, &cfg->resolver) : 0;
  const sy_config *old = r->cfgs ? r->cfgs->cfg : NULL;
  rcfg *c = calloc(1, sizeof(*c));
  if (!c) return -1;
  c->cfg = sy_config_ref(cfg);
  c->next = r->cfgs;
  r->cfgs = c;
  prune_cfgs(r);

  for (rname *n = r->names; n; n = n->next)
    n->used = 0;
  for (rcfg *k = r->cfgs; k; k = k->next)
    for (size_t u = 0; u < k->cfg->nupstreams; u++) {
      const sy_upstream_cfg *up = &k->cfg->upstreams[u];
      for (size_t i = 0; i < up->nservers; i++) {
        if (!up->servers[i].dns) continue;
        rname *n = find_name(r, up->servers[i].addr.host);
        if (!n && !(n = add_name(r, up->servers[i].addr.host))) return -1;
        n->used = 1;
      }
    }
  for (rname **pp = &r->names; *pp;) {
    if ((*pp)->used)
      pp = &(*pp)->next;
    else
      drop_name(r, pp);
  }
  for (size_t u = 0; u < cfg->nupstreams; u++) {
    sy_upstream_cfg *up = &cfg->upstreams[u];
    if (up->dynamic) {
      const sy_upstream_cfg *was = find_upstream(old, up->name);
      rebuild(r, up, was ? was->set : NULL, 1);
    }
    gauge_set(r, up->name, (int64_t)up->set->nservers);
  }
  for (gauge *g = r->gauges; g; g = g->next)
    if (!find_upstream(cfg, g->upstream)) gauge_set(r, g->upstream, 0);
  for (rname *n = r->names; n; n = n->next)
    if (n->outcome == O_NONE) lookup(n);
  return rc;
}

int sy_resolver_settled(sy_resolver *r) {
  if (!r || r->settled) return 1;
  for (rname *n = r->names; n; n = n->next)
    if (n->used && n->outcome == O_NONE) return 0;
  r->settled = 1;
  return 1;
}

void sy_resolver_stop(sy_resolver *r) {
  if (!r) return;
  r->stopped = 1;
  if (r->ch) ares_destroy(r->ch); /* lookups in flight end here (EDESTRUCTION) */
  r->ch = NULL;
  while (r->polls)
    poll_close(r, &r->polls);
  while (r->names)
    drop_name(r, &r->names);
  while (r->cfgs) {
    rcfg *c = r->cfgs;
    r->cfgs = c->next;
    sy_config_unref(c->cfg);
    free(c);
  }
  uv_close((uv_handle_t *)&r->ares_timer, on_closed);
}
