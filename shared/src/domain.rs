//! Domain values the core passes between layers: what upstream clients return and composition
//! assembles. Nothing here knows about GraphQL, HTTP or protobuf — the GraphQL types of each binary
//! wrap these values and the upstream clients convert wire formats into them.

use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize};

/// A verified user id (the `sub` claim of a verified token). Only `auth` creates one from a
/// token, so per-user cache keys and the `x-user-id` header can never come from client input.
///
/// A valid subject is 1–255 bytes of visible ASCII (`!` to `~`: no spaces, control characters or
/// NUL) and not `.` or `..`. That keeps it one unambiguous token everywhere it goes: a header
/// value no receiver trims into another user, a URL path segment that can never be a dot segment,
/// a cache key. Identity providers' subjects (UUIDs, numbers, `auth0|…`) fit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Arc<str>);

/// Longest subject accepted, in bytes.
pub(crate) const MAX_SUBJECT_BYTES: usize = 255;

impl UserId {
    /// Wraps a subject taken from a verified token (or a trusted test/demo signer); `None` when it
    /// is not a valid subject (see the type's docs).
    pub(crate) fn from_verified_subject(sub: &str) -> Option<Self> {
        let valid = !sub.is_empty()
            && sub.len() <= MAX_SUBJECT_BYTES
            && sub.bytes().all(|b| b.is_ascii_graphic())
            && sub != "."
            && sub != "..";
        valid.then(|| Self(Arc::from(sub)))
    }

    /// The id as text, e.g. `u1`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A region code such as `US`: two ASCII letters, normalised to upper case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Region(String);

impl Region {
    /// Parses a client-supplied region; `None` when it is not two ASCII letters.
    pub fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim();
        (raw.len() == 2 && raw.bytes().all(|b| b.is_ascii_alphabetic()))
            .then(|| Self(raw.to_ascii_uppercase()))
    }

    /// `US`: the region used when nothing else names one.
    pub fn fallback() -> Self {
        Self("US".to_owned())
    }

    /// The code, e.g. `US`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user's profile from the `profile` backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// User id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Avatar image URL.
    pub avatar_url: String,
    /// Subscription plan, e.g. `premium`.
    pub plan: String,
    /// BCP 47 locale, e.g. `en-US`.
    pub locale: String,
    /// Home region code.
    pub region: String,
}

/// One entry of the `continue_watching` row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContinueWatchingEntry {
    /// Title id.
    pub title_id: String,
    /// Where the user stopped, in seconds.
    pub position_seconds: u32,
    /// Length of the title, in seconds.
    pub duration_seconds: u32,
    /// When the position was saved (RFC 3339).
    pub updated_at: String,
}

/// One entry of the user's list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MyListEntry {
    /// Title id.
    pub title_id: String,
    /// When the user added it (RFC 3339).
    pub added_at: String,
}

/// One entry of a region's top 10.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Top10Entry {
    /// Title id.
    pub title_id: String,
    /// 1-based rank.
    pub rank: u32,
}

/// One new release in a region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewRelease {
    /// Title id.
    pub title_id: String,
    /// Release timestamp (RFC 3339).
    pub released_at: String,
}

/// One scored recommendation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// Title id.
    pub title_id: String,
    /// Relevance in `[0, 1]`.
    pub score: f64,
    /// Why it is recommended, for display.
    pub reason: String,
}

/// Which picture of a title an image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ImageKind {
    /// Portrait 2:3 artwork.
    Poster,
    /// Landscape 16:9 artwork.
    Backdrop,
    /// Wide hero banner.
    Hero,
}

/// One rendition of a title's artwork.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// Which picture.
    pub kind: ImageKind,
    /// Pixel width.
    pub width: u32,
    /// Pixel height.
    pub height: u32,
    /// Absolute URL.
    pub url: String,
}

/// A catalog title with everything the catalog knows; clients see a trimmed view of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Title {
    /// Title id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Long synopsis (hundreds of characters).
    pub synopsis: String,
    /// Release year.
    pub year: i32,
    /// Maturity rating label.
    pub maturity_rating: String,
    /// Runtime in minutes.
    pub runtime_minutes: u32,
    /// Genres, most relevant first.
    pub genres: Vec<String>,
    /// Cast names, billing order.
    pub cast: Vec<String>,
    /// Every rendition of every picture.
    pub images: Vec<Image>,
}

impl Title {
    /// All renditions of one kind, narrowest first.
    pub fn images_of(&self, kind: ImageKind) -> Vec<&Image> {
        let mut out: Vec<&Image> = self.images.iter().filter(|i| i.kind == kind).collect();
        out.sort_by_key(|i| i.width);
        out
    }
}

/// The result of hydrating ids against the catalog.
#[derive(Debug, Clone, Default)]
pub struct TitleBatch {
    /// Titles that exist, by id; an id the catalog does not know is simply absent.
    pub titles: std::collections::HashMap<String, Arc<Title>>,
}

/// Who a backend call is made for, as the upstream layer carries it: the verified user, and what
/// of the viewer's credentials backends configured for it may receive. Built by `auth` from a
/// verified viewer; upstream never sees the viewer itself.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The verified user id (`x-user-id`).
    pub user: UserId,
    /// The verified scopes, space separated (`forward_scopes`); `None` when there are none.
    pub scopes: Option<Arc<str>>,
    /// The bearer token as received (`forward_token`).
    pub token: Option<Arc<str>>,
}
