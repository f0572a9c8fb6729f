//! The four roles, each granting what the one below it grants and more.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a credential may do in its tenant. Ordered: a higher role may do everything a
/// lower one may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads runs, steps, events, the graph, usage and budgets; subscribes.
    Reader,
    /// Also submits, signals, cancels, pauses, resumes and retries runs.
    Submitter,
    /// Also rebuilds projections, redrives dead letters, reads lag and the audit log.
    Operator,
    /// Also manages API keys and budgets.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 4] = [Role::Reader, Role::Submitter, Role::Operator, Role::Admin];

    /// The role's name in claims, keys and settings.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Submitter => "submitter",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The highest of the recognised role names in `names` (unknown names grant
    /// nothing, so an identity provider's other roles are harmless).
    pub fn highest<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<Role> {
        names.into_iter().filter_map(|name| name.parse().ok()).max()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is none of the four.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected reader, submitter, operator or admin")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == name)
            .ok_or_else(|| UnknownRole(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parse_by_name() {
        assert!(Role::Reader < Role::Submitter);
        assert!(Role::Submitter < Role::Operator);
        assert!(Role::Operator < Role::Admin);
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn the_highest_known_role_counts() {
        assert_eq!(
            Role::highest(["offline_access", "reader", "operator"]),
            Some(Role::Operator)
        );
        assert_eq!(Role::highest(["uma_authorization"]), None);
    }
}
