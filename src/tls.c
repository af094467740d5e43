#include "switchyard/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct sy_tls_cert_ctx {
  SSL_CTX *ctx;
  char **names; /* DNS names of the certificate, lower-case; "*.x" wildcards kept */
  size_t nnames;
} sy_tls_cert_ctx;

struct sy_tls_ctx {
  int server;
  sy_tls_cert_ctx *certs; /* server: one context per certificate, [0] the default */
  size_t ncerts;
  SSL_CTX *client; /* client side */
};

/* Ciphertext moves through one BIO of our own instead of OpenSSL's memory BIOs,
 * which cost a copy each way: records are read straight out of the bytes the
 * socket read (lent for the call, sy_tls_lend) and written straight into the
 * buffer the socket will write (sy_tls_write's `out`). Only what OpenSSL left
 * unread when the lender takes its bytes back is copied (`in`), and records made
 * outside a write (handshake, alerts, close_notify) wait in `pend`. */
struct sy_tls_conn {
  SSL *ssl;
  BIO *bio; /* owned by ssl, both directions */
  const char *lent;
  size_t lent_len;
  sy_buf in; /* in.p[in_pos..in.len) is read before the lent bytes */
  size_t in_pos;
  sy_buf *out; /* set during sy_tls_write */
  sy_buf pend;
  int ended; /* SY_TLS_CLOSED or SY_TLS_ERROR once a read met it; 0 before */
  char err[160];
};

static void openssl_why(char *why, size_t n, const char *what) {
  unsigned long e = ERR_peek_last_error();
  char buf[200] = "";
  if (e) ERR_error_string_n(e, buf, sizeof(buf));
  snprintf(why, n, "%s%s%s", what, e ? ": " : "", buf);
  ERR_clear_error();
}

/* OpenSSL says "system lib" for a missing file; say which file and why. */
static int readable(const char *what, const char *path, char *why, size_t n) {
  FILE *f = fopen(path, "r");
  if (!f) {
    snprintf(why, n, "cannot open %s \"%s\": %s", what, path, strerror(errno));
    return 0;
  }
  fclose(f);
  return 1;
}

int sy_tls_check_pair(const char *cert, const char *key, char *why, size_t n) {
  if (!readable("certificate", cert, why, n) || !readable("private key", key, why, n)) return -1;
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  int rc = -1;
  if (!ctx) {
    openssl_why(why, n, "out of memory");
    return -1;
  }
  if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
    char what[300];
    snprintf(what, sizeof(what), "cannot load certificate \"%s\"", cert);
    openssl_why(why, n, what);
  } else if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
    char what[600];
    /* OpenSSL checks the pair while loading the key: say it plainly. */
    if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH)
      snprintf(what, sizeof(what), "private key \"%s\" does not match certificate \"%s\"", key,
               cert);
    else
      snprintf(what, sizeof(what), "cannot load private key \"%s\"", key);
    openssl_why(why, n, what);
  } else if (SSL_CTX_check_private_key(ctx) != 1) {
    char what[600];
    snprintf(what, sizeof(what), "private key \"%s\" does not match certificate \"%s\"", key, cert);
    openssl_why(why, n, what);
  } else {
    rc = 0;
  }
  SSL_CTX_free(ctx);
  return rc;
}

int sy_tls_check_ca(const char *ca, char *why, size_t n) {
  if (!readable("CA file", ca, why, n)) return -1;
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  int rc = 0;
  if (!ctx || SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
    char what[300];
    snprintf(what, sizeof(what), "cannot load CA file \"%s\"", ca);
    openssl_why(why, n, what);
    rc = -1;
  }
  SSL_CTX_free(ctx);
  return rc;
}

static void add_name(sy_tls_cert_ctx *cc, const char *s, size_t len) {
  char **nn = realloc(cc->names, (cc->nnames + 1) * sizeof(*nn));
  if (!nn) return;
  cc->names = nn;
  char *d = strndup(s, len);
  if (!d) return;
  for (char *p = d; *p; p++)
    if (*p >= 'A' && *p <= 'Z') *p = (char)(*p - 'A' + 'a');
  cc->names[cc->nnames++] = d;
}

/* The names a certificate answers for: its DNS subjectAltNames, else its CN. */
static void collect_names(sy_tls_cert_ctx *cc) {
  X509 *x = SSL_CTX_get0_certificate(cc->ctx);
  if (!x) return;
  GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
  if (gens) {
    for (int i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
      GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
      if (g->type == GEN_DNS)
        add_name(cc, (const char *)ASN1_STRING_get0_data(g->d.dNSName),
                 (size_t)ASN1_STRING_length(g->d.dNSName));
    }
    GENERAL_NAMES_free(gens);
  }
  if (cc->nnames == 0) {
    char cn[256];
    if (X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof(cn)) > 0)
      add_name(cc, cn, strlen(cn));
  }
}

static int name_matches(const char *pattern, const char *host, int wildcard) {
  if (!wildcard) return strcasecmp(pattern, host) == 0;
  if (strncmp(pattern, "*.", 2) != 0) return 0;
  const char *dot = strchr(host, '.');
  return dot && dot != host && strcasecmp(dot + 1, pattern + 2) == 0;
}

static int on_servername(SSL *ssl, int *alert, void *arg) {
  sy_tls_ctx *t = arg;
  const char *host = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (!host) return SSL_TLSEXT_ERR_NOACK; /* the default certificate answers */
  /* Exact names win over wildcards, whichever certificate comes first. */
  for (int wild = 0; wild < 2; wild++)
    for (size_t i = 0; i < t->ncerts; i++)
      for (size_t k = 0; k < t->certs[i].nnames; k++)
        if (name_matches(t->certs[i].names[k], host, wild)) {
          if (i) SSL_set_SSL_CTX(ssl, t->certs[i].ctx);
          return SSL_TLSEXT_ERR_OK;
        }
  return SSL_TLSEXT_ERR_NOACK;
}

static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg) {
  static const unsigned char ours[] = "\x08http/1.1";
  unsigned char *sel;
  if (SSL_select_next_proto(&sel, outlen, ours, sizeof(ours) - 1, in, inlen) !=
      OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_NOACK; /* this proxy speaks HTTP/1.1 and nothing else */
  *out = sel;
  return SSL_TLSEXT_ERR_OK;
}

static int apply_common(SSL_CTX *ctx, const char *min_version, const char *ciphers, char *why,
                        size_t n) {
  int v = (min_version && strcmp(min_version, "TLS1.3") == 0) ? TLS1_3_VERSION : TLS1_2_VERSION;
  SSL_CTX_set_min_proto_version(ctx, v);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_RELEASE_BUFFERS);
  if (ciphers && SSL_CTX_set_cipher_list(ctx, ciphers) != 1 &&
      SSL_CTX_set_ciphersuites(ctx, ciphers) != 1) {
    openssl_why(why, n, "invalid cipher list");
    return -1;
  }
  return 0;
}

sy_tls_ctx *sy_tls_server_ctx_new(const sy_tls_server_opts *o, char *why, size_t n) {
  sy_tls_ctx *t = calloc(1, sizeof(*t));
  if (!t) return NULL;
  t->server = 1;
  t->certs = calloc(o->npairs ? o->npairs : 1, sizeof(*t->certs));
  if (!t->certs) goto fail;
  for (size_t i = 0; i < o->npairs; i++) {
    sy_tls_cert_ctx *cc = &t->certs[i];
    cc->ctx = SSL_CTX_new(TLS_server_method());
    t->ncerts = i + 1;
    if (!cc->ctx) goto fail;
    if (SSL_CTX_use_certificate_chain_file(cc->ctx, o->pairs[i].cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(cc->ctx, o->pairs[i].key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(cc->ctx) != 1) {
      openssl_why(why, n, o->pairs[i].cert);
      goto fail;
    }
    if (apply_common(cc->ctx, o->min_version, o->ciphers, why, n) < 0) goto fail;
    static const unsigned char sid[] = "switchyard";
    SSL_CTX_set_session_id_context(cc->ctx, sid, sizeof(sid) - 1);
    SSL_CTX_set_tlsext_servername_callback(cc->ctx, on_servername);
    SSL_CTX_set_tlsext_servername_arg(cc->ctx, t);
    SSL_CTX_set_alpn_select_cb(cc->ctx, on_alpn, NULL);
    collect_names(cc);
  }
  return t;
fail:
  sy_tls_ctx_free(t);
  return NULL;
}

sy_tls_ctx *sy_tls_client_ctx_new(const sy_tls_client_opts *o, char *why, size_t n) {
  sy_tls_ctx *t = calloc(1, sizeof(*t));
  if (!t) return NULL;
  t->client = SSL_CTX_new(TLS_client_method());
  if (!t->client || apply_common(t->client, NULL, NULL, why, n) < 0) goto fail;
  if (o->verify) {
    SSL_CTX_set_verify(t->client, SSL_VERIFY_PEER, NULL);
    int ok = o->ca ? SSL_CTX_load_verify_locations(t->client, o->ca, NULL)
                   : SSL_CTX_set_default_verify_paths(t->client);
    if (ok != 1) {
      openssl_why(why, n, "cannot load CA");
      goto fail;
    }
  }
  if (o->cert && (SSL_CTX_use_certificate_chain_file(t->client, o->cert) != 1 ||
                  SSL_CTX_use_PrivateKey_file(t->client, o->key, SSL_FILETYPE_PEM) != 1)) {
    openssl_why(why, n, "cannot load client certificate");
    goto fail;
  }
  static const unsigned char alpn[] = "\x08http/1.1";
  SSL_CTX_set_alpn_protos(t->client, alpn, sizeof(alpn) - 1);
  return t;
fail:
  sy_tls_ctx_free(t);
  return NULL;
}

void sy_tls_ctx_free(sy_tls_ctx *t) {
  if (!t) return;
  for (size_t i = 0; i < t->ncerts; i++) {
    SSL_CTX_free(t->certs[i].ctx);
    for (size_t k = 0; k < t->certs[i].nnames; k++)
      free(t->certs[i].names[k]);
    free(t->certs[i].names);
  }
  free(t->certs);
  SSL_CTX_free(t->client);
  free(t);
}

static BIO_METHOD *bio_method(void);

sy_tls_conn *sy_tls_conn_new(sy_tls_ctx *ctx, int server, const char *sni, int verify) {
  sy_tls_conn *t = calloc(1, sizeof(*t));
  if (!t) return NULL;
  BIO_METHOD *m = bio_method();
  t->ssl = SSL_new(server ? ctx->certs[0].ctx : ctx->client);
  t->bio = m ? BIO_new(m) : NULL;
  if (!t->ssl || !t->bio) {
    SSL_free(t->ssl);
    BIO_free(t->bio);
    free(t);
    return NULL;
  }
  BIO_set_data(t->bio, t);
  BIO_set_init(t->bio, 1);
  SSL_set_bio(t->ssl, t->bio, t->bio); /* one reference, taken by ssl */
  if (server) {
    SSL_set_accept_state(t->ssl);
  } else {
    SSL_set_connect_state(t->ssl);
    if (sni) {
      struct in6_addr a6;
      struct in_addr a4;
      int is_ip = inet_pton(AF_INET, sni, &a4) == 1 || inet_pton(AF_INET6, sni, &a6) == 1;
      if (!is_ip) SSL_set_tlsext_host_name(t->ssl, sni);
      if (verify) {
        if (is_ip)
          X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), sni);
        else
          SSL_set1_host(t->ssl, sni);
      }
    }
  }
  return t;
}

void sy_tls_conn_free(sy_tls_conn *t) {
  if (!t) return;
  SSL_free(t->ssl);
  sy_buf_free(&t->in);
  sy_buf_free(&t->pend);
  free(t);
}

/* What was read already is dropped from the front before `in` grows, so it
 * holds no more than the unread bytes plus one feed. */
static int keep(sy_tls_conn *t, const char *data, size_t n) {
  if (t->in_pos == t->in.len) {
    t->in.len = t->in_pos = 0;
  } else if (t->in_pos > 0 && t->in.len + n > t->in.cap) {
    memmove(t->in.p, t->in.p + t->in_pos, t->in.len - t->in_pos);
    t->in.len -= t->in_pos;
    t->in_pos = 0;
  }
  return sy_buf_append(&t->in, data, n);
}

int sy_tls_feed(sy_tls_conn *t, const char *data, size_t n) {
  return keep(t, data, n);
}

void sy_tls_lend(sy_tls_conn *t, const char *data, size_t n) {
  t->lent = data;
  t->lent_len = n;
}

int sy_tls_unlend(sy_tls_conn *t) {
  int rc = t->lent_len ? keep(t, t->lent, t->lent_len) : 0;
  t->lent = NULL;
  t->lent_len = 0;
  return rc;
}

static int bio_read(BIO *b, char *dst, size_t cap, size_t *got) {
  sy_tls_conn *t = BIO_get_data(b);
  size_t n = 0;
  BIO_clear_retry_flags(b);
  if (t->in_pos < t->in.len) {
    n = t->in.len - t->in_pos < cap ? t->in.len - t->in_pos : cap;
    memcpy(dst, t->in.p + t->in_pos, n);
    t->in_pos += n;
    if (t->in_pos == t->in.len) { /* an idle connection keeps no buffer */
      sy_buf_free(&t->in);
      t->in_pos = 0;
    }
  }
  if (n < cap && t->lent_len) {
    size_t k = t->lent_len < cap - n ? t->lent_len : cap - n;
    memcpy(dst + n, t->lent, k);
    t->lent += k;
    t->lent_len -= k;
    n += k;
  }
  *got = n;
  if (n) return 1;
  BIO_set_retry_read(b); /* nothing yet is "later", never end of file */
  return 0;
}

static int bio_write(BIO *b, const char *src, size_t n, size_t *put) {
  sy_tls_conn *t = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  if (sy_buf_append(t->out ? t->out : &t->pend, src, n) < 0) return 0;
  *put = n;
  return 1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
  (void)num, (void)ptr;
  sy_tls_conn *t = BIO_get_data(b);
  switch (cmd) {
  case BIO_CTRL_FLUSH:
    return 1;
  case BIO_CTRL_PENDING:
    return (long)(sy_tls_unread(t) + t->lent_len);
  case BIO_CTRL_WPENDING:
    return (long)t->pend.len;
  default:
    return 0;
  }
}

static BIO_METHOD *the_method;

static void make_method(void) {
  BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "switchyard");
  if (!m || !BIO_meth_set_read_ex(m, bio_read) || !BIO_meth_set_write_ex(m, bio_write) ||
      !BIO_meth_set_ctrl(m, bio_ctrl)) {
    BIO_meth_free(m);
    return;
  }
  the_method = m;
}

static BIO_METHOD *bio_method(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, make_method);
  return the_method;
}

static int fail_with(sy_tls_conn *t, int rc) {
  int e = SSL_get_error(t->ssl, rc);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return SY_TLS_AGAIN;
  if (e == SSL_ERROR_ZERO_RETURN) return SY_TLS_CLOSED;
  long vr = SSL_get_verify_result(t->ssl);
  if (vr != X509_V_OK)
    snprintf(t->err, sizeof(t->err), "certificate verify failed: %s",
             X509_verify_cert_error_string(vr));
  else
    openssl_why(t->err, sizeof(t->err), "TLS error");
  ERR_clear_error();
  return SY_TLS_ERROR;
}

int sy_tls_handshake(sy_tls_conn *t) {
  if (SSL_is_init_finished(t->ssl)) return 1;
  int rc = SSL_do_handshake(t->ssl);
  if (rc == 1) return 1;
  return fail_with(t, rc) == SY_TLS_AGAIN ? 0 : -1;
}

int sy_tls_read(sy_tls_conn *t, char *out, size_t cap) {
  if (t->ended) return t->ended;
  int rc = SSL_read(t->ssl, out, (int)(cap > 1 << 30 ? 1 << 30 : cap));
  if (rc > 0) return rc;
  rc = fail_with(t, rc);
  if (rc != SY_TLS_AGAIN) t->ended = rc;
  return rc;
}

int sy_tls_write(sy_tls_conn *t, const uv_buf_t *bufs, unsigned nbufs, sy_buf *out) {
  /* Records made earlier (a ticket after the handshake) go out first. */
  if (sy_tls_take_output(t, out) < 0) return -1;
  t->out = out;
  int rc = 0;
  for (unsigned i = 0; i < nbufs && rc == 0; i++) {
    size_t off = 0;
    while (off < bufs[i].len) {
      int n = SSL_write(t->ssl, bufs[i].base + off, (int)(bufs[i].len - off));
      if (n <= 0) {
        fail_with(t, n);
        rc = -1;
        break;
      }
      off += (size_t)n;
    }
  }
  t->out = NULL;
  return rc;
}

void sy_tls_shutdown(sy_tls_conn *t) {
  SSL_shutdown(t->ssl);
  ERR_clear_error();
}

int sy_tls_take_output(sy_tls_conn *t, sy_buf *out) {
  if (t->pend.len == 0) return 0;
  if (!out->p) { /* handed over whole: no copy */
    *out = t->pend;
    t->pend = (sy_buf){0};
    return 0;
  }
  int rc = sy_buf_append(out, t->pend.p, t->pend.len);
  sy_buf_free(&t->pend);
  return rc;
}

int sy_tls_has_pending(sy_tls_conn *t) {
  return SSL_pending(t->ssl) > 0 || sy_tls_unread(t) > 0 || t->lent_len > 0 || t->ended;
}

size_t sy_tls_unread(const sy_tls_conn *t) {
  return t->in.len - t->in_pos;
}

const char *sy_tls_error(sy_tls_conn *t) {
  return t->err[0] ? t->err : "TLS error";
}

int sy_tls_handshake_done(sy_tls_conn *t) {
  return SSL_is_init_finished(t->ssl);
}
