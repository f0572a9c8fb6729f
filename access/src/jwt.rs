//! Verifying JWT bearer tokens against a JSON Web Key Set read from a file or a URL.
//!
//! The key set is cached; a token naming a key id the cache does not hold makes the
//! verifier read the set again (at most once per [`TokenRules::min_refresh`], 30 s by
//! default, so tokens with made-up key ids cannot turn into a flood of requests to the
//! identity provider). Each key
//! verifies only its own algorithm: a token's `alg` header is never trusted on its own,
//! which closes the classic RS256-public-key-as-HS256-secret confusion.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::RwLock;
use url::Url;

use crate::Role;

/// Where the key set comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A JWKS document on disk (re-read on an unknown key id).
    File(PathBuf),
    /// A JWKS document served by an identity provider.
    Url(Url),
}

/// What a verified token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    /// `sub`.
    pub subject: String,
    /// The tenant claim.
    pub tenant: String,
    /// The highest recognised role of the roles claim.
    pub role: Role,
    /// `exp`.
    pub expires_at: DateTime<Utc>,
    /// `iss`, when the token has one (part of the credential's identity).
    pub issuer: Option<String>,
}

/// Why a token was refused. The messages name the rule, never the key material.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, or a part of it is not valid base64/JSON.
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// The header names an algorithm this service does not accept.
    #[error("the token's algorithm {0:?} is not accepted (HS256, RS256, EdDSA)")]
    Algorithm(String),
    /// No key of the set verifies the token.
    #[error("no key of the configured key set verifies the token")]
    UnknownKey,
    /// Signature, `exp`, `nbf`, `iss` or `aud` check failed.
    #[error("the token was refused: {0}")]
    Invalid(String),
    /// A claim the engine needs is missing or malformed.
    #[error("the token's {claim} claim {problem}")]
    Claim {
        /// The claim's name.
        claim: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The key set could not be read.
    #[error("the key set could not be read: {0}")]
    KeySet(String),
}

/// How tokens are checked: who issues them, for whom, and which claims carry the
/// tenant and roles.
#[derive(Debug, Clone)]
pub struct TokenRules {
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud`, if set.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_seconds: u64,
    /// Claim (dotted path into nested objects) holding the tenant.
    pub tenant_claim: String,
    /// Claim (dotted path) holding the roles: an array of names or a space-separated string.
    pub roles_claim: String,
    /// The soonest the key set is read again because a token named an unknown key id.
    pub min_refresh: Duration,
}

/// One usable key: its decoding key and the only algorithm it verifies.
struct VerifyingKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

struct KeySet {
    by_id: HashMap<String, VerifyingKey>,
    /// Keys without a `kid`: tried for tokens without one.
    anonymous: Vec<VerifyingKey>,
    read_at: Instant,
}

/// Verifies tokens; cheap to share behind an `Arc`.
pub struct JwtVerifier {
    source: KeySource,
    rules: TokenRules,
    http: reqwest::Client,
    keys: RwLock<KeySet>,
}

/// A JSON Web Key as far as verification needs it.
#[derive(Debug, Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    key_use: Option<String>,
    /// `oct`: the secret.
    k: Option<String>,
    /// `RSA`: modulus and exponent.
    n: Option<String>,
    e: Option<String>,
    /// `OKP`: curve and public key.
    crv: Option<String>,
    x: Option<String>,
}

#[derive(Debug, Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

fn accepted_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "HS256" => Some(Algorithm::HS256),
        "RS256" => Some(Algorithm::RS256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

impl Jwk {
    /// The key and its algorithm, or `None` for a key this verifier does not use
    /// (encryption keys, other curves or algorithms): an identity provider's set may hold
    /// those, and they must not stop the others from working.
    fn verifying_key(&self) -> Option<VerifyingKey> {
        if self
            .key_use
            .as_deref()
            .is_some_and(|key_use| key_use != "sig")
        {
            return None;
        }
        let (default, key) = match self.kty.as_str() {
            "oct" => {
                let secret = URL_SAFE_NO_PAD.decode(self.k.as_deref()?).ok()?;
                // A short HMAC secret can be guessed offline from any token.
                if secret.len() < 32 {
                    tracing::warn!(kid = ?self.kid, "HS256 key shorter than 32 bytes ignored");
                    return None;
                }
                (Algorithm::HS256, DecodingKey::from_secret(&secret))
            }
            "RSA" => (
                Algorithm::RS256,
                DecodingKey::from_rsa_components(self.n.as_deref()?, self.e.as_deref()?).ok()?,
            ),
            "OKP" if self.crv.as_deref() == Some("Ed25519") => (
                Algorithm::EdDSA,
                DecodingKey::from_ed_components(self.x.as_deref()?).ok()?,
            ),
            _ => return None,
        };
        let algorithm = match self.alg.as_deref() {
            None => default,
            Some(name) => accepted_algorithm(name).filter(|alg| *alg == default)?,
        };
        Some(VerifyingKey { algorithm, key })
    }
}

impl KeySet {
    fn parse(document: &[u8]) -> Result<Self, TokenError> {
        let set: JwkSet = serde_json::from_slice(document)
            .map_err(|error| TokenError::KeySet(format!("not a JWKS document: {error}")))?;
        let mut by_id = HashMap::new();
        let mut anonymous = Vec::new();
        for jwk in set.keys {
            let Some(key) = jwk.verifying_key() else {
                continue;
            };
            match jwk.kid {
                Some(kid) => {
                    by_id.insert(kid, key);
                }
                None => anonymous.push(key),
            }
        }
        Ok(Self {
            by_id,
            anonymous,
            read_at: Instant::now(),
        })
    }

    fn is_empty(&self) -> bool {
        self.by_id.is_empty() && self.anonymous.is_empty()
    }
}

impl JwtVerifier {
    /// Reads the key set once (a service does not start on an unreadable or empty one).
    pub async fn new(source: KeySource, rules: TokenRules) -> Result<Self, TokenError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|error| TokenError::KeySet(error.to_string()))?;
        let keys = read_key_set(&source, &http).await?;
        if keys.is_empty() {
            return Err(TokenError::KeySet(
                "the key set holds no usable signing key (HS256 ≥ 32 bytes, RS256, Ed25519)".into(),
            ));
        }
        Ok(Self {
            source,
            rules,
            http,
            keys: RwLock::new(keys),
        })
    }

    /// Verifies `token` and reads the bearer's identity from its claims.
    pub async fn verify(&self, token: &str) -> Result<TokenIdentity, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if !matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::RS256 | Algorithm::EdDSA
        ) {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.as_deref();
        if let Some(result) = self.verify_with_cached(token, header.alg, kid).await {
            return result;
        }
        self.refresh().await;
        self.verify_with_cached(token, header.alg, kid)
            .await
            .unwrap_or(Err(TokenError::UnknownKey))
    }

    /// `None` when no cached key fits the token's `kid` and algorithm.
    async fn verify_with_cached(
        &self,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Option<Result<TokenIdentity, TokenError>> {
        let keys = self.keys.read().await;
        let candidates: Vec<&VerifyingKey> = match kid {
            Some(kid) => keys.by_id.get(kid).into_iter().collect(),
            None => keys.anonymous.iter().collect(),
        };
        let key = candidates.into_iter().find(|key| key.algorithm == alg)?;
        Some(self.decode(token, key))
    }

    fn decode(&self, token: &str, key: &VerifyingKey) -> Result<TokenIdentity, TokenError> {
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.rules.leeway_seconds;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.rules.issuer {
            Some(issuer) => validation.set_issuer(&[issuer]),
            None => validation.iss = None,
        }
        match &self.rules.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key.key,
            &validation,
        )
        .map_err(|error| TokenError::Invalid(refusal(&error)))?;
        identity(&data.claims, &self.rules)
    }

    async fn refresh(&self) {
        if self.keys.read().await.read_at.elapsed() < self.rules.min_refresh {
            return;
        }
        let mut keys = self.keys.write().await;
        // Another request may have refreshed while this one waited for the lock.
        if keys.read_at.elapsed() < self.rules.min_refresh {
            return;
        }
        match read_key_set(&self.source, &self.http).await {
            Ok(fresh) if !fresh.is_empty() => *keys = fresh,
            Ok(_) => {
                keys.read_at = Instant::now();
                tracing::warn!("the refreshed key set holds no usable key; keeping the old one");
            }
            Err(error) => {
                keys.read_at = Instant::now();
                tracing::warn!(%error, "refreshing the key set failed; keeping the old one");
            }
        }
    }
}

/// Why jsonwebtoken refused a token, in words that reveal nothing about the keys.
fn refusal(error: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => "it has expired".into(),
        ErrorKind::ImmatureSignature => "it is not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the {claim} claim is missing"),
        _ => "it could not be verified".into(),
    }
}

async fn read_key_set(source: &KeySource, http: &reqwest::Client) -> Result<KeySet, TokenError> {
    let document = match source {
        KeySource::File(path) => tokio::fs::read(path)
            .await
            .map_err(|error| TokenError::KeySet(format!("{}: {error}", path.display())))?,
        KeySource::Url(url) => {
            let response = http
                .get(url.clone())
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|error| TokenError::KeySet(format!("{url}: {error}")))?;
            response
                .bytes()
                .await
                .map_err(|error| TokenError::KeySet(format!("{url}: {error}")))?
                .to_vec()
        }
    };
    KeySet::parse(&document)
}

/// The value at a dotted `path` of `claims` (`realm_access.roles`).
fn claim<'a>(
    claims: &'a serde_json::Map<String, serde_json::Value>,
    path: &str,
) -> Option<&'a serde_json::Value> {
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.get(part)?;
    }
    Some(value)
}

fn identity(
    claims: &serde_json::Map<String, serde_json::Value>,
    rules: &TokenRules,
) -> Result<TokenIdentity, TokenError> {
    let missing = |claim: &str, problem| TokenError::Claim {
        claim: claim.to_owned(),
        problem,
    };
    let subject = claims
        .get("sub")
        .and_then(serde_json::Value::as_str)
        .filter(|sub| !sub.is_empty() && sub.len() <= 256)
        .ok_or_else(|| missing("sub", "must be a string of 1-256 characters"))?
        .to_owned();
    let tenant = claim(claims, &rules.tenant_claim)
        .and_then(serde_json::Value::as_str)
        .filter(|tenant| flowline_service_kit::request::is_tenant_name(tenant))
        .ok_or_else(|| {
            missing(
                &rules.tenant_claim,
                "must name a tenant (1-64 ASCII letters, digits, '_', '-' or '.')",
            )
        })?
        .to_owned();
    let role = match claim(claims, &rules.roles_claim) {
        Some(serde_json::Value::Array(names)) => {
            Role::highest(names.iter().filter_map(serde_json::Value::as_str))
        }
        Some(serde_json::Value::String(names)) => Role::highest(names.split_whitespace()),
        _ => None,
    }
    .ok_or_else(|| {
        missing(
            &rules.roles_claim,
            "must hold reader, submitter, operator or admin",
        )
    })?;
    let expires_at = claims
        .get("exp")
        .and_then(serde_json::Value::as_i64)
        .and_then(|exp| DateTime::from_timestamp(exp, 0))
        .ok_or_else(|| missing("exp", "must be a time in seconds"))?;
    let issuer = claims
        .get("iss")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    Ok(TokenIdentity {
        subject,
        tenant,
        role,
        expires_at,
        issuer,
    })
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};

    use super::*;

    const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");

    fn rules() -> TokenRules {
        TokenRules {
            issuer: Some("https://idp.example".into()),
            audience: Some("flowline".into()),
            leeway_seconds: 30,
            tenant_claim: "tenant".into(),
            roles_claim: "roles".into(),
            min_refresh: Duration::from_secs(30),
        }
    }

    async fn verifier(rules: TokenRules) -> JwtVerifier {
        JwtVerifier::new(KeySource::File(format!("{DATA}/jwks.json").into()), rules)
            .await
            .expect("the test key set loads")
    }

    fn claims(extra: serde_json::Value) -> serde_json::Value {
        let now = Utc::now().timestamp();
        let mut claims = serde_json::json!({
            "sub": "ana", "tenant": "acme", "roles": ["reader", "submitter"],
            "iss": "https://idp.example", "aud": "flowline",
            "iat": now, "nbf": now, "exp": now + 600,
        });
        for (key, value) in extra.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(key);
            } else {
                claims[key] = value.clone();
            }
        }
        claims
    }

    fn sign(alg: Algorithm, kid: &str, claims: &serde_json::Value) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(
                &std::fs::read(format!("{DATA}/rs256-private.pem")).unwrap(),
            )
            .unwrap(),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(
                &std::fs::read(format!("{DATA}/ed25519-private.pem")).unwrap(),
            )
            .unwrap(),
            _ => EncodingKey::from_secret(b"not a key of the set, but long enough to be one"),
        };
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    #[tokio::test]
    async fn rs256_and_eddsa_tokens_of_the_key_set_verify() {
        let verifier = verifier(rules()).await;
        for (alg, kid) in [(Algorithm::RS256, "rsa-1"), (Algorithm::EdDSA, "ed-1")] {
            let identity = verifier
                .verify(&sign(alg, kid, &claims(serde_json::json!({}))))
                .await
                .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(identity.subject, "ana");
            assert_eq!(identity.tenant, "acme");
            assert_eq!(identity.role, Role::Submitter);
            assert_eq!(identity.issuer.as_deref(), Some("https://idp.example"));
        }
    }

    #[tokio::test]
    async fn a_token_is_refused_for_each_broken_rule() {
        let verifier = verifier(rules()).await;
        let now = Utc::now().timestamp();
        let cases = [
            (
                "expired past the leeway",
                serde_json::json!({"exp": now - 120}),
            ),
            ("not valid yet", serde_json::json!({"nbf": now + 600})),
            (
                "another issuer",
                serde_json::json!({"iss": "https://evil.example"}),
            ),
            (
                "another audience",
                serde_json::json!({"aud": "someone-else"}),
            ),
            ("no subject", serde_json::json!({"sub": null})),
            ("no expiry", serde_json::json!({"exp": null})),
            ("no tenant", serde_json::json!({"tenant": null})),
            (
                "a tenant that is no name",
                serde_json::json!({"tenant": "a b"}),
            ),
            ("no known role", serde_json::json!({"roles": ["superuser"]})),
        ];
        for (case, extra) in cases {
            let token = sign(Algorithm::RS256, "rsa-1", &claims(extra));
            assert!(verifier.verify(&token).await.is_err(), "{case}");
        }
        // Within the leeway an expired token still passes (clock skew).
        let token = sign(
            Algorithm::RS256,
            "rsa-1",
            &claims(serde_json::json!({"exp": now - 5})),
        );
        assert!(verifier.verify(&token).await.is_ok());
    }

    #[tokio::test]
    async fn a_key_verifies_only_its_own_algorithm() {
        let verifier = verifier(rules()).await;
        // HS256 "signed" with the RSA key's public half: the classic confusion.
        let public = std::fs::read(format!("{DATA}/rs256-private.pem")).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        let forged = jsonwebtoken::encode(
            &header,
            &claims(serde_json::json!({})),
            &EncodingKey::from_secret(&public),
        )
        .unwrap();
        assert!(matches!(
            verifier.verify(&forged).await,
            Err(TokenError::UnknownKey)
        ));
        // An EdDSA token naming the RSA key's id.
        let token = sign(Algorithm::EdDSA, "rsa-1", &claims(serde_json::json!({})));
        assert!(verifier.verify(&token).await.is_err());
        // Unsigned.
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims(serde_json::json!({})).to_string())
        );
        assert!(verifier.verify(&unsigned).await.is_err());
        // A key the set does not hold.
        let token = sign(Algorithm::HS256, "rsa-1", &claims(serde_json::json!({})));
        assert!(verifier.verify(&token).await.is_err());
    }

    #[tokio::test]
    async fn claims_may_be_named_and_nested_as_an_identity_provider_has_them() {
        let rules = TokenRules {
            tenant_claim: "org.id".into(),
            roles_claim: "realm_access.roles".into(),
            issuer: None,
            audience: None,
            ..rules()
        };
        let verifier = verifier(rules).await;
        let token = sign(
            Algorithm::EdDSA,
            "ed-1",
            &claims(serde_json::json!({
                "tenant": null, "roles": null,
                "org": {"id": "globex"},
                "realm_access": {"roles": "offline_access operator"},
            })),
        );
        let identity = verifier.verify(&token).await.unwrap();
        assert_eq!(identity.tenant, "globex");
        assert_eq!(identity.role, Role::Operator);
    }

    #[tokio::test]
    async fn an_unusable_key_set_stops_the_start() {
        let empty = std::env::temp_dir().join(format!("empty-jwks-{}.json", std::process::id()));
        std::fs::write(&empty, r#"{"keys": [{"kty": "oct", "k": "c2hvcnQ"}]}"#).unwrap();
        assert!(
            JwtVerifier::new(KeySource::File(empty.clone()), rules())
                .await
                .is_err()
        );
        let _ = std::fs::remove_file(empty);
        assert!(
            JwtVerifier::new(KeySource::File("/nonexistent/jwks.json".into()), rules())
                .await
                .is_err()
        );
    }
}
