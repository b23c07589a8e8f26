//! A real S3-compatible server for the remote tests: moto in server mode on a free port of 127.0.0.1, stopped by its pid.
//!
//! moto keeps its objects in memory and loses them when it stops, so an outage is simulated
//! by pausing it (SIGSTOP, SIGCONT). What the bucket holds is read back with a second client
//! (`scripts/s3_tool.py`, boto3), never with caretaker's own.

use super::bins;
use super::wait;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const BUCKET: &str = "caretaker-test";

/// One object as the second client lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    /// `None` for the objects [`S3Server::list_new`] was told it has seen.
    pub sha256: Option<String>,
}

pub struct S3Server {
    child: Child,
    pub port: u16,
    /// Credentials the server accepts: any, or with `auth` those of its one user.
    pub key_id: String,
    pub secret: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl S3Server {
    /// Starts moto, accepting any credentials, with the bucket [`BUCKET`].
    pub fn start(log_dir: &Path) -> S3Server {
        let mut server = Self::spawn(log_dir, None);
        server.tool(&["mkbucket", BUCKET]);
        server.key_id = "testing".into();
        server
    }

    /// Starts moto checking signatures against its IAM users; one user is created, allowed
    /// everything, and its keys are the server's credentials.
    pub fn start_with_auth(log_dir: &Path) -> S3Server {
        // create_user, put_user_policy and create_access_key go through unauthenticated.
        let mut server = Self::spawn(log_dir, Some(3));
        let out = server.tool(&["iam-user"]);
        let mut words = out.split_whitespace();
        server.key_id = words.next().expect("an access key id").to_string();
        server.secret = words.next().expect("a secret").to_string();
        server.tool(&["mkbucket", BUCKET]);
        server
    }

    fn spawn(log_dir: &Path, unauthenticated: Option<u32>) -> S3Server {
        let port = free_port();
        let log = fs::File::create(log_dir.join(format!("moto-{port}.log"))).expect("moto log");
        let mut cmd = Command::new("moto_server");
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(n) = unauthenticated {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
        }
        let child = cmd
            .spawn()
            .expect("starting moto_server (pip install 'moto[server]')");
        wait::until("moto_server to listen", wait::DEADLINE, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        S3Server {
            child,
            port,
            key_id: "testing".into(),
            secret: "testing-secret".into(),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig} {}", self.pid());
    }

    /// Pauses the server: connections are accepted by the kernel and never answered.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Runs the second client; returns its standard output.
    pub fn tool(&self, args: &[&str]) -> String {
        let out = Command::new("python3")
            .arg(bins::script("s3_tool.py"))
            .arg(self.endpoint())
            .args(args)
            .env("AWS_ACCESS_KEY_ID", &self.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .output()
            .expect("running s3_tool.py");
        assert!(
            out.status.success(),
            "s3_tool.py {args:?}: {}",
            bins::describe(&out)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Every object under `prefix` in [`BUCKET`], with the SHA-256 of its bytes.
    pub fn list(&self, prefix: &str) -> Vec<Listed> {
        self.list_new(prefix, &[])
    }

    /// [`S3Server::list`], reading only the objects not named in `seen`.
    pub fn list_new(&self, prefix: &str, seen: &[String]) -> Vec<Listed> {
        let mut args = vec!["list", BUCKET, prefix];
        args.extend(seen.iter().map(String::as_str));
        serde_json::from_str(&self.tool(&args)).expect("a JSON listing")
    }

    /// The parts uploaded so far to multipart uploads in progress, asked over plain HTTP
    /// (moto without `start_with_auth` takes unsigned requests): milliseconds per call, where the
    /// second client takes most of a second, so a test can act while an upload is under way.
    pub fn parts_in_progress(&self) -> u64 {
        let uploads = self.http_get(&format!("/{BUCKET}?uploads"));
        let mut parts = 0;
        for upload in uploads.split("<Upload>").skip(1) {
            let field = |name: &str| {
                upload
                    .split(&format!("<{name}>"))
                    .nth(1)
                    .and_then(|r| r.split(&format!("</{name}>")).next())
                    .unwrap_or("")
                    .to_string()
            };
            let listing = self.http_get(&format!(
                "/{BUCKET}/{}?uploadId={}",
                field("Key"),
                field("UploadId")
            ));
            parts += listing.matches("<PartNumber>").count() as u64;
        }
        parts
    }

    fn http_get(&self, target: &str) -> String {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connecting to moto");
        write!(
            stream,
            "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
    }

    /// Puts `file` at `key` with the second client.
    pub fn put(&self, key: &str, file: &Path) {
        self.tool(&["put", BUCKET, key, file.to_str().unwrap()]);
    }

    /// A `remotes:` entry for this server (credentials from the variables `KEY_ID` and
    /// `SECRET` of [`S3Server::env`]), indented for the top level.
    pub fn remote_yaml(&self, name: &str, prefix: &str, extra: &str) -> String {
        format!(
            "  {name}:\n    url: s3://{BUCKET}/{prefix}\n    endpoint: {}\n    region: us-east-1\n    access_key_id_env: CARETAKER_TEST_S3_KEY_ID\n    secret_access_key_env: CARETAKER_TEST_S3_SECRET\n{extra}",
            self.endpoint()
        )
    }

    /// The environment the remote of [`S3Server::remote_yaml`] reads its credentials from.
    pub fn env(&self) -> [(&'static str, String); 2] {
        [
            ("CARETAKER_TEST_S3_KEY_ID", self.key_id.clone()),
            ("CARETAKER_TEST_S3_SECRET", self.secret.clone()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // A paused server ignores SIGKILL until continued on some kernels' job control: wake it.
        let _ = Command::new("kill")
            .args(["-CONT", &self.pid().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The SHA-256 of a local file, as hex.
pub fn sha256_file(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    hex::encode(Sha256::digest(&bytes))
}
