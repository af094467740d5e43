/* TLS on either side of a connection (a TLS listener, a TLS upstream, or a
 * client that upgraded in place with RFC 2817): the tls.c bridge driven
 * between the socket and the side's flow. */
#include "internal.h"
#include "switchyard/log.h"

int conn_tls_flush(sy_conn *c, conn_side s) {
  sy_tls_conn *t = c->tls[s];
  sy_sock *st = conn_stream(c, s);
  if (!t || !st) return 0;
  sy_buf b = {0};
  int rc = sy_tls_take_output(t, &b);
  if (rc == 0 && b.len) rc = conn_raw_write(c, st, &b);
  sy_buf_free(&b);
  return rc;
}

static void handshake_failed(sy_conn *c, conn_side s) {
  if (s == SIDE_CLIENT) {
    char who[80];
    sy_log_every_second(SY_LOG_INFO, "client %s: TLS handshake failed: %s",
                        conn_client_text(c, who), sy_tls_error(c->tls[s]));
    conn_close(c);
  } else {
    sy_log_every_second(SY_LOG_ERROR, "upstream %s: TLS handshake failed: %s", conn_peer(c, s),
                        sy_tls_error(c->tls[s]));
    upstream_link_close(c);
    upstream_failed(c, SY_TERM_UPSTREAM_TLS);
  }
}

static void handshake_finished(sy_conn *c, conn_side s) {
  if (s == SIDE_UPSTREAM) {
    upstream_ready(c);
  } else if (c->tls_upgrade_pending) {
    c->tls_upgrade_pending = 0;
    c->x.tls_upgrade_now = 1;
    request_route(c); /* the request that asked for TLS is answered over it */
  }
}

/* Moves plaintext out of OpenSSL into the side's flow as long as the mode
 * wants it, driving the handshake first. Guarded against the re-entry that
 * feeding the parser can cause. */
void conn_tls_pump(sy_conn *c, conn_side s) {
  unsigned bit = 1u << s;
  if (c->in_pump & bit) return;
  c->in_pump |= bit;
  for (int guard = 0; guard < 4096 && !conn_closed(c) && c->state != CS_LINGER; guard++) {
    sy_tls_conn *t = c->tls[s];
    if (!t) break;
    if (!sy_tls_handshake_done(t)) {
      int h = sy_tls_handshake(t);
      if (conn_tls_flush(c, s) < 0) {
        conn_close(c);
        break;
      }
      if (h < 0) {
        handshake_failed(c, s);
        break;
      }
      if (h == 0) break;
      handshake_finished(c, s);
      continue;
    }
    if (!c->io->wants(c, s)) break;
    sy_flow *f = &c->fl[s];
    if (sy_flow_alloc(f, &c->env->flows, conn_buf_cap(c, s)) < 0) {
      conn_close(c);
      break;
    }
    /* Every whole record at hand is decrypted before the mode hears of the
     * bytes: a relay then writes one batch per read, not one per record. */
    uint32_t got = 0;
    int n = 1;
    while (f->len + got < f->cap && n > 0) {
      n = sy_tls_read(t, f->buf + f->len + got, f->cap - f->len - got);
      if (n > 0) got += (uint32_t)n;
    }
    if (conn_tls_flush(c, s) < 0) {
      conn_close(c);
      break;
    }
    if (got) {
      /* An end met after the bytes is met again by the next read (it is
       * final), once the mode wants more: after the bytes, as on a socket. */
      c->io->input(c, s, got);
      continue;
    }
    if (n == SY_TLS_CLOSED || n == SY_TLS_ERROR) {
      /* A client can cause one per connection: limited, as handshake failures are. */
      if (n == SY_TLS_ERROR && s == SIDE_CLIENT)
        sy_log_every_second(SY_LOG_INFO, "client %s: %s", conn_peer(c, s), sy_tls_error(t));
      else if (n == SY_TLS_ERROR)
        sy_log_every_second(SY_LOG_ERROR, "upstream %s: %s", conn_peer(c, s), sy_tls_error(t));
      c->io->eof(c, s, n == SY_TLS_CLOSED ? UV_EOF : UV_EPROTO);
    }
    break;
  }
  c->in_pump &= ~bit;
}

/* RFC 2817 §3.2/§3.3: answer 101, then run the TLS handshake on this very
 * connection; the request that asked is routed once TLS is up. */
void conn_tls_upgrade_start(sy_conn *c) {
  sy_buf b = {0};
  sy_buf_appendf(&b, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: TLS/1.0, HTTP/1.1\r\n"
                     "Connection: Upgrade\r\n\r\n");
  if (conn_raw_write(c, &c->client, &b) < 0) {
    sy_buf_free(&b);
    conn_close(c);
    return;
  }
  c->tls[SIDE_CLIENT] = sy_tls_conn_new(c->lcfg->tls_ctx, 1, NULL, 0);
  if (!c->tls[SIDE_CLIENT]) {
    conn_close(c);
    return;
  }
  c->tls_upgrade_pending = 1;
  /* Whatever followed the head is already the ClientHello. */
  sy_flow *f = &c->fl[SIDE_CLIENT];
  if (f->len > f->pos) {
    sy_tls_feed(c->tls[SIDE_CLIENT], f->buf + f->pos, f->len - f->pos);
    f->len = f->pos;
  }
  conn_timer_arm(c, c->cfg->timeouts.header);
  c->io->read_update(c, SIDE_CLIENT);
  conn_tls_pump(c, SIDE_CLIENT);
}
