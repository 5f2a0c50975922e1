//! A client profile: the data that makes one BFF binary serve its screens — which homepage rows
//! in which order, how many items a row, and how titles are trimmed (synopsis length, genre count,
//! image choice). Binaries supply defaults, config may override them; `shared` itself never
//! branches on which client it serves.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::domain::{Image, ImageKind, Title};

/// The kinds of homepage rows, in the GraphQL enum both schemas expose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, async_graphql::Enum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RowKind {
    /// Titles the viewer started and has not finished, most recent first.
    ContinueWatching,
    /// Personalized suggestions, best first.
    Recommended,
    /// The region's ten most watched titles today, by rank.
    #[graphql(name = "TOP_10")]
    #[serde(rename = "TOP_10")]
    Top10,
    /// Titles the viewer saved, most recently added first.
    MyList,
    /// Recently released titles in the region, newest first.
    NewReleases,
}

impl RowKind {
    /// Whether the row needs a signed-in viewer.
    pub const fn is_personalized(self) -> bool {
        matches!(
            self,
            Self::ContinueWatching | Self::Recommended | Self::MyList
        )
    }
}

/// What one client's screens need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientProfile {
    /// Homepage rows in display order (`profile.rows`).
    pub rows: Vec<RowKind>,
    /// Most items per row (`profile.items_per_row`).
    pub items_per_row: usize,
    /// Longest synopsis in characters including the "…"; 0 = untrimmed (`profile.synopsis_max_chars`).
    pub synopsis_max_chars: usize,
    /// Most genres per title; 0 = all (`profile.max_genres`).
    pub max_genres: usize,
    /// Region used when the query names none and the viewer's own is unknown (`profile.default_region`).
    pub default_region: String,
}

impl ClientProfile {
    /// A profile showing `rows` with up to `items_per_row` items, untrimmed titles, region US.
    pub fn new(rows: Vec<RowKind>, items_per_row: usize) -> Self {
        Self {
            rows,
            items_per_row,
            synopsis_max_chars: 0,
            max_genres: 0,
            default_region: "US".to_owned(),
        }
    }

    /// The same profile with titles trimmed to `synopsis_max_chars` and `max_genres`.
    pub fn trimmed(self, synopsis_max_chars: usize, max_genres: usize) -> Self {
        Self {
            synopsis_max_chars,
            max_genres,
            ..self
        }
    }

    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.rows.is_empty() {
            return Err(("rows", "must list at least one row".into()));
        }
        if self.items_per_row == 0 || self.items_per_row > 100 {
            return Err(("items_per_row", "must be between 1 and 100".into()));
        }
        if self.synopsis_max_chars != 0 && self.synopsis_max_chars < 10 {
            return Err((
                "synopsis_max_chars",
                "must be 0 (untrimmed) or at least 10".into(),
            ));
        }
        if crate::domain::Region::parse(&self.default_region).is_none() {
            return Err(("default_region", "must be a two-letter region code".into()));
        }
        Ok(())
    }

    /// The synopsis as this client shows it: cut at a word boundary with "…" when over the limit.
    pub fn synopsis<'a>(&self, full: &'a str) -> Cow<'a, str> {
        truncate_words(full, self.synopsis_max_chars)
    }

    /// The genres this client shows.
    pub fn genres<'a>(&self, title: &'a Title) -> &'a [String] {
        match self.max_genres {
            0 => &title.genres,
            n => &title.genres[..title.genres.len().min(n)],
        }
    }
}

/// Cuts `text` to at most `max` characters (0 = no limit) at a word boundary, ending with "…".
pub(crate) fn truncate_words(text: &str, max: usize) -> Cow<'_, str> {
    if max == 0 || text.chars().count() <= max {
        return Cow::Borrowed(text);
    }
    // Room for the ellipsis, then back off to the last whitespace so no word is cut in half.
    let budget = max - 1;
    let cut = text
        .char_indices()
        .nth(budget)
        .map_or(text.len(), |(i, _)| i);
    let head = &text[..cut];
    let next_is_space = text[cut..].starts_with(char::is_whitespace);
    let head = if next_is_space {
        head
    } else {
        head.rfind(char::is_whitespace).map_or(head, |i| &head[..i])
    };
    let head = head
        .trim_end_matches(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | ':' | '-' | '.'));
    Cow::Owned(format!("{head}…"))
}

/// The rendition of `kind` closest to `target_width` pixels (ties go to the larger one, which
/// scales down cleanly). `None` when the title has no image of that kind.
pub fn nearest_image(title: &Title, kind: ImageKind, target_width: u32) -> Option<&Image> {
    title
        .images
        .iter()
        .filter(|i| i.kind == kind)
        .min_by_key(|i| (i.width.abs_diff(target_width), std::cmp::Reverse(i.width)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_untouched() {
        assert_eq!(truncate_words("A quiet town.", 140), "A quiet town.");
        assert_eq!(truncate_words("anything", 0), "anything");
    }

    #[test]
    fn long_text_is_cut_at_a_word_boundary_with_an_ellipsis() {
        let text = "The quick brown fox jumps over the lazy dog and keeps running far away";
        let cut = truncate_words(text, 20);
        assert!(cut.chars().count() <= 20, "{cut}");
        assert_eq!(cut, "The quick brown fox…");
        assert!(text.starts_with(cut.trim_end_matches('…')));
    }

    #[test]
    fn multibyte_text_never_splits_a_character() {
        let text = "Ünïcödé wörds ärë hërë ănd thêrë ând ëvërywhêrë";
        let cut = truncate_words(text, 16);
        assert!(cut.chars().count() <= 16);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn one_huge_word_is_still_bounded() {
        let text = "a".repeat(300);
        let cut = truncate_words(&text, 140);
        assert!(cut.chars().count() <= 140);
    }
}
