/* Debug helper (not a fuzz target): show what the proxy's head pipeline makes
 * of one message. Built by run.sh as BUILD_DIR/bin/probe.
 *   probe req|resp FILE      (FILE may be a fuzz input: use --raw for plain bytes)
 * Prints the llhttp result, the collected fields, sy_head_validate and the
 * rewritten head (request: no upgrade tokens; response: plain 200-style). */
#include "fuzz_common.h"

static void show(const char *what, const char *p, size_t n) {
  printf("%s (%zu bytes): \"", what, n);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c == '\r')
      printf("\\r");
    else if (c == '\n')
      printf("\\n");
    else if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\')
      printf("\\x%02x", c);
    else
      putchar(c);
  }
  printf("\"\n");
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: probe req|resp FILE [--raw]\n");
    return 2;
  }
  int req = strcmp(argv[1], "req") == 0;
  int raw = argc > 3 && strcmp(argv[3], "--raw") == 0;
  FILE *f = fopen(argv[2], "rb");
  if (!f) return 2;
  static char in[1 << 20];
  size_t n = fread(in, 1, sizeof(in), f);
  fclose(f);
  const char *buf = raw ? in : in + 2;
  size_t len = raw ? n : (n >= 2 ? n - 2 : 0);
  fz_msg m;
  fz_msg_init(&m, req, 100);
  int rc = fz_parse(&m, buf, len, len, len);
  printf("parse: %d errno=%s reason=%s\n", rc, llhttp_errno_name(llhttp_get_errno(&m.f.parser)),
         m.f.parser.reason ? m.f.parser.reason : "");
  if (rc != 1) {
    fz_msg_free(&m);
    return 0;
  }
  printf("version %d.%d method=%d status=%d flags=0x%x content_length=%llu\n", m.f.head.major,
         m.f.head.minor, m.f.parser.method, m.f.parser.status_code, m.f.parser.flags,
         (unsigned long long)m.f.parser.content_length);
  show("method", buf + m.f.head.method.off, m.f.head.method.len);
  show("target", buf + m.f.head.target.off, m.f.head.target.len);
  show("reason", buf + m.f.head.reason.off, m.f.head.reason.len);
  for (size_t i = 0; i < m.f.head.nfields; i++) {
    show("  name ", buf + m.f.head.fields[i].name.off, m.f.head.fields[i].name.len);
    show("  value", buf + m.f.head.fields[i].value.off, m.f.head.fields[i].value.len);
  }
  printf("validate: %d\n", sy_head_validate(&m.f.head, buf));
  sy_buf b = {0};
  if (req) {
    sy_fwd_opts o = {.via = 1, .chunked = (m.f.parser.flags & F_CHUNKED) != 0};
    sy_http_build_request(&b, &m.f.head, buf, &o);
  } else {
    sy_resp_opts o = {.via = 1};
    sy_http_build_response(&b, &m.f.head, buf, &o);
  }
  show("rewritten", b.p, b.len);
  /* What the proxy meets once it resumes the parser after routing (body,
   * checks llhttp runs after on_headers_complete). */
  llhttp_resume(&m.f.parser);
  llhttp_errno_t e = llhttp_execute(&m.f.parser, buf + m.head_end, len - m.head_end);
  printf("after resume: %s %s\n", llhttp_errno_name(e), m.f.parser.reason ? m.f.parser.reason : "");
  sy_buf_free(&b);
  fz_msg_free(&m);
  return 0;
}
