//! Real-server response heads: parse, decide framing and what becomes of
//! both connections, and write the head the client receives.

use super::{
    is_hop_by_hop, offset_in, parse_content_length, put_header, split_tokens, Body,
    ConnectionTokens,
};

/// What the client side asked for, which shapes the response head.
#[derive(Debug, Clone, Copy)]
pub struct ClientView {
    pub http10: bool,
    /// The client connection may stay open after this response.
    pub keep_alive: bool,
    pub head_request: bool,
    pub via: bool,
    /// The forwarded request proposed a protocol switch: a 101 is accepted.
    pub upgrade: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub head_len: usize,
    pub status: u16,
    pub body: Body,
    /// An interim (1xx) response: another head follows.
    pub interim: bool,
    /// The real server connection may be reused once the body is read.
    pub server_reusable: bool,
    /// Forward only the chunk payload (an HTTP/1.0 client cannot take chunks).
    pub dechunk: bool,
    /// The client connection must be closed after this response.
    pub close_client: bool,
    /// 101 Switching Protocols to an upgrade the client proposed: after this
    /// head both connections carry the new protocol.
    pub upgrade: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("malformed response head from server")]
    Malformed,
    #[error("invalid Content-Length from server")]
    BadLength,
    #[error("unexpected 101 Switching Protocols")]
    Upgrade,
}

const MAX_HEADERS: usize = 128;

/// Parses the response head at the start of `buf`; `Ok(None)`: incomplete.
/// The head for the client is written to `out` (cleared first).
pub fn parse(
    buf: &[u8],
    client: ClientView,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, ResponseError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut storage);
    let head_len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ResponseError::Malformed),
    };
    let status = res.code.unwrap_or(0);
    let server_http10 = res.version == Some(0);
    // A 101 to a request that proposed no switch cannot be relayed: the
    // client would not know that the connection changed protocol.
    let upgrade = status == 101;
    if upgrade && (!client.upgrade || client.http10) {
        return Err(ResponseError::Upgrade);
    }
    let interim = (100..200).contains(&status) && !upgrade;

    let mut conn = ConnectionTokens::default();
    let mut cl: Option<u64> = None;
    let mut cl_bad = false;
    let mut te: Option<&[u8]> = None;
    let mut upgrade_to: Option<&[u8]> = None;
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            match parse_content_length(h.value) {
                Some(n) if cl.is_none_or(|c| c == n) => cl = Some(n),
                _ => cl_bad = true,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te = Some(h.value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            conn.add(h.value, offset_in(buf, h.value));
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade_to = Some(h.value);
        }
    }
    if upgrade && upgrade_to.is_none_or(|u| u.is_empty()) {
        // RFC 9110 §15.2.2: a 101 must say what it switches to.
        return Err(ResponseError::Malformed);
    }
    let no_body = upgrade || interim || status == 204 || status == 304 || client.head_request;
    let body = if no_body {
        Body::None
    } else if let Some(v) = te {
        let chunked = split_tokens(v)
            .last()
            .is_some_and(|(_, t)| t.eq_ignore_ascii_case(b"chunked"));
        if chunked {
            Body::Chunked
        } else {
            Body::Close
        }
    } else if cl_bad {
        return Err(ResponseError::BadLength);
    } else {
        match cl {
            Some(n) => Body::Length(n),
            None => Body::Close,
        }
    };
    let server_keeps = if server_http10 {
        conn.keep_alive && !conn.close
    } else {
        !conn.close
    };
    // A response with both framings is suspect: use TE, then drop the
    // connection (RFC 9112 §6.3 item 3).
    // So is Transfer-Encoding from an HTTP/1.0 server (RFC 9112 §6.1: the
    // framing is faulty; process the message, then close).
    let server_reusable = server_keeps
        && !upgrade
        && body != Body::Close
        && !(te.is_some() && (cl.is_some() || server_http10));
    let dechunk = body == Body::Chunked && client.http10;
    let close_client =
        upgrade || !interim && (!client.keep_alive || body == Body::Close || dechunk);

    out.clear();
    // Status line in our own HTTP version (RFC 9110 §6.2: an intermediary
    // sends its own), code and reason as the server wrote them: relayed
    // as "HTTP/1.0", a 1.1 client would end a keep-alive connection after
    // each response. (httparse skips empty lines before the status line;
    // so does the copy; it has checked the "HTTP/1.x" prefix.)
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(0);
    let line_end = buf[start..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(buf.len(), |p| start + p + 1);
    out.extend_from_slice(b"HTTP/1.1");
    out.extend_from_slice(buf.get(start + 8..line_end).unwrap_or(b" 502\r\n"));
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name) || conn.names_header(buf, name) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") && dechunk {
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") && te.is_some() {
            continue;
        }
        put_header(out, name, h.value);
    }
    if let (true, Some(to)) = (upgrade, upgrade_to) {
        put_header(out, b"Upgrade", to);
        out.extend_from_slice(b"Connection: upgrade\r\n");
    }
    if !interim {
        if upgrade {
            // The connection ends with the tunnel, not after this head.
        } else if close_client {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if client.http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        if client.via {
            out.extend_from_slice(if server_http10 {
                b"Via: 1.0 ktcpvs\r\n"
            } else {
                b"Via: 1.1 ktcpvs\r\n"
            });
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead {
        head_len,
        status,
        body,
        interim,
        server_reusable,
        dechunk,
        close_client,
        upgrade,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V11: ClientView = ClientView {
        http10: false,
        keep_alive: true,
        head_request: false,
        via: false,
        upgrade: false,
    };

    fn p(raw: &[u8], c: ClientView) -> (ResponseHead, String) {
        let mut out = Vec::new();
        let h = parse(raw, c, &mut out).unwrap().unwrap();
        (h, String::from_utf8(out).unwrap())
    }

    #[test]
    fn length_and_hop_by_hop() {
        let (h, out) = p(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-A: 1\r\n\r\nhello", V11);
        assert_eq!(h.body, Body::Length(5));
        assert!(h.server_reusable && !h.close_client);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n"
        );
    }

    #[test]
    fn empty_lines_before_the_status_line_are_not_relayed() {
        // A server that ended its previous response with a stray CRLF.
        let (h, out) = p(b"\r\nHTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", V11);
        assert_eq!(h.status, 204);
        assert_eq!(out, "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n");
    }

    #[test]
    fn close_delimited_closes_both() {
        let (h, out) = p(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n", V11);
        assert_eq!(h.body, Body::Close);
        assert!(!h.server_reusable && h.close_client);
        assert!(out.ends_with("Connection: close\r\n\r\n"));
    }

    #[test]
    fn an_http10_server_is_relayed_as_http11_and_keeps_the_client() {
        let c = ClientView { via: true, ..V11 };
        let (h, out) = p(
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
            c,
        );
        assert!(h.server_reusable && !h.close_client);
        // Our version on the status line; the server's in Via.
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nVia: 1.0 ktcpvs\r\n\r\n"
        );
        let (_, out) = p(
            b"HTTP/1.1 404 Not Found Here\r\nContent-Length: 0\r\n\r\n",
            V11,
        );
        assert!(out.starts_with("HTTP/1.1 404 Not Found Here\r\n"), "{out}");
    }

    #[test]
    fn transfer_encoding_from_an_http10_server_is_read_then_the_connection_closed() {
        let (h, out) = p(
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
            V11,
        );
        assert_eq!(h.body, Body::Chunked);
        assert!(!h.server_reusable, "faulty framing: not pooled");
        assert!(!h.close_client);
        assert!(out.starts_with("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"));
    }

    #[test]
    fn chunked_to_http10_is_dechunked() {
        let c = ClientView {
            http10: true,
            ..V11
        };
        let (h, out) = p(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", c);
        assert!(h.dechunk && h.close_client);
        assert!(!out.contains("Transfer-Encoding"));
        let (h, out) = p(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n", c);
        assert!(!h.close_client);
        assert!(out.contains("Connection: keep-alive\r\n"));
    }

    #[test]
    fn bodiless() {
        let head = ClientView {
            head_request: true,
            ..V11
        };
        assert_eq!(
            p(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n", head)
                .0
                .body,
            Body::None
        );
        assert_eq!(
            p(b"HTTP/1.1 204 No Content\r\n\r\n", V11).0.body,
            Body::None
        );
        assert_eq!(
            p(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                V11
            )
            .0
            .body,
            Body::None
        );
        let (h, out) = p(b"HTTP/1.1 100 Continue\r\n\r\n", V11);
        assert!(h.interim && !h.close_client);
        assert_eq!(out, "HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn switching_protocols_only_when_proposed() {
        let c = ClientView {
            upgrade: true,
            via: true,
            ..V11
        };
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Hop\r\nX-Hop: 1\r\nSec-WebSocket-Accept: a\r\n\r\n\x81\x02hi";
        let (h, out) = p(raw, c);
        assert!(h.upgrade && !h.interim && h.close_client && !h.server_reusable);
        assert_eq!(h.body, Body::None);
        assert_eq!(h.head_len, raw.len() - 4);
        assert_eq!(
            out,
            "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\nVia: 1.1 ktcpvs\r\n\r\n"
        );
        // Declined: an ordinary response, the connection stays.
        let (h, _) = p(
            b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n",
            c,
        );
        assert!(!h.upgrade && !h.close_client && h.server_reusable);
        let mut out = Vec::new();
        assert_eq!(
            parse(
                b"HTTP/1.1 101 Switching\r\nConnection: upgrade\r\n\r\n",
                c,
                &mut out
            ),
            Err(ResponseError::Malformed),
            "a 101 without Upgrade"
        );
        let c10 = ClientView { http10: true, ..c };
        assert_eq!(
            parse(raw, c10, &mut out),
            Err(ResponseError::Upgrade),
            "a 101 to an HTTP/1.0 client"
        );
    }

    #[test]
    fn refusals() {
        let mut out = Vec::new();
        assert_eq!(
            parse(
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                V11,
                &mut out
            ),
            Err(ResponseError::BadLength)
        );
        assert_eq!(
            parse(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                V11,
                &mut out
            ),
            Err(ResponseError::BadLength)
        );
        assert_eq!(
            parse(b"HTTP/1.1 101 Switching\r\n\r\n", V11, &mut out),
            Err(ResponseError::Upgrade)
        );
        assert_eq!(
            parse(b"NOT HTTP\r\n\r\n", V11, &mut out),
            Err(ResponseError::Malformed)
        );
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\n", V11, &mut out), Ok(None));
        let (h, _) = p(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            V11,
        );
        assert!(h.body == Body::Chunked && !h.server_reusable);
    }
}
