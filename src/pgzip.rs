//! Parallel gzip compression, pigz-style: one gzip member from blocks deflated on worker threads.
//!
//! The input is cut into [`BLOCK_SIZE`] blocks. Each block is raw-deflated on its own
//! compressor, primed with the previous block's last 32 KiB as a preset dictionary so the
//! ratio stays within a fraction of a percent of single-threaded deflate. Every block but the
//! last ends with a sync flush, which byte-aligns the output, so the compressed blocks simply
//! concatenate into one deflate stream; the last block is finished. CRC-32s are computed per
//! block on the workers and combined in order, which keeps the writer thread cheap.
//!
//! The output is only a valid gzip file once [`ParallelGzWriter::finish`] has written the
//! trailer. Dropping the writer without finishing leaves a stream without a trailer, which
//! `gzip -d` and `GzDecoder` reject, so an interrupted compression never looks complete.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Compress, Compression, FlushCompress, Status};

/// Size of the input blocks handed to workers. 1 MiB keeps the dictionary restart cost
/// (one 32 KiB window per block) negligible while giving workers enough to chew on.
pub const BLOCK_SIZE: usize = 1 << 20;

/// Deflate's window: the most history a block can refer back to.
const DICTIONARY_SIZE: usize = 32 * 1024;

/// Blocks in flight per worker (queued, being compressed, or compressed and waiting to be
/// written). Two keeps every worker busy while the writer drains, and bounds memory to
/// about `2 * threads` blocks of input plus their output.
const BLOCKS_IN_FLIGHT_PER_THREAD: usize = 2;

/// One block of work for a compression worker.
struct Job {
    input: Vec<u8>,
    /// The tail of the preceding block, empty for the first block.
    dictionary: Vec<u8>,
    level: Compression,
    last: bool,
    result: SyncSender<io::Result<Deflated>>,
}

/// A block's raw deflate bytes and the CRC-32 of the input that produced them.
struct Deflated {
    bytes: Vec<u8>,
    crc: crc32fast::Hasher,
}

/// A [`Write`] that gzips everything written to it using `threads` worker threads.
///
/// Call [`finish`](Self::finish) to write the trailer and get the inner writer back. After
/// any error the stream is incomplete and the writer should be dropped: its output will not
/// pass as a valid gzip file.
pub struct ParallelGzWriter<W: Write> {
    inner: W,
    level: Compression,
    /// Input not yet handed to a worker. A full block stays here until more input arrives
    /// (or `finish` is called) because only then is it known whether it is the last one.
    block: Vec<u8>,
    /// The tail of the last block handed out, the next block's preset dictionary.
    dictionary: Vec<u8>,
    /// Results of handed-out blocks, oldest first: they must be written in this order.
    pending: VecDeque<Receiver<io::Result<Deflated>>>,
    max_pending: usize,
    pool: Pool,
    crc: crc32fast::Hasher,
    /// Input length modulo 2^32, as the gzip trailer's ISIZE field wants it.
    input_size: u32,
}

impl<W: Write> Write for ParallelGzWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let written = data.len();
        while !data.is_empty() {
            if self.block.len() == BLOCK_SIZE {
                let full = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK_SIZE));
                self.dispatch(full, false)?;
            }
            let take = data.len().min(BLOCK_SIZE - self.block.len());
            self.block.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(written)
    }

    /// Waits for every block handed to a worker, writes them out, and flushes the inner
    /// writer. It does not force the partial block out: cutting blocks short would cost ratio
    /// for no benefit, since the output is not a usable gzip file before `finish` anyway.
    fn flush(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        self.inner.flush()
    }
}

impl<W: Write> ParallelGzWriter<W> {
    /// Starts a gzip stream on `inner`, compressing at `level` (0 = store only .. 9 = smallest)
    /// on `threads` worker threads (1 is fine: the caller's thread still overlaps with it).
    ///
    /// Writes the gzip header immediately; fails if `level` or `threads` is out of range or
    /// the header cannot be written.
    pub fn new(mut inner: W, level: u32, threads: usize) -> io::Result<Self> {
        if level > 9 {
            return Err(invalid_input(format!(
                "gzip compression level {level} is out of range; accepted levels are 0 (store only) to 9 (smallest output)"
            )));
        }
        if threads == 0 {
            return Err(invalid_input(
                "gzip compression needs at least 1 worker thread; got 0".to_string(),
            ));
        }
        inner.write_all(&gzip_header(level))?;

        let max_pending = BLOCKS_IN_FLIGHT_PER_THREAD * threads;
        let pool = Pool::start(threads, max_pending)?;

        Ok(Self {
            inner,
            level: Compression::new(level),
            block: Vec::with_capacity(BLOCK_SIZE),
            dictionary: Vec::new(),
            pending: VecDeque::with_capacity(max_pending),
            max_pending,
            pool,
            crc: crc32fast::Hasher::new(),
            input_size: 0,
        })
    }

    /// Compresses what is still buffered as the last block, writes everything out in order,
    /// appends the CRC-32 and ISIZE trailer, flushes, and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        let last = std::mem::take(&mut self.block);
        self.dispatch(last, true)?;
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        // Workers have delivered every block; let them go before the trailer is written.
        drop(self.pool);

        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&self.crc.finalize().to_le_bytes());
        trailer[4..].copy_from_slice(&self.input_size.to_le_bytes());
        self.inner.write_all(&trailer)?;
        self.inner.flush()?;
        Ok(self.inner)
    }

    /// Hands `input` to a worker, first making room if too many blocks are in flight.
    fn dispatch(&mut self, input: Vec<u8>, last: bool) -> io::Result<()> {
        while self.pending.len() >= self.max_pending {
            self.write_oldest()?;
        }
        let tail_start = input.len().saturating_sub(DICTIONARY_SIZE);
        let next_dictionary = input[tail_start..].to_vec();
        let dictionary = std::mem::replace(&mut self.dictionary, next_dictionary);
        self.input_size = self.input_size.wrapping_add(input.len() as u32);

        let (result, receiver) = mpsc::sync_channel(1);
        let job = Job {
            input,
            dictionary,
            level: self.level,
            last,
            result,
        };
        self.pool
            .jobs
            .send(job)
            .map_err(|_| io::Error::other("gzip compression workers have all stopped"))?;
        self.pending.push_back(receiver);
        Ok(())
    }

    /// Waits for the oldest block in flight and writes it to the inner writer.
    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(receiver) = self.pending.pop_front() else {
            return Ok(());
        };
        let deflated = receiver.recv().map_err(|_| {
            io::Error::other("a gzip compression worker stopped without delivering its block")
        })??;
        self.inner.write_all(&deflated.bytes)?;
        self.crc.combine(&deflated.crc);
        Ok(())
    }
}

/// The worker threads and their shared job queue. Dropping it closes the queue and joins the
/// workers, whether the writer finished or was abandoned after an error.
struct Pool {
    jobs: SyncSender<Job>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    fn start(threads: usize, queue_len: usize) -> io::Result<Self> {
        // The queue only needs to hold the blocks in flight, which the writer already bounds.
        let (jobs, queue) = mpsc::sync_channel::<Job>(queue_len);
        let queue = Arc::new(Mutex::new(queue));
        let mut pool = Self {
            jobs,
            workers: Vec::with_capacity(threads),
        };
        for n in 0..threads {
            let queue = Arc::clone(&queue);
            // On a spawn failure the workers already started are joined by `Drop`.
            let worker = std::thread::Builder::new()
                .name(format!("pgzip-{n}"))
                .spawn(move || run_worker(&queue))?;
            pool.workers.push(worker);
        }
        Ok(pool)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Replacing the sender with a dead one closes the queue, so idle workers return.
        let (closed, _) = mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.jobs, closed));
        for worker in self.workers.drain(..) {
            // A worker that panicked has already surfaced as a missing block result.
            let _ = worker.join();
        }
    }
}

/// Takes jobs until the queue closes. A failed block is reported through its result channel;
/// the worker keeps going so one bad block cannot stall the ones behind it.
fn run_worker(queue: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only while waiting for the next job, never while compressing.
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            // Another worker panicked while holding the lock; the writer sees its missing result.
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let result = deflate_block(&job.input, &job.dictionary, job.level, job.last);
        // The writer may have given up on this block (error or drop); nobody to tell then.
        let _ = job.result.send(result);
    }
}

/// Raw-deflates one block, primed with `dictionary`, ending in a sync flush (byte-aligned,
/// stream left open) or, for the last block, a finished stream.
fn deflate_block(
    input: &[u8],
    dictionary: &[u8],
    level: Compression,
    last: bool,
) -> io::Result<Deflated> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(input);

    let mut compress = Compress::new(level, false);
    if !dictionary.is_empty() {
        compress.set_dictionary(dictionary).map_err(|e| {
            io::Error::other(format!("priming a gzip block with its dictionary: {e}"))
        })?;
    }
    // Only input bytes must count below; whether priming counts towards `total_in` is a
    // backend detail, so measure from here.
    let start = compress.total_in();
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    // Compressible data shrinks a lot; the buffer grows if it does not.
    let mut bytes = Vec::with_capacity(input.len() / 2 + 64);
    loop {
        if bytes.capacity() - bytes.len() < 64 {
            bytes.reserve(bytes.capacity().max(4096));
        }
        let consumed = (compress.total_in() - start) as usize;
        let status = compress
            .compress_vec(&input[consumed..], &mut bytes, flush)
            .map_err(|e| io::Error::other(format!("deflating a gzip block: {e}")))?;
        let all_consumed = (compress.total_in() - start) as usize == input.len();
        // A flush is complete once deflate returns with output space to spare.
        let done = match status {
            Status::StreamEnd => true,
            Status::Ok | Status::BufError => {
                !last && all_consumed && bytes.len() < bytes.capacity()
            }
        };
        if done {
            return Ok(Deflated { bytes, crc });
        }
    }
}

/// The 10-byte gzip member header: deflate, no name or timestamp (a backup's time lives in
/// its file name), the XFL hint `gzip` sets for its fastest and slowest levels, OS unknown.
fn gzip_header(level: u32) -> [u8; 10] {
    let extra_flags = match level {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, extra_flags, 255]
}

fn invalid_input(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_dies_without_a_result_is_an_error_not_a_panic() {
        let mut writer = ParallelGzWriter::new(Vec::new(), 6, 1).expect("valid settings");
        // What a panicking worker leaves behind: a result channel whose sender is gone.
        let (sender, receiver) = mpsc::sync_channel(1);
        drop(sender);
        writer.pending.push_back(receiver);
        let err = writer.finish().expect_err("the lost block is reported");
        assert!(
            err.to_string().contains("without delivering its block"),
            "{err}"
        );
    }

    #[test]
    fn a_deflate_failure_reaches_the_caller() {
        let mut writer = ParallelGzWriter::new(Vec::new(), 6, 1).expect("valid settings");
        let (sender, receiver) = mpsc::sync_channel(1);
        sender
            .send(Err(io::Error::other("deflating a gzip block: simulated")))
            .expect("channel has room");
        writer.pending.push_back(receiver);
        let err = writer.flush().expect_err("the failed block is reported");
        assert!(err.to_string().contains("simulated"), "{err}");
    }

    #[test]
    fn block_outputs_concatenate_into_one_deflate_stream() {
        let first: Vec<u8> = (0..BLOCK_SIZE).map(|i| (i % 251) as u8).collect();
        let second = b"tail".repeat(1000);
        let a = deflate_block(&first, &[], Compression::new(6), false).expect("first block");
        let dictionary = &first[first.len() - DICTIONARY_SIZE..];
        let b = deflate_block(&second, dictionary, Compression::new(6), true).expect("last block");
        let mut stream = a.bytes;
        stream.extend_from_slice(&b.bytes);

        let mut decoded = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::DeflateDecoder::new(&stream[..]),
            &mut decoded,
        )
        .expect("one raw deflate stream");
        assert_eq!(decoded.len(), first.len() + second.len());
        assert!(decoded[..first.len()] == first[..] && decoded[first.len()..] == second[..]);

        let mut crc = a.crc;
        crc.combine(&b.crc);
        assert_eq!(crc.finalize(), crc32fast::hash(&decoded));
    }
}
