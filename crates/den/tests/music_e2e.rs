//! Music end to end: den's real process joins a voice channel of the fake
//! Discord through its gateway, connects to the stand-in's voice server over
//! wss:// and UDP, and plays tone files; the voice server decrypts and
//! decodes what arrives, so each test checks what was heard (pitch, length,
//! order, silence).

mod support;

use std::time::Duration;

use den_testkit::discord::{CommandOption, Message, voice::segments};
use support::{Discord, Scratch, TOKEN};

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
        Self::with_discord(Discord::start(), tones)
    }

    fn with_discord(discord: Discord, tones: &[(&str, f32, u32)]) -> Self {
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

    /// Adds `lines` to den.toml's `[music]` section.
    fn configure(&self, lines: &str) {
        let config = self.scratch.path().join("den.toml");
        let toml = std::fs::read_to_string(&config).unwrap().replace("[music]\n", &format!("[music]\n{lines}\n"));
        std::fs::write(&config, toml).unwrap();
    }

    fn start(&self) -> support::Running {
        let den = self.scratch.start_with(&self.discord, "run", &[("SSL_CERT_FILE", &self.ca)]);
        den.wait_ready(WAIT);
        den
    }

    fn join(&self, user: u64) {
        self.discord.fake.join_voice(user, self.discord.guild, Some(self.lounge)).unwrap();
    }

    /// The response to interaction `token` once `check` holds for it.
    fn original(&self, token: &str, what: &str, check: impl Fn(&Message) -> bool) -> Message {
        self.discord.wait_until(what, WAIT, |f| {
            f.interaction(token).and_then(|i| i.original).and_then(|m| f.message(m)).is_some_and(|m| check(&m))
        });
        let i = self.discord.fake.interaction(token).unwrap();
        self.discord.fake.message(i.original.unwrap()).unwrap()
    }

    /// The answer to a deferred interaction (its response edited).
    fn answer(&self, token: &str) -> String {
        self.original(token, "the answer", |m| m.edits > 0).content
    }

    fn command(&self, user: u64, name: &str, options: &[CommandOption]) -> String {
        self.answer(&self.discord.fake.invoke_command(user, self.discord.channel, name, options))
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
    let den = music.start();
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

    let (_, metrics) = den.get("/metrics");
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert!(value("den_music_frames_sent_total ") >= 50.0, "frames played are counted");
    assert!(value("den_music_tracks_total{outcome=\"started\"} ") >= 3.0);
    assert!(value("den_music_pacing_deficit_ratio ") < 0.05, "{metrics}");
    let call = music.discord.fake.voice().call(music.discord.guild).unwrap();
    assert!(call.max_dave_protocol_version.unwrap_or(0) > 0, "den asks for DAVE: {call:?}");
    assert_eq!(call.refused, 0, "every packet decrypted: {call:?}");
    assert!(music.discord.fake.violations().is_empty(), "{:?}", music.discord.fake.violations());
}

/// Milliseconds of the longest stretch without packets after `from_ms`.
fn longest_gap(frames: &[den_testkit::discord::voice::HeardFrame], from_ms: u64) -> u64 {
    frames.windows(2).filter(|w| w[0].at_ms >= from_ms).map(|w| w[1].at_ms - w[0].at_ms).max().unwrap_or(0)
}

#[test]
fn pause_is_silence_seek_jumps_and_skip_moves_to_the_next_tone() {
    let music = Music::new(&[("long-440", 440.0, 6000), ("next-660", 660.0, 1000)]);
    let _den = music.start();
    let ada = music.discord.user;
    music.join(ada);
    music.play(ada, "long 440");
    music.play(ada, "next 660");

    music.wait_to_hear("a second of 440 Hz", |h| h.iter().any(|(p, n)| *p == Some(440) && *n >= 50));
    let paused = music.command(ada, "pause", &[]);
    assert!(paused.starts_with("Paused at 0:0"), "{paused}");
    let at_pause = music.discord.fake.voice().heard(music.discord.guild).len();
    std::thread::sleep(Duration::from_millis(1500));
    let during = music.discord.fake.voice().heard(music.discord.guild).len();
    // songbird sends five frames of silence before it stops sending.
    assert!(during <= at_pause + 8, "nothing plays while paused: {at_pause} → {during} frames");
    assert_eq!(music.command(ada, "resume", &[]), "Playing on.");
    let frames = music.discord.fake.voice().heard(music.discord.guild);
    music.wait_to_hear("440 Hz again after the pause", |h| tones(h, 10).iter().filter(|p| **p == 440).count() >= 2);
    let gap = longest_gap(&music.discord.fake.voice().heard(music.discord.guild), frames.first().unwrap().at_ms);
    assert!(gap >= 1400, "the pause is a gap of at least 1.4 s: {gap} ms");

    // 5.5 s into a 6 s tone: about half a second of it is left.
    let before_seek: usize = music.heard().iter().filter(|(p, _)| *p == Some(440)).map(|(_, n)| n).sum();
    assert_eq!(music.command(ada, "seek", &[CommandOption::string("time", "5")]), "Jumped to 0:05.");
    music.wait_to_hear("660 Hz after the seek", |h| tones(h, 10).contains(&660));
    let all_440: usize = music.heard().iter().filter(|(p, _)| *p == Some(440)).map(|(_, n)| n).sum();
    let after_seek = all_440 - before_seek;
    assert!(
        (35..=60).contains(&after_seek),
        "about one second of 440 Hz after seeking to 5 of 6 s: {after_seek} frames"
    );

    // The queue is empty after 660: a skip of it says so, and nothing more plays.
    let skipped = music.command(ada, "skip", &[]);
    assert!(skipped.starts_with("Skipped **next-660**") && skipped.ends_with("The queue is empty."), "{skipped}");
    let heard = music.heard();
    let short_660 = heard.iter().filter(|(p, _)| *p == Some(660)).map(|(_, n)| n).sum::<usize>();
    assert!(short_660 < 50, "the skipped tone was cut short: {heard:?}");
    assert!(music.discord.fake.violations().is_empty(), "{:?}", music.discord.fake.violations());
}

#[test]
fn a_restarted_den_resumes_the_queue_where_it_was() {
    let music = Music::new(&[("long-440", 440.0, 8000), ("after-660", 660.0, 1000)]);
    let ada = music.discord.user;
    music.join(ada);
    let den = music.start();
    music.play(ada, "long 440");
    music.play(ada, "after 660");
    music.wait_to_hear("three seconds of 440 Hz", |h| h.iter().any(|(p, n)| *p == Some(440) && *n >= 150));
    den.signal("KILL");
    drop(den);
    let killed_at: usize = music.heard().iter().filter(|(p, _)| *p == Some(440)).map(|(_, n)| n).sum();

    let mut den = music.start();
    let resumed = den.wait_for_log("playing", WAIT);
    music.wait_to_hear("660 Hz after the rest of 440 Hz", |h| tones(h, 10).contains(&660));
    let total_440: usize = music.heard().iter().filter(|(p, _)| *p == Some(440)).map(|(_, n)| n).sum();
    let replayed = total_440 as i64 - 400; // 8 s is 400 frames; what was heard twice came from the last saved position
    assert!(
        (0..=150).contains(&replayed),
        "resumed within 3 s of where it was (killed after {killed_at} frames; heard {total_440} frames of 440 Hz in all; {resumed})"
    );
    let call = music.discord.fake.voice().call(music.discord.guild).unwrap();
    assert!(call.connections >= 2, "den connected again: {call:?}");
}

#[test]
fn two_servers_play_their_own_queues_at_once() {
    let music = Music::new(&[("low-330", 330.0, 2000), ("high-990", 990.0, 2000)]);
    let fake = &music.discord.fake;
    let bea = fake.add_user("bea");
    let other = fake.add_guild("annex", bea);
    let other_text = fake.add_text_channel(other, "general");
    let other_voice = fake.add_channel(other, "Hall", 2, None);
    let _den = music.start();
    let ada = music.discord.user;
    music.join(ada);
    fake.join_voice(bea, other, Some(other_voice)).unwrap();

    music.play(ada, "low");
    music.answer(&fake.invoke_command(bea, other_text, "play", &[CommandOption::string("query", "high")]));
    music.discord.wait_until("both servers heard a second of their tone", WAIT, |f| {
        let pitches = |g| {
            segments(&f.voice().heard(g))
                .iter()
                .filter(|s| s.frames >= 50)
                .filter_map(|s| s.pitch_hz)
                .map(|p| p.round() as u32)
                .collect::<Vec<_>>()
        };
        pitches(music.discord.guild).iter().any(|p| p.abs_diff(330) < 5)
            && pitches(other).iter().any(|p| p.abs_diff(990) < 10)
    });
    let first: Vec<_> = segments(&fake.voice().heard(music.discord.guild)).iter().filter_map(|s| s.pitch_hz).collect();
    assert!(first.iter().all(|p| (p - 330.0).abs() < 10.0), "only its own tone in the first server: {first:?}");
}

/// den's replies to `!` messages in the server's text channel, oldest first.
fn replies(music: &Music) -> Vec<String> {
    let bot = music.discord.fake.bot_user_id();
    music
        .discord
        .fake
        .messages(music.discord.channel)
        .into_iter()
        .filter(|m| m.author_id == bot)
        .map(|m| m.content)
        .collect()
}

#[test]
fn the_queue_loops_shuffles_removes_and_stops_from_commands_and_prefix_messages() {
    let music = Music::new(&[
        ("one-440", 440.0, 600),
        ("two-550", 550.0, 3000),
        ("three-660", 660.0, 3000),
        ("four-770", 770.0, 3000),
    ]);
    let _den = music.start();
    let ada = music.discord.user;
    music.join(ada);
    music.play(ada, "one");
    assert_eq!(music.command(ada, "loop", &[CommandOption::string("mode", "track")]), "Loop: track.");
    music.wait_to_hear("the first tone twice", |h| h.iter().filter(|(p, n)| *p == Some(440) && *n >= 20).count() >= 2);
    assert_eq!(music.command(ada, "loop", &[CommandOption::string("mode", "off")]), "Loop: off.");

    // `!` messages do what the slash commands do.
    let fake = &music.discord.fake;
    // One at a time, as people type them (commands sent in the same instant may queue in either order).
    for (words, track) in [("!play two", "two-550"), ("!play three", "three-660"), ("!play four", "four-770")] {
        fake.post_as(ada, music.discord.channel, words);
        let queued = [format!("Queued **{track}**"), format!("Now playing **{track}**")];
        music.discord.wait_until("its answer", WAIT, |_| {
            replies(&music).iter().any(|r| queued.iter().any(|q| r.starts_with(q.as_str())))
        });
    }
    // While "two" plays (three seconds), the queue holds still: "three" is first.
    music.wait_to_hear("the second tone", |h| tones(h, 5).contains(&550));
    fake.post_as(ada, music.discord.channel, "!remove 1");
    let deadline = std::time::Instant::now() + WAIT;
    while !replies(&music).iter().any(|r| r.starts_with("Removed **three-660**")) {
        assert!(std::time::Instant::now() < deadline, "no removal; den said {:?}", replies(&music));
        std::thread::sleep(Duration::from_millis(50));
    }
    let queue = music.command(ada, "queue", &[]);
    assert!(
        queue.starts_with("Now: **two-550**") && queue.contains("1. **four-770**") && !queue.contains("three"),
        "{queue}"
    );
    assert_eq!(music.command(ada, "shuffle", &[]), "There is nothing to shuffle.");

    music.wait_to_hear("the last tone", |h| tones(h, 20).contains(&770));
    let heard = tones(&music.heard(), 20);
    assert!(!heard.contains(&660), "the removed track never played: {heard:?}");
    assert_eq!(music.command(ada, "stop", &[]), "Stopped, and the queue is cleared.");
    assert_eq!(music.command(ada, "now-playing", &[]), "Nothing is playing.");
}

#[test]
fn only_approved_servers_play_when_the_allowlist_is_on() {
    let music = Music::new(&[("one-440", 440.0, 600)]);
    music.configure("allowlist = true");
    let _den = music.start();
    let ada = music.discord.user;
    music.join(ada);
    let refused = music.play(ada, "one");
    assert!(
        refused.starts_with("Music is not turned on for this server yet")
            && refused.contains(&music.discord.guild.to_string()),
        "{refused}"
    );

    let guild = music.discord.guild.to_string();
    let out = music.scratch.output_with(&music.discord, &["music", "allow", &guild], &[]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert!(support::stdout(&out).contains("may use music now"));
    let listed = music.scratch.output_with(&music.discord, &["music", "list"], &[]);
    assert!(support::stdout(&listed).contains(&guild));
    assert!(music.play(ada, "one").starts_with("Now playing **one-440**"));
}

#[test]
fn vote_skip_counts_the_people_listening_and_the_dj_skips_at_once() {
    let music = Music::new(&[("long-440", 440.0, 8000), ("next-660", 660.0, 8000)]);
    let fake = &music.discord.fake;
    let (bea, cal) = (fake.add_user("bea"), fake.add_user("cal"));
    for u in [bea, cal] {
        fake.add_member(music.discord.guild, u);
    }
    let dj = fake.add_role(music.discord.guild, "DJ");
    let _den = music.start();
    let ada = music.discord.user;
    for u in [ada, bea, cal] {
        music.join(u);
    }
    let saved = music.command(
        ada,
        "music-settings",
        &[CommandOption::of(4, "vote-skip", 50.into()), CommandOption::of(8, "dj-role", dj.to_string().into())],
    );
    assert!(saved.contains("Vote skip: 50% of listeners") && saved.contains(&format!("<@&{dj}>")), "{saved}");
    music.play(ada, "long");
    music.play(ada, "next");

    assert!(music.command(bea, "clear", &[]).contains("Only the DJ role"), "bea is no DJ");
    let first = music.command(bea, "skip", &[]);
    assert_eq!(first, "Vote to skip **long-440** (0:08): 1 of 2.", "three listen: half is two votes");
    let second = music.command(cal, "skip", &[]);
    assert!(second.starts_with("Skipped **long-440** (0:08) by vote (2 of 2)"), "{second}");
    music.wait_to_hear("the next tone", |h| tones(h, 10).contains(&660));
    fake.add_member_role(music.discord.guild, bea, dj);
    assert!(music.command(bea, "skip", &[]).starts_with("Skipped **next-660**"), "a DJ skips at once");
}

#[test]
fn a_voice_connection_discord_drops_is_made_again_and_the_track_plays_on() {
    let music = Music::new(&[("long-440", 440.0, 6000)]);
    let _den = music.start();
    let ada = music.discord.user;
    music.join(ada);
    music.play(ada, "long");
    music.wait_to_hear("a second of 440 Hz", |h| h.iter().any(|(p, n)| *p == Some(440) && *n >= 50));
    // 4006: the voice session is no longer valid; den must ask the gateway for a new one.
    music.discord.fake.voice().close(music.discord.guild, 4006);
    let guild = music.discord.guild;
    music.discord.wait_until("den connected to voice again", WAIT, |f| {
        f.voice().call(guild).is_some_and(|c| c.connections >= 2 && c.connected)
    });
    // 4015: the voice server went away; the session can be resumed on a new connection.
    music.discord.fake.voice().close(guild, 4015);
    music.discord.wait_until("den resumed the voice session", WAIT, |f| {
        f.voice().call(guild).is_some_and(|c| c.resumes >= 1 && c.connected)
    });
    music.wait_to_hear("the tone played out", |h| {
        h.iter().filter(|(p, _)| *p == Some(440)).map(|(_, n)| n).sum::<usize>() >= 280
    });
    std::thread::sleep(Duration::from_millis(1500));
    let total: usize = music.heard().iter().filter(|(p, _)| *p == Some(440)).map(|(_, n)| n).sum();
    assert!(
        (280..=360).contains(&total),
        "6 s is 300 frames; heard {total}: the track went on from about where it was"
    );
}

#[test]
fn the_now_playing_buttons_pause_resume_and_skip() {
    let music = Music::new(&[("long-440", 440.0, 8000), ("next-660", 660.0, 8000)]);
    let _den = music.start();
    let ada = music.discord.user;
    music.join(ada);
    music.play(ada, "long");
    music.play(ada, "next");
    let token = music.discord.fake.invoke_command(ada, music.discord.channel, "now-playing", &[]);
    let fake = &music.discord.fake;
    let message = music.original(&token, "now-playing with buttons", |m| !m.components.is_empty());
    assert!(
        message.content.starts_with("▶️ Playing **long-440**") && message.content.contains("1 more queued"),
        "{}",
        message.content
    );
    let ids: Vec<String> = message.components[0]["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["custom_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["music:toggle", "music:skip", "music:stop", "music:loop", "music:shuffle"]);

    let press = |id: &str| music.answer(&fake.press_button(ada, music.discord.channel, message.id, id));
    assert!(press("music:toggle").starts_with("Paused at"));
    assert_eq!(press("music:toggle"), "Playing on.");
    assert!(press("music:skip").starts_with("Skipped **long-440**"));
    music.wait_to_hear("the next tone", |h| tones(h, 10).contains(&660));
}

#[test]
fn search_offers_matches_to_pick_from_and_playlists_and_preferences_are_each_persons_own() {
    let music = Music::new(&[
        ("tone-440", 440.0, 4000),
        ("tone-550", 550.0, 4000),
        ("tone-660", 660.0, 4000),
        ("other-880", 880.0, 4000),
    ]);
    let den = music.start();
    let ada = music.discord.user;
    music.join(ada);
    let fake = &music.discord.fake;

    let token = fake.invoke_command(ada, music.discord.channel, "search", &[CommandOption::string("query", "tone")]);
    let offer = music.original(&token, "the matches with a menu", |m| !m.components.is_empty());
    let lines: Vec<&str> = offer.content.lines().skip(1).collect();
    assert_eq!(lines.len(), 3, "three tones match, the other file does not: {}", offer.content);
    let menu = &offer.components[0]["components"][0];
    assert_eq!(menu["type"], 3);
    assert_eq!(menu["options"].as_array().unwrap().len(), 3);
    let second = lines[1].split("**").nth(1).unwrap().to_owned();
    let pick =
        fake.choose(ada, music.discord.channel, offer.id, menu["custom_id"].as_str().unwrap(), &["2".to_owned()]);
    let played = music.answer(&pick);
    assert!(played.starts_with(&format!("Now playing **{second}**")), "{played} (offered {second} second)");

    // The same request again resolves from the track cache.
    music.play(ada, "other 880");
    music.play(ada, "other 880");
    let (_, metrics) = den.get("/metrics");
    assert!(
        metrics.lines().any(|l| l.starts_with("den_music_track_cache_total{outcome=\"hit\"} ") && !l.ends_with(" 0")),
        "{metrics}"
    );

    let saved =
        music.command(ada, "playlist", &[CommandOption::sub(1, "save", vec![CommandOption::string("name", "Mix")])]);
    assert_eq!(saved, "Saved 3 tracks as \"mix\".");
    assert_eq!(music.command(ada, "playlist", &[CommandOption::sub(1, "list", vec![])]), "mix: 3 tracks");
    assert_eq!(music.command(ada, "stop", &[]), "Stopped, and the queue is cleared.");
    let loaded =
        music.command(ada, "playlist", &[CommandOption::sub(1, "load", vec![CommandOption::string("name", "mix")])]);
    assert!(
        loaded.starts_with(&format!("Now playing **{second}**")) && loaded.ends_with("and 2 more queued"),
        "{loaded}"
    );
    let bea = fake.add_user("bea");
    fake.add_member(music.discord.guild, bea);
    assert!(
        music
            .command(bea, "playlist", &[CommandOption::sub(1, "list", vec![])])
            .starts_with("You have no playlists yet"),
        "playlists are each person's own"
    );

    let prefs = music.command(
        ada,
        "music-prefs",
        &[CommandOption::of(4, "volume", 40.into()), CommandOption::of(5, "announce", false.into())],
    );
    assert!(
        prefs.starts_with("Saved.")
            && prefs.contains("Volume when you start the music: 40%")
            && prefs.contains("Announce your tracks: no")
            && prefs.contains("mix (3)"),
        "{prefs}"
    );
    assert!(music.command(bea, "music-prefs", &[]).contains("Volume when you start the music: the server's"));
}

#[test]
fn a_command_over_http_interactions_plays_on_the_gateway_process() {
    let music = Music::new(&[("tone-440", 440.0, 1500)]);
    let ada = music.discord.user;
    music.join(ada);
    let gateway = music.scratch.start_with(&music.discord, "gateway", &[("SSL_CERT_FILE", &music.ca)]);
    gateway.wait_ready(WAIT);
    let key = music.discord.fake.public_key_hex();
    let http = music.scratch.start("interactions", &[("DEN_DISCORD__PUBLIC_KEY", &key)]);
    let url = http.interactions.clone().expect("the endpoint's address is logged");

    // Discord posts interactions to the application's endpoint: den's HTTP process.
    let fake = &music.discord.fake;
    fake.set_interactions_endpoint(Some(url));
    let token = fake.invoke_command(ada, music.discord.channel, "play", &[CommandOption::string("query", "tone")]);
    music.discord.wait_until("acknowledged by the HTTP process", WAIT, |f| {
        f.interaction(&token).is_some_and(|i| i.callback.is_some())
    });
    assert_eq!(fake.interaction(&token).unwrap().callback.unwrap().0, 5, "deferred: the gateway process answers");
    music.wait_to_hear("the tone, played by the gateway process", |h| tones(h, 10).contains(&440));
    assert!(music.answer(&token).starts_with("Now playing **tone-440**"));
}

#[test]
fn pages_go_through_yt_dlp_when_the_operator_enables_it_and_its_failures_are_one_clear_line() {
    let music = Music::new(&[]);
    let stream = serve_files(vec![("/tone.wav".into(), den_testkit::audio::tone_wav(440.0, 1500))]);
    // A stand-in for yt-dlp: one JSON line for a page, the bot check for a page with "bot" in it.
    let script = music.scratch.path().join("yt-dlp");
    std::fs::write(&script, format!(
        "#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in *bot*) echo 'WARNING: [youtube] slow' >&2; \
         echo \"ERROR: [youtube] x: Sign in to confirm you're not a bot. Use --cookies-from-browser\" >&2; exit 1;; esac; done\n\
         echo '{{\"title\":\"Fake Tune\",\"uploader\":\"Fake Band\",\"duration\":1.5,\"webpage_url\":\"https://www.youtube.com/watch?v=tune\",\
         \"url\":\"http://{stream}/tone.wav\",\"protocol\":\"https\"}}'\n"
    )).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    music.configure(&format!("ytdlp = true\nytdlp_path = \"{}\"\nallow_private_urls = true", script.display()));
    let _den = music.start();
    let ada = music.discord.user;
    music.join(ada);

    let refused = music.play(ada, "https://www.youtube.com/watch?v=bot");
    assert!(refused.starts_with("yt-dlp could not get that: YouTube asks den's server to sign in"), "{refused}");
    assert_eq!(refused.lines().count(), 1, "one line: {refused}");
    let played = music.play(ada, "https://www.youtube.com/watch?v=tune");
    assert_eq!(played, "Now playing **Fake Tune** — Fake Band (0:01)");
    music.wait_to_hear("the page's audio", |h| tones(h, 20).contains(&440));
}

#[test]
fn den_leaves_a_channel_left_alone_and_keeps_the_queue_for_later() {
    let music = Music::new(&[("long-440", 440.0, 20_000)]);
    let _den = music.start();
    let ada = music.discord.user;
    music.join(ada);
    let saved = music.command(ada, "music-settings", &[CommandOption::of(4, "leave-after", 1.into())]);
    assert!(saved.contains("Leave when idle or alone after: 1 s"), "{saved}");
    music.play(ada, "long");
    music.wait_to_hear("the tone", |h| tones(h, 10).contains(&440));
    let fake = &music.discord.fake;
    fake.join_voice(ada, music.discord.guild, None).unwrap();
    let bot = fake.bot_user_id();
    music.discord.wait_until("den left the empty channel", WAIT, |f| {
        !f.voice_members(music.discord.guild).iter().any(|(u, _)| *u == bot)
    });
    // Back in the channel, /resume is not needed: /play of anything picks the kept queue up where it was.
    music.join(ada);
    let queue = music.command(ada, "queue", &[]);
    assert!(queue.starts_with("Now: **long-440**"), "the queue was kept: {queue}");
}

#[test]
fn an_attached_file_and_a_link_to_an_audio_file_play() {
    let music = Music::new(&[]);
    // Links on 127.0.0.1 are refused unless allowed: the test's file server and the stand-in's CDN live there.
    music.configure("allow_private_urls = true");
    let link = format!(
        "http://{}/song%20550.wav",
        serve_files(vec![("/song%20550.wav".into(), den_testkit::audio::tone_wav(550.0, 1000))])
    );
    let _den = music.start();
    let ada = music.discord.user;
    music.join(ada);
    let fake = &music.discord.fake;
    let file = fake.add_attachment("attached 330.wav", &den_testkit::audio::tone_wav(330.0, 1000));
    let answer = music.command(ada, "play", &[CommandOption::attachment("file", file)]);
    assert_eq!(answer, "Now playing **attached 330.wav**", "a link has no length until it plays");
    let queued = music.play(ada, &link);
    assert_eq!(queued, "Queued **song 550.wav** at #1");
    music.wait_to_hear("both", |h| tones(h, 20).contains(&330) && tones(h, 20).contains(&550));
    assert_eq!(tones(&music.heard(), 20), [330, 550]);
}

#[test]
fn links_into_dens_own_network_are_refused_by_default() {
    let music = Music::new(&[]);
    let _den = music.start();
    let ada = music.discord.user;
    music.join(ada);
    let refused = music.play(ada, "http://169.254.169.254/latest/meta-data");
    assert_eq!(refused, "den will not play http://169.254.169.254/latest/meta-data: it points into a private network");
}

#[test]
fn a_call_moved_to_another_voice_server_connects_there_and_plays_on() {
    let music = Music::new(&[("long-440", 440.0, 5000)]);
    let _den = music.start();
    let ada = music.discord.user;
    music.join(ada);
    music.play(ada, "long");
    music.wait_to_hear("a second of the tone", |h| h.iter().any(|(p, n)| *p == Some(440) && *n >= 50));
    let guild = music.discord.guild;
    assert!(music.discord.fake.move_voice_server(guild));
    music.discord.wait_until("den on the new server", WAIT, |f| {
        f.voice().call(guild).is_some_and(|c| c.connections >= 2 && c.connected)
    });
    music.wait_to_hear("the tone played out", |h| {
        h.iter().filter(|(p, _)| *p == Some(440)).map(|(_, n)| n).sum::<usize>() >= 230
    });
    std::thread::sleep(Duration::from_millis(1500));
    let total: usize = music.heard().iter().filter(|(p, _)| *p == Some(440)).map(|(_, n)| n).sum();
    assert!((230..=310).contains(&total), "5 s is 250 frames; heard {total}: it played on from about where it was");
}

/// An endless radio-like stream on 127.0.0.1: a WAV header of unknown length, then a 440 Hz tone in real time.
fn serve_radio() -> String {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let mut header = den_testkit::audio::tone_wav(440.0, 0)[..44].to_vec();
                header[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
                header[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
                let tone = den_testkit::audio::tone_wav(440.0, 1000)[44..].to_vec();
                let head = "HTTP/1.1 200 OK\r\ncontent-type: audio/wav\r\nicy-name: den test radio\r\nconnection: close\r\n\r\n";
                if stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&header)).is_err() {
                    return;
                }
                // A second of tone every second, for as long as den listens.
                while stream.write_all(&tone).is_ok() {
                    std::thread::sleep(Duration::from_millis(1000));
                }
            });
        }
    });
    addr
}

#[test]
fn an_endless_radio_stream_plays_until_stopped() {
    let music = Music::new(&[]);
    music.configure("allow_private_urls = true");
    let radio = format!("http://{}/live", serve_radio());
    let _den = music.start();
    let ada = music.discord.user;
    music.join(ada);
    assert_eq!(music.play(ada, &radio), "Now playing **live**");
    music.wait_to_hear("three seconds of the station", |h| {
        h.iter().filter(|(p, _)| *p == Some(440)).map(|(_, n)| n).sum::<usize>() >= 150
    });
    assert!(music.command(ada, "now-playing", &[]).contains("`0:0"), "a stream shows where it is, with no length");
    assert_eq!(music.command(ada, "stop", &[]), "Stopped, and the queue is cleared.");
    std::thread::sleep(Duration::from_millis(500));
    let after_stop = music.discord.fake.voice().heard(music.discord.guild).len();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(music.discord.fake.voice().heard(music.discord.guild).len(), after_stop, "nothing plays after /stop");
}

#[test]
fn two_gateway_processes_each_play_the_servers_on_their_own_shard() {
    let config =
        den_testkit::FakeConfig { bot_token: TOKEN.into(), shards: 2, max_concurrency: 2, ..Default::default() };
    let music =
        Music::with_discord(Discord::with_config(config), &[("low-330", 330.0, 1500), ("high-990", 990.0, 1500)]);
    let fake = &music.discord.fake;
    let ada = music.discord.user;
    let servers: Vec<(u64, u64, u64)> = (0..2)
        .map(|shard| {
            let g = fake.add_guild_on_shard(&format!("on shard {shard}"), ada, shard, 2);
            (g, fake.add_text_channel(g, "general"), fake.add_channel(g, "Stage", 2, None))
        })
        .collect();
    let env = [("SSL_CERT_FILE", music.ca.as_str())];
    let gateways: Vec<_> = ["0", "1"]
        .iter()
        .map(|shard| {
            let mut env = env.to_vec();
            env.push(("DEN_DISCORD__SHARD_IDS", shard));
            music.scratch.start_with(&music.discord, "gateway", &env)
        })
        .collect();
    for g in &gateways {
        g.wait_ready(WAIT);
    }
    // Each command lands on either process's music worker; the one without the server's shard passes it on.
    for ((guild, text, stage), words) in servers.iter().zip(["!play low", "!play high"]) {
        fake.join_voice(ada, *guild, Some(*stage)).unwrap();
        fake.post_as(ada, *text, words);
    }
    music.discord.wait_until("both servers heard their tone", WAIT, |f| {
        let heard = |g: u64, hz: f32| {
            segments(&f.voice().heard(g))
                .iter()
                .any(|s| s.frames >= 20 && s.pitch_hz.is_some_and(|p| (p - hz).abs() < 10.0))
        };
        heard(servers[0].0, 330.0) && heard(servers[1].0, 990.0)
    });
}

#[test]
fn the_operator_approves_a_server_from_discord_and_no_one_else_may() {
    let music = Music::new(&[("one-440", 440.0, 600)]);
    let fake = &music.discord.fake;
    let (ada, bea) = (music.discord.user, fake.add_user("bea"));
    let annex = fake.add_guild("annex", bea);
    let (annex_text, annex_voice) = (fake.add_text_channel(annex, "general"), fake.add_channel(annex, "Hall", 2, None));
    music.configure(&format!("allowlist = true\noperators = [{ada}]\noperator_guild = {}", music.discord.guild));
    let _den = music.start();
    let allow = |who: u64, channel: u64| {
        let option = CommandOption::sub(1, "allow", vec![CommandOption::string("server", &annex.to_string())]);
        music.answer(&fake.invoke_command(who, channel, "music-admin", &[option]))
    };
    assert_eq!(allow(bea, annex_text), "Only den's operator can do this, in den's operator server.");
    assert_eq!(allow(ada, music.discord.channel), format!("Server `{annex}` may use music now."));
    fake.join_voice(bea, annex, Some(annex_voice)).unwrap();
    let played = music.answer(&fake.invoke_command(bea, annex_text, "play", &[CommandOption::string("query", "one")]));
    assert!(played.starts_with("Now playing **one-440**"), "music in the approved server: {played}");
}

/// Serves `files` (path → bytes) on 127.0.0.1; returns the address.
fn serve_files(files: Vec<(String, Vec<u8>)>) -> String {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut request = [0u8; 4096];
            let n = stream.read(&mut request).unwrap_or(0);
            let line = String::from_utf8_lossy(&request[..n]).lines().next().unwrap_or_default().to_owned();
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let head = |status: &str, len: usize| {
                format!("HTTP/1.1 {status}\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n")
            };
            let _ = match files.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => {
                    stream.write_all(head("200 OK", body.len()).as_bytes()).and_then(|()| stream.write_all(body))
                }
                None => stream.write_all(head("404 Not Found", 0).as_bytes()),
            };
        }
    });
    addr
}

#[test]
fn an_hls_stream_plays_its_segments_in_order() {
    let music = Music::new(&[]);
    music.configure("allow_private_urls = true");
    // An Ogg Opus tone cut at page boundaries into three segments of about a second.
    let ogg = den_testkit::audio::tone_ogg_opus(440.0, 3000);
    let pages: Vec<usize> = (0..ogg.len() - 4).filter(|i| &ogg[*i..*i + 4] == b"OggS").collect();
    let cuts = [0, pages[3], pages[4], ogg.len()];
    let mut files: Vec<(String, Vec<u8>)> =
        (0..3).map(|n| (format!("/live/seg{n}.ogg"), ogg[cuts[n]..cuts[n + 1]].to_vec())).collect();
    let playlist = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n\
                    #EXTINF:1.0,\nseg0.ogg\n#EXTINF:1.0,\nseg1.ogg\n#EXTINF:1.0,\nseg2.ogg\n#EXT-X-ENDLIST\n";
    files.push(("/live/radio.m3u8".into(), playlist.as_bytes().to_vec()));
    let url = format!("http://{}/live/radio.m3u8", serve_files(files));
    let _den = music.start();
    let ada = music.discord.user;
    music.join(ada);
    assert_eq!(music.play(ada, &url), "Now playing **radio.m3u8**");
    music.wait_to_hear("the three segments", |h| {
        h.iter().filter(|(p, _)| *p == Some(440)).map(|(_, n)| n).sum::<usize>() >= 130
    });
}
