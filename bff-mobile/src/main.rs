//! `bff-mobile`: the mobile app's BFF. All the work happens in `shared`; this binary only brings its surface.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::run(bff_mobile::surface()).await?;
    Ok(())
}
