//! Tar streams as image layers and `populate` get them: plain, gzip or zstd, told apart by
//! their first bytes (a media type may be missing or wrong, the magic is not).

use std::io::{self, BufRead, BufReader, Read};

use crate::error::{IoContext, Result};

/// How a stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip, one member or several.
    Gzip,
    /// zstd, one frame or several.
    Zstd,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

impl Compression {
    /// The compression whose magic `head` starts with; anything else is taken as plain tar
    /// (whose first bytes are a file name).
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&GZIP_MAGIC) {
            Compression::Gzip
        } else if head.starts_with(&ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The compression an OCI layer media type names (`...tar`, `...tar+gzip`, `...tar+zstd`);
    /// None for a media type that is not a tar layer.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        let (_, suffix) = media_type.rsplit_once("tar")?;
        match suffix {
            "" => Some(Compression::None),
            "+gzip" | ".gzip" => Some(Compression::Gzip),
            "+zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// `r` decompressed as this says.
    pub fn decoder<'a, R: BufRead + Send + 'a>(self, r: R) -> Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            Compression::None => Box::new(r),
            // Multi-member: `pigz` and concatenated gzip files are one stream of several members.
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(r).ctx(|| "starting a zstd decoder".to_string())?,
            ),
        })
    }
}

/// Buffer for peeking and for the decoders' reads: large reads keep syscalls few.
const BUF: usize = 256 * 1024;

/// Fills the reader's buffer until it holds `n` bytes or the stream ends, without consuming.
fn peek<R: Read>(r: &mut BufReader<R>, n: usize) -> io::Result<Vec<u8>> {
    // One fill may hold fewer than `n` bytes (a pipe's short read); `detect` handles that.
    let buf = r.fill_buf()?;
    Ok(buf[..buf.len().min(n)].to_vec())
}

/// `r` decompressed according to its magic: gzip, zstd or else plain tar.
pub fn decompressed<'a, R: Read + Send + 'a>(r: R) -> Result<Box<dyn Read + Send + 'a>> {
    let (compression, r) = detect(r)?;
    compression.decoder(r)
}

/// The compression of `r` by its magic, and a reader that still yields every byte of `r`.
pub fn detect<'a, R: Read + Send + 'a>(r: R) -> Result<(Compression, Box<dyn BufRead + Send + 'a>)> {
    let mut br = BufReader::with_capacity(BUF, r);
    let head = retry_interrupted(|| peek(&mut br, ZSTD_MAGIC.len())).ctx(|| "reading the start of the archive".to_string())?;
    if head.len() >= ZSTD_MAGIC.len() || head.is_empty() {
        return Ok((Compression::detect(&head), Box::new(br)));
    }
    // A short first read: read up to 4 bytes for sure and put them back in front.
    let mut head = Vec::with_capacity(ZSTD_MAGIC.len());
    (&mut br).take(ZSTD_MAGIC.len() as u64).read_to_end(&mut head).ctx(|| "reading the start of the archive".to_string())?;
    let c = Compression::detect(&head);
    Ok((c, Box::new(BufReader::with_capacity(BUF, io::Cursor::new(head).chain(br)))))
}

fn retry_interrupted<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn payload() -> Vec<u8> {
        (0..300_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect()
    }

    fn roundtrip(compressed: Vec<u8>, want: Compression) {
        let (c, _) = detect(io::Cursor::new(compressed.clone())).unwrap();
        assert_eq!(c, want);
        let mut out = Vec::new();
        decompressed(io::Cursor::new(compressed)).unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out, payload());
    }

    #[test]
    fn gzip_round_trip() {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&payload()).unwrap();
        roundtrip(e.finish().unwrap(), Compression::Gzip);
    }

    #[test]
    fn multi_member_gzip() {
        let p = payload();
        let (a, b) = p.split_at(1000);
        let mut all = Vec::new();
        for part in [a, b] {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(part).unwrap();
            all.extend(e.finish().unwrap());
        }
        roundtrip(all, Compression::Gzip);
    }

    #[test]
    fn zstd_round_trip() {
        roundtrip(zstd::encode_all(&payload()[..], 3).unwrap(), Compression::Zstd);
    }

    #[test]
    fn plain_passes_through() {
        roundtrip(payload(), Compression::None);
        let mut out = Vec::new();
        decompressed(io::empty()).unwrap().read_to_end(&mut out).unwrap();
        assert!(out.is_empty());
    }

    /// A reader giving one byte per read: the magic split over several reads.
    struct Trickle(io::Cursor<Vec<u8>>);
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }

    #[test]
    fn magic_split_over_short_reads() {
        let z = zstd::encode_all(&payload()[..], 1).unwrap();
        let (c, mut r) = detect(Trickle(io::Cursor::new(z.clone()))).unwrap();
        assert_eq!(c, Compression::Zstd);
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, z);
    }

    #[test]
    fn media_types() {
        assert_eq!(Compression::from_media_type("application/vnd.oci.image.layer.v1.tar"), Some(Compression::None));
        assert_eq!(Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+gzip"), Some(Compression::Gzip));
        assert_eq!(Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd"), Some(Compression::Zstd));
        assert_eq!(Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"), Some(Compression::Gzip));
        assert_eq!(Compression::from_media_type("application/json"), None);
    }
}
