//! Who may use a route: the McpCollaborator subjects the operator rendered into the route's
//! access list, compiled once per configuration version into sets the request path looks up.
//!
//! Users match the caller's user claim or email; groups match the groups claim of an OIDC
//! token; ServiceAccounts match only callers that authenticated with a ServiceAccount token,
//! so an identity provider cannot mint a claim that passes for an in-cluster workload.

use std::collections::HashSet;

use mcpgate_crds::gateway_config::AccessList;
use mcpgate_crds::v1alpha1::SubjectKind;

use super::{Identity, Method};

/// A route's access list, ready for lookups.
#[derive(Debug, Default)]
pub struct Access {
    users: HashSet<String>,
    groups: HashSet<String>,
    service_accounts: HashSet<String>,
}

impl Access {
    /// Compiles a rendered access list.
    pub fn new(list: &AccessList) -> Self {
        let mut access = Self::default();
        for subject in &list.subjects {
            let set = match subject.kind {
                SubjectKind::User => &mut access.users,
                SubjectKind::Group => &mut access.groups,
                SubjectKind::ServiceAccount => &mut access.service_accounts,
            };
            set.insert(subject.name.clone());
        }
        access
    }

    /// Whether `caller` may list and call the route's tools.
    pub fn permits(&self, caller: &Identity) -> bool {
        match caller.method {
            Method::ServiceAccount => self.service_accounts.contains(&caller.user),
            Method::Oidc { .. } | Method::Gateway { .. } => {
                self.users.contains(&caller.user)
                    || caller
                        .email
                        .as_ref()
                        .is_some_and(|email| self.users.contains(email))
                    || caller.groups.iter().any(|g| self.groups.contains(g))
            }
        }
    }
}

#[cfg(test)]
impl Access {
    /// Number of subjects granted access.
    fn len(&self) -> usize {
        self.users.len() + self.groups.len() + self.service_accounts.len()
    }

    /// Whether nobody is granted access.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use mcpgate_crds::gateway_config::AccessSubject;

    use super::*;

    fn access(subjects: &[(SubjectKind, &str)]) -> Access {
        Access::new(&AccessList {
            subjects: subjects
                .iter()
                .map(|(kind, name)| AccessSubject {
                    kind: *kind,
                    name: (*name).to_owned(),
                })
                .collect(),
        })
    }

    fn user(user: &str, email: Option<&str>, groups: &[&str]) -> Identity {
        Identity {
            user: user.to_owned(),
            email: email.map(str::to_owned),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            method: Method::Oidc {
                issuer: "https://idp.example".into(),
            },
            audience: crate::auth::Audience::Gateway,
        }
    }

    fn service_account(name: &str) -> Identity {
        Identity {
            user: name.to_owned(),
            email: None,
            groups: vec!["system:serviceaccounts".into()],
            method: Method::ServiceAccount,
            audience: crate::auth::Audience::Gateway,
        }
    }

    #[test]
    fn users_match_by_subject_or_email_and_groups_by_claim() {
        let access = access(&[
            (SubjectKind::User, "alice"),
            (SubjectKind::User, "bob@example.com"),
            (SubjectKind::Group, "platform"),
        ]);
        assert!(access.permits(&user("alice", None, &[])));
        assert!(access.permits(&user("b-123", Some("bob@example.com"), &[])));
        assert!(access.permits(&user("carol", None, &["dev", "platform"])));
        assert!(!access.permits(&user("carol", Some("carol@example.com"), &["dev"])));
        assert!(
            !access.permits(&user("Alice", None, &[])),
            "names are exact"
        );
        assert_eq!(access.len(), 3);
    }

    #[test]
    fn service_accounts_match_only_service_account_callers() {
        let sa = "system:serviceaccount:team-a:agent";
        let access = access(&[(SubjectKind::ServiceAccount, sa)]);
        assert!(access.permits(&service_account(sa)));
        assert!(!access.permits(&service_account("system:serviceaccount:team-b:agent")));
        assert!(
            !access.permits(&user(sa, None, &[])),
            "an OIDC token whose subject looks like a ServiceAccount is not one"
        );
        let by_user = self::access(&[(SubjectKind::User, sa)]);
        assert!(
            !by_user.permits(&service_account(sa)),
            "ServiceAccounts are granted with kind ServiceAccount"
        );
    }

    #[test]
    fn nobody_is_granted_by_an_empty_list() {
        let access = access(&[]);
        assert!(access.is_empty());
        assert!(!access.permits(&user("alice", Some("alice@example.com"), &["all"])));
        assert!(!access.permits(&service_account("system:serviceaccount:a:b")));
    }
}
