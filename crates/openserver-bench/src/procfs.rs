//! What Linux's /proc tells about a process: resident memory, CPU time, open descriptors.
//! Elsewhere every reading is `None`.

use std::path::PathBuf;

fn proc_path(pid: Option<u32>, file: &str) -> PathBuf {
    match pid {
        Some(pid) => PathBuf::from(format!("/proc/{pid}/{file}")),
        None => PathBuf::from(format!("/proc/self/{file}")),
    }
}

/// Resident set size in KiB (`VmRSS` of /proc/PID/status); `None` for this process.
pub fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(proc_path(pid, "status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User plus system CPU time in seconds (/proc/PID/stat fields 14 and 15).
pub fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let stat = std::fs::read_to_string(proc_path(pid, "stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it follow its ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture tools like ps assume; reading it needs libc.
    Some((utime + stime) / 100.0)
}

/// Open file descriptors of the process.
pub fn open_fds(pid: Option<u32>) -> Option<usize> {
    Some(std::fs::read_dir(proc_path(pid, "fd")).ok()?.count())
}

/// The soft limit on open files (`ulimit -n`) of this process.
pub fn fd_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        if !std::path::Path::new("/proc/self/status").exists() {
            return;
        }
        assert!(rss_kib(None).unwrap() > 0);
        assert!(cpu_secs(None).unwrap() >= 0.0);
        assert!(open_fds(None).unwrap() > 0);
        assert!(fd_limit().unwrap() > 0);
    }
}
