//! Request heads: [`plan_request`] validates a complete head against what
//! `tiny_http` would mishandle and the front's limits, and rewrites it for
//! `tiny_http` ([`Plan`]); what it refuses becomes a [`Rejection`], which the
//! front answers itself.

use std::net::SocketAddr;

use super::framing::Expect;
use super::PEER_HEADER;

/// The index just past the blank line that ends a request head.
pub(super) fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// A request the front answers itself, with a JSON `{"message": ...}` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rejection {
    pub(super) status: u16,
    pub(super) message: String,
}

impl Rejection {
    fn bad_request(message: &str) -> Rejection {
        Rejection {
            status: 400,
            message: format!("bad request: {message}"),
        }
    }

    pub(super) fn head_too_large(limit: usize) -> Rejection {
        Rejection {
            status: 431,
            message: format!("request head too large: limit {limit} bytes"),
        }
    }

    fn body_too_large(declared: &str, limit: u64) -> Rejection {
        let digits = declared.trim_start_matches('0');
        let declared = match digits.len() {
            0 => "0".to_string(),
            1..=20 => digits.to_string(),
            _ => format!("more than {}", u64::MAX),
        };
        Rejection {
            status: 413,
            message: format!("request body too large: {declared} bytes, limit {limit}"),
        }
    }

    fn chunked_body() -> Rejection {
        Rejection {
            status: 411,
            message: "Transfer-Encoding is not supported; send the body with Content-Length"
                .to_string(),
        }
    }

    fn expectation(value: &str) -> Rejection {
        Rejection {
            status: 417,
            message: format!("unsupported expectation: {value}"),
        }
    }

    fn version(version: &str) -> Rejection {
        Rejection {
            status: 505,
            message: format!("unsupported HTTP version {version}; use HTTP/1.1"),
        }
    }

    pub(super) fn response(&self) -> Vec<u8> {
        let body = serde_json::json!({ "message": self.message }).to_string();
        let reason = match self.status {
            400 => "Bad Request",
            411 => "Length Required",
            413 => "Payload Too Large",
            417 => "Expectation Failed",
            431 => "Request Header Fields Too Large",
            505 => "HTTP Version Not Supported",
            _ => "Error",
        };
        format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.status,
            body.len()
        )
        .into_bytes()
    }
}

/// A request head as it goes to `tiny_http`.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) head: Vec<u8>,
    pub(super) body_len: u64,
    pub(super) keep_alive: bool,
    pub(super) expect: Expect,
}

fn push_header(head: &mut String, name: &str, value: &str) {
    head.push_str(name);
    head.push_str(": ");
    head.push_str(value);
    head.push_str("\r\n");
}

/// `token` characters of RFC 9110 §5.6.2.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Validates a complete request head (ending with the blank line) and
/// rewrites it for `tiny_http`, or says how to refuse it.
///
/// The rewrite drops hop-by-hop headers, which are ours to act on (and some
/// would mislead `tiny_http`: `Connection: upgrade` hands it the raw stream,
/// `TE: identity` makes it buffer a streamed response whole), drops any
/// client-sent `X-Agent-Peer`, and adds the real one and `Connection: close`.
///
/// A request with a body always goes to `tiny_http` with `Expect:
/// 100-continue`, whatever the client sent: `tiny_http` then answers `100`
/// only when a handler starts reading the body, which the API does after
/// authenticating the request, and the front forwards no byte of a body
/// before that `100` (see `conn.rs`). The `100` reaches the client only if it
/// asked for one.
pub(super) fn plan_request(
    head: &[u8],
    peer: SocketAddr,
    max_body: u64,
) -> Result<Plan, Rejection> {
    let Some(head) = head.strip_suffix(b"\r\n\r\n") else {
        return Err(Rejection::bad_request("incomplete request head"));
    };
    // `tiny_http` drops the connection without an answer on non-ASCII heads.
    let printable = |byte: &u8| matches!(byte, b'\t' | b'\r' | b'\n' | 0x20..=0x7e);
    if !head.iter().all(printable) {
        return Err(Rejection::bad_request(
            "request head has bytes that are not printable ASCII",
        ));
    }
    let Ok(head) = std::str::from_utf8(head) else {
        return Err(Rejection::bad_request("request head is not ASCII"));
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    if request_line.contains(['\r', '\n', '\t']) {
        return Err(Rejection::bad_request("malformed request line"));
    }
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::bad_request("malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(is_tchar) || target.is_empty() {
        return Err(Rejection::bad_request("malformed request line"));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => {
            let well_formed = version.len() == 8
                && version.starts_with("HTTP/")
                && version.as_bytes()[5].is_ascii_digit()
                && version.as_bytes()[6] == b'.'
                && version.as_bytes()[7].is_ascii_digit();
            return Err(if well_formed {
                Rejection::version(version)
            } else {
                Rejection::bad_request("malformed HTTP version")
            });
        }
    };

    let mut kept = String::new();
    let mut content_length: Option<&str> = None;
    let mut transfer_encoding = false;
    let mut connection_close = false;
    let mut client_expects_continue = false;
    for line in lines {
        if line.starts_with([' ', '\t']) {
            return Err(Rejection::bad_request("obsolete header line folding"));
        }
        if line.contains(['\r', '\n']) {
            return Err(Rejection::bad_request("bare CR or LF in a header"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(Rejection::bad_request("header line without a colon"));
        };
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(Rejection::bad_request("malformed header name"));
        }
        let value = value.trim_matches([' ', '\t']);
        let is = |wanted: &str| name.eq_ignore_ascii_case(wanted);
        if is("content-length") {
            if value.is_empty() || !value.bytes().all(|byte| byte.is_ascii_digit()) {
                return Err(Rejection::bad_request("malformed Content-Length"));
            }
            if let Some(previous) = content_length {
                if previous.trim_start_matches('0') != value.trim_start_matches('0') {
                    return Err(Rejection::bad_request("conflicting Content-Length headers"));
                }
            }
            content_length = Some(value);
        } else if is("transfer-encoding") {
            transfer_encoding = true;
        } else if is("connection") {
            connection_close |= value
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("close"));
        } else if is("expect") {
            if !value.eq_ignore_ascii_case("100-continue") {
                return Err(Rejection::expectation(value));
            }
            // An HTTP/1.0 client must not get a 100 Continue.
            client_expects_continue = !http10;
        } else if is("keep-alive")
            || is("proxy-connection")
            || is("upgrade")
            || is("te")
            || is("trailer")
            || is(PEER_HEADER)
        {
            // Hop-by-hop, or ours to set.
        } else {
            push_header(&mut kept, name, value);
        }
    }
    if transfer_encoding {
        // A chunked body would need a second parser here and invites request
        // smuggling; every client of the agent sends Content-Length.
        return Err(Rejection::chunked_body());
    }
    let body_len = match content_length {
        None => 0,
        Some(declared) => match declared.parse::<u64>() {
            Ok(len) if len <= max_body => len,
            _ => return Err(Rejection::body_too_large(declared, max_body)),
        },
    };
    let keep_alive = !http10 && !connection_close;

    let mut forwarded = format!("{method} {target} HTTP/1.1\r\n{kept}");
    if content_length.is_some() {
        push_header(&mut forwarded, "Content-Length", &body_len.to_string());
    }
    if body_len > 0 {
        push_header(&mut forwarded, "Expect", "100-continue");
    }
    // Every request gets a `tiny_http` connection of its own (see the module
    // doc); `keep_alive` is about the client's connection only.
    push_header(&mut forwarded, "Connection", "close");
    push_header(&mut forwarded, PEER_HEADER, &peer.to_string());
    forwarded.push_str("\r\n");
    Ok(Plan {
        head: forwarded.into_bytes(),
        body_len,
        keep_alive,
        expect: Expect {
            head_request: method == "HEAD",
            dechunk: http10,
            relay_continue: client_expects_continue && body_len > 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "192.0.2.7:4242".parse().unwrap()
    }

    #[test]
    fn plan_rewrites_hop_by_hop_headers_and_adds_the_peer() {
        let plan = plan_request(
            b"POST /jobs HTTP/1.1\r\nHost: a\r\nX-Agent-Peer: 6.6.6.6:6\r\n\
              Connection: Upgrade, close\r\nUpgrade: websocket\r\nTE: identity\r\n\
              Content-Length: 007\r\nContent-Length: 7\r\nAuthorization:  Bearer t \r\n\r\n",
            peer(),
            100,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(plan.head).unwrap(),
            "POST /jobs HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\n\
             Content-Length: 7\r\nExpect: 100-continue\r\nConnection: close\r\n\
             X-Agent-Peer: 192.0.2.7:4242\r\n\r\n"
        );
        assert_eq!(plan.body_len, 7);
        assert!(!plan.keep_alive);
        assert_eq!(
            plan.expect,
            Expect {
                head_request: false,
                dechunk: false,
                relay_continue: false,
            }
        );
        // The client's own expectation decides only whether it sees the 100.
        let plan = plan_request(
            b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            peer(),
            100,
        )
        .unwrap();
        assert!(plan.expect.relay_continue);
        assert_eq!(
            String::from_utf8(plan.head).unwrap(),
            "PUT /x HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\
             Connection: close\r\nX-Agent-Peer: 192.0.2.7:4242\r\n\r\n"
        );

        let plan = plan_request(
            b"HEAD / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n",
            peer(),
            100,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(plan.head).unwrap(),
            "HEAD / HTTP/1.1\r\nConnection: close\r\nX-Agent-Peer: 192.0.2.7:4242\r\n\r\n"
        );
        assert_eq!(
            plan.expect,
            Expect {
                head_request: true,
                dechunk: true,
                relay_continue: false,
            }
        );
        // The client's connection stays open; `tiny_http`'s carries just this.
        let plan = plan_request(b"GET / HTTP/1.1\r\n\r\n", peer(), 100).unwrap();
        assert!(plan.keep_alive);
        assert_eq!(plan.body_len, 0);
        assert_eq!(
            String::from_utf8(plan.head).unwrap(),
            "GET / HTTP/1.1\r\nConnection: close\r\nX-Agent-Peer: 192.0.2.7:4242\r\n\r\n"
        );
    }

    #[test]
    fn plan_refuses_what_tiny_http_would_mishandle() {
        let cases: [(&[u8], u16); 9] = [
            (b"GET / HTTP/1.1\r\n Folded: x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nA: 1\nB: 2\r\n\r\n", 400),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (b"GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", 413),
            (
                b"GET / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
                411,
            ),
            (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
            (b"GET  / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/9\r\n\r\n", 400),
        ];
        for (head, status) in cases {
            let refusal = plan_request(head, peer(), 100).unwrap_err();
            assert_eq!(refusal.status, status, "{}", String::from_utf8_lossy(head));
        }
        let refusal = plan_request(
            b"PUT / HTTP/1.1\r\nContent-Length: 000123456789012345678901234567890\r\n\r\n",
            peer(),
            100,
        )
        .unwrap_err();
        assert_eq!(
            refusal.message,
            "request body too large: more than 18446744073709551615 bytes, limit 100"
        );
    }

    #[test]
    fn a_client_that_expects_100_without_a_body_gets_none() {
        // No body to send after a 100: neither the client nor `tiny_http`
        // waits for one.
        let plan = plan_request(
            b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
            peer(),
            100,
        )
        .unwrap();
        assert_eq!(plan.body_len, 0);
        assert!(!plan.expect.relay_continue);
        assert_eq!(
            String::from_utf8(plan.head).unwrap(),
            "PUT /x HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\
             X-Agent-Peer: 192.0.2.7:4242\r\n\r\n"
        );
    }

    #[test]
    fn find_head_end_points_past_the_blank_line() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn plan_keeps_expect_for_http_1_1_and_drops_every_hop_by_hop_header() {
        let plan = plan_request(
            b"PUT /x HTTP/1.1\r\nExpect: 100-Continue\r\nKeep-Alive: 5\r\n\
              Proxy-Connection: keep-alive\r\nTrailer: X\r\nContent-Length: 100\r\n\
              Connection: close\r\nConnection: close\r\n\r\n",
            peer(),
            100,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(plan.head).unwrap(),
            "PUT /x HTTP/1.1\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\
             Connection: close\r\nX-Agent-Peer: 192.0.2.7:4242\r\n\r\n"
        );
        // A body of exactly the limit is accepted.
        assert_eq!(plan.body_len, 100);
        assert!(!plan.keep_alive);
        // HTTP/1.0 closes after one exchange, even without `Connection`.
        let plan = plan_request(b"GET / HTTP/1.0\r\n\r\n", peer(), 100).unwrap();
        assert!(!plan.keep_alive);
    }

    #[test]
    fn refusals_say_why() {
        let cases: [(&[u8], u16, &str); 17] = [
            (
                b"GET / HTTP/1.1\r\n",
                400,
                "bad request: incomplete request head",
            ),
            (
                b"GET / HTTP/1.1\r\nA: \xc3\xa9\r\n\r\n",
                400,
                "bad request: request head has bytes that are not printable ASCII",
            ),
            (
                b"GET /\nx HTTP/1.1\r\n\r\n",
                400,
                "bad request: malformed request line",
            ),
            (
                b"GET /\rx HTTP/1.1\r\n\r\n",
                400,
                "bad request: malformed request line",
            ),
            (
                b"G@T / HTTP/1.1\r\n\r\n",
                400,
                "bad request: malformed request line",
            ),
            (
                b" / HTTP/1.1\r\n\r\n",
                400,
                "bad request: malformed request line",
            ),
            (
                b"GET / HTTP/1.2\r\n\r\n",
                505,
                "unsupported HTTP version HTTP/1.2; use HTTP/1.1",
            ),
            (
                b"GET / HTTP/1.10\r\n\r\n",
                400,
                "bad request: malformed HTTP version",
            ),
            (
                b"GET / HTTPS1.1\r\n\r\n",
                400,
                "bad request: malformed HTTP version",
            ),
            (
                b"GET / HTTP/x.1\r\n\r\n",
                400,
                "bad request: malformed HTTP version",
            ),
            (
                b"GET / HTTP/1x1\r\n\r\n",
                400,
                "bad request: malformed HTTP version",
            ),
            (
                b"GET / HTTP/1.x\r\n\r\n",
                400,
                "bad request: malformed HTTP version",
            ),
            (
                b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
                400,
                "bad request: malformed header name",
            ),
            (
                b"GET / HTTP/1.1\r\n: x\r\n\r\n",
                400,
                "bad request: malformed header name",
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: \r\n\r\n",
                400,
                "bad request: malformed Content-Length",
            ),
            (
                b"GET / HTTP/1.1\r\nExpect: x\r\n\r\n",
                417,
                "unsupported expectation: x",
            ),
            (
                b"PUT / HTTP/1.1\r\nContent-Length: 0101\r\n\r\n",
                413,
                "request body too large: 101 bytes, limit 100",
            ),
        ];
        for (head, status, message) in cases {
            let refusal = plan_request(head, peer(), 100).unwrap_err();
            let head = String::from_utf8_lossy(head);
            assert_eq!(
                (refusal.status, refusal.message.as_str()),
                (status, message),
                "{head}"
            );
        }
        let refusal = plan_request(
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            peer(),
            100,
        )
        .unwrap_err();
        assert_eq!(
            refusal.message,
            "Transfer-Encoding is not supported; send the body with Content-Length"
        );
    }

    #[test]
    fn a_refusal_is_a_complete_response_that_closes() {
        let body = r#"{"message":"request head too large: limit 8192 bytes"}"#;
        assert_eq!(
            String::from_utf8(Rejection::head_too_large(8192).response()).unwrap(),
            format!(
                "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        );
        let reasons = [
            (400, "Bad Request"),
            (411, "Length Required"),
            (413, "Payload Too Large"),
            (417, "Expectation Failed"),
            (505, "HTTP Version Not Supported"),
        ];
        for (status, reason) in reasons {
            let rejection = Rejection {
                status,
                message: String::new(),
            };
            let response = String::from_utf8(rejection.response()).unwrap();
            assert!(
                response.starts_with(&format!("HTTP/1.1 {status} {reason}\r\n")),
                "{response}"
            );
        }
    }
}
