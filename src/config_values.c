/* The YAML walker and the typed values of the configuration: diagnostics with
 * the node's file:line:column, node access, the table-driven mapping walker that
 * rejects unknown and duplicate keys, and the parsers every section shares
 * (strings, booleans, durations, sizes, counts, host:port addresses). */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config_int.h"

/* ---------------------------------------------------------------- errors */

static int vfail_at(ctx *c, yaml_mark_t m, const char *fmt, va_list ap) {
  size_t cap = sizeof c->err->msg;
  int n = snprintf(c->err->msg, cap, "%s:%zu:%zu: ", c->name, m.line + 1, m.column + 1);
  if (n >= 0 && (size_t)n < cap) vsnprintf(c->err->msg + n, cap - (size_t)n, fmt, ap);
  return -1;
}

int cv_fail(ctx *c, const yaml_node_t *n, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfail_at(c, n->start_mark, fmt, ap);
  va_end(ap);
  return -1;
}

int cv_oom(ctx *c, const yaml_node_t *n) {
  return cv_fail(c, n, "out of memory");
}

void *cv_xcalloc(ctx *c, const yaml_node_t *n, size_t count, size_t size) {
  /* calloc(0, ...) may return NULL, which would read as an allocation failure. */
  void *p = calloc(count ? count : 1, size);
  if (!p) cv_oom(c, n);
  return p;
}

/* ----------------------------------------------------------- node access */

yaml_node_t *cv_node_at(ctx *c, int index) {
  return yaml_document_get_node(c->doc, index);
}

static const char *scalar(const yaml_node_t *n) {
  return (const char *)n->data.scalar.value;
}

/* Only plain scalars can be YAML nulls; "null" in quotes is a string. */
int cv_is_null(const yaml_node_t *n) {
  static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};
  if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return 0;
  for (size_t i = 0; i < NKEYS(nulls); i++)
    if (strcmp(scalar(n), nulls[i]) == 0) return 1;
  return 0;
}

static const char *kind(const yaml_node_t *n) {
  if (n->type == YAML_MAPPING_NODE) return "a mapping";
  if (n->type == YAML_SEQUENCE_NODE) return "a list";
  return cv_is_null(n) ? "null" : "a scalar";
}

const char *cv_where(const char *path) {
  return *path ? path : "top level";
}

void cv_join_key(char *out, const char *path, const char *key) {
  snprintf(out, SY_PATH_LEN, "%s%s%s", path, *path ? "." : "", key);
}

void cv_join_idx(char *out, const char *path, size_t i) {
  snprintf(out, SY_PATH_LEN, "%s[%zu]", path, i);
}

size_t cv_seq_len(const yaml_node_t *n) {
  return (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
}

yaml_node_t *cv_seq_item(ctx *c, const yaml_node_t *n, size_t i) {
  return cv_node_at(c, n->data.sequence.items.start[i]);
}

size_t cv_map_len(const yaml_node_t *n) {
  return (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
}

yaml_node_t *cv_map_get(ctx *c, const yaml_node_t *map, const char *key) {
  if (!map || map->type != YAML_MAPPING_NODE) return NULL;
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
    yaml_node_t *k = cv_node_at(c, p->key);
    if (k->type == YAML_SCALAR_NODE && strcmp(scalar(k), key) == 0) return cv_node_at(c, p->value);
  }
  return NULL;
}

int cv_want_map(ctx *c, const yaml_node_t *n, const char *path) {
  if (n->type == YAML_MAPPING_NODE) return 0;
  return cv_fail(c, n, "%s: expected a mapping, got %s", cv_where(path), kind(n));
}

int cv_want_seq(ctx *c, const yaml_node_t *n, const char *path, int nonempty) {
  if (n->type != YAML_SEQUENCE_NODE)
    return cv_fail(c, n, "%s: expected a list, got %s", path, kind(n));
  if (nonempty && cv_seq_len(n) == 0) return cv_fail(c, n, "%s: must not be empty", path);
  return 0;
}

/* Any scalar, null included: used cv_where the text itself is validated next. */
int cv_want_scalar(ctx *c, const yaml_node_t *n, const char *path, const char **out) {
  if (n->type != YAML_SCALAR_NODE)
    return cv_fail(c, n, "%s: expected a scalar value, got %s", path, kind(n));
  if (strlen(scalar(n)) != n->data.scalar.length)
    return cv_fail(c, n, "%s: value contains a NUL character", path);
  *out = scalar(n);
  return 0;
}

int cv_want_string(ctx *c, const yaml_node_t *n, const char *path, const char **out) {
  if (cv_want_scalar(c, n, path, out) < 0) return -1;
  if (cv_is_null(n)) return cv_fail(c, n, "%s: expected a string, got null", path);
  if (!**out) return cv_fail(c, n, "%s: must not be empty", path);
  return 0;
}

int cv_dup_text(ctx *c, const yaml_node_t *n, const char *s, char **out) {
  *out = strdup(s);
  return *out ? 0 : cv_oom(c, n);
}

int cv_dup_string(ctx *c, const yaml_node_t *n, const char *path, char **out) {
  const char *s = NULL;
  if (cv_want_string(c, n, path, &s) < 0) return -1;
  return cv_dup_text(c, n, s, out);
}

/* Keys must be scalars and unique; YAML allows both, our schema does not. */
int cv_check_key(ctx *c, const yaml_node_t *map, const yaml_node_pair_t *pair, const char *path) {
  yaml_node_t *k = cv_node_at(c, pair->key);
  if (k->type != YAML_SCALAR_NODE)
    return cv_fail(c, k, "%s: keys must be strings, got %s", cv_where(path), kind(k));
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < pair; p++) {
    yaml_node_t *prev = cv_node_at(c, p->key);
    if (prev->type == YAML_SCALAR_NODE && strcmp(scalar(prev), scalar(k)) == 0) {
      if (*path) return cv_fail(c, k, "duplicate key \"%s\" in %s", scalar(k), path);
      return cv_fail(c, k, "duplicate key \"%s\" at top level", scalar(k));
    }
  }
  return 0;
}

/* Walks a mapping against its key table. *seen gets bit i for keys[i] present,
 * which callers use for required keys and for defaults that depend on presence. */
int cv_parse_map(ctx *c, yaml_node_t *map, const char *path, const key_spec *keys, size_t nkeys,
                 void *obj, unsigned *seen) {
  unsigned mask = 0;
  if (cv_want_map(c, map, path) < 0) return -1;
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
    if (cv_check_key(c, map, p, path) < 0) return -1;
    yaml_node_t *k = cv_node_at(c, p->key);
    size_t i = 0;
    while (i < nkeys && strcmp(keys[i].key, scalar(k)) != 0)
      i++;
    if (i == nkeys) {
      if (*path) return cv_fail(c, k, "unknown key \"%s\" in %s", scalar(k), path);
      return cv_fail(c, k, "unknown key \"%s\" at top level", scalar(k));
    }
    char child[SY_PATH_LEN];
    cv_join_key(child, path, keys[i].key);
    if (keys[i].fn(c, cv_node_at(c, p->value), child, obj, keys[i].off) < 0) return -1;
    mask |= 1u << i;
  }
  if (seen) *seen = mask;
  return 0;
}

/* Reports the first key of `required` (a bit set over keys) that is absent. */
int cv_require_keys(ctx *c, const yaml_node_t *map, const char *path, const key_spec *keys,
                    unsigned seen, unsigned required) {
  for (size_t i = 0; required >> i; i++)
    if ((required & (1u << i)) && !(seen & (1u << i)))
      return cv_fail(c, map, "%s: missing required key \"%s\"", cv_where(path), keys[i].key);
  return 0;
}

/* ------------------------------------------------------- scalar parsers */

/* Digits only: YAML's own integer forms (signs, 0x, 0o, underscores) are refused
 * so that a config means the same thing to every reader. */
int cv_parse_u64(const char **sp, uint64_t *out) {
  const char *s = *sp;
  uint64_t v = 0;
  if (*s < '0' || *s > '9') return -1;
  for (; *s >= '0' && *s <= '9'; s++) {
    if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, (uint64_t)(*s - '0'), &v))
      return -1;
  }
  *sp = s;
  *out = v;
  return 0;
}

typedef struct unit {
  const char *name;
  uint64_t mul;
} unit;

static int parse_with_units(const char *s, const unit *units, size_t nunits, uint64_t *out) {
  uint64_t v;
  if (!s || cv_parse_u64(&s, &v) < 0) return -1;
  for (size_t i = 0; i < nunits; i++) {
    if (strcmp(s, units[i].name) == 0) {
      if (__builtin_mul_overflow(v, units[i].mul, &v)) return -1;
      *out = v;
      return 0;
    }
  }
  return -1;
}

int sy_parse_duration(const char *s, sy_msec_t *out) {
  static const unit units[] = {
      {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000},
  };
  return parse_with_units(s, units, NKEYS(units), out);
}

int sy_parse_size(const char *s, uint64_t *out) {
  static const unit units[] = {
      {"", 1},         {"B", 1},          {"KB", 1000},       {"KiB", 1024},
      {"MB", 1000000}, {"MiB", 1u << 20}, {"GB", 1000000000}, {"GiB", 1u << 30},
  };
  return parse_with_units(s, units, NKEYS(units), out);
}

static int parse_count(ctx *c, const yaml_node_t *v, const char *path, uint64_t max,
                       uint64_t *out) {
  const char *s, *p;
  uint64_t n;
  if (cv_want_scalar(c, v, path, &s) < 0) return -1;
  p = s;
  if (cv_parse_u64(&p, &n) < 0 || *p || n == 0 || n > max)
    return cv_fail(c, v, "%s: expected a positive integer, got \"%s\"", path, s);
  *out = n;
  return 0;
}

/* ----------------------------------------------------- generic handlers */

int cv_h_str(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  return cv_dup_string(c, v, path, FIELD(obj, off, char *));
}

int cv_h_bool(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  const char *s = NULL;
  if (cv_want_scalar(c, v, path, &s) < 0) return -1;
  if (strcmp(s, "true") == 0)
    *FIELD(obj, off, int) = 1;
  else if (strcmp(s, "false") == 0)
    *FIELD(obj, off, int) = 0;
  else
    return cv_fail(c, v, "%s: expected true or false, got \"%s\"", path, s);
  return 0;
}

int cv_h_duration(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  const char *s = NULL;
  if (cv_want_scalar(c, v, path, &s) < 0) return -1;
  if (sy_parse_duration(s, FIELD(obj, off, sy_msec_t)) < 0)
    return cv_fail(c, v, "%s: invalid duration \"%s\" (expected e.g. 250ms, 5s, 2m, 1h, 1d)", path,
                   s);
  /* Timers count milliseconds in 32 bits (the tunnel's wheel) and add them
   * to the clock (libuv): past this they would wrap. */
  if (*FIELD(obj, off, sy_msec_t) > SY_DURATION_MAX_MS)
    return cv_fail(c, v, "%s: at most 49d, got \"%s\"", path, s);
  return 0;
}

int cv_h_duration_pos(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  if (cv_h_duration(c, v, path, obj, off) < 0) return -1;
  if (*FIELD(obj, off, sy_msec_t) == 0) return cv_fail(c, v, "%s: must be greater than zero", path);
  return 0;
}

int cv_h_size_pos(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  const char *s;
  uint64_t n;
  if (cv_want_scalar(c, v, path, &s) < 0) return -1;
  if (sy_parse_size(s, &n) < 0)
    return cv_fail(c, v, "%s: invalid size \"%s\" (expected e.g. 512, 64KiB, 1MiB, 10KB)", path, s);
  if (n == 0) return cv_fail(c, v, "%s: must be greater than zero", path);
  *FIELD(obj, off, uint64_t) = n;
  return 0;
}

int cv_h_u64_pos(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  return parse_count(c, v, path, UINT64_MAX, FIELD(obj, off, uint64_t));
}

int cv_h_uint_pos(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  uint64_t n;
  if (parse_count(c, v, path, UINT_MAX, &n) < 0) return -1;
  *FIELD(obj, off, unsigned) = (unsigned)n;
  return 0;
}

int cv_parse_str_list(ctx *c, yaml_node_t *v, const char *path, int nonempty, char ***out,
                      size_t *nout) {
  if (cv_want_seq(c, v, path, nonempty) < 0) return -1;
  size_t n = cv_seq_len(v);
  if (!(*out = cv_xcalloc(c, v, n, sizeof **out))) return -1;
  *nout = n;
  for (size_t i = 0; i < n; i++) {
    char child[SY_PATH_LEN];
    cv_join_idx(child, path, i);
    if (cv_dup_string(c, cv_seq_item(c, v, i), child, &(*out)[i]) < 0) return -1;
  }
  return 0;
}

/* ------------------------------------------------------------- addresses */

int cv_split_addr(ctx *c, const yaml_node_t *v, const char *path, const char *s, addr_parts *ap) {
  const char *host = s, *host_end, *port;
  if (*s == '[') {
    host = s + 1;
    host_end = strchr(host, ']');
    if (!host_end) return cv_fail(c, v, "%s: invalid address \"%s\": missing ']'", path, s);
    if (host_end[1] != ':')
      return cv_fail(c, v, "%s: invalid address \"%s\": missing port", path, s);
    port = host_end + 2;
    ap->bracketed = 1;
  } else {
    host_end = strrchr(s, ':');
    if (!host_end) return cv_fail(c, v, "%s: invalid address \"%s\": missing port", path, s);
    if (memchr(s, ':', (size_t)(host_end - s)))
      return cv_fail(c, v, "%s: invalid address \"%s\": IPv6 addresses need brackets", path, s);
    port = host_end + 1;
  }
  uint64_t p;
  const char *end = port;
  if (cv_parse_u64(&end, &p) < 0 || *end || p == 0 || p > 65535)
    return cv_fail(c, v, "%s: invalid port in address \"%s\" (expected 1-65535)", path, s);
  size_t hlen = (size_t)(host_end - host);
  if (hlen >= sizeof ap->host) return cv_fail(c, v, "%s: host name too long in \"%s\"", path, s);
  memcpy(ap->host, host, hlen);
  ap->host[hlen] = '\0';
  ap->port = (unsigned)p;
  return 0;
}

/* IPv4 first: a "localhost" upstream is far more often a 127.0.0.1-only backend
 * than a ::1-only one, and we keep exactly one address per entry. */
static const struct addrinfo *pick_addr(const struct addrinfo *res) {
  for (const struct addrinfo *ai = res; ai; ai = ai->ai_next)
    if (ai->ai_family == AF_INET) return ai;
  return res;
}

static int resolve_addr(ctx *c, const yaml_node_t *v, const char *path, const char *text,
                        const addr_parts *ap, int numeric, sy_addr *out) {
  struct addrinfo hints, *res = NULL;
  char port[8];
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (numeric ? AI_NUMERICHOST : 0);
  snprintf(port, sizeof port, "%u", ap->port);
  int rc = getaddrinfo(ap->host, port, &hints, &res);
  if (rc != 0 || !res) {
    if (numeric)
      return cv_fail(c, v, "%s: \"%s\" is not a numeric IP address, \"*\" or localhost", path,
                     text);
    return cv_fail(c, v, "%s: cannot resolve \"%s\": %s", path, ap->host,
                   rc ? gai_strerror(rc) : "no address");
  }
  const struct addrinfo *ai = pick_addr(res);
  memcpy(&out->sa, ai->ai_addr, ai->ai_addrlen);
  out->salen = (socklen_t)ai->ai_addrlen;
  freeaddrinfo(res);
  return 0;
}

/* RFC 1123 host names (labels of letters, digits and '-', 1-63 each, at most
 * 253 in all, one trailing dot allowed); '_' too, as service records use it. */
int cv_host_name_ok(const char *h) {
  size_t len = strlen(h), label = 0;
  if (len == 0 || len > 254 || (len == 254 && h[253] != '.')) return 0;
  for (const char *p = h; *p; p++) {
    if (*p == '.') {
      if (label == 0 || p[-1] == '-') return 0;
      label = 0;
    } else if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
               *p == '_' || (*p == '-' && label > 0)) {
      if (++label > 63) return 0;
    } else {
      return 0;
    }
  }
  return h[len - 1] != '-';
}

static int is_numeric_host(const char *h) {
  struct in_addr a4;
  struct in6_addr a6;
  return inet_pton(AF_INET, h, &a4) == 1 || inet_pton(AF_INET6, h, &a6) == 1;
}

/* Listeners bind, so they take numeric hosts, "*"/"" for any, or localhost: a
 * DNS lookup deciding which interface we listen on is a surprise nobody wants. */
int cv_parse_addr(ctx *c, yaml_node_t *v, const char *path, enum addr_kind k, sy_addr *out) {
  const char *s;
  addr_parts ap = {0};
  if (cv_want_string(c, v, path, &s) < 0 || cv_split_addr(c, v, path, s, &ap) < 0) return -1;
  int wildcard = !ap.bracketed && (!ap.host[0] || strcmp(ap.host, "*") == 0);
  if (wildcard && k == ADDR_CONNECT)
    return cv_fail(c, v, "%s: address \"%s\" needs a host", path, s);
  if (wildcard) strcpy(ap.host, "0.0.0.0");
  if (!ap.host[0]) return cv_fail(c, v, "%s: address \"%s\" needs a host", path, s);
  int numeric = ap.bracketed || (k == ADDR_BIND && strcasecmp(ap.host, "localhost") != 0);
  if (!numeric && k == ADDR_CONNECT && !cv_host_name_ok(ap.host))
    return cv_fail(c, v, "%s: invalid host name \"%s\" in \"%s\"", path, ap.host, s);
  /* A check (-t) must not depend on DNS: an upstream name is left unresolved
   * (salen 0); numeric addresses need no lookup and are still checked. */
  int lookup = c->resolve || k == ADDR_BIND || numeric || is_numeric_host(ap.host);
  if (lookup && resolve_addr(c, v, path, s, &ap, numeric, out) < 0) return -1;
  out->port = (uint16_t)ap.port;
  if (cv_dup_text(c, v, s, &out->text) < 0 || cv_dup_text(c, v, ap.host, &out->host) < 0) return -1;
  return 0;
}

int cv_h_bind_addr(ctx *c, yaml_node_t *v, const char *path, void *obj, size_t off) {
  return cv_parse_addr(c, v, path, ADDR_BIND, FIELD(obj, off, sy_addr));
}

int cv_same_sockaddr(const sy_addr *a, const sy_addr *b) {
  if (a->sa.ss_family != b->sa.ss_family) return 0;
  if (a->sa.ss_family == AF_INET) {
    const struct sockaddr_in *x = (const void *)&a->sa, *y = (const void *)&b->sa;
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  if (a->sa.ss_family == AF_INET6) {
    const struct sockaddr_in6 *x = (const void *)&a->sa, *y = (const void *)&b->sa;
    return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
  }
  return a->salen == b->salen && memcmp(&a->sa, &b->sa, a->salen) == 0;
}
