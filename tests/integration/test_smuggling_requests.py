"""Malformed and ambiguous requests: the proxy answers 400 (431 for size
limits; 405/400 for CONNECT; 400/501 for unknown methods; 400/505 for
versions it does not speak), closes the connection, and the upstream receives
nothing of the request (no connection, or a connection with zero bytes).

Policy where RFC 9110/9112 let a lenient recipient accept something (each
case below that falls under a MAY says so in its `why`): this file asserts
rejection. A proxy sits between two parsers; anything it accepts that a
stricter or differently-lenient upstream could read another way is a
smuggling primitive, and rejecting costs nothing to a well-behaved client.

Every case also checks that another connection opened after the bad one
still gets a normal answer, so a bad request cannot poison the proxy.
"""
import socket
from collections import namedtuple

import pytest

from support.http import Reader, deadline_in, get, read_request, response_bytes

OK = response_bytes(200, body=b"ok")
MAX_HEADERS = 20
MAX_HEADER_BYTES = 4096

Case = namedtuple("Case", "id raw statuses why")


def req(head_lines, body=b"", start=b"POST / HTTP/1.1", host=b"Host: a\r\n"):
    """start line + Host + the given raw header bytes + CRLF + body."""
    return start + b"\r\n" + host + head_lines + b"\r\n" + body


def chunked(body_bytes):
    return req(b"Transfer-Encoding: chunked\r\n", body_bytes)


B400 = (400,)
CASES = [
    # ---- Content-Length / Transfer-Encoding framing (RFC 9112 6.1-6.3) ----
    Case("cl_and_te", req(b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
         B400, "9112 6.1: a server MAY reject CL+TE; a proxy forwarding it is the classic CL.TE smuggle"),
    Case("te_and_cl", req(b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", b"0\r\n\r\n"),
         B400, "same as cl_and_te, other order (TE.CL)"),
    Case("two_differing_cl", req(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"),
         B400, "9112 6.3 (5): differing lengths are unrecoverable framing errors: MUST 400"),
    Case("two_equal_cl_lines", req(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"),
         B400, "9110 8.6 MAY accept identical duplicates; we assert rejection"),
    Case("cl_list_equal", req(b"Content-Length: 5, 5\r\n", b"hello"),
         B400, "9110 8.6 MAY collapse '5, 5'; we assert rejection"),
    Case("cl_list_differing", req(b"Content-Length: 5, 6\r\n", b"hello!"), B400,
         "9112 6.3: invalid Content-Length list -> 400"),
    Case("cl_plus_sign", req(b"Content-Length: +5\r\n", b"hello"), B400, "CL = 1*DIGIT"),
    Case("cl_negative", req(b"Content-Length: -1\r\n", b"x"), B400, "CL = 1*DIGIT"),
    Case("cl_inner_space", req(b"Content-Length: 1 2\r\n", b"x" * 12), B400, "CL = 1*DIGIT"),
    Case("cl_hex", req(b"Content-Length: 0x5\r\n", b"hello"), B400, "CL = 1*DIGIT (decimal)"),
    Case("cl_overflow", req(b"Content-Length: 99999999999999999999999\r\n", b"x"), B400,
         "9110 8.6: a recipient MUST anticipate overflow and treat it as an error"),
    Case("cl_empty", req(b"Content-Length: \r\n", b"x"), B400, "CL = 1*DIGIT: empty is invalid"),
    Case("cl_trailing_letter", req(b"Content-Length: 5a\r\n", b"hello"), B400, "CL = 1*DIGIT"),
    Case("cl_nul", req(b"Content-Length: 5\x00\r\n", b"hello"), B400, "NUL in a framing field"),
    Case("te_gzip", req(b"Transfer-Encoding: gzip\r\n", b"xx"), B400,
         "9112 6.3 (4): request TE whose final coding is not chunked: MUST 400 and close"),
    Case("te_chunked_then_gzip", req(b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"), B400,
         "9112 6.3 (4): final coding not chunked"),
    Case("te_identity", req(b"Transfer-Encoding: identity\r\n", b"x"), B400,
         "'identity' is no longer a transfer coding (RFC 9112): final coding not chunked"),
    Case("te_chunked_vtab", req(b"Transfer-Encoding: chunked\x0b\r\n", b"0\r\n\r\n"), B400,
         "'chunked\\x0b' is not 'chunked'; VT is a CTL"),
    Case("te_vtab_chunked", req(b"Transfer-Encoding: \x0bchunked\r\n", b"0\r\n\r\n"), B400,
         "VT is not OWS"),
    Case("te_chunked_param", req(b"Transfer-Encoding: chunked;q=1\r\n", b"0\r\n\r\n"), B400,
         "chunked takes no parameters: an unknown final coding"),
    Case("te_chunked_twice_list", req(b"Transfer-Encoding: chunked, chunked\r\n", b"0\r\n\r\n"),
         B400, "9112 6.1: chunked MUST NOT be applied more than once"),
    Case("te_chunked_twice_lines",
         req(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), B400,
         "same, as two field lines"),
    Case("te_on_http10", req(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n",
                             start=b"POST / HTTP/1.0"), B400,
         "9112 6.1: TE in an HTTP/1.0 message MUST be treated as faulty framing"),
    Case("te_and_cl_on_http10",
         req(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n",
             start=b"POST / HTTP/1.0"), B400, "9112 6.1, even with a Content-Length"),

    # ---- line endings and folding (RFC 9112 2.2, 5.2) ----
    Case("obs_fold_space", req(b"X-A: a\r\n b\r\n", start=b"GET / HTTP/1.1"), B400,
         "9112 5.2: MUST reject obs-fold or replace it with SP; we assert rejection"),
    Case("obs_fold_tab", req(b"X-A: a\r\n\tb\r\n", start=b"GET / HTTP/1.1"), B400, "obs-fold with HTAB"),
    Case("obs_fold_after_empty_value", req(b"X-A:\r\n b\r\n", start=b"GET / HTTP/1.1"), B400,
         "obs-fold whose first line has an empty value"),
    Case("whitespace_before_first_header", b"GET / HTTP/1.1\r\n Host: a\r\nHost: b\r\n\r\n", B400,
         "9112 2.2: whitespace-preceded line after the start line MUST be rejected or ignored"),
    Case("bare_lf_request_line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", B400,
         "9112 2.2 MAY accept a bare LF; we assert rejection"),
    Case("bare_lf_header_line", b"GET / HTTP/1.1\r\nHost: a\nX-A: 1\r\n\r\n", B400,
         "bare LF in a field line (MAY accept; rejection asserted)"),
    Case("bare_lf_end_of_head", b"GET / HTTP/1.1\r\nHost: a\r\n\n", B400,
         "bare LF as the empty line ending the head (MAY accept; rejection asserted)"),
    Case("bare_cr_request_line", b"GET / HTTP/1.1\rHost: a\r\n\r\n", B400,
         "9112 2.2: a bare CR MUST be rejected or replaced by SP"),
    Case("bare_cr_in_value", req(b"X-A: a\rb\r\n", start=b"GET / HTTP/1.1"), B400, "bare CR in a value"),
    Case("bare_cr_after_colon", req(b"X-A:\rQ b\r\n", start=b"GET / HTTP/1.1"), B400,
         "bare CR right after the colon (empty value, then CR + one byte)"),
    Case("cr_cr_lf", req(b"X-A: a\r\r\n", start=b"GET / HTTP/1.1"), B400, "CR CR LF line end"),
    Case("space_before_colon", req(b"X-A : 1\r\n", start=b"GET / HTTP/1.1"), B400,
         "9112 5.1: whitespace between name and colon MUST be rejected with 400"),
    Case("tab_before_colon", req(b"X-A\t: 1\r\n", start=b"GET / HTTP/1.1"), B400, "same with HTAB"),
    Case("space_before_colon_host", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", B400,
         "the same on Host, where routing looks"),

    # ---- NUL and control bytes ----
    Case("nul_in_name", req(b"X\x00A: 1\r\n", start=b"GET / HTTP/1.1"), B400, "names are tokens"),
    Case("nul_in_value", req(b"X-A: a\x00b\r\n", start=b"GET / HTTP/1.1"), B400,
         "9110 5.5: NUL in a value MUST be rejected or replaced"),
    Case("soh_in_value", req(b"X-A: a\x01b\r\n", start=b"GET / HTTP/1.1"), B400, "CTL in a value"),
    Case("esc_in_value", req(b"X-A: a\x1bb\r\n", start=b"GET / HTTP/1.1"), B400, "CTL in a value"),
    Case("del_in_value", req(b"X-A: a\x7fb\r\n", start=b"GET / HTTP/1.1"), B400, "DEL in a value"),
    Case("nul_in_target", b"GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n", B400, "CTL in the target"),
    Case("soh_in_target", b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", B400, "CTL in the target"),
    Case("tab_in_target", b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", B400,
         "HTAB is not a URI character; a whitespace-splitting upstream reads another target"),
    Case("formfeed_in_target", b"GET /a\x0cb HTTP/1.1\r\nHost: a\r\n\r\n", B400, "CTL in the target"),
    Case("del_in_target", b"GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n", B400, "DEL in the target"),

    # ---- chunked bodies (RFC 9112 7.1) ----
    Case("chunk_size_zz", chunked(b"zz\r\nhello\r\n0\r\n\r\n"), B400, "chunk-size = 1*HEXDIG"),
    Case("chunk_size_negative", chunked(b"-1\r\nhello\r\n0\r\n\r\n"), B400, "chunk-size = 1*HEXDIG"),
    Case("chunk_size_overflow", chunked(b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"), B400,
         "9112 7.1: MUST anticipate overflow and treat it as an error"),
    Case("chunk_size_0x", chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), B400, "no 0x prefix in HEXDIG"),
    Case("chunk_size_leading_space", chunked(b" 5\r\nhello\r\n0\r\n\r\n"), B400, "no leading BWS"),
    Case("chunk_size_trailing_space", chunked(b"5 \r\nhello\r\n0\r\n\r\n"), B400,
         "BWS is only allowed before ';' of an extension"),
    Case("chunk_size_bare_lf", chunked(b"5\nhello\r\n0\r\n\r\n"), B400, "bare LF after the size"),
    Case("chunk_size_bare_cr", chunked(b"5\rhello\r\n0\r\n\r\n"), B400, "bare CR after the size"),
    Case("chunk_data_bare_lf", chunked(b"5\r\nhello\n0\r\n\r\n"), B400, "data not followed by CRLF"),
    Case("chunk_data_too_long", chunked(b"5\r\nhelloXX\r\n0\r\n\r\n"), B400,
         "more data than the size announced"),
    Case("chunk_ext_nul", chunked(b"5;a\x00\r\nhello\r\n0\r\n\r\n"), B400, "NUL in a chunk extension"),
    Case("chunk_ext_del", chunked(b"5;a=b\x7f\r\nhello\r\n0\r\n\r\n"), B400, "DEL in a chunk extension"),
    Case("chunk_ext_open_quote", chunked(b'5;a="b\r\nhello\r\n0\r\n\r\n'), B400,
         "unterminated quoted-string in an extension"),
    Case("last_chunk_bare_lf", chunked(b"5\r\nhello\r\n0\r\n\n"), B400,
         "bare LF ending the trailer section (MAY accept; rejection asserted: the chunk-size"
         " parser already rejects bare LF, the same byte must mean the same thing everywhere)"),
    Case("trailer_bare_cr", chunked(b"5\r\nhello\r\n0\r\nX-T: a\rb\r\n\r\n"), B400, "bare CR in a trailer"),

    # ---- methods (RFC 9110 9.1: case-sensitive tokens) ----
    Case("method_lowercase", b"get / HTTP/1.1\r\nHost: a\r\n\r\n", (400, 501),
         "'get' is a token but not GET (case-sensitive): unknown method, 400 or 501"),
    Case("method_with_space", b"G ET / HTTP/1.1\r\nHost: a\r\n\r\n", B400, "not a request line"),
    Case("method_with_nul", b"GET\x00 / HTTP/1.1\r\nHost: a\r\n\r\n", B400, "NUL in the method"),
    Case("connect", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", (400, 405),
         "a reverse proxy does not tunnel CONNECT"),

    # ---- targets ----
    Case("target_with_space", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", B400, "SP ends the target"),
    Case("absolute_form_other_host", b"GET http://evil.example/x HTTP/1.1\r\nHost: a\r\n\r\n", B400,
         "9112 3.2.2: the upstream must use the authority, the proxy routed on Host: reject"),

    # ---- Host (RFC 9112 3.2: MUST 400) ----
    Case("host_missing_http11", b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", B400, "no Host on HTTP/1.1"),
    Case("host_twice_same", b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", B400, "more than one Host"),
    Case("host_twice_differing", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", B400, "more than one Host"),
    Case("host_with_space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", B400, "invalid Host value"),
    Case("host_with_slash", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", B400, "invalid Host value"),
    Case("host_with_userinfo", b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", B400, "invalid Host value"),

    # ---- versions ----
    Case("version_1_2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", (400, 505),
         "9110 2.5 SHOULD treat 1.2 as 1.1; the proxy rejects, which is safe: 400/505 accepted"),
    Case("version_2_0", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", (400, 505),
         "HTTP/2 is not spoken in HTTP/1 syntax; forwarding it as HTTP/1.1 skips the Host rule"),
    Case("version_1_10", b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", B400, "HTTP-version = DIGIT.DIGIT"),
    Case("version_0_9", b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", (400, 505), "no HTTP/0.9 here"),
    Case("request_line_without_version", b"GET /x\r\nHost: a\r\n\r\n", (400, 505),
         "an HTTP/0.9 simple-request line (llhttp reads it as 0.9, headers and all)"),
    Case("version_lowercase", b"GET / http/1.1\r\nHost: a\r\n\r\n", B400, "HTTP-name is case-sensitive"),
    Case("version_trailing_space", b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", B400, "junk after the version"),

    # ---- header names (RFC 9110 5.1: token) ----
    Case("name_paren", req(b"X(A): 1\r\n", start=b"GET / HTTP/1.1"), B400, "not a token"),
    Case("name_quote", req(b'X"A: 1\r\n', start=b"GET / HTTP/1.1"), B400, "not a token"),
    Case("name_at", req(b"X@A: 1\r\n", start=b"GET / HTTP/1.1"), B400, "not a token"),
    Case("name_empty", req(b": 1\r\n", start=b"GET / HTTP/1.1"), B400, "empty name"),
    Case("name_non_ascii", req(b"X-\x80: 1\r\n", start=b"GET / HTTP/1.1"), B400, "not a token"),
    Case("name_del", req(b"X\x7f: 1\r\n", start=b"GET / HTTP/1.1"), B400, "not a token"),
    Case("no_colon", req(b"Bad Header\r\n", start=b"GET / HTTP/1.1"), B400, "not a field line"),

    # ---- limits ----
    Case("too_many_headers",
         req(b"".join(b"X-H%02d: v\r\n" % i for i in range(MAX_HEADERS + 5)), start=b"GET / HTTP/1.1"),
         (431,), "limits.max_headers"),
    Case("head_over_max_bytes_one_line", req(b"X-Big: " + b"a" * (MAX_HEADER_BYTES + 100) + b"\r\n",
                                             start=b"GET / HTTP/1.1"), (431,), "limits.max_header_bytes"),
    Case("head_over_max_bytes_many_lines",
         req(b"".join(b"X-%d: %s\r\n" % (i, b"v" * 300) for i in range(MAX_HEADERS - 2)),
             start=b"GET / HTTP/1.1"), (431,), "limits.max_header_bytes over several lines"),
    Case("target_over_max_bytes", b"GET /" + b"a" * (MAX_HEADER_BYTES + 100) + b" HTTP/1.1\r\nHost: a\r\n\r\n",
         (414, 431), "a request line longer than the head limit"),
]


def start(proxy, backend, routes=None, **cfg):
    be = backend(response=OK)
    px = proxy(upstreams={"web": [be.address]},
               routes=routes if routes is not None else [{"upstream": "web"}],
               limits={"max_headers": MAX_HEADERS, "max_header_bytes": MAX_HEADER_BYTES}, **cfg)
    return px, be


def upstream_bytes_except(be, good_prefix):
    """Bytes each upstream connection received, leaving out the connections
    that carried a known good request."""
    return [bytes(c.raw) for c in list(be.conns) if not bytes(c.raw).startswith(good_prefix)]


def parse_requests(raw):
    """Requests in a byte stream, parsed by the strict test parser."""
    a, b = socket.socketpair()
    try:
        a.sendall(raw)
        a.close()
        reader, out = Reader(b), []
        for _ in range(10):
            q = read_request(reader, deadline_in(5))
            if q is None:
                break
            out.append(q)
        return out
    finally:
        b.close()


def good_request_still_works(px, be, path="/after"):
    r = px.request(get(path))
    assert r.status == 200, r.head
    be.wait_requests(1)
    assert any(q.target == path for q in be.requests)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_request_is_rejected(proxy, backend, case):
    px, be = start(proxy, backend)
    with px.connect() as c:
        try:
            c.send(case.raw)
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = c.response(method="GET", allow_eof=True)
        assert r is not None, ("%s: the proxy closed without an answer (expected %s; %s)"
                               % (case.id, case.statuses, case.why))
        assert r.status in case.statuses, ("%s: got %r, expected %s (%s)"
                                           % (case.id, r.head, case.statuses, case.why))
        assert "close" in r.tokens("connection"), "%s: error without Connection: close: %r" % (case.id, r.head)
        assert c.closed_by_peer(5), "%s: connection kept open after %d" % (case.id, r.status)
    # Another connection is served normally; by the time it is, anything the
    # bad request would have sent upstream has had every chance to arrive.
    good_request_still_works(px, be)
    leaked = [b for b in upstream_bytes_except(be, b"GET /after ") if b]
    assert not leaked, "%s: the upstream received bytes of the bad request: %r" % (case.id, leaked)


def test_corpus_is_large_enough():
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)


# ---------------------------------------------------------------- not in the table

def test_connection_naming_content_length_does_not_unframe_the_body(proxy, backend):
    """`Connection: content-length` makes Content-Length hop-by-hop by the
    letter of 9110 7.6.1, but the body is still forwarded as it came: without
    a length the upstream reads the body as the next request (a smuggled
    request that bypasses routing). Expected: 400, or the body reaches the
    upstream framed (Content-Length or chunked) as one request."""
    px, be = start(proxy, backend)
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    raw = (b"POST /x HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\n"
           b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled)
    with px.connect() as c:
        c.send(raw)
        r = c.response(allow_eof=True)
    assert r is not None
    if r.status == 400:
        assert not any(bytes(x.raw) for x in be.conns)
        return
    be.wait_requests(1)
    # Everything the proxy wrote upstream, parsed the way the upstream would.
    be.wait_for(lambda: any(smuggled in bytes(x.raw) for x in be.conns), 10,
                "the body bytes to reach the upstream")
    raw = b"".join(bytes(x.raw) for x in be.conns)
    parsed = parse_requests(raw)
    assert [q.target for q in parsed] == ["/x"], \
        "the upstream reads these requests: %r\nraw: %r" % ([q.target for q in parsed], raw)
    assert parsed[0].body == smuggled


def test_connection_naming_host_keeps_host(proxy, backend):
    """The proxy routes on Host; the upstream must get that same Host, whatever
    Connection names (expected: 400, or forwarded with its Host)."""
    px, be = start(proxy, backend)
    r = px.request(b"GET /h HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n")
    if r.status == 400:
        return
    q = be.wait_requests(1)[0]
    assert q.values("host") == ["a"], "forwarded head: %r" % q.head


def test_http10_without_host_is_forwarded_with_host(proxy, backend):
    """HTTP/1.0 may omit Host, but the proxy forwards HTTP/1.1, where Host is
    mandatory (9112 3.2): the forwarded request must carry one."""
    px, be = start(proxy, backend)
    r = px.request(b"GET /old HTTP/1.0\r\n\r\n")
    assert r.status == 200
    q = be.wait_requests(1)[0]
    assert q.version == "HTTP/1.1"
    assert len(q.values("host")) == 1, "HTTP/1.1 request without Host sent upstream: %r" % q.head


def test_double_slash_target_is_valid_origin_form(proxy, backend):
    """'//x' is a valid absolute-path (segments may be empty, RFC 3986), so it
    is not in the rejection table: with merge_slashes off it is forwarded as
    it is (merging by default is tested in test_routing_normalize.py)."""
    px, be = start(proxy, backend, paths={"merge_slashes": False})
    r = px.request(get("//x"))
    assert r.status == 200
    assert be.wait_requests(1)[0].target == "//x"


def test_bytes_after_a_request_are_the_next_request(proxy, backend):
    """Garbage pipelined after a complete request: the first request is
    served, the garbage gets a 400 and never reaches the upstream."""
    px, be = start(proxy, backend)
    with px.connect() as c:
        c.send(get("/first") + b"GARBAGE / HTTP/1.1\r\nHost: a\r\n\r\n")
        r1 = c.response()
        r2 = c.response(allow_eof=True)
        assert c.closed_by_peer(5)
    assert r1.status == 200
    assert r2 is not None and r2.status == 400
    assert [q.target for q in be.requests] == ["/first"]
    assert all(b"GARBAGE" not in bytes(x.raw) for x in be.conns)


def test_body_bytes_are_not_parsed_as_requests_after_a_rejected_body(proxy, backend):
    """A chunked body that breaks half-way: the requests hidden in it never
    reach the upstream as requests."""
    px, be = start(proxy, backend)
    inner = b"GET /inner HTTP/1.1\r\nHost: a\r\n\r\n"
    raw = chunked(b"%x\r\n" % len(inner) + inner + b"\r\nzz\r\n" + inner)
    with px.connect() as c:
        c.send(raw)
        r = c.response(allow_eof=True)
        assert r is None or r.status == 400
        assert c.closed_by_peer(5)
    good_request_still_works(px, be)
    assert all(q.target != "/inner" for q in be.requests)
