//! A real PostgreSQL for tests: `initdb` into a temp dir, `pg_ctl start` on a free
//! 127.0.0.1 port with its unix socket inside the temp dir, `pg_ctl stop -m immediate` on
//! drop. Run as the `postgres` user when the tests run as root (initdb refuses root).
//!
//! Shared by the CLI tests too (`#[path]`), so it uses std only.
#![allow(dead_code)] // Each test binary compiles this module and uses only part of it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The superuser's password: logins over TCP need it (scram-sha-256), so the tests see the
/// password travel in URLs and can check that it never shows.
pub const PASSWORD: &str = "pg-test-Secret-4711";

/// A running PostgreSQL, stopped and deleted on drop.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    as_postgres_user: bool,
}

impl Postgres {
    /// Starts one for the test `test`. When PostgreSQL is not installed: panics if `CI` is
    /// set, else prints a loud SKIPPED line and returns `None` (the caller returns).
    pub fn start(test: &str) -> Option<Postgres> {
        Self::start_with(test, None)
    }

    /// As [`start`](Self::start), with TLS on (`ssl = on`, plaintext still accepted, as
    /// pg_hba's `host` lines allow both): this certificate chain and key, PEM.
    pub fn start_tls(test: &str, cert_pem: &str, key_pem: &str) -> Option<Postgres> {
        Self::start_with(test, Some((cert_pem, key_pem)))
    }

    fn start_with(test: &str, tls: Option<(&str, &str)>) -> Option<Postgres> {
        let Some(bin) = find_bin() else {
            let msg = format!(
                "{test}: PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); \
                 install the Debian package postgresql"
            );
            if std::env::var_os("CI").is_some() {
                panic!("{msg}");
            }
            eprintln!("\n*** SKIPPED *** {msg}\n");
            return None;
        };
        let as_postgres_user = is_root();
        let mut last_error = String::new();
        // A free port may be taken between our probe and PostgreSQL's bind: try a few.
        for _ in 0..3 {
            match Self::try_start(&bin, as_postgres_user, tls) {
                Ok(pg) => return Some(pg),
                Err(e) => last_error = e,
            }
        }
        panic!("{test}: cannot start PostgreSQL: {last_error}");
    }

    fn try_start(
        bin: &Path,
        as_postgres_user: bool,
        tls: Option<(&str, &str)>,
    ) -> Result<Postgres, String> {
        let dir = tempfile::Builder::new()
            .prefix("openserver-pg-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        if as_postgres_user {
            run(Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path()))?;
        }
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, PASSWORD).map_err(|e| format!("pwfile: {e}"))?;
        if as_postgres_user {
            run(Command::new("chown").arg("postgres:postgres").arg(&pwfile))?;
        }
        let data = dir.path().join("data");
        let pg = Postgres {
            port: free_port(),
            bin: bin.to_owned(),
            dir,
            as_postgres_user,
        };
        pg.run_tool(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--pwfile".as_ref(),
                pwfile.as_os_str(),
                "--auth-local=trust".as_ref(),
                "--auth-host=scram-sha-256".as_ref(),
                "-N".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C".as_ref(),
            ],
        )?;
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60",
            pg.port,
            pg.dir.path().display()
        );
        if let Some((cert_pem, key_pem)) = tls {
            let cert = pg.dir.path().join("server.crt");
            let key = pg.dir.path().join("server.key");
            std::fs::write(&cert, cert_pem).map_err(|e| format!("server.crt: {e}"))?;
            std::fs::write(&key, key_pem).map_err(|e| format!("server.key: {e}"))?;
            // PostgreSQL refuses a key that others may read.
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("server.key: {e}"))?;
            if as_postgres_user {
                run(Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&cert)
                    .arg(&key))?;
            }
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            ));
        }
        let log = pg.dir.path().join("log");
        let started = pg.run_tool(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "30".as_ref(),
                "-o".as_ref(),
                options.as_ref(),
                "start".as_ref(),
            ],
        );
        if let Err(e) = started {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("{e}\nserver log:\n{log}"));
        }
        Ok(pg)
    }

    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// The URL without the password (for `PGPASSWORD`).
    pub fn url_without_password(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Runs `tool` (initdb, pg_ctl) of this installation, as `postgres` when we are root.
    fn run_tool(&self, tool: &str, args: &[&std::ffi::OsStr]) -> Result<Output, String> {
        let path = self.bin.join(tool);
        let mut cmd = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        cmd.args(args).current_dir(self.dir.path());
        run(&mut cmd)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self.run_tool(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "stop".as_ref(),
                "-m".as_ref(),
                "immediate".as_ref(),
            ],
        );
    }
}

/// The `bin` directory of an installed PostgreSQL, 15 preferred, else the newest.
fn find_bin() -> Option<PathBuf> {
    let preferred = Path::new("/usr/lib/postgresql/15/bin");
    if preferred.join("initdb").exists() {
        return Some(preferred.to_owned());
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out)
}
