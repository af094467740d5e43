/* TLS with OpenSSL 3: server contexts (certificates chosen by SNI, ALPN
 * http/1.1), client contexts for upstreams (verification, SNI, mTLS), and a
 * bridge of our own BIO so a socket of ours can carry TLS without OpenSSL
 * touching it: ciphertext is read out of the caller's bytes and written into the
 * caller's buffer. */
#ifndef SWITCHYARD_TLS_H
#define SWITCHYARD_TLS_H

#include <stddef.h>
#include <uv.h>

#include "switchyard/base.h"

typedef struct sy_tls_ctx sy_tls_ctx; /* an SSL_CTX plus what SNI needs */
typedef struct sy_tls_conn sy_tls_conn;

/* Config-time checks, so a bad file is refused with the key's line:column:
 * the pair loads and the key matches the certificate. 0, or -1 with `why`. */
int sy_tls_check_pair(const char *cert, const char *key, char *why, size_t n);
int sy_tls_check_ca(const char *ca, char *why, size_t n);

/* What the contexts are built from. The module knows no configuration: the
 * loader fills these from its snapshot (strings are only read during the call),
 * so tls stays below config. */
typedef struct sy_tls_pair {
  const char *cert, *key; /* PEM files: certificate chain, private key */
} sy_tls_pair;

typedef struct sy_tls_server_opts {
  const sy_tls_pair *pairs; /* [0] is the default; SNI picks among them by name */
  size_t npairs;
  const char *min_version; /* "TLS1.2" (also NULL) | "TLS1.3" */
  const char *ciphers;     /* NULL = OpenSSL's default */
} sy_tls_server_opts;

typedef struct sy_tls_client_opts {
  int verify;             /* check the upstream's certificate */
  const char *ca;         /* NULL = the system's trust store */
  const char *cert, *key; /* client certificate (mTLS), both or neither */
} sy_tls_client_opts;

sy_tls_ctx *sy_tls_server_ctx_new(const sy_tls_server_opts *o, char *why, size_t n);
sy_tls_ctx *sy_tls_client_ctx_new(const sy_tls_client_opts *o, char *why, size_t n);
void sy_tls_ctx_free(sy_tls_ctx *ctx);

/* `sni` (client side): name to send and verify; NULL = none. */
sy_tls_conn *sy_tls_conn_new(sy_tls_ctx *ctx, int server, const char *sni, int verify);
void sy_tls_conn_free(sy_tls_conn *t);

/* Ciphertext in from the socket, copied. 0 or -1 (allocation). */
int sy_tls_feed(sy_tls_conn *t, const char *data, size_t n);
/* Ciphertext in without a copy: OpenSSL reads `data` until sy_tls_unlend,
 * which copies what it left unread (0 or -1, allocation). Nothing else may be
 * lent in between; a conn freed while lending just forgets the bytes. */
void sy_tls_lend(sy_tls_conn *t, const char *data, size_t n);
int sy_tls_unlend(sy_tls_conn *t);

enum { SY_TLS_AGAIN = 0, SY_TLS_ERROR = -1, SY_TLS_CLOSED = -2 };
/* Plaintext out: >0 bytes, SY_TLS_AGAIN (needs more ciphertext, or handshake
 * in progress), SY_TLS_CLOSED (close_notify), SY_TLS_ERROR. Drives the
 * handshake too. CLOSED and ERROR are final: every later read says the same. */
int sy_tls_read(sy_tls_conn *t, char *out, size_t cap);
/* Runs the handshake as far as the bytes fed so far allow: 1 done, 0 again, -1 error. */
int sy_tls_handshake(sy_tls_conn *t);
/* Plaintext in, all of it; its records, after any waiting ones, are appended
 * to `out`. 0 or -1. */
int sy_tls_write(sy_tls_conn *t, const uv_buf_t *bufs, unsigned nbufs, sy_buf *out);
/* Queue a close_notify. */
void sy_tls_shutdown(sy_tls_conn *t);
/* Ciphertext made outside sy_tls_write (handshake, alerts, close_notify),
 * appended to `out`; an `out` with no buffer yet takes the waiting one whole. */
int sy_tls_take_output(sy_tls_conn *t, sy_buf *out);
/* Plaintext already decrypted and buffered inside OpenSSL, ciphertext fed but
 * not yet processed, or an end already read: the caller should call
 * sy_tls_read again. */
int sy_tls_has_pending(sy_tls_conn *t);
/* The longest record on the wire, header included: TLS 1.2 allows 2^14 + 2048
 * bytes of ciphertext (RFC 5246 §6.2.3), TLS 1.3 less. */
#define SY_TLS_RECORD_MAX (5 + 16384 + 2048)
/* Ciphertext fed or copied at unlend that OpenSSL has not read yet. */
size_t sy_tls_unread(const sy_tls_conn *t);
/* Last error, for logs ("certificate verify failed: ...", "handshake: ..."). */
const char *sy_tls_error(sy_tls_conn *t);
int sy_tls_handshake_done(sy_tls_conn *t);

#endif
