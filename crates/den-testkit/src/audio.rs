//! Audio for tests: tone files den plays, whose pitch and length the stand-in's
//! voice server then measures in what it heard.

/// A 48 kHz, 16-bit stereo WAV file of a sine at `hz` lasting `ms`, at half
/// of full scale, with 5 ms fades so its ends do not click.
#[must_use]
pub fn tone_wav(hz: f32, ms: u32) -> Vec<u8> {
    const RATE: u32 = 48_000;
    let frames = RATE / 1000 * ms;
    let fade = (RATE / 200) as f32;
    let mut data = Vec::with_capacity(frames as usize * 4);
    for i in 0..frames {
        let t = i as f32 / RATE as f32;
        let edge = (i as f32).min((frames - 1 - i) as f32).min(fade) / fade;
        let sample = ((2.0 * std::f32::consts::PI * hz * t).sin() * 0.5 * edge * f32::from(i16::MAX)) as i16;
        data.extend_from_slice(&sample.to_le_bytes());
        data.extend_from_slice(&sample.to_le_bytes());
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_tone_file_has_the_length_asked_for() {
        let wav = super::tone_wav(440.0, 250);
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(wav.len(), 44 + 48_000 / 4 * 4);
    }
}
