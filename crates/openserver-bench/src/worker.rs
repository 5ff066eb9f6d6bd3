//! Worker processes: a share of the connections in a child process of the same binary
//! (`openserver bench worker`), so a run can hold more connections than one process may open
//! (`ulimit -n`). Each worker connects from its own source addresses 127.B.W.x
//! ([`crate::stream::loopback_sources`]), which gives it its own range of ephemeral ports.
//!
//! The parent writes one JSON [`Job`] line to the worker's stdin. The worker sets up its
//! connections and prints a `Ready` event (one JSON line), waits for `go`, runs, and prints its
//! report. For idle holds it holds until `stop` (or stdin closes) before reporting. A worker
//! whose stdin closes early gives up, so workers never outlive their parent for long.

use crate::hold::{IdleReport, IdleSpec};
use crate::load::{LoadReport, LoadSpec, NoProgress, SetupReport};
use crate::stream::{loopback_sources, run_octet};
use crate::target::Launcher;
use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio_util::sync::CancellationToken;

/// What a worker is asked to do: `count` connections, the first numbered `first`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Job {
    /// A load run.
    Load {
        spec: LoadSpec,
        first: usize,
        count: usize,
    },
    /// An idle hold.
    Idle {
        spec: IdleSpec,
        first: usize,
        count: usize,
    },
}

/// What a worker reports, one JSON line each.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Event {
    Ready(SetupReport),
    Load(Box<LoadReport>),
    Idle(Box<IdleReport>),
}

/// Splits `total` connections into shares of at most `per_worker`.
pub(crate) fn split(total: usize, per_worker: usize) -> Vec<usize> {
    let workers = total.div_ceil(per_worker.max(1)).max(1);
    (0..workers)
        .map(|i| total / workers + usize::from(i < total % workers))
        .collect()
}

/// A running worker process.
pub(crate) struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    /// Starts `bench worker` and hands it `job`.
    pub(crate) async fn spawn(launcher: &Launcher, job: &Job) -> Result<Worker> {
        let mut child = launcher
            .command(&["worker".into()])
            .spawn()
            .with_context(|| format!("cannot start {}", launcher.exe.display()))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("no worker stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no worker stdout"))?;
        let mut line = serde_json::to_string(job)?;
        line.push('\n');
        stdin.write_all(line.as_bytes()).await?;
        stdin.flush().await?;
        Ok(Worker {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// The next event.
    pub(crate) async fn event(&mut self) -> Result<Event> {
        while let Some(line) = self.lines.next_line().await? {
            if let Ok(event) = serde_json::from_str(&line) {
                return Ok(event);
            }
        }
        bail!("worker exited without reporting")
    }

    /// Sends a command line (`go`, `stop`).
    pub(crate) async fn say(&mut self, word: &str) -> Result<()> {
        self.stdin.write_all(format!("{word}\n").as_bytes()).await?;
        Ok(self.stdin.flush().await?)
    }

    /// Waits for the process to end.
    pub(crate) async fn wait(mut self) {
        let _ = self.child.wait().await;
    }
}

/// Runs `spec` over worker processes of at most `per_worker` connections each; they start
/// the measured phase together once all are connected.
pub(crate) async fn run_load(
    spec: &LoadSpec,
    launcher: &Launcher,
    per_worker: usize,
) -> Result<LoadReport> {
    let shares = split(spec.connections, per_worker);
    let run = run_octet();
    let mut workers = Vec::new();
    let mut first = 0;
    for (i, &count) in shares.iter().enumerate() {
        let mut spec = spec.clone();
        if spec.sources.is_empty() && spec.addr.ip().is_loopback() && spec.addr.is_ipv4() {
            spec.sources = loopback_sources(run, i, count, spec.connect_concurrency);
        }
        spec.connections = count;
        // Each worker sends its share of a count or rate.
        spec.count = spec
            .count
            .map(|c| c * count as u64 / spec_connections(&shares));
        spec.rate = spec
            .rate
            .map(|r| r * count as f64 / spec_connections(&shares) as f64);
        workers.push(Worker::spawn(launcher, &Job::Load { spec, first, count }).await?);
        first += count;
    }
    for worker in &mut workers {
        match worker.event().await? {
            Event::Ready(_) => {}
            other => bail!("worker: expected ready, got {other:?}"),
        }
    }
    for worker in &mut workers {
        worker.say("go").await?;
    }
    let mut merged: Option<LoadReport> = None;
    for mut worker in workers {
        let report = match worker.event().await? {
            Event::Load(report) => *report,
            other => bail!("worker: expected a report, got {other:?}"),
        };
        worker.wait().await;
        merged = Some(match merged {
            None => report,
            Some(m) => m.merge(&report),
        });
    }
    merged.ok_or_else(|| anyhow!("no workers ran"))
}

fn spec_connections(shares: &[usize]) -> u64 {
    shares.iter().sum::<usize>().max(1) as u64
}

/// The worker process: reads its job, sets up, reports ready, runs on `go`, reports.
pub async fn run_worker() -> Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let job: Job = match stdin.next_line().await? {
        Some(line) => serde_json::from_str(&line).context("bad worker job")?,
        None => return Ok(()),
    };
    match job {
        Job::Load { spec, first, count } => {
            let (conns, setup) = crate::load::setup(&spec, count, first).await;
            emit(&Event::Ready(setup.clone()))?;
            if stdin.next_line().await?.as_deref() != Some("go") {
                return Ok(());
            }
            let report = crate::load::run_connected(&spec, conns, setup, &NoProgress).await;
            emit(&Event::Load(Box::new(report)))
        }
        Job::Idle { spec, first, count } => {
            let (conns, setup) = crate::load::setup(&spec.load, count, first).await;
            emit(&Event::Ready(setup.clone()))?;
            let stop = CancellationToken::new();
            let stopper = stop.clone();
            // "stop", anything else, or EOF: end the hold.
            tokio::spawn(async move {
                let _ = stdin.next_line().await;
                stopper.cancel();
            });
            let report = crate::hold::hold(&spec, conns, setup, stop).await;
            emit(&Event::Idle(Box::new(report)))
        }
    }
}

fn emit(event: &Event) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, event)?;
    out.write_all(b"\n")?;
    Ok(out.flush()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_evenly_under_the_cap() {
        assert_eq!(split(25_000, 10_000), vec![8334, 8333, 8333]);
        assert_eq!(split(10, 10_000), vec![10]);
        assert_eq!(split(0, 10), vec![0]);
    }
}
