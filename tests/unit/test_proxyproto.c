/* PROXY protocol parser and builders: valid v1/v2 headers, every prefix,
 * every single-byte mutation (run under ASan too), refusals, round trips. */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "switchyard/proxyproto.h"

#define BOTH (SY_PP_V1 | SY_PP_V2)

/* Parses from an exactly sized heap copy, so any overread shows under ASan. */
static sy_pp_status parse(const void *p, size_t n, unsigned accept, sy_pp_header *h) {
  char *c = malloc(n ? n : 1);
  ck_assert_ptr_nonnull(c);
  if (n) memcpy(c, p, n);
  sy_pp_status r = sy_pp_parse(c, n, accept, h);
  free(c);
  if (r == SY_PP_OK) {
    ck_assert_uint_gt(h->len, 0);
    ck_assert_uint_le(h->len, n);
    ck_assert_ptr_null(h->why);
  } else if (r == SY_PP_BAD) {
    ck_assert_ptr_nonnull(h->why);
  } else {
    ck_assert_int_eq(r, SY_PP_MORE);
  }
  return r;
}

static void check_addr(const struct sockaddr_storage *ss, int family, const char *ip,
                       unsigned port) {
  char txt[INET6_ADDRSTRLEN];
  ck_assert_int_eq(ss->ss_family, family);
  if (family == AF_INET) {
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
    ck_assert_ptr_nonnull(inet_ntop(AF_INET, &s4->sin_addr, txt, sizeof txt));
    ck_assert_uint_eq(ntohs(s4->sin_port), port);
  } else {
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
    ck_assert_ptr_nonnull(inet_ntop(AF_INET6, &s6->sin6_addr, txt, sizeof txt));
    ck_assert_uint_eq(ntohs(s6->sin6_port), port);
  }
  ck_assert_str_eq(txt, ip);
}

/* Every proper prefix is MORE, the whole is OK, and trailing bytes stay the
 * caller's. */
static sy_pp_header whole(const void *p, size_t n, unsigned accept) {
  sy_pp_header h;
  for (size_t i = 0; i < n; i++)
    ck_assert_msg(parse(p, i, accept, &h) == SY_PP_MORE, "prefix %zu not MORE", i);
  char *more = malloc(n + 5);
  ck_assert_ptr_nonnull(more);
  memcpy(more, p, n);
  memcpy(more + n, "GET /", 5);
  ck_assert_int_eq(parse(more, n + 5, accept, &h), SY_PP_OK);
  ck_assert_uint_eq(h.len, n);
  free(more);
  ck_assert_int_eq(parse(p, n, accept, &h), SY_PP_OK);
  return h;
}

static const char V1_TCP4[] = "PROXY TCP4 192.168.0.1 10.0.0.2 56324 443\r\n";
static const char V1_TCP6[] = "PROXY TCP6 2001:db8::1 ::1 65535 0\r\n";

/* A v2 header over IPv4, 127.0.0.5:1234 -> 127.0.0.1:80, with two TLVs. */
static const unsigned char V2_TCP4_TLV[] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55,
                                            0x49, 0x54, 0x0A, 0x21, 0x11, 0x00, 0x14, 127, 0, 0, 5,
                                            127, 0, 0, 1, 0x04, 0xD2, 0x00, 0x50,
                                            /* PP2_TYPE_ALPN "h2", PP2_TYPE_NOOP empty */
                                            0x01, 0x00, 0x02, 'h', '2', 0x04, 0x00, 0x00};

START_TEST(v1_valid) {
  sy_pp_header h = whole(V1_TCP4, strlen(V1_TCP4), SY_PP_V1);
  ck_assert_int_eq(h.version, 1);
  ck_assert_int_eq(h.local, 0);
  check_addr(&h.src, AF_INET, "192.168.0.1", 56324);
  check_addr(&h.dst, AF_INET, "10.0.0.2", 443);
  h = whole(V1_TCP6, strlen(V1_TCP6), BOTH);
  check_addr(&h.src, AF_INET6, "2001:db8::1", 65535);
  check_addr(&h.dst, AF_INET6, "::1", 0);
  const char *mapped = "PROXY TCP6 ::ffff:127.0.0.5 ::1 1 2\r\n";
  h = whole(mapped, strlen(mapped), SY_PP_V1);
  check_addr(&h.src, AF_INET, "127.0.0.5", 1);
  const char *unk[] = {"PROXY UNKNOWN\r\n", "PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"};
  for (size_t i = 0; i < 2; i++) {
    h = whole(unk[i], strlen(unk[i]), SY_PP_V1);
    ck_assert_int_eq(h.local, 1);
    ck_assert_int_eq(h.src.ss_family, 0);
  }
  /* The longest legal line is 107 bytes. */
  char max[128] = "PROXY UNKNOWN ";
  while (strlen(max) < 105)
    strcat(max, "x");
  strcat(max, "\r\n");
  ck_assert_uint_eq(strlen(max), 107);
  ck_assert_int_eq(parse(max, 107, SY_PP_V1, &h), SY_PP_OK);
}
END_TEST

START_TEST(v1_refused) {
  const char *bads[] = {
      "PROXY TCP4 192.168.0.1 10.0.0.2 56324 443\n",  /* bare LF */
      "PROXY TCP4 192.168.0.1 10.0.0.2 56324 443\rX", /* CR without LF */
      "PROXY TCP4  192.168.0.1 10.0.0.2 1 2\r\n",     /* double space */
      "PROXY TCP4 192.168.0.1 10.0.0.2 1 2 \r\n",     /* trailing space */
      "PROXY TCP4 192.168.0.1 10.0.0.2 1\r\n",        /* missing port */
      "PROXY TCP4 192.168.0.1 10.0.0.2 01 2\r\n",     /* leading zero */
      "PROXY TCP4 192.168.0.1 10.0.0.2 65536 2\r\n",  /* port range */
      "PROXY TCP4 192.168.0.1 10.0.0.2 -1 2\r\n",
      "PROXY TCP4 192.168.0.1 10.0.0.2 1 2 3\r\n",
      "PROXY TCP4 ::1 10.0.0.2 1 2\r\n",           /* family mismatch */
      "PROXY TCP6 192.168.0.1 ::1 1 2\r\n",        /* family mismatch */
      "PROXY TCP4 192.168.0.256 10.0.0.2 1 2\r\n", /* bad octet */
      "PROXY TCP4 192.168.0 10.0.0.2 1 2\r\n",
      "PROXY UDP4 192.168.0.1 10.0.0.2 1 2\r\n",
      "PROXY UNKNOWNX\r\n",
      "PROXY \r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 1\t2\r\n",
      "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
      "GET / HTTP/1.1\r\n",
      "\r\n\r\n\r\n",
  };
  sy_pp_header h;
  for (size_t i = 0; i < sizeof bads / sizeof *bads; i++)
    ck_assert_msg(parse(bads[i], strlen(bads[i]), SY_PP_V1, &h) == SY_PP_BAD, "accepted %s",
                  bads[i]);
  /* Oversized: no CRLF within 107 bytes. */
  char big[300] = "PROXY UNKNOWN ";
  while (strlen(big) < 106)
    strcat(big, "x");
  ck_assert_int_eq(parse(big, strlen(big), SY_PP_V1, &h), SY_PP_MORE);
  strcat(big, "x\r\n");
  ck_assert_int_eq(parse(big, strlen(big), SY_PP_V1, &h), SY_PP_BAD);
  while (strlen(big) < 290)
    strcat(big, "y");
  ck_assert_int_eq(parse(big, strlen(big), SY_PP_V1, &h), SY_PP_BAD);
  /* A v1 header is not recognised when only v2 is accepted, and v.v. */
  ck_assert_int_eq(parse(V1_TCP4, strlen(V1_TCP4), SY_PP_V2, &h), SY_PP_BAD);
  ck_assert_int_eq(parse(V2_TCP4_TLV, sizeof V2_TCP4_TLV, SY_PP_V1, &h), SY_PP_BAD);
  ck_assert_int_eq(parse("P", 1, SY_PP_V2, &h), SY_PP_BAD);
  ck_assert_int_eq(parse("\r", 1, SY_PP_V1, &h), SY_PP_BAD);
  ck_assert_int_eq(parse("\r", 1, SY_PP_V2, &h), SY_PP_MORE);
}
END_TEST

START_TEST(v2_valid) {
  sy_pp_header h = whole(V2_TCP4_TLV, sizeof V2_TCP4_TLV, SY_PP_V2);
  ck_assert_int_eq(h.version, 2);
  ck_assert_int_eq(h.local, 0);
  check_addr(&h.src, AF_INET, "127.0.0.5", 1234);
  check_addr(&h.dst, AF_INET, "127.0.0.1", 80);

  unsigned char v6[16 + 36];
  memcpy(v6, V2_TCP4_TLV, 12);
  v6[12] = 0x21;
  v6[13] = 0x21;
  v6[14] = 0;
  v6[15] = 36;
  memset(v6 + 16, 0, 32);
  v6[16] = 0x20, v6[17] = 0x01, v6[18] = 0x0d, v6[19] = 0xb8, v6[31] = 1; /* 2001:db8::1 */
  v6[47] = 1;                                                             /* ::1 */
  v6[48] = 0xFF, v6[49] = 0xFF, v6[50] = 0, v6[51] = 0;
  h = whole(v6, sizeof v6, BOTH);
  check_addr(&h.src, AF_INET6, "2001:db8::1", 65535);
  check_addr(&h.dst, AF_INET6, "::1", 0);

  /* LOCAL, UNSPEC (HAProxy's health checks), and LOCAL with an ignored
   * address block. */
  unsigned char local[16 + 12];
  memcpy(local, V2_TCP4_TLV, 16 + 12);
  local[12] = 0x20;
  local[13] = 0x00;
  local[15] = 0;
  h = whole(local, 16, SY_PP_V2);
  ck_assert_int_eq(h.local, 1);
  local[13] = 0x11;
  local[15] = 12;
  h = whole(local, sizeof local, SY_PP_V2);
  ck_assert_int_eq(h.local, 1);
  ck_assert_uint_eq(h.len, 28);
}
END_TEST

/* A PROXY command for a family other than TCP: the header is read whole (its
 * TLVs still checked) and the connection's own endpoints used, as for LOCAL. */
START_TEST(v2_other_families_are_local) {
  unsigned char b[16 + 216 + 5];
  memset(b, 0, sizeof b);
  memcpy(b, V2_TCP4_TLV, 16);
  struct {
    unsigned char fam;
    size_t alen;
  } cases[] = {{0x00, 0}, {0x12, 12}, {0x22, 36}, {0x31, 216}, {0x32, 216}};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    size_t plen = cases[i].alen + 5; /* the addresses, then one TLV of 2 bytes */
    b[12] = 0x21, b[13] = cases[i].fam, b[14] = 0, b[15] = (unsigned char)plen;
    unsigned char *tlv = b + 16 + cases[i].alen;
    tlv[0] = 0x04, tlv[1] = 0, tlv[2] = 2, tlv[3] = 'o', tlv[4] = 'k';
    sy_pp_header h;
    ck_assert_msg(parse(b, 16 + plen, SY_PP_V2, &h) == SY_PP_OK, "family 0x%02x", cases[i].fam);
    ck_assert_int_eq(h.local, 1);
    ck_assert_uint_eq(h.len, 16 + plen);
    ck_assert_int_eq(parse(b, 16 + plen - 1, SY_PP_V2, &h), SY_PP_MORE);
    tlv[2] = 3; /* now the TLV overruns the header */
    ck_assert_int_eq(parse(b, 16 + plen, SY_PP_V2, &h), SY_PP_BAD);
  }
}
END_TEST

START_TEST(v2_refused) {
  unsigned char b[16 + 600];
  memset(b, 0, sizeof b);
  sy_pp_header h;
  struct {
    unsigned char ver, fam, hi, lo;
  } cases[] = {
      {0x11, 0x11, 0, 12},      /* version 1 in the binary form */
      {0x22, 0x11, 0, 12},      /* command 2 */
      {0x21, 0x41, 0, 12},      /* a family the spec does not define */
      {0x21, 0x13, 0, 12},      /* a transport it does not define */
      {0x21, 0x31, 0, 215},     /* too short for AF_UNIX addresses */
      {0x21, 0x11, 0, 11},      /* too short for the addresses */
      {0x21, 0x21, 0, 12},      /* too short for v6 addresses */
      {0x21, 0x11, 0xFF, 0xFF}, /* huge length */
      {0x21, 0x11, 0x02, 0x01}, /* 513 */
      {0x21, 0x11, 0, 14},      /* 2 bytes: a truncated TLV */
      {0x21, 0x11, 0, 16},      /* TLV declaring 1 more byte than there is */
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    memcpy(b, V2_TCP4_TLV, 16 + 12);
    b[12] = cases[i].ver, b[13] = cases[i].fam, b[14] = cases[i].hi, b[15] = cases[i].lo;
    size_t plen = ((size_t)cases[i].hi << 8) | cases[i].lo;
    if (i == 10) b[28] = 1, b[29] = 0, b[30] = 2, b[31] = 'x'; /* type 1 len 2, one byte */
    size_t n = 16 + (plen < 600 ? plen : 600);
    ck_assert_msg(parse(b, n, SY_PP_V2, &h) == SY_PP_BAD, "case %zu accepted", i);
  }
  /* 512 bytes of address + TLVs is the most accepted. */
  memcpy(b, V2_TCP4_TLV, 16 + 12);
  b[14] = 0x02, b[15] = 0x00;
  b[28] = 0x04, b[29] = (500 - 3) >> 8, b[30] = (500 - 3) & 0xFF;
  ck_assert_int_eq(parse(b, 16 + 512, SY_PP_V2, &h), SY_PP_OK);
  ck_assert_uint_eq(h.len, 16 + 512);
  ck_assert_int_eq(parse(b, 16 + 511, SY_PP_V2, &h), SY_PP_MORE);
}
END_TEST

/* Every single-byte change of a valid header (all 256 values at every
 * position) parses to OK, MORE or BAD, in bounds, and OK never claims more
 * bytes than there are. */
static void mutate(const void *orig, size_t n, unsigned accept) {
  unsigned char *m = malloc(n);
  ck_assert_ptr_nonnull(m);
  for (size_t i = 0; i < n; i++)
    for (unsigned v = 0; v < 256; v++) {
      memcpy(m, orig, n);
      m[i] = (unsigned char)v;
      sy_pp_header h;
      sy_pp_status r = parse(m, n, accept, &h);
      ck_assert(r == SY_PP_OK || r == SY_PP_MORE || r == SY_PP_BAD);
      /* and every prefix of the mutant */
      for (size_t k = 0; k < n; k += 7)
        (void)parse(m, k, accept, &h);
    }
  free(m);
}

START_TEST(mutations) {
  mutate(V1_TCP4, strlen(V1_TCP4), BOTH);
  mutate(V1_TCP6, strlen(V1_TCP6), SY_PP_V1);
  mutate(V2_TCP4_TLV, sizeof V2_TCP4_TLV, BOTH);
  /* Known cases: the signature broken, a port digit replaced. */
  char s[64];
  sy_pp_header h;
  strcpy(s, V1_TCP4);
  s[38] = 'x';
  ck_assert_int_eq(parse(s, strlen(s), SY_PP_V1, &h), SY_PP_BAD);
  unsigned char v2[sizeof V2_TCP4_TLV];
  memcpy(v2, V2_TCP4_TLV, sizeof v2);
  v2[5] = 0;
  ck_assert_int_eq(parse(v2, sizeof v2, SY_PP_V2, &h), SY_PP_BAD);
}
END_TEST

static struct sockaddr_storage mk(int family, const char *ip, unsigned port) {
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  if (family == AF_INET) {
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    s4->sin_family = AF_INET;
    s4->sin_port = htons((uint16_t)port);
    ck_assert_int_eq(inet_pton(AF_INET, ip, &s4->sin_addr), 1);
  } else {
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons((uint16_t)port);
    ck_assert_int_eq(inet_pton(AF_INET6, ip, &s6->sin6_addr), 1);
  }
  return ss;
}

typedef int (*builder)(sy_buf *, const struct sockaddr *, const struct sockaddr *);

static sy_pp_header trip(builder b, unsigned accept, const struct sockaddr_storage *s,
                         const struct sockaddr_storage *d, sy_buf *out) {
  out->len = 0;
  ck_assert_int_eq(b(out, (const struct sockaddr *)s, (const struct sockaddr *)d), 0);
  return whole(out->p, out->len, accept);
}

START_TEST(round_trips) {
  builder bs[] = {sy_pp_build_v1, sy_pp_build_v2};
  unsigned acc[] = {SY_PP_V1, SY_PP_V2};
  sy_buf out = {0};
  for (int v = 0; v < 2; v++) {
    struct sockaddr_storage s4 = mk(AF_INET, "127.0.0.5", 40000),
                            d4 = mk(AF_INET, "127.0.0.1", 8080);
    sy_pp_header h = trip(bs[v], acc[v], &s4, &d4, &out);
    ck_assert_int_eq(h.version, v + 1);
    check_addr(&h.src, AF_INET, "127.0.0.5", 40000);
    check_addr(&h.dst, AF_INET, "127.0.0.1", 8080);

    struct sockaddr_storage s6 = mk(AF_INET6, "2001:db8::5", 1), d6 = mk(AF_INET6, "::1", 65535);
    h = trip(bs[v], acc[v], &s6, &d6, &out);
    check_addr(&h.src, AF_INET6, "2001:db8::5", 1);
    check_addr(&h.dst, AF_INET6, "::1", 65535);

    /* IPv4-mapped is written as IPv4, in both versions. */
    struct sockaddr_storage m6 = mk(AF_INET6, "::ffff:10.1.2.3", 7),
                            md = mk(AF_INET6, "::ffff:10.0.0.1", 8);
    h = trip(bs[v], acc[v], &m6, &md, &out);
    check_addr(&h.src, AF_INET, "10.1.2.3", 7);
    check_addr(&h.dst, AF_INET, "10.0.0.1", 8);
    if (v == 0)
      ck_assert(out.len > 10 &&
                memcmp(out.p, "PROXY TCP4 10.1.2.3 10.0.0.1 7 8\r\n", out.len) == 0);
    else
      ck_assert_uint_eq(out.len, 16 + 12);

    /* Mixed: a mapped source with a real IPv6 destination keeps IPv6. */
    h = trip(bs[v], acc[v], &s4, &d6, &out);
    check_addr(&h.src, AF_INET, "127.0.0.5", 40000);
    check_addr(&h.dst, AF_INET6, "::1", 65535);

    /* No usable address: UNKNOWN / LOCAL. */
    out.len = 0;
    ck_assert_int_eq(bs[v](&out, NULL, (const struct sockaddr *)&d4), 0);
    h = whole(out.p, out.len, acc[v]);
    ck_assert_int_eq(h.local, 1);
  }
  sy_buf_free(&out);
}
END_TEST

int main(void) {
  Suite *s = suite_create("proxyproto");
  TCase *tc = tcase_create("proxyproto");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, v1_valid);
  tcase_add_test(tc, v1_refused);
  tcase_add_test(tc, v2_valid);
  tcase_add_test(tc, v2_refused);
  tcase_add_test(tc, v2_other_families_are_local);
  tcase_add_test(tc, mutations);
  tcase_add_test(tc, round_trips);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
