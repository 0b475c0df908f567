//! `compress=zlib-stream`: one zlib stream per connection, each frame ending
//! with a sync flush (`00 00 FF FF`), which is how clients know a message is whole.

use flate2::{Compress, Compression, FlushCompress};

pub(crate) struct Stream {
    deflate: Compress,
}

impl Stream {
    pub fn new() -> Self {
        Self { deflate: Compress::new(Compression::fast(), true) }
    }

    /// The compressed bytes of one message.
    pub fn compress(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        let start = self.deflate.total_in();
        loop {
            let consumed = (self.deflate.total_in() - start) as usize;
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let before = out.len();
            if self.deflate.compress_vec(&input[consumed..], &mut out, FlushCompress::Sync).is_err() {
                return out;
            }
            let done = (self.deflate.total_in() - start) as usize == input.len();
            // A flush is complete when deflate stopped short of filling the buffer.
            if done && out.len() < out.capacity() && out.len() > before {
                return out;
            }
            if done && out.len() == before && out.len() < out.capacity() {
                return out;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress};

    #[test]
    fn each_frame_ends_with_a_sync_flush_and_the_stream_decodes_in_order() {
        let mut z = Stream::new();
        let mut inflate = Decompress::new(true);
        for text in ["{\"op\":10}", &"x".repeat(100_000), "{\"op\":11}"] {
            let frame = z.compress(text.as_bytes());
            assert!(frame.ends_with(&[0, 0, 0xff, 0xff]), "no sync flush");
            let mut out = Vec::with_capacity(text.len() + 64);
            inflate.decompress_vec(&frame, &mut out, FlushDecompress::Sync).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
    }
}
