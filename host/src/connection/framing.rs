//! Strict line endings for HTTP/1 request heads. hyper's parser takes a bare
//! LF as the end of a line, as RFC 9112 §2.2 allows; a proxy in front that
//! does not can be made to see a different request than the host does (the
//! ground of request smuggling). So the guard follows the connection's HTTP/1
//! framing — head, then the body its `Content-Length` or chunked encoding
//! gives, then the next pipelined head — and finds a bare LF inside a head or
//! trailer section; the stream then ends that head with [`REFUSAL`], bytes no
//! parser accepts, so hyper answers 400 and closes. Bodies pass as they are.

/// What replaces a head from its bare LF on: a NUL (refused in every part of
/// a head) and the end of a head, so the parser judges it at once.
pub const REFUSAL: &[u8] = b"\0\r\n\r\n";

/// Header lines longer than this are not read for framing (a
/// `Content-Length` or `Transfer-Encoding` line never is).
const LINE_KEEP: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Reading a request head (`trailers`: the trailer section of a chunked
    /// body, after which a head follows).
    Head {
        trailers: bool,
    },
    /// This many body bytes to pass.
    Body(u64),
    /// A chunk-size line, with the size read so far.
    ChunkSize {
        size: u64,
        ext: bool,
    },
    /// This many chunk bytes to pass, then the CRLF that ends the chunk.
    ChunkData(u64),
    ChunkEnd(u8),
    /// Framing is no longer followed: HTTP/2, an upgrade, or a head the
    /// parser refuses anyway.
    Off,
}

/// Follows one connection's HTTP/1 request framing.
#[derive(Debug)]
pub struct Framing {
    state: State,
    prev_cr: bool,
    /// The current head line (its start, up to `LINE_KEEP` bytes).
    line: Vec<u8>,
    line_len: usize,
    lines: usize,
    content_length: Option<u64>,
    chunked: bool,
}

impl Default for Framing {
    fn default() -> Self {
        Framing {
            state: State::Head { trailers: false },
            prev_cr: false,
            line: Vec::new(),
            line_len: 0,
            lines: 0,
            content_length: None,
            chunked: false,
        }
    }
}

impl Framing {
    /// Follows `bytes` as they arrive; the offset of a bare LF of a head, if
    /// one is found (nothing more is followed then).
    pub fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                State::Off => return None,
                State::Body(n) => {
                    let take = n.min((bytes.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == n {
                        self.head_next()
                    } else {
                        State::Body(n - take)
                    };
                }
                State::ChunkData(n) => {
                    let take = n.min((bytes.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == n {
                        State::ChunkEnd(2)
                    } else {
                        State::ChunkData(n - take)
                    };
                }
                State::ChunkEnd(left) => {
                    // hyper checks these two bytes are CRLF.
                    i += 1;
                    self.state = if left > 1 {
                        State::ChunkEnd(left - 1)
                    } else {
                        State::ChunkSize {
                            size: 0,
                            ext: false,
                        }
                    };
                }
                State::ChunkSize { size, ext } => {
                    let b = bytes[i];
                    i += 1;
                    self.state = match (b, ext) {
                        (b'\n', _) if size == 0 => State::Head { trailers: true },
                        (b'\n', _) => State::ChunkData(size),
                        (b';', _) => State::ChunkSize { size, ext: true },
                        (_, true) => State::ChunkSize { size, ext },
                        _ => match (b as char).to_digit(16) {
                            Some(d) => match size.checked_mul(16) {
                                Some(s) => State::ChunkSize {
                                    size: s + u64::from(d),
                                    ext,
                                },
                                None => State::Off,
                            },
                            // Spaces and CR: hyper judges the line.
                            None => State::ChunkSize { size, ext },
                        },
                    };
                }
                State::Head { trailers } => {
                    let b = bytes[i];
                    if b == b'\n' && !self.prev_cr {
                        self.state = State::Off;
                        return Some(i);
                    }
                    i += 1;
                    self.head_byte(b, trailers);
                }
            }
        }
        None
    }

    /// The state after a request ends: a new head.
    fn head_next(&mut self) -> State {
        self.lines = 0;
        self.content_length = None;
        self.chunked = false;
        State::Head { trailers: false }
    }

    fn head_byte(&mut self, b: u8, trailers: bool) {
        self.prev_cr = b == b'\r';
        if b != b'\n' {
            if self.line.len() < LINE_KEEP {
                self.line.push(b);
            }
            self.line_len += 1;
            return;
        }
        // A line ended (its CR is the last byte kept); its buffer is kept
        // for the next line.
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        let whole = self.line_len <= LINE_KEEP;
        self.line_len = 0;
        let line = std::mem::take(&mut self.line);
        self.line_ended(&line, whole, trailers);
        self.line = line;
        self.line.clear();
    }

    fn line_ended(&mut self, line: &[u8], whole: bool, trailers: bool) {
        if line.is_empty() {
            if self.lines == 0 && !trailers {
                // Empty lines before a request line are skipped.
                return;
            }
            self.state = if trailers {
                self.head_next()
            } else if self.chunked {
                State::ChunkSize {
                    size: 0,
                    ext: false,
                }
            } else {
                match self.content_length {
                    Some(n) if n > 0 => State::Body(n),
                    _ => self.head_next(),
                }
            };
            return;
        }
        self.lines += 1;
        if self.lines == 1 && !trailers {
            // The request line; HTTP/2's preface starts as one.
            if line.starts_with(b"PRI * HTTP/2.0") {
                self.state = State::Off;
            }
            return;
        }
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            return;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if trailers {
            return;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let parsed = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
            match parsed {
                Some(n) if whole => self.content_length = Some(n),
                // hyper refuses the head: nothing more to follow.
                _ => self.state = State::Off,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.chunked = true;
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.state = State::Off;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Framing;

    /// The offset of the first bare LF found, counted over all parts.
    fn scan(parts: &[&[u8]]) -> Option<usize> {
        let mut f = Framing::default();
        let mut seen = 0;
        for part in parts {
            if let Some(i) = f.scan(part) {
                return Some(seen + i);
            }
            seen += part.len();
        }
        None
    }

    #[test]
    fn crlf_heads_pass() {
        let req: &[u8] = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(scan(&[req]), None);
    }

    #[test]
    fn bare_lf_in_a_request_line_or_header_is_found() {
        assert_eq!(scan(&[b"GET / HTTP/1.1\nHost: a\n\n"]), Some(14));
        assert_eq!(scan(&[b"GET / HTTP/1.1\r\nHost: a\n\r\n"]), Some(23));
        assert_eq!(scan(&[b"GET / HTTP/1.1\r\nHost: a\r\n\n"]), Some(25));
    }

    #[test]
    fn a_bare_lf_in_the_second_pipelined_head_is_found_across_reads() {
        let found = scan(&[b"GET / HTTP/1.1\r\nHo", b"st: a\r\n\r\nGET / HTTP/1.1\n"]);
        assert_eq!(found, Some(41));
    }

    #[test]
    fn bodies_may_hold_bare_lf() {
        let req: &[u8] =
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\na\nb\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(scan(&[req]), None);
        let chunked: &[u8] = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            3;x=y\r\n\n\n\n\r\nA\r\n\n\n\n\n\n\n\n\n\n\n\r\n0\r\nT: v\r\n\r\n\
            GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(scan(&[chunked]), None);
        let split: Vec<&[u8]> = chunked.chunks(3).collect();
        assert_eq!(scan(&split), None);
        let found = scan(&[chunked, b"GET / HTTP/1.1\nHost: a\r\n\r\n"]);
        assert_eq!(found, Some(chunked.len() + 14));
    }

    #[test]
    fn http2_is_not_followed() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\n\n\x00\x00";
        assert_eq!(scan(&[preface]), None);
    }

    #[test]
    fn a_bare_lf_in_trailers_is_found() {
        let req: &[u8] =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nT: v\n\r\n";
        assert_eq!(scan(&[req]), Some(req.len() - 3));
    }
}
