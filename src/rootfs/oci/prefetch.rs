//! Decompressing and digesting a layer on a thread of its own while the caller applies it: the
//! two halves of applying a layer (gunzip + sha256 of the stream; tar parsing + file writes)
//! take about as long each, so on two CPUs a layer goes in in little more than half the time.
//! The thread runs at most [`AHEAD`] chunks ahead of the reader, so memory stays bounded
//! whatever the layer's size, and a layer refused part way (a bomb, a bad entry) stops it.

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

/// Chunk size and how many chunks may wait: 4 MiB in flight at most.
const CHUNK: usize = 1 << 20;
const AHEAD: usize = 3;

/// A reader over what `inner` yields, read by a thread; [`Prefetched::into_inner`] gives
/// `inner` back (read up to where the consumer stopped, give or take the chunks in flight).
pub(crate) struct Prefetched<R> {
    rx: Option<Receiver<io::Result<Vec<u8>>>>,
    thread: Option<JoinHandle<R>>,
    chunk: Vec<u8>,
    pos: usize,
    /// The stream ended (cleanly or with the error returned last).
    done: bool,
}

impl<R: Read + Send + 'static> Prefetched<R> {
    pub(crate) fn new(mut inner: R) -> io::Result<Prefetched<R>> {
        let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(AHEAD);
        let thread = std::thread::Builder::new().name("layer-decode".into()).spawn(move || {
            loop {
                let mut buf = vec![0u8; CHUNK];
                let (n, err) = read_full(&mut inner, &mut buf);
                buf.truncate(n);
                // What came before an error first, as the reader itself would give it. A send
                // fails once the reader is gone: it stopped early, so stop too.
                if (n > 0 || err.is_none()) && tx.send(Ok(buf)).is_err() {
                    break;
                }
                if let Some(e) = err {
                    let _ = tx.send(Err(e));
                    break;
                }
                if n == 0 {
                    break;
                }
            }
            inner
        })?;
        Ok(Prefetched { rx: Some(rx), thread: Some(thread), chunk: Vec::new(), pos: 0, done: false })
    }

    /// Stop the thread and take the inner reader back (None if the thread panicked).
    #[allow(dead_code)] // used by the layer reader only
    pub(crate) fn into_inner(mut self) -> Option<R> {
        drop(self.rx.take()); // a thread blocked on a full channel wakes up and ends
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl<R> Read for Prefetched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            let Some(rx) = &self.rx else { return Ok(0) };
            match rx.recv() {
                Ok(Ok(c)) if c.is_empty() => self.done = true,
                Ok(Ok(c)) => (self.chunk, self.pos) = (c, 0),
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Err(io::Error::other("the layer's decoding thread stopped"));
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Fill `buf` unless the stream ends or fails first (interrupted reads are retried): the bytes
/// read, and the error that stopped it.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (n, Some(e)),
        }
    }
    (n, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yields_the_stream_and_gives_the_reader_back() {
        let data: Vec<u8> = (0..(5 * CHUNK + 123)).map(|i| (i % 251) as u8).collect();
        let mut p = Prefetched::new(io::Cursor::new(data.clone())).unwrap();
        let mut out = Vec::new();
        p.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        let inner = p.into_inner().unwrap();
        assert_eq!(inner.position() as usize, data.len());
    }

    #[test]
    fn a_reader_that_stops_early_stops_the_thread_within_bounds() {
        let data = vec![7u8; 64 * CHUNK];
        let mut p = Prefetched::new(io::Cursor::new(data)).unwrap();
        let mut head = vec![0u8; 1000];
        p.read_exact(&mut head).unwrap();
        let inner = p.into_inner().unwrap();
        // The chunk read, those waiting, and the one being sent.
        assert!(inner.position() as usize <= (AHEAD + 2) * CHUNK, "{}", inner.position());
    }

    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "corrupt deflate stream"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(1);
            self.0 -= n;
            Ok(n)
        }
    }

    #[test]
    fn an_error_arrives_after_the_data_before_it() {
        let mut p = Prefetched::new(Failing(3 * CHUNK / 2)).unwrap();
        let mut out = Vec::new();
        let e = p.read_to_end(&mut out).unwrap_err();
        assert_eq!(e.to_string(), "corrupt deflate stream");
        assert_eq!(out.len(), 3 * CHUNK / 2, "everything before the failing read arrived first");
        assert_eq!(p.read(&mut [0u8; 10]).unwrap(), 0, "after an error the stream has ended");
    }
}
