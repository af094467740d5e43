/* PROXY protocol v1/v2 parser and builders (see proxyproto.h). */
#include "switchyard/proxyproto.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>

static const char v1_sig[6] = "PROXY ";
static const unsigned char v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                         0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static sy_pp_status bad(sy_pp_header *out, const char *why) {
  out->why = why;
  out->len = 0;
  return SY_PP_BAD;
}

/* An IPv4-mapped IPv6 address becomes plain IPv4, so the client address has
 * one spelling whichever way the balancer wrote it. */
static void unmap(struct sockaddr_storage *ss) {
  if (ss->ss_family != AF_INET6) return;
  const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
  if (!IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) return;
  struct sockaddr_in s4;
  memset(&s4, 0, sizeof s4);
  s4.sin_family = AF_INET;
  s4.sin_port = s6->sin6_port;
  memcpy(&s4.sin_addr, s6->sin6_addr.s6_addr + 12, 4);
  memset(ss, 0, sizeof *ss);
  memcpy(ss, &s4, sizeof s4);
}

static void set_addr(struct sockaddr_storage *ss, int family, const void *addr, uint16_t port) {
  memset(ss, 0, sizeof *ss);
  if (family == AF_INET) {
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    memcpy(&s4->sin_addr, addr, 4);
  } else {
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(port);
    memcpy(&s6->sin6_addr, addr, 16);
  }
  unmap(ss);
}

/* ---- v1 ---- */

/* Next space-terminated (or, when last, line-terminated) token. */
static int token(const char **p, const char *end, int last, char *dst, size_t cap) {
  const char *s = *p, *e = s;
  while (e < end && *e != ' ')
    e++;
  if (last != (e == end)) return -1;
  size_t n = (size_t)(e - s);
  if (n == 0 || n >= cap) return -1;
  memcpy(dst, s, n);
  dst[n] = '\0';
  *p = last ? e : e + 1;
  return 0;
}

static int port(const char *s, uint16_t *out) {
  size_t n = strlen(s);
  if (n == 0 || n > 5 || (s[0] == '0' && n > 1)) return -1;
  unsigned long v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    v = v * 10 + (unsigned long)(s[i] - '0');
  }
  if (v > 65535) return -1;
  *out = (uint16_t)v;
  return 0;
}

static sy_pp_status parse_v1(const char *buf, size_t len, sy_pp_header *out) {
  size_t lim = len < SY_PP_V1_MAX ? len : SY_PP_V1_MAX;
  size_t cr = 0;
  while (cr < lim && buf[cr] != '\r' && buf[cr] != '\n')
    cr++;
  if (cr == lim) return len >= SY_PP_V1_MAX ? bad(out, "v1 line too long") : SY_PP_MORE;
  if (buf[cr] == '\n') return bad(out, "v1 bare LF");
  if (cr + 1 >= SY_PP_V1_MAX) return bad(out, "v1 line too long");
  if (cr + 1 == len) return SY_PP_MORE;
  if (buf[cr + 1] != '\n') return bad(out, "v1 CR without LF");
  const char *p = buf + sizeof v1_sig, *end = buf + cr;
  for (const char *q = p; q < end; q++)
    if ((unsigned char)*q < 0x20 || (unsigned char)*q > 0x7e) return bad(out, "v1 control byte");
  out->version = 1;
  out->len = cr + 2;
  if ((size_t)(end - p) >= 7 && memcmp(p, "UNKNOWN", 7) == 0 && (end - p == 7 || p[7] == ' ')) {
    out->local = 1;
    return SY_PP_OK;
  }
  char proto[5], a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN], sp[6], dp[6];
  if (token(&p, end, 0, proto, sizeof proto) < 0) return bad(out, "v1 bad protocol");
  int family;
  if (strcmp(proto, "TCP4") == 0)
    family = AF_INET;
  else if (strcmp(proto, "TCP6") == 0)
    family = AF_INET6;
  else
    return bad(out, "v1 bad protocol");
  if (token(&p, end, 0, a, sizeof a) < 0 || token(&p, end, 0, b, sizeof b) < 0)
    return bad(out, "v1 bad address");
  if (token(&p, end, 0, sp, sizeof sp) < 0 || token(&p, end, 1, dp, sizeof dp) < 0)
    return bad(out, "v1 bad port");
  unsigned char ab[16], bb[16];
  if (inet_pton(family, a, ab) != 1 || inet_pton(family, b, bb) != 1)
    return bad(out, "v1 bad address");
  uint16_t sport, dport;
  if (port(sp, &sport) < 0 || port(dp, &dport) < 0) return bad(out, "v1 bad port");
  set_addr(&out->src, family, ab, sport);
  set_addr(&out->dst, family, bb, dport);
  return SY_PP_OK;
}

/* ---- v2 ---- */

static sy_pp_status parse_v2(const unsigned char *b, size_t len, sy_pp_header *out) {
  if (len < 16) return SY_PP_MORE;
  if ((b[12] & 0xF0) != 0x20) return bad(out, "v2 bad version");
  unsigned cmd = b[12] & 0x0F, fam = b[13];
  size_t plen = ((size_t)b[14] << 8) | b[15];
  if (cmd > 1) return bad(out, "v2 bad command");
  if (plen > SY_PP_V2_MAX_PAYLOAD) return bad(out, "v2 header too long");
  size_t alen;
  /* The families the spec defines: UNSPEC, then TCP/UDP over IPv4, IPv6 and
   * AF_UNIX. Of a PROXY command only TCP's addresses are taken; for the
   * others (HAProxy in front of a unix socket, say) the connection's own
   * endpoints are used, as for LOCAL, rather than the connection refused. */
  if (cmd == 0 || fam == 0x00)
    alen = 0; /* the address block, whatever its family, is ignored */
  else if (fam == 0x11 || fam == 0x12)
    alen = 12;
  else if (fam == 0x21 || fam == 0x22)
    alen = 36;
  else if (fam == 0x31 || fam == 0x32)
    alen = 216;
  else
    return bad(out, "v2 unknown family");
  if (plen < alen) return bad(out, "v2 length too short for addresses");
  if (len < 16 + plen) return SY_PP_MORE;
  if (cmd == 1) {
    /* TLVs are skipped, but must tile the rest exactly (after whatever
     * address block the family has). */
    size_t off = alen;
    while (off < plen) {
      if (plen - off < 3) return bad(out, "v2 truncated TLV");
      size_t tl = ((size_t)b[16 + off + 1] << 8) | b[16 + off + 2];
      if (tl > plen - off - 3) return bad(out, "v2 TLV overruns header");
      off += 3 + tl;
    }
  }
  out->version = 2;
  out->len = 16 + plen;
  if (cmd == 0 || (fam != 0x11 && fam != 0x21)) {
    out->local = 1;
    return SY_PP_OK;
  }
  const unsigned char *a = b + 16;
  if (fam == 0x11) {
    set_addr(&out->src, AF_INET, a, (uint16_t)((a[8] << 8) | a[9]));
    set_addr(&out->dst, AF_INET, a + 4, (uint16_t)((a[10] << 8) | a[11]));
  } else {
    set_addr(&out->src, AF_INET6, a, (uint16_t)((a[32] << 8) | a[33]));
    set_addr(&out->dst, AF_INET6, a + 16, (uint16_t)((a[34] << 8) | a[35]));
  }
  return SY_PP_OK;
}

sy_pp_status sy_pp_parse(const char *buf, size_t len, unsigned accept, sy_pp_header *out) {
  memset(out, 0, sizeof *out);
  if (len == 0) return SY_PP_MORE;
  if (accept & SY_PP_V1) {
    size_t n = len < sizeof v1_sig ? len : sizeof v1_sig;
    if (memcmp(buf, v1_sig, n) == 0)
      return n < sizeof v1_sig ? SY_PP_MORE : parse_v1(buf, len, out);
  }
  if (accept & SY_PP_V2) {
    size_t n = len < sizeof v2_sig ? len : sizeof v2_sig;
    if (memcmp(buf, v2_sig, n) == 0)
      return n < sizeof v2_sig ? SY_PP_MORE : parse_v2((const unsigned char *)buf, len, out);
  }
  return bad(out, "no PROXY header");
}

/* ---- builders ---- */

typedef struct pp_addr {
  int family; /* AF_INET, AF_INET6, or 0 when unsupported */
  unsigned char a[16];
  uint16_t port; /* host order */
} pp_addr;

static pp_addr read_addr(const struct sockaddr *sa) {
  pp_addr r;
  memset(&r, 0, sizeof r);
  if (sa && sa->sa_family == AF_INET) {
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
    r.family = AF_INET;
    memcpy(r.a, &s4->sin_addr, 4);
    r.port = ntohs(s4->sin_port);
  } else if (sa && sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
    r.port = ntohs(s6->sin6_port);
    if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
      r.family = AF_INET;
      memcpy(r.a, s6->sin6_addr.s6_addr + 12, 4);
    } else {
      r.family = AF_INET6;
      memcpy(r.a, &s6->sin6_addr, 16);
    }
  }
  return r;
}

static void to_mapped(pp_addr *x) {
  if (x->family != AF_INET) return;
  unsigned char v4[4];
  memcpy(v4, x->a, 4);
  memset(x->a, 0, 10);
  x->a[10] = x->a[11] = 0xFF;
  memcpy(x->a + 12, v4, 4);
  x->family = AF_INET6;
}

/* Both sides in one family, or 0 when either is unsupported. */
static int pair(const struct sockaddr *src, const struct sockaddr *dst, pp_addr *s, pp_addr *d) {
  *s = read_addr(src);
  *d = read_addr(dst);
  if (!s->family || !d->family) return 0;
  if (s->family != d->family) {
    to_mapped(s);
    to_mapped(d);
  }
  return s->family;
}

int sy_pp_build_v1(sy_buf *out, const struct sockaddr *src, const struct sockaddr *dst) {
  pp_addr s, d;
  int family = pair(src, dst, &s, &d);
  if (!family) return sy_buf_append(out, "PROXY UNKNOWN\r\n", 15);
  char a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN];
  if (!inet_ntop(family, s.a, a, sizeof a) || !inet_ntop(family, d.a, b, sizeof b)) return -1;
  return sy_buf_appendf(out, "PROXY %s %s %s %u %u\r\n", family == AF_INET ? "TCP4" : "TCP6", a, b,
                        (unsigned)s.port, (unsigned)d.port);
}

int sy_pp_build_v2(sy_buf *out, const struct sockaddr *src, const struct sockaddr *dst) {
  pp_addr s, d;
  int family = pair(src, dst, &s, &d);
  unsigned char h[16 + 36];
  memcpy(h, v2_sig, sizeof v2_sig);
  size_t alen = family == AF_INET ? 4 : 16, plen = family ? 2 * alen + 4 : 0;
  h[12] = family ? 0x21 : 0x20;
  h[13] = family == AF_INET ? 0x11 : family == AF_INET6 ? 0x21 : 0x00;
  h[14] = 0;
  h[15] = (unsigned char)plen;
  if (family) {
    unsigned char *a = h + 16;
    memcpy(a, s.a, alen);
    memcpy(a + alen, d.a, alen);
    a[2 * alen] = (unsigned char)(s.port >> 8);
    a[2 * alen + 1] = (unsigned char)s.port;
    a[2 * alen + 2] = (unsigned char)(d.port >> 8);
    a[2 * alen + 3] = (unsigned char)d.port;
  }
  return sy_buf_append(out, h, 16 + plen);
}
