//! The S3 client of a remote: upload (multipart, memory-bounded, read back and checked), list, download, delete, probe.
//!
//! `object_store` is async; jobs and the upload queue run on blocking threads. Every call
//! here is blocking: file reads happen on the caller's thread, requests on one small runtime
//! of this module ([`runtime`]), created once per process together with the TLS provider.
//! An upload is visible under its key only once complete: one PUT for a file of up to one
//! part, else a multipart upload that S3 publishes at `CompleteMultipartUpload`. What was
//! uploaded is then read back and its SHA-256 compared with that of the bytes sent; an object
//! that differs is deleted and the upload fails.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use sha2::{Digest, Sha256};

use super::{Remote, Remotes, read_ca};
use crate::redact::Scrubber;

/// Parts of one multipart upload in flight at once: enough to keep a link busy while the
/// next part is read (4 were 1.5x slower than `aws s3 cp`, which runs 10), few enough that
/// memory stays at about `(IN_FLIGHT + 1) × part_size`.
pub const IN_FLIGHT: usize = 8;

/// The runtime every remote request runs on, and the TLS provider, set up once.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        crate::tls::install_ring();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("remote-io")
            .enable_all()
            .build()
            .expect("building the runtime of remote requests")
    })
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub size: u64,
    pub modified: DateTime<Utc>,
}

/// What an upload put where.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub sha256: String,
    pub bytes: u64,
    pub parts: usize,
    /// Time spent sending, and reading the object back.
    pub sending: Duration,
    pub reading_back: Duration,
}

/// A connection to one remote.
pub struct Client {
    remote: Remote,
    store: Arc<AmazonS3>,
    scrub: Scrubber,
}

impl Client {
    pub fn new(remote: &Remote) -> anyhow::Result<Client> {
        let _ = runtime();
        // `timeout` bounds how long the server may stay silent (connect, or between two reads),
        // not a whole request: reading back a large object takes as long as it takes.
        let mut options = ClientOptions::new()
            .with_timeout_disabled()
            .with_read_timeout(remote.timeout)
            .with_connect_timeout(remote.timeout.min(Duration::from_secs(10)));
        if let Some(ca) = &remote.ca_file {
            for cert in read_ca(ca).map_err(anyhow::Error::msg)? {
                options = options.with_root_certificate(cert);
            }
        }
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&remote.bucket)
            .with_region(&remote.region)
            .with_access_key_id(remote.access_key_id.expose())
            .with_secret_access_key(remote.secret_access_key.expose())
            .with_retry(RetryConfig {
                // The upload queue retries with its own backoff; a request is retried here
                // only for a short blip.
                max_retries: 2,
                retry_timeout: remote.timeout,
                ..RetryConfig::default()
            })
            // The payload is not hashed into the signature: that would be a second SHA-256 of
            // every byte on the upload's path, and what was stored is checked by the read-back.
            .with_unsigned_payload(true)
            .with_client_options(options);
        if let Some(endpoint) = &remote.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let store = builder
            .build()
            .with_context(|| format!("setting up the client of remote `{}`", remote.name))?;
        Ok(Client {
            remote: remote.clone(),
            store: Arc::new(store),
            scrub: Scrubber::new([
                remote.secret_access_key.expose().to_string(),
                remote.access_key_id.expose().to_string(),
            ]),
        })
    }

    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// An error of a request on `key`, naming the remote, bucket and key, with no secret.
    fn fail(&self, doing: &str, key: &str, e: impl std::fmt::Display) -> anyhow::Error {
        let text = format!("{doing} {}: {e}", self.remote.at(key));
        anyhow::anyhow!("{}", self.scrub.scrub(&text))
    }

    fn block_on<F: Future>(&self, f: F) -> F::Output {
        runtime().block_on(f)
    }

    /// Uploads `path` to `key` and checks the stored object's SHA-256 against the bytes sent.
    pub fn upload(&self, path: &Path, key: &str) -> anyhow::Result<Uploaded> {
        let mut file =
            File::open(path).with_context(|| format!("opening {} to upload", path.display()))?;
        let size = file.metadata()?.len();
        // S3 takes at most 10,000 parts: a very large file gets larger parts.
        let part = self.remote.part_size.max(size.div_ceil(10_000));
        let location = Key::from(key);
        let mut hasher = Sha256::new();
        let started = std::time::Instant::now();
        let parts = if size <= part {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes)
                .with_context(|| format!("reading {}", path.display()))?;
            hasher.update(&bytes);
            self.block_on(self.store.put(&location, PutPayload::from(bytes)))
                .map_err(|e| self.fail("uploading to", key, e))?;
            1
        } else {
            let mut upload = self
                .block_on(self.store.put_multipart(&location))
                .map_err(|e| self.fail("starting a multipart upload to", key, e))?;
            let mut in_flight = VecDeque::new();
            let mut sent = 0usize;
            let result = (|| -> anyhow::Result<()> {
                loop {
                    let mut chunk = Vec::with_capacity(part as usize);
                    (&mut file)
                        .take(part)
                        .read_to_end(&mut chunk)
                        .with_context(|| format!("reading {}", path.display()))?;
                    if chunk.is_empty() {
                        break;
                    }
                    hasher.update(&chunk);
                    if in_flight.len() >= IN_FLIGHT {
                        let done: tokio::task::JoinHandle<object_store::Result<()>> =
                            in_flight.pop_front().expect("a part in flight");
                        self.block_on(done)?
                            .map_err(|e| self.fail("uploading a part to", key, e))?;
                    }
                    in_flight.push_back(runtime().spawn(upload.put_part(PutPayload::from(chunk))));
                    sent += 1;
                }
                for done in in_flight.drain(..) {
                    self.block_on(done)?
                        .map_err(|e| self.fail("uploading a part to", key, e))?;
                }
                Ok(())
            })();
            if let Err(e) = result {
                // Best effort: parts left behind are only storage, never a visible object.
                let _ = self.block_on(upload.abort());
                return Err(e);
            }
            self.block_on(upload.complete())
                .map_err(|e| self.fail("completing the multipart upload to", key, e))?;
            sent
        };
        let sent = hex::encode(hasher.finalize());
        let sending = started.elapsed();
        let reading = std::time::Instant::now();
        // One streamed GET: ranged GETs in parallel were 6x slower against moto, which reads the
        // whole object for every range.
        let (stored, stored_bytes) = self.hash_object(key)?;
        if stored != sent || stored_bytes != size {
            let _ = self.delete(key);
            bail!(
                "{} holds {stored_bytes} bytes with SHA-256 {stored} after the upload of {} ({size} bytes, SHA-256 {sent}); the object was deleted and the upload fails",
                self.remote.at(key),
                path.display()
            );
        }
        Ok(Uploaded {
            sha256: sent,
            bytes: size,
            parts,
            sending,
            reading_back: reading.elapsed(),
        })
    }

    /// The SHA-256 and size of the object at `key`, read back whole (streamed).
    pub fn hash_object(&self, key: &str) -> anyhow::Result<(String, u64)> {
        let mut hasher = Sha256::new();
        let bytes = self.stream(key, |chunk| {
            hasher.update(chunk);
            Ok(())
        })?;
        Ok((hex::encode(hasher.finalize()), bytes))
    }

    /// Streams the object at `key` through `each`; returns its size.
    fn stream(
        &self,
        key: &str,
        mut each: impl FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        let location = Key::from(key);
        let got = self
            .block_on(self.store.get(&location))
            .map_err(|e| self.fail("reading", key, e))?;
        let mut stream = got.into_stream();
        let mut total = 0u64;
        while let Some(chunk) = self.block_on(stream.next()) {
            let chunk = chunk.map_err(|e| self.fail("reading", key, e))?;
            total += chunk.len() as u64;
            each(&chunk)?;
        }
        Ok(total)
    }

    /// Downloads `key` into `file` (a new private file, `shown` in messages) and syncs it;
    /// returns its SHA-256 and size.
    pub fn download(
        &self,
        key: &str,
        file: &mut File,
        shown: &Path,
    ) -> anyhow::Result<(String, u64)> {
        use std::io::Write;
        let mut hasher = Sha256::new();
        let bytes = self.stream(key, |chunk| {
            hasher.update(chunk);
            file.write_all(chunk)
                .with_context(|| format!("writing {}", shown.display()))
        })?;
        file.sync_all()
            .with_context(|| format!("syncing {}", shown.display()))?;
        Ok((hex::encode(hasher.finalize()), bytes))
    }

    /// Every object whose key starts with `prefix` (which ends in `/`).
    pub fn list(&self, prefix: &str) -> anyhow::Result<Vec<Object>> {
        let location = Key::from(prefix.trim_end_matches('/'));
        let mut stream = self.store.list(Some(&location));
        let mut objects = Vec::new();
        while let Some(meta) = self.block_on(stream.next()) {
            let meta = meta.map_err(|e| self.fail("listing", prefix, e))?;
            objects.push(Object {
                key: meta.location.to_string(),
                size: meta.size,
                modified: meta.last_modified,
            });
        }
        Ok(objects)
    }

    pub fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.block_on(self.store.delete(&Key::from(key)))
            .map_err(|e| self.fail("deleting", key, e))
    }

    /// `check --remotes`: lists the prefix, puts a small probe object, reads it back and
    /// deletes it. Each step's failure says which step and what.
    pub fn probe(&self) -> anyhow::Result<String> {
        let objects = self.list(&self.remote.prefix)?;
        let key = format!(
            "{}.caretaker-probe-{}-{:08x}",
            self.remote.prefix,
            std::process::id(),
            rand::random::<u32>()
        );
        let body = b"caretaker check --remotes probe\n".to_vec();
        self.block_on(
            self.store
                .put(&Key::from(key.as_str()), PutPayload::from(body.clone())),
        )
        .map_err(|e| self.fail("putting a probe object at", &key, e))?;
        let (sha, _) = self.hash_object(&key)?;
        self.delete(&key)?;
        if sha != hex::encode(Sha256::digest(&body)) {
            bail!(
                "{} read back other bytes than were put",
                self.remote.at(&key)
            );
        }
        Ok(format!(
            "listed {} objects under s3://{}/{}, put, read back and deleted a probe object",
            objects.len(),
            self.remote.bucket,
            self.remote.prefix
        ))
    }
}

/// `check --remotes`: probes every remote; returns the lines to print and whether all passed.
pub fn probe_all(remotes: &Remotes) -> (String, bool) {
    let mut out = String::new();
    let mut ok = true;
    if remotes.is_empty() {
        out.push_str("no remotes to check\n");
    }
    for remote in remotes.values() {
        let result = Client::new(remote).and_then(|c| c.probe());
        match result {
            Ok(done) => out.push_str(&format!(
                "  remote {} (s3://{}/{}): ok: {done}\n",
                remote.name, remote.bucket, remote.prefix
            )),
            Err(e) => {
                ok = false;
                out.push_str(&format!(
                    "  remote {} (s3://{}/{}): FAILED: {e:#}\n",
                    remote.name, remote.bucket, remote.prefix
                ));
            }
        }
    }
    (out, ok)
}
