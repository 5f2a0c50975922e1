//! `bff-web`: the web app's BFF. All the work happens in `shared`; this binary only brings its surface.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::run(bff_web::surface()).await?;
    Ok(())
}
