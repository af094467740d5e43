/* sy_tls_conn's bridge: a handshake and records carried only by lent bytes in
 * pieces of any size, unread records kept when the lender takes its bytes back,
 * and records written straight into the caller's buffer. */
#include <check.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "switchyard/tls.h"

static char cert_path[64], key_path[64];

/* A throw-away ECDSA P-256 certificate, as the bench uses. */
/* Runs before Check does: a failure here ends the program. */
static void must(int ok) {
  if (!ok) {
    fprintf(stderr, "test_tls: cannot make the test certificate\n");
    exit(EXIT_FAILURE);
  }
}

static void make_cert(void) {
  EVP_PKEY *k = EVP_EC_gen("P-256");
  must(k != NULL);
  X509 *x = X509_new();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_set_pubkey(x, k);
  X509_NAME *n = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1, 0);
  X509_set_issuer_name(x, n);
  must(X509_sign(x, k, EVP_sha256()) > 0);
  strcpy(cert_path, "/tmp/sy-test-tls-cert-XXXXXX");
  strcpy(key_path, "/tmp/sy-test-tls-key-XXXXXX");
  FILE *fc = fdopen(mkstemp(cert_path), "w"), *fk = fdopen(mkstemp(key_path), "w");
  must(fc && fk);
  must(PEM_write_X509(fc, x) == 1);
  must(PEM_write_PrivateKey(fk, k, NULL, NULL, 0, NULL, NULL) == 1);
  fclose(fc);
  fclose(fk);
  X509_free(x);
  EVP_PKEY_free(k);
}

typedef struct pair {
  sy_tls_ctx *sctx, *cctx;
  sy_tls_conn *s, *c;
} pair;

/* Whatever `from` has to send, lent to `to` in pieces of `piece` bytes, each
 * piece taken back (and checked gone) before the next. */
static void carry(sy_tls_conn *from, sy_tls_conn *to, size_t piece, sy_buf *plain) {
  sy_buf b = {0};
  ck_assert_int_eq(sy_tls_take_output(from, &b), 0);
  for (size_t off = 0; off < b.len; off += piece) {
    size_t n = b.len - off < piece ? b.len - off : piece;
    sy_tls_lend(to, b.p + off, n);
    if (!sy_tls_handshake_done(to)) ck_assert_int_ge(sy_tls_handshake(to), 0);
    char tmp[4096];
    int r;
    while (sy_tls_handshake_done(to) && (r = sy_tls_read(to, tmp, sizeof tmp)) > 0)
      ck_assert_int_eq(sy_buf_append(plain, tmp, (size_t)r), 0);
    ck_assert_int_eq(sy_tls_unlend(to), 0);
  }
  sy_buf_free(&b);
}

static void connect_pair(pair *p, size_t piece) {
  sy_tls_pair certs = {cert_path, key_path};
  sy_tls_server_opts so = {.pairs = &certs, .npairs = 1, .min_version = "TLS1.3"};
  sy_tls_client_opts co = {0};
  char why[256];
  p->sctx = sy_tls_server_ctx_new(&so, why, sizeof why);
  p->cctx = sy_tls_client_ctx_new(&co, why, sizeof why);
  ck_assert(p->sctx && p->cctx);
  p->s = sy_tls_conn_new(p->sctx, 1, NULL, 0);
  p->c = sy_tls_conn_new(p->cctx, 0, "localhost", 0);
  ck_assert(p->s && p->c);
  sy_buf junk = {0};
  ck_assert_int_eq(sy_tls_handshake(p->c), 0); /* ClientHello made */
  for (int i = 0; i < 10 && !(sy_tls_handshake_done(p->s) && sy_tls_handshake_done(p->c)); i++) {
    carry(p->c, p->s, piece, &junk);
    carry(p->s, p->c, piece, &junk);
  }
  ck_assert(sy_tls_handshake_done(p->s) && sy_tls_handshake_done(p->c));
  ck_assert_uint_eq(junk.len, 0);
  sy_buf_free(&junk);
}

static void close_pair(pair *p) {
  sy_tls_conn_free(p->s);
  sy_tls_conn_free(p->c);
  sy_tls_ctx_free(p->sctx);
  sy_tls_ctx_free(p->cctx);
}

static void fill(char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++)
    p[i] = (char)((i * 131 + seed) >> 3);
}

START_TEST(test_handshake_and_data_in_any_pieces) {
  static const size_t pieces[] = {1, 5, 7, 300, 16 * 1024 + 512, 1 << 20};
  size_t piece = pieces[_i];
  pair p;
  connect_pair(&p, piece);
  enum { N = 100 * 1024 };
  static char data[N];
  fill(data, N, (unsigned)piece);
  uv_buf_t bufs[2] = {uv_buf_init(data, 1000), uv_buf_init(data + 1000, N - 1000)};
  sy_buf out = {0}, got = {0};
  ck_assert_int_eq(sy_tls_write(p.c, bufs, 2, &out), 0);
  ck_assert_uint_gt(out.len, N); /* the records themselves are in the caller's buffer */
  for (size_t off = 0; off < out.len; off += piece) {
    size_t n = out.len - off < piece ? out.len - off : piece;
    sy_tls_lend(p.s, out.p + off, n);
    char tmp[4096];
    int r;
    while ((r = sy_tls_read(p.s, tmp, sizeof tmp)) > 0)
      sy_buf_append(&got, tmp, (size_t)r);
    ck_assert_int_eq(r, SY_TLS_AGAIN);
    ck_assert_int_eq(sy_tls_unlend(p.s), 0);
    ck_assert(!sy_tls_has_pending(p.s)); /* everything lent was taken */
  }
  ck_assert_uint_eq(got.len, N);
  ck_assert_int_eq(memcmp(got.p, data, N), 0);
  sy_buf_free(&out);
  sy_buf_free(&got);
  close_pair(&p);
}
END_TEST

START_TEST(test_unread_records_survive_the_lenders_buffer) {
  pair p;
  connect_pair(&p, 1 << 20);
  char a[100], b[200], c[300];
  fill(a, sizeof a, 1);
  fill(b, sizeof b, 2);
  fill(c, sizeof c, 3);
  sy_buf out = {0};
  uv_buf_t ua = uv_buf_init(a, sizeof a), ub = uv_buf_init(b, sizeof b),
           uc = uv_buf_init(c, sizeof c);
  ck_assert_int_eq(sy_tls_write(p.c, &ua, 1, &out), 0);
  ck_assert_int_eq(sy_tls_write(p.c, &ub, 1, &out), 0);
  ck_assert_int_eq(sy_tls_write(p.c, &uc, 1, &out), 0);
  /* Three records lent; the reader takes one and stops, as a flow that is
   * full does. */
  sy_tls_lend(p.s, out.p, out.len);
  char tmp[300];
  ck_assert_int_eq(sy_tls_read(p.s, tmp, sizeof a), (int)sizeof a);
  ck_assert_int_eq(memcmp(tmp, a, sizeof a), 0);
  ck_assert_int_eq(sy_tls_unlend(p.s), 0);
  memset(out.p, 0xee, out.len); /* the lender reuses its block */
  ck_assert(sy_tls_has_pending(p.s));
  ck_assert_int_eq(sy_tls_read(p.s, tmp, sizeof tmp), (int)sizeof b);
  ck_assert_int_eq(memcmp(tmp, b, sizeof b), 0);
  /* More lent behind what was kept: read in order. */
  sy_buf more = {0};
  ck_assert_int_eq(sy_tls_write(p.c, &ua, 1, &more), 0);
  sy_tls_lend(p.s, more.p, more.len);
  ck_assert_int_eq(sy_tls_read(p.s, tmp, sizeof tmp), (int)sizeof c);
  ck_assert_int_eq(memcmp(tmp, c, sizeof c), 0);
  ck_assert_int_eq(sy_tls_read(p.s, tmp, sizeof tmp), (int)sizeof a);
  ck_assert_int_eq(memcmp(tmp, a, sizeof a), 0);
  ck_assert_int_eq(sy_tls_read(p.s, tmp, sizeof tmp), SY_TLS_AGAIN);
  ck_assert_int_eq(sy_tls_unlend(p.s), 0);
  ck_assert(!sy_tls_has_pending(p.s));
  sy_buf_free(&out);
  sy_buf_free(&more);
  close_pair(&p);
}
END_TEST

START_TEST(test_close_notify_waits_for_take_output) {
  pair p;
  connect_pair(&p, 1 << 20);
  sy_tls_shutdown(p.c);
  sy_buf alert = {0};
  ck_assert_int_eq(sy_tls_take_output(p.c, &alert), 0);
  ck_assert_uint_gt(alert.len, 0);
  sy_buf again = {0};
  ck_assert_int_eq(sy_tls_take_output(p.c, &again), 0);
  ck_assert_uint_eq(again.len, 0); /* taken once */
  sy_tls_lend(p.s, alert.p, alert.len);
  char tmp[16];
  ck_assert_int_eq(sy_tls_read(p.s, tmp, sizeof tmp), SY_TLS_CLOSED);
  ck_assert_int_eq(sy_tls_unlend(p.s), 0);
  sy_buf_free(&alert);
  close_pair(&p);
}
END_TEST

/* The pump reads every record at hand before the mode hears of the bytes, so
 * a close_notify behind data is read before the mode asked for it: the end
 * must stay there for the read after the bytes. */
START_TEST(test_the_end_behind_data_is_final) {
  pair p;
  connect_pair(&p, 1 << 20);
  char data[500];
  fill(data, sizeof data, 5);
  sy_buf out = {0};
  uv_buf_t u = uv_buf_init(data, sizeof data);
  ck_assert_int_eq(sy_tls_write(p.c, &u, 1, &out), 0);
  sy_tls_shutdown(p.c);
  ck_assert_int_eq(sy_tls_take_output(p.c, &out), 0);
  sy_tls_lend(p.s, out.p, out.len);
  char tmp[600];
  ck_assert_int_eq(sy_tls_read(p.s, tmp, sizeof tmp), (int)sizeof data);
  ck_assert_int_eq(memcmp(tmp, data, sizeof data), 0);
  ck_assert_int_eq(sy_tls_read(p.s, tmp, sizeof tmp), SY_TLS_CLOSED);
  ck_assert_int_eq(sy_tls_unlend(p.s), 0);
  ck_assert(sy_tls_has_pending(p.s)); /* nothing lent, yet a read has news */
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(sy_tls_read(p.s, tmp, sizeof tmp), SY_TLS_CLOSED);
  sy_buf_free(&out);
  close_pair(&p);
}
END_TEST

START_TEST(test_a_conn_freed_while_lending_forgets_the_bytes) {
  pair p;
  connect_pair(&p, 1 << 20);
  char data[64];
  fill(data, sizeof data, 9);
  sy_buf out = {0};
  uv_buf_t u = uv_buf_init(data, sizeof data);
  ck_assert_int_eq(sy_tls_write(p.c, &u, 1, &out), 0);
  sy_tls_lend(p.s, out.p, out.len);
  sy_tls_conn_free(p.s); /* no unlend: nothing read, nothing copied */
  p.s = NULL;
  sy_buf_free(&out);
  close_pair(&p);
}
END_TEST

int main(void) {
  make_cert();
  Suite *su = suite_create("tls");
  TCase *tc = tcase_create("core");
  tcase_add_loop_test(tc, test_handshake_and_data_in_any_pieces, 0, 6);
  tcase_add_test(tc, test_unread_records_survive_the_lenders_buffer);
  tcase_add_test(tc, test_close_notify_waits_for_take_output);
  tcase_add_test(tc, test_the_end_behind_data_is_final);
  tcase_add_test(tc, test_a_conn_freed_while_lending_forgets_the_bytes);
  suite_add_tcase(su, tc);
  SRunner *r = srunner_create(su);
  srunner_run_all(r, CK_NORMAL);
  int failed = srunner_ntests_failed(r);
  srunner_free(r);
  unlink(cert_path);
  unlink(key_path);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
