//! Large bodies and slow, idle or non-reading clients never block other clients.

use super::*;

#[test]
fn huge_declared_body_gets_413_and_the_agent_stays_small() {
    let agent = TestAgent::start_default();
    agent.assert_responsive();
    let rss_before = agent.vm_rss_kib();
    for _ in 0..5 {
        let mut stream = agent.tls_stream();
        let head = format!(
            "POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
             Content-Length: 99999999999\r\n\r\n{{\"job_id\":",
            agent.token()
        );
        stream.write_all(head.as_bytes()).expect("send the request");
        stream.flush().expect("flush the request");
        let (status, head) = read_response_head(&mut stream);
        assert_eq!(status, 413, "{head}");
        agent.assert_responsive();
    }
    let rss_after = agent.vm_rss_kib();
    assert!(
        rss_after < rss_before + 16 * 1024,
        "VmRSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert_eq!(agent.get("/jobs").json(), json!([]));
}

#[test]
fn max_request_bytes_bounds_the_body() {
    let agent = TestAgent::builder().max_request_bytes(4096).start();
    let big = Job::new("big-request").command(&format!("echo {}", "x".repeat(5000)));
    let reply = agent.submit(&big.to_value());
    assert_eq!(reply.status, 413, "{}", reply.text());
    let small = Job::new("small-request").command("echo small");
    agent.submit_ok(&small.to_value());
    agent.wait_for_job_finished(&small.job_id);
    agent.assert_responsive();
}

#[test]
fn idle_half_open_connections_do_not_block_others() {
    // 200 idle connections stay under the connection cap.
    let agent = TestAgent::builder()
        .arg("--max-connections")
        .arg("256")
        .start();
    let streams: Vec<_> = (0..200)
        .map(|i| {
            let stream = agent.tcp_stream();
            if i % 2 == 0 {
                // Half-closed: the client will never send anything more.
                stream.shutdown(Shutdown::Write).expect("half-close");
            }
            stream
        })
        .collect();
    for _ in 0..5 {
        agent.assert_responsive();
    }
    assert_eq!(agent.get("/status").status, 200);
    let job = Job::new("with-idle-connections").command("echo busy");
    agent.submit_ok(&job.to_value());
    agent.wait_for_job_finished(&job.job_id);
    drop(streams);
    agent.assert_responsive();
}

#[test]
fn dripping_clients_do_not_block_others() {
    let agent = TestAgent::start_default();
    let stop = Arc::new(AtomicBool::new(false));
    let tls = agent.tls_stream();
    let tcp = agent.tcp_stream();
    let drippers = [
        {
            let stop = Arc::clone(&stop);
            let mut tls = tls;
            let head = format!(
                "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\r\n",
                agent.token()
            );
            thread::spawn(move || {
                for byte in head.bytes() {
                    if stop.load(Ordering::SeqCst) || tls.write_all(&[byte]).is_err() {
                        break;
                    }
                    let _ = tls.flush();
                    thread::sleep(Duration::from_secs(1));
                }
            })
        },
        {
            let stop = Arc::clone(&stop);
            let mut tcp = tcp;
            // The start of a TLS ClientHello, a byte at a time.
            let hello = [
                0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ];
            thread::spawn(move || {
                for byte in hello {
                    if stop.load(Ordering::SeqCst) || tcp.write_all(&[byte]).is_err() {
                        break;
                    }
                    thread::sleep(Duration::from_secs(1));
                }
            })
        },
    ];
    let until = Instant::now() + Duration::from_secs(4);
    let mut probes = 0;
    while Instant::now() < until {
        agent.assert_responsive();
        probes += 1;
        thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::SeqCst);
    for dripper in drippers {
        dripper.join().expect("a dripper thread");
    }
    assert!(probes >= 5);
    assert_eq!(agent.get("/status").status, 200);
}

#[test]
fn a_client_that_never_reads_a_large_log_does_not_block_others() {
    let agent = TestAgent::start_default();
    let job = Job::new("large-log").command(
        "yes 0123456789012345678901234567890123456789012345678901234567890123456789012345678 \
         | head -c 100000000",
    );
    agent.submit_ok(&job.to_value());
    poll_until("the 100 MB job to finish", Duration::from_secs(180), || {
        agent.job_state(&job.job_id) == "finished"
    });
    let rss_before = agent.vm_rss_kib();
    let mut stalled = agent.tls_stream();
    let request = format!(
        "GET /jobs/{}/log HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\r\n",
        job.job_id,
        agent.token()
    );
    stalled
        .write_all(request.as_bytes())
        .expect("send the request");
    stalled.flush().expect("flush the request");
    let (status, head) = read_response_head(&mut stalled);
    assert_eq!(status, 200, "{head}");
    // Read a little, then never again.
    let mut some = [0u8; 4096];
    stalled.read_exact(&mut some).expect("the start of the log");

    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        agent.assert_responsive();
        thread::sleep(Duration::from_millis(200));
    }
    let events = agent.client().log(&job.job_id, Some("0"));
    assert_eq!(events.status, 200);
    // Another client downloads the whole log meanwhile.
    assert!(
        events.body.len() >= 100_000_000,
        "the log is only {} bytes",
        events.body.len()
    );
    let rss_during = agent.vm_rss_kib();
    assert!(
        rss_during < rss_before + 32 * 1024,
        "VmRSS grew from {rss_before} KiB to {rss_during} KiB while a client stalled"
    );
    drop(stalled);
    agent.assert_responsive();
}
