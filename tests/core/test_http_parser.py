"""The sans-IO HTTP request parser: splits, limits and precise errors."""

import pytest

from netcore.http import HttpError, Request, RequestParser, error_response, response

REQUESTS = (
    b"GET /index.html?x=1 HTTP/1.1\r\nHost: example\r\nUser-Agent: t\r\n"
    b"Accept: */*\r\nAccept: text/html\r\n\r\n"
    b"\r\n"  # an empty line between requests is ignored (RFC 9112 2.2)
    b"HEAD / HTTP/1.0\r\n\r\n"
    b"GET /ws HTTP/1.1\r\nHost: h:1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"
)
TAIL = b"\x81\x85rest-of-stream"


def parse_all(parser):
    out = []
    while True:
        req = parser.next_request()
        if req is None:
            return out
        out.append(req)


def check(reqs):
    assert [(r.method, r.target, r.version) for r in reqs] == [
        ("GET", "/index.html?x=1", "HTTP/1.1"),
        ("HEAD", "/", "HTTP/1.0"),
        ("GET", "/ws", "HTTP/1.1"),
    ]
    first = reqs[0]
    assert first.path == "/index.html"
    assert first.header("HOST") == "example"
    assert first.header("accept") == "*/*, text/html"
    assert first.keep_alive and not first.has_body
    assert not reqs[1].keep_alive  # HTTP/1.0 without keep-alive
    assert reqs[2].tokens("connection") == ["keep-alive", "upgrade"]


def test_pipelined_requests_in_one_chunk():
    p = RequestParser()
    p.feed(REQUESTS + TAIL)
    check(parse_all(p))
    assert p.take_rest() == TAIL


def test_stream_split_at_every_byte_boundary():
    data = REQUESTS + TAIL
    for split in range(1, len(data)):
        p = RequestParser()
        p.feed(data[:split])
        reqs = parse_all(p)
        p.feed(data[split:])
        reqs += parse_all(p)
        check(reqs)
        assert p.take_rest() == TAIL, split


def test_one_byte_at_a_time():
    p = RequestParser()
    reqs = []
    for i in range(len(REQUESTS)):
        p.feed(REQUESTS[i : i + 1])
        reqs += parse_all(p)
    check(reqs)


def fails(data, status, split=None):
    p = RequestParser(max_line=100, max_head=400, max_headers=5)
    with pytest.raises(HttpError) as info:
        chunks = [data] if split is None else [data[i : i + split] for i in range(0, len(data), split)]
        for chunk in chunks:
            p.feed(chunk)
            parse_all(p)
    assert info.value.status == status, info.value
    # A failed parser stays failed.
    with pytest.raises(HttpError):
        p.feed(b"GET / HTTP/1.1\r\n\r\n")
    return str(info.value)


def test_request_line_too_long_is_414_before_its_end_arrives():
    fails(b"GET /" + b"a" * 200, 414)
    fails(b"GET /" + b"a" * 200, 414, split=1)
    fails(b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414)


def test_header_flood_too_many_fields_is_431():
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(10))
    fails(head, 431)  # without the blank line: refused while still arriving
    fails(head, 431, split=3)
    fails(head + b"\r\n", 431)


def test_head_too_big_is_431_without_waiting_for_the_end():
    text = fails(b"GET / HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 1000, 431)
    assert "400 bytes" in text
    fails(b"GET / HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 1000, 431, split=7)


def test_parser_never_holds_more_than_the_head_limit():
    p = RequestParser(max_line=100, max_head=400, max_headers=50)
    with pytest.raises(HttpError):
        for _ in range(1000):
            p.feed(b"X-A: b\r\n" if p.buffered else b"GET / HTTP/1.1\r\n")
            assert p.buffered <= 400 + 8
    assert p.buffered == 0


@pytest.mark.parametrize("data, status", [
    (b"GET / HTTP/1.1\nHost: x\n\n", 400),  # bare LF
    (b"GET / HTTP/1.1\r\nHost: x\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\rY\r\n\r\n", 400),  # bare CR
    (b"GET /\r\nHost: x\r\n\r\n", 400),  # HTTP/0.9 style
    (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # double space
    (b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # method not a token
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"GET / FOO/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET nopath HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /a\x7fb HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\n: y\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
     400),
])
def test_malformed_requests(data, status):
    fails(data, status)
    fails(data, status, split=1)


def test_a_request_with_a_body_ends_the_stream():
    p = RequestParser()
    p.feed(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n")
    req = p.next_request()
    assert req.method == "POST" and req.has_body
    assert p.next_request() is None  # the body is not parsed as a request
    p.feed(b"more")
    assert p.next_request() is None


def test_absolute_form_target():
    req = Request("GET", "http://host:8/a/b?c", "HTTP/1.1", (("host", "host:8"),))
    assert req.path == "/a/b"
    assert Request("GET", "http://host", "HTTP/1.1", ()).path == "/"


def test_response_builder():
    r = response(200, [("Content-Type", "text/plain")], b"hi")
    assert r == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
    assert response(200, [], b"hi", head_only=True).endswith(b"Content-Length: 2\r\n\r\n")
    assert b"Content-Length" not in response(304, [("ETag", '"x"')])
    assert response(204, close=True).endswith(b"Connection: close\r\n\r\n")
    err = error_response(404, "nope")
    assert err.startswith(b"HTTP/1.1 404 Not Found\r\n") and err.endswith(b"404 Not Found: nope\n")


# -- Content-Length (RFC 9112 6.3, RFC 9110 8.6) ---------------------------------

def head_with(*lengths):
    fields = b"".join(b"Content-Length: " + v + b"\r\n" for v in lengths)
    return b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n"


@pytest.mark.parametrize("lengths, expected", [
    ((b"5", b"5"), 5),  # a duplicate field, identical: merged
    ((b"1, 1",), 1),  # the same, combined into one field by a proxy
    ((b"7,7", b" 7 "), 7),
    ((b"\t5", b"5 \t"), 5),  # OWS (SP, HTAB) around a value is not part of it (RFC 9110 5.5)
    ((b"0",), 0),
    ((b"0005", b"5"), 5),  # the same decimal value
    ((b"9" * 18,), 10 ** 18 - 1),
])
def test_identical_content_lengths_are_merged(lengths, expected):
    p = RequestParser()
    p.feed(head_with(*lengths))
    req = p.next_request()
    assert req.content_length == expected
    assert req.has_body == (expected > 0)


@pytest.mark.parametrize("lengths, words", [
    ((b"5", b"6"), "differing"),
    ((b"1, 2",), "differing"),
    (("²".encode(),), "ASCII digits"),  # int("²") raised ValueError before
    (("٥".encode(),), "ASCII digits"),  # an Arabic-Indic five: int() takes it too
    ((b"\xb2",), "ASCII digits"),  # latin-1 superscript two
    ((b"1" * 4301,), "4301 digits"),  # past int()'s own digit limit
    ((b"1" * 19,), "19 digits"),
    ((b"+5",), "ASCII digits"),  # int() takes a sign...
    ((b"-5",), "ASCII digits"),
    ((b"-0",), "ASCII digits"),
    ((b"5 5",), "ASCII digits"),  # ...and whitespace: not OWS, which is only SP and HTAB
    ((b"\x0b5",), "control character"),  # a vertical tab before: refused with the head
    ((b"5\x0c",), "control character"),  # a form feed after
    ((b"\xa05",), "ASCII digits"),  # a no-break space (latin-1)
    ((b"5\xc2\xa0",), "ASCII digits"),  # the same in UTF-8
    ((b"1_0",), "ASCII digits"),  # int("1_0") == 10
    ((b"5,",), "ASCII digits"),
    ((b"0x10",), "ASCII digits"),
    ((b"",), "ASCII digits"),
])
def test_bad_content_lengths_are_400_never_another_exception(lengths, words):
    data = head_with(*lengths)
    text = fails(data, 400) if len(data) < 400 else None
    p = RequestParser(max_line=8192, max_head=16384)
    with pytest.raises(HttpError) as info:
        p.feed(data)
        parse_all(p)
    assert info.value.status == 400 and words in str(info.value)
    assert text is None or words in text


def test_has_body_of_a_hand_made_request_raises_only_http_error():
    req = Request("GET", "/", "HTTP/1.1", (("host", "x"), ("content-length", "1, 2")))
    with pytest.raises(HttpError):
        req.has_body
    req = Request("GET", "/", "HTTP/1.1", (("content-length", "1"), ("content-length", "1")))
    assert req.has_body and req.content_length == 1


def test_random_mutations_raise_only_http_error():
    """A small random fuzz (the full one is bench/fuzz.py): nothing but HttpError."""
    import random

    rnd = random.Random(11)
    base = (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    pieces = [b"\r\n", b"\r", b"\n", b":", b" ", b",", b"1", b"\xb2", "²".encode(),
              b"\x00", b"\xff", b"Content-Length: ", b"GET ", b"*", b"http://"]
    for _ in range(3000):
        data = bytearray(base)
        for _ in range(rnd.randint(1, 6)):
            pos = rnd.randint(0, len(data))
            if rnd.random() < 0.5:
                data[pos:pos] = rnd.choice(pieces)
            else:
                del data[pos : pos + rnd.randint(1, 4)]
        p = RequestParser()
        try:
            for i in range(0, len(data), 7):
                p.feed(bytes(data[i : i + 7]))
                for req in parse_all(p):
                    req.has_body, req.keep_alive, req.path, req.content_length
        except HttpError:
            pass


def test_bytes_after_an_upgrade_request_are_not_scanned_as_http():
    frame_with_lf = b"\x82\x88\n\n\n\nGET \nbare LF and \x00"
    p = RequestParser()
    p.feed(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
           + frame_with_lf)
    assert p.next_request().path == "/ws"
    assert p.take_rest() == frame_with_lf


def test_a_bad_pipelined_request_is_refused_when_it_is_asked_for():
    p = RequestParser()
    p.feed(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\nHost: h\n\n")
    assert p.next_request().path == "/a"
    with pytest.raises(HttpError) as info:
        p.next_request()
    assert info.value.status == 400 and "bare LF" in str(info.value)
