//! CPU time so far, for benchmarks that report what an operation costs
//! and who pays: this process, and the whole machine (so the rest — a
//! broker, a load generator, other users — is the difference). Linux
//! `/proc`, in clock ticks of 10 ms; 0 where `/proc` cannot be read.

use std::time::Duration;

/// A reading of the CPU counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cpu {
    /// This process: user + system.
    pub process: Duration,
    /// Every CPU of the machine, busy (not idle, not waiting for I/O).
    pub machine: Duration,
}

const TICK: Duration = Duration::from_millis(10);

impl Cpu {
    pub fn now() -> Self {
        let process = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|text| {
                // utime and stime: the 14th and 15th fields, the 12th and
                // 13th after the name.
                let fields: Vec<u64> = text
                    .rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .skip(11)
                    .take(2)
                    .filter_map(|t| t.parse().ok())
                    .collect();
                Some(fields.iter().sum::<u64>())
            })
            .unwrap_or(0);
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let ticks: Vec<u64> =
                    s.lines().next()?.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal
                let total: u64 = ticks.iter().take(8).sum();
                Some(total - ticks.get(3)? - ticks.get(4)?)
            })
            .unwrap_or(0);
        Self { process: TICK * process as u32, machine: TICK * machine as u32 }
    }

    /// What was spent since `earlier`: (this process, the rest of the
    /// machine).
    pub fn since(self, earlier: Cpu) -> (Duration, Duration) {
        let process = self.process.saturating_sub(earlier.process);
        (process, self.machine.saturating_sub(earlier.machine).saturating_sub(process))
    }
}
