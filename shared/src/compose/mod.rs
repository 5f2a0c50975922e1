//! Composition: turns "the homepage for this viewer in this region" into parallel backend calls
//! and stitches the answers into rows of hydrated titles.
//!
//! The plan: every row source and the viewer's profile start at once; rows that need the region
//! wait only for the profile when the query named no region. When all sources are in, the
//! de-duplicated union of their title ids is hydrated with ONE catalog call. Latency is therefore
//! the slowest source plus one catalog round, never a sum. A failed source becomes a failed row;
//! the others still arrive. Owns no GraphQL types and no wire formats.

use std::{collections::HashSet, sync::Arc};

use futures::{FutureExt, future::BoxFuture};

use crate::{
    auth::Viewer,
    domain::{Profile, Region, Title},
    profile::{ClientProfile, RowKind},
    upstream::{BackendError, CallContext, Upstream},
};

/// What the homepage query asks for.
#[derive(Debug, Clone, Default)]
pub struct HomepageRequest {
    /// Region named by the query; `None` → the viewer's own, else the profile's default.
    pub region: Option<Region>,
    /// Whether to pick a hero title (the web surface shows one).
    pub want_hero: bool,
}

/// A stitched homepage.
#[derive(Debug, Clone)]
pub struct Homepage {
    /// The region the public rows are for.
    pub region: Region,
    /// Rows in display order; empty rows are left out, failed ones kept as errors in place.
    pub rows: Vec<Result<HomeRow, BackendError>>,
    /// The hero title, when asked for and one is available.
    pub hero: Option<Arc<Title>>,
}

/// One row with its hydrated items.
#[derive(Debug, Clone)]
pub struct HomeRow {
    /// Which row.
    pub kind: RowKind,
    /// Display heading.
    pub heading: String,
    /// Items in the source's order.
    pub items: Vec<RowItem>,
}

/// A title in a row plus the row's own data about it.
#[derive(Debug, Clone)]
pub struct RowItem {
    /// The hydrated title.
    pub title: Arc<Title>,
    /// Continue watching: where the viewer stopped.
    pub progress: Option<Progress>,
    /// Top 10: rank, 1-based.
    pub rank: Option<u32>,
    /// Recommended: why, for display.
    pub reason: Option<String>,
    /// Recommended: relevance in `[0, 1]`.
    pub score: Option<f64>,
    /// My list: when it was added. New releases: when it was released. (RFC 3339)
    pub timestamp: Option<String>,
}

/// Playback progress of a continue-watching item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Seconds watched.
    pub position_seconds: u32,
    /// Title length in seconds.
    pub duration_seconds: u32,
}

/// A row entry before hydration: the id plus the row's data.
struct Entry {
    title_id: String,
    progress: Option<Progress>,
    rank: Option<u32>,
    reason: Option<String>,
    score: Option<f64>,
    timestamp: Option<String>,
}

impl Entry {
    fn id(title_id: String) -> Self {
        Self {
            title_id,
            progress: None,
            rank: None,
            reason: None,
            score: None,
            timestamp: None,
        }
    }
}

type Source = Result<Vec<Entry>, BackendError>;

/// Builds homepages and single titles from the upstream clients for one client profile.
#[derive(Clone)]
pub struct Composer {
    upstream: Upstream,
    profile: Arc<ClientProfile>,
    default_region: Region,
}

impl Composer {
    /// A composer over `upstream` for `profile`.
    pub fn new(upstream: Upstream, profile: Arc<ClientProfile>) -> Self {
        // Config validation already rejected a malformed default region; "US" is the last resort.
        let default_region =
            Region::parse(&profile.default_region).unwrap_or_else(Region::fallback);
        Self {
            upstream,
            profile,
            default_region,
        }
    }

    /// The client profile this composer serves.
    pub fn profile(&self) -> &Arc<ClientProfile> {
        &self.profile
    }

    /// The upstream clients.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Builds the homepage: all sources in parallel, then one catalog round.
    pub async fn homepage(&self, viewer: Option<&Viewer>, req: &HomepageRequest) -> Homepage {
        let cx = CallContext {
            user: viewer.map(|v| v.user_id.clone()),
        };
        let up = &self.upstream;
        let limit = self.profile.items_per_row;
        let default_region = self.default_region.clone();

        // The profile feeds headings and, when the query names no region, the region itself.
        let user_profile = {
            let cx = cx.clone();
            let viewer = viewer.cloned();
            async move {
                match viewer {
                    Some(v) => up.profile(&cx, &v.user_id).await,
                    None => Ok(None),
                }
            }
            .boxed()
            .shared()
        };
        let region = {
            let user_profile = user_profile.clone();
            let named = req.region.clone();
            async move {
                if let Some(r) = named {
                    return r;
                }
                match user_profile.await {
                    Ok(Some(p)) => Region::parse(&p.region).unwrap_or(default_region),
                    _ => default_region,
                }
            }
            .boxed()
            .shared()
        };

        let kinds: Vec<RowKind> = self
            .profile
            .rows
            .iter()
            .copied()
            .filter(|k| viewer.is_some() || !k.is_personalized())
            .collect();
        let sources: Vec<BoxFuture<'_, Source>> = kinds
            .iter()
            .map(|&kind| self.source(kind, &cx, viewer, region.clone(), limit))
            .collect();

        let (sources, user_profile, region) =
            futures::join!(futures::future::join_all(sources), user_profile, region);
        let user_profile: Option<Profile> = user_profile.ok().flatten();

        // One catalog call for the de-duplicated union of ids across every row.
        let mut seen = HashSet::new();
        let mut union = Vec::new();
        for entries in sources.iter().flatten() {
            for e in entries.iter().take(limit) {
                if seen.insert(e.title_id.as_str()) {
                    union.push(e.title_id.clone());
                }
            }
        }
        let titles = up.titles(&cx, &union).await;

        let mut hero_candidates: Vec<(RowKind, Arc<Title>)> = Vec::new();
        let mut rows = Vec::with_capacity(kinds.len());
        for (kind, source) in kinds.iter().copied().zip(&sources) {
            let entries = match source {
                Ok(entries) if entries.is_empty() => continue,
                Ok(entries) => entries,
                Err(e) => {
                    rows.push(Err(e.clone()));
                    continue;
                }
            };
            let batch = match &titles {
                Ok(batch) => batch,
                Err(e) => {
                    rows.push(Err(e.clone()));
                    continue;
                }
            };
            let items: Vec<RowItem> = entries
                .iter()
                .filter_map(|e| {
                    // Ids the catalog does not know are dropped: never an invented title.
                    let title = batch.titles.get(&e.title_id)?.clone();
                    Some(RowItem {
                        title,
                        progress: e.progress,
                        rank: e.rank,
                        reason: e.reason.clone(),
                        score: e.score,
                        timestamp: e.timestamp.clone(),
                    })
                })
                .take(limit)
                .collect();
            if items.is_empty() {
                continue;
            }
            if let Some(first) = items.first() {
                hero_candidates.push((kind, first.title.clone()));
            }
            let heading = heading(kind, user_profile.as_ref(), &region);
            rows.push(Ok(HomeRow {
                kind,
                heading,
                items,
            }));
        }

        let hero = if req.want_hero {
            pick_hero(&hero_candidates)
        } else {
            None
        };
        Homepage { region, rows, hero }
    }

    fn source<'a>(
        &'a self,
        kind: RowKind,
        cx: &CallContext,
        viewer: Option<&Viewer>,
        region: futures::future::Shared<BoxFuture<'a, Region>>,
        limit: usize,
    ) -> BoxFuture<'a, Source> {
        let up = &self.upstream;
        let cx = cx.clone();
        let user = viewer.map(|v| v.user_id.clone());
        async move {
            let entries = match (kind, user.as_ref()) {
                (RowKind::Top10, _) => up
                    .top10(&cx, &region.await)
                    .await?
                    .into_iter()
                    .map(|t| Entry {
                        rank: Some(t.rank),
                        ..Entry::id(t.title_id)
                    })
                    .collect(),
                (RowKind::NewReleases, _) => up
                    .new_releases(&cx, &region.await, limit)
                    .await?
                    .into_iter()
                    .map(|n| Entry {
                        timestamp: Some(n.released_at),
                        ..Entry::id(n.title_id)
                    })
                    .collect(),
                (RowKind::ContinueWatching, Some(user)) => up
                    .continue_watching(&cx, user, limit)
                    .await?
                    .into_iter()
                    .map(|c| Entry {
                        progress: Some(Progress {
                            position_seconds: c.position_seconds,
                            duration_seconds: c.duration_seconds,
                        }),
                        timestamp: Some(c.updated_at),
                        ..Entry::id(c.title_id)
                    })
                    .collect(),
                (RowKind::MyList, Some(user)) => up
                    .my_list(&cx, user)
                    .await?
                    .into_iter()
                    .map(|m| Entry {
                        timestamp: Some(m.added_at),
                        ..Entry::id(m.title_id)
                    })
                    .collect(),
                (RowKind::Recommended, Some(user)) => up
                    .recommendations(&cx, user, limit)
                    .await?
                    .into_iter()
                    .map(|r| Entry {
                        score: Some(r.score),
                        reason: Some(r.reason),
                        ..Entry::id(r.title_id)
                    })
                    .collect(),
                // Personalized rows are filtered out for anonymous viewers before this point.
                (RowKind::ContinueWatching | RowKind::MyList | RowKind::Recommended, None) => {
                    Vec::new()
                }
            };
            Ok(entries)
        }
        .boxed()
    }

    /// One title by id; `Ok(None)` when the catalog does not know it.
    pub async fn title(
        &self,
        viewer: Option<&Viewer>,
        id: &str,
    ) -> Result<Option<Arc<Title>>, BackendError> {
        let cx = CallContext {
            user: viewer.map(|v| v.user_id.clone()),
        };
        let mut batch = self.upstream.titles(&cx, &[id.to_owned()]).await?;
        Ok(batch.titles.remove(id))
    }
}

/// The hero is the best personal pick, else the region's number one, else the first row's lead.
fn pick_hero(candidates: &[(RowKind, Arc<Title>)]) -> Option<Arc<Title>> {
    let by_kind = |k: RowKind| {
        candidates
            .iter()
            .find(|(kind, _)| *kind == k)
            .map(|(_, t)| t.clone())
    };
    by_kind(RowKind::Recommended)
        .or_else(|| by_kind(RowKind::Top10))
        .or_else(|| candidates.first().map(|(_, t)| t.clone()))
}

fn heading(kind: RowKind, profile: Option<&Profile>, region: &Region) -> String {
    let first_name = profile.and_then(|p| p.name.split_whitespace().next());
    match (kind, first_name) {
        (RowKind::ContinueWatching, Some(name)) => format!("Continue Watching for {name}"),
        (RowKind::ContinueWatching, None) => "Continue Watching".to_owned(),
        (RowKind::Recommended, Some(name)) => format!("Top Picks for {name}"),
        (RowKind::Recommended, None) => "Recommended for You".to_owned(),
        (RowKind::Top10, _) => format!("Top 10 in {region} Today"),
        (RowKind::MyList, _) => "My List".to_owned(),
        (RowKind::NewReleases, _) => "New Releases".to_owned(),
    }
}
