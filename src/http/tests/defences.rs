//! What the front refuses or cuts off, and what it contains: bad or oversized
//! heads, slow clients, stalled readers, the connection cap, panics, stop.

use super::*;

#[test]
fn huge_content_length_gets_413_without_allocating() {
    let _serial = serial();
    let harness = harness(test_config());
    let rss_before = vm_rss_kib();
    let (status, message) = exchange(
        &harness,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
    );
    let rss_after = vm_rss_kib();
    assert_eq!(status, 413);
    assert_eq!(
        message,
        "request body too large: 99999999999 bytes, limit 1048576"
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    let (status, body) = get_text(&client(&harness), &url(&harness, "/hello"));
    assert_eq!((status, body.as_str()), (200, "hello"));
}

#[test]
fn refused_heads_get_json_answers() {
    let harness = harness(test_config());
    let cases: [(&[u8], u16, &str); 6] = [
        (
            b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            411,
            "Transfer-Encoding",
        ),
        (b"GET / HTTP/2.0\r\n\r\n", 505, "HTTP/2.0"),
        (b"GET /\r\n\r\n", 400, "request line"),
        (b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400, "header name"),
        (b"GET / HTTP/1.1\r\nX: caf\xc3\xa9\r\n\r\n", 400, "ASCII"),
        (
            b"POST /echo HTTP/1.1\r\nExpect: magic\r\n\r\n",
            417,
            "magic",
        ),
    ];
    for (request, want_status, want_text) in cases {
        let (status, message) = exchange(&harness, request);
        assert_eq!(status, want_status, "{message}");
        assert!(message.contains(want_text), "{message}");
    }
    let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let (status, message) = exchange(&harness, &big);
    assert_eq!(status, 431);
    assert_eq!(message, "request head too large: limit 8192 bytes");
}

#[test]
fn refusal_waits_for_earlier_pipelined_responses() {
    let harness = harness(test_config());
    let mut stream = raw_client(&harness);
    stream
        .write_all(
            b"GET /hello HTTP/1.1\r\n\r\n\
              POST /echo HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
        )
        .unwrap();
    let answer = read_until_close(&mut stream);
    let mut reader = io::BufReader::new(&answer[..]);
    assert_eq!(read_response(&mut reader), (200, b"hello".to_vec()));
    assert_eq!(read_response(&mut reader).0, 413);
}

#[test]
fn idle_tcp_connections_do_not_starve_a_real_client() {
    let _serial = serial();
    let harness = harness(FrontConfig {
        handshake_timeout: Duration::from_secs(3),
        ..test_config()
    });
    let mut idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(harness.addr).unwrap())
        .collect();
    assert!(wait_until(Duration::from_secs(2), || harness
        .front
        .open_connections()
        >= 200));
    assert_served_quickly(&harness);
    // Each is closed at its handshake deadline.
    for stream in &mut idle {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 16];
        assert!(closed_by_peer(&stream.read(&mut buf)));
    }
}

#[test]
fn dripping_head_is_dropped_at_the_head_deadline() {
    let _serial = serial();
    let harness = harness(test_config());
    let mut stream = raw_client(&harness);
    stream
        .sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let dripper = thread::spawn(move || {
        let started = Instant::now();
        let mut buf = [0u8; 64];
        for &byte in b"GET /hello HTTP/1.1\r\nX-Slow: ".iter().cycle().take(100) {
            if stream.write_all(&[byte]).is_err() {
                return started.elapsed();
            }
            // Doubles as the 200 ms pause between bytes.
            if closed_by_peer(&stream.read(&mut buf)) {
                return started.elapsed();
            }
        }
        panic!("the dripping client was never dropped");
    });
    thread::sleep(Duration::from_millis(300));
    assert_served_quickly(&harness);
    let dropped_after = dripper.join().unwrap();
    assert!(
        dropped_after >= Duration::from_millis(900) && dropped_after < Duration::from_secs(3),
        "dropped after {dropped_after:?}"
    );
}

#[test]
fn slow_body_is_dropped_at_the_body_deadline() {
    let harness = harness(test_config());
    let mut stream = raw_client(&harness);
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    let started = Instant::now();
    let _ = read_until_close(&mut stream);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
        "dropped after {elapsed:?}"
    );
}

#[test]
fn idle_keep_alive_connection_is_closed() {
    let harness = harness(FrontConfig {
        idle_timeout: Duration::from_millis(500),
        ..test_config()
    });
    let mut stream = raw_client(&harness);
    stream.write_all(b"GET /hello HTTP/1.1\r\n\r\n").unwrap();
    let mut reader = io::BufReader::new(&mut stream);
    assert_eq!(read_response(&mut reader), (200, b"hello".to_vec()));
    let started = Instant::now();
    let rest = read_until_close(&mut stream);
    let elapsed = started.elapsed();
    assert!(rest.is_empty());
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(3),
        "closed after {elapsed:?}"
    );
}

#[test]
fn stalled_reader_is_cut_off_without_blocking_others() {
    let _serial = serial();
    let harness = harness(test_config());
    let total = 100_000_000;
    let mut stalled = raw_client(&harness);
    stalled
        .write_all(format!("GET /stream?bytes={total} HTTP/1.1\r\n\r\n").as_bytes())
        .unwrap();
    stalled.flush().unwrap();
    // Give the kernel buffers time to fill, then check others are served.
    thread::sleep(Duration::from_millis(300));
    assert_served_quickly(&harness);
    let done = harness
        .streams
        .recv_timeout(Duration::from_secs(15))
        .expect("the stalled download was never cut off");
    assert_eq!(done.requested, total);
    assert!(done.produced < total, "{done:?}");
    assert!(wait_until(Duration::from_secs(5), || harness
        .front
        .open_connections()
        == 0));
    drop(stalled);
}

#[test]
fn connections_over_the_cap_are_closed_at_once() {
    let harness = harness(FrontConfig {
        max_connections: 3,
        ..test_config()
    });
    let mut held: Vec<io::BufReader<RawTls>> = (0..3)
        .map(|_| {
            let mut stream = raw_client(&harness);
            stream.write_all(b"GET /hello HTTP/1.1\r\n\r\n").unwrap();
            let mut reader = io::BufReader::new(stream);
            assert_eq!(read_response(&mut reader).0, 200);
            reader
        })
        .collect();

    let started = Instant::now();
    let refused = try_raw_client(&harness);
    assert!(refused.is_err(), "a fourth connection was served");
    assert!(started.elapsed() < Duration::from_secs(1));

    // The admitted ones are unaffected.
    held[0]
        .get_mut()
        .write_all(b"GET /hello HTTP/1.1\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut held[0]), (200, b"hello".to_vec()));

    drop(held.pop());
    assert!(wait_until(Duration::from_secs(5), || harness
        .front
        .open_connections()
        < 3));
    let (status, _) = get_text(&client(&harness), &url(&harness, "/hello"));
    assert_eq!(status, 200);
}

#[test]
fn a_body_is_forwarded_only_once_a_handler_reads_it() {
    let harness = harness(test_config());
    // `/hello` answers without reading: the body is not asked for, no
    // `100 Continue` is sent, and the connection closes after the answer.
    let mut stream = raw_client(&harness);
    stream
        .write_all(
            b"POST /hello HTTP/1.1\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap();
    let answer = String::from_utf8(read_until_close(&mut stream)).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(
        answer.ends_with("hello") && !answer.contains(" 100 "),
        "{answer}"
    );

    // `/echo` reads it: a client that expects `100 Continue` gets it, then
    // the answer, and the connection stays usable.
    let mut reader = io::BufReader::new(raw_client(&harness));
    reader
        .get_mut()
        .write_all(b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let mut interim = String::new();
    while !interim.ends_with("\r\n\r\n") {
        assert!(reader.read_line(&mut interim).unwrap() > 0);
    }
    assert!(interim.starts_with("HTTP/1.1 100 "), "{interim}");
    reader.get_mut().write_all(b"abcde").unwrap();
    assert_eq!(read_response(&mut reader), (200, b"abcde".to_vec()));
    reader
        .get_mut()
        .write_all(b"GET /hello HTTP/1.1\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut reader), (200, b"hello".to_vec()));
}

/// Whether the front closed a bare TCP connection (which sent nothing).
fn bare_closed(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let closed = match (&*stream).read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => err.kind() != io::ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

#[test]
fn an_address_holds_few_pending_connections() {
    let harness = harness(FrontConfig {
        max_pending_per_address: 3,
        ..test_config()
    });
    // Bare TCP connections that never start TLS: the fourth of one address
    // makes its oldest close, and a new client of that address is served.
    let bare: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(harness.addr).unwrap())
        .collect();
    assert!(wait_until(Duration::from_secs(5), || bare_closed(&bare[0])));
    assert!(bare[1..].iter().all(|stream| !bare_closed(stream)));
    let (status, body) = get_text(&client(&harness), &url(&harness, "/hello"));
    assert_eq!((status, body.as_str()), (200, "hello"));
    assert!(wait_until(Duration::from_secs(5), || bare_closed(&bare[1])));
}

#[test]
fn an_address_holds_at_most_its_share_of_connections() {
    let harness = harness(FrontConfig {
        max_per_address: 2,
        ..test_config()
    });
    let mut serving: Vec<io::BufReader<RawTls>> = (0..2)
        .map(|_| {
            let mut reader = io::BufReader::new(raw_client(&harness));
            reader
                .get_mut()
                .write_all(b"GET /hello HTTP/1.1\r\n\r\n")
                .unwrap();
            assert_eq!(read_response(&mut reader).0, 200);
            reader
        })
        .collect();
    // Both serve: a third connection of the address is closed at once.
    assert!(try_raw_client(&harness).is_err());
    serving[1]
        .get_mut()
        .write_all(b"GET /hello HTTP/1.1\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut serving[1]), (200, b"hello".to_vec()));
    drop(serving.pop());
    assert!(wait_until(Duration::from_secs(5), || harness
        .front
        .open_connections()
        < 2));
    let (status, _) = get_text(&client(&harness), &url(&harness, "/hello"));
    assert_eq!(status, 200);
}

#[test]
fn at_the_cap_the_oldest_pending_connection_makes_room() {
    let harness = harness(FrontConfig {
        max_connections: 4,
        ..test_config()
    });
    // One serving connection, never dropped for a newcomer.
    let mut serving = io::BufReader::new(raw_client(&harness));
    serving
        .get_mut()
        .write_all(b"GET /hello HTTP/1.1\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut serving).0, 200);
    let bare: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(harness.addr).unwrap())
        .collect();
    assert!(wait_until(Duration::from_secs(5), || harness
        .front
        .open_connections()
        == 4));
    let (status, body) = get_text(&client(&harness), &url(&harness, "/hello"));
    assert_eq!((status, body.as_str()), (200, "hello"));
    assert!(wait_until(Duration::from_secs(5), || bare_closed(&bare[0])));
    assert!(bare[1..].iter().all(|stream| !bare_closed(stream)));
    serving
        .get_mut()
        .write_all(b"GET /hello HTTP/1.1\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut serving), (200, b"hello".to_vec()));
}

#[test]
fn panic_in_a_connection_thread_is_contained() {
    let harness = harness(test_config());
    let mut stream = raw_client(&harness);
    stream.write_all(PANIC_REQUEST).unwrap();
    stream.write_all(b"HTTP/1.1\r\n\r\n").unwrap();
    assert!(read_until_close(&mut stream).is_empty());
    assert!(wait_until(Duration::from_secs(5), || harness
        .front
        .open_connections()
        == 0));
    let (status, body) = get_text(&client(&harness), &url(&harness, "/hello"));
    assert_eq!((status, body.as_str()), (200, "hello"));
}

#[test]
fn stop_closes_everything() {
    let mut harness = harness(test_config());
    let mut stream = raw_client(&harness);
    stream.write_all(b"GET /hello HTTP/1.1\r\n\r\n").unwrap();
    let mut reader = io::BufReader::new(&mut stream);
    assert_eq!(read_response(&mut reader).0, 200);
    harness.front.stop();
    assert_eq!(harness.front.open_connections(), 0);
    assert!(read_until_close(&mut stream).is_empty());
    assert!(TcpStream::connect(harness.addr).is_err());
}
