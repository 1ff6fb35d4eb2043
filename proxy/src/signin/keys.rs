//! The gateway's own signing keys: ES256 key pairs that sign the access tokens it issues
//! (published as its JWKS) and a 256-bit MAC key for refresh tokens. They are one JSON
//! document, shared by every replica through the key store (a Secret of the gateway
//! namespace, or a 0600 file standalone), so each replica verifies what any other signed.
//! Rotation adds a key and keeps the one before it: tokens signed before a rotation verify
//! until they expire. A new key is published at once and signs only after [`ACTIVATION`],
//! by when every replica has read it (they re-read the keys every minute).

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::AuthError;
use crate::auth::oidc::LEEWAY;

/// Keys kept at most: the signing one and the one before it.
const KEPT: usize = 2;
/// Seconds a new key is published before it signs.
pub const ACTIVATION: u64 = 180;

/// Why keys could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The system's random source failed.
    #[error("the system random source failed")]
    Random,
    /// The stored document is not one this gateway wrote.
    #[error(
        "the sign-in key document is unusable: {0} (delete it to have the gateway create a new one; signed-in clients then sign in again)"
    )]
    Unusable(String),
}

/// The stored form: every key with its creation time, and the MAC key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyDocument {
    /// Newest last.
    pub keys: Vec<StoredKey>,
    /// base64url of 32 random bytes.
    pub mac_key: String,
}

/// One ES256 key pair.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoredKey {
    /// Key id, in token headers and the JWKS.
    pub kid: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// base64url of the PKCS#8 document.
    pub pkcs8: String,
}

impl KeyDocument {
    /// A new document with one key.
    pub fn generate(now: u64) -> Result<Self, KeyError> {
        Ok(Self {
            keys: vec![new_key(now)?],
            mac_key: URL_SAFE_NO_PAD.encode(random::<32>()?),
        })
    }

    /// The document with a new signing key when the newest is older than `period` seconds
    /// (keeping the one before it), or `None` when no rotation is due.
    pub fn rotated(&self, now: u64, period: u64) -> Result<Option<Self>, KeyError> {
        let newest = self.keys.last().map_or(0, |k| k.created);
        if now.saturating_sub(newest) < period {
            return Ok(None);
        }
        let mut keys = self.keys.clone();
        keys.push(new_key(now)?);
        let drop = keys.len().saturating_sub(KEPT);
        keys.drain(..drop);
        Ok(Some(Self {
            keys,
            mac_key: self.mac_key.clone(),
        }))
    }
}

fn new_key(now: u64) -> Result<StoredKey, KeyError> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| KeyError::Random)?;
    Ok(StoredKey {
        kid: URL_SAFE_NO_PAD.encode(random::<12>()?),
        created: now,
        pkcs8: URL_SAFE_NO_PAD.encode(pkcs8.as_ref()),
    })
}

/// `N` random bytes.
pub fn random<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| KeyError::Random)?;
    Ok(bytes)
}

/// A random identifier: `N` bytes, base64url.
pub fn random_id<const N: usize>() -> Result<String, KeyError> {
    Ok(URL_SAFE_NO_PAD.encode(random::<N>()?))
}

/// Keys ready to sign and verify.
pub struct SigningKeys {
    kid: String,
    /// The signing key (ring's ECDSA: several times faster than the JWT crate's).
    signer: EcdsaKeyPair,
    rng: SystemRandom,
    decoding: HashMap<String, DecodingKey>,
    jwks: Value,
    mac: ring::hmac::Key,
}

impl TryFrom<&KeyDocument> for SigningKeys {
    type Error = KeyError;

    fn try_from(document: &KeyDocument) -> Result<Self, KeyError> {
        let unusable = |what: &str| KeyError::Unusable(what.to_owned());
        let now = crate::auth::now().as_secs();
        // The newest key old enough that every replica knows it; the oldest before that.
        let signing = document
            .keys
            .iter()
            .rev()
            .find(|k| k.created.saturating_add(ACTIVATION) <= now)
            .or(document.keys.first())
            .ok_or_else(|| unusable("it has no keys"))?;
        let mut decoding = HashMap::new();
        let mut published = Vec::new();
        for key in &document.keys {
            let pkcs8 = URL_SAFE_NO_PAD
                .decode(&key.pkcs8)
                .map_err(|_| unusable("a key is not base64url"))?;
            let pair = EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &pkcs8,
                &SystemRandom::new(),
            )
            .map_err(|_| unusable("a key is not an ES256 PKCS#8 key pair"))?;
            // Uncompressed point: 0x04, then x and y of 32 bytes each.
            let point = pair.public_key().as_ref();
            let (x, y) = (
                URL_SAFE_NO_PAD.encode(&point[1..33]),
                URL_SAFE_NO_PAD.encode(&point[33..65]),
            );
            decoding.insert(
                key.kid.clone(),
                DecodingKey::from_ec_components(&x, &y)
                    .map_err(|_| unusable("a public key does not decode"))?,
            );
            published.push(json!({"kty": "EC", "crv": "P-256", "x": x, "y": y,
                "kid": key.kid, "use": "sig", "alg": "ES256"}));
        }
        let mac = URL_SAFE_NO_PAD
            .decode(&document.mac_key)
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or_else(|| unusable("the MAC key is not 32 bytes of base64url"))?;
        let signing_der = URL_SAFE_NO_PAD
            .decode(&signing.pkcs8)
            .map_err(|_| unusable("a key is not base64url"))?;
        Ok(Self {
            kid: signing.kid.clone(),
            signer: EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &signing_der,
                &SystemRandom::new(),
            )
            .map_err(|_| unusable("a key is not an ES256 PKCS#8 key pair"))?,
            rng: SystemRandom::new(),
            decoding,
            jwks: json!({"keys": published}),
            mac: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &mac),
        })
    }
}

impl SigningKeys {
    /// `claims` signed as an ES256 JWT (RFC 7515 compact form; the signature is the fixed
    /// 64-byte `r || s` JWS asks for) with the signing key.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, KeyError> {
        let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": self.kid});
        let payload =
            serde_json::to_vec(claims).map_err(|e| KeyError::Unusable(format!("claims: {e}")))?;
        let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(payload));
        let signature = self
            .signer
            .sign(&self.rng, token.as_bytes())
            .map_err(|_| KeyError::Random)?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        Ok(token)
    }

    /// The claims of `token` if one of the keys signed it for `issuer` and it has not
    /// expired; `aud` is the caller's to judge.
    pub fn verify(&self, token: &str, issuer: &str) -> Result<Value, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.alg != Algorithm::ES256 {
            return Err(AuthError::Algorithm);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.decoding.get(kid))
            .ok_or(AuthError::UnknownKey)?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.leeway = LEEWAY;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Value>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    ErrorKind::InvalidIssuer => AuthError::Issuer,
                    ErrorKind::MissingRequiredClaim(claim) => AuthError::Claim(claim.clone()),
                    ErrorKind::InvalidSignature => AuthError::Signature,
                    _ => AuthError::Malformed,
                }
            })
    }

    /// The public keys, as served at the JWKS URL.
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// HMAC-SHA256 of `data` for one `purpose` (base64url): values only the gateway can make.
    pub fn mac(&self, purpose: &str, data: &str) -> String {
        let mut context = ring::hmac::Context::with_key(&self.mac);
        context.update(purpose.as_bytes());
        context.update(&[0]);
        context.update(data.as_bytes());
        URL_SAFE_NO_PAD.encode(context.sign().as_ref())
    }

    /// Whether `tag` is the MAC of `data` for `purpose` (compared in constant time).
    pub fn mac_matches(&self, purpose: &str, data: &str, tag: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else {
            return false;
        };
        let mut message = Vec::with_capacity(purpose.len() + 1 + data.len());
        message.extend_from_slice(purpose.as_bytes());
        message.push(0);
        message.extend_from_slice(data.as_bytes());
        ring::hmac::verify(&self.mac, &message, &tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    const ISSUER: &str = "https://gw.example.com";

    fn claims(exp: u64) -> Value {
        json!({"iss": ISSUER, "sub": "alice", "aud": ISSUER, "exp": exp})
    }

    fn now() -> u64 {
        crate::auth::now().as_secs()
    }

    #[test]
    fn signs_and_verifies_and_publishes_the_public_key_only() {
        let document = KeyDocument::generate(now()).unwrap();
        let keys = SigningKeys::try_from(&document).unwrap();
        let token = keys.sign(&claims(now() + 60)).unwrap();
        assert_eq!(keys.verify(&token, ISSUER).unwrap()["sub"], "alice");
        assert_eq!(keys.verify(&token, "https://other"), Err(AuthError::Issuer));
        let jwks = keys.jwks().to_string();
        assert!(jwks.contains("\"crv\":\"P-256\""), "{jwks}");
        assert!(!jwks.contains("\"d\""), "no private part: {jwks}");
        // The JWKS verifies the token, as any client of the gateway would.
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(keys.jwks().clone()).unwrap();
        let key = DecodingKey::from_jwk(&set.keys[0]).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.validate_aud = false;
        jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap();
    }

    #[test]
    fn expired_foreign_and_tampered_tokens_are_refused() {
        let keys = SigningKeys::try_from(&KeyDocument::generate(now()).unwrap()).unwrap();
        let expired = keys.sign(&claims(now() - LEEWAY - 10)).unwrap();
        assert_eq!(keys.verify(&expired, ISSUER), Err(AuthError::Expired));
        let other = SigningKeys::try_from(&KeyDocument::generate(now()).unwrap()).unwrap();
        let foreign = other.sign(&claims(now() + 60)).unwrap();
        assert_eq!(keys.verify(&foreign, ISSUER), Err(AuthError::UnknownKey));
        let token = keys.sign(&claims(now() + 60)).unwrap();
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(claims(now() + 9999).to_string());
        assert_eq!(
            keys.verify(&parts.join("."), ISSUER),
            Err(AuthError::Signature)
        );
        let hs256 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(now() + 60),
            &EncodingKey::from_secret(b"guess"),
        )
        .unwrap();
        assert_eq!(keys.verify(&hs256, ISSUER), Err(AuthError::Algorithm));
    }

    #[test]
    fn a_new_key_is_published_before_it_signs() {
        let first = KeyDocument::generate(now() - 1000).unwrap();
        let rotated = first.rotated(now(), 100).unwrap().unwrap();
        let keys = SigningKeys::try_from(&rotated).unwrap();
        let token = keys.sign(&claims(now() + 60)).unwrap();
        let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
        assert_eq!(
            kid, rotated.keys[0].kid,
            "the old key signs while the new one spreads"
        );
        assert_eq!(
            keys.jwks()["keys"].as_array().unwrap().len(),
            2,
            "both published"
        );
        let mut settled = rotated.clone();
        settled.keys[1].created = now() - ACTIVATION;
        let keys = SigningKeys::try_from(&settled).unwrap();
        let token = keys.sign(&claims(now() + 60)).unwrap();
        let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
        assert_eq!(kid, settled.keys[1].kid);
    }

    #[test]
    fn rotation_keeps_the_previous_key_verifying() {
        let start = now() - 10_000;
        let first = KeyDocument::generate(start).unwrap();
        assert_eq!(first.rotated(start + 10, 100).unwrap(), None, "not due");
        let before = SigningKeys::try_from(&first).unwrap();
        let old_token = before.sign(&claims(now() + 60)).unwrap();
        let second = first.rotated(start + 100, 100).unwrap().unwrap();
        assert_eq!(second.keys.len(), 2);
        assert_eq!(second.mac_key, first.mac_key, "refresh tokens survive");
        let after = SigningKeys::try_from(&second).unwrap();
        assert_eq!(after.verify(&old_token, ISSUER).unwrap()["sub"], "alice");
        let new_token = after.sign(&claims(now() + 60)).unwrap();
        assert_eq!(
            before.verify(&new_token, ISSUER),
            Err(AuthError::UnknownKey),
            "signed with the new key"
        );
        let third = second.rotated(start + 200, 100).unwrap().unwrap();
        assert_eq!(third.keys.len(), KEPT, "the oldest goes");
        let later = SigningKeys::try_from(&third).unwrap();
        assert_eq!(later.verify(&old_token, ISSUER), Err(AuthError::UnknownKey));
    }

    #[test]
    fn macs_are_bound_to_their_purpose() {
        let keys = SigningKeys::try_from(&KeyDocument::generate(now()).unwrap()).unwrap();
        let tag = keys.mac("refresh", "family.1");
        assert!(keys.mac_matches("refresh", "family.1", &tag));
        assert!(!keys.mac_matches("refresh", "family.2", &tag));
        assert!(!keys.mac_matches("other", "family.1", &tag));
        assert!(!keys.mac_matches("refresh", "family.1", "not base64 !"));
    }

    #[test]
    fn a_broken_document_says_what_to_do() {
        let mut document = KeyDocument::generate(now()).unwrap();
        document.mac_key = "short".into();
        let error = SigningKeys::try_from(&document).err().unwrap().to_string();
        assert!(error.contains("delete it"), "{error}");
    }
}
