//! What the benchmarks share: the load generator (`hey`) and its summary,
//! a process's CPU time and memory from `/proc`, medians.
#![allow(dead_code)]

use std::process::Command;

/// One load run as `hey` reports it, plus the CPU its target spent.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub responses: u64,
    pub errors: u64,
    /// CPU the serving process spent per response.
    pub host_cpu_us: f64,
    /// CPU a peer (the collector) spent per response, where there is one.
    pub peer_cpu_us: f64,
    /// CPU the load generator itself spent per response: on a small machine
    /// it shares the cores with the server, so it bounds what any server
    /// can reach.
    pub client_cpu_us: f64,
}

/// CPU time (user + system) of this process's children that have ended and
/// been waited for, in microseconds.
fn children_cpu_us() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return f64::NAN;
    }
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `hey` against `url` for `seconds` with `concurrency` clients and
/// reads its summary.
pub fn hey(url: &str, seconds: u64, concurrency: u64) -> Figures {
    let before = children_cpu_us();
    let out = Command::new("hey")
        .args([
            "-z",
            &format!("{seconds}s"),
            "-c",
            &concurrency.to_string(),
            url,
        ])
        .output()
        .expect("hey (apt-get install hey; scripts/setup.sh installs it)");
    let client_cpu = children_cpu_us() - before;
    let text = String::from_utf8_lossy(&out.stdout);
    let number_after = |label: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    // Status lines look like "  [200]	12345 responses"; transport errors
    // are listed under "Error distribution:" as "  [N]	Get ...: reason".
    let mut responses = 0;
    let mut errors = 0;
    let mut in_errors = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("Error distribution") {
            in_errors = true;
            continue;
        }
        let Some((code, rest)) = l.strip_prefix('[').and_then(|l| l.split_once(']')) else {
            continue;
        };
        let Ok(code_or_count) = code.parse::<u64>() else {
            continue;
        };
        if in_errors {
            errors += code_or_count;
        } else if let Some(n) = rest
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
        {
            responses += n;
            if code_or_count != 200 {
                errors += n;
            }
        }
    }
    Figures {
        rps: number_after("Requests/sec:"),
        p50_ms: number_after("50% in") * 1000.0,
        p99_ms: number_after("99% in") * 1000.0,
        responses,
        errors,
        client_cpu_us: client_cpu / responses.max(1) as f64,
        ..Figures::default()
    }
}

/// CPU time (user + system) a process has used, in microseconds.
pub fn cpu_us(pid: u32) -> f64 {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses.
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let utime: f64 = rest.get(11)?.parse().ok()?;
            let stime: f64 = rest.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0.0);
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz * 1e6
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Peak resident set size of a process so far, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// Resident set size of a process now, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The `q` quantile (0..=1) of sorted samples.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
