//! The music module's metrics: players, tracks, voice reconnects, how long
//! resolving a request takes, and the track cache's hits.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

type Histograms = Family<SourceLabels, Histogram, fn() -> Histogram>;

/// The music families, registered once in den's registry.
#[derive(Clone, Debug)]
pub(crate) struct MusicFamilies {
    players: Gauge,
    tracks: Family<OutcomeLabels, Counter>,
    reconnects: Counter,
    resolve: Histograms,
    cache: Family<OutcomeLabels, Counter>,
    frames: Counter,
    deficit: Gauge<f64, std::sync::atomic::AtomicU64>,
}

fn resolve_buckets() -> Histogram {
    // 0.1 ms (a cache hit) to ~3 s (a slow link).
    Histogram::new(exponential_buckets(0.000_1, 2.5, 11))
}

impl MusicFamilies {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let players = Gauge::default();
        registry.register("music_players", "Servers with a track playing or paused in this process", players.clone());
        let tracks = Family::<OutcomeLabels, Counter>::default();
        registry.register("music_tracks", "Tracks started, and tracks that failed to play", tracks.clone());
        let reconnects = Counter::default();
        registry.register(
            "music_voice_reconnects",
            "Voice connections Discord ended that den joined again",
            reconnects.clone(),
        );
        let resolve: Histograms = Family::new_with_constructor(resolve_buckets);
        registry.register("music_resolve_seconds", "Time to turn a request into tracks, by source", resolve.clone());
        let cache = Family::<OutcomeLabels, Counter>::default();
        registry.register("music_track_cache", "Track cache look-ups, by outcome (hit, miss)", cache.clone());
        let frames = Counter::default();
        registry.register(
            "music_frames_sent",
            "20 ms audio frames the voice drivers played (one packet each)",
            frames.clone(),
        );
        let deficit = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "music_pacing_deficit_ratio",
            "The worst playing server's shortfall against 50 frames a second over the last interval (0 to 1)",
            deficit.clone(),
        );
        Self { players, tracks, reconnects, resolve, cache, frames, deficit }
    }
}

impl crate::Metrics {
    /// Sets how many servers have a track playing or paused.
    pub fn music_players(&self, n: usize) {
        self.inner.music.players.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts a track that started (`failed` false) or failed to play.
    pub fn music_track(&self, failed: bool) {
        let outcome = if failed { "failed" } else { "started" };
        self.inner.music.tracks.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts a voice connection den joined again.
    pub fn music_voice_reconnect(&self) {
        self.inner.music.reconnects.inc();
    }

    /// Records how long resolving a request from `source` (`library`, `link`, `attachment`) took.
    pub fn music_resolved(&self, source: &'static str, took: std::time::Duration) {
        self.inner.music.resolve.get_or_create(&SourceLabels { source }).observe(took.as_secs_f64());
    }

    /// Counts audio frames played.
    pub fn music_frames(&self, frames: u64) {
        self.inner.music.frames.inc_by(frames);
    }

    /// Sets the worst playing server's pacing deficit over the last interval (0 to 1).
    pub fn music_deficit(&self, worst: f64) {
        self.inner.music.deficit.set(worst);
    }

    /// Counts a track cache look-up.
    pub fn music_cache(&self, hit: bool) {
        let outcome = if hit { "hit" } else { "miss" };
        self.inner.music.cache.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}
