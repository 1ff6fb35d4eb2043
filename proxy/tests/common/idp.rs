//! A small OIDC identity provider on loopback for the tests (discovery document and key set
//! it can change, counting key set fetches), and keys made with ring to sign tokens.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mcpgate_proxy::auth::oidc::{IssuerConfig, OidcVerifier};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

pub const AUDIENCE: &str = "https://gateway.example/team/mcp/tools/server";

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A signing key and its public JWK.
pub struct Key {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
    pub public: Vec<u8>,
}

pub fn es256(kid: &str) -> Key {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref().to_vec(); // 0x04 || x || y
    Key {
        kid: kid.into(),
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": b64(&point[1..33]), "y": b64(&point[33..65])}),
        public: point,
    }
}

pub fn ed25519(kid: &str) -> Key {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let public = pair.public_key().as_ref().to_vec();
    Key {
        kid: kid.into(),
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig", "x": b64(&public)}),
        public,
    }
}

/// The identity provider: discovery and a key set it can change; counts key set fetches.
pub struct Provider {
    pub issuer: String,
    pub keys: Arc<Mutex<Vec<Value>>>,
    pub fetches: Arc<AtomicUsize>,
    pub discovery_issuer: Arc<Mutex<Option<String>>>,
}

pub async fn provider() -> Provider {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let issuer = format!("http://{addr}");
    let keys: Arc<Mutex<Vec<Value>>> = Arc::default();
    let fetches: Arc<AtomicUsize> = Arc::default();
    let discovery_issuer: Arc<Mutex<Option<String>>> = Arc::default();
    let (k, f, d, i) = (
        keys.clone(),
        fetches.clone(),
        discovery_issuer.clone(),
        issuer.clone(),
    );
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (keys, fetches, discovery_issuer, issuer) =
                (k.clone(), f.clone(), d.clone(), i.clone());
            let service = service_fn(move |req: Request<Incoming>| {
                let body = match req.uri().path() {
                    "/.well-known/openid-configuration" => {
                        let named = discovery_issuer.lock().unwrap().clone();
                        json!({"issuer": named.unwrap_or_else(|| issuer.clone()),
                            "jwks_uri": format!("{issuer}/keys")})
                    }
                    "/keys" => {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        json!({"keys": *keys.lock().unwrap()})
                    }
                    _ => json!({}),
                };
                async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.to_string()))))
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Provider {
        issuer,
        keys,
        fetches,
        discovery_issuer,
    }
}

/// A provider publishing one ES256 key (`k1`), served by a runtime of its own that the
/// caller keeps alive.
pub fn with_one_key() -> (tokio::runtime::Runtime, Provider, Key) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let provider = runtime.block_on(provider());
    let key = es256("k1");
    provider.publish(&[&key]);
    (runtime, provider, key)
}

impl Provider {
    /// Proxy flags that trust this provider for [`AUDIENCE`], users named by email, then `extra`.
    pub fn proxy_flags<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut flags = vec![
            "--oidc-issuer",
            &self.issuer,
            "--oidc-audience",
            AUDIENCE,
            "--oidc-user-claim",
            "email",
        ];
        flags.extend(extra);
        flags
    }

    pub fn publish(&self, keys: &[&Key]) {
        *self.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    pub fn verifier(&self) -> OidcVerifier {
        let config = IssuerConfig {
            issuer: self.issuer.clone(),
            audiences: vec![AUDIENCE.into()],
            user_claim: "email".into(),
            groups_claim: "groups".into(),
            user_prefix: String::new(),
            group_prefix: String::new(),
            require_verified_email: true,
        };
        config.validate().unwrap();
        OidcVerifier::new(mcpgate_proxy::upstream::client().unwrap(), vec![config])
    }

    pub fn claims(&self) -> Value {
        json!({"iss": self.issuer, "aud": AUDIENCE, "sub": "u-1", "email": "alice@example.com", "email_verified": true,
            "groups": ["team-a", "admins"], "iat": now(), "exp": now() + 300})
    }
}

pub fn sign(key: &Key, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}
