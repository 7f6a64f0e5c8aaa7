//! Client request heads: check (is a whole head buffered?), parse, validate
//! framing, and write the head the switch forwards to a real server.

use super::{
    is_hop_by_hop, offset_in, parse_content_length, put_header, split_tokens, Body,
    ConnectionTokens,
};
use crate::config::Forwarding;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Trace,
    Connect,
    Other,
}

impl Method {
    fn from_bytes(m: &[u8]) -> Method {
        match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"CONNECT" => Method::Connect,
            _ => Method::Other,
        }
    }

    /// Idempotent methods (RFC 9110 §9.2.2) may be retried on another
    /// connection when nothing of the response arrived.
    pub fn idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }
}

/// A parsed, validated request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head including the empty line.
    pub head_len: usize,
    pub method: Method,
    pub http10: bool,
    pub body: Body,
    /// The client wants the connection kept after this response.
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// Range of the target (path without query) in the buffer.
    pub target: (usize, usize),
    /// A query string makes the request dynamic (§6.3.5): it costs 2 units.
    pub dynamic: bool,
    /// Range of the method token and of the Host value (empty if none) in
    /// the buffer, for content rules.
    pub method_name: (usize, usize),
    pub host: (usize, usize),
    /// The client proposes a protocol switch (`Connection: upgrade` and an
    /// `Upgrade` header, HTTP/1.1, no body) and the service passes them on:
    /// the forwarded head carries both, and a 101 turns the connection into
    /// a tunnel.
    pub upgrade: bool,
}

impl RequestHead {
    pub fn cost(&self) -> u32 {
        if self.dynamic {
            2
        } else {
            1
        }
    }
}

/// Why a request is refused; each maps to a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("bad request: {0}")]
    Bad(&'static str),
    #[error("request header fields too large")]
    TooLarge,
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// An `Expect` other than 100-continue (RFC 9110 §10.1.1).
    #[error("expectation failed")]
    ExpectationFailed,
}

impl RequestError {
    pub fn status(self) -> u16 {
        match self {
            RequestError::Bad(_) => 400,
            RequestError::TooLarge => 431,
            RequestError::NotImplemented(_) => 501,
            RequestError::ExpectationFailed => 417,
        }
    }
}

/// Per-connection facts the rewritten head needs.
pub struct ForwardCtx<'a> {
    pub fw: Forwarding,
    /// The client's address as text, for X-Forwarded-For.
    pub peer_ip: &'a [u8],
    /// Host to state when an HTTP/1.0 client sent none.
    pub default_host: &'a [u8],
}

const MAX_HEADERS: usize = 128;

/// Parses the head at the start of `buf`. `Ok(None)`: incomplete, read
/// more. On success the forwarded head is written to `out` (cleared first).
pub fn parse(
    buf: &[u8],
    max_headers: usize,
    ctx: &ForwardCtx<'_>,
    out: &mut Vec<u8>,
) -> Result<Option<RequestHead>, RequestError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let n = max_headers.min(MAX_HEADERS);
    let mut req = httparse::Request::new(&mut storage[..n]);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooLarge),
        Err(_) => return Err(RequestError::Bad("malformed request head")),
    };
    let method_s = req.method.unwrap_or("");
    let method = Method::from_bytes(method_s.as_bytes());
    if method == Method::Connect {
        return Err(RequestError::NotImplemented("CONNECT"));
    }
    let http10 = req.version == Some(0);
    let uri = req.path.unwrap_or("").as_bytes();
    let (target, dynamic) = target_of(buf, uri)?;

    // Pass 1: facts about the head.
    let mut conn = ConnectionTokens::default();
    let mut content_length: Option<u64> = None;
    let mut te: Option<&[u8]> = None;
    let mut has_host = false;
    let mut host = (0, 0);
    let mut expect_continue = false;
    let mut upgrade_to: Option<&[u8]> = None;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let v = h.value;
        if name.eq_ignore_ascii_case(b"content-length") {
            let n =
                parse_content_length(trim(v)).ok_or(RequestError::Bad("invalid Content-Length"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(RequestError::Bad("conflicting Content-Length"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if te.is_some() {
                return Err(RequestError::Bad("repeated Transfer-Encoding"));
            }
            te = Some(v);
        } else if name.eq_ignore_ascii_case(b"connection") {
            conn.add(v, offset_in(buf, v));
        } else if name.eq_ignore_ascii_case(b"host") {
            if has_host {
                return Err(RequestError::Bad("repeated Host"));
            }
            has_host = true;
            let v = trim(v);
            let at = offset_in(buf, v);
            host = (at, at + v.len());
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            // Several fields: not a switch to pass on (the first is kept
            // only to be dropped with the rest).
            upgrade_to = match upgrade_to {
                None if !trim(v).is_empty() => Some(trim(v)),
                _ => Some(b""),
            };
        } else if name.eq_ignore_ascii_case(b"expect") {
            if trim(v).eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(RequestError::ExpectationFailed);
            }
        }
    }
    if conn.overflow {
        return Err(RequestError::Bad("too many Connection options"));
    }
    if !http10 && !has_host {
        return Err(RequestError::Bad("HTTP/1.1 request without Host"));
    }
    let body = match (te, content_length) {
        (Some(_), Some(_)) => {
            return Err(RequestError::Bad(
                "both Content-Length and Transfer-Encoding",
            ))
        }
        (Some(_), None) if http10 => {
            return Err(RequestError::Bad("Transfer-Encoding in HTTP/1.0"))
        }
        (Some(v), None) => {
            let last = split_tokens(v).last().map(|(_, t)| t);
            if !last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")) {
                return Err(RequestError::Bad(
                    "Transfer-Encoding does not end in chunked",
                ));
            }
            if split_tokens(v)
                .filter(|(_, t)| t.eq_ignore_ascii_case(b"chunked"))
                .count()
                > 1
            {
                return Err(RequestError::Bad("chunked applied twice"));
            }
            Body::Chunked
        }
        (None, Some(0)) | (None, None) => Body::None,
        (None, Some(n)) => Body::Length(n),
    };
    // RFC 9110 §7.8: an Upgrade in an HTTP/1.0 request is ignored; one
    // with a body is not passed on (the body would have to be relayed
    // before the switch, and no common protocol needs that); nor is h2c,
    // whose HTTP2-Settings field belongs to the client's own connection
    // (RFC 9113 §3.1 retired that upgrade).
    let upgrade = ctx.fw.upgrade
        && conn.upgrade
        && !http10
        && body == Body::None
        && upgrade_to.is_some_and(|u| {
            !u.is_empty() && !split_tokens(u).any(|(_, t)| t.eq_ignore_ascii_case(b"h2c"))
        });
    let keep_alive = if http10 {
        conn.keep_alive && !conn.close
    } else {
        !conn.close
    };

    // Pass 2: the forwarded head. Always HTTP/1.1 towards servers, so their
    // connections can be kept.
    out.clear();
    out.extend_from_slice(method_s.as_bytes());
    out.push(b' ');
    out.extend_from_slice(uri);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut xff_seen = false;
    let mut via_seen = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name) || conn.names_header(buf, name) {
            continue;
        }
        if ctx.fw.x_forwarded_proto && name.eq_ignore_ascii_case(b"x-forwarded-proto") {
            continue;
        }
        if ctx.fw.x_forwarded_for && name.eq_ignore_ascii_case(b"x-forwarded-for") {
            // Merged below into one field, in order.
            if !xff_seen {
                xff_seen = true;
                out.extend_from_slice(b"X-Forwarded-For: ");
                join_values(out, req.headers, b"x-forwarded-for");
                out.extend_from_slice(b", ");
                out.extend_from_slice(ctx.peer_ip);
                out.extend_from_slice(b"\r\n");
            }
            continue;
        }
        if ctx.fw.via && name.eq_ignore_ascii_case(b"via") {
            if !via_seen {
                via_seen = true;
                out.extend_from_slice(b"Via: ");
                join_values(out, req.headers, b"via");
                out.extend_from_slice(if http10 {
                    b", 1.0 ktcpvs\r\n"
                } else {
                    b", 1.1 ktcpvs\r\n"
                });
            }
            continue;
        }
        put_header(out, name, h.value);
    }
    if !has_host {
        put_header(out, b"Host", ctx.default_host);
    }
    if let (true, Some(to)) = (upgrade, upgrade_to) {
        put_header(out, b"Upgrade", to);
        out.extend_from_slice(b"Connection: upgrade\r\n");
    }
    if ctx.fw.x_forwarded_for && !xff_seen {
        put_header(out, b"X-Forwarded-For", ctx.peer_ip);
    }
    if ctx.fw.x_forwarded_proto {
        out.extend_from_slice(b"X-Forwarded-Proto: http\r\n");
    }
    if ctx.fw.via && !via_seen {
        out.extend_from_slice(if http10 {
            b"Via: 1.0 ktcpvs\r\n"
        } else {
            b"Via: 1.1 ktcpvs\r\n"
        });
    }
    out.extend_from_slice(b"\r\n");

    Ok(Some(RequestHead {
        head_len,
        method,
        http10,
        body,
        keep_alive,
        expect_continue: expect_continue && body != Body::None,
        target,
        dynamic,
        method_name: {
            let at = offset_in(buf, method_s.as_bytes());
            (at, at + method_s.len())
        },
        host,
        upgrade,
    }))
}

fn trim(v: &[u8]) -> &[u8] {
    let s = v.iter().take_while(|b| b.is_ascii_whitespace()).count();
    let e = v[s..]
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_whitespace())
        .count();
    &v[s..v.len() - e]
}

fn join_values(out: &mut Vec<u8>, headers: &[httparse::Header<'_>], name: &[u8]) {
    let mut first = true;
    for h in headers
        .iter()
        .filter(|h| h.name.as_bytes().eq_ignore_ascii_case(name))
    {
        if !first {
            out.extend_from_slice(b", ");
        }
        first = false;
        out.extend_from_slice(trim(h.value));
    }
}

/// The target of §6.3.5: the path of the request URI without its query
/// string, as a range of `buf`; and whether the request is dynamic.
fn target_of(buf: &[u8], uri: &[u8]) -> Result<((usize, usize), bool), RequestError> {
    let base = offset_in(buf, uri);
    let path_start = if uri.first() == Some(&b'/') || uri == b"*" {
        0
    } else {
        // absolute-form: scheme "://" authority path
        let scheme_end = uri
            .windows(3)
            .position(|w| w == b"://")
            .ok_or(RequestError::Bad(
                "request target is neither a path nor an absolute URI",
            ))?;
        let auth = scheme_end + 3;
        uri[auth..]
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .map_or(uri.len(), |p| auth + p)
    };
    let rest = &uri[path_start..];
    let (path_len, dynamic) = match rest.iter().position(|&b| b == b'?') {
        Some(q) => (q, true),
        None => (rest.len(), false),
    };
    Ok(((base + path_start, base + path_start + path_len), dynamic))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Every forwarding option on (shared with `http::fuzz_tests`).
    pub(in crate::http) fn ctx() -> ForwardCtx<'static> {
        ForwardCtx {
            fw: Forwarding {
                x_forwarded_for: true,
                x_forwarded_proto: true,
                via: true,
                request_id: false,
                upgrade: true,
            },
            peer_ip: b"10.0.0.9",
            default_host: b"127.0.0.1:8080",
        }
    }

    fn parse_ok(raw: &[u8]) -> (RequestHead, String) {
        let mut out = Vec::new();
        let h = parse(raw, 100, &ctx(), &mut out).unwrap().unwrap();
        (h, String::from_utf8(out).unwrap())
    }

    #[test]
    fn rewrites_hop_by_hop_and_adds_forwarding() {
        let raw = b"GET /a/b.html?x=1 HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\nX-Forwarded-For: 1.2.3.4\r\nVia: 1.1 edge\r\nTE: trailers\r\nUpgrade: h2c\r\nAccept: */*\r\n\r\nNEXT";
        let (h, out) = parse_ok(raw);
        assert_eq!(h.head_len, raw.len() - 4);
        assert_eq!(&raw[h.target.0..h.target.1], b"/a/b.html");
        assert!(h.dynamic && h.keep_alive && h.body == Body::None);
        assert_eq!(
            out,
            "GET /a/b.html?x=1 HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.9\r\nVia: 1.1 edge, 1.1 ktcpvs\r\nAccept: */*\r\nX-Forwarded-Proto: http\r\n\r\n"
        );
    }

    #[test]
    fn upgrade_is_passed_on_only_when_proposed_properly() {
        let ws = b"GET /chat HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n";
        let (h, out) = parse_ok(ws);
        assert!(h.upgrade);
        assert!(
            out.contains("Upgrade: websocket\r\nConnection: upgrade\r\n"),
            "{out}"
        );
        assert!(out.contains("Sec-WebSocket-Key: k\r\n"));
        for (raw, why) in [
            (&b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n"[..], "no Connection: upgrade"),
            (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n\r\n", "no Upgrade"),
            (b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", "HTTP/1.0"),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nab", "a body"),
            (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AA\r\n\r\n", "h2c"),
            (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: a\r\nUpgrade: b\r\n\r\n", "two Upgrade fields"),
        ] {
            let (h, out) = parse_ok(raw);
            assert!(!h.upgrade, "{why}");
            assert!(!out.to_ascii_lowercase().contains("upgrade"), "{why}: {out}");
            assert!(!out.contains("HTTP2-Settings"), "{why}: {out}");
        }
        let mut c = ctx();
        c.fw.upgrade = false;
        let mut out = Vec::new();
        let h = parse(ws, 100, &c, &mut out).unwrap().unwrap();
        assert!(!h.upgrade && !String::from_utf8(out).unwrap().contains("pgrade"));
    }

    #[test]
    fn http10_keepalive_and_host() {
        let (h, out) = parse_ok(b"GET http://example.com:81/x HTTP/1.0\r\n\r\n");
        assert!(h.http10 && !h.keep_alive);
        assert!(out.contains("Host: 127.0.0.1:8080\r\n"));
        assert!(out.contains("Via: 1.0 ktcpvs\r\n"));
        let (h, _) = parse_ok(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(h.keep_alive);
        let (h, _) = parse_ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        assert!(!h.keep_alive);
    }

    #[test]
    fn absolute_form_target() {
        let (h, _) = parse_ok(b"GET http://example.com?q HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(h.target.0, h.target.1); // empty path
        assert!(h.dynamic);
    }

    #[test]
    fn framing() {
        let (h, out) = parse_ok(b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n");
        assert_eq!(h.body, Body::Chunked);
        assert!(h.expect_continue);
        assert!(out.contains("Transfer-Encoding: chunked\r\n"));
        let (h, _) = parse_ok(
            b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nContent-Length: 10\r\n\r\n",
        );
        assert_eq!(h.body, Body::Length(10));
    }

    #[test]
    fn refusals() {
        let mut out = Vec::new();
        let bad: &[(&[u8], u16)] = &[
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -3\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
            (b"GARBAGE\r\n\r\n", 400),
            (b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 0\r\n\r\n", 417),
        ];
        for (raw, status) in bad {
            let e = parse(raw, 100, &ctx(), &mut out).unwrap_err();
            assert_eq!(e.status(), *status, "{}", String::from_utf8_lossy(raw));
        }
        let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..20 {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            parse(&many, 10, &ctx(), &mut out),
            Err(RequestError::TooLarge)
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\n", 100, &ctx(), &mut out),
            Ok(None)
        );
    }
}
