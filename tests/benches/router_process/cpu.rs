//! CPU time of the processes under test, from `/proc`: the proxy (the router or
//! PgBouncer), PostgreSQL (the postmaster and every server process) and the load
//! generator.

use std::path::Path;
use std::time::Duration;

/// CPU time used so far by each party of one run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    pub proxy: Duration,
    pub postgres: Duration,
    pub client: Duration,
}

/// The processes whose CPU time a run reads.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    /// The postmaster: its own time, its live children's, and that of the children it
    /// reaped (`cutime`), so a backend that exits mid-run still counts.
    pub postmaster: u32,
    /// The router or PgBouncer; none for pgbench straight to PostgreSQL.
    pub proxy: Option<u32>,
    /// pgbench or h2load (all their threads).
    pub client: u32,
}

impl Probe {
    /// CPU time used so far. Panics where there is no `/proc` (the bench is Linux only).
    pub fn read(&self, tick: Duration) -> Cpu {
        let own = |pid: u32| {
            stat(&Path::new("/proc").join(pid.to_string()).join("stat"))
                .map_or(0, |stat| stat.ticks)
        };
        let postmaster = stat(
            &Path::new("/proc")
                .join(self.postmaster.to_string())
                .join("stat"),
        )
        .expect("PostgreSQL's postmaster is running");
        let mut postgres = postmaster.ticks + postmaster.reaped_ticks;
        for process in std::fs::read_dir("/proc").expect("/proc").flatten() {
            if let Some(child) = stat(&process.path().join("stat"))
                && child.parent == self.postmaster
            {
                postgres += child.ticks;
            }
        }
        Cpu {
            proxy: tick * self.proxy.map_or(0, own),
            postgres: tick * postgres,
            client: tick * own(self.client),
        }
    }
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;

    fn sub(self, earlier: Cpu) -> Cpu {
        Cpu {
            proxy: self.proxy.saturating_sub(earlier.proxy),
            postgres: self.postgres.saturating_sub(earlier.postgres),
            client: self.client.saturating_sub(earlier.client),
        }
    }
}

struct Stat {
    parent: u32,
    /// utime + stime.
    ticks: u32,
    /// cutime + cstime: children waited for.
    reaped_ticks: u32,
}

/// The parent pid and CPU ticks in a `/proc/<pid>/stat` file.
fn stat(path: &Path) -> Option<Stat> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces: count fields from the last ')'.
    let (_, tail) = text.rsplit_once(')')?;
    let fields: Vec<&str> = tail.split_whitespace().collect();
    let field = |index: usize| fields.get(index)?.parse::<u32>().ok();
    Some(Stat {
        parent: field(1)?,
        ticks: field(11)? + field(12)?,
        reaped_ticks: field(13)? + field(14)?,
    })
}

/// The length of a clock tick (`getconf CLK_TCK`; 10 ms, Linux's usual, if that fails).
pub fn clock_tick() -> Duration {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|hz| hz.trim().parse::<u32>().ok())
        .filter(|hz| *hz > 0)
        .map_or(Duration::from_millis(10), |hz| Duration::from_secs(1) / hz)
}
