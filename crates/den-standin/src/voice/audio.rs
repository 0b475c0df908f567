//! What a bot sent, heard: each Opus frame decoded to 48 kHz stereo, its
//! loudness and pitch measured, and the decoded samples offered to
//! listeners (the playground's page plays them).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::broadcast;

/// Samples per channel in one 20 ms frame at 48 kHz.
pub const FRAME_SAMPLES: usize = 960;
/// Frames kept per call: ten minutes.
const KEPT_FRAMES: usize = 30_000;
/// Below this RMS (full scale = 1), a frame is silence.
const SILENCE: f32 = 0.01;

/// One 20 ms frame as heard.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeardFrame {
    /// Milliseconds from the call's first packet to this one's arrival.
    pub at_ms: u64,
    /// The same in microseconds.
    pub at_us: u64,
    /// RTP sequence number.
    pub seq: u16,
    /// RTP timestamp (48 kHz ticks).
    pub timestamp: u32,
    /// Root mean square of the left channel, 0 to 1.
    pub level: f32,
    /// The left channel's pitch, when the frame is a steady tone.
    pub pitch_hz: Option<f32>,
}

/// A run of frames of one tone (or of silence, `pitch_hz: None`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Segment {
    /// Median pitch of its frames; `None` for silence.
    pub pitch_hz: Option<f32>,
    /// Arrival of its first frame, ms from the call's first packet.
    pub from_ms: u64,
    /// Arrival of its last frame.
    pub to_ms: u64,
    /// Frames in it (each 20 ms of audio).
    pub frames: usize,
}

/// A call's audio so far.
pub(crate) struct Heard {
    pub(crate) started: Option<Instant>,
    /// Decode and measure frames (off: only count and time them, for load tests).
    pub(crate) decode: bool,
    frames: std::collections::VecDeque<HeardFrame>,
    decoder: Option<opus2::Decoder>,
    pub(crate) pcm: broadcast::Sender<Arc<[i16]>>,
    pub(crate) undecodable: u64,
}

impl Default for Heard {
    fn default() -> Self {
        Self {
            started: None,
            decode: true,
            frames: std::collections::VecDeque::new(),
            decoder: opus2::Decoder::new(48_000, opus2::Channels::Stereo).ok(),
            pcm: broadcast::channel(256).0,
            undecodable: 0,
        }
    }
}

impl Heard {
    /// Decodes and measures one Opus frame.
    pub(crate) fn push(&mut self, seq: u16, timestamp: u32, opus: &[u8]) {
        let now = Instant::now();
        let started = *self.started.get_or_insert(now);
        let since = now.duration_since(started);
        if !self.decode {
            let at_us = u64::try_from(since.as_micros()).unwrap_or(u64::MAX);
            self.keep(HeardFrame { at_ms: at_us / 1000, at_us, seq, timestamp, level: 0.0, pitch_hz: None });
            return;
        }
        let mut pcm = vec![0i16; FRAME_SAMPLES * 2 * 6]; // up to 120 ms per packet
        let Some(decoder) = &mut self.decoder else { return };
        let Ok(per_channel) = decoder.decode(opus, &mut pcm, false) else {
            self.undecodable += 1;
            return;
        };
        pcm.truncate(per_channel * 2);
        let left: Vec<f32> = pcm.iter().step_by(2).map(|s| f32::from(*s) / 32768.0).collect();
        let level = (left.iter().map(|s| s * s).sum::<f32>() / left.len().max(1) as f32).sqrt();
        let frame = HeardFrame {
            at_ms: u64::try_from(since.as_millis()).unwrap_or(u64::MAX),
            at_us: u64::try_from(since.as_micros()).unwrap_or(u64::MAX),
            seq,
            timestamp,
            level,
            pitch_hz: if level < SILENCE { None } else { pitch(&left) },
        };
        self.keep(frame);
        let _ = self.pcm.send(pcm.into());
    }

    fn keep(&mut self, frame: HeardFrame) {
        if self.frames.len() == KEPT_FRAMES {
            self.frames.pop_front();
        }
        self.frames.push_back(frame);
    }

    pub(crate) fn frames(&self) -> Vec<HeardFrame> {
        self.frames.iter().copied().collect()
    }
}

/// The frequency of a steady tone: the mean distance between rising zero
/// crossings, each placed between samples by linear interpolation.
fn pitch(samples: &[f32]) -> Option<f32> {
    let crossings: Vec<f32> = samples
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0] < 0.0 && w[1] >= 0.0)
        .map(|(i, w)| i as f32 + w[0] / (w[0] - w[1]))
        .collect();
    let (first, last) = (crossings.first()?, crossings.last()?);
    (crossings.len() >= 3).then(|| 48_000.0 * (crossings.len() - 1) as f32 / (last - first))
}

/// Groups frames into tones and silences: a new segment starts where the
/// pitch moves by more than 3 %, where sound turns to silence or back, and
/// after a gap of more than 100 ms without packets (a gap is a silence too).
#[must_use]
pub fn segments(frames: &[HeardFrame]) -> Vec<Segment> {
    let mut out: Vec<(Segment, Vec<f32>)> = Vec::new();
    let mut last_at: Option<u64> = None;
    for f in frames {
        if let Some(prev) = last_at
            && f.at_ms > prev + 100
        {
            out.push((Segment { pitch_hz: None, from_ms: prev, to_ms: f.at_ms, frames: 0 }, vec![]));
        }
        last_at = Some(f.at_ms);
        let same = out.last().is_some_and(|(s, pitches)| match (f.pitch_hz, s.pitch_hz) {
            (None, None) => s.frames > 0,
            (Some(p), Some(_)) => {
                let median = median(pitches);
                (p - median).abs() <= median * 0.03
            }
            _ => false,
        });
        if same {
            let (s, pitches) = out.last_mut().expect("checked above");
            s.to_ms = f.at_ms;
            s.frames += 1;
            if let Some(p) = f.pitch_hz {
                pitches.push(p);
                s.pitch_hz = Some(median(pitches));
            }
        } else {
            out.push((
                Segment { pitch_hz: f.pitch_hz, from_ms: f.at_ms, to_ms: f.at_ms, frames: 1 },
                f.pitch_hz.into_iter().collect(),
            ));
        }
    }
    out.into_iter().map(|(s, _)| s).collect()
}

fn median(values: &[f32]) -> f32 {
    let mut v = values.to_vec();
    v.sort_by(f32::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f32, n: usize) -> Vec<f32> {
        (0..n).map(|i| (2.0 * std::f32::consts::PI * hz * i as f32 / 48_000.0).sin() * 0.5).collect()
    }

    #[test]
    fn the_pitch_of_a_twenty_millisecond_tone_is_within_half_a_percent() {
        for hz in [220.0, 440.0, 660.0, 880.0, 1000.0] {
            let p = pitch(&tone(hz, FRAME_SAMPLES)).unwrap();
            assert!((p - hz).abs() < hz * 0.005, "{hz} Hz measured as {p}");
        }
    }

    #[test]
    fn frames_group_into_tones_gaps_and_silences() {
        let frame = |at_ms, pitch_hz: Option<f32>| HeardFrame {
            at_ms,
            at_us: at_ms * 1000,
            seq: 0,
            timestamp: 0,
            level: 0.5,
            pitch_hz,
        };
        let mut frames: Vec<HeardFrame> = (0..10).map(|i| frame(i * 20, Some(440.0 + i as f32 % 2.0))).collect();
        frames.extend((10..15).map(|i| frame(i * 20, None)));
        frames.extend((40..50).map(|i| frame(i * 20, Some(660.0))));
        let s = segments(&frames);
        let pitches: Vec<Option<u32>> = s.iter().map(|s| s.pitch_hz.map(|p| p.round() as u32)).collect();
        assert_eq!(pitches, [Some(441), None, None, Some(660)]);
        assert_eq!((s[0].frames, s[1].frames, s[2].frames, s[3].frames), (10, 5, 0, 10));
    }
}
