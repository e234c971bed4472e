//! Authentication of every route: 401 bodies as the reference sends them, short secrets.

use super::*;

#[test]
fn auth_failures_get_401_with_a_json_string() {
    let agent = TestAgent::start_default();
    let secret = agent.secret().as_bytes().to_vec();
    let hs256 = r#"{"alg":"HS256","typ":"JWT"}"#;
    let now = unix_now();
    let canonical = agent.token().to_owned();
    let (head, _) = canonical.rsplit_once('.').unwrap();
    let tampered = format!(
        "{}.{}",
        sign_jwt(hs256, r#"{"admin":true}"#, &secret)
            .rsplit_once('.')
            .unwrap()
            .0,
        canonical.rsplit_once('.').unwrap().1
    );
    let cases: Vec<(&str, Option<String>, Option<&str>)> = vec![
        (
            "no header",
            None,
            Some("An authorization header is required"),
        ),
        (
            "an empty header",
            Some(String::new()),
            Some("An authorization header is required"),
        ),
        (
            "one part",
            Some("Bearer".into()),
            Some("Invalid authorization token"),
        ),
        (
            "the token alone",
            Some(canonical.clone()),
            Some("Invalid authorization token"),
        ),
        (
            "three parts",
            Some(format!("Bearer {canonical} x")),
            Some("Invalid authorization token"),
        ),
        (
            "two spaces",
            Some(format!("Bearer  {canonical}")),
            Some("Invalid authorization token"),
        ),
        (
            "one segment",
            Some("Bearer abc".into()),
            Some("token contains an invalid number of segments"),
        ),
        (
            "a wrong secret",
            Some(format!(
                "Bearer {}",
                sign_jwt(hs256, "{}", b"not-the-secret")
            )),
            Some("signature is invalid"),
        ),
        (
            "a tampered payload",
            Some(format!("Bearer {tampered}")),
            Some("signature is invalid"),
        ),
        ("no signature", Some(format!("Bearer {head}.")), None),
        (
            "alg none",
            Some(format!(
                "Bearer {}",
                sign_jwt(r#"{"alg":"none","typ":"JWT"}"#, "{}", &secret)
            )),
            Some("invalid authorization token"),
        ),
        (
            "alg RS256",
            Some(format!(
                "Bearer {}",
                sign_jwt(r#"{"alg":"RS256","typ":"JWT"}"#, "{}", &secret) + "c2ln"
            )),
            Some("invalid authorization token"),
        ),
        (
            "an expired token",
            Some(format!(
                "Bearer {}",
                sign_jwt(hs256, &format!(r#"{{"exp":{}}}"#, now - 3600), &secret)
            )),
            Some("token is expired"),
        ),
        (
            "a token not valid yet",
            Some(format!(
                "Bearer {}",
                sign_jwt(hs256, &format!(r#"{{"nbf":{}}}"#, now + 3600), &secret)
            )),
            None,
        ),
    ];
    let job = Job::new("unauthorized").command("echo no");
    // Wrong reasons are collected so that one report shows them all.
    let mut wrong_reasons = Vec::new();
    for (what, header, expected) in &cases {
        for (method, path, body) in [
            ("GET", "/status".to_owned(), Vec::new()),
            ("GET", "/jobs".to_owned(), Vec::new()),
            ("GET", "/agent_logs".to_owned(), Vec::new()),
            ("GET", format!("/jobs/{}/log", job.job_id), Vec::new()),
            (
                "POST",
                "/jobs".to_owned(),
                job.to_value().to_string().into_bytes(),
            ),
            ("POST", "/stop".to_owned(), Vec::new()),
        ] {
            let headers: Vec<(&str, &str)> = header
                .as_deref()
                .map(|h| vec![("Authorization", h)])
                .unwrap_or_default();
            let reply = agent.client().request(method, &path, &headers, &body);
            let text = unauthorized_text(reply.status, &reply.body);
            match expected {
                Some(expected) if text != *expected => wrong_reasons.push(format!(
                    "{what}: {method} {path}: expected {expected:?}, got {text:?}"
                )),
                Some(_) => {}
                None => assert!(!text.is_empty(), "{what}: an empty reason"),
            }
        }
    }
    let reply = agent
        .client()
        .post_anon("/jobs", job.to_value().to_string().as_bytes());
    assert_eq!(
        unauthorized_text(reply.status, &reply.body),
        "An authorization header is required"
    );
    // None of those POSTs was accepted.
    assert_eq!(agent.get("/jobs").json(), json!([]));

    let accepted = [
        ("the canonical token", format!("Bearer {canonical}")),
        ("another scheme word", format!("Token {canonical}")),
        (
            "HS384",
            format!(
                "Bearer {}",
                sign_jwt(r#"{"alg":"HS384","typ":"JWT"}"#, "{}", &secret)
            ),
        ),
        (
            "HS512",
            format!(
                "Bearer {}",
                sign_jwt(r#"{"alg":"HS512","typ":"JWT"}"#, "{}", &secret)
            ),
        ),
        (
            "a token with valid times",
            format!(
                "Bearer {}",
                sign_jwt(
                    hs256,
                    &format!(r#"{{"iat":{now},"nbf":{now},"exp":{}}}"#, now + 600),
                    &secret
                )
            ),
        ),
        (
            "a token of `agent token`",
            format!("Bearer {}", agent.minted_token(60)),
        ),
    ];
    for (what, header) in accepted {
        let reply = agent
            .client()
            .request("GET", "/status", &[("Authorization", &header)], b"");
        assert_eq!(reply.status, 200, "{what}: {}", reply.text());
    }
    wrong_reasons.dedup_by(|a, b| a.split(':').next() == b.split(':').next());
    assert!(
        wrong_reasons.is_empty(),
        "401 reasons differ from §2.2 (first route of each case shown):\n{}",
        wrong_reasons.join("\n")
    );
}

#[test]
fn short_secrets_work_with_the_canonical_token() {
    let agent = TestAgent::builder().secret("myJwtToken").start();
    assert_eq!(agent.get("/status").status, 200);
    let hs512 = sign_jwt(r#"{"alg":"HS512","typ":"JWT"}"#, "{}", b"myJwtToken");
    let reply = agent.client().request(
        "GET",
        "/status",
        &[("Authorization", &format!("Bearer {hs512}"))],
        b"",
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    // A near miss of the secret is refused (the reason's text is checked by
    // `auth_failures_get_401_with_a_json_string`).
    let wrong = sign_jwt(r#"{"alg":"HS256","typ":"JWT"}"#, "{}", b"myJwtTokem");
    let reply = agent.client().request(
        "GET",
        "/status",
        &[("Authorization", &format!("Bearer {wrong}"))],
        b"",
    );
    assert!(!unauthorized_text(reply.status, &reply.body).is_empty());
}

// ---------------------------------------------------------------------------
// Several jobs (§13.2)
