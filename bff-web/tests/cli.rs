//! The binary as a newcomer meets it: `--version`, a bad flag, a bad config value, and warnings
//! found while loading the config, checked on the real process and its output; and as a container
//! runtime meets it: `--healthcheck` against a running instance and against nothing.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

const BIN: &str = env!("CARGO_BIN_EXE_bff-web");

fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run bff-web");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_names_this_binary() {
    let (code, stdout, _) = run(&["--version"], &[]);
    assert_eq!(code, Some(0));
    assert_eq!(
        stdout.trim(),
        format!("bff-web {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_bare_port_for_listen_says_what_is_expected() {
    let (code, _, stderr) = run(&["--listen", "4000"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("127.0.0.1:4000"), "{stderr}");
}

#[test]
fn a_config_error_is_one_plain_line_and_exit_code_2_even_with_backtraces_on() {
    let (code, stdout, stderr) = run(
        &["--listen", "127.0.0.1:0"],
        &[("BFF_GRAPHQL__MAX_DEPTH", "abc"), ("RUST_BACKTRACE", "1")],
    );
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let line = lines[0];
    assert!(
        line.starts_with("bff-web: invalid config key `graphql.max_depth`"),
        "{line}"
    );
    assert!(line.contains("(from env BFF_GRAPHQL__MAX_DEPTH)"), "{line}");
    assert!(line.contains("invalid type"), "{line}");
    assert_eq!(line.matches("graphql.max_depth").count(), 1, "{line}");
    for noise in ["backtrace", "Caused by", "Error:", "panicked"] {
        assert!(!stderr.contains(noise), "{noise}: {stderr}");
    }
}

#[test]
fn warnings_found_while_loading_the_config_are_logged() {
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .env("BFF_NOT_A_SECTION", "1")
        .env("BFF_GRAPHIQL__ENABLED", "false")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bff-web");
    let (tx, rx) = mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let mut seen = Vec::new();
    let mut warned = false;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
        warned |= line.contains("WARN") && line.contains("BFF_NOT_A_SECTION");
        let started = line.contains("listening on");
        seen.push(line);
        if started {
            break;
        }
    }
    // Logging is set up before the server binds, so the warning is out by now.
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        warned,
        "no warning about BFF_NOT_A_SECTION in:\n{}",
        seen.join("\n")
    );
}

/// `--healthcheck` (the container's HEALTHCHECK) exits 0 naming the URL while an instance started
/// with the same flags answers, and 1 with one plain line once it is gone.
#[test]
fn the_healthcheck_flag_passes_on_a_running_instance_and_fails_without_one() {
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .env("BFF_GRAPHIQL__ENABLED", "false")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start bff-web");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut addr = None;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
        if let Some(rest) = line.split("listening on http://").nth(1) {
            addr = Some(rest.trim().to_owned());
            break;
        }
    }
    let addr = addr.expect("bff-web printed where it listens");
    let (code, stdout, stderr) = run(&["--listen", &addr, "--healthcheck"], &[]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(stdout.trim(), format!("healthy: http://{addr}/healthz"));

    let (code, stdout, stderr) = run(&["--listen", &addr, "--healthcheck"], &[]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "bff-web: health check of http://{addr}/healthz failed"
        )),
        "{stderr}"
    );
}
