//! The response framer: follows `tiny_http`'s responses through the byte
//! stream from its Unix socket, so that the connection knows when a
//! forwarded request has been answered.

use std::collections::VecDeque;

/// `tiny_http`'s response heads are a few hundred bytes; anything larger means
/// the stream is not what we think it is.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Bound of one chunk-size or trailer line in a chunked response.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// What the response to a forwarded request will look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Expect {
    /// A HEAD request: the response has no body whatever its headers say.
    pub(super) head_request: bool,
    /// The client speaks HTTP/1.0: the request went to `tiny_http` as 1.1
    /// (for 1.0 it would buffer a streamed response whole in memory), so a
    /// chunked response must reach the client without its chunk framing.
    pub(super) dechunk: bool,
    /// The client sent `Expect: 100-continue` with a body, so it gets the
    /// `100 Continue` of `tiny_http`; other clients do not (the front asked
    /// for it on their behalf).
    pub(super) relay_continue: bool,
}

/// Why `tiny_http`'s output could not be followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FramingError {
    /// A response arrived with no request waiting for it.
    Unsolicited,
    HeadTooLarge,
    BadHead(&'static str),
    BadChunk(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkPart {
    SizeLine,
    Data(u64),
    DataEnd,
    Trailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Fixed(u64),
    Chunked(ChunkPart),
    UntilClose,
}

/// Follows `tiny_http`'s responses through the byte stream, so the front
/// knows when the forwarded request has been answered: only then is its
/// `tiny_http` connection closed, the next request read, and the client
/// connection idle (a download in progress must not hit the idle timeout).
/// `tiny_http` frames a response with `Content-Length` or chunked coding
/// even though it then closes the connection; a response with neither ends
/// at the close. For HTTP/1.0 clients it also strips chunked framing.
#[derive(Debug)]
pub(super) struct ResponseFramer {
    pending: VecDeque<Expect>,
    current: Option<Expect>,
    phase: Phase,
    head: Vec<u8>,
    line: Vec<u8>,
    /// A `100 Continue` arrived that [`ResponseFramer::take_continue`] has
    /// not reported yet.
    continued: bool,
    /// The next final response head gets `Connection: close`: the
    /// connection ends after it.
    close_on_final_head: bool,
}

impl Default for ResponseFramer {
    fn default() -> ResponseFramer {
        ResponseFramer {
            pending: VecDeque::new(),
            current: None,
            phase: Phase::Head,
            head: Vec::new(),
            line: Vec::new(),
            continued: false,
            close_on_final_head: false,
        }
    }
}

/// The parts of a response head that decide its framing.
struct ResponseHead {
    status: u16,
    content_length: Option<u64>,
    chunked: bool,
    other_transfer_coding: bool,
}

fn parse_response_head(head: &[u8]) -> Result<ResponseHead, FramingError> {
    let text = std::str::from_utf8(head).map_err(|_| FramingError::BadHead("not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    if !parts
        .next()
        .is_some_and(|version| version.starts_with("HTTP/1."))
    {
        return Err(FramingError::BadHead("status line"));
    }
    let status = parts
        .next()
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or(FramingError::BadHead("status code"))?;
    let mut parsed = ResponseHead {
        status,
        content_length: None,
        chunked: false,
        other_transfer_coding: false,
    };
    for line in lines.filter(|line| !line.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(FramingError::BadHead("header line"));
        };
        let value = value.trim();
        if name.trim().eq_ignore_ascii_case("content-length") {
            let len = value
                .parse::<u64>()
                .map_err(|_| FramingError::BadHead("Content-Length"))?;
            parsed.content_length = Some(len);
        } else if name.trim().eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            if last.eq_ignore_ascii_case("chunked") {
                parsed.chunked = true;
            } else {
                parsed.other_transfer_coding = true;
            }
        }
    }
    Ok(parsed)
}

/// The chunk size at the start of a chunk-size line (extensions ignored).
fn parse_chunk_size(line: &[u8]) -> Result<u64, FramingError> {
    let digits: Vec<u8> = line
        .iter()
        .copied()
        .take_while(|byte| byte.is_ascii_hexdigit())
        .collect();
    if digits.is_empty() || digits.len() > 15 {
        return Err(FramingError::BadChunk("chunk size"));
    }
    let text = std::str::from_utf8(&digits).map_err(|_| FramingError::BadChunk("chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| FramingError::BadChunk("chunk size"))
}

impl ResponseFramer {
    /// A request was forwarded; its response will come in order.
    pub(super) fn expect(&mut self, expect: Expect) {
        self.pending.push_back(expect);
    }

    /// Whether `tiny_http` sent `100 Continue` since the last call: it wants
    /// the body of the request in flight.
    pub(super) fn take_continue(&mut self) -> bool {
        std::mem::take(&mut self.continued)
    }

    /// Some forwarded request has no final response head yet.
    pub(super) fn awaits_head(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Every forwarded request has been answered completely.
    pub(super) fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.current.is_none() && self.head.is_empty()
    }

    /// `tiny_http` closed its side: that completes a close-delimited body.
    pub(super) fn on_eof(&mut self) {
        if self.phase == Phase::UntilClose {
            self.complete();
        }
    }

    /// Whether a final response head that arrives now must say
    /// `Connection: close`.
    pub(super) fn set_close_on_final_head(&mut self, close: bool) {
        self.close_on_final_head = close;
    }

    fn complete(&mut self) {
        self.current = None;
        self.phase = Phase::Head;
    }

    /// Consumes `input` from `tiny_http`, appending what the client must get
    /// to `out`.
    pub(super) fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), FramingError> {
        while !input.is_empty() {
            match self.phase {
                Phase::Head => {
                    let mut taken = 0;
                    let mut complete = false;
                    for &byte in input {
                        self.head.push(byte);
                        taken += 1;
                        if self.head.ends_with(b"\r\n\r\n") {
                            complete = true;
                            break;
                        }
                    }
                    input = &input[taken..];
                    if self.head.len() > MAX_RESPONSE_HEAD {
                        return Err(FramingError::HeadTooLarge);
                    }
                    if complete {
                        self.on_head(out)?;
                    }
                }
                Phase::Fixed(remaining) => {
                    let n = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    let remaining = remaining - n as u64;
                    if remaining == 0 {
                        self.complete();
                    } else {
                        self.phase = Phase::Fixed(remaining);
                    }
                }
                Phase::UntilClose => {
                    out.extend_from_slice(input);
                    input = &[];
                }
                Phase::Chunked(part) => input = self.feed_chunked(part, input, out)?,
            }
        }
        Ok(())
    }

    fn on_head(&mut self, out: &mut Vec<u8>) -> Result<(), FramingError> {
        let head = std::mem::take(&mut self.head);
        let parsed = parse_response_head(&head)?;
        if (100..200).contains(&parsed.status) {
            // An interim response (100 Continue): the final one follows.
            let expect = *self.pending.front().ok_or(FramingError::Unsolicited)?;
            if parsed.status == 101 {
                return Err(FramingError::BadHead("protocol switch"));
            }
            if parsed.status == 100 {
                self.continued = true;
            }
            if expect.relay_continue {
                out.extend_from_slice(&head);
            }
            return Ok(());
        }
        let expect = self.pending.pop_front().ok_or(FramingError::Unsolicited)?;
        self.current = Some(expect);
        let mut head = head;
        if self.close_on_final_head {
            // Before the blank line that ends the head.
            head.truncate(head.len() - 2);
            head.extend_from_slice(b"Connection: close\r\n\r\n");
        }
        if expect.dechunk && parsed.chunked {
            for line in head.split_inclusive(|&byte| byte == b'\n') {
                let is_coding = line
                    .get(..18)
                    .is_some_and(|start| start.eq_ignore_ascii_case(b"transfer-encoding:"));
                if !is_coding {
                    out.extend_from_slice(line);
                }
            }
        } else {
            out.extend_from_slice(&head);
        }
        let bodyless = expect.head_request || parsed.status == 204 || parsed.status == 304;
        self.phase = if bodyless {
            Phase::Head
        } else if parsed.chunked {
            Phase::Chunked(ChunkPart::SizeLine)
        } else if parsed.other_transfer_coding {
            Phase::UntilClose
        } else {
            match parsed.content_length {
                Some(0) => Phase::Head,
                Some(len) => Phase::Fixed(len),
                None => Phase::UntilClose,
            }
        };
        if self.phase == Phase::Head {
            self.complete();
        }
        Ok(())
    }

    fn feed_chunked<'i>(
        &mut self,
        part: ChunkPart,
        input: &'i [u8],
        out: &mut Vec<u8>,
    ) -> Result<&'i [u8], FramingError> {
        let dechunk = self.current.is_some_and(|expect| expect.dechunk);
        if let ChunkPart::Data(remaining) = part {
            let n = usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(input.len());
            out.extend_from_slice(&input[..n]);
            let remaining = remaining - n as u64;
            self.phase = Phase::Chunked(if remaining == 0 {
                ChunkPart::DataEnd
            } else {
                ChunkPart::Data(remaining)
            });
            return Ok(&input[n..]);
        }
        // The other parts are lines: take bytes up to and including LF.
        let (taken, rest, line_done) = match input.iter().position(|&byte| byte == b'\n') {
            Some(at) => (&input[..=at], &input[at + 1..], true),
            None => (input, &input[input.len()..], false),
        };
        if !dechunk {
            out.extend_from_slice(taken);
        }
        self.line.extend_from_slice(taken);
        if self.line.len() > MAX_CHUNK_LINE {
            return Err(FramingError::BadChunk("line too long"));
        }
        if !line_done {
            return Ok(rest);
        }
        let mut line = std::mem::take(&mut self.line);
        let content = line
            .strip_suffix(b"\r\n")
            .or_else(|| line.strip_suffix(b"\n"))
            .unwrap_or(&line);
        match part {
            ChunkPart::SizeLine => {
                let size = parse_chunk_size(content)?;
                self.phase = Phase::Chunked(if size == 0 {
                    ChunkPart::Trailer
                } else {
                    ChunkPart::Data(size)
                });
            }
            ChunkPart::DataEnd => {
                if !content.is_empty() {
                    return Err(FramingError::BadChunk("no CRLF after chunk data"));
                }
                self.phase = Phase::Chunked(ChunkPart::SizeLine);
            }
            ChunkPart::Trailer => {
                if content.is_empty() {
                    self.complete();
                }
            }
            ChunkPart::Data(_) => unreachable!("handled above"),
        }
        line.clear();
        self.line = line;
        Ok(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\nContent-Length: 0\r\n\r\n";
    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nTrailer: x\r\n\r\n";
    const FIXED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
    /// To a HEAD request: the Content-Length announces no body.
    const HEAD_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n";

    fn plain() -> Expect {
        Expect {
            head_request: false,
            dechunk: false,
            relay_continue: true,
        }
    }

    #[test]
    fn an_answer_before_the_body_says_the_connection_closes() {
        let answer = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\nno";
        let mut framer = ResponseFramer::default();
        framer.expect(plain());
        framer.set_close_on_final_head(true);
        let mut out = Vec::new();
        framer.feed(answer, &mut out).unwrap();
        assert_eq!(
            out,
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"
        );
        let mut framer = ResponseFramer::default();
        framer.expect(plain());
        let mut out = Vec::new();
        framer.feed(answer, &mut out).unwrap();
        assert_eq!(out, answer);
    }

    #[test]
    fn framer_follows_responses_however_they_are_split() {
        let stream = [CONTINUE, CHUNKED, FIXED, HEAD_ANSWER].concat();
        let ends = [
            CONTINUE.len() + CHUNKED.len(),
            CONTINUE.len() + CHUNKED.len() + FIXED.len(),
            stream.len(),
        ];
        for piece in [1, 2, 3, 7, stream.len()] {
            let mut framer = ResponseFramer::default();
            framer.expect(plain());
            framer.expect(plain());
            framer.expect(Expect {
                head_request: true,
                dechunk: false,
                relay_continue: false,
            });
            let mut out = Vec::new();
            let mut fed = 0;
            let mut completed = Vec::new();
            for chunk in stream.chunks(piece) {
                let before = framer.pending.len() + usize::from(framer.current.is_some());
                framer.feed(chunk, &mut out).unwrap();
                fed += chunk.len();
                let after = framer.pending.len() + usize::from(framer.current.is_some());
                if after < before {
                    completed.push(fed);
                }
            }
            assert_eq!(out, stream, "piece {piece}");
            assert!(framer.is_idle(), "piece {piece}");
            if piece == 1 {
                // Each response is complete exactly at its last byte.
                assert_eq!(completed, ends);
            }
        }
    }

    #[test]
    fn framer_dechunks_for_http10_clients() {
        let mut framer = ResponseFramer::default();
        framer.expect(Expect {
            head_request: false,
            dechunk: true,
            relay_continue: false,
        });
        let mut out = Vec::new();
        for byte in [CONTINUE, CHUNKED].concat() {
            framer.feed(&[byte], &mut out).unwrap();
        }
        assert!(framer.is_idle());
        assert_eq!(out, b"HTTP/1.1 200 OK\r\n\r\nhello!");
    }

    #[test]
    fn framer_rejects_what_it_cannot_follow() {
        let mut out = Vec::new();
        let mut framer = ResponseFramer::default();
        assert_eq!(
            framer.feed(b"HTTP/1.1 200 OK\r\n\r\n", &mut out),
            Err(FramingError::Unsolicited)
        );
        let mut framer = ResponseFramer::default();
        framer.expect(plain());
        assert_eq!(
            framer.feed(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                &mut out
            ),
            Err(FramingError::BadChunk("chunk size"))
        );
        let mut framer = ResponseFramer::default();
        framer.expect(plain());
        framer
            .feed(b"HTTP/1.1 200 OK\r\n\r\nbody until close", &mut out)
            .unwrap();
        assert!(!framer.is_idle());
        framer.on_eof();
        assert!(framer.is_idle());
    }
}
