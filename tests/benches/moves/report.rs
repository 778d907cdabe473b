//! What the moves bench prints: one line per size and method, the steps' medians, and
//! the legend.

use std::collections::BTreeMap;
use std::time::Duration;

use silo_proto::controlplane::v1 as pb;

/// One successful move, as its operation's timestamps and the clients saw it.
pub(crate) struct Sample {
    pub(crate) total: Duration,
    pub(crate) copy: Duration,
    pub(crate) held: Duration,
    pub(crate) slowest: Duration,
    pub(crate) failures: Vec<String>,
    pub(crate) bytes: i64,
    pub(crate) steps: Vec<(String, Duration)>,
}

/// Bytes as MiB, one decimal.
pub(crate) fn mib(bytes: i64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// Seconds, three decimals.
pub(crate) fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

/// The median (nearest rank) and the largest.
pub(crate) fn p50_max(mut values: Vec<Duration>) -> (Duration, Duration) {
    values.sort();
    let p50 = values.get(values.len().saturating_sub(1) / 2).copied();
    (
        p50.unwrap_or_default(),
        values.last().copied().unwrap_or_default(),
    )
}

/// The results of one size and method.
pub(crate) struct Row {
    pub(crate) size: String,
    pub(crate) method: pb::MoveMethod,
    pub(crate) planned: usize,
    pub(crate) samples: Vec<Sample>,
    pub(crate) failed_moves: Vec<String>,
}

impl Row {
    pub(crate) fn print(&self) {
        let col = |f: fn(&Sample) -> Duration| {
            let (p50, max) = p50_max(self.samples.iter().map(f).collect());
            format!("{:>7} / {:<7}", secs(p50), secs(max))
        };
        let failures: usize = self.samples.iter().map(|s| s.failures.len()).sum();
        let mut bytes: Vec<i64> = self.samples.iter().map(|s| s.bytes).collect();
        bytes.sort_unstable();
        let bytes = bytes.get(bytes.len().saturating_sub(1) / 2).copied();
        println!(
            "{:<6} {:<9} {:>2}/{:<2} {} {} {} {} {:>6} {:>12}",
            self.size,
            format!("{:?}", self.method).to_lowercase(),
            self.samples.len(),
            self.planned,
            col(|s| s.total),
            col(|s| s.copy),
            col(|s| s.held),
            col(|s| s.slowest),
            failures,
            bytes.map_or("-".into(), mib),
        );
    }

    pub(crate) fn print_steps(&self) {
        let mut by_step: BTreeMap<usize, (String, Vec<Duration>)> = BTreeMap::new();
        for sample in &self.samples {
            for (index, (name, took)) in sample.steps.iter().enumerate() {
                by_step
                    .entry(index)
                    .or_insert_with(|| (name.clone(), Vec::new()))
                    .1
                    .push(*took);
            }
        }
        let steps: Vec<String> = by_step
            .into_values()
            .map(|(name, took)| format!("{name} {}", secs(p50_max(took).0)))
            .collect();
        println!(
            "  {} {}: step p50 s: {}",
            self.size,
            format!("{:?}", self.method).to_lowercase(),
            steps.join(", ")
        );
    }
}

const LEGEND: &str = "\
columns (p50 = median by nearest rank over the moves, max = the largest; seconds):
  moves    moves that succeeded / moves run
  move     MoveTenant's operation created -> its last step (RETIRING) finished, from the
           operation's timestamps
  copy     the COPYING step (copy: pg_dump | pg_restore), or SUBSCRIBING (replicate: schema,
           replication slot, initial copy, until the lag is under 16 MiB)
  held     the HOLDING step's start -> the SWITCHING step's finish: the tenant is MOVING and
           routers hold its calls
  slowest  the slowest client call (INSERT or SELECT through the router) during each move
  failed   client calls that failed during the moves (all moves of the row)
  bytes    the tenant database's size on the target after the move (median)";

/// Prints the legend, the table, each row's step medians, its failed calls grouped by
/// what they said, and its failed moves; returns whether any client call failed.
pub(crate) fn print(rows: &[Row]) -> bool {
    println!("\n{LEGEND}\n");
    println!(
        "{:<6} {:<9} {:<5} {:<17} {:<17} {:<17} {:<17} {:>6} {:>12}",
        "size",
        "method",
        "moves",
        "move p50 / max",
        "copy p50 / max",
        "held p50 / max",
        "slowest p50 / max",
        "failed",
        "bytes"
    );
    for row in rows {
        row.print();
    }
    println!();
    for row in rows {
        row.print_steps();
    }
    let mut failed_calls = false;
    for row in rows {
        let mut grouped: BTreeMap<&str, usize> = BTreeMap::new();
        for failure in row.samples.iter().flat_map(|s| &s.failures) {
            *grouped.entry(failure).or_default() += 1;
        }
        for (failure, count) in grouped {
            failed_calls = true;
            println!(
                "failed calls, {} {:?}: {count} x {failure}",
                row.size, row.method
            );
        }
        for why in &row.failed_moves {
            println!("failed move, {} {:?}: {why}", row.size, row.method);
        }
    }
    failed_calls
}
