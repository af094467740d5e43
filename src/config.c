/* YAML -> sy_config. The libyaml document API gives every node its source mark,
 * so each diagnostic can point at the exact key or value that is wrong. Parsing is
 * table driven: each mapping is described by a key_spec table, and one generic
 * walker rejects unknown and duplicate keys before calling the per-key handler. */
#include "switchyard/config.h"
#include "switchyard/log.h"
#include "switchyard/proxyproto.h"
#include "switchyard/tls.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "config_int.h"

/* ------------------------------------------------------------- listeners */

enum { CK_CERT, CK_KEY };
static const key_spec cert_keys[] = {
    [CK_CERT] = {"cert", cv_h_str, offsetof(sy_tls_cert, cert)},
    [CK_KEY] = {"key", cv_h_str, offsetof(sy_tls_cert, key)},
};

/* Relative file names are taken from the configuration file's directory, so
 * a config and its certificates can move together. */
static int resolve_path(ctx *c, yaml_node_t *v, char **p) {
  if (!*p || (*p)[0] == '/') return 0;
  const char *slash = strrchr(c->name, '/');
  if (!slash) return 0;
  size_t dl = (size_t)(slash - c->name) + 1, pl = strlen(*p);
  char *joined = cv_xcalloc(c, v, dl + pl + 1, 1);
  if (!joined) return -1;
  memcpy(joined, c->name, dl);
  memcpy(joined + dl, *p, pl + 1);
  free(*p);
  *p = joined;
  return 0;
}

static int h_certificates(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_listener_tls *tls = obj;
  if (cv_want_seq(c, v, path, 1) < 0) return -1;
  size_t n = cv_seq_len(v);
  if (!(tls->certs = cv_xcalloc(c, v, n, sizeof *tls->certs))) return -1;
  tls->ncerts = n;
  for (size_t i = 0; i < n; i++) {
    char child[SY_PATH_LEN];
    unsigned seen = 0;
    yaml_node_t *item = cv_seq_item(c, v, i);
    cv_join_idx(child, path, i);
    if (cv_parse_map(c, item, child, cert_keys, NKEYS(cert_keys), &tls->certs[i], &seen) < 0 ||
        cv_require_keys(c, item, child, cert_keys, seen, (1u << CK_CERT) | (1u << CK_KEY)) < 0)
      return -1;
    /* A certificate that cannot serve is refused now, at its line, not at
     * the first handshake. */
    char why[512];
    if (resolve_path(c, item, &tls->certs[i].cert) < 0 ||
        resolve_path(c, item, &tls->certs[i].key) < 0)
      return -1;
    if (sy_tls_check_pair(tls->certs[i].cert, tls->certs[i].key, why, sizeof why) < 0)
      return cv_fail(c, item, "%s: %s", child, why);
  }
  return 0;
}

static int h_min_version(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  const char *s = NULL;
  if (cv_want_string(c, v, path, &s) < 0) return -1;
  if (strcmp(s, "TLS1.2") != 0 && strcmp(s, "TLS1.3") != 0)
    return cv_fail(c, v, "%s: expected TLS1.2 or TLS1.3, got \"%s\"", path, s);
  return cv_dup_text(c, v, s, FIELD(obj, off, char *));
}

static const key_spec listener_tls_keys[] = {
    {"certificates", h_certificates, 0},
    {"min_version", h_min_version, offsetof(sy_listener_tls, min_version)},
    {"ciphers", cv_h_str, offsetof(sy_listener_tls, ciphers)},
};

static int h_listener_tls(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_listener_tls *tls = FIELD(obj, off, sy_listener_tls);
  unsigned seen = 0;
  tls->enabled = 1;
  if (cv_parse_map(c, v, path, listener_tls_keys, NKEYS(listener_tls_keys), tls, &seen) < 0)
    return -1;
  return cv_require_keys(c, v, path, listener_tls_keys, seen, 1u /* certificates */);
}

static int h_offer_tls(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  static const char *const names[] = {"off", "optional", "required"};
  const char *s = NULL;
  if (cv_want_scalar(c, v, path, &s) < 0) return -1;
  for (size_t i = 0; i < NKEYS(names); i++) {
    if (strcmp(s, names[i]) == 0) {
      *FIELD(obj, off, enum sy_tls_offer) = (enum sy_tls_offer)i;
      return 0;
    }
  }
  return cv_fail(c, v, "%s: expected off, optional or required, got \"%s\"", path, s);
}

/* off | v1 | v2 | any, as SY_PP_* bits; `any` only cv_where a listener reads it. */
static int pp_mode(ctx *c, yaml_node_t *v, const char *path, unsigned *out, int allow_any) {
  const char *s = NULL;
  if (cv_want_scalar(c, v, path, &s) < 0) return -1;
  if (strcmp(s, "off") == 0)
    *out = 0;
  else if (strcmp(s, "v1") == 0)
    *out = SY_PP_V1;
  else if (strcmp(s, "v2") == 0)
    *out = SY_PP_V2;
  else if (allow_any && strcmp(s, "any") == 0)
    *out = SY_PP_V1 | SY_PP_V2;
  else
    return cv_fail(c, v, "%s: expected %s, got \"%s\"", path,
                   allow_any ? "off, v1, v2 or any" : "off, v1 or v2", s);
  return 0;
}

static int h_proxy_protocol(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  return pp_mode(c, v, path, FIELD(obj, off, unsigned), 1);
}

static int h_send_proxy(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  return pp_mode(c, v, path, FIELD(obj, off, unsigned), 0);
}

enum { LK_NAME, LK_ADDRESS, LK_TLS, LK_OFFER };
static const key_spec listener_keys[] = {
    [LK_NAME] = {"name", cv_h_str, offsetof(sy_listener_cfg, name)},
    [LK_ADDRESS] = {"address", cv_h_bind_addr, offsetof(sy_listener_cfg, addr)},
    [LK_TLS] = {"tls", h_listener_tls, offsetof(sy_listener_cfg, tls)},
    [LK_OFFER] = {"offer_tls_upgrade", h_offer_tls, offsetof(sy_listener_cfg, offer_tls_upgrade)},
    {"proxy_protocol", h_proxy_protocol, offsetof(sy_listener_cfg, proxy_protocol)},
};

static int parse_listener(ctx *c, yaml_node_t *v, const char *path, sy_listener_cfg *l) {
  unsigned seen = 0;
  l->line = (int)v->start_mark.line + 1;
  l->column = (int)v->start_mark.column + 1;
  if (cv_parse_map(c, v, path, listener_keys, NKEYS(listener_keys), l, &seen) < 0 ||
      cv_require_keys(c, v, path, listener_keys, seen, 1u << LK_ADDRESS) < 0)
    return -1;
  /* The upgrade is answered with the listener's certificates, so it needs some. */
  if (l->offer_tls_upgrade != SY_TLS_OFFER_OFF && !l->tls.enabled)
    return cv_fail(c, cv_map_get(c, v, "offer_tls_upgrade"),
                   "%s.offer_tls_upgrade: needs tls.certificates on the listener", path);
  if (!l->name) return cv_dup_text(c, v, l->addr.text, &l->name);
  return 0;
}

static int h_listeners(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_config *cfg = obj;
  if (cv_want_seq(c, v, path, 1) < 0) return -1;
  size_t n = cv_seq_len(v);
  if (!(cfg->listeners = cv_xcalloc(c, v, n, sizeof *cfg->listeners))) return -1;
  cfg->nlisteners = n;
  for (size_t i = 0; i < n; i++) {
    char child[SY_PATH_LEN];
    yaml_node_t *item = cv_seq_item(c, v, i);
    cv_join_idx(child, path, i);
    if (parse_listener(c, item, child, &cfg->listeners[i]) < 0) return -1;
    for (size_t j = 0; j < i; j++) {
      if (cv_same_sockaddr(&cfg->listeners[j].addr, &cfg->listeners[i].addr))
        return cv_fail(c, cv_map_get(c, item, "address"),
                       "%s.address: duplicate listener address \"%s\" (same as listeners[%zu])",
                       child, cfg->listeners[i].addr.text, j);
    }
  }
  return 0;
}

/* ----------------------------------------------------------------- admin */

#define SY_TOKEN_MIN 16
#define SY_TOKEN_MAX 4096

/* A bearer token: visible ASCII, no spaces (RFC 6750 allows less, but any of
 * these survives a header and a file); short ones are refused as guessable. */
static int check_token(ctx *c, const yaml_node_t *v, const char *path, const char *t, size_t n) {
  if (n < SY_TOKEN_MIN || n > SY_TOKEN_MAX)
    return cv_fail(c, v, "%s: the token must be %d to %d characters long, got %zu", path,
                   SY_TOKEN_MIN, SY_TOKEN_MAX, n);
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)t[i] <= 0x20 || (unsigned char)t[i] >= 0x7f)
      return cv_fail(c, v,
                     "%s: the token may only contain visible ASCII characters (byte %zu is not)",
                     path, i + 1);
  return 0;
}

static int h_admin_token(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_config *cfg = obj;
  const char *s = NULL;
  if (cfg->admin_token) return cv_fail(c, v, "admin: token and token_file are exclusive");
  if (cv_want_string(c, v, path, &s) < 0 || check_token(c, v, path, s, strlen(s)) < 0) return -1;
  return cv_dup_text(c, v, s, &cfg->admin_token);
}

/* Read at every load, so a reload picks up a rotated secret. One trailing
 * newline (or CRLF) is ignored: `echo TOKEN > file` must work. */
static int h_admin_token_file(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_config *cfg = obj;
  const char *s = NULL;
  if (cfg->admin_token) return cv_fail(c, v, "admin: token and token_file are exclusive");
  if (cv_want_string(c, v, path, &s) < 0) return -1;
  /* A check (-t) runs cv_where the secret is not mounted (CI, a laptop): the
   * path is noted, the file is read when the configuration is loaded to run. */
  if (!c->resolve) return cv_dup_text(c, v, "(token_file: not read by a check)", &cfg->admin_token);
  FILE *f = fopen(s, "r");
  if (!f) return cv_fail(c, v, "%s: cannot read \"%s\": %s", path, s, strerror(errno));
  char buf[SY_TOKEN_MAX + 3];
  size_t n = fread(buf, 1, sizeof(buf), f);
  int err = ferror(f);
  fclose(f);
  if (err) return cv_fail(c, v, "%s: cannot read \"%s\"", path, s);
  if (n && buf[n - 1] == '\n') n--;
  if (n && buf[n - 1] == '\r') n--;
  if (check_token(c, v, path, buf, n) < 0) return -1;
  if (!(cfg->admin_token = strndup(buf, n))) return cv_oom(c, v);
  return 0;
}

enum { AK_ADDRESS, AK_TOKEN, AK_TOKEN_FILE };
static const key_spec admin_keys[] = {
    [AK_ADDRESS] = {"address", cv_h_bind_addr, offsetof(sy_config, admin_addr)},
    [AK_TOKEN] = {"token", h_admin_token, 0},
    [AK_TOKEN_FILE] = {"token_file", h_admin_token_file, 0},
};

static int h_admin(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_config *cfg = obj;
  unsigned seen = 0;
  if (cv_parse_map(c, v, path, admin_keys, NKEYS(admin_keys), cfg, &seen) < 0 ||
      cv_require_keys(c, v, path, admin_keys, seen, 1u << AK_ADDRESS) < 0)
    return -1;
  cfg->admin_enabled = 1;
  return 0;
}

/* ------------------------------------------------------------- upstreams */

static int is_tchar(unsigned char ch);
static int h_header_name(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off);

static int token_ok(const char *s) {
  for (const char *p = s; *p; p++)
    if (!is_tchar((unsigned char)*p)) return 0;
  return *s != '\0';
}

/* hash(...) keys: "client", "header:NAME" or "cookie:NAME", NAME a token as
 * the request would spell it (a space would never match anything). */
static int valid_hash_key(const char *k) {
  if (strcmp(k, "client") == 0) return 1;
  if (strncmp(k, "header:", 7) == 0 || strncmp(k, "cookie:", 7) == 0) return token_ok(k + 7);
  return 0;
}

static int h_balance(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_upstream_cfg *u = obj;
  const char *s;
  size_t len;
  if (cv_want_string(c, v, path, &s) < 0) return -1;
  len = strlen(s);
  if (strcmp(s, "round_robin") == 0) {
    u->balance = SY_BALANCE_ROUND_ROBIN;
  } else if (strcmp(s, "least_conn") == 0) {
    u->balance = SY_BALANCE_LEAST_CONN;
  } else if (strncmp(s, "hash(", 5) == 0 && len > 6 && s[len - 1] == ')') {
    u->balance = SY_BALANCE_HASH;
    if (!(u->hash_key = strndup(s + 5, len - 6))) return cv_oom(c, v);
    if (!valid_hash_key(u->hash_key))
      return cv_fail(c, v,
                     "%s: unknown hash key in \"%s\" (expected client, header:NAME or "
                     "cookie:NAME)",
                     path, s);
  } else {
    return cv_fail(c, v,
                   "%s: unknown balance \"%s\" (expected round_robin, least_conn or hash(...))",
                   path, s);
  }
  return 0;
}

/* An upstream server is an IP address (or localhost, from the hosts file),
 * fixed at load as before, or a DNS name that the resolver looks up at run
 * time, for every address it has: loading never waits for DNS. */
static int h_server_addr(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_server_cfg *sv = obj;
  const char *s;
  addr_parts ap = {0};
  unsigned char bin[16];
  if (cv_want_string(c, v, path, &s) < 0 || cv_split_addr(c, v, path, s, &ap) < 0) return -1;
  if (ap.bracketed || !ap.host[0] || strcmp(ap.host, "*") == 0 ||
      strcasecmp(ap.host, "localhost") == 0 || inet_pton(AF_INET, ap.host, bin) == 1)
    return cv_parse_addr(c, v, path, ADDR_CONNECT, &sv->addr);
  if (!cv_host_name_ok(ap.host))
    return cv_fail(c, v, "%s: \"%s\" is neither an IP address nor a valid host name", path,
                   ap.host);
  sv->dns = 1;
  sv->addr.port = (uint16_t)ap.port;
  if (cv_dup_text(c, v, s, &sv->addr.text) < 0 || cv_dup_text(c, v, ap.host, &sv->addr.host) < 0)
    return -1;
  return 0;
}

/* Maglev fills its 65537 slots by `weight` turns per server: 64 servers of
 * at most 256 keep the shares (as HAProxy's 1-256). */
static int h_weight(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  if (cv_h_uint_pos(c, v, path, obj, off) < 0) return -1;
  unsigned w = *FIELD(obj, off, unsigned);
  if (w > 256) return cv_fail(c, v, "%s: at most 256, got %u", path, w);
  return 0;
}

enum { SK_ADDRESS, SK_WEIGHT };
static const key_spec server_keys[] = {
    [SK_ADDRESS] = {"address", h_server_addr, 0},
    [SK_WEIGHT] = {"weight", h_weight, offsetof(sy_server_cfg, weight)},
};

static int h_servers(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_upstream_cfg *u = obj;
  if (cv_want_seq(c, v, path, 1) < 0) return -1;
  size_t n = cv_seq_len(v);
  /* The balancer tracks tried servers in a 64-bit set. */
  if (n > 64) return cv_fail(c, v, "%s: at most 64 servers per upstream", path);
  if (!(u->servers = cv_xcalloc(c, v, n, sizeof *u->servers))) return -1;
  u->nservers = n;
  for (size_t i = 0; i < n; i++) {
    char child[SY_PATH_LEN];
    unsigned seen = 0;
    yaml_node_t *item = cv_seq_item(c, v, i);
    cv_join_idx(child, path, i);
    u->servers[i].weight = 1;
    if (!(u->servers[i].rt = cv_xcalloc(c, item, 1, sizeof(sy_server_rt)))) return -1;
    u->servers[i].rt->refs = 1;
    if (cv_parse_map(c, item, child, server_keys, NKEYS(server_keys), &u->servers[i], &seen) < 0 ||
        cv_require_keys(c, item, child, server_keys, seen, 1u << SK_ADDRESS) < 0)
      return -1;
    /* Its series (by address text) and its state would exist twice. */
    for (size_t j = 0; j < i; j++)
      if (strcmp(u->servers[j].addr.text, u->servers[i].addr.text) == 0)
        return cv_fail(c, cv_map_get(c, item, "address"),
                       "%s.address: \"%s\" is listed already (servers[%zu]); give one entry a "
                       "weight instead",
                       child, u->servers[i].addr.text, j);
    u->dynamic |= u->servers[i].dns;
  }
  return 0;
}

/* Sent as SNI and verified: a host name (no port, at most 253 bytes) or an
 * IP address (verified, not sent). */
static int h_sni(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  const char *s = NULL;
  unsigned char bin[16];
  if (cv_want_string(c, v, path, &s) < 0) return -1;
  if (!cv_host_name_ok(s) && inet_pton(AF_INET, s, bin) != 1 && inet_pton(AF_INET6, s, bin) != 1)
    return cv_fail(c, v, "%s: \"%s\" is neither a host name nor an IP address", path, s);
  return cv_dup_text(c, v, s, FIELD(obj, off, char *));
}

enum { UT_VERIFY, UT_CA, UT_SNI, UT_CERT, UT_KEY };
static const key_spec upstream_tls_keys[] = {
    [UT_VERIFY] = {"verify", cv_h_bool, offsetof(sy_upstream_tls, verify)},
    [UT_CA] = {"ca", cv_h_str, offsetof(sy_upstream_tls, ca)},
    [UT_SNI] = {"sni", h_sni, offsetof(sy_upstream_tls, sni)},
    [UT_CERT] = {"cert", cv_h_str, offsetof(sy_upstream_tls, cert)},
    [UT_KEY] = {"key", cv_h_str, offsetof(sy_upstream_tls, key)},
};

static int h_upstream_tls(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_upstream_tls *tls = FIELD(obj, off, sy_upstream_tls);
  unsigned seen = 0;
  tls->enabled = 1;
  tls->verify = 1;
  if (cv_parse_map(c, v, path, upstream_tls_keys, NKEYS(upstream_tls_keys), tls, &seen) < 0)
    return -1;
  /* A client certificate without its key (or the reverse) cannot be loaded. */
  if (!tls->cert != !tls->key)
    return cv_fail(c, v, "%s: cert and key must be given together", path);
  char why[512];
  if (resolve_path(c, v, &tls->ca) < 0 || resolve_path(c, v, &tls->cert) < 0 ||
      resolve_path(c, v, &tls->key) < 0)
    return -1;
  if (tls->ca && sy_tls_check_ca(tls->ca, why, sizeof why) < 0)
    return cv_fail(c, cv_map_get(c, v, "ca"), "%s.ca: %s", path, why);
  if (tls->cert && sy_tls_check_pair(tls->cert, tls->key, why, sizeof why) < 0)
    return cv_fail(c, cv_map_get(c, v, "cert"), "%s.cert: %s", path, why);
  return 0;
}

static int h_health_path(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  const char *s = NULL;
  if (cv_want_string(c, v, path, &s) < 0) return -1;
  if (*s != '/') return cv_fail(c, v, "%s: must start with \"/\", got \"%s\"", path, s);
  /* It goes into the probe's request line as it is (health.c). */
  size_t n = strlen(s);
  for (size_t i = 0; i < n; i++)
    if (s[i] <= ' ' || s[i] >= 0x7f)
      return cv_fail(c, v, "%s: only visible ASCII characters, no spaces (byte %zu is 0x%02x)",
                     path, i, (unsigned char)s[i]);
  if (n > SY_HEALTH_PATH_MAX)
    return cv_fail(c, v, "%s: at most %d bytes, got %zu", path, SY_HEALTH_PATH_MAX, n);
  return cv_dup_text(c, v, s, FIELD(obj, off, char *));
}

static const key_spec health_keys[] = {
    {"path", h_health_path, offsetof(sy_health_cfg, path)},
    {"interval", cv_h_duration_pos, offsetof(sy_health_cfg, interval)},
    {"timeout", cv_h_duration_pos, offsetof(sy_health_cfg, timeout)},
    {"healthy", cv_h_uint_pos, offsetof(sy_health_cfg, healthy)},
    {"unhealthy", cv_h_uint_pos, offsetof(sy_health_cfg, unhealthy)},
};

static int h_health(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_health_cfg *h = FIELD(obj, off, sy_health_cfg);
  h->enabled = 1;
  h->interval = 5000;
  h->timeout = 2000;
  h->healthy = 2;
  h->unhealthy = 3;
  if (cv_parse_map(c, v, path, health_keys, NKEYS(health_keys), h, NULL) < 0) return -1;
  if (!h->path) return cv_dup_text(c, v, "/", &h->path);
  return 0;
}

/* A count cv_where 0 is meaningful (0 idle connections = no pooling). */
static int h_uint0(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  const char *s = NULL;
  if (cv_want_scalar(c, v, path, &s) < 0) return -1;
  if (strcmp(s, "0") == 0) {
    *FIELD(obj, off, unsigned) = 0;
    return 0;
  }
  return cv_h_uint_pos(c, v, path, obj, off);
}

static const key_spec keepalive_keys[] = {
    {"max_idle", h_uint0, offsetof(sy_upstream_cfg, keepalive_max_idle)},
    {"idle_timeout", cv_h_duration_pos, offsetof(sy_upstream_cfg, keepalive_idle)},
};

static int h_keepalive(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  return cv_parse_map(c, v, path, keepalive_keys, NKEYS(keepalive_keys), obj, NULL);
}

enum { UK_BALANCE, UK_SERVERS, UK_TLS, UK_HEALTH };
static const key_spec upstream_keys[] = {
    [UK_BALANCE] = {"balance", h_balance, 0},
    [UK_SERVERS] = {"servers", h_servers, 0},
    [UK_TLS] = {"tls", h_upstream_tls, offsetof(sy_upstream_cfg, tls)},
    [UK_HEALTH] = {"health", h_health, offsetof(sy_upstream_cfg, health)},
    {"keepalive", h_keepalive, 0},
    {"send_proxy", h_send_proxy, offsetof(sy_upstream_cfg, send_proxy)},
};

static int h_upstreams(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_config *cfg = obj;
  if (cv_want_map(c, v, path) < 0) return -1;
  size_t n = cv_map_len(v);
  if (!(cfg->upstreams = cv_xcalloc(c, v, n, sizeof *cfg->upstreams))) return -1;
  cfg->nupstreams = n;
  for (size_t i = 0; i < n; i++) {
    yaml_node_pair_t *p = &v->data.mapping.pairs.start[i];
    sy_upstream_cfg *u = &cfg->upstreams[i];
    char child[SY_PATH_LEN];
    unsigned seen = 0;
    if (cv_check_key(c, v, p, path) < 0) return -1;
    yaml_node_t *k = cv_node_at(c, p->key), *item = cv_node_at(c, p->value);
    if (cv_dup_string(c, k, path, &u->name) < 0) return -1;
    cv_join_key(child, path, u->name);
    u->keepalive_max_idle = 256;
    u->keepalive_idle = 30000;
    if (cv_parse_map(c, item, child, upstream_keys, NKEYS(upstream_keys), u, &seen) < 0 ||
        cv_require_keys(c, item, child, upstream_keys, seen, 1u << UK_SERVERS) < 0)
      return -1;
  }
  return 0;
}

/* -------------------------------------------------------------- resolver */

/* Name servers are IP addresses with a port: looking up the resolver's own
 * address would need a resolver. */
static int h_nameservers(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_resolver_cfg *r = obj;
  if (cv_parse_str_list(c, v, path, 0, &r->nameservers, &r->nnameservers) < 0) return -1;
  for (size_t i = 0; i < r->nnameservers; i++) {
    char child[SY_PATH_LEN];
    addr_parts ap = {0};
    unsigned char bin[16];
    yaml_node_t *item = cv_seq_item(c, v, i);
    cv_join_idx(child, path, i);
    if (cv_split_addr(c, item, child, r->nameservers[i], &ap) < 0) return -1;
    if (inet_pton(ap.bracketed ? AF_INET6 : AF_INET, ap.host, bin) != 1)
      return cv_fail(c, item,
                     "%s: \"%s\" is not an IP address (name servers are given as "
                     "\"10.0.0.10:53\" or \"[fd00::10]:53\")",
                     child, r->nameservers[i]);
  }
  return 0;
}

static const key_spec resolver_keys[] = {
    {"nameservers", h_nameservers, 0},
    {"min_ttl", cv_h_duration, offsetof(sy_resolver_cfg, min_ttl)},
    {"max_ttl", cv_h_duration_pos, offsetof(sy_resolver_cfg, max_ttl)},
};

static int h_resolver(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_config *cfg = obj;
  sy_resolver_cfg *r = &cfg->resolver;
  if (cv_parse_map(c, v, path, resolver_keys, NKEYS(resolver_keys), r, NULL) < 0) return -1;
  if (r->min_ttl > r->max_ttl)
    return cv_fail(c, v, "%s: min_ttl must not be more than max_ttl", path);
  return 0;
}

/* ---------------------------------------------------------------- routes */

/* Stored lower-case and without brackets because the router compares it with
 * the request's Host after doing the same to it. */
static int h_route_host(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_route_cfg *r = obj;
  const char *s = NULL;
  if (cv_want_string(c, v, path, &s) < 0) return -1;
  size_t len = strlen(s);
  if (s[0] == '[' && len > 2 && s[len - 1] == ']') {
    s++;
    len -= 2;
  }
  if (strchr(s + 1, '*') || (s[0] == '*' && s[1] != '.') || (s[0] == '*' && len < 3))
    return cv_fail(c, v, "%s: only a leading \"*.\" wildcard is allowed, got \"%s\"", path, s);
  if (len && s[len - 1] == '.')
    return cv_fail(c, v,
                   "%s: \"%s\" ends with \".\" (a request's trailing dot is ignored: write the "
                   "name without it)",
                   path, s);
  const char *colon = memchr(s, ':', len);
  if (colon && !memchr(colon + 1, ':', len - (size_t)(colon - s) - 1))
    return cv_fail(c, v, "%s: must not include a port, got \"%s\"", path, s);
  if (!(r->host = strndup(s, len))) return cv_oom(c, v);
  for (char *p = r->host; *p; p++)
    if (*p >= 'A' && *p <= 'Z') *p = (char)(*p - 'A' + 'a');
  return 0;
}

static int h_route_path(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  const char *s = NULL;
  if (cv_want_string(c, v, path, &s) < 0) return -1;
  if (*s != '/') return cv_fail(c, v, "%s: must start with \"/\", got \"%s\"", path, s);
  return cv_dup_text(c, v, s, FIELD(obj, off, char *));
}

static int h_methods(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_route_cfg *r = obj;
  return cv_parse_str_list(c, v, path, 1, &r->methods, &r->nmethods);
}

static int h_match_upgrade(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_route_cfg *r = obj;
  return cv_parse_str_list(c, v, path, 1, &r->match_upgrade, &r->nmatch_upgrade);
}

/* An empty value is a real header value ("X-Flag:"), so only null is refused. */
static int h_header_value(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  const char *s = NULL;
  if (cv_want_scalar(c, v, path, &s) < 0) return -1;
  if (cv_is_null(v)) return cv_fail(c, v, "%s: expected a string, got null", path);
  return cv_dup_text(c, v, s, FIELD(obj, off, char *));
}

enum { HK_NAME, HK_VALUE };
static const key_spec header_keys[] = {
    [HK_NAME] = {"name", h_header_name, offsetof(sy_header_match, name)},
    [HK_VALUE] = {"value", h_header_value, offsetof(sy_header_match, value)},
};

static int h_match_headers(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_route_cfg *r = obj;
  if (cv_want_seq(c, v, path, 0) < 0) return -1;
  size_t n = cv_seq_len(v);
  if (!(r->headers = cv_xcalloc(c, v, n, sizeof *r->headers))) return -1;
  r->nheaders = n;
  for (size_t i = 0; i < n; i++) {
    char child[SY_PATH_LEN];
    unsigned seen = 0;
    yaml_node_t *item = cv_seq_item(c, v, i);
    cv_join_idx(child, path, i);
    if (cv_parse_map(c, item, child, header_keys, NKEYS(header_keys), &r->headers[i], &seen) < 0 ||
        cv_require_keys(c, item, child, header_keys, seen, 1u << HK_NAME) < 0)
      return -1;
  }
  return 0;
}

static const key_spec match_keys[] = {
    {"host", h_route_host, 0},
    {"path_prefix", h_route_path, offsetof(sy_route_cfg, path_prefix)},
    {"path", h_route_path, offsetof(sy_route_cfg, path)},
    {"methods", h_methods, 0},
    {"headers", h_match_headers, 0},
    {"upgrade", h_match_upgrade, 0},
};

static int h_match(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  return cv_parse_map(c, v, path, match_keys, NKEYS(match_keys), obj, NULL);
}

static int h_allow_upgrades(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_route_cfg *r = obj;
  r->allow_any_upgrade = 0;
  if (cv_parse_str_list(c, v, path, 0, &r->allow_upgrades, &r->nallow_upgrades) < 0) return -1;
  for (size_t i = 0; i < r->nallow_upgrades; i++)
    if (strcmp(r->allow_upgrades[i], "*") == 0) r->allow_any_upgrade = 1;
  return 0;
}

static int h_subprotocols(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_route_cfg *r = obj;
  r->ws_subprotocols_set = 1;
  if (cv_parse_str_list(c, v, path, 0, &r->ws_subprotocols, &r->nws_subprotocols) < 0) return -1;
  /* The check of a request's offers keeps this many (request.c). */
  if (r->nws_subprotocols > SY_WS_SUBPROTOCOLS_MAX)
    return cv_fail(c, v, "%s: at most %d entries, got %zu", path, SY_WS_SUBPROTOCOLS_MAX,
                   r->nws_subprotocols);
  return 0;
}

static const key_spec websocket_keys[] = {
    {"check_accept", cv_h_bool, offsetof(sy_route_cfg, ws_check_accept)},
    {"subprotocols", h_subprotocols, 0},
};

static int h_websocket(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  return cv_parse_map(c, v, path, websocket_keys, NKEYS(websocket_keys), obj, NULL);
}

/* Routes may override only the timeouts that belong to one exchange; 0 = inherit. */
static const key_spec route_timeout_keys[] = {
    {"connect", cv_h_duration, offsetof(sy_timeouts, connect)},
    {"response", cv_h_duration, offsetof(sy_timeouts, response)},
    {"tunnel_idle", cv_h_duration, offsetof(sy_timeouts, tunnel_idle)},
    {"tunnel_fin", cv_h_duration, offsetof(sy_timeouts, tunnel_fin)},
};

static int h_route_timeouts(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  return cv_parse_map(c, v, path, route_timeout_keys, NKEYS(route_timeout_keys),
                      FIELD(obj, off, sy_timeouts), NULL);
}

enum { RK_NAME, RK_MATCH, RK_UPSTREAM, RK_ALLOW, RK_WEBSOCKET, RK_REQUIRE_TLS, RK_TIMEOUTS };
static const key_spec route_keys[] = {
    [RK_NAME] = {"name", cv_h_str, offsetof(sy_route_cfg, name)},
    [RK_MATCH] = {"match", h_match, 0},
    [RK_UPSTREAM] = {"upstream", cv_h_str, offsetof(sy_route_cfg, upstream_name)},
    [RK_ALLOW] = {"allow_upgrades", h_allow_upgrades, 0},
    [RK_WEBSOCKET] = {"websocket", h_websocket, 0},
    [RK_REQUIRE_TLS] = {"require_tls", cv_h_bool, offsetof(sy_route_cfg, require_tls)},
    [RK_TIMEOUTS] = {"timeouts", h_route_timeouts, offsetof(sy_route_cfg, timeouts)},
};

static int h_routes(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_config *cfg = obj;
  if (cv_want_seq(c, v, path, 0) < 0) return -1;
  size_t n = cv_seq_len(v);
  if (!(cfg->routes = cv_xcalloc(c, v, n, sizeof *cfg->routes))) return -1;
  cfg->nroutes = n;
  for (size_t i = 0; i < n; i++) {
    sy_route_cfg *r = &cfg->routes[i];
    char child[SY_PATH_LEN];
    unsigned seen = 0;
    yaml_node_t *item = cv_seq_item(c, v, i);
    cv_join_idx(child, path, i);
    r->index = i;
    r->line = (int)item->start_mark.line + 1;
    r->column = (int)item->start_mark.column + 1;
    r->allow_any_upgrade = 1;
    if (cv_parse_map(c, item, child, route_keys, NKEYS(route_keys), r, &seen) < 0 ||
        cv_require_keys(c, item, child, route_keys, seen, 1u << RK_UPSTREAM) < 0)
      return -1;
    /* A name is the route's label in the metrics and on the status page:
     * two routes must not share one, nor take an unnamed route's "#N". */
    if (!r->name) continue;
    yaml_node_t *at = cv_map_get(c, item, "name");
    if (r->name[0] == '#' || strlen(r->name) > SY_ROUTE_NAME_MAX)
      return cv_fail(c, at, "%s.name: \"%.40s\" must not start with \"#\" nor pass %d bytes", child,
                     r->name, SY_ROUTE_NAME_MAX);
    for (size_t j = 0; j < i; j++)
      if (cfg->routes[j].name && strcmp(cfg->routes[j].name, r->name) == 0)
        return cv_fail(c, at, "%s.name: \"%s\" is routes[%zu]'s name already", child, r->name, j);
  }
  return 0;
}

/* Upstreams may be declared after the routes that use them, so names are bound
 * once the whole document has been read. */
static int resolve_routes(ctx *c, yaml_node_t *root) {
  sy_config *cfg = c->cfg;
  yaml_node_t *routes = cv_map_get(c, root, "routes");
  for (size_t i = 0; i < cfg->nroutes; i++) {
    sy_route_cfg *r = &cfg->routes[i];
    for (size_t j = 0; j < cfg->nupstreams && !r->upstream; j++)
      if (strcmp(cfg->upstreams[j].name, r->upstream_name) == 0) r->upstream = &cfg->upstreams[j];
    if (!r->upstream)
      return cv_fail(c, cv_map_get(c, cv_seq_item(c, routes, i), "upstream"),
                     "routes[%zu].upstream: no upstream named \"%s\"%s", i, r->upstream_name,
                     cfg->nupstreams ? "" : " (no upstreams are defined)");
  }
  return 0;
}

/* ---------------------------------------------------------------- top level */

static int h_workers(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_config *cfg = obj;
  const char *s = NULL;
  if (cv_want_scalar(c, v, path, &s) < 0) return -1;
  if (strcmp(s, "auto") == 0) {
    cfg->workers = 0;
    return 0;
  }
  const char *p = s;
  uint64_t n;
  if (cv_parse_u64(&p, &n) < 0 || *p || n == 0 || n > UINT_MAX)
    return cv_fail(c, v, "%s: expected \"auto\" or a positive integer, got \"%s\"", path, s);
  if (n > SY_WORKERS_MAX) return cv_fail(c, v, "%s: at most %d, got %s", path, SY_WORKERS_MAX, s);
  cfg->workers = (unsigned)n;
  return 0;
}

static int h_worker_cpu_affinity(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_config *cfg = obj;
  const char *s = NULL;
  if (cv_want_scalar(c, v, path, &s) < 0) return -1;
  if (strcmp(s, "auto") == 0 || strcmp(s, "off") == 0) {
    cfg->worker_cpu_affinity = s[0] == 'a';
    return 0;
  }
  return cv_fail(c, v, "%s: expected \"auto\" or \"off\", got \"%s\"", path, s);
}

static const key_spec timeout_keys[] = {
    {"connect", cv_h_duration_pos, offsetof(sy_timeouts, connect)},
    {"response", cv_h_duration_pos, offsetof(sy_timeouts, response)},
    {"client_idle", cv_h_duration_pos, offsetof(sy_timeouts, client_idle)},
    {"tunnel_idle", cv_h_duration_pos, offsetof(sy_timeouts, tunnel_idle)},
    {"tunnel_fin", cv_h_duration_pos, offsetof(sy_timeouts, tunnel_fin)},
    {"drain", cv_h_duration_pos, offsetof(sy_timeouts, drain)},
};

static int h_timeouts(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_config *cfg = obj;
  return cv_parse_map(c, v, path, timeout_keys, NKEYS(timeout_keys), &cfg->timeouts, NULL);
}

/* A client's read buffer is this plus one byte (a 32-bit length): keep it a
 * size a head can have. */
static int h_max_header_bytes(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  if (cv_h_size_pos(c, v, path, obj, off) < 0) return -1;
  uint64_t n = *FIELD(obj, off, uint64_t);
  if (n < 512 || n > (1u << 20))
    return cv_fail(c, v, "%s: must be between 512 bytes and 1MiB, got %llu bytes", path,
                   (unsigned long long)n);
  return 0;
}

static const key_spec limits_keys[] = {
    {"max_connections", cv_h_u64_pos, offsetof(sy_config, limits.max_connections)},
    {"max_header_bytes", h_max_header_bytes, offsetof(sy_config, limits.max_header_bytes)},
    {"max_headers", cv_h_u64_pos, offsetof(sy_config, limits.max_headers)},
    {"header_timeout", cv_h_duration_pos, offsetof(sy_config, timeouts.header)},
    {"max_connections_per_client", cv_h_u64_pos,
     offsetof(sy_config, limits.max_connections_per_client)},
    {"max_tunnels", cv_h_u64_pos, offsetof(sy_config, limits.max_tunnels)},
    {"body_timeout", cv_h_duration_pos, offsetof(sy_config, timeouts.body_idle)},
};

static int h_limits(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  return cv_parse_map(c, v, path, limits_keys, NKEYS(limits_keys), obj, NULL);
}

static int is_tchar(unsigned char ch) {
  if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')) return 1;
  return ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static int h_header_name(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  const char *s = NULL;
  if (cv_want_string(c, v, path, &s) < 0) return -1;
  if (!token_ok(s)) return cv_fail(c, v, "%s: \"%s\" is not a valid header field name", path, s);
  return cv_dup_text(c, v, s, FIELD(obj, off, char *));
}

/* forwarding.request_id_header is dropped from requests and added to
 * answers: never a field that frames a message, routes it or that the proxy
 * writes itself. */
static int h_request_id_header(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  static const char *const managed[] = {
      "host",       "content-length",    "transfer-encoding", "connection",       "keep-alive",
      "te",         "trailer",           "upgrade",           "proxy-connection", "via",
      "forwarded",  "x-forwarded-for",   "x-forwarded-proto", "x-forwarded-host", "expect",
      "set-cookie", "proxy-authenticate"};
  if (h_header_name(c, v, path, obj, off) < 0) return -1;
  const char *s = *FIELD(obj, off, char *);
  int taken = strncasecmp(s, "sec-websocket-", 14) == 0;
  for (size_t i = 0; !taken && i < sizeof managed / sizeof *managed; i++)
    taken = strcasecmp(s, managed[i]) == 0;
  if (taken)
    return cv_fail(c, v, "%s: \"%s\" is a field the proxy manages; choose another", path, s);
  return 0;
}

static const key_spec forwarding_keys[] = {
    {"x_forwarded_for", cv_h_bool, offsetof(sy_forwarding, x_forwarded_for)},
    {"x_forwarded_proto", cv_h_bool, offsetof(sy_forwarding, x_forwarded_proto)},
    {"x_forwarded_host", cv_h_bool, offsetof(sy_forwarding, x_forwarded_host)},
    {"via", cv_h_bool, offsetof(sy_forwarding, via)},
    {"request_id", cv_h_bool, offsetof(sy_forwarding, request_id)},
    {"request_id_header", h_request_id_header, offsetof(sy_forwarding, request_id_header)},
};

static int h_forwarding(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_config *cfg = obj;
  return cv_parse_map(c, v, path, forwarding_keys, NKEYS(forwarding_keys), &cfg->forwarding, NULL);
}

static int h_escaped_slashes(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  const char *s = NULL;
  if (cv_want_scalar(c, v, path, &s) < 0) return -1;
  if (strcmp(s, "keep") == 0)
    *FIELD(obj, off, int) = 0;
  else if (strcmp(s, "reject") == 0)
    *FIELD(obj, off, int) = 1;
  else
    return cv_fail(c, v, "%s: expected keep or reject, got \"%s\"", path, s);
  return 0;
}

enum { PK_NORMALIZE, PK_MERGE, PK_ESCAPED };
static const key_spec paths_keys[] = {
    [PK_NORMALIZE] = {"normalize", cv_h_bool, offsetof(sy_paths, normalize)},
    [PK_MERGE] = {"merge_slashes", cv_h_bool, offsetof(sy_paths, merge_slashes)},
    [PK_ESCAPED] = {"escaped_slashes", h_escaped_slashes,
                    offsetof(sy_paths, reject_escaped_slashes)},
};

static int h_paths(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_config *cfg = obj;
  unsigned seen = 0;
  if (cv_parse_map(c, v, path, paths_keys, NKEYS(paths_keys), &cfg->paths, &seen) < 0) return -1;
  /* The other two keys only act on a normalised path: naming them beside
   * normalize: false would promise a check that does not happen. */
  if (!cfg->paths.normalize && (seen & (1u << PK_MERGE | 1u << PK_ESCAPED)))
    return cv_fail(c, cv_map_get(c, v, "normalize"),
                   "%s: merge_slashes and escaped_slashes need normalize: true", path);
  return 0;
}

static int h_log_level(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_config *cfg = obj;
  const char *s = NULL;
  enum sy_log_level l;
  if (cv_want_string(c, v, path, &s) < 0) return -1;
  if (sy_log_level_parse(s, &l) < 0)
    return cv_fail(c, v, "%s: expected error, warn, info or debug, got \"%s\"", path, s);
  cfg->log_level = (int)l;
  return 0;
}

static int h_log_format(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  sy_config *cfg = obj;
  const char *s = NULL;
  if (cv_want_string(c, v, path, &s) < 0) return -1;
  if (strcmp(s, "text") == 0)
    cfg->log_format = SY_LOG_TEXT;
  else if (strcmp(s, "json") == 0)
    cfg->log_format = SY_LOG_JSON;
  else
    return cv_fail(c, v, "%s: expected text or json, got \"%s\"", path, s);
  return 0;
}

enum { TK_WORKERS, TK_LISTENERS };
static const key_spec top_keys[] = {
    [TK_WORKERS] = {"workers", h_workers, 0},
    [TK_LISTENERS] = {"listeners", h_listeners, 0},
    {"worker_cpu_affinity", h_worker_cpu_affinity, 0},
    {"admin", h_admin, 0},
    {"upstreams", h_upstreams, 0},
    {"routes", h_routes, 0},
    {"timeouts", h_timeouts, 0},
    {"limits", h_limits, 0},
    {"forwarding", h_forwarding, 0},
    {"paths", h_paths, 0},
    {"resolver", h_resolver, 0},
    {"access_log", cv_h_str, offsetof(sy_config, access_log)},
    {"log_level", h_log_level, 0},
    {"log_format", h_log_format, 0},
};

static void set_defaults(sy_config *cfg) {
  static uint64_t serials;
  cfg->refs = 1;
  cfg->serial = __atomic_add_fetch(&serials, 1, __ATOMIC_RELAXED);
  cfg->timeouts = (sy_timeouts){.connect = 5000,
                                .response = 60000,
                                .client_idle = 60000,
                                .header = 10000,
                                .tunnel_idle = 3600000,
                                .tunnel_fin = 30000,
                                .drain = 30000,
                                .body_idle = 60000};
  cfg->limits =
      (sy_limits){.max_connections = 100000, .max_header_bytes = 32768, .max_headers = 100};
  cfg->forwarding = (sy_forwarding){1, 1, 1, 1, 0, NULL};
  cfg->paths = (sy_paths){.normalize = 1, .merge_slashes = 1};
  cfg->log_level = SY_LOG_INFO;
  cfg->log_format = SY_LOG_TEXT;
  cfg->resolver.min_ttl = 1000;
  cfg->resolver.max_ttl = 300000;
}

static int check_admin(ctx *c, yaml_node_t *root) {
  sy_config *cfg = c->cfg;
  if (!cfg->admin_enabled) return 0;
  for (size_t i = 0; i < cfg->nlisteners; i++)
    if (cv_same_sockaddr(&cfg->admin_addr, &cfg->listeners[i].addr))
      return cv_fail(c, cv_map_get(c, cv_map_get(c, root, "admin"), "address"),
                     "admin.address: \"%s\" is also listeners[%zu]", cfg->admin_addr.text, i);
  return 0;
}

static int parse_root(ctx *c, yaml_node_t *root) {
  unsigned seen = 0;
  if (cv_parse_map(c, root, "", top_keys, NKEYS(top_keys), c->cfg, &seen) < 0 ||
      cv_require_keys(c, root, "", top_keys, seen, 1u << TK_LISTENERS) < 0)
    return -1;
  if (!c->cfg->forwarding.request_id_header &&
      cv_dup_text(c, root, "X-Request-Id", &c->cfg->forwarding.request_id_header) < 0)
    return -1;
  return resolve_routes(c, root) < 0 ? -1 : check_admin(c, root);
}

/* --------------------------------------------------------------- freeing */

static void free_strv(char **v, size_t n) {
  for (size_t i = 0; i < n; i++)
    free(v[i]);
  free(v);
}

static void free_addr(sy_addr *a) {
  free(a->text);
  free(a->host);
}

static void free_listener(sy_listener_cfg *l) {
  free(l->name);
  free_addr(&l->addr);
  for (size_t i = 0; i < l->tls.ncerts; i++) {
    free(l->tls.certs[i].cert);
    free(l->tls.certs[i].key);
  }
  free(l->tls.certs);
  free(l->tls.min_version);
  free(l->tls.ciphers);
  sy_tls_ctx_free(l->tls_ctx);
}

static void rt_unref(sy_server_rt *rt) {
  if (rt && __atomic_sub_fetch(&rt->refs, 1, __ATOMIC_ACQ_REL) == 0) free(rt);
}

void sy_server_rt_ref(sy_server_rt *rt) {
  __atomic_add_fetch(&rt->refs, 1, __ATOMIC_RELAXED);
}

void sy_server_rt_unref(sy_server_rt *rt) {
  rt_unref(rt);
}

void sy_config_adopt_state(sy_config *cfg, const sy_config *old) {
  for (size_t u = 0; u < cfg->nupstreams; u++) {
    sy_upstream_cfg *nu = &cfg->upstreams[u];
    for (size_t k = 0; k < old->nupstreams; k++) {
      const sy_upstream_cfg *ou = &old->upstreams[k];
      if (strcmp(nu->name, ou->name) != 0) continue;
      nu->rr_next = __atomic_load_n(&ou->rr_next, __ATOMIC_RELAXED);
      for (size_t i = 0; i < nu->nservers; i++)
        for (size_t j = 0; j < ou->nservers; j++) {
          if (strcmp(nu->servers[i].addr.text, ou->servers[j].addr.text) != 0) continue;
          __atomic_add_fetch(&ou->servers[j].rt->refs, 1, __ATOMIC_RELAXED);
          rt_unref(nu->servers[i].rt);
          nu->servers[i].rt = ou->servers[j].rt;
          break;
        }
    }
  }
}

static void free_upstream(sy_upstream_cfg *u) {
  free(u->name);
  free(u->hash_key);
  for (size_t i = 0; i < u->nservers; i++) {
    free_addr(&u->servers[i].addr);
    rt_unref(u->servers[i].rt);
  }
  free(u->servers);
  free(u->tls.ca);
  free(u->tls.sni);
  free(u->tls.cert);
  free(u->tls.key);
  free(u->health.path);
  sy_tls_ctx_free(u->tls_ctx);
}

static void free_route(sy_route_cfg *r) {
  free(r->name);
  free(r->host);
  free(r->path_prefix);
  free(r->path);
  free_strv(r->methods, r->nmethods);
  for (size_t i = 0; i < r->nheaders; i++) {
    free(r->headers[i].name);
    free(r->headers[i].value);
  }
  free(r->headers);
  free_strv(r->match_upgrade, r->nmatch_upgrade);
  free(r->upstream_name);
  free_strv(r->allow_upgrades, r->nallow_upgrades);
  free_strv(r->ws_subprotocols, r->nws_subprotocols);
}

static void free_config(sy_config *cfg) {
  if (cfg->release) cfg->release(cfg); /* first: server sets may share the servers */
  for (size_t i = 0; i < cfg->nlisteners; i++)
    free_listener(&cfg->listeners[i]);
  free(cfg->listeners);
  free_addr(&cfg->admin_addr);
  for (size_t i = 0; i < cfg->nupstreams; i++)
    free_upstream(&cfg->upstreams[i]);
  free(cfg->upstreams);
  for (size_t i = 0; i < cfg->nroutes; i++)
    free_route(&cfg->routes[i]);
  free(cfg->routes);
  free_strv(cfg->resolver.nameservers, cfg->resolver.nnameservers);
  free(cfg->access_log);
  free(cfg->admin_token);
  free(cfg->forwarding.request_id_header);
  free(cfg->path);
  free(cfg);
}

sy_config *sy_config_ref(sy_config *cfg) {
  if (cfg) __atomic_add_fetch(&cfg->refs, 1, __ATOMIC_RELAXED);
  return cfg;
}

void sy_config_unref(sy_config *cfg) {
  /* acq_rel so the last owner sees every other owner's reads finish first. */
  if (cfg && __atomic_sub_fetch(&cfg->refs, 1, __ATOMIC_ACQ_REL) == 0) free_config(cfg);
}

/* ---------------------------------------------------------------- loading */

static void set_error(sy_config_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_error(sy_config_error *err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->msg, sizeof err->msg, fmt, ap);
  va_end(ap);
}

/* Reader errors (bad UTF-8, control characters) carry only a byte offset. */
static yaml_mark_t mark_of_offset(const char *buf, size_t len, size_t off) {
  yaml_mark_t m = {0};
  for (size_t i = 0; i < off && i < len; i++) {
    if (buf[i] == '\n') {
      m.line++;
      m.column = 0;
    } else {
      m.column++;
    }
  }
  return m;
}

static void syntax_error(const char *name, const yaml_parser_t *p, const char *buf, size_t len,
                         sy_config_error *err) {
  yaml_mark_t m = p->problem_mark;
  const char *problem = p->problem ? p->problem : "invalid YAML";
  if (p->error == YAML_MEMORY_ERROR) {
    set_error(err, "%s: out of memory", name);
    return;
  }
  if (p->error == YAML_READER_ERROR) m = mark_of_offset(buf, len, p->problem_offset);
  if (p->context)
    set_error(err, "%s:%zu:%zu: syntax error: %s (%s at line %zu, column %zu)", name, m.line + 1,
              m.column + 1, problem, p->context, p->context_mark.line + 1,
              p->context_mark.column + 1);
  else
    set_error(err, "%s:%zu:%zu: syntax error: %s", name, m.line + 1, m.column + 1, problem);
}

/* Loads the first document and makes sure there is no second one. */
static int load_document(const char *name, const char *buf, size_t len, yaml_document_t *doc,
                         sy_config_error *err) {
  yaml_parser_t p;
  yaml_document_t extra;
  int rc = -1;
  if (!yaml_parser_initialize(&p)) {
    set_error(err, "%s: out of memory", name);
    return -1;
  }
  yaml_parser_set_input_string(&p, (const unsigned char *)buf, len);
  if (!yaml_parser_load(&p, doc)) {
    syntax_error(name, &p, buf, len, err);
    goto out;
  }
  if (!yaml_parser_load(&p, &extra)) {
    syntax_error(name, &p, buf, len, err);
    yaml_document_delete(doc);
    goto out;
  }
  yaml_node_t *second = yaml_document_get_root_node(&extra);
  if (second) {
    set_error(err, "%s:%zu:%zu: only one YAML document is allowed", name,
              second->start_mark.line + 1, second->start_mark.column + 1);
    yaml_document_delete(doc);
  } else {
    rc = 0;
  }
  yaml_document_delete(&extra);
out:
  yaml_parser_delete(&p);
  return rc;
}

/* tls takes options of its own, not the loader's structs, so that it never
 * depends on config: the pairs are copied out for the call. */
static sy_tls_ctx *server_ctx(const sy_listener_tls *tls, char *why, size_t n) {
  sy_tls_pair *pairs = calloc(tls->ncerts ? tls->ncerts : 1, sizeof *pairs);
  if (!pairs) {
    snprintf(why, n, "out of memory");
    return NULL;
  }
  for (size_t i = 0; i < tls->ncerts; i++)
    pairs[i] = (sy_tls_pair){tls->certs[i].cert, tls->certs[i].key};
  sy_tls_server_opts o = {.pairs = pairs,
                          .npairs = tls->ncerts,
                          .min_version = tls->min_version,
                          .ciphers = tls->ciphers};
  sy_tls_ctx *t = sy_tls_server_ctx_new(&o, why, n);
  free(pairs);
  return t;
}

/* The OpenSSL contexts live in the snapshot, so a reload re-reads every
 * certificate and a tunnel keeps the context it started with. */
static int build_tls(sy_config *cfg, sy_config_error *err) {
  char why[512];
  for (size_t i = 0; i < cfg->nlisteners; i++) {
    sy_listener_cfg *l = &cfg->listeners[i];
    if (!l->tls.enabled) continue;
    if (!(l->tls_ctx = server_ctx(&l->tls, why, sizeof why))) {
      set_error(err, "%s:%d:%d: listeners[%zu].tls: %s", cfg->path, l->line, l->column, i, why);
      return -1;
    }
  }
  for (size_t i = 0; i < cfg->nupstreams; i++) {
    sy_upstream_cfg *u = &cfg->upstreams[i];
    if (!u->tls.enabled) continue;
    sy_tls_client_opts o = {
        .verify = u->tls.verify, .ca = u->tls.ca, .cert = u->tls.cert, .key = u->tls.key};
    if (!(u->tls_ctx = sy_tls_client_ctx_new(&o, why, sizeof why))) {
      set_error(err, "%s: upstreams.%s.tls: %s", cfg->path, u->name, why);
      return -1;
    }
  }
  return 0;
}

sy_config *sy_config_load_string(const char *name, const char *yaml, size_t len,
                                 sy_config_error *err) {
  return sy_config_load_string_flags(name, yaml, len, 0, err);
}

sy_config *sy_config_load_string_flags(const char *name, const char *yaml, size_t len,
                                       unsigned flags, sy_config_error *err) {
  sy_config_error scratch;
  yaml_document_t doc;
  if (!err) err = &scratch;
  if (!name) name = "<config>";
  err->msg[0] = '\0';
  if (load_document(name, yaml, len, &doc, err) < 0) return NULL;

  sy_config *cfg = calloc(1, sizeof *cfg);
  ctx c = {.name = name,
           .doc = &doc,
           .cfg = cfg,
           .err = err,
           .resolve = !(flags & SY_CONFIG_NO_RESOLVE)};
  yaml_node_t *root = yaml_document_get_root_node(&doc);
  int rc = -1;
  if (!cfg || !(cfg->path = strdup(name))) {
    set_error(err, "%s: out of memory", name);
  } else if (!root) {
    set_error(err, "%s:1:1: the configuration is empty (\"listeners\" is required)", name);
  } else {
    set_defaults(cfg);
    rc = parse_root(&c, root);
  }
  yaml_document_delete(&doc);
  if (rc == 0) rc = build_tls(cfg, err);
  if (rc < 0 && cfg) {
    free_config(cfg);
    cfg = NULL;
  }
  return cfg;
}

static char *read_file(const char *path, size_t *len, sy_config_error *err) {
  FILE *f = fopen(path, "rb");
  char *buf = NULL;
  size_t cap = 0, n = 0;
  if (!f) {
    set_error(err, "%s: cannot open: %s", path, strerror(errno));
    return NULL;
  }
  for (;;) {
    if (n == cap) {
      char *nb = realloc(buf, cap = cap ? cap * 2 : 8192);
      if (!nb) {
        set_error(err, "%s: out of memory", path);
        goto cv_fail;
      }
      buf = nb;
    }
    size_t got = fread(buf + n, 1, cap - n, f);
    n += got;
    if (got == 0) break;
  }
  if (ferror(f)) {
    set_error(err, "%s: cannot read: %s", path, strerror(errno));
    goto cv_fail;
  }
  fclose(f);
  *len = n;
  return buf;
cv_fail:
  free(buf);
  fclose(f);
  return NULL;
}

sy_config *sy_config_load(const char *path, sy_config_error *err) {
  return sy_config_load_flags(path, 0, err);
}

sy_config *sy_config_load_flags(const char *path, unsigned flags, sy_config_error *err) {
  sy_config_error scratch;
  size_t len;
  if (!err) err = &scratch;
  char *buf = read_file(path, &len, err);
  if (!buf) return NULL;
  sy_config *cfg = sy_config_load_string_flags(path, buf, len, flags, err);
  free(buf);
  return cfg;
}
