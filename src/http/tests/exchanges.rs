//! Requests forwarded to `tiny_http` and answered: keep-alive, HEAD,
//! HTTP/1.0, pipelining, bursts of clients, long downloads.

use super::*;

#[test]
fn keep_alive_get_and_post_share_one_connection() {
    let harness = harness(test_config());
    let agent = client(&harness);
    let (status, peer) = get_text(&agent, &url(&harness, "/peer"));
    assert_eq!(status, 200);
    assert!(peer.starts_with("127.0.0.1:"), "{peer}");

    let mut response = agent
        .post(&url(&harness, "/echo"))
        .header(PEER_HEADER, "6.6.6.6:6")
        .send("ping")
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // Same port: the same connection; one value: the spoofed one is gone.
    let seen = response.headers()["X-Seen-Peer"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(seen, peer);
    assert_eq!(response.body_mut().read_to_string().unwrap(), "ping");
}

#[test]
fn head_response_keeps_the_connection_usable() {
    let harness = harness(test_config());
    let agent = client(&harness);
    let (_, first) = get_text(&agent, &url(&harness, "/peer"));
    let response = agent
        .head(&url(&harness, "/stream?bytes=1000"))
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let (_, second) = get_text(&agent, &url(&harness, "/peer"));
    assert_eq!(first, second);
}

#[test]
fn slow_but_steady_download_completes() {
    let _serial = serial();
    let harness = harness(FrontConfig {
        write_stall_timeout: Duration::from_millis(300),
        ..test_config()
    });
    let total: u64 = 32 * 1024 * 1024;
    let agent = client(&harness);
    let started = Instant::now();
    let response = agent
        .get(&url(&harness, &format!("/stream?bytes={total}")))
        .call()
        .unwrap();
    let mut reader = response.into_body().into_reader();
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for (i, &byte) in buf[..n].iter().enumerate() {
            assert_eq!(
                byte,
                pattern_byte(offset + i as u64),
                "at {}",
                offset + i as u64
            );
        }
        offset += n as u64;
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(offset, total);
    // Several stall timeouts long, yet never cut off.
    assert!(started.elapsed() > Duration::from_millis(1200));
    let done = harness
        .streams
        .recv_timeout(Duration::from_secs(5))
        .unwrap();
    assert_eq!(done.produced, total);
}

#[test]
fn http10_client_gets_a_dechunked_stream() {
    let harness = harness(test_config());
    let mut stream = raw_client(&harness);
    stream
        .write_all(b"GET /stream?bytes=100000 HTTP/1.0\r\n\r\n")
        .unwrap();
    let answer = read_until_close(&mut stream);
    let split = find_head_end(&answer).unwrap();
    let head = String::from_utf8_lossy(&answer[..split]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    let body = &answer[split..];
    assert_eq!(body.len(), 100_000);
    assert!(body
        .iter()
        .enumerate()
        .all(|(i, &byte)| byte == pattern_byte(i as u64)));
}

/// `tiny_http`'s task pool can leave a connection queued until another
/// of its connections ends; with one request per upstream connection
/// that is the end of some request, never an idle client's timeout.
#[test]
fn burst_of_keep_alive_clients_is_served_at_once() {
    let _serial = serial();
    let harness = harness(test_config());
    let clients = 80;
    let barrier = Arc::new(std::sync::Barrier::new(clients + 1));
    let (done_tx, done_rx) = mpsc::channel();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            let done_tx = done_tx.clone();
            let addr = harness.addr;
            let cert_der = harness.cert_der.clone();
            thread::spawn(move || {
                barrier.wait();
                let started = Instant::now();
                let stream = try_raw_tls(addr, &cert_der).unwrap();
                let mut reader = io::BufReader::new(stream);
                reader
                    .get_mut()
                    .write_all(b"GET /hello HTTP/1.1\r\n\r\n")
                    .unwrap();
                let answer = read_response(&mut reader);
                done_tx.send((answer, started.elapsed())).unwrap();
                // Keep the connection open (idle) until the test ends.
                barrier.wait();
            })
        })
        .collect();
    barrier.wait();
    let mut slowest = Duration::ZERO;
    for _ in 0..clients {
        let (answer, elapsed) = done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a client was never answered");
        assert_eq!(answer, (200, b"hello".to_vec()));
        slowest = slowest.max(elapsed);
    }
    assert!(slowest < Duration::from_secs(2), "slowest took {slowest:?}");
    // Every client is still connected, and none holds a `tiny_http`
    // connection (or task).
    assert_eq!(harness.front.open_connections(), clients);
    assert!(wait_until(Duration::from_secs(2), || harness
        .front
        .open_upstreams()
        == 0));
    barrier.wait();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn idle_keep_alive_client_holds_no_upstream_connection() {
    let _serial = serial();
    let harness = harness(test_config());
    let mut stream = raw_client(&harness);
    // Over 1 KiB, which `tiny_http` does not read eagerly; under 32 KiB,
    // above which it would answer chunked.
    let body = vec![b'x'; 20_000];
    let mut request = format!(
        "POST /echo HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    stream.write_all(&request).unwrap();
    let mut reader = io::BufReader::new(stream);
    let (status, echoed) = read_response(&mut reader);
    assert!(
        status == 200 && echoed == body,
        "{status}, {} bytes",
        echoed.len()
    );
    reader
        .get_mut()
        .write_all(b"GET /hello HTTP/1.1\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut reader), (200, b"hello".to_vec()));
    // The client stays connected, idle: no `tiny_http` connection left.
    assert!(wait_until(Duration::from_secs(2), || harness
        .front
        .open_upstreams()
        == 0));
    assert_eq!(harness.front.open_connections(), 1);
    // A download in flight holds exactly one, and the connection goes on.
    reader
        .get_mut()
        .write_all(b"GET /stream?bytes=10000000 HTTP/1.1\r\n\r\n")
        .unwrap();
    assert!(wait_until(Duration::from_secs(2), || harness
        .front
        .open_upstreams()
        == 1));
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    let mut received = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let size = usize::from_str_radix(line.trim_end(), 16).unwrap();
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).unwrap();
        received += size;
        if size == 0 {
            break;
        }
    }
    assert_eq!(received, 10_000_000);
    assert!(wait_until(Duration::from_secs(2), || harness
        .front
        .open_upstreams()
        == 0));
    reader
        .get_mut()
        .write_all(b"GET /hello HTTP/1.1\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut reader), (200, b"hello".to_vec()));
    assert_eq!(harness.front.open_connections(), 1);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let harness = harness(test_config());
    let mut stream = raw_client(&harness);
    let big = vec![b'y'; 5000];
    let mut requests = b"GET /hello HTTP/1.1\r\n\r\n\
        POST /echo HTTP/1.1\r\nContent-Length: 4\r\n\r\nping\
        \r\nGET /nowhere HTTP/1.1\r\n\r\n"
        .to_vec();
    requests.extend_from_slice(
        format!(
            "POST /echo HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    );
    requests.extend_from_slice(&big);
    requests.extend_from_slice(b"GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n");
    stream.write_all(&requests).unwrap();
    let answer = read_until_close(&mut stream);
    let mut reader = io::BufReader::new(&answer[..]);
    assert_eq!(read_response(&mut reader), (200, b"hello".to_vec()));
    assert_eq!(read_response(&mut reader), (200, b"ping".to_vec()));
    assert_eq!(read_response(&mut reader).0, 404);
    let (status, echoed) = read_response(&mut reader);
    assert!(
        status == 200 && echoed == big,
        "{status}, {} bytes",
        echoed.len()
    );
    assert_eq!(read_response(&mut reader), (200, b"hello".to_vec()));
    assert!(reader.fill_buf().unwrap().is_empty());
    assert!(wait_until(Duration::from_secs(2), || harness
        .front
        .open_upstreams()
        == 0));
}

#[test]
fn pipelined_requests_before_a_half_close_are_all_answered() {
    let harness = harness(test_config());
    let mut stream = raw_client(&harness);
    stream
        .write_all(
            b"GET /hello HTTP/1.1\r\n\r\n\
              POST /echo HTTP/1.1\r\nContent-Length: 4\r\n\r\npong\
              GET /hello HTTP/1.1\r\n\r\n",
        )
        .unwrap();
    stream.conn.send_close_notify();
    stream.flush().unwrap();
    stream.sock.shutdown(Shutdown::Write).unwrap();
    let answer = read_until_close(&mut stream);
    let mut reader = io::BufReader::new(&answer[..]);
    assert_eq!(read_response(&mut reader), (200, b"hello".to_vec()));
    assert_eq!(read_response(&mut reader), (200, b"pong".to_vec()));
    assert_eq!(read_response(&mut reader), (200, b"hello".to_vec()));
    assert!(reader.fill_buf().unwrap().is_empty());
}

/// What the front relies on: asked with `Connection: close`, `tiny_http`
/// frames its response (`Content-Length` or chunked), adds no
/// `Connection` header of its own (the front passes response heads on,
/// and one would end the client's keep-alive), and then closes.
#[test]
fn tiny_http_answers_connection_close_with_a_framed_response_then_closes() {
    let harness = harness(test_config());
    let exchange = |request: &[u8]| {
        let mut up = UnixStream::connect(harness.front.socket_path()).unwrap();
        up.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        up.write_all(request).unwrap();
        // Reads to the end: times out (and fails) unless `tiny_http` closes.
        let mut answer = Vec::new();
        up.read_to_end(&mut answer).unwrap();
        let split = find_head_end(&answer).unwrap();
        let head = String::from_utf8(answer[..split].to_vec()).unwrap();
        assert!(
            !head.to_ascii_lowercase().contains("\r\nconnection:"),
            "{head}"
        );
        (head, answer[split..].to_vec())
    };
    let has = |head: &str, header: &str| head.to_ascii_lowercase().contains(header);
    let (head, body) = exchange(b"GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(has(&head, "\r\ncontent-length: 5\r\n"), "{head}");
    assert_eq!(body, b"hello");

    let mut post =
        b"POST /echo HTTP/1.1\r\nConnection: close\r\nContent-Length: 3000\r\n\r\n".to_vec();
    post.extend(std::iter::repeat_n(b'z', 3000));
    let (head, body) = exchange(&post);
    assert!(has(&head, "\r\ncontent-length: 3000\r\n"), "{head}");
    assert_eq!(body.len(), 3000);

    let (head, body) = exchange(b"GET /stream?bytes=100 HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(has(&head, "\r\ntransfer-encoding: chunked\r\n"), "{head}");
    let mut framer = ResponseFramer::default();
    framer.expect(Expect {
        head_request: false,
        dechunk: true,
        relay_continue: false,
    });
    let mut out = Vec::new();
    framer.feed(head.as_bytes(), &mut out).unwrap();
    assert!(framer.feed(&body, &mut out).is_ok() && framer.is_idle());
    let dechunked = &out[find_head_end(&out).unwrap()..];
    assert!(dechunked
        .iter()
        .enumerate()
        .all(|(i, &byte)| byte == pattern_byte(i as u64)));
    assert_eq!(dechunked.len(), 100);

    let (head, body) = exchange(b"HEAD /stream?bytes=100 HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(has(&head, "\r\ntransfer-encoding: chunked\r\n"), "{head}");
    assert!(body.is_empty());
}
