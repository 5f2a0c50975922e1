//! The homepage composed progressively, for answers that defer rows (`@defer`, see
//! `graphql::defer`): the same sources, region, profile and row rules as
//! [`Composer::homepage`], delivered as [`Step`]s instead of one value.
//!
//! 1. [`Step::First`]: the row list (every row this viewer gets, in display order, each with its
//!    kind and heading and no items yet) as soon as what the first part needs is in
//!    ([`FirstNeeds`]): the region, the profile for headings — but, as on the plain homepage,
//!    never longer than the rows themselves take (here: than the first row to complete) —
//!    and the hero's rows.
//! 2. [`Step::Rows`]: the rows that completed since, by their place in that list, until every
//!    row has been delivered. Rows whose sources answer together are one *wave*: one catalog
//!    round hydrates the union of their ids (titles already cached cost nothing); sources that
//!    answer during that round make the next wave. A row keeps its place whatever it turns into:
//!    empty (no items: unlike the plain homepage, it is not left out, since the list went out
//!    first) or failed (its source's or the catalog's error).
//!
//! Nothing is spawned: the stream is the work, and dropping it (a client gone mid-answer) stops
//! every source and catalog round not shared with another request. Owns no GraphQL types.

use std::{collections::HashMap, sync::Arc};

use futures::{
    FutureExt as _, StreamExt as _,
    channel::mpsc::UnboundedSender,
    future::{BoxFuture, OptionFuture},
    stream::{BoxStream, FuturesUnordered},
};

use super::{
    Composer, Fanout, HomeRow, Homepage, HomepageRequest, RequestContext, Source, heading,
    id_union, row_items,
};
use crate::{
    domain::{Profile, Region, Title},
    profile::RowKind,
    upstream::BackendError,
};

/// What the first part of a deferred homepage shows outside its deferred fragments, so what
/// [`Step::First`] must wait for. Row kinds never wait: they are the profile's rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FirstNeeds {
    /// The region (the `region` field, or headings: the top 10's names the region).
    pub region: bool,
    /// Headings: the viewer's first name when the profile is in, within the rule above.
    pub headings: bool,
    /// The hero, whose rows (recommended, else top 10, else the first row with items) must be in.
    pub hero: bool,
}

/// One step of a progressive homepage.
#[derive(Debug)]
pub enum Step {
    /// The homepage as its first part shows it: every row in place with its kind and heading
    /// and no items yet; the region; the hero when asked for.
    First(Homepage),
    /// Rows completed since the previous step, each with its index in the first step's rows:
    /// the row (possibly with no items) or why it failed.
    Rows(Vec<(usize, Result<HomeRow, BackendError>)>),
}

/// A completed row as the hero rule sees it: its first title, or `None` (empty or failed).
type Lead = Option<Arc<Title>>;

/// A wave being hydrated: its sources and the catalog's answer.
type Wave<'a> = BoxFuture<
    'a,
    (
        Vec<(usize, Source)>,
        Result<HashMap<String, Arc<Title>>, BackendError>,
    ),
>;

impl Composer {
    /// The homepage of `req` for `rq`'s viewer as a stream of [`Step`]s: first the row list,
    /// then the rows as they complete (see the module docs). The stream owns its work.
    pub fn homepage_progressive(
        &self,
        rq: Arc<RequestContext>,
        req: HomepageRequest,
        needs: FirstNeeds,
    ) -> BoxStream<'static, Step> {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let composer = self.clone();
        let work = async move { composer.progress(&rq, &req, needs, &tx).await };
        // The steps, driven by polling the work alongside: no task of its own.
        let work = work
            .into_stream()
            .filter_map(|()| futures::future::ready(None));
        futures::stream::select(rx, work).boxed()
    }

    async fn progress(
        &self,
        rq: &RequestContext,
        req: &HomepageRequest,
        needs: FirstNeeds,
        tx: &UnboundedSender<Step>,
    ) {
        let Fanout {
            kinds,
            sources,
            region,
            user_profile,
            limit,
        } = self.fanout(rq, req);
        let ceiling = rq.viewer.as_ref().and_then(|v| v.max_maturity);
        let mut pending: FuturesUnordered<_> = sources
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.map(move |s| (i, s)))
            .collect();
        let mut region_fut = region.clone();
        let mut profile_fut = user_profile.clone();
        let mut region_in: Option<Region> = None;
        let mut profile_in: Option<Option<Profile>> = None;
        // Sources in, waiting for the next catalog round; the round in flight.
        let mut waiting: Vec<(usize, Source)> = Vec::new();
        let mut hydrating: Option<Wave<'_>> = None;
        // Per row: `None` until it completed.
        let mut leads: Vec<Option<Lead>> = vec![None; kinds.len()];
        // Headings the first part showed: later steps repeat them rather than change them.
        let mut shown: Option<Vec<String>> = None;
        // Rows completed before the first step went out.
        let mut held: Vec<(usize, Result<HomeRow, BackendError>)> = Vec::new();

        loop {
            if hydrating.is_none() && !waiting.is_empty() {
                let wave = std::mem::take(&mut waiting);
                hydrating = Some(
                    async move {
                        let union = id_union(wave.iter().map(|(_, s)| s), limit);
                        let titles = self.hydrate(&union, rq).await;
                        (wave, titles)
                    }
                    .boxed(),
                );
            }
            if shown.is_none() {
                let any_row = leads.iter().any(Option::is_some);
                let all_rows = leads.iter().all(Option::is_some);
                let ready = (!needs.region || region_in.is_some())
                    // The profile may hold the first part only while no row is complete: as on
                    // the plain homepage, it never holds up the rows.
                    && (!needs.headings || profile_in.is_some() || any_row || all_rows)
                    && (!needs.hero || hero_of(&kinds, &leads).is_some());
                if ready {
                    let profile = known(profile_in.clone(), &user_profile);
                    let region = region_in
                        .clone()
                        .or_else(|| region.clone().now_or_never())
                        .unwrap_or_else(|| self.default_region.clone());
                    let headings: Vec<String> = kinds
                        .iter()
                        .map(|&k| heading(k, profile.as_ref(), &region))
                        .collect();
                    let rows = kinds
                        .iter()
                        .zip(&headings)
                        .map(|(&kind, heading)| {
                            Ok(HomeRow {
                                kind,
                                heading: heading.clone(),
                                items: Vec::new(),
                            })
                        })
                        .collect();
                    let hero = if req.want_hero {
                        hero_of(&kinds, &leads).flatten()
                    } else {
                        None
                    };
                    if tx
                        .unbounded_send(Step::First(Homepage { region, rows, hero }))
                        .is_err()
                    {
                        return;
                    }
                    if needs.headings {
                        // Rows that completed first repeat the headings the first part shows.
                        for (i, row) in &mut held {
                            if let (Ok(row), Some(h)) = (row, headings.get(*i)) {
                                row.heading.clone_from(h);
                            }
                        }
                    }
                    shown = Some(headings);
                    if !held.is_empty()
                        && tx
                            .unbounded_send(Step::Rows(std::mem::take(&mut held)))
                            .is_err()
                    {
                        return;
                    }
                }
            }
            if shown.is_some() && pending.is_empty() && hydrating.is_none() && waiting.is_empty() {
                return;
            }
            let want_region = needs.region && region_in.is_none();
            let want_profile = needs.headings && profile_in.is_none() && shown.is_none();
            tokio::select! {
                Some((i, source)) = pending.next(), if !pending.is_empty() => {
                    waiting.push((i, source));
                    // Sources that answered meanwhile join this wave.
                    while let Some(Some(more)) = pending.next().now_or_never() {
                        waiting.push(more);
                    }
                }
                Some((wave, titles)) = OptionFuture::from(hydrating.as_mut()) => {
                    hydrating = None;
                    let profile = known(profile_in.clone(), &user_profile);
                    let region = region.clone().now_or_never();
                    let mut rows = Vec::with_capacity(wave.len());
                    for (i, source) in wave {
                        let Some(&kind) = kinds.get(i) else { continue };
                        let row = row_items(&source, &titles, ceiling, limit).map(|items| {
                            let shown_heading = match &shown {
                                Some(h) if needs.headings => h.get(i).cloned(),
                                _ => None,
                            };
                            let heading = shown_heading.unwrap_or_else(|| {
                                let fallback = self.default_region.clone();
                                heading(kind, profile.as_ref(), region.as_ref().unwrap_or(&fallback))
                            });
                            HomeRow { kind, heading, items }
                        });
                        if let Some(lead) = leads.get_mut(i) {
                            *lead = Some(row.as_ref().ok().and_then(|r| r.items.first()).map(|it| it.title.clone()));
                        }
                        rows.push((i, row));
                    }
                    if shown.is_some() {
                        if tx.unbounded_send(Step::Rows(rows)).is_err() {
                            return;
                        }
                    } else {
                        held.extend(rows);
                    }
                }
                r = &mut region_fut, if want_region => region_in = Some(r),
                p = &mut profile_fut, if want_profile => profile_in = Some(p.ok().flatten()),
                else => {
                    // Unreachable by the rules above (something is always left to wait for);
                    // ending the stream makes the answer say so rather than hang.
                    tracing::error!("progressive homepage had nothing left to wait for");
                    return;
                }
            }
        }
    }
}

/// The profile as far as it is in: what was awaited, else an answer already there.
fn known(
    awaited: Option<Option<Profile>>,
    user_profile: &futures::future::Shared<BoxFuture<'_, Result<Option<Profile>, BackendError>>>,
) -> Option<Profile> {
    awaited.unwrap_or_else(|| {
        user_profile
            .clone()
            .now_or_never()
            .and_then(|p| p.ok().flatten())
    })
}

/// The hero once the rows it depends on completed (`Some(None)`: none has a title), as
/// [`super::pick_hero`] picks it: the recommended row's first title, else the top 10's, else
/// the first title of the first row with items. `None` while that is not known yet.
fn hero_of(kinds: &[RowKind], leads: &[Option<Lead>]) -> Option<Lead> {
    for preferred in [RowKind::Recommended, RowKind::Top10] {
        if let Some(i) = kinds.iter().position(|k| *k == preferred) {
            match leads.get(i)? {
                None => return None,
                Some(Some(title)) => return Some(Some(title.clone())),
                Some(None) => {}
            }
        }
    }
    for lead in leads {
        match lead {
            None => return None,
            Some(Some(title)) => return Some(Some(title.clone())),
            Some(None) => {}
        }
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn title(id: &str) -> Arc<Title> {
        Arc::new(Title {
            id: id.to_owned(),
            name: String::new(),
            synopsis: String::new(),
            year: 2000,
            maturity_rating: "PG".to_owned(),
            runtime_minutes: 90,
            genres: Vec::new(),
            cast: Vec::new(),
            images: Vec::new(),
        })
    }

    fn id(lead: Option<Lead>) -> Option<Option<String>> {
        lead.map(|l| l.map(|t| t.id.clone()))
    }

    /// The hero is known as soon as the rows `pick_hero` would look at are, and is its choice.
    #[test]
    fn the_hero_is_decided_by_the_rows_it_depends_on_only() {
        use RowKind::*;
        let kinds = [ContinueWatching, Recommended, Top10, MyList, NewReleases];
        let some = |id: &str| Some(Some(title(id)));
        // Recommended in with a title: decided, whatever else is pending.
        let leads = [None, some("r1"), None, None, None];
        assert_eq!(id(hero_of(&kinds, &leads)), Some(Some("r1".into())));
        // Recommended pending: not yet.
        let leads = [some("c1"), None, some("t1"), None, None];
        assert_eq!(id(hero_of(&kinds, &leads)), None);
        // Recommended empty or failed: the top 10's.
        let leads = [None, Some(None), some("t1"), None, None];
        assert_eq!(id(hero_of(&kinds, &leads)), Some(Some("t1".into())));
        // Both empty: the first row with a title, once every row before it is in.
        let leads = [Some(None), Some(None), Some(None), None, some("n1")];
        assert_eq!(id(hero_of(&kinds, &leads)), None);
        let leads = [Some(None), Some(None), Some(None), some("m1"), None];
        assert_eq!(id(hero_of(&kinds, &leads)), Some(Some("m1".into())));
        let leads = [Some(None), Some(None), Some(None), Some(None), Some(None)];
        assert_eq!(id(hero_of(&kinds, &leads)), Some(None));
        // Anonymous: no recommended row at all.
        let kinds = [Top10, NewReleases];
        assert_eq!(id(hero_of(&kinds, &[None, some("n1")])), None);
        assert_eq!(
            id(hero_of(&kinds, &[some("t1"), None])),
            Some(Some("t1".into()))
        );
    }
}
