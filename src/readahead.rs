//! Read-ahead: a `Read` whose source is drained on a thread of its own, so producing bytes
//! (inflating an archive) overlaps with consuming them (hashing and checking it).
//!
//! Reading a backup back decompresses about a gigabyte and hashes it; one after the other
//! that is the sum of both, on two threads it is the longer of the two.

use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver};
use std::thread;

/// Bytes per chunk handed from the reading thread to the consumer.
const CHUNK: usize = 1 << 20;
/// Chunks the reading thread may run ahead of the consumer: bounds memory to a few MiB.
const AHEAD: usize = 4;

/// A reader fed by a background thread that reads `source` ahead of the caller.
///
/// The thread stops at the end of `source`, at its first error (handed to the caller in
/// order), or as soon as this reader is dropped.
pub struct ReadAhead {
    chunks: Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    offset: usize,
    finished: bool,
}

impl ReadAhead {
    pub fn new<R: Read + Send + 'static>(mut source: R) -> io::Result<ReadAhead> {
        let (send, chunks) = mpsc::sync_channel(AHEAD);
        thread::Builder::new()
            .name("read-ahead".into())
            .spawn(move || {
                loop {
                    let mut chunk = vec![0; CHUNK];
                    let (n, error) = fill(&mut source, &mut chunk);
                    chunk.truncate(n);
                    // A closed channel means the reader was dropped: nobody wants the rest.
                    if n > 0 && send.send(Ok(chunk)).is_err() {
                        return;
                    }
                    if n < CHUNK || error.is_some() {
                        // An empty chunk marks the end; the bytes before an error came first.
                        let _ = send.send(error.map_or(Ok(Vec::new()), Err));
                        return;
                    }
                }
            })?;
        Ok(ReadAhead {
            chunks,
            current: Vec::new(),
            offset: 0,
            finished: false,
        })
    }
}

/// Reads until `buf` is full, the source ends or fails; returns how much was read, and the
/// error if it failed.
fn fill(source: &mut impl Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (filled, Some(e)),
        }
    }
    (filled, None)
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.offset == self.current.len() {
            if self.finished {
                return Ok(0);
            }
            match self.chunks.recv() {
                Ok(Ok(chunk)) => {
                    self.finished = chunk.is_empty();
                    self.current = chunk;
                    self.offset = 0;
                }
                Ok(Err(e)) => {
                    self.finished = true;
                    return Err(e);
                }
                // The thread only hangs up after sending the end or an error, so this is a panic.
                Err(_) => {
                    self.finished = true;
                    return Err(io::Error::other(
                        "the read-ahead thread stopped unexpectedly",
                    ));
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.offset);
        buf[..n].copy_from_slice(&self.current[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields its bytes in small pieces, then fails if told to.
    struct Dribble {
        data: Vec<u8>,
        at: usize,
        fail_at_end: bool,
    }

    impl Read for Dribble {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.at == self.data.len() {
                return if self.fail_at_end {
                    Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "corrupt deflate",
                    ))
                } else {
                    Ok(0)
                };
            }
            let n = buf.len().min(7_919).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn passes_every_byte_in_order_across_chunk_boundaries() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 12_345] {
            let expected = data(len);
            let source = Dribble {
                data: expected.clone(),
                at: 0,
                fail_at_end: false,
            };
            let mut out = Vec::new();
            ReadAhead::new(source)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out.len(), expected.len(), "length {len}");
            assert!(out == expected, "bytes differ for length {len}");
        }
    }

    #[test]
    fn hands_over_the_sources_error_after_the_bytes_before_it() {
        let expected = data(CHUNK + 10);
        let source = Dribble {
            data: expected.clone(),
            at: 0,
            fail_at_end: true,
        };
        let mut reader = ReadAhead::new(source).unwrap();
        let mut out = vec![0; expected.len()];
        reader.read_exact(&mut out).unwrap();
        assert!(out == expected);
        let err = reader.read(&mut [0; 16]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(reader.read(&mut [0; 16]).unwrap(), 0);
    }

    #[test]
    fn dropping_the_reader_early_stops_the_thread() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::{Duration, Instant};

        // An endless source that tells when the thread has let go of it.
        struct Endless(Arc<AtomicBool>);
        impl Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                buf.fill(1);
                Ok(buf.len())
            }
        }
        impl Drop for Endless {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let released = Arc::new(AtomicBool::new(false));
        let mut reader = ReadAhead::new(Endless(released.clone())).unwrap();
        let mut first = [0; 10];
        reader.read_exact(&mut first).unwrap();
        assert_eq!(first, [1; 10]);
        assert!(!released.load(Ordering::SeqCst));
        drop(reader);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !released.load(Ordering::SeqCst) {
            assert!(
                Instant::now() < deadline,
                "the read-ahead thread kept running"
            );
            std::thread::yield_now();
        }
    }
}
