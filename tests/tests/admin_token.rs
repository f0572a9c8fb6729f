//! The operators' endpoints behind `ADMIN_TOKEN`: every wrong way of presenting the token is
//! refused with a problem, and a refused request changes nothing. (`/admin/lag` and
//! `/metrics` are open, like every service's metrics.)

use system_tests::{ADMIN_TOKEN, TestSystem};

/// Authorization headers that must not open an admin endpoint.
fn wrong_credentials() -> Vec<(&'static str, Option<String>)> {
    let truncated = &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1];
    let mut same_length_other = ADMIN_TOKEN.to_owned();
    same_length_other.replace_range(0..1, "X");
    vec![
        ("no header", None),
        ("empty bearer", Some("Bearer ".into())),
        ("another token", Some("Bearer not-the-token".into())),
        (
            "same length, one byte off",
            Some(format!("Bearer {same_length_other}")),
        ),
        ("a prefix of the token", Some(format!("Bearer {truncated}"))),
        ("the token and more", Some(format!("Bearer {ADMIN_TOKEN}x"))),
        ("the token without the scheme", Some(ADMIN_TOKEN.into())),
        ("basic scheme", Some(format!("Basic {ADMIN_TOKEN}"))),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_admin_tokens_are_refused_and_change_nothing() {
    let system = TestSystem::new(1).await;
    let queries = system.query_service().await;
    let projectors = system.projectors().await;
    let rebuild_body = serde_json::json!({"projection": "workflow_read_model"});

    let endpoints = [
        ("GET", format!("{}/admin/dead-letters", projectors.url)),
        (
            "POST",
            format!("{}/admin/dead-letters/redrive", projectors.url),
        ),
        ("POST", format!("{}/admin/rebuilds", projectors.url)),
        ("GET", format!("{}/v1/audit/events", queries.url)),
        ("GET", format!("{}/v1/audit/verify", queries.url)),
    ];
    for (method, url) in &endpoints {
        for (case, authorization) in wrong_credentials() {
            let mut request = match *method {
                "GET" => system.http.get(url),
                _ => system.http.post(url).json(&rebuild_body),
            };
            if let Some(value) = &authorization {
                request = request.header("authorization", value);
            }
            let reply = system.send(request).await;
            assert_eq!(
                reply.status, 401,
                "{method} {url} with {case}: {:?}",
                reply.body
            );
            assert_eq!(
                reply.header("content-type"),
                Some("application/problem+json"),
                "{method} {url} with {case}"
            );
            let detail = reply.body["detail"].as_str().unwrap_or_default();
            assert!(
                !detail.contains(ADMIN_TOKEN),
                "{method} {url} with {case}: the answer reveals the token: {detail}"
            );
        }
    }
    assert_eq!(
        system
            .count("SELECT count(*) FROM projection_rebuilds")
            .await,
        0,
        "a refused rebuild request started a rebuild"
    );

    // The right token opens the same endpoints.
    for (method, url) in &endpoints {
        let request = match *method {
            "GET" => system.http.get(url),
            _ => system.http.post(url).json(&rebuild_body),
        };
        let reply = system.send(request.bearer_auth(ADMIN_TOKEN)).await;
        assert!(
            (200..300).contains(&reply.status),
            "{method} {url} with the right token: {} {:?}",
            reply.status,
            reply.body
        );
    }
    assert_eq!(
        system
            .count("SELECT count(*) FROM projection_rebuilds")
            .await,
        1,
        "the authorized rebuild request started one rebuild"
    );
    projectors.stop().await;
    queries.stop().await;
}
