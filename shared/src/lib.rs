//! The BFF resolver core shared by `bff-web` and `bff-mobile`: everything that fetches, composes,
//! secures and serves. A binary adds only its GraphQL surface and client profile.
//!
//! # Layout (each layer talks to the ones below it; tests in `layering` keep the import graph
//! acyclic, file by file and folder by folder, and the ground free of imports from above)
//! - [`cli`]: flags and the `run` entry point every binary calls.
//! - [`config`]: typed settings; defaults < TOML < `BFF_` env < flags. Near the ground: it imports
//!   only the client profile's plain types.
//! - [`server`]: listeners, the connection stage (timeouts, connection cap), assembly of the
//!   routers into the per-config request stack, config reload (SIGHUP, a changed file: a new
//!   stack swapped in), GraphiQL, health/readiness, graceful shutdown.
//! - [`pipeline`]: the stages before the service, in order: client address → observe →
//!   client-address rules → CORS → body limits → authentication → rate limits.
//! - [`graphql`]: the GraphQL service in four stages — wire (Accept, method, body) → admit
//!   (persisted lookup, parse, analysis, limits, late rate limits) → execute (document cache,
//!   coalescing; or incremental, for `@defer` on homepage rows) → answer (one refusal type,
//!   status + code in one place) — over the analysis, the shared schema types, the
//!   `Subscription` root, `@defer` (plan and wire format), the contained direct-JSON path, and
//!   error coding.
//! - `live`: the live homepage's doors — subscriptions over WebSocket (`/graphql/ws`,
//!   graphql-transport-ws), SSE (`/graphql/stream`) and multipart from `/graphql` — admitted
//!   like requests, one shared execution per operation and view, bounded queues, connection
//!   limits.
//! - [`proxy`]: pass-through routes.
//! - [`ratelimit`]: rate-limit policies, their algorithms and stores (in-process, Redis), and a
//!   request's late checks ([`ratelimit::LateLimits`]), which the pipeline hands the GraphQL
//!   service as a request extension.
//! - [`auth`]: bearer JWT → verified [`auth::Viewer`].
//! - [`body`]: request bodies held to a size and a deadline.
//! - [`compose`]: the parallel homepage plan and title hydration, whole or progressively (rows
//!   in waves, for `@defer`).
//! - [`events`]: builds the event bus (the `bff-events` crate: in-process or RabbitMQ, outbox,
//!   spool) from `events.*`; transport only.
//! - [`cache`]: fragment cache (L1 moka, L2 Redis or Redis Cluster shared by the fleet),
//!   coalescing, SWR, an injected wall clock, and the instance's invalidation by domain events.
//! - [`profile`]: client profiles (rows, limits) and trimming rules.
//! - [`upstream`]: the policy layer, one client per backend (reqwest, tonic), and discovery (DNS,
//!   health checks) written once over both transports.
//! - [`domain`]: plain values passed between the layers.
//! - `redis_conn`: the one connection to Redis (a single server or a Redis Cluster, connected
//!   lazily) that the rate-limit store and the L2 cache tier share; the ground, importing nothing.
//! - `refusal`: the one shape of an answer outside GraphQL execution (status, code, trace id).
//! - [`error`]: the closed list of client error codes; the ground, importing nothing.
//! - `demo`: `--demo` (fixtures in-process, demo token); only with the `demo` cargo feature, which
//!   the binaries turn on by default and a production build leaves out
//!   (`--no-default-features`), so the production library links no fixture backend.
//! - [`telemetry`]: logging set-up.

pub mod auth;
pub(crate) mod body;
pub mod cache;
pub mod cli;
pub mod compose;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod domain;
pub mod error;
mod escape;
pub mod events;
pub mod graphql;
#[cfg(test)]
mod layering;
pub(crate) mod live;
pub mod pipeline;
pub mod profile;
pub(crate) mod proxy;
pub mod ratelimit;
pub(crate) mod redis_conn;
pub(crate) mod refusal;
pub mod server;
pub mod telemetry;
pub mod upstream;

pub use cli::run;
pub use server::{Application, StartOptions, Surface};
