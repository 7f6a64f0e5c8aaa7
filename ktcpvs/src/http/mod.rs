//! HTTP/1.x message heads: parsing with httparse, framing rules (RFC 9112
//! §6), hop-by-hop header removal (RFC 9110 §7.6.1), and the rewritten heads
//! the switch forwards. Bodies are never parsed here except chunk framing
//! ([`chunked`]).

pub mod chunked;
pub mod request;
pub mod response;

#[cfg(test)]
mod fuzz_tests;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
    /// Until the sender closes (responses only).
    Close,
}

/// Headers that apply to one connection only and are never forwarded
/// (RFC 9110 §7.6.1, plus the de-facto Proxy-Connection and Keep-Alive).
/// `Transfer-Encoding` is handled separately: the switch re-states framing.
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 7] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// What a `Connection` header says.
#[derive(Debug, Default, Clone)]
pub(crate) struct ConnectionTokens {
    pub close: bool,
    pub keep_alive: bool,
    /// The `upgrade` option: the sender proposes (request) or accepts (101)
    /// a protocol switch named in `Upgrade` (RFC 9110 §7.8).
    pub upgrade: bool,
    /// Other tokens name more hop-by-hop headers (at most 8 kept; more
    /// names than that make the request refused as abusive).
    pub names: [(u16, u16); 8],
    pub n_names: usize,
    pub overflow: bool,
}

impl ConnectionTokens {
    /// Adds the tokens of one `Connection` value; `base` is the value's
    /// offset in the message buffer so names can be found again later.
    pub fn add(&mut self, value: &[u8], base: usize) {
        for (start, tok) in split_tokens(value) {
            if tok.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if tok.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if tok.eq_ignore_ascii_case(b"upgrade") {
                // A hop-by-hop header already; no name slot needed.
                self.upgrade = true;
            } else if self.n_names < self.names.len() {
                let s = base + start;
                self.names[self.n_names] = (s as u16, (s + tok.len()) as u16);
                self.n_names += 1;
            } else {
                self.overflow = true;
            }
        }
    }

    /// True if `name` was listed in a `Connection` header of `buf`.
    pub fn names_header(&self, buf: &[u8], name: &[u8]) -> bool {
        self.names[..self.n_names]
            .iter()
            .any(|&(s, e)| buf[s as usize..e as usize].eq_ignore_ascii_case(name))
    }
}

/// Splits a comma-separated header value into trimmed tokens with their
/// offsets in `value`.
pub(crate) fn split_tokens(value: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut pos = 0;
    value.split(|&b| b == b',').filter_map(move |part| {
        let start = pos;
        pos += part.len() + 1;
        let lead = part.iter().take_while(|b| b.is_ascii_whitespace()).count();
        let trail = part[lead..]
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
        let tok = &part[lead..part.len() - trail];
        (!tok.is_empty()).then_some((start + lead, tok))
    })
}

/// Parses a Content-Length value: digits only, no sign, no list.
pub(crate) fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (b - b'0') as u64;
    }
    Some(n)
}

/// Offset of `part` inside `buf` (both from the same allocation).
#[inline]
pub(crate) fn offset_in(buf: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - buf.as_ptr() as usize
}

pub(crate) fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let v = b" close ,, X-Foo,keep-alive";
        let t: Vec<_> = split_tokens(v).collect();
        assert_eq!(
            t,
            vec![
                (1, &b"close"[..]),
                (10, &b"X-Foo"[..]),
                (16, &b"keep-alive"[..])
            ]
        );
        let mut c = ConnectionTokens::default();
        c.add(v, 100);
        assert!(c.close && c.keep_alive);
        assert_eq!(c.names[..c.n_names], [(110, 115)]);
    }

    #[test]
    fn content_length() {
        assert_eq!(parse_content_length(b"123"), Some(123));
        for bad in [&b""[..], b"-1", b"1,1", b" 1", b"99999999999999999999"] {
            assert_eq!(parse_content_length(bad), None);
        }
    }
}
