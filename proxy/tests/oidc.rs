//! OIDC token verification against an in-process identity provider on loopback (discovery
//! document and key set; ES256 and EdDSA keys made with ring): the tokens it must accept and
//! the attack battery it must refuse. The real provider (Dex) is exercised end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::idp::{b64, ed25519, es256, now, provider, sign};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mcpgate_proxy::auth::oidc::IssuerConfig;
use mcpgate_proxy::auth::{AuthError, Method};
use serde_json::{Value, json};

#[tokio::test]
async fn valid_tokens_give_the_caller_and_their_groups() {
    let idp = provider().await;
    let (ec, ed) = (es256("ec-1"), ed25519("ed-1"));
    idp.publish(&[&ec, &ed]);
    let verifier = idp.verifier();
    for key in [&ec, &ed] {
        let identity = verifier.verify(&sign(key, &idp.claims())).await.unwrap();
        assert_eq!(identity.user, "alice@example.com");
        assert_eq!(identity.groups, ["team-a", "admins"]);
        assert_eq!(
            identity.method,
            Method::Oidc {
                issuer: idp.issuer.clone()
            }
        );
    }
    assert_eq!(
        idp.fetches.load(Ordering::SeqCst),
        1,
        "keys are cached between tokens"
    );
    // Clock skew within the leeway is tolerated.
    let mut claims = idp.claims();
    claims["exp"] = json!(now() - 10);
    assert!(verifier.verify(&sign(&ec, &claims)).await.is_ok());
}

#[tokio::test]
async fn the_attack_battery_is_refused_with_its_reason() {
    let idp = provider().await;
    let ec = es256("ec-1");
    idp.publish(&[&ec]);
    let verifier = idp.verifier();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = idp.claims();
        change(&mut claims);
        sign(&ec, &claims)
    };
    let cases: Vec<(&str, String, AuthError)> = vec![
        (
            "expired",
            with(&|c| c["exp"] = json!(now() - 120)),
            AuthError::Expired,
        ),
        (
            "not yet valid",
            with(&|c| c["nbf"] = json!(now() + 120)),
            AuthError::NotYetValid,
        ),
        (
            "wrong audience",
            with(&|c| c["aud"] = json!("https://other.example/mcp")),
            AuthError::Audience,
        ),
        (
            "wrong issuer",
            with(&|c| c["iss"] = json!("https://evil.example")),
            AuthError::Issuer,
        ),
        (
            "no user claim",
            with(&|c| {
                c.as_object_mut().unwrap().remove("email");
            }),
            AuthError::Claim("email".into()),
        ),
        ("garbage", "not.a.jwt".into(), AuthError::Malformed),
    ];
    for (name, token, expected) in cases {
        assert_eq!(verifier.verify(&token).await, Err(expected), "{name}");
    }

    // A tampered payload under a valid signature.
    let token = sign(&ec, &idp.claims());
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims = idp.claims();
    claims["groups"] = json!(["admins", "platform"]);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(verifier.verify(&forged).await, Err(AuthError::Signature));

    // `alg: none`, unsigned.
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(idp.claims().to_string().as_bytes())
    );
    let refused = verifier.verify(&none).await.unwrap_err();
    assert!(
        matches!(refused, AuthError::Algorithm | AuthError::Malformed),
        "{refused:?}"
    );

    // HS256 "signed" with the issuer's public key, the classic key-confusion attack.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("ec-1".into());
    let confused = jsonwebtoken::encode(
        &header,
        &idp.claims(),
        &EncodingKey::from_secret(&ec.public),
    )
    .unwrap();
    assert_eq!(verifier.verify(&confused).await, Err(AuthError::Algorithm));

    // An EdDSA token naming an EC key's kid: the key is of another family.
    let mut ed = ed25519("ec-1");
    ed.kid = "ec-1".into();
    assert_eq!(
        verifier.verify(&sign(&ed, &idp.claims())).await,
        Err(AuthError::Algorithm)
    );
}

#[tokio::test]
async fn unknown_kids_refetch_the_keys_at_most_once_per_interval() {
    let idp = provider().await;
    let (old, new) = (es256("old"), es256("new"));
    idp.publish(&[&old]);
    let verifier = idp.verifier().with_refetch_interval(Duration::from_secs(3));
    assert!(verifier.verify(&sign(&old, &idp.claims())).await.is_ok());
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);

    // Within the interval, tokens with unknown kids do not make the gateway fetch again.
    idp.publish(&[&old, &new]);
    for _ in 0..5 {
        assert_eq!(
            verifier.verify(&sign(&new, &idp.claims())).await,
            Err(AuthError::UnknownKey)
        );
    }
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1, "rate-limited");

    // After it, a burst of them fetches once, and the rotated key is found.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let stranger = es256("stranger");
    let tokens: Vec<String> = (0..5).map(|_| sign(&stranger, &idp.claims())).collect();
    let burst = futures::future::join_all(tokens.iter().map(|t| verifier.verify(t))).await;
    assert!(burst.iter().all(|r| *r == Err(AuthError::UnknownKey)));
    assert_eq!(
        idp.fetches.load(Ordering::SeqCst),
        2,
        "one fetch for the burst"
    );
    assert!(verifier.verify(&sign(&new, &idp.claims())).await.is_ok());
}

#[tokio::test]
async fn rotated_keys_are_found_after_the_interval() {
    let idp = provider().await;
    let (old, new) = (es256("old"), es256("new"));
    idp.publish(&[&old]);
    let verifier = idp
        .verifier()
        .with_refetch_interval(Duration::from_millis(200));
    assert!(verifier.verify(&sign(&old, &idp.claims())).await.is_ok());
    idp.publish(&[&new]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let identity = verifier.verify(&sign(&new, &idp.claims())).await.unwrap();
    assert_eq!(identity.user, "alice@example.com");
}

#[tokio::test]
async fn a_discovery_document_naming_another_issuer_is_not_trusted() {
    let idp = provider().await;
    let ec = es256("ec-1");
    idp.publish(&[&ec]);
    *idp.discovery_issuer.lock().unwrap() = Some("https://evil.example".into());
    assert_eq!(
        idp.verifier().verify(&sign(&ec, &idp.claims())).await,
        Err(AuthError::Unavailable)
    );
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 0);
}

#[test]
fn issuer_settings_are_checked_with_messages_that_say_what_to_fix() {
    let config = |issuer: &str, audience: &str| IssuerConfig {
        issuer: issuer.into(),
        audiences: vec![audience.into()],
        user_claim: "sub".into(),
        groups_claim: "groups".into(),
    };
    assert!(config("https://idp.example", "gw").validate().is_ok());
    assert!(config("http://127.0.0.1:5556/dex", "gw").validate().is_ok());
    let plain = config("http://idp.example", "gw").validate().unwrap_err();
    assert!(plain.contains("https://"), "{plain}");
    let no_audience = config("https://idp.example", " ").validate().unwrap_err();
    assert!(no_audience.contains("audience"), "{no_audience}");
    assert!(config("not a url", "gw").validate().is_err());
}
