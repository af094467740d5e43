/* The TLS relay: a switched connection with TLS on a side cannot be spliced,
 * so its bytes are copied through the flows (decrypted on one side,
 * encrypted on the other). It installs its own handlers in c->io; the HTTP
 * handlers never see a relay. */
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "internal.h"
#include "switchyard/limits.h"

static void arm_idle(sy_conn *c) {
  const sy_route_cfg *rt = c->x.route;
  if (c->fl[0].eof || c->fl[1].eof) return; /* the FIN timer set at the first EOF keeps running */
  conn_timer_arm(c, conn_route_timeout(rt->timeouts.tunnel_idle, c->cfg->timeouts.tunnel_idle));
}

void relay_report(sy_conn *c, const char *reason) {
  c->relay.reported = 1;
  sy_tunnel_stats st = {
      .bytes_c2u = c->relay.bytes[SIDE_CLIENT],
      .bytes_u2c = c->relay.bytes[SIDE_UPSTREAM],
      .copied = c->relay.bytes[0] + c->relay.bytes[1],
      .duration_ms = (uv_hrtime() - c->relay.start) / 1000000,
      .closed_by = c->relay.closed_by ? c->relay.closed_by : "proxy",
      .reason = reason,
      /* What the live reports (relay_count) have not counted yet. */
      .unreported = {.c2u = c->relay.bytes[SIDE_CLIENT] - c->relay.counted[SIDE_CLIENT],
                     .u2c = c->relay.bytes[SIDE_UPSTREAM] - c->relay.counted[SIDE_UPSTREAM],
                     .copied = c->relay.bytes[0] + c->relay.bytes[1] - c->relay.counted[0] -
                               c->relay.counted[1]},
  };
  conn_note n = report_note_of(c);
  report_tunnel_closed(&n, &st);
  sy_limits_tunnels_add(-1);
}

static int in_flight(const sy_flow *f) {
  return f->writing || f->nsegs || f->pos < f->len;
}

/* As the splice tunnel ends: a side gets an RST instead of a FIN when the
 * relay breaks (a reset or an error) or drops bytes that were on their way
 * to it, so it never mistakes a cut stream for a clean end. */
void relay_end(sy_conn *c, const char *reason) {
  if (conn_closed(c)) return;
  if (!c->relay.reported) relay_report(c, reason);
  int broken = strcmp(reason, "reset") == 0 || strcmp(reason, "error") == 0;
  for (int s = 0; s < 2; s++) {
    sy_sock *st = conn_stream(c, (conn_side)s);
    if (!st || !(broken || in_flight(&c->fl[1 - s]))) continue;
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    (void)setsockopt(sy_sock_fd(st), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  }
  conn_close(c);
}

/* The live tunnel byte series, as the hub reports spliced tunnels: at most
 * once a second, by the loop's cached clock (no syscall per read). */
static void relay_count(sy_conn *c) {
  uint64_t now = uv_now(c->env->loop);
  if (now - c->relay.counted_at < 1000) return;
  c->relay.counted_at = now;
  uint64_t up = c->relay.bytes[SIDE_CLIENT] - c->relay.counted[SIDE_CLIENT];
  uint64_t down = c->relay.bytes[SIDE_UPSTREAM] - c->relay.counted[SIDE_UPSTREAM];
  if (!up && !down) return;
  sy_tunnel_bytes d = {.c2u = up, .u2c = down, .copied = up + down};
  c->relay.counted[SIDE_CLIENT] += up;
  c->relay.counted[SIDE_UPSTREAM] += down;
  conn_note n = report_note_of(c);
  report_tunnel_bytes(&n, &d);
}

static int relay_wants(sy_conn *c, conn_side s) {
  sy_flow *f = &c->fl[s];
  /* Not read ahead of a batch in flight: how a side ends (FIN or RST) must
   * be seen in order with the bytes before it. */
  return !f->writing && !f->eof && (!f->buf || f->len < f->cap);
}

/* Reading goes on with no buffer held while nothing moves: the buffers of the
 * HTTP exchange, a TLS read that held no whole record and a finished batch all
 * go back here, so an idle relay costs its socket and TLS state only and the
 * large relay buffers (SY_FLOW_RELAY_MAX) stay with the relays that move bytes. */
static void relay_read_update(sy_conn *c, conn_side s) {
  sy_flow_release_if_idle(&c->fl[s], &c->env->flows);
  conn_read_arm(c, s);
}

static void relay_input(sy_conn *c, conn_side s, size_t n) {
  sy_flow *f = &c->fl[s];
  f->len += (uint32_t)n;
  if (f->writing) return; /* relay_written picks up what arrived meanwhile */
  uint32_t k = f->len - f->pos;
  if (k && sy_flow_push(f, f->pos, k) < 0) {
    relay_end(c, "error");
    return;
  }
  f->pos = f->len;
  c->relay.bytes[s] += k;
  relay_count(c);
  arm_idle(c);
  if (conn_flush(c, s) < 0) {
    relay_end(c, "error");
    return;
  }
  relay_read_update(c, s);
}

static int both_done(const sy_conn *c) {
  return c->fl[0].eof && c->fl[1].eof && !c->fl[0].writing && !c->fl[1].writing;
}

/* The relay ends cleanly only once its shutdowns went out: closing earlier
 * would cancel a close_notify still queued behind a full socket. */
static void shut_done(sy_conn *c, int status) {
  c->relay.shut_pending--;
  if (!conn_closed(c) && status < 0 && status != UV_ECANCELED)
    relay_end(c, status == UV_ECONNRESET || status == UV_EPIPE ? "reset" : "error");
  else if (!conn_closed(c) && !c->relay.shut_pending && both_done(c))
    relay_end(c, "eof");
  conn_unref(c);
}

static void on_client_shut(sy_sock *st, int status) {
  shut_done(st->data, status);
}

static void on_upstream_shut(sy_sock *st, int status) {
  sy_link *l = st->data;
  shut_done(l->c, status);
}

/* FIN (or close_notify then FIN) towards side `to`, once everything for it went. */
static void shutdown_side(sy_conn *c, conn_side to) {
  sy_sock *st = conn_stream(c, to);
  if (!st) return;
  if (c->tls[to]) {
    sy_tls_shutdown(c->tls[to]);
    conn_tls_flush(c, to);
  }
  if (sy_sock_shutdown(st, to == SIDE_CLIENT ? on_client_shut : on_upstream_shut) == 0) {
    c->refs++;
    c->relay.shut_pending++;
  }
}

static void maybe_done(sy_conn *c, conn_side s) {
  sy_flow *f = &c->fl[s];
  if (!f->eof || in_flight(f)) return;
  shutdown_side(c, 1 - s);
  if (both_done(c) && !c->relay.shut_pending) relay_end(c, "eof");
}

static void relay_written(sy_conn *c, conn_side s, sy_sock_wreq *req, int status) {
  if (status < 0) {
    /* The write towards side 1 - s failed: that side is gone. */
    c->io->eof(c, 1 - s, status);
    return;
  }
  sy_flow *f = &c->fl[s];
  sy_flow_compact(f);
  sy_flow_batch_done(f);
  if (f->pos < f->len)
    relay_input(c, s, 0);
  else
    relay_read_update(c, s);
  maybe_done(c, s);
}

static void relay_eof(sy_conn *c, conn_side s, ssize_t status) {
  if (status != UV_EOF) {
    c->relay.closed_by = conn_side_name(s);
    relay_end(c, status == UV_ECONNRESET || status == UV_EPIPE ? "reset" : "error");
    return;
  }
  sy_flow *f = &c->fl[s];
  if (f->eof) return;
  f->eof = 1;
  if (!c->relay.closed_by) c->relay.closed_by = conn_side_name(s);
  if (!(c->fl[0].eof && c->fl[1].eof)) {
    const sy_route_cfg *rt = c->x.route;
    conn_timer_arm(c, conn_route_timeout(rt->timeouts.tunnel_fin, c->cfg->timeouts.tunnel_fin));
  }
  maybe_done(c, s);
}

const conn_io conn_relay_io = {
    .wants = relay_wants,
    .read_update = relay_read_update,
    .input = relay_input,
    .eof = relay_eof,
    .written = relay_written,
};

void relay_start(sy_conn *c) {
  c->x.status = 101;
  report_request(c);
  conn_set_state(c, CS_RELAY);
  c->io = &conn_relay_io;
  c->relay.start = uv_hrtime();
  c->relay.counted_at = uv_now(c->env->loop);
  conn_note n = report_note_of(c);
  report_tunnel_open(&n);
  sy_limits_tunnels_add(1);
  for (int s = 0; s < 2; s++) {
    sy_flow *f = &c->fl[s];
    f->msg_done = f->discard = f->chunked_out = 0;
    /* The heads are reported and written: a relay moves bytes only, and an
     * idle one should not keep the exchange's field arrays and rewritten
     * heads (a tenth of an idle TLS tunnel's memory). */
    sy_head_free(&f->head);
    sy_buf_free(&f->scratch);
  }
  arm_idle(c);
  /* Bytes read past either head go first, in order. */
  relay_input(c, SIDE_CLIENT, 0);
  if (!conn_closed(c)) relay_input(c, SIDE_UPSTREAM, 0);
}
