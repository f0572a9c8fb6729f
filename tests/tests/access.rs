//! Credentials: what is refused (401 with `WWW-Authenticate`, nothing changed), JWTs from
//! a JWKS URL (RS256, EdDSA, key rotation), API keys (made, listed, used and revoked
//! through the endpoint and the CLI), the principal on the log, and a subscription ended
//! when its token expires.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowline_access::Role;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use system_tests::auth::{PLATFORM_TENANT, client_as, client_with, token, token_for};
use system_tests::js_clients::JsSubscription;
use system_tests::{TestSystem, bin_dir, eventually};

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../access/testdata");

fn workflow() -> Value {
    json!({"name": "credentials", "steps": [{"id": "a", "kind": "template"}]})
}

/// A token of `claims` signed by the test key set's `kid` with `alg`.
fn signed(alg: Algorithm, kid: &str, file: &str, claims: &Value) -> String {
    let pem = std::fs::read(format!("{KEYS}/{file}")).unwrap();
    let key = match alg {
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn claims(subject: &str, tenant: &str, roles: Value, exp_in: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"sub": subject, "tenant": tenant, "roles": roles, "iat": now, "nbf": now, "exp": now + exp_in})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_credentials_are_refused_everywhere_and_change_nothing() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let projectors = system.projectors().await;
    let executor = system.executor().await;
    let secret = system_tests::auth::signing_key();
    let other_key = flowline_access::dev::SigningKey {
        kid: secret.kid.clone(),
        secret: b"another key of 32 bytes or more!".to_vec(),
    };
    let now = chrono::Utc::now().timestamp();
    let mut expired =
        flowline_access::dev::Claims::new("ana", "acme", Role::Admin, chrono::Duration::hours(1));
    expired.exp = now - 120;
    let mut early =
        flowline_access::dev::Claims::new("ana", "acme", Role::Admin, chrono::Duration::hours(1));
    early.nbf = now + 600;
    let mut no_role =
        flowline_access::dev::Claims::new("ana", "acme", Role::Admin, chrono::Duration::hours(1));
    no_role.roles = vec!["superuser".into()];
    let valid = token("acme", Role::Admin);
    let unsigned = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = valid.split('.').nth(1).unwrap();
        format!("{}.{payload}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#))
    };
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no credentials", None),
        ("an empty bearer", Some("Bearer ".into())),
        ("garbage", Some("Bearer not.a.token".into())),
        (
            "another key's signature",
            Some(format!(
                "Bearer {}",
                other_key
                    .sign(&flowline_access::dev::Claims::new(
                        "ana",
                        "acme",
                        Role::Admin,
                        chrono::Duration::hours(1)
                    ))
                    .unwrap()
            )),
        ),
        (
            "an expired token",
            Some(format!("Bearer {}", secret.sign(&expired).unwrap())),
        ),
        (
            "a token not valid yet",
            Some(format!("Bearer {}", secret.sign(&early).unwrap())),
        ),
        (
            "a token granting no known role",
            Some(format!("Bearer {}", secret.sign(&no_role).unwrap())),
        ),
        ("an unsigned token", Some(format!("Bearer {unsigned}"))),
        ("a token without the scheme", Some(valid.clone())),
        ("the basic scheme", Some(format!("Basic {valid}"))),
        (
            "an unknown API key",
            Some("Bearer flk_abcdefghjkmn_nope".into()),
        ),
    ];
    let rebuild = json!({"projection": "usage"});
    let endpoints = [
        ("POST", format!("{}/v1/workflows", commands.url), workflow()),
        ("GET", format!("{}/v1/workflows", queries.url), Value::Null),
        (
            "POST",
            format!("{}/graphql", queries.url),
            json!({"query": "{ workflows { edges { node { id } } } }"}),
        ),
        (
            "GET",
            format!("{}/v1/audit/verify", queries.url),
            Value::Null,
        ),
        (
            "POST",
            format!("{}/admin/rebuilds", projectors.url),
            rebuild,
        ),
        ("GET", format!("{}/admin/lag", projectors.url), Value::Null),
        ("GET", format!("{}/admin/runs", executor.url), Value::Null),
        ("GET", format!("{}/metrics", executor.url), Value::Null),
    ];
    let anonymous = reqwest::Client::new();
    for (method, url, body) in &endpoints {
        for (case, authorization) in &cases {
            let mut request = match *method {
                "GET" => anonymous.get(url),
                _ => anonymous.post(url).json(body),
            };
            if let Some(value) = authorization {
                request = request.header("authorization", value);
            }
            let reply = system.send(request).await;
            assert_eq!(
                reply.status, 401,
                "{method} {url} with {case}: {}",
                reply.body
            );
            assert_eq!(
                reply.header("content-type"),
                Some("application/problem+json")
            );
            assert_eq!(
                reply.header("www-authenticate"),
                Some("Bearer realm=\"flowline\""),
                "{method} {url} with {case}"
            );
            let detail = reply.body["detail"].as_str().unwrap_or_default();
            assert!(
                !detail.contains(&valid),
                "{case}: the answer quotes the token"
            );
        }
    }
    assert_eq!(
        system.stored_events().await,
        0,
        "a refused submit was stored"
    );
    assert_eq!(
        system
            .count("SELECT count(*) FROM projection_rebuilds")
            .await,
        0
    );
    // Probes and documents stay open.
    for url in [
        format!("{}/livez", commands.url),
        format!("{}/readyz", queries.url),
        format!("{}/openapi.json", projectors.url),
        format!("{}/graphql", queries.url),
    ] {
        let status = anonymous.get(&url).send().await.unwrap().status();
        assert!(status.is_success() || status == 503, "{url}: {status}");
    }
}

/// A JWKS document served over HTTP, as an identity provider serves one; counts fetches.
struct IdentityProvider {
    url: String,
    document: Arc<Mutex<Value>>,
    fetches: Arc<Mutex<u32>>,
}

impl IdentityProvider {
    async fn start(document: Value) -> Self {
        let document = Arc::new(Mutex::new(document));
        let fetches = Arc::new(Mutex::new(0));
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get({
                let (document, fetches) = (document.clone(), fetches.clone());
                move || async move {
                    *fetches.lock().unwrap() += 1;
                    axum::Json(document.lock().unwrap().clone())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            document,
            fetches,
        }
    }
}

fn key_set(file: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{KEYS}/{file}")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_an_identity_providers_key_set_verify_and_a_rotated_key_is_fetched() {
    let system = TestSystem::new(1).await;
    let idp = IdentityProvider::start(key_set("jwks.json")).await;
    let mut config = system.query_config(5_000, Default::default(), Default::default());
    config.access.jwks_file = None;
    config.access.jwks_url = Some(idp.url.parse().unwrap());
    config.access.jwks_refresh_seconds = 1;
    config.access.issuer = Some("https://idp.example".into());
    config.access.audience = Some("flowline".into());
    let queries = system.query_service_from(config).await;
    let list = format!("{}/v1/workflows", queries.url);
    let with = |token: String| system.send(client_with(&token).get(&list));
    let mut valid = claims("ana", "acme", json!(["reader"]), 600);
    valid["iss"] = json!("https://idp.example");
    valid["aud"] = json!("flowline");

    let rsa = signed(Algorithm::RS256, "rsa-1", "rs256-private.pem", &valid);
    let ed = signed(Algorithm::EdDSA, "ed-1", "ed25519-private.pem", &valid);
    assert_eq!(with(rsa.clone()).await.status, 200);
    assert_eq!(with(ed).await.status, 200);
    let mut wrong_audience = valid.clone();
    wrong_audience["aud"] = json!("someone-else");
    let refused = with(signed(
        Algorithm::RS256,
        "rsa-1",
        "rs256-private.pem",
        &wrong_audience,
    ))
    .await;
    assert_eq!(refused.status, 401);
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("audience"),
        "{}",
        refused.body
    );
    // The development key of the other services is not in this set.
    assert_eq!(with(token("acme", Role::Reader)).await.status, 401);

    // The provider rotates to a new key; a token naming it makes the service fetch again.
    let rotated = signed(Algorithm::RS256, "rsa-2", "rs256-other-private.pem", &valid);
    assert_eq!(with(rotated.clone()).await.status, 401, "not yet published");
    *idp.document.lock().unwrap() = key_set("jwks-rotated.json");
    let fetches_before = *idp.fetches.lock().unwrap();
    let accepted = eventually(Duration::from_secs(10), || async {
        (with(rotated.clone()).await.status == 200).then_some(())
    })
    .await;
    assert!(accepted.is_some(), "the rotated key was never fetched");
    // Unknown key ids do not turn into a request each: at most one fetch a second.
    for _ in 0..20 {
        let unknown = signed(
            Algorithm::RS256,
            "made-up",
            "rs256-other-private.pem",
            &valid,
        );
        assert_eq!(with(unknown).await.status, 401);
    }
    let fetches = *idp.fetches.lock().unwrap() - fetches_before;
    assert!(fetches <= 6, "{fetches} fetches for unknown key ids");
    // The old key left the set with the rotation.
    assert_eq!(with(rsa).await.status, 401);
    queries.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_shown_once_stored_hashed_used_and_refused_right_after_revocation() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let keys_url = format!("{}/v1/api-keys", commands.url);
    let admin = client_as("acme", Role::Admin);

    // Readers and submitters may not make keys.
    for role in [Role::Reader, Role::Submitter, Role::Operator] {
        let reply = system
            .send(
                client_as("acme", role)
                    .post(&keys_url)
                    .json(&json!({"name": "x", "role": "reader"})),
            )
            .await;
        assert_eq!(reply.status, 403, "{role}");
    }
    let bad = system
        .send(
            admin
                .post(&keys_url)
                .json(&json!({"name": "x", "role": "root"})),
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert_eq!(bad.body["errors"][0]["field"], "role", "{}", bad.body);

    let created = system
        .send(
            admin
                .post(&keys_url)
                .json(&json!({"name": "ci pipeline", "role": "submitter"})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let key = created.body["key"].as_str().unwrap().to_owned();
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("flk_{id}_")), "{key}");
    assert_eq!(created.body["tenant"], "acme");
    // Stored hashed: the secret is nowhere in the table.
    let secret = key.rsplit_once('_').unwrap().1.to_owned();
    let stored: Vec<u8> = sqlx::query_scalar("SELECT secret_sha256 FROM api_keys WHERE id = $1")
        .bind(&id)
        .fetch_one(&system.pool)
        .await
        .unwrap();
    assert_eq!(stored.len(), 32);
    let row: String =
        sqlx::query_scalar("SELECT row_to_json(k)::text FROM api_keys k WHERE id = $1")
            .bind(&id)
            .fetch_one(&system.pool)
            .await
            .unwrap();
    assert!(!row.contains(&secret), "{row}");
    // Listed without the secret.
    let listed = system.send(admin.get(&keys_url)).await;
    assert_eq!(listed.body[0]["id"], id.as_str());
    assert!(listed.body[0].get("key").is_none(), "{}", listed.body);
    assert!(!listed.body.to_string().contains(&secret));

    // The key acts as a submitter of acme, and the log names it.
    let with_key = client_with(&key);
    let submitted = system
        .send(
            with_key
                .post(format!("{}/v1/workflows", commands.url))
                .json(&workflow()),
        )
        .await;
    assert_eq!(submitted.status, 201, "{}", submitted.body);
    let run = submitted.body["workflow_id"].as_str().unwrap();
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;
    assert_eq!(
        submitted_by(&system, &queries, &admin, run).await,
        format!("key:{id}")
    );
    let used = eventually(Duration::from_secs(5), || async {
        sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
            "SELECT last_used_at FROM api_keys WHERE id = $1",
        )
        .bind(&id)
        .fetch_one(&system.pool)
        .await
        .unwrap()
    })
    .await;
    assert!(used.is_some(), "last use never recorded");
    // Its role is the ceiling: a submitter key cannot make keys.
    let escalate = system
        .send(
            with_key
                .post(&keys_url)
                .json(&json!({"name": "y", "role": "admin"})),
        )
        .await;
    assert_eq!(escalate.status, 403);

    // Revoked: the very next request is refused.
    let revoked = system.send(admin.delete(format!("{keys_url}/{id}"))).await;
    assert_eq!(revoked.status, 204);
    let refused = system
        .send(
            with_key
                .post(format!("{}/v1/workflows", commands.url))
                .json(&workflow()),
        )
        .await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert_eq!(
        system
            .send(admin.delete(format!("{keys_url}/nosuchkey123")))
            .await
            .status,
        404
    );

    // The CLI makes, lists and revokes keys in the same table.
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(bin_dir().join("flowline-auth"))
            .arg("keys")
            .args(args)
            .env("DATABASE_URL", &system.database_url)
            .output()
            .expect("flowline-auth runs (cargo build --workspace --bins)");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let cli_key = cli(&[
        "create",
        "--tenant",
        "acme",
        "--role",
        "reader",
        "--name",
        "from the cli",
    ])
    .trim()
    .to_owned();
    let cli_id = cli_key.split('_').nth(1).unwrap().to_owned();
    let read = system
        .send(client_with(&cli_key).get(format!("{}/v1/workflows", queries.url)))
        .await;
    assert_eq!(read.status, 200, "{}", read.body);
    let listed: Value = serde_json::from_str(&cli(&["list", "--tenant", "acme"])).unwrap();
    assert!(listed.to_string().contains(&cli_id));
    assert!(
        !listed
            .to_string()
            .contains(cli_key.rsplit_once('_').unwrap().1)
    );
    cli(&["revoke", "--tenant", "acme", &cli_id]);
    let read = system
        .send(client_with(&cli_key).get(format!("{}/v1/workflows", queries.url)))
        .await;
    assert_eq!(read.status, 401);
}

/// `submitted_by` of run `id` as `client` reads it (decrypted: it is personal data).
async fn submitted_by(
    system: &TestSystem,
    queries: &system_tests::Running,
    client: &reqwest::Client,
    id: &str,
) -> String {
    let url = format!("{}/v1/workflows/{id}", queries.url);
    eventually(Duration::from_secs(30), || async {
        let reply = system.send(client.get(&url)).await;
        reply.body["submitted_by"].as_str().map(str::to_owned)
    })
    .await
    .unwrap_or_else(|| panic!("run {id} was never readable"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_names_the_verified_principal_and_both_tenants_of_an_acting_admin() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let _projectors = system.projectors().await;
    let url = format!("{}/v1/workflows", commands.url);
    let ana = client_with(&token_for(
        "ana",
        "acme",
        Role::Submitter,
        chrono::Duration::hours(1),
    ));
    // What the caller claims in headers no longer counts.
    let reply = system
        .send(
            ana.post(&url)
                .header("x-principal", "mallory")
                .json(&workflow()),
        )
        .await;
    assert_eq!(reply.status, 201);
    let id = reply.body["workflow_id"].as_str().unwrap();
    assert_eq!(submitted_by(&system, &queries, &ana, id).await, "ana");
    // Ana may not act in another tenant.
    let reply = system
        .send(
            ana.post(&url)
                .header("x-tenant-id", "globex")
                .json(&workflow()),
        )
        .await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    // A platform admin may, explicitly; the event is globex's and names the admin's home.
    let reply = system
        .send(
            system
                .http
                .post(&url)
                .header("x-tenant-id", "globex")
                .json(&workflow()),
        )
        .await;
    assert_eq!(reply.status, 201);
    let id = reply.body["workflow_id"].as_str().unwrap();
    let events = system.events(id).await;
    assert_eq!(events[0].metadata.tenant, "globex");
    let globex = client_as("globex", Role::Reader);
    assert_eq!(
        submitted_by(&system, &queries, &globex, id).await,
        format!("system-tests@{PLATFORM_TENANT}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_ends_when_its_token_expires() {
    let system = TestSystem::new(1).await;
    let mut config = system.query_config(5_000, Default::default(), Default::default());
    // The leeway is for clock skew between issuer and service; expiry here is exact.
    config.access.leeway_seconds = 0;
    let queries = system.query_service_from(config).await;
    let short = token_for("ana", "acme", Role::Reader, chrono::Duration::seconds(3));
    let started = std::time::Instant::now();
    let mut subscription = JsSubscription::start(&json!({
        "url": format!("{}/graphql/ws", queries.url.replacen("http", "ws", 1)),
        "query": "subscription { workflowEvents { workflowId version } }",
        "connectionParams": {"authorization": format!("Bearer {short}")},
        "headers": {"authorization": null},
    }));
    assert!(subscription.line().await.get("connected").is_some());
    let ended = subscription.line().await;
    assert_eq!(ended["error"]["code"], 4401, "{ended}");
    let lasted = started.elapsed();
    assert!(lasted >= Duration::from_secs(2), "ended after {lasted:?}");
    // An expired token does not open a new one (once its second has passed).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut again = JsSubscription::start(&json!({
        "url": format!("{}/graphql/ws", queries.url.replacen("http", "ws", 1)),
        "query": "subscription { workflowEvents { workflowId version } }",
        "connectionParams": {"authorization": format!("Bearer {short}")},
        "headers": {"authorization": null},
    }));
    let refused = loop {
        let line = again.line().await;
        if line.get("connected").is_none() {
            break line;
        }
    };
    assert_eq!(refused["error"]["code"], 4403, "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_of_other_origins_get_no_cors_and_no_websocket_unless_allowed() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let system = TestSystem::new(1).await;
    let mut config = system.query_config(5_000, Default::default(), Default::default());
    config.access.cors_allowed_origins = vec!["https://app.example".into()];
    config.access.ws_allowed_origins = vec!["https://app.example".into()];
    let queries = system.query_service_from(config).await;
    let defaults = system.query_service().await;
    let preflight = |url: String, origin: &'static str| {
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, url)
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
    };
    // Allowed origin: the preflight is answered, credentials headers allowed.
    let allowed = system
        .send(preflight(
            format!("{}/v1/workflows", queries.url),
            "https://app.example",
        ))
        .await;
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(
        allowed
            .header("access-control-allow-headers")
            .unwrap()
            .contains("authorization")
    );
    // Another origin, and every origin by default: no CORS grant.
    for (url, origin) in [
        (
            format!("{}/v1/workflows", queries.url),
            "https://evil.example",
        ),
        (
            format!("{}/v1/workflows", defaults.url),
            "https://app.example",
        ),
    ] {
        let reply = system.send(preflight(url.clone(), origin)).await;
        assert_eq!(
            reply.header("access-control-allow-origin"),
            None,
            "{url} {origin}"
        );
    }

    let upgrade = |base: &str, origin: Option<&str>| {
        let mut request = format!("{}/graphql/ws", base.replacen("http", "ws", 1))
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
        }
        tokio_tungstenite::connect_async(request)
    };
    let refused = |result: Result<_, tokio_tungstenite::tungstenite::Error>| match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status() == 403,
        _ => false,
    };
    assert!(refused(
        upgrade(&queries.url, Some("https://evil.example")).await
    ));
    assert!(refused(
        upgrade(&defaults.url, Some("https://app.example")).await
    ));
    // The listed origin, the service's own, and clients sending none are let through.
    // The service's own origin: the scheme and the `Host` it is reached at.
    let own = defaults.url.clone();
    assert!(
        upgrade(&queries.url, Some("https://app.example"))
            .await
            .is_ok()
    );
    assert!(upgrade(&defaults.url, Some(own.as_str())).await.is_ok());
    assert!(upgrade(&defaults.url, None).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_apis_refuse_bodies_that_are_not_json() {
    let system = TestSystem::new(1).await;
    let commands = system.command_service().await;
    let queries = system.query_service().await;
    let projectors = system.projectors().await;
    let submit = format!("{}/v1/workflows", commands.url);
    let body = workflow().to_string();
    for (url, content_type, body) in [
        (submit.clone(), "text/plain", body.clone()),
        (
            submit.clone(),
            "application/x-www-form-urlencoded",
            body.clone(),
        ),
        (
            submit.clone(),
            "multipart/form-data; boundary=x",
            body.clone(),
        ),
        (
            format!("{}/graphql", queries.url),
            "text/plain",
            json!({"query": "{ __typename }"}).to_string(),
        ),
        (
            format!("{}/admin/rebuilds", projectors.url),
            "text/plain",
            json!({"projection": "usage"}).to_string(),
        ),
    ] {
        let reply = system
            .send(
                system
                    .http
                    .post(&url)
                    .header("content-type", content_type)
                    .body(body),
            )
            .await;
        assert_eq!(reply.status, 415, "{url} as {content_type}: {}", reply.body);
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(reply.body["header"], "Content-Type");
    }
    assert_eq!(system.stored_events().await, 0);
    assert_eq!(
        system
            .count("SELECT count(*) FROM projection_rebuilds")
            .await,
        0
    );
    // JSON with parameters passes, and so does a command without any body.
    let reply = system
        .send(
            system
                .http
                .post(&submit)
                .header("content-type", "application/json; charset=utf-8")
                .body(body),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let id = reply.body["workflow_id"].as_str().unwrap();
    let cancelled = system
        .send(
            system
                .http
                .post(format!("{}/v1/workflows/{id}/cancel", commands.url)),
        )
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
}
