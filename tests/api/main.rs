//! End-to-end tests: the fixture backends and a BFF in-process on ephemeral ports, driven over
//! real HTTP. One test binary so the build links once.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod auth;
mod cache;
mod defer;
mod deploy;
mod docs;
mod edge;
mod events;
mod failures;
mod first_minutes;
mod helpers;
mod homepage;
mod hostile;
mod http_spec;
mod l2;
mod mobile;
mod mutations;
mod observability;
mod operations;
mod persisted;
mod pki;
mod ratelimit;
mod reload;
mod rendering;
mod resilience;
mod schema_files;
mod subscriptions;
mod tls;
