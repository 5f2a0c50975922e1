//! `schema/web.graphql` and `schema/mobile.graphql` are the running schemas' SDL.

use crate::helpers::*;

fn check(file: &str, surface: shared::Surface, bin: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schema/").to_owned() + file;
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    let running = shared::cli::sdl(&surface).unwrap();
    assert!(
        on_disk == running,
        "{file} differs from the running schema; regenerate with `cargo run -q -p {bin} -- --print-schema > schema/{file}`"
    );
}

#[tokio::test]
async fn web_schema_file_matches_the_running_schema() {
    check("web.graphql", web(), "bff-web");
}

#[tokio::test]
async fn mobile_schema_file_matches_the_running_schema() {
    check("mobile.graphql", mobile(), "bff-mobile");
}
