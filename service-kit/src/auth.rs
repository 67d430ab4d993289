//! Bearer-token (JWT) authentication and home-scoped authorisation for the
//! REST APIs.
//!
//! A token names the homes its holder may use (`homes`) or makes its holder
//! an administrator (`admin: true`, every home). Services verify tokens with
//! a key from the environment ([`AuthConfig`]) and never issue them, except
//! through [`issue_hs256`] for tests and the local stack.
//!
//! # Wiring a service
//! ```ignore
//! // Config: #[command(flatten)] pub auth: AuthConfig,
//! let verifier = config.auth.verifier()?; // refuses to start without a key
//! let api = Router::new()
//!     .route("/api/v1/homes/{id}", get(get_home))
//!     // Every route of `api` now answers 401 without a valid token.
//!     .route_layer(middleware::from_fn_with_state(verifier, auth::authenticate));
//! let doc = { let mut d = ApiDoc::openapi(); auth::document_bearer_auth(&mut d, "/api/"); d };
//! ```
//!
//! # In a handler
//! Take a [`Caller`] (first, before body extractors) and check what the
//! request touches:
//! ```ignore
//! async fn get_home(caller: Caller, Path(id): Path<String>) -> Result<Json<Home>, Problem> {
//!     caller.require_home(&id)?;            // 403 unless the token names the home
//!     ...
//! }
//! async fn create_home(caller: Caller, ...) -> ... { caller.require_admin()?; ... }
//! ```
//! For a resource found by its own id (a device, a command), look it up
//! within [`Caller::home_scope`] (`None`: every home) and answer 404 when it
//! is outside, so ids of other homes are not disclosed.
//!
//! # Status codes
//! * 401 `urn:warmhouse:problem:unauthorized` with `WWW-Authenticate: Bearer`
//!   (and `error="invalid_token"` when a token was sent): no token, not a
//!   JWT, bad signature, expired (30 s leeway for clock skew), not yet
//!   valid, wrong issuer or audience, `sub` or `exp` missing.
//! * 403 `urn:warmhouse:problem:forbidden`: valid token, home not in it (or
//!   an admin-only operation).

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::problem::Problem;

/// HS256 shared secret (raw bytes of the value).
pub const SECRET_ENV: &str = "WARMHOUSE_JWT_SECRET";
/// PEM public key (RSA, EC P-256/P-384 or Ed25519), or the path of a PEM file.
pub const PUBLIC_KEY_ENV: &str = "WARMHOUSE_JWT_PUBLIC_KEY";
/// When set, tokens must carry this `iss`.
pub const ISSUER_ENV: &str = "WARMHOUSE_JWT_ISSUER";
/// When set, tokens must carry this `aud`.
pub const AUDIENCE_ENV: &str = "WARMHOUSE_JWT_AUDIENCE";
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;
/// Shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key at least
/// as long as the hash (256 bits).
pub const MIN_SECRET_BYTES: usize = 32;
/// Name of the security scheme in the OpenAPI documents.
pub const SECURITY_SCHEME: &str = "bearer";

/// How a service verifies tokens (flags or environment variables). At least
/// one key is required: a service without one refuses to start rather than
/// serve homes to anyone.
#[derive(clap::Args, Clone, Default)]
pub struct AuthConfig {
    /// HS256 shared secret that signs bearer tokens (at least 32 bytes).
    #[arg(long, env = SECRET_ENV, hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Public key verifying RS256/ES256/EdDSA bearer tokens: PEM text, or
    /// the path of a PEM file.
    #[arg(long, env = PUBLIC_KEY_ENV, hide_env_values = true)]
    pub jwt_public_key: Option<String>,
    /// Issuer (`iss`) tokens must name; any when unset.
    #[arg(long, env = ISSUER_ENV)]
    pub jwt_issuer: Option<String>,
    /// Audience (`aud`) tokens must name; when unset, tokens must carry none.
    #[arg(long, env = AUDIENCE_ENV)]
    pub jwt_audience: Option<String>,
}

/// Secrets stay out of logs and panics.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |v: &Option<String>| if v.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("AuthConfig")
            .field("jwt_secret", &set(&self.jwt_secret))
            .field("jwt_public_key", &set(&self.jwt_public_key))
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .finish()
    }
}

impl AuthConfig {
    /// HS256 with `secret`, no issuer or audience (tests, the local stack).
    pub fn with_secret(secret: impl Into<String>) -> Self {
        Self {
            jwt_secret: Some(secret.into()),
            ..Self::default()
        }
    }

    /// The verifier for these settings; an error naming the variables when
    /// no key is configured or a key is unusable.
    pub fn verifier(&self) -> anyhow::Result<Verifier> {
        let mut keys = Vec::new();
        if let Some(secret) = self.jwt_secret.as_deref().filter(|s| !s.is_empty()) {
            if secret.len() < MIN_SECRET_BYTES {
                bail!(
                    "{SECRET_ENV} is {} bytes; an HS256 secret needs at least {MIN_SECRET_BYTES} \
                     (e.g. `openssl rand -hex 32`)",
                    secret.len()
                );
            }
            keys.push(self.key(
                DecodingKey::from_secret(secret.as_bytes()),
                vec![Algorithm::HS256],
            ));
        }
        if let Some(value) = self
            .jwt_public_key
            .as_deref()
            .filter(|s| !s.trim().is_empty())
        {
            let pem = read_pem(value)?;
            let key = public_key(&pem).with_context(|| {
                format!(
                    "{PUBLIC_KEY_ENV} holds no RSA, EC (P-256/P-384) or Ed25519 public key in PEM"
                )
            })?;
            let algorithms = key.family().algorithms().to_vec();
            keys.push(self.key(key, algorithms));
        }
        if keys.is_empty() {
            bail!(
                "no key to verify bearer tokens: set {SECRET_ENV} (HS256 shared secret) or \
                 {PUBLIC_KEY_ENV} (PEM public key for RS256, ES256 or EdDSA); every /api/v1 \
                 endpoint requires a token"
            );
        }
        Ok(Verifier { keys: keys.into() })
    }

    fn key(&self, key: DecodingKey, algorithms: Vec<Algorithm>) -> VerifyingKey {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = algorithms;
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &self.jwt_issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        if let Some(audience) = &self.jwt_audience {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        VerifyingKey { key, validation }
    }
}

/// PEM text as it is, or read from a file; `\n` escapes (one-line env
/// files) become newlines.
fn read_pem(value: &str) -> anyhow::Result<String> {
    let text = if value.trim_start().starts_with("-----BEGIN") {
        value.to_string()
    } else {
        std::fs::read_to_string(Path::new(value.trim()))
            .with_context(|| format!("{PUBLIC_KEY_ENV} is neither PEM text nor a readable file"))?
    };
    Ok(if text.contains('\n') {
        text
    } else {
        text.replace("\\n", "\n")
    })
}

fn public_key(pem: &str) -> anyhow::Result<DecodingKey> {
    let bytes = pem.as_bytes();
    DecodingKey::from_ed_pem(bytes)
        .or_else(|_| DecodingKey::from_ec_pem(bytes))
        .or_else(|_| DecodingKey::from_rsa_pem(bytes))
        .context("parsing the PEM public key")
}

/// The claims Warmhouse reads. `sub` and `exp` are required; `homes` and
/// `admin` default to none and false, so a token without them grants
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who holds the token (user or service id); logged, never trusted for
    /// access.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Homes the holder may read and command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub homes: Vec<String>,
    /// Administrators use every home and manage homes themselves.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// One audience or several (RFC 7519 allows both forms).
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "one_or_many")]
    pub aud: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

impl Claims {
    /// Claims for `homes`, valid for `ttl` from now.
    pub fn for_homes<I, S>(sub: impl Into<String>, homes: I, ttl: Duration) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let now = jsonwebtoken::get_current_timestamp();
        Self {
            sub: sub.into(),
            exp: now.saturating_add(ttl.as_secs()),
            homes: homes.into_iter().map(Into::into).collect(),
            admin: false,
            iss: None,
            aud: Vec::new(),
            iat: Some(now),
            nbf: None,
        }
    }

    /// Administrator claims, valid for `ttl` from now.
    pub fn admin(sub: impl Into<String>, ttl: Duration) -> Self {
        Self {
            admin: true,
            ..Self::for_homes(sub, Vec::<String>::new(), ttl)
        }
    }
}

mod one_or_many {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }

    pub fn serialize<S: Serializer>(values: &[String], serializer: S) -> Result<S::Ok, S::Error> {
        match values {
            [one] => one.serialize(serializer),
            many => many.serialize(serializer),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<String>, D::Error> {
        Ok(match OneOrMany::deserialize(deserializer)? {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        })
    }
}

/// Signs `claims` with HS256 (tests, the local stack, `warmhouse-token`).
pub fn issue_hs256(secret: impl AsRef<[u8]>, claims: &Claims) -> anyhow::Result<String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_ref()),
    )
    .context("signing a JWT")
}

/// A fresh random HS256 secret (64 hex digits) for the local stack and tests.
pub fn generate_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Tokens for the tests of services that verify them (feature
/// `test-support`: not compiled into the services).
#[cfg(any(test, feature = "test-support"))]
pub mod testing {
    use std::time::Duration;

    use super::{issue_hs256, AuthConfig, Claims};

    /// Signs test tokens with an HS256 secret, and with `issuer` when set,
    /// matching the [`AuthConfig`] it hands to the service under test.
    #[derive(Debug, Clone)]
    pub struct TestTokens {
        secret: String,
        issuer: Option<String>,
    }

    impl TestTokens {
        pub fn new(secret: impl Into<String>, issuer: Option<&str>) -> Self {
            Self {
                secret: secret.into(),
                issuer: issuer.map(str::to_string),
            }
        }

        /// The configuration that accepts these tokens.
        pub fn config(&self) -> AuthConfig {
            AuthConfig {
                jwt_issuer: self.issuer.clone(),
                ..AuthConfig::with_secret(&self.secret)
            }
        }

        /// `claims` signed, with the issuer set.
        pub fn sign(&self, claims: Claims) -> anyhow::Result<String> {
            let claims = Claims {
                iss: self.issuer.clone(),
                ..claims
            };
            issue_hs256(&self.secret, &claims)
        }

        /// An administrator's token, valid for ten minutes.
        pub fn admin(&self) -> anyhow::Result<String> {
            self.sign(Claims::admin("test-admin", Duration::from_secs(600)))
        }

        /// A token for `homes`, valid for ten minutes.
        pub fn for_homes(&self, homes: &[&str]) -> anyhow::Result<String> {
            self.sign(Claims::for_homes(
                "test-user",
                homes.iter().copied(),
                Duration::from_secs(600),
            ))
        }

        /// Admin credentials the service must refuse with 401, each with a
        /// phrase the problem's `detail` contains: none, not a JWT,
        /// expired, signed with another key, and (with an issuer) from
        /// another issuer and without one.
        pub fn refused(&self) -> anyhow::Result<Vec<(Option<String>, &'static str)>> {
            let hour = Duration::from_secs(3600);
            let expired = Claims {
                exp: jsonwebtoken::get_current_timestamp().saturating_sub(120),
                ..Claims::admin("late", Duration::ZERO)
            };
            let forger = Self::new(format!("not-{}-but-another", self.secret), None);
            let forged = Claims {
                iss: self.issuer.clone(),
                ..Claims::admin("forger", hour)
            };
            let mut tokens = vec![
                (None, "needs a bearer token"),
                (Some("garbage".to_string()), "not a well-formed JWT"),
                (Some(self.sign(expired)?), "expired"),
                (Some(forger.sign(forged)?), "signature"),
            ];
            if self.issuer.is_some() {
                let stranger = Claims {
                    iss: Some("someone-else".into()),
                    ..Claims::admin("stranger", hour)
                };
                let anonymous = Claims::admin("anonymous", hour);
                tokens.push((Some(issue_hs256(&self.secret, &stranger)?), "issuer"));
                tokens.push((Some(issue_hs256(&self.secret, &anonymous)?), "iss claim"));
            }
            Ok(tokens)
        }
    }
}

struct VerifyingKey {
    key: DecodingKey,
    validation: Validation,
}

/// Verifies bearer tokens against the configured keys; cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    keys: Arc<[VerifyingKey]>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algorithms: Vec<_> = self
            .keys
            .iter()
            .flat_map(|k| k.validation.algorithms.iter().copied())
            .collect();
        f.debug_struct("Verifier")
            .field("algorithms", &algorithms)
            .finish()
    }
}

impl Verifier {
    /// The caller a request's `Authorization: Bearer` header proves, or the
    /// 401 problem to answer with.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Problem> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let value = match (values.next(), values.next()) {
            (Some(value), None) => value,
            (None, _) => {
                return Err(Problem::unauthorized(
                    None,
                    "this endpoint needs a bearer token: send `Authorization: Bearer <JWT>`",
                ))
            }
            // Which one would count is ambiguous; refuse rather than guess.
            (Some(_), Some(_)) => {
                return Err(Problem::unauthorized(
                    Some("invalid_request"),
                    "send one Authorization header, not several",
                ))
            }
        };
        let value = value.to_str().unwrap_or_default();
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Err(Problem::unauthorized(
                    None,
                    "the Authorization header must be `Bearer <JWT>`",
                ))
            }
        };
        self.verify(token)
    }

    /// The caller `token` proves, or the 401 problem to answer with.
    pub fn verify(&self, token: &str) -> Result<Caller, Problem> {
        let invalid = |detail: &str| Problem::unauthorized(Some("invalid_token"), detail);
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("the bearer token is not a well-formed JWT"))?;
        let key = self
            .keys
            .iter()
            .find(|k| k.validation.algorithms.contains(&header.alg))
            .ok_or_else(|| invalid("the token's signing algorithm is not accepted here"))?;
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation).map_err(|err| {
                tracing::debug!(error = %err, "bearer token refused");
                invalid(&refusal(err.kind()))
            })?;
        Ok(Caller::from_claims(data.claims))
    }
}

/// Why a token was refused, for the client (never the key or the claims).
fn refusal(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::InvalidIssuer => "the token's issuer (iss) is not accepted".into(),
        ErrorKind::InvalidAudience => "the token's audience (aud) is not accepted".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token lacks the {claim} claim"),
        ErrorKind::InvalidClaimFormat(claim) => format!("the token's {claim} claim is malformed"),
        ErrorKind::InvalidAlgorithm => "the token's signing algorithm is not accepted here".into(),
        // The claims are parsed before the spec checks run, so a missing
        // `sub` or `exp` shows up as serde's "missing field".
        ErrorKind::Json(err) => match err.to_string().split('`').collect::<Vec<_>>()[..] {
            [prefix, claim, ..] if prefix.ends_with("missing field ") => {
                format!("the token lacks the {claim} claim")
            }
            _ => "the token's claims are malformed".into(),
        },
        _ => "the bearer token is not valid".into(),
    }
}

/// Who made a request, as its verified token says. Extract it in handlers
/// behind [`authenticate`]; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    subject: String,
    admin: bool,
    /// Sorted and without duplicates.
    homes: Vec<String>,
}

impl Caller {
    pub fn from_claims(claims: Claims) -> Self {
        let mut homes = claims.homes;
        homes.sort();
        homes.dedup();
        Self {
            subject: claims.sub,
            admin: claims.admin,
            homes,
        }
    }

    /// The token's `sub`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub fn is_admin(&self) -> bool {
        self.admin
    }

    /// Homes the token names (sorted); an admin may use others too.
    pub fn homes(&self) -> &[String] {
        &self.homes
    }

    /// The homes a query must stay within: `None` for an admin (every
    /// home), else the token's homes (possibly none).
    pub fn home_scope(&self) -> Option<&[String]> {
        (!self.admin).then_some(self.homes.as_slice())
    }

    pub fn may_use_home(&self, home: &str) -> bool {
        self.admin
            || self
                .homes
                .binary_search_by(|h| h.as_str().cmp(home))
                .is_ok()
    }

    /// 403 unless the token names `home` (or is an admin's).
    pub fn require_home(&self, home: &str) -> Result<(), Problem> {
        if self.may_use_home(home) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "the bearer token does not grant home {home:?}"
            )))
        }
    }

    /// 403 unless the token is an administrator's.
    pub fn require_admin(&self) -> Result<(), Problem> {
        if self.admin {
            Ok(())
        } else {
            Err(Problem::forbidden(
                "only an administrator's token may do this",
            ))
        }
    }
}

/// The [`Caller`] that [`authenticate`] put in the request, or, on a route
/// without it but with a [`Verifier`] extension, the one the header proves.
/// Neither is a wiring bug: 500, logged.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        if let Some(verifier) = parts.extensions.get::<Verifier>() {
            return verifier.authenticate(&parts.headers);
        }
        tracing::error!(
            path = %parts.uri.path(),
            "Caller extracted on a route without auth::authenticate or a Verifier extension"
        );
        Err(Problem::internal())
    }
}

/// Middleware (`axum::middleware::from_fn_with_state(verifier, authenticate)`)
/// that answers 401 unless the request carries a valid bearer token, and
/// hands the [`Caller`] to the handler. As a `route_layer` it covers every
/// route of its router, so a new endpoint cannot be left open by mistake.
pub async fn authenticate(
    State(verifier): State<Verifier>,
    mut request: Request,
    next: Next,
) -> Response {
    match verifier.authenticate(request.headers()) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(problem) => problem.into_response(),
    }
}

/// Adds the bearer (JWT) security scheme to `doc`, so Swagger UI offers
/// "Authorize", and marks every operation under `prefix` as requiring it,
/// with its 401 answer. Other paths (health, metrics) stay open.
pub fn document_bearer_auth(doc: &mut utoipa::openapi::OpenApi, prefix: &str) {
    use utoipa::openapi::response::ResponseBuilder;
    use utoipa::openapi::security::{
        HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
    };
    use utoipa::openapi::{ComponentsBuilder, ContentBuilder, Ref};

    let scheme = SecurityScheme::Http(
        HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .description(Some(
                "JWT with `sub`, `exp`, and `homes` (home ids the holder may use) or \
                 `admin: true`. Locally: `warmhouse-token --home <id>` or `--admin`.",
            ))
            .build(),
    );
    doc.components
        .get_or_insert_with(|| ComponentsBuilder::new().build())
        .add_security_scheme(SECURITY_SCHEME, scheme);
    let unauthorized = ResponseBuilder::new()
        .description("No valid bearer token (missing, malformed, expired, bad signature)")
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build();
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.starts_with(prefix) {
            continue;
        }
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ]
        .into_iter()
        .flatten()
        {
            operation.security = Some(vec![SecurityRequirement::new(
                SECURITY_SCHEME,
                Vec::<String>::new(),
            )]);
            operation
                .responses
                .responses
                .entry("401".into())
                .or_insert_with(|| unauthorized.clone().into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    // Test-only key pairs (openssl genpkey), never used outside these tests.
    const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\n\
        MC4CAQAwBQYDK2VwBCIEIBGVVBUtXZIgxTYy8tTI9+iY4wxR9PF/MCwYtjPZTmaU\n\
        -----END PRIVATE KEY-----\n";
    const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\n\
        MCowBQYDK2VwAyEARb5o7QvA/3jFdLYdNWRBx0ZYCNQ7tK2hvptUtYM8Y3Y=\n\
        -----END PUBLIC KEY-----\n";
    const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\n\
        MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg7QL41h/6zahIsz9/\n\
        d+SYdpAblLjk7tRC+m3OjIQlyFqhRANCAATbZA0DsDD2oYTsI9t4cC44cJcsDM/h\n\
        G9BQq7LzrgBh9CyoX97HOHESoEnK2YiPQ86lpn8346SC1YWL7y99VQc9\n\
        -----END PRIVATE KEY-----\n";
    const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\n\
        MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE22QNA7Aw9qGE7CPbeHAuOHCXLAzP\n\
        4RvQUKuy864AYfQsqF/exzhxEqBJytmIj0POpaZ/N+OkgtWFi+8vfVUHPQ==\n\
        -----END PUBLIC KEY-----\n";

    fn hour() -> Duration {
        Duration::from_secs(3600)
    }

    fn verifier() -> Verifier {
        AuthConfig::with_secret(SECRET).verifier().unwrap()
    }

    fn refusal_of(verifier: &Verifier, token: &str) -> String {
        let problem = verifier.verify(token).unwrap_err();
        assert_eq!(problem.status, 401, "{problem:?}");
        problem.detail
    }

    fn sign(claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn parses_claims_with_defaults() {
        let claims: Claims =
            serde_json::from_value(serde_json::json!({"sub": "u1", "exp": 10})).unwrap();
        assert!(claims.homes.is_empty());
        assert!(!claims.admin);
        let claims: Claims = serde_json::from_value(serde_json::json!({
            "sub": "u1", "exp": 10, "homes": ["b", "a", "a"], "admin": false,
            "aud": ["x", "y"], "iss": "idp", "custom": 1
        }))
        .unwrap();
        assert_eq!(claims.aud, ["x", "y"]);
        let caller = Caller::from_claims(claims);
        assert_eq!(caller.homes(), ["a", "b"]);
        assert!(caller.may_use_home("a") && !caller.may_use_home("c"));
        assert_eq!(
            caller.home_scope(),
            Some(&["a".to_string(), "b".to_string()][..])
        );
        let one: Claims =
            serde_json::from_value(serde_json::json!({"sub": "u", "exp": 1, "aud": "x"})).unwrap();
        assert_eq!(one.aud, ["x"]);
        assert_eq!(serde_json::to_value(&one).unwrap()["aud"], "x");
        for bad in [
            serde_json::json!({"exp": 10}),
            serde_json::json!({"sub": "u"}),
            serde_json::json!({"sub": "u", "exp": 1, "homes": "a"}),
            serde_json::json!({"sub": "u", "exp": 1, "admin": "yes"}),
        ] {
            assert!(
                serde_json::from_value::<Claims>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn round_trips_and_scopes_homes() {
        let verifier = verifier();
        let token = issue_hs256(SECRET, &Claims::for_homes("alice", ["home-a"], hour())).unwrap();
        let caller = verifier.verify(&token).unwrap();
        assert_eq!(caller.subject(), "alice");
        assert!(!caller.is_admin());
        assert!(caller.require_home("home-a").is_ok());
        let refused = caller.require_home("home-b").unwrap_err();
        assert_eq!(refused.status, 403);
        assert_eq!(refused.kind, "urn:warmhouse:problem:forbidden");
        assert_eq!(caller.require_admin().unwrap_err().status, 403);

        let admin = verifier
            .verify(&issue_hs256(SECRET, &Claims::admin("root", hour())).unwrap())
            .unwrap();
        assert!(admin.is_admin() && admin.may_use_home("anything"));
        assert_eq!(admin.home_scope(), None);
        assert!(admin.require_admin().is_ok());
    }

    #[test]
    fn refuses_bad_tokens_with_a_reason() {
        let verifier = verifier();
        let now = jsonwebtoken::get_current_timestamp();
        assert!(refusal_of(&verifier, "garbage").contains("not a well-formed JWT"));
        assert!(refusal_of(&verifier, "a.b.c").contains("not a well-formed JWT"));
        let expired = sign(&serde_json::json!({"sub": "u", "exp": now - 120}));
        assert_eq!(refusal_of(&verifier, &expired), "the token has expired");
        // Within the leeway an expired token still passes (clock skew).
        let skewed = sign(&serde_json::json!({"sub": "u", "exp": now - 10}));
        assert!(verifier.verify(&skewed).is_ok());
        let early = sign(&serde_json::json!({"sub": "u", "exp": now + 600, "nbf": now + 300}));
        assert!(refusal_of(&verifier, &early).contains("not valid yet"));
        let no_sub = sign(&serde_json::json!({"exp": now + 60}));
        assert_eq!(
            refusal_of(&verifier, &no_sub),
            "the token lacks the sub claim"
        );
        let no_exp = sign(&serde_json::json!({"sub": "u"}));
        assert_eq!(
            refusal_of(&verifier, &no_exp),
            "the token lacks the exp claim"
        );
        let bad_homes = sign(&serde_json::json!({"sub": "u", "exp": now + 60, "homes": 5}));
        assert!(refusal_of(&verifier, &bad_homes).contains("malformed"));
        let other_key = issue_hs256(
            "another-secret-another-secret-another",
            &Claims::admin("u", hour()),
        )
        .unwrap();
        assert!(refusal_of(&verifier, &other_key).contains("signature"));
        // An audience nobody configured is refused (RFC 7519 §4.1.3).
        let with_aud = sign(&serde_json::json!({"sub": "u", "exp": now + 60, "aud": "other"}));
        assert!(refusal_of(&verifier, &with_aud).contains("audience"));
        // alg=none, and a public-key algorithm where only a secret is set.
        let none = format!(
            "{}.{}.",
            "eyJhbGciOiJub25lIn0", "eyJzdWIiOiJ1IiwiZXhwIjo5OTk5OTk5OTk5LCJhZG1pbiI6dHJ1ZX0"
        );
        assert!(refusal_of(&verifier, &none).contains("well-formed"));
        let ed = jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            &Claims::admin("u", hour()),
            &EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert!(refusal_of(&verifier, &ed).contains("algorithm"));
    }

    #[test]
    fn refused_tokens_are_refused_for_the_reason_they_name() {
        let tokens = testing::TestTokens::new(SECRET, Some("me"));
        let verifier = tokens.config().verifier().unwrap();
        assert!(verifier.verify(&tokens.admin().unwrap()).is_ok());
        let caller = verifier.verify(&tokens.for_homes(&["h"]).unwrap()).unwrap();
        assert_eq!(caller.homes(), ["h"]);
        let tokens = tokens.refused().unwrap();
        assert_eq!(tokens.len(), 6);
        for (token, says) in tokens {
            let mut headers = HeaderMap::new();
            if let Some(token) = token {
                headers.insert(
                    header::AUTHORIZATION,
                    HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
                );
            }
            let problem = verifier.authenticate(&headers).unwrap_err();
            assert!(
                problem.detail.contains(says),
                "{} lacks {says}",
                problem.detail
            );
        }
    }

    #[test]
    fn checks_issuer_and_audience_when_configured() {
        let config = AuthConfig {
            jwt_issuer: Some("https://idp.example".into()),
            jwt_audience: Some("warmhouse".into()),
            ..AuthConfig::with_secret(SECRET)
        };
        let verifier = config.verifier().unwrap();
        let mut claims = Claims::admin("u", hour());
        assert!(refusal_of(&verifier, &issue_hs256(SECRET, &claims).unwrap()).contains("lacks"));
        claims.iss = Some("https://idp.example".into());
        claims.aud = vec!["warmhouse".into()];
        assert!(verifier
            .verify(&issue_hs256(SECRET, &claims).unwrap())
            .is_ok());
        claims.iss = Some("https://evil.example".into());
        assert!(refusal_of(&verifier, &issue_hs256(SECRET, &claims).unwrap()).contains("issuer"));
        claims.iss = Some("https://idp.example".into());
        claims.aud = vec!["someone-else".into()];
        assert!(refusal_of(&verifier, &issue_hs256(SECRET, &claims).unwrap()).contains("audience"));
    }

    #[test]
    fn verifies_public_key_tokens() {
        for (private, public, alg) in [
            (ED_PRIVATE, ED_PUBLIC, Algorithm::EdDSA),
            (EC_PRIVATE, EC_PUBLIC, Algorithm::ES256),
        ] {
            let config = AuthConfig {
                jwt_public_key: Some(public.into()),
                ..AuthConfig::default()
            };
            let verifier = config.verifier().unwrap();
            let encoding = match alg {
                Algorithm::EdDSA => EncodingKey::from_ed_pem(private.as_bytes()),
                _ => EncodingKey::from_ec_pem(private.as_bytes()),
            }
            .unwrap();
            let token = jsonwebtoken::encode(
                &Header::new(alg),
                &Claims::for_homes("svc", ["h1"], hour()),
                &encoding,
            )
            .unwrap();
            assert!(
                verifier.verify(&token).unwrap().may_use_home("h1"),
                "{alg:?}"
            );
            // A secret-signed token is not accepted by a public-key-only verifier.
            let hs = issue_hs256(SECRET, &Claims::admin("u", hour())).unwrap();
            assert!(refusal_of(&verifier, &hs).contains("algorithm"));
        }
        // One-line env files carry `\n` escapes.
        let escaped = ED_PUBLIC.replace('\n', "\\n");
        let config = AuthConfig {
            jwt_public_key: Some(escaped),
            ..AuthConfig::default()
        };
        assert!(config.verifier().is_ok());
    }

    #[test]
    fn refuses_to_start_without_a_usable_key() {
        let err = AuthConfig::default().verifier().unwrap_err().to_string();
        assert!(
            err.contains(SECRET_ENV) && err.contains(PUBLIC_KEY_ENV),
            "{err}"
        );
        let err = AuthConfig::with_secret("short")
            .verifier()
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 32"), "{err}");
        let config = AuthConfig {
            jwt_public_key: Some(
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----".into(),
            ),
            ..AuthConfig::default()
        };
        assert!(format!("{:#}", config.verifier().unwrap_err()).contains(PUBLIC_KEY_ENV));
        let debug = format!("{:?}", AuthConfig::with_secret(SECRET));
        assert!(!debug.contains(SECRET), "{debug}");
    }

    #[test]
    fn reads_the_authorization_header() {
        let verifier = verifier();
        let token = issue_hs256(SECRET, &Claims::for_homes("u", ["h"], hour())).unwrap();
        let mut headers = HeaderMap::new();
        let missing = verifier.authenticate(&headers).unwrap_err();
        assert_eq!(missing.status, 401);
        assert!(missing.detail.contains("Authorization: Bearer"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dTpw"),
        );
        assert_eq!(verifier.authenticate(&headers).unwrap_err().status, 401);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("bearer {token}")).unwrap(),
        );
        assert_eq!(verifier.authenticate(&headers).unwrap().subject(), "u");
        headers.append(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        assert_eq!(verifier.authenticate(&headers).unwrap_err().status, 401);
    }

    #[test]
    fn documents_the_bearer_scheme() {
        use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
        let mut doc = utoipa::openapi::OpenApiBuilder::new().build();
        for path in ["/api/v1/things", "/healthz"] {
            doc.paths.paths.insert(
                path.into(),
                PathItem::new(HttpMethod::Get, OperationBuilder::new().build()),
            );
        }
        document_bearer_auth(&mut doc, "/api/");
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(
            json["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert_eq!(
            json["paths"]["/api/v1/things"]["get"]["security"][0]["bearer"],
            serde_json::json!([])
        );
        assert!(json["paths"]["/api/v1/things"]["get"]["responses"]["401"].is_object());
        assert!(json["paths"]["/healthz"]["get"].get("security").is_none());
    }
}
