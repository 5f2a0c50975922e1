//! Cache keys. A key names the fragment kind, a fragment schema version and the fragment's scope:
//! shared fragments by their parameters (region, limit), per-user fragments by a [`UserId`] — which
//! only a verified token produces — so nothing a client sends can select another user's entry.

use crate::domain::{Region, UserId};

/// Bump when the shape of any cached fragment changes: a deploy then never reads old entries
/// (which matters once a shared tier outlives a process).
pub(crate) const FRAGMENT_SCHEMA_VERSION: u32 = 1;

pub use crate::config::FragmentKind;

/// A fully qualified cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    kind: FragmentKind,
    key: String,
}

impl FragmentKey {
    fn new(kind: FragmentKind, params: &str, user: Option<&UserId>) -> Self {
        // The user id goes last and escaped, so no id can end one field and start another.
        let key = match user {
            Some(u) => format!(
                "v{FRAGMENT_SCHEMA_VERSION}:{kind}:{params}:user={}",
                escape(u.as_str())
            ),
            None => format!("v{FRAGMENT_SCHEMA_VERSION}:{kind}:{params}"),
        };
        Self { kind, key }
    }

    /// One title.
    pub fn title(id: &str) -> Self {
        Self::new(FragmentKind::Title, &escape(id), None)
    }

    /// A region's top 10.
    pub fn top10(region: &Region) -> Self {
        Self::new(FragmentKind::Top10, region.as_str(), None)
    }

    /// A region's first `limit` new releases.
    pub fn new_releases(region: &Region, limit: usize) -> Self {
        Self::new(
            FragmentKind::NewReleases,
            &format!("{}:{limit}", region.as_str()),
            None,
        )
    }

    /// A user's first `limit` recommendations.
    pub fn recommendations(user: &UserId, limit: usize) -> Self {
        Self::new(
            FragmentKind::Recommendations,
            &limit.to_string(),
            Some(user),
        )
    }

    /// A user's first `limit` continue-watching entries.
    pub fn continue_watching(user: &UserId, limit: usize) -> Self {
        Self::new(
            FragmentKind::ContinueWatching,
            &limit.to_string(),
            Some(user),
        )
    }

    /// A user's list.
    pub fn my_list(user: &UserId) -> Self {
        Self::new(FragmentKind::MyList, "all", Some(user))
    }

    /// A user's profile.
    pub fn profile(user: &UserId) -> Self {
        Self::new(FragmentKind::Profile, "all", Some(user))
    }

    /// The kind.
    pub fn kind(&self) -> FragmentKind {
        self.kind
    }

    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.key
    }
}

/// Key parts never contain the `:` that separates them.
fn escape(s: &str) -> String {
    crate::escape::percent_encode(s, b"")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn keys_name_kind_version_and_scope() {
        let u = UserId::from_verified_subject("u1").unwrap();
        assert_eq!(
            FragmentKey::recommendations(&u, 20).as_str(),
            "v1:recommendations:20:user=u1"
        );
        assert_eq!(FragmentKey::title("t7").as_str(), "v1:title:t7");
        let us = Region::parse("us").map(|r| FragmentKey::top10(&r));
        assert_eq!(
            us.map(|k| k.as_str().to_owned()).as_deref(),
            Some("v1:top10:US")
        );
    }

    #[test]
    fn hostile_subjects_cannot_collide_with_other_users() {
        let a = FragmentKey::my_list(&UserId::from_verified_subject("u1").unwrap());
        let b = FragmentKey::my_list(&UserId::from_verified_subject("u1:user=u2").unwrap());
        let c = FragmentKey::my_list(&UserId::from_verified_subject("u2").unwrap());
        assert_ne!(a, b);
        assert_ne!(b, c);
        assert!(!b.as_str()[..b.as_str().len() - 2].ends_with("user=u2"));
        // The same user and kind with different parameters are different entries.
        let u = UserId::from_verified_subject("u1").unwrap();
        assert_ne!(
            FragmentKey::continue_watching(&u, 10),
            FragmentKey::continue_watching(&u, 20)
        );
    }
}
