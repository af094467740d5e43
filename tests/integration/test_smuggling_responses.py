"""Malformed and ambiguous upstream responses: the client gets a 502 (with
Connection: close) instead of anything the proxy cannot frame with
certainty, and the proxy drops the upstream connection (the backend sees
EOF), so nothing left in it can be read as the answer to a later request.

Policy where RFC 9110/9112 let a recipient accept something (the `why` of
each case says so): rejection is asserted. RFC 9112 5.2 spells it out for
obs-fold in responses ("a proxy ... MUST either discard the message and
replace it with a 502 ... or replace each obs-fold with SP"); the same
reasoning applies to every framing ambiguity below.

Each case also checks that a later request on a new client connection is
answered normally over a new upstream connection.
"""
import time
from collections import namedtuple

import pytest

from support.http import response_bytes, get

OK = response_bytes(200, body=b"ok")
MAX_HEADERS = 20
MAX_HEADER_BYTES = 4096

Case = namedtuple("Case", "id raw why")


def resp(lines, body=b"", start=b"HTTP/1.1 200 OK"):
    return start + b"\r\n" + lines + b"\r\n" + body


CHUNKED = b"Transfer-Encoding: chunked\r\n"

CASES = [
    # ---- framing ----
    Case("cl_and_te", resp(b"Content-Length: 3\r\n" + CHUNKED, b"0\r\n\r\n"),
         "9112 6.3 (3): TE overrides CL, 'ought to be handled as an error' by a proxy: reject"),
    Case("te_and_cl", resp(CHUNKED + b"Content-Length: 3\r\n", b"0\r\n\r\n"), "same, other order"),
    Case("two_differing_cl", resp(b"Content-Length: 2\r\nContent-Length: 3\r\n", b"hi!"),
         "9112 6.3 (5): MUST discard and 502"),
    Case("two_equal_cl_lines", resp(b"Content-Length: 2\r\nContent-Length: 2\r\n", b"hi"),
         "9110 8.6 MAY accept identical duplicates; rejection asserted"),
    Case("cl_list_equal", resp(b"Content-Length: 2, 2\r\n", b"hi"), "9110 8.6 MAY collapse; rejection asserted"),
    Case("cl_plus_sign", resp(b"Content-Length: +2\r\n", b"hi"), "CL = 1*DIGIT"),
    Case("cl_negative", resp(b"Content-Length: -1\r\n", b"hi"), "CL = 1*DIGIT"),
    Case("cl_inner_space", resp(b"Content-Length: 1 2\r\n", b"hi"), "CL = 1*DIGIT"),
    Case("cl_hex", resp(b"Content-Length: 0x2\r\n", b"hi"), "CL = 1*DIGIT"),
    Case("cl_overflow", resp(b"Content-Length: 99999999999999999999999\r\n", b"hi"), "overflow is an error"),
    Case("cl_empty", resp(b"Content-Length: \r\n", b"hi"), "CL = 1*DIGIT"),
    Case("te_gzip", resp(b"Transfer-Encoding: gzip\r\n", b"\x1f\x8bxx"),
         "9112 6.3 (3) would read this until close; but TE is hop-by-hop and stripped, so the"
         " client would get gzip-coded bytes as the content: a proxy that does not decode must 502"),
    Case("te_chunked_then_gzip", resp(b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"), "same as te_gzip"),
    Case("te_chunked_vtab", resp(b"Transfer-Encoding: chunked\x0b\r\n", b"0\r\n\r\n"), "VT is a CTL"),
    Case("te_on_http10", resp(CHUNKED, b"2\r\nhi\r\n0\r\n\r\n", start=b"HTTP/1.0 200 OK"),
         "9112 6.1: TE in an HTTP/1.0 message MUST be treated as faulty framing"),
    # ---- folding, line ends, control bytes ----
    Case("obs_fold", resp(b"X-A: a\r\n b\r\nContent-Length: 0\r\n"), "9112 5.2: MUST 502 or replace with SP"),
    Case("obs_fold_after_empty_value", resp(b"X-A:\r\n b\r\nContent-Length: 0\r\n"), "same, empty first line"),
    Case("whitespace_before_first_header", resp(b" Content-Length: 0\r\n"), "9112 2.2"),
    Case("space_before_colon", resp(b"X-A : 1\r\nContent-Length: 0\r\n"),
         "9112 5.1: a proxy MUST remove such whitespace before forwarding; rejection asserted"),
    Case("nul_in_value", resp(b"X-A: a\x00b\r\nContent-Length: 0\r\n"), "9110 5.5"),
    Case("nul_in_name", resp(b"X\x00A: 1\r\nContent-Length: 0\r\n"), "names are tokens"),
    Case("name_paren", resp(b"(x): 1\r\nContent-Length: 0\r\n"), "names are tokens"),
    Case("soh_in_value", resp(b"X-A: a\x01b\r\nContent-Length: 0\r\n"), "CTL in a value"),
    Case("bare_lf_status_line", b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", "MAY accept; rejection asserted"),
    Case("bare_lf_header_line", resp(b"X-A: 1\nContent-Length: 0\r\n"), "MAY accept; rejection asserted"),
    Case("bare_lf_end_of_head", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\n", "MAY accept; rejection asserted"),
    Case("bare_cr_status_line", b"HTTP/1.1 200 OK\rXContent-Length: 2\r\n\r\nhi",
         "9112 2.2: bare CR MUST be rejected or replaced by SP"),
    Case("bare_cr_in_value", resp(b"X-A: a\rb\r\nContent-Length: 0\r\n"), "bare CR"),
    Case("bare_cr_after_colon", resp(b"X-A:\rQ b\r\nContent-Length: 0\r\n"), "bare CR after an empty value"),
    Case("ctl_in_reason", resp(b"Content-Length: 0\r\n", start=b"HTTP/1.1 200 O\x01K"),
         "reason-phrase = *( HTAB / SP / VCHAR / obs-text )"),
    Case("nul_in_reason", resp(b"Content-Length: 0\r\n", start=b"HTTP/1.1 200 O\x00K"), "NUL in the reason"),
    # ---- status line ----
    Case("status_99", resp(b"Content-Length: 0\r\n", start=b"HTTP/1.1 99 OK"), "status-code = 3DIGIT"),
    Case("status_099", resp(b"Content-Length: 0\r\n", start=b"HTTP/1.1 099 OK"), "outside 100..599"),
    Case("status_1000", resp(b"Content-Length: 0\r\n", start=b"HTTP/1.1 1000 OK"), "status-code = 3DIGIT"),
    Case("status_600", resp(b"Content-Length: 0\r\n", start=b"HTTP/1.1 600 OK"),
         "9110 15: values outside 100..599 are invalid"),
    Case("status_2_digits", resp(b"Content-Length: 0\r\n", start=b"HTTP/1.1 20 OK"), "status-code = 3DIGIT"),
    Case("status_letters", resp(b"Content-Length: 0\r\n", start=b"HTTP/1.1 2x0 OK"), "status-code = 3DIGIT"),
    Case("status_missing", resp(b"Content-Length: 0\r\n", start=b"HTTP/1.1 OK"), "no status code"),
    Case("version_2_0", resp(b"Content-Length: 0\r\n", start=b"HTTP/2.0 200 OK"), "not HTTP/1.x"),
    Case("version_0_9", resp(b"Content-Length: 0\r\n", start=b"HTTP/0.9 200 OK"), "not HTTP/1.x"),
    Case("version_1_10", resp(b"Content-Length: 0\r\n", start=b"HTTP/1.10 200 OK"), "DIGIT.DIGIT"),
    Case("version_lowercase", resp(b"Content-Length: 0\r\n", start=b"http/1.1 200 OK"), "case-sensitive"),
    Case("not_http", b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not a response at all"),
    # ---- chunked bodies: the whole response arrives in one read, so nothing has
    # been written to the client yet and a 502 is still possible ----
    Case("chunk_size_zz", resp(CHUNKED, b"zz\r\nhi\r\n0\r\n\r\n"), "chunk-size = 1*HEXDIG"),
    Case("chunk_size_negative", resp(CHUNKED, b"-1\r\nhi\r\n0\r\n\r\n"), "chunk-size = 1*HEXDIG"),
    Case("chunk_size_overflow", resp(CHUNKED, b"fffffffffffffffffff\r\nhi\r\n0\r\n\r\n"), "overflow"),
    Case("chunk_size_bare_lf", resp(CHUNKED, b"2\nhi\r\n0\r\n\r\n"), "bare LF in a chunk line"),
    Case("chunk_ext_ctl", resp(CHUNKED, b"2;\x01\r\nhi\r\n0\r\n\r\n"), "CTL in a chunk extension"),
    # ---- 101 (the "fake 101" class) ----
    Case("101_without_upgrade_request",
         b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
         "a 101 to a request that offered no upgrade: never a tunnel"),
    # ---- limits ----
    Case("too_many_headers", resp(b"".join(b"X-H%02d: v\r\n" % i for i in range(MAX_HEADERS + 5))
                                  + b"Content-Length: 0\r\n"), "limits.max_headers"),
    Case("head_too_large", resp(b"X-Big: " + b"a" * (MAX_HEADER_BYTES + 2048) + b"\r\nContent-Length: 0\r\n"),
         "limits.max_header_bytes (+1 KiB slack for responses)"),
]


class Script:
    """Backend behaviour: requests for /good get OK; any other request gets
    the bad bytes, then the connection is held until the proxy closes it."""

    def __init__(self, bad):
        self.bad = bad

    def __call__(self, conn):
        for _ in range(100):
            req = conn.read_request(timeout=10)
            if req is None:
                return
            if req.target.startswith("/good"):
                conn.send(OK)
                continue
            conn.send(self.bad)
            # The proxy must close this connection; a proxy that waits for
            # more (a close-delimited body) gets EOF from here after 3 s.
            conn.wait_eof(timeout=3)
            return


def start(proxy, backend, bad, **extra):
    be = backend(handler=Script(bad))
    px = proxy(upstreams={"web": [be.address]},
               limits={"max_headers": MAX_HEADERS, "max_header_bytes": MAX_HEADER_BYTES}, **extra)
    return px, be


def assert_502_and_discarded(px, be, raw_request=None, what=""):
    with px.connect() as c:
        c.send(raw_request or get("/bad"))
        # interim=True: the first thing relayed, even a bogus "099" status
        r = c.response(allow_eof=True, interim=True, timeout=6)
        assert r is not None, "%s: the client got no response at all (expected 502)" % what
        assert r.status == 502, "%s: the client got %r (expected 502)" % (what, r.raw[:300])
        assert "close" in r.tokens("connection"), r.head
        assert c.closed_by_peer(5), "%s: client connection kept open after a 502" % what
    be.wait_connections(1)
    bad_conn = be.conns[0]
    be.wait_closed(1, timeout=10)
    assert bad_conn.eof, "%s: the proxy kept the upstream connection open" % what
    # A new client connection gets a normal answer over a new upstream connection.
    r2 = px.request(get("/good"))
    assert r2.status == 200 and r2.body == b"ok", r2.raw
    assert len(be.conns) == 2, "the bad upstream connection was reused"
    assert bytes(be.conns[1].raw).startswith(b"GET /good ")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_response_is_502(proxy, backend, case):
    px, be = start(proxy, backend, case.raw)
    assert_502_and_discarded(px, be, what="%s (%s)" % (case.id, case.why))


def test_corpus_size():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


# ---------------------------------------------------------------- 101 variants

UPGRADE_REQ = (b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
               b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


def test_101_naming_a_token_not_offered_is_502(proxy, backend):
    px, be = start(proxy, backend,
                   b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n")
    assert_502_and_discarded(px, be, UPGRADE_REQ, "101 with Upgrade: h2c to a websocket offer")


def test_101_without_upgrade_field_is_502(proxy, backend):
    px, be = start(proxy, backend, b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n")
    assert_502_and_discarded(px, be, UPGRADE_REQ, "101 without Upgrade")


# ---------------------------------------------------------------- not in the table

def test_bytes_after_a_complete_response_are_not_a_second_response(proxy, backend):
    """An upstream that sends more than Content-Length says (response queue
    poisoning): the extra bytes must never become the answer to the client's
    next request."""
    evil = (response_bytes(200, body=b"hi")
            + response_bytes(200, body=b"INJECTED"))
    calls = []

    def handler(conn):
        for _ in range(10):
            req = conn.read_request(timeout=10)
            if req is None:
                return
            calls.append(req.target)
            conn.send(evil if req.target == "/first" else OK)

    be = backend(handler=handler)
    px = proxy(upstreams={"web": [be.address]})
    with px.connect() as c:
        r1 = c.request(get("/first"))
        r2 = c.request(get("/good"))
    assert r1.status == 200 and r1.body == b"hi"
    assert r2.body == b"ok", "the client's second request got %r" % r2.raw
    assert b"INJECTED" not in r2.raw


def test_connection_naming_content_length_keeps_the_response_framed(proxy, backend):
    """`Connection: Content-Length` on a response: the proxy drops the CL line
    (hop-by-hop by name) but relays the body as it came, unframed, on a
    connection it keeps alive: the client cannot find the end of the body,
    and the next response on that connection is read as part of it.
    Expected: the relayed response carries a framing (CL or chunked) or the
    proxy closes after it, or it is a 502."""
    body = b"0123456789"
    bad = (b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: %d\r\n\r\n" % len(body)
           + body)

    def handler(conn):
        for _ in range(10):
            req = conn.read_request(timeout=10)
            if req is None:
                return
            conn.send(bad if req.target == "/first" else OK)

    be = backend(handler=handler)
    px = proxy(upstreams={"web": [be.address]})
    with px.connect() as c:
        c.send(get("/first"))
        head = c.reader.read_until(b"\r\n\r\n", time.monotonic() + 10)
        lower = head.lower()
        framed = (b"\r\ncontent-length:" in lower or b"\r\ntransfer-encoding: chunked" in lower
                  or b"\r\nconnection: close" in lower or head.startswith(b"HTTP/1.1 502"))
        assert framed, "response relayed without any framing on a kept-alive connection: %r" % head


def test_bad_chunk_after_head_was_sent_truncates_visibly(proxy, backend):
    """A chunked response that breaks after its head already reached the
    client cannot become a 502; the client must at least see the body end
    without a last-chunk (connection closed, no '0\\r\\n\\r\\n')."""
    import threading
    first_chunk_seen = threading.Event()

    def handler(conn):
        req = conn.read_request(timeout=10)
        if req is None:
            return
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n")
        first_chunk_seen.wait(10)  # the break comes after the client has the head
        conn.send(b"zz\r\n")
        conn.wait_eof(10)

    be = backend(handler=handler)
    px = proxy(upstreams={"web": [be.address]})
    with px.connect() as c:
        c.send(get("/x"))
        end = time.monotonic() + 10
        head = c.reader.read_until(b"\r\n\r\n", end)
        first = c.reader.read_until(b"hi\r\n", end)
        first_chunk_seen.set()
        rest = c.reader.read_to_eof(end)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    assert first.endswith(b"hi\r\n")
    assert b"0\r\n\r\n" not in rest, "a broken body was completed for the client: %r" % rest
    be.wait_closed(1)
    assert be.conns[0].eof
