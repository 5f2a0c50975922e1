//! Contracts of the backend services, compiled once for everyone who speaks them.
//!
//! # Layout
//! - [`catalog::v1`]: `catalog.v1.Catalog` (BatchGetTitles) — messages, client and server.
//! - [`recommendations::v1`]: `recommendations.v1.Recommendations` — messages, client and server.
//! - [`events`]: the event envelope (JSON Schema in `schema/events/`), payloads, and the
//!   [`events::EventBus`] seam producers and consumers are written against.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection.
//!
//! The fixture backends serve these services and the BFF core calls them; neither compiles the
//! `.proto` files itself. The GraphQL SDL exported by the BFFs lives beside the protos
//! (`schema/web.graphql`, `schema/mobile.graphql`) but is owned by the binaries that produce it.

pub mod events;

/// `catalog.v1`: title metadata.
pub mod catalog {
    /// Version 1 of the catalog contract.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
        tonic::include_proto!("catalog.v1");
    }
}

/// `recommendations.v1`: scored, personalized suggestions.
pub mod recommendations {
    /// Version 1 of the recommendations contract.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
        tonic::include_proto!("recommendations.v1");
    }
}

/// Encoded `FileDescriptorSet` of every proto in `schema/proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
