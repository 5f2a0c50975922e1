//! Composition: turns "the homepage for this viewer in this region" into parallel backend calls
//! and stitches the answers into rows of hydrated titles.
//!
//! The plan: every row source and the viewer's profile start at once; rows that need the region
//! wait only for the profile when the query named no region. When all sources are in, the
//! de-duplicated union of their title ids is hydrated with ONE catalog call. Latency is therefore
//! the slowest source plus one catalog round, never a sum. A failed source becomes a failed row;
//! the others still arrive. [`progressive`] composes the same homepage in waves, for answers
//! that defer rows. Owns no GraphQL types and no wire formats.

pub mod progress;
pub mod progressive;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{FutureExt, future::BoxFuture};

use crate::{
    auth::Viewer,
    cache::{CacheLog, FragmentCache, FragmentKey},
    domain::{
        ContinueWatchingEntry, MyListEntry, NewRelease, Profile, Recommendation, Region, Title,
        Top10Entry, UserId,
    },
    profile::{ClientProfile, RowKind},
    telemetry::RequestTrace,
    upstream::{BackendError, BackendId, CallContext, Deadline, Upstream},
};

/// One request as composition sees it: who asks, until when, and where fragment use is recorded.
#[derive(Debug, Default)]
pub struct RequestContext {
    /// The verified viewer; `None` for anonymous requests.
    pub viewer: Option<Viewer>,
    /// When the request's budget runs out.
    pub deadline: Option<Instant>,
    /// Fragments this request used.
    pub cache_log: CacheLog,
    /// The request's trace, propagated to every backend call (also from shared loads, which run
    /// in their own tasks).
    pub trace: Option<Arc<RequestTrace>>,
}

impl RequestContext {
    /// A request for `viewer` with `budget` from now, in the trace of the current request task.
    pub fn new(viewer: Option<Viewer>, budget: Duration) -> Self {
        Self {
            viewer,
            deadline: Some(Instant::now() + budget),
            cache_log: CacheLog::default(),
            trace: crate::telemetry::current(),
        }
    }

    /// A call for `user` (the viewer, for per-user data) or for nobody (shared data).
    fn call(&self, user: Option<&UserId>, deadline: Option<Instant>) -> CallContext {
        let viewer = self
            .viewer
            .as_ref()
            .filter(|v| user.is_some_and(|u| *u == v.user_id));
        // A deadline of the call's own: the load it starts may be shared, and extended to the
        // latest deadline of the requests that join it (see `upstream::Deadline`).
        let mut cx = CallContext::for_subject(
            viewer.map(crate::auth::Viewer::subject),
            Deadline::new(deadline),
            self.trace.clone(),
        );
        // A per-user call is only ever made for the viewer; should that change, the user still
        // comes from here and nothing of the viewer's token travels with it.
        if viewer.is_none() {
            cx.user = user.cloned();
        }
        cx
    }
}

/// Runs `fut` until the request's deadline; past it the result is a timeout of `backend`, while a
/// load other requests share keeps running in the cache's own task.
async fn within<T>(
    deadline: Option<Instant>,
    backend: BackendId,
    fut: impl std::future::Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), fut)
            .await
            .unwrap_or(Err(BackendError::Timeout { backend })),
        None => fut.await,
    }
}

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
}

impl Entry {
    fn id(title_id: String) -> Self {
        Self {
            title_id,
            progress: None,
            rank: None,
            reason: None,
        }
    }
}

type Source = Result<Vec<Entry>, BackendError>;

/// What viewers may do and see, decided here (in composition) and never by a field guard that a
/// rendering shortcut could skip: the scope each mutation needs, and the maturity ceiling a
/// viewer's token sets (applied to every row, the hero and `title(id)`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Access {
    /// Scope each mutation requires, by field name (`auth.mutation_scopes`).
    pub mutation_scopes: std::collections::BTreeMap<String, String>,
    /// Scope each subscription field requires (`auth.subscription_scopes`).
    pub subscription_scopes: std::collections::BTreeMap<String, String>,
}

/// Whether a title may be shown to a viewer with maturity ceiling `max` (an age).
fn within_ceiling(title: &Title, max: Option<u8>) -> bool {
    max.is_none_or(|max| crate::auth::maturity_age(&title.maturity_rating) <= max)
}

/// Builds homepages and single titles from the upstream clients for one client profile.
#[derive(Clone)]
pub struct Composer {
    upstream: Upstream,
    cache: FragmentCache,
    profile: Arc<ClientProfile>,
    default_region: Region,
    access: Arc<Access>,
    events: Option<progress::Events>,
}

/// Why a progress report was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ReportError {
    /// The title does not exist, or the position is beyond its end.
    #[error("{0}")]
    BadInput(String),
    /// The catalog could not say whether the title exists.
    #[error(transparent)]
    Catalog(#[from] BackendError),
    /// The event bus did not accept it (the broker is away without a spool, the outbox or the
    /// spool is full, shutting down), or there is no bus.
    #[error("the events service is unavailable")]
    Events,
    /// This viewer already has their share of reports waiting for the broker.
    #[error("too many reports waiting; slow down")]
    Flooding,
}

impl Composer {
    /// A composer over `upstream`, reading through `cache`, for `profile`.
    pub fn new(upstream: Upstream, cache: FragmentCache, profile: Arc<ClientProfile>) -> Self {
        // Config validation already rejected a malformed default region; "US" is the last resort.
        let default_region =
            Region::parse(&profile.default_region).unwrap_or_else(Region::fallback);
        Self {
            upstream,
            cache,
            profile,
            default_region,
            access: Arc::new(Access::default()),
            events: None,
        }
    }

    /// The same composer sending fire-and-forget writes through `events`.
    pub(crate) fn with_events(self, events: progress::Events) -> Self {
        Self {
            events: Some(events),
            ..self
        }
    }

    /// Accepts a playback position for the viewer: checks the title exists and the position is
    /// within it, sends a `playback.progress` event to the bus's work queue and returns once it
    /// is durable (confirmed by the broker, or spooled while the broker is away); the
    /// continue-watching service applies it at its own pace, keeping the newest report per title
    /// (the envelope's time: last writer wins). Until then this instance shows it on the
    /// viewer's continue-watching row. Returns the event id.
    pub(crate) async fn report_progress(
        &self,
        viewer: &Viewer,
        title_id: &str,
        position_seconds: u32,
        rq: &RequestContext,
    ) -> Result<String, ReportError> {
        let events = self.events.as_ref().ok_or(ReportError::Events)?;
        let title = self
            .hydrate(&[title_id.to_owned()], rq)
            .await?
            .remove(title_id)
            .ok_or_else(|| ReportError::BadInput(format!("unknown title `{title_id}`")))?;
        let duration = title.runtime_minutes.saturating_mul(60);
        if position_seconds > duration {
            return Err(ReportError::BadInput(format!(
                "positionSeconds {position_seconds} is past the end of `{title_id}` ({duration} s)"
            )));
        }
        let event = crate::events::Envelope::new(
            events.source,
            crate::events::Payload::PlaybackProgress(crate::events::ProgressData {
                user_id: viewer.user_id.as_str().to_owned(),
                title_id: title_id.to_owned(),
                position_seconds,
            }),
        );
        match events
            .bus
            .send_work(crate::events::WorkQueue::PlaybackProgress, &event)
            .await
        {
            Ok(_) => {}
            Err(crate::events::PublishError::SubjectShare { share }) => {
                tracing::warn!(
                    share,
                    "progress reports of one viewer over their share; refused"
                );
                return Err(ReportError::Flooding);
            }
            Err(e) => {
                tracing::warn!(error = %e, "progress report not accepted by the event bus");
                return Err(ReportError::Events);
            }
        }
        events
            .recent
            .record(&viewer.user_id, title_id, position_seconds, duration);
        Ok(event.id)
    }

    /// The same composer holding `access` (what viewers may do and see).
    pub(crate) fn with_access(self, access: Access) -> Self {
        Self {
            access: Arc::new(access),
            ..self
        }
    }

    /// Whether `viewer` may run the mutation `field`; `Err` names the scope it lacks.
    pub(crate) fn authorize_mutation<'a>(
        &'a self,
        viewer: &Viewer,
        field: &str,
    ) -> Result<(), &'a str> {
        match self.access.mutation_scopes.get(field) {
            Some(scope) if !viewer.has_scope(scope) => Err(scope),
            _ => Ok(()),
        }
    }

    /// Whether `viewer` (`None`: anonymous) may subscribe to `field`; `Err` names the scope it
    /// lacks.
    pub(crate) fn authorize_subscription<'a>(
        &'a self,
        viewer: Option<&Viewer>,
        field: &str,
    ) -> Result<(), &'a str> {
        match self.access.subscription_scopes.get(field) {
            Some(scope) if !viewer.is_some_and(|v| v.has_scope(scope)) => Err(scope),
            _ => Ok(()),
        }
    }

    /// The client profile this composer serves.
    pub fn profile(&self) -> &Arc<ClientProfile> {
        &self.profile
    }

    /// The fragment cache.
    pub fn cache(&self) -> &FragmentCache {
        &self.cache
    }

    /// Builds the homepage: all sources in parallel, then one catalog round.
    pub async fn homepage(&self, rq: &RequestContext, req: &HomepageRequest) -> Homepage {
        let viewer = rq.viewer.as_ref();
        let Fanout {
            kinds,
            sources,
            region,
            user_profile,
            limit,
        } = self.fanout(rq, req);

        // The profile only feeds headings (and the region, which the sources already waited
        // for if needed): it must never hold up the rows. It is driven alongside the sources and
        // the catalog round, and if it is not in by then the headings are generic. Its load runs
        // in the cache's own task, so the next homepage still gets it.
        let work = async {
            let (sources, region) = futures::join!(futures::future::join_all(sources), region);
            // One catalog call for the de-duplicated union of ids across every row.
            let union = id_union(sources.iter(), limit);
            let titles = self.hydrate(&union, rq).await;
            (sources, region, titles)
        };
        let ((sources, region, titles), user_profile) =
            match futures::future::select(Box::pin(work), user_profile).await {
                // Rows first; a profile that is ready by now (a cache hit, or an answer that came
                // with the rows) still names the headings: only one still on its way is dropped.
                futures::future::Either::Left((done, profile)) => {
                    (done, profile.now_or_never().and_then(|p| p.ok().flatten()))
                }
                futures::future::Either::Right((profile, work)) => {
                    (work.await, profile.ok().flatten())
                }
            };

        let ceiling = viewer.and_then(|v| v.max_maturity);
        let mut hero_candidates: Vec<(RowKind, Arc<Title>)> = Vec::new();
        let mut rows = Vec::with_capacity(kinds.len());
        for (kind, source) in kinds.iter().copied().zip(&sources) {
            let items = match row_items(source, &titles, ceiling, limit) {
                Ok(items) if items.is_empty() => continue,
                Ok(items) => items,
                Err(e) => {
                    rows.push(Err(e));
                    continue;
                }
            };
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

    /// The start of every homepage: the rows this viewer gets, each row's source and the
    /// viewer's profile started (lazily: they run when polled), and the region they resolve to.
    fn fanout<'a>(&'a self, rq: &'a RequestContext, req: &HomepageRequest) -> Fanout<'a> {
        let viewer = rq.viewer.as_ref();
        // Row sources must be in by three quarters of the time left: the catalog round that
        // hydrates them needs the rest, or one stalled row would time out every row.
        let sources_deadline = rq.deadline.map(|d| {
            let now = Instant::now();
            now + d.saturating_duration_since(now) * 3 / 4
        });
        let limit = self.profile.items_per_row;
        let default_region = self.default_region.clone();

        // The profile feeds headings and, when the query names no region, the region itself.
        let user_profile = {
            let viewer = viewer.cloned();
            async move {
                match viewer {
                    Some(v) => self.profile_of(&v.user_id, rq).await,
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
            .map(|&kind| {
                within(
                    sources_deadline,
                    kind_backend(kind),
                    self.source(kind, rq, sources_deadline, region.clone(), limit),
                )
                .boxed()
            })
            .collect();
        Fanout {
            kinds,
            sources,
            region,
            user_profile,
            limit,
        }
    }

    /// One row for `rq`'s viewer as the homepage shows it (cut to the client's row length,
    /// hydrated, held to the maturity ceiling), for the live homepage, which pushes it when the
    /// bus says it changed. `region`: the regional rows' region (`None`: the viewer's home
    /// region, else the profile's default). An empty row is a row with no items (on a live
    /// row that is news: the last title left it); a personalized row for nobody is empty.
    pub async fn row(
        &self,
        rq: &RequestContext,
        kind: RowKind,
        region: Option<Region>,
    ) -> Result<HomeRow, BackendError> {
        let viewer = rq.viewer.as_ref();
        let limit = self.profile.items_per_row;
        let user_profile = match viewer {
            Some(v) if kind.is_personalized() || region.is_none() => {
                // Headings and the home region only: a profile outage costs the name, not the row.
                self.profile_of(&v.user_id, rq).await.ok().flatten()
            }
            _ => None,
        };
        let region = region.unwrap_or_else(|| self.home_region(user_profile.as_ref()));
        let heading = heading(kind, user_profile.as_ref(), &region);
        if kind.is_personalized() && viewer.is_none() {
            return Ok(HomeRow {
                kind,
                heading,
                items: Vec::new(),
            });
        }
        let known = {
            let region = region.clone();
            async move { region }.boxed().shared()
        };
        let source = within(
            rq.deadline,
            kind_backend(kind),
            self.source(kind, rq, rq.deadline, known, limit),
        )
        .await;
        let ids = id_union(std::iter::once(&source), limit);
        let titles = self.hydrate(&ids, rq).await;
        let ceiling = viewer.and_then(|v| v.max_maturity);
        Ok(HomeRow {
            kind,
            heading,
            items: row_items(&source, &titles, ceiling, limit)?,
        })
    }

    /// The region of a viewer with `profile` (their home region), else the client's default.
    pub(crate) fn home_region(&self, profile: Option<&Profile>) -> Region {
        profile
            .and_then(|p| Region::parse(&p.region))
            .unwrap_or_else(|| self.default_region.clone())
    }

    /// The region the regional rows are for when a request names none: the viewer's home region
    /// (from their profile, through the cache), else the client's default.
    pub async fn region_of(&self, rq: &RequestContext) -> Region {
        match rq.viewer.as_ref() {
            Some(v) => {
                let profile = self.profile_of(&v.user_id, rq).await.ok().flatten();
                self.home_region(profile.as_ref())
            }
            None => self.default_region.clone(),
        }
    }

    fn source<'a>(
        &'a self,
        kind: RowKind,
        rq: &'a RequestContext,
        deadline: Option<Instant>,
        region: futures::future::Shared<BoxFuture<'a, Region>>,
        limit: usize,
    ) -> BoxFuture<'a, Source> {
        let user = rq.viewer.as_ref().map(|v| v.user_id.clone());
        let log = &rq.cache_log;
        async move {
            let entries = match (kind, user) {
                (RowKind::Top10, _) => {
                    let region = region.await;
                    let (up, cx) = (self.upstream.clone(), rq.call(None, deadline));
                    let rows: Arc<Vec<Top10Entry>> = self
                        .cache
                        .get_or_load(
                            &FragmentKey::top10(&region),
                            log,
                            &cx.deadline.clone(),
                            move || async move { up.top10(&cx, &region).await },
                        )
                        .await?;
                    rows.iter()
                        .map(|t| Entry {
                            rank: Some(t.rank),
                            ..Entry::id(t.title_id.clone())
                        })
                        .collect()
                }
                (RowKind::NewReleases, _) => {
                    let region = region.await;
                    let (up, cx) = (self.upstream.clone(), rq.call(None, deadline));
                    let rows: Arc<Vec<NewRelease>> = self
                        .cache
                        .get_or_load(
                            &FragmentKey::new_releases(&region, limit),
                            log,
                            &cx.deadline.clone(),
                            move || async move { up.new_releases(&cx, &region, limit).await },
                        )
                        .await?;
                    rows.iter().map(|n| Entry::id(n.title_id.clone())).collect()
                }
                (RowKind::ContinueWatching, Some(user)) => {
                    let (up, cx) = (self.upstream.clone(), rq.call(Some(&user), deadline));
                    let key = FragmentKey::continue_watching(&user, limit);
                    let owner = user.clone();
                    let rows: Arc<Vec<ContinueWatchingEntry>> = self
                        .cache
                        .get_or_load(&key, log, &cx.deadline.clone(), move || async move {
                            up.continue_watching(&cx, &owner, limit).await
                        })
                        .await?;
                    // Reports this instance accepted that the service has not applied yet.
                    let overlaid = self
                        .events
                        .as_ref()
                        .and_then(|e| e.recent.overlay(&user, &rows, limit));
                    let rows: &[ContinueWatchingEntry] = overlaid.as_deref().unwrap_or(&rows);
                    rows.iter()
                        .map(|c| Entry {
                            progress: Some(Progress {
                                position_seconds: c.position_seconds,
                                duration_seconds: c.duration_seconds,
                            }),
                            ..Entry::id(c.title_id.clone())
                        })
                        .collect()
                }
                (RowKind::MyList, Some(user)) => self
                    .my_list_of(&user, rq, deadline)
                    .await?
                    .iter()
                    .map(|m| Entry::id(m.title_id.clone()))
                    .collect(),
                (RowKind::Recommended, Some(user)) => {
                    let (up, cx) = (self.upstream.clone(), rq.call(Some(&user), deadline));
                    let key = FragmentKey::recommendations(&user, limit);
                    let rows: Arc<Vec<Recommendation>> = self
                        .cache
                        .get_or_load(&key, log, &cx.deadline.clone(), move || async move {
                            up.recommendations(&cx, &user, limit).await
                        })
                        .await?;
                    rows.iter()
                        .map(|r| Entry {
                            reason: Some(r.reason.clone()),
                            ..Entry::id(r.title_id.clone())
                        })
                        .collect()
                }
                // Personalized rows are filtered out for anonymous viewers before this point.
                (RowKind::ContinueWatching | RowKind::MyList | RowKind::Recommended, None) => {
                    Vec::new()
                }
            };
            Ok(entries)
        }
        .boxed()
    }

    /// A user's profile, through the cache; `None` when the profile service does not know them.
    pub(crate) async fn profile_of(
        &self,
        user: &UserId,
        rq: &RequestContext,
    ) -> Result<Option<Profile>, BackendError> {
        let (up, cx, owned) = (
            self.upstream.clone(),
            rq.call(Some(user), rq.deadline),
            user.clone(),
        );
        let key = FragmentKey::profile(user);
        let deadline = cx.deadline.clone();
        let load = self
            .cache
            .get_or_load(&key, &rq.cache_log, &deadline, move || async move {
                up.profile(&cx, &owned).await
            });
        let p: Arc<Option<Profile>> = within(rq.deadline, BackendId::Profile, load).await?;
        Ok(p.as_ref().clone())
    }

    async fn my_list_of(
        &self,
        user: &UserId,
        rq: &RequestContext,
        deadline: Option<Instant>,
    ) -> Result<Arc<Vec<MyListEntry>>, BackendError> {
        let (up, cx, owned) = (
            self.upstream.clone(),
            rq.call(Some(user), deadline),
            user.clone(),
        );
        self.cache
            .get_or_load(
                &FragmentKey::my_list(user),
                &rq.cache_log,
                &cx.deadline.clone(),
                move || async move { up.my_list(&cx, &owned).await },
            )
            .await
    }

    /// Adds (`present`) or removes a title from the viewer's list, then drops the cached list so
    /// the next read shows the change. `Ok(None)`: unknown user or title; else whether it changed.
    pub(crate) async fn set_in_my_list(
        &self,
        viewer: &Viewer,
        title_id: &str,
        present: bool,
        rq: &RequestContext,
    ) -> Result<Option<bool>, BackendError> {
        // The title must exist before the write goes out, as for `report_progress`: an id the
        // catalog does not know (malformed for the my-list service, or just unknown) is the
        // client's mistake, answered `BAD_USER_INPUT`; sent on, the service would refuse it and
        // that refusal would read as the service failing. The catalog lookup is a shared,
        // cached fragment.
        if !self
            .hydrate(&[title_id.to_owned()], rq)
            .await?
            .contains_key(title_id)
        {
            return Ok(None);
        }
        let user = &viewer.user_id;
        let cx = rq.call(Some(user), rq.deadline);
        let changed = self
            .upstream
            .set_in_my_list(&cx, user, title_id, present)
            .await;
        // Invalidate even when the write failed: it may have landed before the failure showed.
        self.cache.invalidate(&FragmentKey::my_list(user)).await;
        changed
    }

    /// Titles by id through the cache (shared fragments: loaded without the viewer's identity).
    async fn hydrate(
        &self,
        ids: &[String],
        rq: &RequestContext,
    ) -> Result<HashMap<String, Arc<Title>>, BackendError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let (up, cx) = (self.upstream.clone(), rq.call(None, rq.deadline));
        let deadline = cx.deadline.clone();
        let load = self
            .cache
            .titles(ids, &rq.cache_log, &deadline, move |ids| {
                let (up, cx) = (up.clone(), cx.clone());
                async move { up.titles(&cx, &ids).await.map(|b| b.titles) }
            });
        within(rq.deadline, BackendId::Catalog, load).await
    }

    /// One title by id; `Ok(None)` when the catalog does not know it or it is above the
    /// viewer's maturity ceiling (indistinguishable on purpose).
    pub async fn title(
        &self,
        id: &str,
        rq: &RequestContext,
    ) -> Result<Option<Arc<Title>>, BackendError> {
        let ceiling = rq.viewer.as_ref().and_then(|v| v.max_maturity);
        Ok(self
            .hydrate(&[id.to_owned()], rq)
            .await?
            .remove(id)
            .filter(|t| within_ceiling(t, ceiling)))
    }
}

/// A homepage's sources as [`Composer::fanout`] starts them.
struct Fanout<'a> {
    /// The rows this viewer gets, in display order.
    kinds: Vec<RowKind>,
    /// Each row's source, in the order of `kinds`.
    sources: Vec<BoxFuture<'a, Source>>,
    /// The region the regional rows are for.
    region: futures::future::Shared<BoxFuture<'a, Region>>,
    /// The viewer's profile (`None`: anonymous, or unknown to the profile service).
    user_profile: futures::future::Shared<BoxFuture<'a, Result<Option<Profile>, BackendError>>>,
    /// Items per row.
    limit: usize,
}

/// The de-duplicated union of the title ids of `sources` (each cut to `limit`), in order.
fn id_union<'s>(sources: impl Iterator<Item = &'s Source>, limit: usize) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut union = Vec::new();
    for entries in sources.flatten() {
        for e in entries.iter().take(limit) {
            if seen.insert(e.title_id.as_str()) {
                union.push(e.title_id.clone());
            }
        }
    }
    union
}

/// A row's items from its source and the hydrated titles: the source's failure, else the
/// catalog's, else the titles the catalog knows and the viewer may see, cut to `limit`.
fn row_items(
    source: &Source,
    titles: &Result<HashMap<String, Arc<Title>>, BackendError>,
    ceiling: Option<u8>,
    limit: usize,
) -> Result<Vec<RowItem>, BackendError> {
    let entries = source.as_ref().map_err(Clone::clone)?;
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let batch = titles.as_ref().map_err(Clone::clone)?;
    Ok(entries
        .iter()
        .filter_map(|e| {
            // Ids the catalog does not know are dropped: never an invented title. Nor is one
            // above the viewer's maturity ceiling shown.
            let title = batch
                .get(&e.title_id)
                .filter(|t| within_ceiling(t, ceiling))?
                .clone();
            Some(RowItem {
                title,
                progress: e.progress,
                rank: e.rank,
                reason: e.reason.clone(),
            })
        })
        .take(limit)
        .collect())
}

/// The backend a row comes from.
fn kind_backend(kind: RowKind) -> BackendId {
    match kind {
        RowKind::ContinueWatching => BackendId::ContinueWatching,
        RowKind::Recommended => BackendId::Recommendations,
        RowKind::Top10 => BackendId::Top10,
        RowKind::MyList => BackendId::MyList,
        RowKind::NewReleases => BackendId::NewReleases,
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
