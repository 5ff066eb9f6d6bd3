//! The command sink: runs `alerts.command` once per alert, with the alert in environment
//! variables and its JSON on stdin, killed if it outlives `alerts.timeout`.

use super::payload::Alert;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;

/// The configured command.
#[derive(Debug, Clone)]
pub struct CommandSink {
    /// Program and arguments; validated non-empty.
    argv: Vec<String>,
    /// How long one run may take.
    timeout: Duration,
}

impl CommandSink {
    /// A sink running `argv` (program first), each run bounded by `timeout`.
    pub fn new(argv: Vec<String>, timeout: Duration) -> Self {
        CommandSink { argv, timeout }
    }

    /// Runs the command for every alert queued, one at a time, until the queue closes.
    pub async fn run(self, mut queue: mpsc::Receiver<Alert>) {
        while let Some(alert) = queue.recv().await {
            self.execute(&alert).await;
        }
    }

    /// Runs the command once for `alert`; failures are logged, not retried (a script that
    /// wants retries can do them itself).
    pub async fn execute(&self, alert: &Alert) {
        let Some((program, args)) = self.argv.split_first() else {
            return;
        };
        let spawned = tokio::process::Command::new(program)
            .args(args)
            .envs(alert.env())
            .stdin(Stdio::piped())
            // stdout is where `serve` prints what scripts read: keep it clean. stderr goes
            // to the server's log.
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                tracing::error!(command = %program, error = %e, alert = alert.describe(), "cannot run the alert command");
                return;
            }
        };
        let json = alert.to_json();
        let stdin = child.stdin.take();
        let finished = tokio::time::timeout(self.timeout, async {
            if let Some(mut stdin) = stdin {
                // A command that does not read its stdin closes the pipe: not an error.
                let _ = stdin.write_all(json.as_bytes()).await;
                let _ = stdin.write_all(b"\n").await;
            }
            child.wait().await
        })
        .await;
        match finished {
            Ok(Ok(status)) if status.success() => {
                tracing::debug!(command = %program, alert = alert.describe(), "alert command done");
            }
            Ok(Ok(status)) => {
                tracing::warn!(command = %program, %status, alert = alert.describe(), "alert command failed");
            }
            Ok(Err(e)) => {
                tracing::warn!(command = %program, error = %e, alert = alert.describe(), "alert command failed");
            }
            Err(_) => {
                tracing::warn!(command = %program, timeout = ?self.timeout, alert = alert.describe(), "alert command timed out; killed");
                let _ = child.kill().await;
            }
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::alerts::payload::SessionAlert;
    use openserver::session::CloseReason;
    use std::time::SystemTime;

    fn alert() -> Alert {
        Alert::Session(SessionAlert::new(
            5,
            "127.0.0.1:4000".parse().unwrap(),
            None,
            &CloseReason::KeepAliveLost,
            Duration::from_secs(1),
            SystemTime::now(),
        ))
    }

    #[tokio::test]
    async fn the_command_gets_the_environment_and_the_json() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = format!(
            "echo \"$OPENSERVER_EVENT $OPENSERVER_REASON $OPENSERVER_SESSION $OPENSERVER_PEER\" > {0}; cat >> {0}",
            out.display()
        );
        let sink = CommandSink::new(
            vec!["/bin/sh".into(), "-c".into(), script],
            Duration::from_secs(30),
        );
        sink.execute(&alert()).await;
        let text = std::fs::read_to_string(&out).unwrap();
        let (env, json) = text.split_once('\n').unwrap();
        assert_eq!(env, "session_closed keep_alive_lost 5 127.0.0.1:4000");
        let json: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(json["session"], 5);
    }

    /// Whether process `pid` is still running (a zombie waiting to be reaped is not).
    fn running(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the parenthesised command name.
            Ok(stat) => !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z'),
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn a_command_that_hangs_is_killed_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // `exec`, so the pid written is the sleeping process itself.
        let sink = CommandSink::new(
            vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("echo $$ > {}; exec sleep 30", pid_file.display()),
            ],
            Duration::from_secs(1),
        );
        let started = std::time::Instant::now();
        sink.execute(&alert()).await;
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .to_string();
        // Killed, not left behind: gone within a bound (SIGKILL is immediate; the bound is
        // for a loaded machine).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while running(&pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "the timed-out command {pid} is still running"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
