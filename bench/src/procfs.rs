//! Process CPU time and RSS from `/proc`. Linux only; the numbers cover a whole process: for
//! `/proc/self` the fixtures, BFF and load generator alike, since they all run in it; the
//! `subscribers` scenario's client process reads its parent's (fixtures and BFF only).

use anyhow::{Context, Result, bail};

/// Clock ticks per second of the utime/stime fields. `/proc` reports them in USER_HZ, which
/// Linux fixes at 100 on every mainstream architecture (sysconf would need `unsafe` FFI).
const USER_HZ: u64 = 100;

/// utime + stime of this process so far, in microseconds (10 ms resolution).
pub(crate) fn cpu_time_us() -> Result<u64> {
    cpu_time_us_at("/proc/self/stat")
}

/// utime + stime of process `pid` so far, in microseconds (10 ms resolution).
pub(crate) fn cpu_time_us_of(pid: u32) -> Result<u64> {
    cpu_time_us_at(&format!("/proc/{pid}/stat"))
}

fn cpu_time_us_at(path: &str) -> Result<u64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    let ticks = parse_cpu_ticks(&stat)?;
    Ok(ticks * (1_000_000 / USER_HZ))
}

/// Peak resident set size (VmHWM) of this process, in KiB.
pub(crate) fn peak_rss_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    parse_status_kib(&status, "VmHWM")
}

/// Resident set size now (VmRSS) of process `pid`, in KiB.
pub(crate) fn rss_kib_of(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    parse_status_kib(&status, "VmRSS")
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line, in clock ticks.
fn parse_cpu_ticks(stat: &str) -> Result<u64> {
    // Field 2 is the command name in parentheses and may itself contain spaces or ')': the
    // fields we want are counted from the *last* ')'.
    let Some(close) = stat.rfind(')') else {
        bail!("no ')' in /proc/self/stat: {stat:?}");
    };
    // After ')': field 3 (state) is index 0, so utime (14) is index 11 and stime (15) index 12.
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let field = |i: usize, name: &str| -> Result<u64> {
        fields
            .get(i)
            .with_context(|| format!("/proc/self/stat has no {name} field"))?
            .parse::<u64>()
            .with_context(|| format!("/proc/self/stat {name} is not a number"))
    };
    Ok(field(11, "utime")? + field(12, "stime")?)
}

/// The `{field}:` line (`VmHWM`, `VmRSS`) of `/proc/PID/status`, in KiB.
fn parse_status_kib(status: &str, field: &str) -> Result<u64> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .with_context(|| format!("no {field} in /proc/PID/status"))?;
    let mut parts = line.split_whitespace();
    let value = parts.next().with_context(|| format!("empty {field}"))?;
    match parts.next() {
        Some("kB") => {}
        other => bail!("unexpected {field} unit {other:?}"),
    }
    value
        .parse()
        .with_context(|| format!("{field} is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_skip_a_command_name_with_spaces_and_parens() {
        // Real layout, with a hostile comm: "a) b (c".
        let stat = "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 500 0 0 0 \
                    731 42 0 0 20 0 3 0 123456 1000000 2000 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat).ok(), Some(731 + 42));
    }

    #[test]
    fn cpu_ticks_reject_truncated_lines() {
        assert!(parse_cpu_ticks("1 (x) S 1 2 3").is_err());
        assert!(parse_cpu_ticks("garbage").is_err());
    }

    #[test]
    fn vm_hwm_is_read_in_kib() {
        let status =
            "Name:\tbff-bench\nVmPeak:\t  999999 kB\nVmHWM:\t   51234 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM").ok(), Some(51234));
        assert_eq!(parse_status_kib(status, "VmRSS").ok(), Some(40000));
        assert!(parse_status_kib("VmRSS:\t 1 kB\n", "VmHWM").is_err());
    }

    #[test]
    fn live_process_is_readable() {
        // Whatever the values, reading our own /proc must work on the Linux CI.
        assert!(peak_rss_kib().is_ok_and(|k| k > 0));
        assert!(cpu_time_us().is_ok());
        let me = std::process::id();
        assert!(rss_kib_of(me).is_ok_and(|k| k > 0));
        assert!(cpu_time_us_of(me).is_ok());
    }
}
