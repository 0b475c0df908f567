//! Music end to end: den's real process joins a voice channel of the fake
//! Discord through its gateway, connects to the stand-in's voice server over
//! wss:// and UDP, and plays tone files; the voice server decrypts and
//! decodes what arrives, so each test checks what was heard (pitch, length,
//! order, silence).

mod support;

use std::time::Duration;

use den_testkit::discord::{CommandOption, voice::segments};
use support::{Discord, Scratch};

const WAIT: Duration = Duration::from_secs(30);

/// A server with a voice channel, a library of tones, and den configured to play.
struct Music {
    discord: Discord,
    scratch: Scratch,
    lounge: u64,
    ca: String,
}

impl Music {
    fn new(tones: &[(&str, f32, u32)]) -> Self {
        let discord = Discord::start();
        let lounge = discord.fake.add_channel(discord.guild, "Lounge", 2, None);
        let scratch = Scratch::new();
        let library = scratch.path().join("library");
        std::fs::create_dir_all(&library).unwrap();
        for (name, hz, ms) in tones {
            std::fs::write(library.join(format!("{name}.wav")), den_testkit::audio::tone_wav(*hz, *ms)).unwrap();
        }
        let ca = scratch.path().join("voice-ca.pem");
        std::fs::write(&ca, discord.fake.voice().ca_pem()).unwrap();
        std::fs::write(
            scratch.path().join("den.toml"),
            "[music]\nenabled = true\nlibrary = \"library\"\nleave_after_secs = 0\n\n[personas]\nenabled = false\n",
        )
        .unwrap();
        Self { discord, scratch, lounge, ca: ca.display().to_string() }
    }

    fn start(&self) -> support::Running {
        let den = self.scratch.start_with(&self.discord, "run", &[("SSL_CERT_FILE", &self.ca)]);
        den.wait_ready(WAIT);
        den
    }

    fn join(&self, user: u64) {
        self.discord.fake.join_voice(user, self.discord.guild, Some(self.lounge)).unwrap();
    }

    fn command(&self, user: u64, name: &str, options: &[CommandOption]) -> String {
        let token = self.discord.fake.invoke_command(user, self.discord.channel, name, options);
        self.discord.wait_until(&format!("/{name} answered"), WAIT, |f| {
            f.interaction(&token).and_then(|i| i.original).and_then(|m| f.message(m)).is_some_and(|m| m.edits > 0)
        });
        let i = self.discord.fake.interaction(&token).unwrap();
        self.discord.fake.message(i.original.unwrap()).unwrap().content
    }

    fn play(&self, user: u64, query: &str) -> String {
        self.command(user, "play", &[CommandOption::string("query", query)])
    }

    /// The pitches heard so far, rounded to 10 Hz, each with its length in frames.
    fn heard(&self) -> Vec<(Option<u32>, usize)> {
        let frames = self.discord.fake.voice().heard(self.discord.guild);
        segments(&frames).iter().map(|s| (s.pitch_hz.map(|p| (p / 10.0).round() as u32 * 10), s.frames)).collect()
    }

    fn wait_to_hear(&self, what: &str, mut check: impl FnMut(&[(Option<u32>, usize)]) -> bool) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let heard = self.heard();
            if check(&heard) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "never heard {what}; heard {heard:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The tones heard for at least `min_frames` frames each, in order.
fn tones(heard: &[(Option<u32>, usize)], min_frames: usize) -> Vec<u32> {
    heard.iter().filter(|(p, n)| p.is_some() && *n >= min_frames).filter_map(|(p, _)| *p).collect()
}

#[test]
fn three_queued_tones_are_heard_in_order_at_their_pitch_and_length() {
    let music = Music::new(&[("tone-440", 440.0, 1000), ("tone-660", 660.0, 1000), ("tone-880", 880.0, 1000)]);
    let _den = music.start();
    let ada = music.discord.user;
    music.join(ada);

    let first = music.play(ada, "tone 440");
    assert!(first.starts_with("Now playing **tone-440**"), "{first}");
    let second = music.play(ada, "tone-660");
    assert!(second.contains("Queued **tone-660**") && second.contains("#1"), "{second}");
    let third = music.play(ada, "880");
    assert!(third.contains("Queued **tone-880**") && third.contains("#2"), "{third}");

    music.wait_to_hear("440, 660 and 880 Hz played out", |h| h.iter().any(|(p, n)| *p == Some(880) && *n >= 45));
    std::thread::sleep(Duration::from_millis(300));
    let heard = music.heard();
    assert_eq!(tones(&heard, 10), [440, 660, 880], "each tone once, in order: {heard:?}");
    for (pitch, frames) in heard.iter().filter(|(p, n)| p.is_some() && *n >= 10) {
        // One second is 50 frames of 20 ms; the fades at each end are quieter but still the tone.
        assert!((45..=52).contains(frames), "{pitch:?} lasted {frames} frames: {heard:?}");
    }

    let call = music.discord.fake.voice().call(music.discord.guild).unwrap();
    assert!(call.max_dave_protocol_version.unwrap_or(0) > 0, "den asks for DAVE: {call:?}");
    assert_eq!(call.refused, 0, "every packet decrypted: {call:?}");
    assert!(music.discord.fake.violations().is_empty(), "{:?}", music.discord.fake.violations());
}
