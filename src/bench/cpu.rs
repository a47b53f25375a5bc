//! CPU time of a process and its descendants, from the kernel's own accounting
//! (`/proc/PID/stat`, fields 14 and 15: `utime` and `stime`, in clock ticks), kept apart so a
//! report can tell a proxy's own work from the kernel's.
//!
//! nginx does its work in worker processes, children of the master we start; HAProxy and the
//! gateway are one process with threads, whose `stat` already counts every thread. Summing the
//! process and all its live descendants covers both shapes.

use std::collections::BTreeMap;

/// Clock ticks per second (`getconf CLK_TCK`), 100 when it cannot be read (Linux's usual value).
pub(crate) fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// CPU time in clock ticks, split as the kernel accounts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Ticks {
    /// In user mode (`utime`).
    pub(crate) user: u64,
    /// In the kernel on the process's behalf (`stime`): its system calls, and on loopback the
    /// receiving side of the TCP segments it sends.
    pub(crate) system: u64,
}

impl Ticks {
    /// User plus system.
    pub(crate) fn total(self) -> u64 {
        self.user + self.system
    }

    /// The ticks from `earlier` to `self`.
    pub(crate) fn since(self, earlier: Ticks) -> Ticks {
        Ticks {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

impl std::ops::Add for Ticks {
    type Output = Ticks;

    fn add(self, other: Ticks) -> Ticks {
        Ticks { user: self.user + other.user, system: self.system + other.system }
    }
}

/// One process as `/proc/PID/stat` shows it: its parent and its CPU ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    ppid: u32,
    ticks: Ticks,
}

/// Parses a `/proc/PID/stat` line. The command name (field 2) is in parentheses and may hold
/// spaces, so the fields are counted after its closing parenthesis.
fn parse_stat(line: &str) -> Option<Stat> {
    let (_, rest) = line.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Stat { ppid, ticks: Ticks { user: utime, system: stime } })
}

fn all_processes() -> BTreeMap<u32, Stat> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Some(stat) =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|l| parse_stat(&l))
        {
            out.insert(pid, stat);
        }
    }
    out
}

/// `root` and its live descendants.
pub(crate) fn tree(root: u32) -> Vec<u32> {
    tree_of(&all_processes(), root)
}

fn tree_of(processes: &BTreeMap<u32, Stat>, root: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(pid) = frontier.pop() {
        if processes.contains_key(&pid) {
            out.push(pid);
        }
        frontier.extend(processes.iter().filter(|(_, s)| s.ppid == pid).map(|(child, _)| *child));
    }
    out
}

/// CPU ticks used so far by `root` and its live descendants.
pub(crate) fn tree_ticks(root: u32) -> Ticks {
    let processes = all_processes();
    tree_of(&processes, root)
        .iter()
        .filter_map(|pid| processes.get(pid))
        .fold(Ticks::default(), |sum, s| sum + s.ticks)
}

/// The id of a child of this process whose command line holds `needle`. The whole command line
/// is searched, arguments joined with spaces: nginx rewrites its own into one string
/// (`nginx: master process /usr/sbin/nginx -c FILE ...`).
pub(crate) fn child_with_arg(needle: &str) -> Option<u32> {
    let me = std::process::id();
    all_processes().into_iter().filter(|(_, s)| s.ppid == me).map(|(pid, _)| pid).find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " ").contains(needle))
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_parent_and_ticks_past_a_name_with_spaces() {
        let line = "4242 (nginx: worker) S 4241 4241 4241 0 -1 4194624 10 0 0 0 7 5 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat(line), Some(Stat { ppid: 4241, ticks: Ticks { user: 7, system: 5 } }));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_s_user_ticks_grow_while_it_spins() {
        let me = std::process::id();
        assert!(tree_of(&all_processes(), me).contains(&me));
        let before = tree_ticks(me);
        // Spin until the kernel's account of this process shows more user time; a reader that
        // lost the process or read the wrong fields never sees it grow.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut spin = 0u64;
        let grown = loop {
            for i in 0..1_000_000u64 {
                spin = std::hint::black_box(spin.wrapping_add(i * i));
            }
            let now = tree_ticks(me);
            if now.since(before).user > 0 {
                break now;
            }
            assert!(std::time::Instant::now() < give_up, "30 s of spinning and no user tick: {now:?}");
        };
        assert!(grown.total() > before.total(), "{before:?} -> {grown:?}");
        assert!(ticks_per_second() > 0.0);
    }
}
