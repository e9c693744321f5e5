//! Machine load for the load balancer: CPU use between two samples of `/proc/stat` and memory
//! use from `/proc/meminfo`. Linux only, like the rest of the runner; elsewhere load reads 0.

use shoal_core::placement::Load;

/// CPU time counters from the first line of `/proc/stat`: (busy, total) in clock ticks.
pub fn parse_cpu(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    if v.len() < 4 {
        return None;
    }
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait are not busy.
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Memory in use, percent: everything but `MemAvailable`.
pub fn parse_memory(meminfo: &str) -> Option<f64> {
    let field = |name: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    (total > 0.0).then(|| (100.0 * (total - available) / total).clamp(0.0, 100.0))
}

/// Samples load; call [`Sampler::sample`] about once a second.
#[derive(Default)]
pub struct Sampler {
    last: Option<(u64, u64)>,
}

impl Sampler {
    pub fn sample(&mut self) -> Load {
        let now = std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(parse_cpu);
        let cpu = match (self.last, now) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => 100.0 * (b1.saturating_sub(b0)) as f64 / (t1 - t0) as f64,
            _ => 0.0,
        };
        if now.is_some() {
            self.last = now;
        }
        let memory = std::fs::read_to_string("/proc/meminfo").ok().as_deref().and_then(parse_memory).unwrap_or(0.0);
        Load { cpu: cpu.clamp(0.0, 100.0), memory }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_cpu(stat), Some((150, 1000)));
        let mem = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n";
        assert_eq!(parse_memory(mem), Some(75.0));
        assert_eq!(parse_cpu("garbage"), None);
        assert_eq!(parse_memory("MemTotal: 0 kB\nMemAvailable: 0 kB\n"), None);
    }

    #[test]
    fn a_busy_core_shows_up() {
        let mut s = Sampler::default();
        s.sample();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spin = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        let start = std::time::Instant::now();
        let mut seen = 0.0f64;
        while start.elapsed() < std::time::Duration::from_secs(5) && seen < 100.0 / 4.0 {
            std::thread::sleep(std::time::Duration::from_millis(200));
            seen = seen.max(s.sample().cpu);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        spin.join().unwrap();
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        assert!(seen >= 100.0 / cores / 2.0, "one spinning core of {cores} showed as only {seen:.1}% CPU");
    }
}
