//! An incremental scanner for the chunked transfer coding (RFC 9112 §7.1).
//!
//! It never buffers: it is fed whatever bytes arrived, reports which of them
//! are chunk data (for de-chunking) and where the message ends, so the
//! relay can forward the coding unchanged and stop exactly at the end of
//! the message (what follows belongs to the next pipelined message).

use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of the size; `digits` seen so far.
    Size {
        digits: u8,
    },
    /// Skipping a chunk extension up to CR.
    Ext,
    /// Expecting LF after the size line's CR.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    TrailerLf,
    /// Expecting the final LF.
    EndLf,
    Done,
}

/// The coding is malformed; the connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked encoding")]
pub struct ChunkedError;

#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: State,
    size: u64,
    trailer_bytes: usize,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self::new()
    }
}

/// Longest trailer section accepted.
const MAX_TRAILER: usize = 16 * 1024;

impl ChunkedScanner {
    pub fn new() -> ChunkedScanner {
        ChunkedScanner {
            state: State::Size { digits: 0 },
            size: 0,
            trailer_bytes: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans `data`; `on_data` receives the ranges of `data` that are chunk
    /// payload. Returns how many bytes of `data` belong to this message:
    /// less than `data.len()` only when the message ended inside `data`.
    pub fn feed(
        &mut self,
        data: &[u8],
        mut on_data: impl FnMut(Range<usize>),
    ) -> Result<usize, ChunkedError> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                State::Done => return Ok(i),
                State::Size { digits } => {
                    let v = match b {
                        b'0'..=b'9' => Some(b - b'0'),
                        b'a'..=b'f' => Some(b - b'a' + 10),
                        b'A'..=b'F' => Some(b - b'A' + 10),
                        _ => None,
                    };
                    match v {
                        Some(v) => {
                            if digits >= 15 {
                                return Err(ChunkedError);
                            }
                            self.size = self.size << 4 | v as u64;
                            self.state = State::Size { digits: digits + 1 };
                        }
                        None if digits == 0 => return Err(ChunkedError),
                        None => match b {
                            b';' | b' ' | b'\t' => self.state = State::Ext,
                            b'\r' => self.state = State::SizeLf,
                            _ => return Err(ChunkedError),
                        },
                    }
                    i += 1;
                }
                State::Ext => {
                    match b {
                        b'\r' => self.state = State::SizeLf,
                        b'\n' => return Err(ChunkedError),
                        _ => {}
                    }
                    i += 1;
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkedError);
                    }
                    i += 1;
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                }
                State::Data => {
                    let n = (self.size.min((data.len() - i) as u64)) as usize;
                    on_data(i..i + n);
                    i += n;
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkedError);
                    }
                    i += 1;
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkedError);
                    }
                    i += 1;
                    self.state = State::Size { digits: 0 };
                }
                State::TrailerStart => {
                    i += 1;
                    self.state = match b {
                        b'\r' => State::EndLf,
                        b'\n' => return Err(ChunkedError),
                        _ => State::Trailer,
                    };
                    self.trailer_bytes += 1;
                }
                State::Trailer => {
                    i += 1;
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_TRAILER {
                        return Err(ChunkedError);
                    }
                    if b == b'\r' {
                        self.state = State::TrailerLf;
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkedError);
                    }
                    i += 1;
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkedError);
                    }
                    i += 1;
                    self.state = State::Done;
                    return Ok(i);
                }
            }
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dechunk_bytewise(input: &[u8]) -> (Vec<u8>, usize, bool) {
        let mut s = ChunkedScanner::new();
        let mut out = Vec::new();
        let mut used = 0;
        for k in 0..input.len() {
            let piece = &input[k..k + 1];
            let n = s.feed(piece, |r| out.extend_from_slice(&piece[r])).unwrap();
            used += n;
            if s.is_done() {
                break;
            }
        }
        (out, used, s.is_done())
    }

    #[test]
    fn whole_and_bytewise_agree() {
        let msg =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nGET /next";
        let mut s = ChunkedScanner::new();
        let mut out = Vec::new();
        let n = s.feed(msg, |r| out.extend_from_slice(&msg[r])).unwrap();
        assert!(s.is_done());
        assert_eq!(&msg[n..], b"GET /next");
        assert_eq!(out, b"helloabcdefghijklmnopqrstuvwxyz");
        let (out2, used, done) = dechunk_bytewise(msg);
        assert!(done);
        assert_eq!(out2, out);
        assert_eq!(used, n);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"5\nhello",
            b"0\r\n\n",
            b"1234567890abcdef0\r\n",
        ] {
            let mut s = ChunkedScanner::new();
            assert_eq!(
                s.feed(bad, |_| {}),
                Err(ChunkedError),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn empty_body() {
        let mut s = ChunkedScanner::new();
        assert_eq!(s.feed(b"0\r\n\r\n", |_| panic!()), Ok(5));
        assert!(s.is_done());
    }
}
