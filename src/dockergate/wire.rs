//! HTTP/1.1 as the Docker Engine API speaks it over a Unix socket, as much
//! as the gate needs to forward it: request and response heads read with a
//! bound, the framing of a body (`Content-Length`, chunked, or until the
//! close), bodies copied as their bytes arrive (never held whole), a small
//! body read whole with a bound (the JSON the rules look into), and the
//! query string's `filters` parameter.
//!
//! It knows nothing of Docker's endpoints or of the rules.

use std::io::{self, BufRead, BufReader, Read, Write};

/// The most a request or response head may take: the registry auth and
/// build config headers are base64 JSON of a few kilobytes.
pub const MAX_HEAD: usize = 256 * 1024;
/// The most a chunk-size or trailer line may take.
const MAX_LINE: usize = 4 * 1024;

/// Why a message from a client or the engine cannot be followed.
#[derive(Debug)]
pub enum WireError {
    Io(io::Error),
    HeadTooLarge,
    BadHead(&'static str),
    BadChunk(&'static str),
    /// A body read whole was larger than its bound.
    BodyTooLarge(usize),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Io(e) => write!(f, "{e}"),
            WireError::HeadTooLarge => write!(f, "head larger than {MAX_HEAD} bytes"),
            WireError::BadHead(why) => write!(f, "malformed head: {why}"),
            WireError::BadChunk(why) => write!(f, "malformed chunked body: {why}"),
            WireError::BodyTooLarge(limit) => write!(f, "body larger than {limit} bytes"),
        }
    }
}

impl std::error::Error for WireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WireError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> WireError {
        WireError::Io(e)
    }
}

/// How a body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// A response without length: it ends when the engine closes, and the
    /// connection carries nothing after it (a hijacked stream is one).
    UntilClose,
}

/// Header lines, in order, as sent.
#[derive(Debug, Clone, Default)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn count(&self, name: &str) -> usize {
        self.0
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    pub fn set(&mut self, name: &str, value: String) {
        self.remove(name);
        self.0.push((name.to_string(), value));
    }

    /// Whether a comma-separated header holds `token`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.0
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        for (name, value) in &self.0 {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// The body framing the headers declare; a message with both a length
    /// and chunked coding, two lengths, or a coding other than chunked is
    /// refused (the engine and the gate could frame it differently).
    fn framing(&self) -> Result<Option<Framing>, WireError> {
        if let Some(te) = self.get("transfer-encoding") {
            if self.count("transfer-encoding") > 1 || self.get("content-length").is_some() {
                return Err(WireError::BadHead("ambiguous body length"));
            }
            if !te.trim().eq_ignore_ascii_case("chunked") {
                return Err(WireError::BadHead("transfer coding other than chunked"));
            }
            return Ok(Some(Framing::Chunked));
        }
        match self.get("content-length") {
            None => Ok(None),
            Some(_) if self.count("content-length") > 1 => {
                Err(WireError::BadHead("several Content-Length headers"))
            }
            Some(v) => {
                let v = v.trim();
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(WireError::BadHead("Content-Length is not a number"));
                }
                v.parse()
                    .map(|n| Some(Framing::Length(n)))
                    .map_err(|_| WireError::BadHead("Content-Length is not a number"))
            }
        }
    }
}

/// A request head.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: String,
    /// The path and query, as sent.
    pub target: String,
    pub headers: Headers,
}

impl RequestHead {
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    /// A request without a declared body has none.
    pub fn framing(&self) -> Result<Framing, WireError> {
        Ok(self.headers.framing()?.unwrap_or(Framing::Length(0)))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        self.headers.write_to(&mut out);
        out
    }
}

/// A response head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Headers,
}

impl ResponseHead {
    pub fn framing(&self, head_request: bool) -> Result<Framing, WireError> {
        if head_request || self.status < 200 || self.status == 204 || self.status == 304 {
            return Ok(Framing::Length(0));
        }
        Ok(self.headers.framing()?.unwrap_or(Framing::UntilClose))
    }
}

/// Reads a head up to its blank line. None when the peer closed before
/// sending a byte of it (the end of a keep-alive connection).
pub fn read_head<R: Read>(reader: &mut BufReader<R>) -> Result<Option<Vec<u8>>, WireError> {
    let mut head = Vec::new();
    loop {
        let available = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if available.is_empty() {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(WireError::BadHead("closed within the head"));
        }
        // The end may straddle what was kept and what has just come.
        let searched_from = head.len().saturating_sub(3);
        let kept = head.len();
        head.extend_from_slice(available);
        if let Some(end) = memchr::memmem::find(&head[searched_from..], b"\r\n\r\n") {
            let end = searched_from + end + 4;
            reader.consume(end - kept);
            head.truncate(end);
            return Ok(Some(head));
        }
        let n = available.len();
        reader.consume(n);
        if head.len() > MAX_HEAD {
            return Err(WireError::HeadTooLarge);
        }
    }
}

fn header_lines(text: &str) -> Result<(&str, Headers), WireError> {
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or("");
    let mut headers = Headers::default();
    for line in lines.filter(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            return Err(WireError::BadHead("folded header line"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or(WireError::BadHead("header line without a colon"))?;
        if name.is_empty() || name.bytes().any(|b| b <= b' ' || b >= 0x7f) {
            return Err(WireError::BadHead("invalid header name"));
        }
        headers.0.push((name.to_string(), value.trim().to_string()));
    }
    Ok((first, headers))
}

pub fn parse_request(head: &[u8]) -> Result<RequestHead, WireError> {
    let text = std::str::from_utf8(head).map_err(|_| WireError::BadHead("not UTF-8"))?;
    let (first, headers) = header_lines(text)?;
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(WireError::BadHead("bad request line"));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(WireError::BadHead("not HTTP/1.x"));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(WireError::BadHead("bad method"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b >= 0x7f) {
        return Err(WireError::BadHead("bad request target"));
    }
    Ok(RequestHead {
        method: method.to_string(),
        target: target.to_string(),
        headers,
    })
}

pub fn parse_response(head: &[u8]) -> Result<ResponseHead, WireError> {
    let text = std::str::from_utf8(head).map_err(|_| WireError::BadHead("not UTF-8"))?;
    let (first, headers) = header_lines(text)?;
    let mut parts = first.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(WireError::BadHead("not HTTP/1.x"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(WireError::BadHead("bad status"))?;
    Ok(ResponseHead { status, headers })
}

/// Reads one CRLF-ended line (without its CRLF), bounded.
fn read_line<R: Read>(reader: &mut BufReader<R>) -> Result<Vec<u8>, WireError> {
    let mut line = Vec::new();
    (&mut *reader)
        .take(MAX_LINE as u64 + 2)
        .read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\r\n") {
        return Err(if line.len() > MAX_LINE {
            WireError::BadChunk("line too long")
        } else {
            WireError::BadChunk("line not ended by CRLF")
        });
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn chunk_size(line: &[u8]) -> Result<u64, WireError> {
    let end = line.iter().position(|b| *b == b';').unwrap_or(line.len());
    let digits = std::str::from_utf8(&line[..end])
        .map_err(|_| WireError::BadChunk("size not hex"))?
        .trim();
    if digits.is_empty() || digits.len() > 15 {
        return Err(WireError::BadChunk("size not hex"));
    }
    u64::from_str_radix(digits, 16).map_err(|_| WireError::BadChunk("size not hex"))
}

/// Copies exactly `n` bytes, as they arrive.
fn copy_exact<R: Read, W: Write>(
    reader: &mut BufReader<R>,
    out: &mut W,
    mut n: u64,
) -> Result<(), WireError> {
    while n > 0 {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Err(WireError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        out.write_all(&buf[..take])?;
        reader.consume(take);
        n -= take as u64;
    }
    Ok(())
}

/// A writer that holds what is written until the reader it copies from
/// would block: pieces that arrive together (a chunk's size line, its data
/// and its end) leave in one write, and nothing waits for more input
/// unsent.
struct Coalescing<'a, R, W: Write> {
    reader: &'a mut BufReader<R>,
    out: io::BufWriter<W>,
}

impl<R: Read, W: Write> Coalescing<'_, R, W> {
    /// Flushes when the reader has nothing buffered, i.e. before a read
    /// that may block.
    fn ready(&mut self) -> Result<&mut BufReader<R>, WireError> {
        if self.reader.buffer().is_empty() {
            self.out.flush()?;
        }
        Ok(self.reader)
    }

    fn copy_exact(&mut self, mut n: u64) -> Result<(), WireError> {
        while n > 0 {
            self.ready()?;
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                return Err(WireError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            self.out.write_all(&buf[..take])?;
            self.reader.consume(take);
            n -= take as u64;
        }
        Ok(())
    }

    fn line(&mut self) -> Result<Vec<u8>, WireError> {
        self.ready()?;
        let line = read_line(self.reader)?;
        self.out.write_all(&line)?;
        self.out.write_all(b"\r\n")?;
        Ok(line)
    }
}

/// What a copy keeps before writing it on (see `Coalescing`).
const COPY_BUFFER: usize = 64 * 1024;

/// Copies a body from `reader` to `out` as its bytes arrive, framing kept
/// (a chunked body stays chunked), and returns once it has ended. What has
/// arrived is written on before the copy waits for more: a `logs -f`
/// stream is not held back.
pub fn copy_body<R: Read, W: Write>(
    framing: Framing,
    reader: &mut BufReader<R>,
    out: &mut W,
) -> Result<(), WireError> {
    let mut copy = Coalescing {
        reader,
        out: io::BufWriter::with_capacity(COPY_BUFFER, out),
    };
    match framing {
        Framing::Length(n) => copy.copy_exact(n)?,
        Framing::UntilClose => loop {
            copy.ready()?;
            let buf = copy.reader.fill_buf()?;
            if buf.is_empty() {
                break;
            }
            copy.out.write_all(buf)?;
            let n = buf.len();
            copy.reader.consume(n);
        },
        Framing::Chunked => loop {
            let size = chunk_size(&copy.line()?)?;
            if size == 0 {
                while !copy.line()?.is_empty() {}
                break;
            }
            copy.copy_exact(size)?;
            if !copy.line()?.is_empty() {
                return Err(WireError::BadChunk("data longer than its size"));
            }
        },
    }
    copy.out.flush()?;
    Ok(())
}

/// Reads a body whole, without its framing, refusing one above `limit`.
pub fn read_body<R: Read>(
    framing: Framing,
    reader: &mut BufReader<R>,
    limit: usize,
) -> Result<Vec<u8>, WireError> {
    let mut body = Vec::new();
    match framing {
        Framing::Length(n) => {
            if n > limit as u64 {
                return Err(WireError::BodyTooLarge(limit));
            }
            copy_exact(reader, &mut body, n)?;
        }
        Framing::UntilClose => {
            reader.take(limit as u64 + 1).read_to_end(&mut body)?;
            if body.len() > limit {
                return Err(WireError::BodyTooLarge(limit));
            }
        }
        Framing::Chunked => loop {
            let size = chunk_size(&read_line(reader)?)?;
            if size == 0 {
                while !read_line(reader)?.is_empty() {}
                break;
            }
            if body.len() as u64 + size > limit as u64 {
                return Err(WireError::BodyTooLarge(limit));
            }
            copy_exact(reader, &mut body, size)?;
            if !read_line(reader)?.is_empty() {
                return Err(WireError::BadChunk("data longer than its size"));
            }
        },
    }
    Ok(body)
}

/// A whole response with a JSON `{"message": ...}` body, as the engine
/// answers its own errors (the docker CLI prints the message).
pub fn json_error(status: u16, message: &str, close: bool) -> Vec<u8> {
    let body = serde_json::json!({ "message": message }).to_string();
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        _ => "Error",
    };
    let connection = if close { "close" } else { "keep-alive" };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

// ---------------------------------------------------------------------------
// The query string

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Form decoding: `+` is a space and `%XX` a byte. None for a bad escape
/// or bytes that are not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = hex_value(*bytes.get(i + 1)?)?;
                let lo = hex_value(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The decoded values of `name` in a query string. None if one of its
/// values cannot be decoded.
pub fn query_values(query: &str, name: &str) -> Option<Vec<String>> {
    let mut values = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(key)? == name {
            values.push(percent_decode(value)?);
        }
    }
    Some(values)
}

/// The query with every `filters` parameter merged into one that also
/// requires `label`. The engine reads `filters` as JSON in either of its
/// two shapes, `{"label": ["a=b"]}` or `{"label": {"a=b": true}}`; the
/// result is the first. None when the query cannot be read (the request is
/// then refused rather than forwarded unfiltered).
pub fn with_label_filter(query: &str, label: &str) -> Option<String> {
    use serde_json::{Map, Value};
    let mut filters: Map<String, Value> = Map::new();
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(key)? != "filters" {
            rest.push(pair.to_string());
            continue;
        }
        let text = percent_decode(value)?;
        if text.trim().is_empty() {
            continue;
        }
        let Value::Object(given) = serde_json::from_str::<Value>(&text).ok()? else {
            return None;
        };
        for (name, values) in given {
            let values: Vec<Value> = match values {
                Value::Array(list) => list,
                Value::Object(set) => set
                    .into_iter()
                    .filter(|(_, on)| on.as_bool() == Some(true))
                    .map(|(v, _)| Value::String(v))
                    .collect(),
                _ => return None,
            };
            let entry = filters
                .entry(name)
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = entry {
                list.extend(values);
            }
        }
    }
    let entry = filters
        .entry("label".to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(list) = entry {
        list.push(Value::String(label.to_string()));
    }
    let encoded = percent_encode(&Value::Object(filters).to_string());
    rest.push(format!("filters={encoded}"));
    Some(rest.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: &[u8]) -> BufReader<&[u8]> {
        BufReader::with_capacity(7, bytes)
    }

    #[test]
    fn heads_end_at_the_blank_line_even_across_reads() {
        let mut r = reader(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\nBODY");
        let head = read_head(&mut r).unwrap().unwrap();
        let req = parse_request(&head).unwrap();
        assert_eq!(req.method, "GET");
        assert_eq!(req.path(), "/_ping");
        assert_eq!(req.headers.get("host"), Some("x"));
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "BODY");
        assert!(read_head(&mut reader(b"")).unwrap().is_none());
    }

    #[test]
    fn ambiguous_lengths_are_refused() {
        let head = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(parse_request(head).unwrap().framing().is_err());
        let head = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert!(parse_request(head).unwrap().framing().is_err());
        let head = b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n";
        assert!(parse_request(head).unwrap().framing().is_err());
    }

    #[test]
    fn chunked_bodies_are_copied_with_their_framing_and_read_without() {
        let body = b"4\r\nabcd\r\n3;x=y\r\nefg\r\n0\r\nT: v\r\n\r\nNEXT";
        let mut out = Vec::new();
        let mut r = reader(body);
        copy_body(Framing::Chunked, &mut r, &mut out).unwrap();
        assert_eq!(out, &body[..body.len() - 4]);
        let mut r = reader(body);
        assert_eq!(
            read_body(Framing::Chunked, &mut r, 100).unwrap(),
            b"abcdefg"
        );
        let mut r = reader(body);
        assert!(matches!(
            read_body(Framing::Chunked, &mut r, 5),
            Err(WireError::BodyTooLarge(5))
        ));
        let mut r = reader(b"2\r\nabc\r\n0\r\n\r\n");
        assert!(copy_body(Framing::Chunked, &mut r, &mut Vec::new()).is_err());
    }

    #[test]
    fn label_filters_merge_into_both_shapes() {
        let q = "all=1&filters=%7B%22label%22%3A%7B%22a%3Db%22%3Atrue%7D%2C%22status%22%3A%5B%22exited%22%5D%7D";
        let merged = with_label_filter(q, "agent.job=J").unwrap();
        let filters = &query_values(&merged, "filters").unwrap()[0];
        let v: serde_json::Value = serde_json::from_str(filters).unwrap();
        assert_eq!(v["label"], serde_json::json!(["a=b", "agent.job=J"]));
        assert_eq!(v["status"], serde_json::json!(["exited"]));
        assert!(merged.starts_with("all=1&"));
        let none = with_label_filter("", "agent.job=J").unwrap();
        assert_eq!(
            percent_decode(none.strip_prefix("filters=").unwrap()).unwrap(),
            r#"{"label":["agent.job=J"]}"#
        );
        assert!(with_label_filter("filters=%7Bnot-json", "x").is_none());
        assert!(with_label_filter("filters=%ZZ", "x").is_none());
    }
}
