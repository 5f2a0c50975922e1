//! `--version` names this binary (the flags themselves are shared and tested with `bff-web`).

#[test]
fn version_names_this_binary() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bff-mobile"))
        .arg("--version")
        .output()
        .expect("run bff-mobile");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("bff-mobile {}", env!("CARGO_PKG_VERSION"))
    );
}
