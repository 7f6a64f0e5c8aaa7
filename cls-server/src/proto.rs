//! The CLS wire protocol, defined once (see `cls-server/PROTOCOL.md`).
//!
//! Both the CLS server and the distributors (`ktcpvs`, via [`crate::client`])
//! compile against this module. Frames are length-prefixed, big-endian:
//!
//! ```text
//! u32 len | u8 type | payload (len - 1 bytes)
//! ```
//!
//! Decoding is two-step ("check before you parse"): [`check`] looks only at
//! the 4-byte length, rejects oversized frames *before* anything is buffered
//! or allocated for them, and reports [`Check::Incomplete`] (a normal state,
//! not an error) until the whole frame is there; [`parse`] then validates the
//! frame fully and returns a [`Frame`] that borrows the input (no allocation).
//! Encoding appends to a caller-owned `Vec<u8>` that is reused between
//! frames, so the steady state allocates nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Protocol version carried in `Hello` / `HelloAck`.
pub const VERSION: u16 = 1;
/// Magic bytes at the start of `Hello`: "LVSC".
pub const MAGIC: [u8; 4] = *b"LVSC";
/// Bytes of the length prefix.
pub const LEN_BYTES: usize = 4;
/// Largest accepted value of the length field (type byte + payload).
pub const MAX_FRAME_LEN: usize = 64 * 1024;
/// Most items in one `BatchLookup` / `BatchAnswer` / `LoadReport`.
pub const MAX_BATCH: usize = 1024;
/// Largest server id; `0xFFFF` is reserved for "no node".
pub const MAX_SERVER_ID: u16 = 0xFFFE;
/// "No node" in `Hello.node_id` and `LookupItem.local_node`.
pub const NO_NODE: u16 = 0xFFFF;

/// Frame type bytes.
pub mod ty {
    pub const HELLO: u8 = 0x01;
    pub const HELLO_ACK: u8 = 0x02;
    pub const BATCH_LOOKUP: u8 = 0x03;
    pub const BATCH_ANSWER: u8 = 0x04;
    pub const LOAD_REPORT: u8 = 0x05;
    pub const ERROR: u8 = 0x06;
}

/// Bits of [`LookupItem::flags`].
pub mod flags {
    /// The object may be served by a cache node (cache-cluster mode).
    pub const CACHEABLE: u8 = 0x01;
    /// Dynamically generated (CGI etc.): costs 2 load units instead of 1.
    pub const DYNAMIC: u8 = 0x02;
    /// All bits that are defined; the others must be zero.
    pub const ALL: u8 = CACHEABLE | DYNAMIC;
}

/// Error codes carried by an `Error` frame (the sender closes afterwards).
pub mod error_code {
    pub const MALFORMED: u16 = 1;
    pub const UNSUPPORTED_VERSION: u16 = 2;
    pub const EXPECTED_HELLO: u16 = 3;
    pub const UNEXPECTED_FRAME: u16 = 4;
}

const HELLO_LEN: usize = 4 + 2 + 4 + 2;
const LOOKUP_ITEM_LEN: usize = 20;
const ANSWER_ITEM_LEN: usize = 4;
const REPORT_ITEM_LEN: usize = 6;
const BATCH_HEAD_LEN: usize = 4 + 2;

/// Why a byte sequence is not a valid frame. Any of these closes the
/// connection it arrived on (and only that one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("frame length {len} exceeds the limit {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("frame length 0 (no type byte)")]
    EmptyFrame,
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    #[error("frame type 0x{ty:02x}: payload length {len} is invalid")]
    BadLength { ty: u8, len: usize },
    #[error("batch of {0} items exceeds the limit")]
    TooManyItems(usize),
    #[error("bad magic in hello")]
    BadMagic,
    #[error("reserved bits or bytes are not zero")]
    Reserved,
    #[error("unknown answer kind {0}")]
    BadAnswerKind(u8),
    #[error("unknown address family {0}")]
    BadFamily(u8),
    #[error("server id 0xffff is reserved")]
    BadServerId,
}

/// Result of [`check`]: either a whole frame of `total` bytes (prefix
/// included) is buffered, or more bytes are needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// A whole frame of this many bytes (length prefix included) is buffered.
    Complete(usize),
    /// At least this many bytes in total are needed before the frame is whole.
    Incomplete(usize),
}

/// Look at the length prefix only. Oversized frames are refused here, so a
/// reader never grows its buffer beyond `LEN_BYTES + MAX_FRAME_LEN`.
#[inline]
pub fn check(buf: &[u8]) -> Result<Check, ProtoError> {
    if buf.len() < LEN_BYTES {
        return Ok(Check::Incomplete(LEN_BYTES));
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len == 0 {
        return Err(ProtoError::EmptyFrame);
    }
    if len > MAX_FRAME_LEN {
        return Err(ProtoError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let total = LEN_BYTES + len;
    if buf.len() < total {
        Ok(Check::Incomplete(total))
    } else {
        Ok(Check::Complete(total))
    }
}

/// Result of [`decode`].
#[derive(Debug, PartialEq)]
pub enum Decoded<'a> {
    /// A frame, and how many bytes of the input it used.
    Frame(Frame<'a>, usize),
    /// Not yet a whole frame; at least this many bytes are needed in total.
    Incomplete(usize),
}

/// [`check`] then [`parse`].
#[inline]
pub fn decode(buf: &[u8]) -> Result<Decoded<'_>, ProtoError> {
    match check(buf)? {
        Check::Incomplete(n) => Ok(Decoded::Incomplete(n)),
        Check::Complete(n) => Ok(Decoded::Frame(parse(&buf[..n])?, n)),
    }
}

/// A decoded frame; batch contents borrow the input buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame<'a> {
    Hello(Hello),
    HelloAck(HelloAck<'a>),
    BatchLookup(BatchLookup<'a>),
    BatchAnswer(BatchAnswer<'a>),
    LoadReport(LoadReport<'a>),
    Error(u16),
}

/// First frame from a distributor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub distributor_id: u32,
    /// The server id of the node this distributor is co-located with, or
    /// [`NO_NODE`].
    pub node_id: u16,
}

/// The CLS's reply to `Hello`: its version, its batch limit and its table of
/// servers, so the distributor can map server ids to addresses.
#[derive(Debug, Clone, PartialEq)]
pub struct HelloAck<'a> {
    pub version: u16,
    pub max_batch: u16,
    raw_servers: &'a [u8],
    count: u16,
}

/// One server in `HelloAck`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerEntry {
    pub id: u16,
    pub addr: SocketAddr,
}

/// One lookup: content id (MD5 of the target), flags and local node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupItem {
    pub id: [u8; 16],
    pub flags: u8,
    pub local_node: u16,
}

/// One answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Answer {
    /// Send the request to this server.
    Server(u16),
    /// Bypass the caches: fetch from the origin named in the request.
    Origin,
    /// No server available; the distributor decides locally.
    None,
}

/// One entry of a load report: the distributor's own view of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadItem {
    pub server: u16,
    /// Connection units currently in flight from this distributor to this
    /// server (a dynamic request counts 2).
    pub inflight: u32,
}

/// Validated batch of lookups; iterate with [`BatchLookup::items`].
#[derive(Debug, Clone, PartialEq)]
pub struct BatchLookup<'a> {
    pub request_id: u32,
    raw: &'a [u8],
}

/// Validated batch of answers.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchAnswer<'a> {
    pub request_id: u32,
    raw: &'a [u8],
}

/// Validated load report.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport<'a> {
    raw: &'a [u8],
}

impl<'a> BatchLookup<'a> {
    pub fn len(&self) -> usize {
        self.raw.len() / LOOKUP_ITEM_LEN
    }
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
    pub fn items(&self) -> impl ExactSizeIterator<Item = LookupItem> + 'a {
        self.raw.chunks_exact(LOOKUP_ITEM_LEN).map(|c| {
            let mut id = [0u8; 16];
            id.copy_from_slice(&c[..16]);
            LookupItem {
                id,
                flags: c[16],
                local_node: u16::from_be_bytes([c[18], c[19]]),
            }
        })
    }
}

impl<'a> BatchAnswer<'a> {
    pub fn len(&self) -> usize {
        self.raw.len() / ANSWER_ITEM_LEN
    }
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
    pub fn answers(&self) -> impl ExactSizeIterator<Item = Answer> + 'a {
        self.raw.chunks_exact(ANSWER_ITEM_LEN).map(|c| match c[0] {
            0 => Answer::Server(u16::from_be_bytes([c[2], c[3]])),
            1 => Answer::Origin,
            // Validated in parse: only 2 remains.
            _ => Answer::None,
        })
    }
}

impl<'a> LoadReport<'a> {
    pub fn len(&self) -> usize {
        self.raw.len() / REPORT_ITEM_LEN
    }
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
    pub fn items(&self) -> impl ExactSizeIterator<Item = LoadItem> + 'a {
        self.raw.chunks_exact(REPORT_ITEM_LEN).map(|c| LoadItem {
            server: u16::from_be_bytes([c[0], c[1]]),
            inflight: u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
        })
    }
}

impl<'a> HelloAck<'a> {
    pub fn server_count(&self) -> usize {
        self.count as usize
    }
    pub fn servers(&self) -> impl Iterator<Item = ServerEntry> + 'a {
        let mut rest = self.raw_servers;
        std::iter::from_fn(move || {
            let (entry, n) = read_server_entry(rest).ok()??;
            rest = &rest[n..];
            Some(entry)
        })
    }
}

/// Reads one server entry: `id u16 | family u8 | addr 4/16 | port u16`.
/// `Ok(None)` at end of input.
fn read_server_entry(b: &[u8]) -> Result<Option<(ServerEntry, usize)>, ProtoError> {
    if b.is_empty() {
        return Ok(None);
    }
    let bad = || ProtoError::BadLength {
        ty: ty::HELLO_ACK,
        len: b.len(),
    };
    if b.len() < 3 {
        return Err(bad());
    }
    let id = u16::from_be_bytes([b[0], b[1]]);
    if id == NO_NODE {
        return Err(ProtoError::BadServerId);
    }
    let (ip, n): (IpAddr, usize) = match b[2] {
        4 => {
            if b.len() < 3 + 4 + 2 {
                return Err(bad());
            }
            (Ipv4Addr::new(b[3], b[4], b[5], b[6]).into(), 3 + 4)
        }
        6 => {
            if b.len() < 3 + 16 + 2 {
                return Err(bad());
            }
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[3..19]);
            (Ipv6Addr::from(o).into(), 3 + 16)
        }
        f => return Err(ProtoError::BadFamily(f)),
    };
    let port = u16::from_be_bytes([b[n], b[n + 1]]);
    Ok(Some((
        ServerEntry {
            id,
            addr: SocketAddr::new(ip, port),
        },
        n + 2,
    )))
}

#[inline]
fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
#[inline]
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Validates `count u16 | items` style bodies with fixed-size items.
fn counted(ty: u8, body: &[u8], item_len: usize) -> Result<&[u8], ProtoError> {
    if body.len() < 2 {
        return Err(ProtoError::BadLength {
            ty,
            len: body.len(),
        });
    }
    let count = be16(body) as usize;
    if count > MAX_BATCH {
        return Err(ProtoError::TooManyItems(count));
    }
    let items = &body[2..];
    if items.len() != count * item_len {
        return Err(ProtoError::BadLength {
            ty,
            len: body.len(),
        });
    }
    Ok(items)
}

/// Parses exactly one whole frame (as delimited by [`check`]), validating
/// every field. Never panics, whatever the input.
pub fn parse(frame: &[u8]) -> Result<Frame<'_>, ProtoError> {
    let total = match check(frame)? {
        Check::Complete(n) => n,
        Check::Incomplete(_) => {
            return Err(ProtoError::BadLength {
                ty: frame.get(LEN_BYTES).copied().unwrap_or(0),
                len: frame.len(),
            })
        }
    };
    let t = frame[LEN_BYTES];
    let p = &frame[LEN_BYTES + 1..total];
    let bad = || ProtoError::BadLength {
        ty: t,
        len: p.len(),
    };
    match t {
        ty::HELLO => {
            if p.len() != HELLO_LEN {
                return Err(bad());
            }
            if p[..4] != MAGIC {
                return Err(ProtoError::BadMagic);
            }
            Ok(Frame::Hello(Hello {
                version: be16(&p[4..]),
                distributor_id: be32(&p[6..]),
                node_id: be16(&p[10..]),
            }))
        }
        ty::HELLO_ACK => {
            if p.len() < 6 {
                return Err(bad());
            }
            let version = be16(p);
            let max_batch = be16(&p[2..]);
            let count = be16(&p[4..]);
            let raw = &p[6..];
            // Validate every entry now so the iterator is infallible.
            let mut rest = raw;
            let mut seen = 0u16;
            while let Some((_, n)) = read_server_entry(rest)? {
                rest = &rest[n..];
                seen = seen.checked_add(1).ok_or_else(bad)?;
            }
            if seen != count {
                return Err(bad());
            }
            Ok(Frame::HelloAck(HelloAck {
                version,
                max_batch,
                raw_servers: raw,
                count,
            }))
        }
        ty::BATCH_LOOKUP => {
            if p.len() < BATCH_HEAD_LEN {
                return Err(bad());
            }
            let request_id = be32(p);
            let raw = counted(t, &p[4..], LOOKUP_ITEM_LEN)?;
            for c in raw.chunks_exact(LOOKUP_ITEM_LEN) {
                if c[16] & !flags::ALL != 0 || c[17] != 0 {
                    return Err(ProtoError::Reserved);
                }
            }
            Ok(Frame::BatchLookup(BatchLookup { request_id, raw }))
        }
        ty::BATCH_ANSWER => {
            if p.len() < BATCH_HEAD_LEN {
                return Err(bad());
            }
            let request_id = be32(p);
            let raw = counted(t, &p[4..], ANSWER_ITEM_LEN)?;
            for c in raw.chunks_exact(ANSWER_ITEM_LEN) {
                if c[1] != 0 {
                    return Err(ProtoError::Reserved);
                }
                match c[0] {
                    0 if be16(&c[2..]) == NO_NODE => return Err(ProtoError::BadServerId),
                    0 => {}
                    1 | 2 if be16(&c[2..]) != 0 => return Err(ProtoError::Reserved),
                    1 | 2 => {}
                    k => return Err(ProtoError::BadAnswerKind(k)),
                }
            }
            Ok(Frame::BatchAnswer(BatchAnswer { request_id, raw }))
        }
        ty::LOAD_REPORT => {
            let raw = counted(t, p, REPORT_ITEM_LEN)?;
            for c in raw.chunks_exact(REPORT_ITEM_LEN) {
                if be16(c) == NO_NODE {
                    return Err(ProtoError::BadServerId);
                }
            }
            Ok(Frame::LoadReport(LoadReport { raw }))
        }
        ty::ERROR => {
            if p.len() != 2 {
                return Err(bad());
            }
            Ok(Frame::Error(be16(p)))
        }
        other => Err(ProtoError::UnknownType(other)),
    }
}

// ---------------------------------------------------------------- encoding

/// Writes the length prefix and type byte; returns the offset of the prefix
/// so [`finish`] can patch the length.
#[inline]
fn begin(buf: &mut Vec<u8>, t: u8) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0, 0, 0, t]);
    start
}

#[inline]
fn finish(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start - LEN_BYTES) as u32;
    buf[start..start + LEN_BYTES].copy_from_slice(&len.to_be_bytes());
}

/// Appends a `Hello` frame.
pub fn encode_hello(buf: &mut Vec<u8>, h: &Hello) {
    let s = begin(buf, ty::HELLO);
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&h.version.to_be_bytes());
    buf.extend_from_slice(&h.distributor_id.to_be_bytes());
    buf.extend_from_slice(&h.node_id.to_be_bytes());
    finish(buf, s);
}

/// Appends a `HelloAck` frame. At most `u16::MAX` servers fit in the count;
/// the CLS configuration refuses more than that long before.
pub fn encode_hello_ack(buf: &mut Vec<u8>, max_batch: u16, servers: &[ServerEntry]) {
    let s = begin(buf, ty::HELLO_ACK);
    buf.extend_from_slice(&VERSION.to_be_bytes());
    buf.extend_from_slice(&max_batch.to_be_bytes());
    buf.extend_from_slice(&(servers.len() as u16).to_be_bytes());
    for e in servers {
        buf.extend_from_slice(&e.id.to_be_bytes());
        match e.addr.ip() {
            IpAddr::V4(a) => {
                buf.push(4);
                buf.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                buf.push(6);
                buf.extend_from_slice(&a.octets());
            }
        }
        buf.extend_from_slice(&e.addr.port().to_be_bytes());
    }
    finish(buf, s);
}

/// Appends an `Error` frame.
pub fn encode_error(buf: &mut Vec<u8>, code: u16) {
    let s = begin(buf, ty::ERROR);
    buf.extend_from_slice(&code.to_be_bytes());
    finish(buf, s);
}

/// Incremental writer for one counted frame (`BatchLookup`, `BatchAnswer`,
/// `LoadReport`): items are appended in place, then [`BatchWriter::finish`]
/// patches the length and count. Pushing beyond [`MAX_BATCH`] items is
/// refused (returns `false`), so an encoded frame always passes [`check`].
pub struct BatchWriter<'b> {
    buf: &'b mut Vec<u8>,
    start: usize,
    count_at: usize,
    count: usize,
}

impl<'b> BatchWriter<'b> {
    /// Starts a `BatchLookup`.
    pub fn lookup(buf: &'b mut Vec<u8>, request_id: u32) -> Self {
        Self::with_id(buf, ty::BATCH_LOOKUP, request_id)
    }
    /// Starts a `BatchAnswer`.
    pub fn answer(buf: &'b mut Vec<u8>, request_id: u32) -> Self {
        Self::with_id(buf, ty::BATCH_ANSWER, request_id)
    }
    /// Starts a `LoadReport`.
    pub fn load_report(buf: &'b mut Vec<u8>) -> Self {
        let start = begin(buf, ty::LOAD_REPORT);
        let count_at = buf.len();
        buf.extend_from_slice(&[0, 0]);
        BatchWriter {
            buf,
            start,
            count_at,
            count: 0,
        }
    }
    fn with_id(buf: &'b mut Vec<u8>, t: u8, request_id: u32) -> Self {
        let start = begin(buf, t);
        buf.extend_from_slice(&request_id.to_be_bytes());
        let count_at = buf.len();
        buf.extend_from_slice(&[0, 0]);
        BatchWriter {
            buf,
            start,
            count_at,
            count: 0,
        }
    }
    pub fn count(&self) -> usize {
        self.count
    }
    pub fn is_full(&self) -> bool {
        self.count >= MAX_BATCH
    }
    /// Appends a lookup item (only meaningful in a `lookup` writer).
    #[inline]
    pub fn push_lookup(&mut self, it: &LookupItem) -> bool {
        if self.is_full() {
            return false;
        }
        self.buf.extend_from_slice(&it.id);
        self.buf.push(it.flags & flags::ALL);
        self.buf.push(0);
        self.buf.extend_from_slice(&it.local_node.to_be_bytes());
        self.count += 1;
        true
    }
    /// Appends an answer (only meaningful in an `answer` writer).
    #[inline]
    pub fn push_answer(&mut self, a: Answer) -> bool {
        if self.is_full() {
            return false;
        }
        let (k, id) = match a {
            Answer::Server(id) => (0u8, id),
            Answer::Origin => (1, 0),
            Answer::None => (2, 0),
        };
        let id = id.to_be_bytes();
        self.buf.extend_from_slice(&[k, 0, id[0], id[1]]);
        self.count += 1;
        true
    }
    /// Appends a load item (only meaningful in a `load_report` writer).
    #[inline]
    pub fn push_load(&mut self, it: &LoadItem) -> bool {
        if self.is_full() {
            return false;
        }
        self.buf.extend_from_slice(&it.server.to_be_bytes());
        self.buf.extend_from_slice(&it.inflight.to_be_bytes());
        self.count += 1;
        true
    }
    /// Patches length and count; returns the number of items.
    pub fn finish(self) -> usize {
        let c = (self.count as u16).to_be_bytes();
        self.buf[self.count_at] = c[0];
        self.buf[self.count_at + 1] = c[1];
        finish(self.buf, self.start);
        self.count
    }
}

/// Content id of a request target: MD5 of its bytes (thesis §7.3.2).
pub fn content_id(target: &[u8]) -> [u8; 16] {
    use md5::{Digest, Md5};
    Md5::digest(target).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(buf: &[u8]) -> Frame<'_> {
        match decode(buf).unwrap() {
            Decoded::Frame(f, n) => {
                assert_eq!(n, buf.len());
                f
            }
            Decoded::Incomplete(_) => panic!("incomplete"),
        }
    }

    fn item(i: u8) -> LookupItem {
        LookupItem {
            id: [i; 16],
            flags: flags::CACHEABLE,
            local_node: i as u16,
        }
    }

    #[test]
    fn hello_round_trip() {
        let mut b = Vec::new();
        let h = Hello {
            version: VERSION,
            distributor_id: 7,
            node_id: 3,
        };
        encode_hello(&mut b, &h);
        assert_eq!(b.len(), 4 + 1 + 12);
        assert_eq!(one(&b), Frame::Hello(h));
    }

    #[test]
    fn hello_ack_round_trip() {
        let servers = [
            ServerEntry {
                id: 0,
                addr: "10.0.0.1:80".parse().unwrap(),
            },
            ServerEntry {
                id: 5,
                addr: "[::1]:8080".parse().unwrap(),
            },
        ];
        let mut b = Vec::new();
        encode_hello_ack(&mut b, 256, &servers);
        match one(&b) {
            Frame::HelloAck(a) => {
                assert_eq!(a.version, VERSION);
                assert_eq!(a.max_batch, 256);
                assert_eq!(a.server_count(), 2);
                assert_eq!(a.servers().collect::<Vec<_>>(), servers);
            }
            f => panic!("{f:?}"),
        }
    }

    #[test]
    fn batch_round_trip_and_reuse() {
        let mut b = Vec::with_capacity(4096);
        for round in 0..3u32 {
            b.clear();
            let cap = b.capacity();
            let mut w = BatchWriter::lookup(&mut b, round);
            for i in 0..64 {
                assert!(w.push_lookup(&item(i)));
            }
            assert_eq!(w.finish(), 64);
            assert_eq!(b.capacity(), cap, "encode must not reallocate");
            match one(&b) {
                Frame::BatchLookup(l) => {
                    assert_eq!(l.request_id, round);
                    assert_eq!(l.len(), 64);
                    assert!(l.items().enumerate().all(|(i, it)| it == item(i as u8)));
                }
                f => panic!("{f:?}"),
            }
        }
        b.clear();
        let mut w = BatchWriter::answer(&mut b, 9);
        w.push_answer(Answer::Server(3));
        w.push_answer(Answer::Origin);
        w.push_answer(Answer::None);
        w.finish();
        match one(&b) {
            Frame::BatchAnswer(a) => {
                assert_eq!(a.request_id, 9);
                assert_eq!(
                    a.answers().collect::<Vec<_>>(),
                    [Answer::Server(3), Answer::Origin, Answer::None]
                );
            }
            f => panic!("{f:?}"),
        }
        b.clear();
        let mut w = BatchWriter::load_report(&mut b);
        let li = LoadItem {
            server: 2,
            inflight: 40,
        };
        w.push_load(&li);
        w.finish();
        match one(&b) {
            Frame::LoadReport(r) => assert_eq!(r.items().collect::<Vec<_>>(), [li]),
            f => panic!("{f:?}"),
        }
        b.clear();
        encode_error(&mut b, error_code::MALFORMED);
        assert_eq!(one(&b), Frame::Error(error_code::MALFORMED));
    }

    #[test]
    fn truncated_is_incomplete_not_error() {
        let mut b = Vec::new();
        let mut w = BatchWriter::lookup(&mut b, 1);
        for i in 0..4 {
            w.push_lookup(&item(i));
        }
        w.finish();
        for cut in 0..b.len() {
            match decode(&b[..cut]).unwrap() {
                Decoded::Incomplete(n) => assert!(n > cut),
                Decoded::Frame(..) => panic!("complete at {cut}"),
            }
        }
        // Two frames back to back: the first is consumed alone.
        let first = b.len();
        b.extend_from_within(..);
        match decode(&b).unwrap() {
            Decoded::Frame(_, n) => assert_eq!(n, first),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn oversized_refused_from_prefix_alone() {
        let len = (MAX_FRAME_LEN as u32 + 1).to_be_bytes();
        // Only the 4 prefix bytes are present: refused before buffering more.
        assert!(matches!(check(&len), Err(ProtoError::FrameTooLarge { .. })));
        assert_eq!(check(&[0, 0, 0, 0]), Err(ProtoError::EmptyFrame));
        // A count above MAX_BATCH is refused even if the length is plausible.
        let mut b = vec![0, 0, 0, 7, ty::BATCH_LOOKUP, 0, 0, 0, 1];
        b.extend_from_slice(&((MAX_BATCH as u16) + 1).to_be_bytes());
        assert_eq!(parse(&b), Err(ProtoError::TooManyItems(MAX_BATCH + 1)));
        // The writer never produces more than MAX_BATCH items.
        let mut v = Vec::new();
        let mut w = BatchWriter::answer(&mut v, 0);
        for _ in 0..MAX_BATCH {
            assert!(w.push_answer(Answer::None));
        }
        assert!(!w.push_answer(Answer::None));
        w.finish();
        assert!(matches!(decode(&v), Ok(Decoded::Frame(..))));
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        // Wrong types, wrong lengths, reserved bits, bad kinds.
        let cases: &[&[u8]] = &[
            &[0, 0, 0, 1, 0x7f],
            &[0, 0, 0, 1, ty::HELLO],
            &[
                0,
                0,
                0,
                13,
                ty::HELLO,
                b'X',
                b'V',
                b'S',
                b'C',
                0,
                1,
                0,
                0,
                0,
                1,
                0,
                1,
            ],
            &[0, 0, 0, 4, ty::ERROR, 0, 1, 2],
            &[0, 0, 0, 7, ty::BATCH_LOOKUP, 0, 0, 0, 1, 0, 1],
            &[0, 0, 0, 11, ty::BATCH_ANSWER, 0, 0, 0, 1, 0, 1, 9, 0, 0, 0],
            &[0, 0, 0, 11, ty::BATCH_ANSWER, 0, 0, 0, 1, 0, 1, 0, 1, 0, 0],
            &[
                0,
                0,
                0,
                11,
                ty::BATCH_ANSWER,
                0,
                0,
                0,
                1,
                0,
                1,
                0,
                0,
                0xff,
                0xff,
            ],
            &[0, 0, 0, 3, ty::LOAD_REPORT, 0, 1],
            &[0, 0, 0, 9, ty::HELLO_ACK, 0, 1, 0, 1, 0, 1, 0, 0],
            &[0, 0, 0, 10, ty::HELLO_ACK, 0, 1, 0, 1, 0, 1, 0, 0, 5],
        ];
        for c in cases {
            assert!(decode(c).is_err(), "accepted {c:?}");
        }
        let mut b = Vec::new();
        let mut w = BatchWriter::lookup(&mut b, 1);
        w.push_lookup(&item(1));
        w.finish();
        let flag_at = b.len() - 4;
        b[flag_at] = 0x80;
        assert_eq!(decode(&b), Err(ProtoError::Reserved));
        // Pseudo-random bytes: whatever comes out, no panic.
        let mut x: u32 = 0x1234_5678;
        let mut g = vec![0u8; 256];
        for _ in 0..2000 {
            for v in g.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *v = x as u8;
            }
            g[0] = 0;
            g[1] = 0;
            g[2] = 0;
            g[3] = (x % 251) as u8;
            g[4] = (x % 7) as u8;
            let _ = decode(&g);
        }
    }

    /// The examples in PROTOCOL.md, byte for byte.
    #[test]
    fn protocol_md_examples() {
        let mut b = Vec::new();
        let mut w = BatchWriter::lookup(&mut b, 7);
        w.push_lookup(&LookupItem {
            id: content_id(b"/index.html"),
            flags: flags::CACHEABLE,
            local_node: NO_NODE,
        });
        w.finish();
        assert_eq!(&b[..11], [0, 0, 0, 0x1b, 3, 0, 0, 0, 7, 0, 1]);
        assert_eq!(&b[27..], [1, 0, 0xff, 0xff]);
        b.clear();
        let mut w = BatchWriter::answer(&mut b, 7);
        w.push_answer(Answer::Server(2));
        w.finish();
        assert_eq!(b, [0, 0, 0, 0x0b, 4, 0, 0, 0, 7, 0, 1, 0, 0, 0, 2]);
    }

    #[test]
    fn content_id_is_md5() {
        assert_eq!(
            content_id(b""),
            [
                0xd4, 0x1d, 0x8c, 0xd9, 0x8f, 0x00, 0xb2, 0x04, 0xe9, 0x80, 0x09, 0x98, 0xec, 0xf8,
                0x42, 0x7e
            ]
        );
    }
}
