//! A sampling CPU profile of a timed region (`phi3v bench breakdown --profile DIR`, feature
//! `profile`): which host functions the calling thread and CubeCL's device thread spend a
//! decode step in. Writes a flame graph (`NAME.svg`), the folded stacks (`NAME.folded`) and
//! a table of the functions with the most samples (`NAME.top.md`), per thread.
//!
//! Names need the binary's symbol table (release builds here are stripped): build the
//! profiling binary with `cargo rustc --release -p phi3v-cli --bin phi3v --features
//! …,profile -- -C strip=none`.

use std::path::Path;

use crate::CliResult;

/// Samples per second.
#[cfg(feature = "profile")]
const FREQUENCY: i32 = 4999;

/// A running profile (samples every thread of the process while it lives).
pub struct Profile {
    #[cfg(feature = "profile")]
    guard: pprof::ProfilerGuard<'static>,
}

/// The error of a `--profile` run in a build without the profiler.
pub const NO_PROFILER: &str = "this phi3v has no profiler: build it with the cargo feature `profile`";

/// Whether this build has the profiler (cargo feature `profile`).
pub const AVAILABLE: bool = cfg!(feature = "profile");

/// Starts sampling; an error when this build has no profiler.
pub fn start() -> CliResult<Profile> {
    #[cfg(feature = "profile")]
    {
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(FREQUENCY)
            .blocklist(&["libc", "libgcc", "pthread", "vdso"])
            .build()
            .map_err(|e| format!("cannot start the profiler: {e}"))?;
        Ok(Profile { guard })
    }
    #[cfg(not(feature = "profile"))]
    Err(NO_PROFILER.into())
}

impl Profile {
    /// Stops sampling and writes `NAME.svg`, `NAME.folded` and `NAME.top.md` into `dir`.
    pub fn finish(self, dir: &Path, name: &str) -> CliResult<()> {
        #[cfg(feature = "profile")]
        {
            let report = self.guard.report().build().map_err(|e| format!("profile report: {e}"))?;
            drop(self.guard);
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let svg = std::fs::File::create(dir.join(format!("{name}.svg")))?;
            report.flamegraph(svg).map_err(|e| format!("flame graph: {e}"))?;
            let stacks: Vec<(String, Vec<String>, u64)> = report
                .data
                .iter()
                .map(|(frames, &n)| {
                    // Outermost first; every inlined symbol of an address, outer to inner.
                    let names = frames.frames.iter().rev().flat_map(|f| f.iter().rev().map(|s| short_name(&s.name()))).collect();
                    (thread_kind(&frames.thread_name_or_id()), names, n.max(0) as u64)
                })
                .collect();
            let folded: String = stacks.iter().map(|(t, names, n)| format!("{t};{} {n}\n", names.join(";"))).collect();
            std::fs::write(dir.join(format!("{name}.folded")), folded)?;
            std::fs::write(dir.join(format!("{name}.top.md")), top_table(&stacks, 40))?;
        }
        #[cfg(not(feature = "profile"))]
        let _ = (dir, name);
        Ok(())
    }
}

/// CubeCL's device threads are named `DS{U|D}-type-index`; the calling thread keeps its name.
#[cfg_attr(not(feature = "profile"), allow(dead_code))]
fn thread_kind(name: &str) -> String {
    if name.starts_with("DS") { format!("device thread {name}") } else { format!("caller {name}") }
}

/// A demangled name without its hash suffix (`::h0123456789abcdef`).
#[cfg_attr(not(feature = "profile"), allow(dead_code))]
fn short_name(name: &str) -> String {
    match name.rfind("::h") {
        Some(i) if name.len() - i == 19 && name[i + 3..].bytes().all(|b| b.is_ascii_hexdigit()) => name[..i].to_string(),
        _ => name.to_string(),
    }
}

/// Per thread: its samples, then the `n` functions with the most samples in their own code
/// (the leaf) and with the most samples anywhere on the stack (inclusive), as shares.
#[cfg_attr(not(feature = "profile"), allow(dead_code))]
fn top_table(stacks: &[(String, Vec<String>, u64)], n: usize) -> String {
    use std::collections::{BTreeMap, HashMap, HashSet};
    let mut threads: BTreeMap<&str, Vec<(&[String], u64)>> = BTreeMap::new();
    for (t, names, count) in stacks {
        threads.entry(t).or_default().push((names, *count));
    }
    let total: u64 = stacks.iter().map(|s| s.2).sum();
    let mut s = format!("# Host profile: {total} samples\n");
    for (t, rows) in threads {
        let samples: u64 = rows.iter().map(|r| r.1).sum();
        let mut own: HashMap<&str, u64> = HashMap::new();
        let mut incl: HashMap<&str, u64> = HashMap::new();
        for (names, count) in &rows {
            if let Some(leaf) = names.last() {
                *own.entry(leaf).or_default() += count;
            }
            let distinct: HashSet<&str> = names.iter().map(|x| x.as_str()).collect();
            for x in distinct {
                *incl.entry(x).or_default() += count;
            }
        }
        s += &format!("\n## {t}: {samples} samples ({:.1} %)\n", 100.0 * samples as f64 / total.max(1) as f64);
        for (title, map) in [("own time (leaf)", own), ("inclusive", incl)] {
            let mut v: Vec<(&str, u64)> = map.into_iter().collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            s += &format!("\n| {title} | share |\n|---|---|\n");
            for (name, c) in v.into_iter().take(n) {
                s += &format!("| `{}` | {:.1} % |\n", name.replace('|', "\\|"), 100.0 * c as f64 / samples.max(1) as f64);
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_their_hash_and_threads_their_number() {
        assert_eq!(short_name("cubecl_cuda::compute::server::launch::h0123456789abcdef"), "cubecl_cuda::compute::server::launch");
        assert_eq!(short_name("a::hello"), "a::hello");
        assert_eq!(thread_kind("DSD-2-0"), "device thread DSD-2-0");
        assert_eq!(thread_kind("main"), "caller main");
    }

    #[test]
    fn top_table_counts_leaves_and_inclusive_time_per_thread() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let stacks = vec![
            ("caller main".to_string(), s(&["main", "step", "launch"]), 3),
            ("caller main".to_string(), s(&["main", "step"]), 1),
            ("device thread DSD".to_string(), s(&["run", "spin"]), 4),
        ];
        let t = top_table(&stacks, 10);
        assert!(t.contains("# Host profile: 8 samples"), "{t}");
        assert!(t.contains("## caller main: 4 samples (50.0 %)"), "{t}");
        assert!(t.contains("| `launch` | 75.0 % |"), "{t}");
        assert!(t.contains("| `step` | 100.0 % |"), "{t}");
        assert!(t.contains("| `spin` | 100.0 % |"), "{t}");
    }
}
