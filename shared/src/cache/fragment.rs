//! What a cache entry holds: one [`Fragment`] per kind, values behind `Arc` so a hit is a pointer
//! copy, plus a size estimate so the L1 tier can be bounded by bytes.

use std::sync::Arc;

use super::FragmentKind;
use crate::domain::{
    ContinueWatchingEntry, MyListEntry, NewRelease, Profile, Recommendation, Title, Top10Entry,
};

/// A cached value.
#[derive(Debug, Clone)]
pub enum Fragment {
    /// One title.
    Title(Arc<Title>),
    /// A region's top 10.
    Top10(Arc<Vec<Top10Entry>>),
    /// A region's new releases.
    NewReleases(Arc<Vec<NewRelease>>),
    /// A user's recommendations.
    Recommendations(Arc<Vec<Recommendation>>),
    /// A user's continue-watching row.
    ContinueWatching(Arc<Vec<ContinueWatchingEntry>>),
    /// A user's list.
    MyList(Arc<Vec<MyListEntry>>),
    /// A user's profile (`None`: the profile service does not know the user).
    Profile(Arc<Option<Profile>>),
}

/// Per-entry bookkeeping the allocator adds beyond the strings themselves.
const OVERHEAD: usize = 64;

impl Fragment {
    /// The kind of this fragment.
    pub fn kind(&self) -> FragmentKind {
        match self {
            Self::Title(_) => FragmentKind::Title,
            Self::Top10(_) => FragmentKind::Top10,
            Self::NewReleases(_) => FragmentKind::NewReleases,
            Self::Recommendations(_) => FragmentKind::Recommendations,
            Self::ContinueWatching(_) => FragmentKind::ContinueWatching,
            Self::MyList(_) => FragmentKind::MyList,
            Self::Profile(_) => FragmentKind::Profile,
        }
    }

    /// Approximate heap bytes, for the byte-bounded L1 tier.
    pub(crate) fn weight(&self) -> usize {
        OVERHEAD
            + match self {
                Self::Title(t) => {
                    t.id.len()
                        + t.name.len()
                        + t.synopsis.len()
                        + t.maturity_rating.len()
                        + t.genres
                            .iter()
                            .chain(&t.cast)
                            .map(|s| s.len() + 24)
                            .sum::<usize>()
                        + t.images.iter().map(|i| i.url.len() + 40).sum::<usize>()
                }
                Self::Top10(v) => v.iter().map(|e| e.title_id.len() + 32).sum(),
                Self::NewReleases(v) => v
                    .iter()
                    .map(|e| e.title_id.len() + e.released_at.len() + 48)
                    .sum(),
                Self::Recommendations(v) => v
                    .iter()
                    .map(|e| e.title_id.len() + e.reason.len() + 56)
                    .sum(),
                Self::ContinueWatching(v) => v
                    .iter()
                    .map(|e| e.title_id.len() + e.updated_at.len() + 56)
                    .sum(),
                Self::MyList(v) => v
                    .iter()
                    .map(|e| e.title_id.len() + e.added_at.len() + 48)
                    .sum(),
                Self::Profile(p) => p.as_ref().as_ref().map_or(0, |p| {
                    p.id.len()
                        + p.name.len()
                        + p.avatar_url.len()
                        + p.plan.len()
                        + p.locale.len()
                        + p.region.len()
                        + 144
                }),
            }
    }
}

/// A value type the cache can hold.
pub trait Cacheable: Sized + Send + Sync + 'static {
    /// Wraps a value.
    fn into_fragment(value: Arc<Self>) -> Fragment;
    /// Unwraps a value of this type.
    fn from_fragment(fragment: &Fragment) -> Option<Arc<Self>>;
}

macro_rules! cacheable {
    ($ty:ty, $variant:ident) => {
        impl Cacheable for $ty {
            fn into_fragment(value: Arc<Self>) -> Fragment {
                Fragment::$variant(value)
            }
            fn from_fragment(fragment: &Fragment) -> Option<Arc<Self>> {
                match fragment {
                    Fragment::$variant(v) => Some(v.clone()),
                    _ => None,
                }
            }
        }
    };
}

cacheable!(Title, Title);
cacheable!(Vec<Top10Entry>, Top10);
cacheable!(Vec<NewRelease>, NewReleases);
cacheable!(Vec<Recommendation>, Recommendations);
cacheable!(Vec<ContinueWatchingEntry>, ContinueWatching);
cacheable!(Vec<MyListEntry>, MyList);
cacheable!(Option<Profile>, Profile);
