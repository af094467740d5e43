/* libFuzzer target: the response path of the proxy without sockets.
 *
 * Input: [ctl][split][response bytes...]
 *   ctl  bit 0: feed in three pieces; bit 1: the client spoke HTTP/1.0;
 *        bit 2: the client asked to close; bit 3: the request was HEAD;
 *        bit 4: the request offered an upgrade ("websocket", "h2c")
 *   split where the first piece ends (mod len+1)
 * The bytes go through llhttp (response mode, strict), sy_head_validate, the
 * framing decisions of cb_resp_headers_complete() in conn.c, and
 * sy_http_build_response. The head the client would get must be one
 * well-formed response with the same status and a body framing that matches
 * what the proxy is going to send (re-framed chunked, or the upstream's
 * Content-Length), and must never carry Upgrade outside a relayed 101/426. */
#include "fuzz_common.h"

static void check_relayed(const sy_buf *out, const fz_msg *in, const sy_resp_opts *o,
                          int bodyless) {
  if (fz_muted_copy(&in->f.head, in->base) || (in->f.head.major != 1 && fz_known("version")))
    return;
  FZ_CHECK(in->f.head.major == 1, "HTTP/%d.%d response relayed", in->f.head.major,
           in->f.head.minor);
  FZ_CHECK((in->f.parser.status_code >= 100 && in->f.parser.status_code <= 599) ||
               fz_known("status"),
           "status %d relayed", in->f.parser.status_code);
  FZ_CHECK(!fz_has_ctl(in->base + in->f.head.reason.off, in->f.head.reason.len, 1),
           "control byte in the relayed reason phrase: %.*s", (int)out->len, out->p);
  fz_check_wire_head(out->p, out->len, "relayed response");
  fz_msg re;
  fz_msg_init(&re, 0, 100000);
  int rc = fz_parse(&re, out->p, out->len, out->len, out->len);
  FZ_CHECK(rc == 1 && re.head_end == out->len,
           "relayed response does not re-parse as one head (rc=%d end=%zu len=%zu): %.*s", rc,
           re.head_end, out->len, (int)out->len, out->p);
  FZ_CHECK(re.f.parser.status_code == in->f.parser.status_code, "status %d became %d",
           in->f.parser.status_code, re.f.parser.status_code);
  FZ_CHECK(sy_head_validate(&re.f.head, re.base) == 0, "relayed head does not validate: %.*s",
           (int)out->len, out->p);
  int status = in->f.parser.status_code;
  if (status >= 200 && !bodyless) {
    int in_cl = (in->f.parser.flags & F_CONTENT_LENGTH) != 0;
    int out_cl = (re.f.parser.flags & F_CONTENT_LENGTH) != 0;
    int out_chunked = (re.f.parser.flags & F_CHUNKED) != 0;
    if (o->chunked) {
      FZ_CHECK(out_chunked && !out_cl, "re-framed body not announced as chunked: %.*s",
               (int)out->len, out->p);
    } else if (in_cl && fz_known("conn-cl") &&
               fz_connection_names(&in->f.head, in->base, "content-length")) {
      /* known: see fz_known() */
    } else if (in_cl) {
      FZ_CHECK(out_cl && !out_chunked && re.f.parser.content_length == in->f.parser.content_length,
               "Content-Length body (%llu bytes) relayed without the same Content-Length: %.*s",
               (unsigned long long)in->f.parser.content_length, (int)out->len, out->p);
    } else {
      /* close-delimited towards the client: the proxy must close after it */
      FZ_CHECK(!out_cl && !out_chunked && o->conn_close,
               "close-delimited body relayed on a kept-alive connection: %.*s", (int)out->len,
               out->p);
    }
  }
  int ups = fz_count_fields(&re.f.head, re.base, "upgrade");
  if (!(status == 101 && o->upgrade) && status != 426)
    FZ_CHECK(ups == 0, "Upgrade relayed on a %d: %.*s", status, (int)out->len, out->p);
  fz_msg_free(&re);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  uint8_t ctl = data[0];
  size_t len = size - 2;
  char *buf = fz_dup(data + 2, len);
  size_t split1 = len ? data[1] % (len + 1) : 0;
  size_t split2 = (ctl & 1) ? split1 + (len - split1) / 2 : len;
  int http10 = (ctl & 2) != 0, client_close = (ctl & 4) != 0, is_head = (ctl & 8) != 0;
  int upgrading = (ctl & 16) != 0 && !http10;

  fz_msg m;
  fz_msg_init(&m, 0, 24);
  int rc = fz_parse(&m, buf, len, split1, split2);
  fz_msg w;
  fz_msg_init(&w, 0, 24);
  int rcw = fz_parse(&w, buf, len, len, len);
  FZ_CHECK(rc == rcw, "split parse %d vs whole parse %d", rc, rcw);
  if (rc == 1) {
    FZ_CHECK(m.f.head.nfields == w.f.head.nfields, "fields %zu vs %zu", m.f.head.nfields,
             w.f.head.nfields);
    for (size_t i = 0; i < m.f.head.nfields; i++)
      FZ_CHECK(memcmp(&m.f.head.fields[i], &w.f.head.fields[i], sizeof(sy_field)) == 0,
               "field %zu spans differ when fed in pieces", i);
    FZ_CHECK(memcmp(&m.f.head.reason, &w.f.head.reason, sizeof(sy_span)) == 0,
             "reason spans differ when fed in pieces");
  }
  fz_msg_free(&w);
  if (rc != 1 || sy_head_validate(&m.f.head, buf) < 0) goto out;

  /* The decisions of cb_resp_headers_complete(). */
  int status = m.f.parser.status_code;
  sy_resp_opts o = {.via = 1};
  int bodyless = 1;
  if (status == 101) {
    if (!upgrading) goto out; /* conn.c: 502, never relayed */
    o.upgrade = 1;
  } else if (status >= 100 && status < 200) {
    /* interim: relayed as is */
  } else {
    bodyless = is_head || status == 204 || status == 304;
    int framed = (m.f.parser.flags & (F_CHUNKED | F_CONTENT_LENGTH)) != 0;
    int close_after = 0, chunked_out = 0;
    if (!bodyless && (!framed || (m.f.parser.flags & F_CHUNKED))) {
      if (http10)
        close_after = 1;
      else
        chunked_out = 1;
    }
    if (client_close) close_after = 1;
    o.chunked = chunked_out;
    o.conn_close = close_after;
    o.keep_alive10 = http10 && !client_close && !close_after;
  }
  sy_buf b = {0};
  if (sy_http_build_response(&b, &m.f.head, buf, &o) == 0) check_relayed(&b, &m, &o, bodyless);
  sy_buf_free(&b);
out:
  fz_msg_free(&m);
  free(buf);
  return 0;
}
