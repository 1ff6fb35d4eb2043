//! OIDC token verification against an in-process identity provider on loopback (discovery
//! document and key set; ES256 and EdDSA keys made with ring): the tokens it must accept and
//! the attack battery it must refuse. The real provider (Dex) is exercised end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::idp::{b64, ed25519, es256, now, provider, sign};
use http::{HeaderMap, HeaderValue, header};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mcpgate_crds::gateway_config::{AccessList, AccessSubject};
use mcpgate_crds::v1alpha1::SubjectKind;
use mcpgate_proxy::auth::access::Access;
use mcpgate_proxy::auth::cache::TokenCache;
use mcpgate_proxy::auth::inbound::Inbound;
use mcpgate_proxy::auth::oidc::{
    IssuerConfig, IssuerDefaults, IssuerEntry, OidcVerifier, issuer_configs,
};
use mcpgate_proxy::auth::{Audience, AuthError, Method};
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
            with(&|c| c["aud"] = json!("another-client")),
            AuthError::Audience,
        ),
        (
            "no audience",
            with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            AuthError::Claim("aud".into()),
        ),
        (
            "unverified email naming the user",
            with(&|c| c["email_verified"] = json!(false)),
            AuthError::UnverifiedEmail,
        ),
        (
            "email without email_verified naming the user",
            with(&|c| {
                c.as_object_mut().unwrap().remove("email_verified");
            }),
            AuthError::UnverifiedEmail,
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

#[tokio::test]
async fn a_provider_that_cannot_be_asked_gets_503_not_a_challenge() {
    let idp = provider().await;
    let ec = es256("ec-1");
    idp.publish(&[&ec]);
    *idp.discovery_issuer.lock().unwrap() = Some("https://evil.example".into());
    let inbound = inbound(idp.verifier(), None);
    let route = "/team-a/mcp/tools/server";
    let request = bearer(&sign(&ec, &idp.claims()));
    let error = inbound.authenticate(&request, route).await.unwrap_err();
    assert_eq!(error, AuthError::Unavailable);
    let refused = inbound.challenge(&request, route, &error).respond();
    assert_eq!(refused.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()[header::RETRY_AFTER], "5");
    assert!(
        !refused.headers().contains_key(header::WWW_AUTHENTICATE),
        "no challenge: the client keeps its token"
    );
    let challenged = inbound
        .challenge(&request, route, &AuthError::Expired)
        .respond();
    assert_eq!(challenged.status(), http::StatusCode::UNAUTHORIZED);
    assert!(challenged.headers().contains_key(header::WWW_AUTHENTICATE));
}

#[test]
fn issuer_settings_are_checked_with_messages_that_say_what_to_fix() {
    let config = |issuer: &str, audience: &str| IssuerConfig {
        issuer: issuer.into(),
        audiences: vec![audience.into()],
        user_claim: "sub".into(),
        groups_claim: "groups".into(),
        user_prefix: String::new(),
        group_prefix: String::new(),
        require_verified_email: true,
    };
    assert!(config("https://idp.example", "gw").validate().is_ok());
    assert!(config("http://127.0.0.1:5556/dex", "gw").validate().is_ok());
    let plain = config("http://idp.example", "gw").validate().unwrap_err();
    assert!(plain.contains("https://"), "{plain}");
    let no_audience = config("https://idp.example", " ").validate().unwrap_err();
    assert!(no_audience.contains("audience"), "{no_audience}");
    assert!(config("not a url", "gw").validate().is_err());
}

fn defaults(user_claim: &str) -> IssuerDefaults {
    IssuerDefaults {
        audiences: vec!["gw".into()],
        user_claim: user_claim.into(),
        groups_claim: "groups".into(),
        require_verified_email: true,
    }
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    headers
}

fn inbound(verifier: OidcVerifier, public_url: Option<&str>) -> Inbound {
    Inbound {
        oidc: verifier,
        service_accounts: None,
        cache: TokenCache::default(),
        public_url: public_url.map(str::to_owned),
        authorization_servers: Vec::new(),
        scheme: "http",
        gateway: None,
    }
}

#[tokio::test]
async fn a_token_for_a_routes_resource_is_accepted_on_that_route_only() {
    let idp = provider().await;
    let ec = es256("ec-1");
    idp.publish(&[&ec]);
    let gateway = "https://mcp.example.com";
    let route = "/team-a/mcp/tools/server";
    let mut claims = idp.claims();
    claims["aud"] = json!(format!("{gateway}{route}"));
    let token = bearer(&sign(&ec, &claims));
    let with_url = inbound(idp.verifier(), Some(gateway));
    let caller = with_url.authenticate(&token, route).await.unwrap();
    assert_eq!(caller.user, "alice@example.com");
    assert_eq!(
        with_url.metadata(&HeaderMap::new(), Some(route), None)["resource"],
        format!("{gateway}{route}"),
        "the audience accepted is the resource the route advertises"
    );
    // Remembered, but still only for its route.
    for other in ["/team-a/mcp/other/server", "/team-b/mcp/tools/server"] {
        assert_eq!(
            with_url.authenticate(&token, other).await,
            Err(AuthError::Audience),
            "{other}"
        );
    }
    // Without a public URL the Host header would name the audience: never accepted.
    let without_url = inbound(idp.verifier(), None);
    assert_eq!(
        without_url.authenticate(&token, route).await,
        Err(AuthError::Audience)
    );
    // A token for the gateway itself works on every route.
    let gateway_token = bearer(&sign(&ec, &idp.claims()));
    for path in [route, "/team-b/mcp/tools/server"] {
        let caller = with_url.authenticate(&gateway_token, path).await.unwrap();
        assert_eq!(caller.audience, Audience::Gateway);
    }
}

#[tokio::test]
async fn the_email_claim_counts_only_when_verified() {
    let idp = provider().await;
    let ec = es256("ec-1");
    idp.publish(&[&ec]);
    let config = |require: bool| {
        let mut d = defaults("sub");
        d.audiences = vec![common::idp::AUDIENCE.into()];
        d.require_verified_email = require;
        let configs = issuer_configs(vec![IssuerEntry::plain(&idp.issuer)], &d).unwrap();
        OidcVerifier::new(mcpgate_proxy::upstream::client().unwrap(), configs)
    };
    let access = Access::new(&AccessList {
        subjects: vec![AccessSubject {
            kind: SubjectKind::User,
            name: "alice@example.com".into(),
        }],
    });
    let mut claims = idp.claims();
    claims["email_verified"] = json!(false);
    let unverified = sign(&ec, &claims);
    let caller = config(true).verify(&unverified).await.unwrap();
    assert_eq!(caller.user, "u-1");
    assert_eq!(
        caller.email, None,
        "an unverified email is not the caller's"
    );
    assert!(!access.permits(&caller));
    // Some providers send the flag as a string.
    claims["email_verified"] = json!("true");
    let caller = config(true).verify(&sign(&ec, &claims)).await.unwrap();
    assert!(access.permits(&caller));
    // The setting for providers that omit the claim.
    let caller = config(false).verify(&unverified).await.unwrap();
    assert_eq!(caller.email.as_deref(), Some("alice@example.com"));
}

#[tokio::test]
async fn with_several_issuers_subjects_are_qualified_by_issuer() {
    let idp = provider().await;
    let ec = es256("ec-1");
    idp.publish(&[&ec]);
    let mut d = defaults("sub");
    d.audiences = vec![common::idp::AUDIENCE.into()];
    let entries = vec![
        IssuerEntry::plain(&idp.issuer),
        IssuerEntry::plain("https://other-idp.example"),
    ];
    let configs = issuer_configs(entries, &d).unwrap();
    assert_eq!(configs[0].user_prefix, format!("{}#", idp.issuer));
    assert_eq!(configs[1].user_prefix, "https://other-idp.example#");
    let verifier = OidcVerifier::new(mcpgate_proxy::upstream::client().unwrap(), configs);
    let caller = verifier.verify(&sign(&ec, &idp.claims())).await.unwrap();
    assert_eq!(caller.user, format!("{}#u-1", idp.issuer));
    let bare = Access::new(&AccessList {
        subjects: vec![AccessSubject {
            kind: SubjectKind::User,
            name: "u-1".into(),
        }],
    });
    assert!(
        !bare.permits(&caller),
        "another issuer's u-1 is not this issuer's"
    );
    // Groups likewise: a partner's `admins` is not the company's.
    assert_eq!(
        caller.groups,
        [
            format!("{}#team-a", idp.issuer),
            format!("{}#admins", idp.issuer)
        ]
    );
    let group = |name: &str| {
        Access::new(&AccessList {
            subjects: vec![AccessSubject {
                kind: SubjectKind::Group,
                name: name.into(),
            }],
        })
    };
    assert!(!group("admins").permits(&caller));
    assert!(group(&format!("{}#admins", idp.issuer)).permits(&caller));
}

#[test]
fn issuers_can_be_set_one_by_one() {
    let entries: Vec<IssuerEntry> = serde_yaml::from_str(
        "- issuer: https://a.example\n  audiences: [a-gw]\n  userClaim: email\n- issuer: https://b.example\n  groupsClaim: roles\n  userPrefix: 'b:'\n  groupPrefix: 'b:'\n  requireVerifiedEmail: false\n",
    )
    .unwrap();
    let configs = issuer_configs(entries, &defaults("sub")).unwrap();
    let (a, b) = (&configs[0], &configs[1]);
    assert_eq!(
        (
            a.audiences.as_slice(),
            a.user_claim.as_str(),
            a.groups_claim.as_str()
        ),
        (&["a-gw".to_owned()][..], "email", "groups")
    );
    assert_eq!(a.user_prefix, "", "verified emails are not qualified");
    assert_eq!(a.group_prefix, "https://a.example#", "groups are");
    assert!(a.require_verified_email);
    assert_eq!(
        (
            b.audiences.as_slice(),
            b.user_claim.as_str(),
            b.groups_claim.as_str()
        ),
        (&["gw".to_owned()][..], "sub", "roles")
    );
    assert_eq!(
        (b.user_prefix.as_str(), b.group_prefix.as_str()),
        ("b:", "b:")
    );
    assert!(!b.require_verified_email);

    let typo: Result<Vec<IssuerEntry>, _> =
        serde_yaml::from_str("- issuer: https://a.example\n  audience: [x]\n");
    assert!(
        typo.unwrap_err()
            .to_string()
            .contains("unknown field `audience`")
    );
    let twice = issuer_configs(
        vec![
            IssuerEntry::plain("https://a.example"),
            IssuerEntry::plain("https://a.example/"),
            IssuerEntry::plain("https://a.example"),
        ],
        &defaults("sub"),
    )
    .unwrap_err();
    assert!(twice.contains("configured twice"), "{twice}");
}
