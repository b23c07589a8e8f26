//! A local throwaway PostgreSQL cluster in a directory (initdb, pg_ctl, a Unix socket there): for `demo --postgres`, the tests and benchmarks.
//!
//! initdb refuses to run as root, so as root the directory is given to the `postgres` user and
//! the server's programs run as it (`runuser`). The server listens on its socket only
//! (`listen_addresses=''`), in the cluster's own directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};

/// The role initdb makes the superuser.
pub const USER: &str = "caretaker";
/// The default port: in the socket's name (`.s.PGSQL.5432`); no TCP port is opened unless
/// `listen_addresses` is given to [`LocalCluster::start`].
pub const PORT: u16 = 5432;

/// The newest installed server's `bin` directory (Debian's `/usr/lib/postgresql/<major>/bin`).
pub fn server_bin() -> Option<PathBuf> {
    crate::backup::pg_dump::installed("initdb")
        .into_iter()
        .next()
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `program` run as the cluster's owner: `postgres` when we are root.
pub fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A cluster living in `dir` (`dir/data`, the socket in `dir`), run by the programs in `bin`.
#[derive(Debug, Clone)]
pub struct LocalCluster {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub port: u16,
}

impl LocalCluster {
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Creates the cluster when `dir/data` does not exist yet (trust authentication on the
    /// socket, no fsync at init).
    pub fn init(&self) -> anyhow::Result<()> {
        if self.data().join("PG_VERSION").exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        if is_root() {
            let mut chown = Command::new("chown");
            chown.arg("-R").arg("postgres:postgres").arg(&self.dir);
            run(chown)?;
        }
        let mut initdb = as_owner(&self.bin.join("initdb"));
        initdb.arg("-D").arg(self.data()).args([
            "-U",
            USER,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        run(initdb)
    }

    /// Whether its server runs.
    pub fn running(&self) -> bool {
        as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .arg("status")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Starts the server (`extra`: more `-c name=value` options) unless it runs.
    pub fn start(&self, extra: &str) -> anyhow::Result<()> {
        if self.running() {
            return Ok(());
        }
        let options = format!(
            "-k {} -c listen_addresses='' -p {} {extra}",
            self.dir.display(),
            self.port
        );
        let mut pg_ctl = as_owner(&self.bin.join("pg_ctl"));
        pg_ctl
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-o", &options, "start"]);
        run(pg_ctl)
    }

    /// Stops the server: `fast` (sessions ended, a clean shutdown) or `immediate`.
    pub fn stop(&self, mode: &str) -> anyhow::Result<()> {
        let mut pg_ctl = as_owner(&self.bin.join("pg_ctl"));
        pg_ctl
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-m", mode, "stop"]);
        run(pg_ctl)
    }

    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{USER}@/{db}?host={}&port={}",
            self.dir.display(),
            self.port
        )
    }
}
