//! Credentials in the tests: one HS256 key (in a JWKS file every service of a test reads),
//! tokens minted with it, and the platform tenant the harness's own client acts in.

use std::path::PathBuf;
use std::sync::OnceLock;

use flowline_access::dev::{Claims, SigningKey};
use flowline_access::{AccessSettings, Role};

/// The tests' signing secret (32 bytes: the shortest HS256 key the services accept).
const SECRET: &[u8; 32] = b"flowline-system-tests-hs256-key!";
/// The tenant whose admins act everywhere in the tests; the harness's client is one.
pub const PLATFORM_TENANT: &str = "default";

/// The tests' signing key.
pub fn signing_key() -> SigningKey {
    SigningKey {
        kid: "system-tests".into(),
        secret: SECRET.to_vec(),
    }
}

/// The JWKS file holding [`signing_key`] (written once per test process).
pub fn jwks_file() -> PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!(
            "flowline-system-tests-jwks-{}.json",
            std::process::id()
        ));
        signing_key().write(&path).expect("test JWKS file");
        path
    })
    .clone()
}

/// A token for `subject` in `tenant` with `role`, valid for `ttl`.
pub fn token_for(subject: &str, tenant: &str, role: Role, ttl: chrono::Duration) -> String {
    signing_key()
        .sign(&Claims::new(subject, tenant, role, ttl))
        .expect("signed")
}

/// A token valid for an hour, its subject `<role>@<tenant>`.
pub fn token(tenant: &str, role: Role) -> String {
    token_for(
        &format!("{role}@{tenant}"),
        tenant,
        role,
        chrono::Duration::hours(1),
    )
}

/// The harness's own credentials: an admin of the platform tenant.
pub fn admin_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        token_for(
            "system-tests",
            PLATFORM_TENANT,
            Role::Admin,
            chrono::Duration::days(2),
        )
    })
}

/// `Bearer <admin token>`.
pub fn admin_bearer() -> String {
    format!("Bearer {}", admin_token())
}

/// `Authorization: Bearer <token>` as default headers of a client.
pub fn headers_with(token: &str) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header value"),
    );
    headers
}

/// The harness's credentials as default headers of a client of a test's own.
pub fn admin_headers() -> reqwest::header::HeaderMap {
    headers_with(admin_token())
}

/// An HTTP client sending `token` with every request (a one-minute timeout, as the
/// harness's own).
pub fn client_with(token: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .default_headers(headers_with(token))
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .expect("HTTP client")
}

/// An HTTP client acting as the harness (platform admin).
pub fn client() -> reqwest::Client {
    client_with(admin_token())
}

/// An HTTP client acting as `role` in `tenant`.
pub fn client_as(tenant: &str, role: Role) -> reqwest::Client {
    client_with(&token(tenant, role))
}

/// The services' access settings in the tests: the test key, the platform tenant, and
/// limits no test reaches unless it sets its own.
pub fn access_settings() -> AccessSettings {
    let unlimited = "1000000/1s".parse().expect("quota");
    AccessSettings {
        jwks_file: Some(jwks_file()),
        platform_tenant: PLATFORM_TENANT.into(),
        rate_limit_tenant: unlimited,
        rate_limit_reader: unlimited,
        rate_limit_submitter: unlimited,
        rate_limit_operator: unlimited,
        rate_limit_admin: unlimited,
        ..AccessSettings::default()
    }
}

/// The same settings as environment variables, for services run as processes.
pub fn access_env() -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("AUTH_JWKS_FILE", jwks_file().display().to_string()),
        ("AUTH_PLATFORM_TENANT", PLATFORM_TENANT.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for name in [
        "RATE_LIMIT_TENANT",
        "RATE_LIMIT_READER",
        "RATE_LIMIT_SUBMITTER",
        "RATE_LIMIT_OPERATOR",
        "RATE_LIMIT_ADMIN",
    ] {
        env.push((name.to_owned(), "1000000/1s".to_owned()));
    }
    env
}
