//! Kubernetes ServiceAccount tokens, for agents running in the cluster: the API server's
//! TokenReview decides, with the gateway's audience, so a token minted for another service
//! (or the default API audience) is refused. Only ServiceAccount identities are accepted,
//! named `system:serviceaccount:<namespace>:<name>`. The proxy needs RBAC to create
//! `tokenreviews` (the chart grants it).

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

use super::{Audience, AuthError, Identity, Method};

/// What a ServiceAccount's user name starts with.
pub const PREFIX: &str = "system:serviceaccount:";
/// Reviews in flight at once: a burst of new tokens queues instead of flooding the API server.
const CONCURRENT_REVIEWS: usize = 16;
/// How long the API server may take to review a token.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// Reviews ServiceAccount tokens with the API server.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    audiences: Vec<String>,
    permits: tokio::sync::Semaphore,
}

impl TokenReviewer {
    /// A reviewer accepting tokens minted for any of `audiences` (at least one).
    pub fn new(client: kube::Client, audiences: Vec<String>) -> Self {
        Self {
            api: Api::all(client),
            audiences,
            permits: tokio::sync::Semaphore::new(CONCURRENT_REVIEWS),
        }
    }

    /// The ServiceAccount `token` belongs to, or why it is refused.
    pub async fn review(&self, token: &str) -> Result<Identity, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(self.audiences.clone()),
            },
            ..Default::default()
        };
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| AuthError::Unavailable)?;
        let reviewed = tokio::time::timeout(
            REVIEW_TIMEOUT,
            self.api.create(&PostParams::default(), &review),
        )
        .await
        .map_err(|_| {
            tracing::warn!("the API server did not review a token in time");
            AuthError::Unavailable
        })?
        .map_err(|error| {
            // The error is the API server's, never the token.
            tracing::warn!(%error, "TokenReview failed");
            AuthError::Unavailable
        })?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status.error.unwrap_or_default();
            return Err(if why.contains("audience") {
                AuthError::Audience
            } else if why.contains("expired") {
                AuthError::Expired
            } else {
                AuthError::Rejected
            });
        }
        let granted = status.audiences.unwrap_or_default();
        if !granted.iter().any(|a| self.audiences.contains(a)) {
            return Err(AuthError::Audience);
        }
        let user = status.user.unwrap_or_default();
        let name = user.username.unwrap_or_default();
        if !name.starts_with(PREFIX) {
            return Err(AuthError::Rejected);
        }
        Ok(Identity {
            user: name,
            email: None,
            groups: user.groups.unwrap_or_default(),
            method: Method::ServiceAccount,
            audience: Audience::Gateway,
        })
    }
}
