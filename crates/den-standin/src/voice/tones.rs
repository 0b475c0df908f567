//! Tone files: what tests and the playground give den to play, whose pitch
//! and length the voice server then measures in what it heard.

/// A 48 kHz, 16-bit stereo WAV file of a sine at `hz` lasting `ms`, at half
/// of full scale, with 5 ms fades so its ends do not click.
#[must_use]
pub fn tone_wav(hz: f32, ms: u32) -> Vec<u8> {
    melody_wav(&[(hz, ms)])
}

/// A WAV file of notes played one after another: (pitch, length in ms) each.
#[must_use]
pub fn melody_wav(notes: &[(f32, u32)]) -> Vec<u8> {
    const RATE: u32 = 48_000;
    let fade = (RATE / 200) as f32;
    let mut data = Vec::new();
    for (hz, ms) in notes {
        let frames = RATE / 1000 * ms;
        for i in 0..frames {
            let t = i as f32 / RATE as f32;
            let edge = (i as f32).min((frames - 1 - i) as f32).min(fade) / fade;
            let sample = ((2.0 * std::f32::consts::PI * hz * t).sin() * 0.5 * edge * f32::from(i16::MAX)) as i16;
            data.extend_from_slice(&sample.to_le_bytes());
            data.extend_from_slice(&sample.to_le_bytes());
        }
    }
    let mut wav = Vec::with_capacity(44 + data.len());
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&2u16.to_le_bytes()); // stereo
    wav.extend_from_slice(&RATE.to_le_bytes());
    wav.extend_from_slice(&(RATE * 4).to_le_bytes());
    wav.extend_from_slice(&4u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(data.len() as u32).to_le_bytes());
    wav.extend_from_slice(&data);
    wav
}

/// An Ogg Opus file (48 kHz stereo, 20 ms frames) of a sine at `hz` lasting
/// `ms`: what a voice driver can pass through without decoding.
///
/// # Panics
/// When libopus refuses to encode (it does not for these settings).
#[must_use]
pub fn tone_ogg_opus(hz: f32, ms: u32) -> Vec<u8> {
    const FRAME: usize = 960;
    let mut encoder =
        opus2::Encoder::new(48_000, opus2::Channels::Stereo, opus2::Application::Audio).expect("opus encoder");
    let mut ogg = OggWriter { out: Vec::new(), serial: 0x64656e, page: 0 };
    let mut head = b"OpusHead".to_vec();
    head.extend_from_slice(&[1, 2]);
    head.extend_from_slice(&312u16.to_le_bytes()); // pre-skip
    head.extend_from_slice(&48_000u32.to_le_bytes());
    head.extend_from_slice(&[0, 0, 0]); // gain, mapping family
    ogg.page(&[&head], 0, 0x02);
    let mut tags = b"OpusTags".to_vec();
    tags.extend_from_slice(&3u32.to_le_bytes());
    tags.extend_from_slice(b"den");
    tags.extend_from_slice(&0u32.to_le_bytes());
    ogg.page(&[&tags], 0, 0);
    let frames = (ms as usize * 48) / FRAME;
    let mut packet = vec![0u8; 4000];
    let mut granule = 312u64;
    let mut batch: Vec<Vec<u8>> = Vec::new();
    for f in 0..frames {
        let pcm: Vec<i16> = (0..FRAME)
            .flat_map(|i| {
                let t = (f * FRAME + i) as f32 / 48_000.0;
                let s = ((2.0 * std::f32::consts::PI * hz * t).sin() * 0.5 * f32::from(i16::MAX)) as i16;
                [s, s]
            })
            .collect();
        let n = encoder.encode(&pcm, &mut packet).expect("opus encode");
        batch.push(packet[..n].to_vec());
        granule += FRAME as u64;
        if batch.len() == 50 || f + 1 == frames {
            let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            ogg.page(&refs, granule, if f + 1 == frames { 0x04 } else { 0 });
            batch.clear();
        }
    }
    ogg.out
}

/// Writes Ogg pages (RFC 3533): packets laced into segments, each page checksummed.
struct OggWriter {
    out: Vec<u8>,
    serial: u32,
    page: u32,
}

impl OggWriter {
    fn page(&mut self, packets: &[&[u8]], granule: u64, flags: u8) {
        let mut lacing = Vec::new();
        for p in packets {
            lacing.extend(std::iter::repeat_n(255u8, p.len() / 255));
            lacing.push((p.len() % 255) as u8);
        }
        let start = self.out.len();
        self.out.extend_from_slice(b"OggS");
        self.out.push(0);
        self.out.push(flags);
        self.out.extend_from_slice(&granule.to_le_bytes());
        self.out.extend_from_slice(&self.serial.to_le_bytes());
        self.out.extend_from_slice(&self.page.to_le_bytes());
        self.out.extend_from_slice(&[0; 4]);
        self.out.push(lacing.len() as u8);
        self.out.extend_from_slice(&lacing);
        for p in packets {
            self.out.extend_from_slice(p);
        }
        let crc = ogg_crc(&self.out[start..]);
        self.out[start + 22..start + 26].copy_from_slice(&crc.to_le_bytes());
        self.page += 1;
    }
}

/// Ogg's CRC-32: polynomial 0x04c11db7, not reflected, starting at zero.
fn ogg_crc(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0u32, |crc, b| {
        (0..8).fold(
            crc ^ (u32::from(*b) << 24),
            |c, _| if c & 0x8000_0000 != 0 { (c << 1) ^ 0x04c1_1db7 } else { c << 1 },
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tone_file_has_the_length_asked_for() {
        let wav = super::tone_wav(440.0, 250);
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(wav.len(), 44 + 48_000 / 4 * 4);
    }

    #[test]
    fn an_ogg_opus_tone_has_checksummed_pages_and_the_opus_headers() {
        let ogg = super::tone_ogg_opus(440.0, 1000);
        assert_eq!(&ogg[..4], b"OggS");
        assert_eq!(&ogg[28..36], b"OpusHead");
        let mut first = ogg[..47].to_vec();
        let stored = u32::from_le_bytes([first[22], first[23], first[24], first[25]]);
        first[22..26].copy_from_slice(&[0; 4]);
        assert_eq!(super::ogg_crc(&first), stored, "the first page's checksum");
        assert!(ogg.windows(8).any(|w| w == b"OpusTags"));
    }
}
