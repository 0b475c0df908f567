//! den's metrics as CloudWatch Embedded Metric Format (EMF) log lines.
//!
//! On AWS, a JSON log line with an `_aws` member becomes CloudWatch metrics
//! when it reaches CloudWatch Logs (ECS's `awslogs` driver, or any agent), so
//! den needs no `PutMetricData` permission or API call. The lines are made
//! from the same registry that `/metrics` encodes, so the names are the same:
//! `den_jobs_sent_total`, `den_queue_messages`, `den_llm_tokens_total`...
//! Counters and histogram sums and counts are sent as the increase since the
//! previous line (CloudWatch sums them), and only when they moved; gauges as
//! their value. Histogram buckets are left out: CloudWatch has its own
//! statistics.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::Metrics;

type Labels = BTreeMap<String, String>;

/// One sample of the OpenMetrics text: name, labels, value.
#[derive(Clone, Debug, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// How a metric family is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Turns registry snapshots into EMF lines, remembering the last counter
/// values so each line carries the increase since the one before.
#[derive(Debug)]
pub struct EmfEncoder {
    namespace: String,
    include: Vec<String>,
    previous: HashMap<(String, BTreeMap<String, String>), f64>,
}

impl EmfEncoder {
    /// An encoder publishing into CloudWatch namespace `namespace`.
    #[must_use]
    pub fn new(namespace: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), include: Vec::new(), previous: HashMap::new() }
    }

    /// Sends only metrics whose name starts with one of `prefixes` (all when
    /// empty): each CloudWatch metric is billed, so an operator picks.
    #[must_use]
    pub fn include(mut self, prefixes: Vec<String>) -> Self {
        self.include = prefixes;
        self
    }

    /// Writes the lines of `metrics` as they are now to standard output, where
    /// the log driver (ECS's `awslogs`, Lambda's own) takes them to CloudWatch.
    pub fn write(&mut self, metrics: &Metrics) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let lines = self.lines(&metrics.encode(), now);
        let mut out = std::io::stdout().lock();
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }

    /// EMF lines (one JSON object each) for an OpenMetrics text snapshot
    /// taken at `timestamp_ms`: one line per label set.
    pub fn lines(&mut self, openmetrics: &str, timestamp_ms: i64) -> Vec<String> {
        let (kinds, samples) = parse(openmetrics);
        let mut groups: BTreeMap<Labels, Vec<(String, f64, &'static str)>> = BTreeMap::new();
        for sample in samples {
            if !self.include.is_empty() && !self.include.iter().any(|p| sample.name.starts_with(p.as_str())) {
                continue;
            }
            let family = family_of(&sample.name, &kinds);
            let Some(kind) = family.and_then(|f| kinds.get(f)).copied() else { continue };
            let value = match kind {
                Kind::Gauge => sample.value,
                Kind::Counter => self.delta(&sample),
                Kind::Histogram => {
                    if !(sample.name.ends_with("_sum") || sample.name.ends_with("_count")) {
                        continue;
                    }
                    self.delta(&sample)
                }
            };
            // CloudWatch bills a metric for each hour it receives data: a
            // counter that did not move says nothing worth paying for.
            if kind != Kind::Gauge && value == 0.0 {
                continue;
            }
            let unit = if sample.name.ends_with("_seconds") || sample.name.ends_with("_seconds_sum") {
                "Seconds"
            } else if matches!(kind, Kind::Counter) || sample.name.ends_with("_count") {
                "Count"
            } else {
                "None"
            };
            groups.entry(sample.labels).or_default().push((sample.name, value, unit));
        }
        groups
            .into_iter()
            .map(|(labels, metrics)| {
                let dimensions: Vec<&String> = labels.keys().collect();
                let definitions: Vec<Value> =
                    metrics.iter().map(|(name, _, unit)| json!({"Name": name, "Unit": unit})).collect();
                let mut line = Map::new();
                line.insert(
                    "_aws".into(),
                    json!({
                        "Timestamp": timestamp_ms,
                        "CloudWatchMetrics": [{
                            "Namespace": self.namespace,
                            "Dimensions": [dimensions],
                            "Metrics": definitions,
                        }],
                    }),
                );
                for (k, v) in &labels {
                    line.insert(k.clone(), Value::String(v.clone()));
                }
                for (name, value, _) in metrics {
                    line.insert(name, json!(value));
                }
                Value::Object(line).to_string()
            })
            .collect()
    }

    fn delta(&mut self, sample: &Sample) -> f64 {
        let key = (sample.name.clone(), sample.labels.clone());
        let before = self.previous.insert(key, sample.value).unwrap_or(0.0);
        // A counter only falls when the process restarted: count from zero.
        if sample.value >= before { sample.value - before } else { sample.value }
    }
}

/// The family a sample belongs to: its name, or its name without a suffix.
fn family_of<'a>(name: &'a str, kinds: &HashMap<String, Kind>) -> Option<&'a str> {
    if kinds.contains_key(name) {
        return Some(name);
    }
    ["_total", "_sum", "_count", "_bucket", "_created"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find(|family| kinds.contains_key(*family))
}

/// The `# TYPE` lines and the samples of OpenMetrics text.
fn parse(text: &str) -> (HashMap<String, Kind>, Vec<Sample>) {
    let mut kinds = HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                let kind = match kind {
                    "counter" => Kind::Counter,
                    "gauge" => Kind::Gauge,
                    "histogram" => Kind::Histogram,
                    _ => continue,
                };
                kinds.insert(name.to_owned(), kind);
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(sample) = parse_sample(line) {
            samples.push(sample);
        }
    }
    (kinds, samples)
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (&line[..open], parse_labels(&line[open + 1..close])?, &line[close + 1..])
        }
        None => {
            let space = line.find(' ')?;
            (&line[..space], BTreeMap::new(), &line[space..])
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    value.is_finite().then(|| Sample { name: name.to_owned(), labels, value })
}

/// `a="x",b="y\"z"` into a map, undoing OpenMetrics' escapes.
fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            return Some(labels);
        }
        if chars.next() != Some('=') || chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        }
        labels.insert(key.trim().to_owned(), value);
    }
}

/// Writes EMF lines for `metrics` to standard output every `interval`, and
/// once more at shutdown; `hooks` bring gauges (queue depths) up to date
/// first, as a scrape of `/metrics` would.
pub fn spawn_emf(
    metrics: Metrics,
    encoder: EmfEncoder,
    hooks: Vec<std::sync::Arc<dyn crate::ScrapeHook>>,
    interval: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut encoder = encoder;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            let last = tokio::select! {
                () = shutdown.cancelled() => true,
                _ = ticks.tick() => false,
            };
            for hook in &hooks {
                hook.before_scrape().await;
            }
            encoder.write(&metrics);
            if last {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(line: &str) -> Value {
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn counters_are_sent_as_increases_under_the_names_of_the_metrics_endpoint() {
        let metrics = Metrics::new();
        let mut emf = EmfEncoder::new("den/test");
        metrics.job_sent("jobs", "persona.reply");
        metrics.job_sent("jobs", "persona.reply");
        let first = emf.lines(&metrics.encode(), 1_000);
        let line = first.iter().map(|l| parsed(l)).find(|v| v.get("den_jobs_sent_total").is_some()).unwrap();
        assert_eq!(line["den_jobs_sent_total"], 2.0);
        assert_eq!((line["queue"].as_str(), line["kind"].as_str()), (Some("jobs"), Some("persona.reply")));
        let aws = &line["_aws"];
        assert_eq!(aws["Timestamp"], 1_000);
        assert_eq!(aws["CloudWatchMetrics"][0]["Namespace"], "den/test");
        let dims: Vec<&str> =
            aws["CloudWatchMetrics"][0]["Dimensions"][0].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert_eq!(dims, ["kind", "queue"]);
        assert!(metrics.encode().contains("den_jobs_sent_total{"), "the same name as /metrics");

        metrics.job_sent("jobs", "persona.reply");
        let second = emf.lines(&metrics.encode(), 2_000);
        let line = second.iter().map(|l| parsed(l)).find(|v| v.get("den_jobs_sent_total").is_some()).unwrap();
        assert_eq!(line["den_jobs_sent_total"], 1.0, "the increase since the last line");

        let quiet = emf.lines(&metrics.encode(), 3_000);
        assert!(
            quiet.iter().all(|l| parsed(l).get("den_jobs_sent_total").is_none()),
            "a counter that did not move is not sent"
        );
    }

    #[test]
    fn gauges_are_sent_as_values_and_histograms_as_sum_and_count() {
        let metrics = Metrics::new();
        metrics.set_queue_depth("jobs", den_storage::QueueDepth { visible: 7, in_flight: 2, delayed: 0 });
        metrics.job_finished("jobs", "k", crate::JobOutcome::Succeeded, Duration::from_millis(250));
        let mut emf = EmfEncoder::new("den");
        let lines: Vec<Value> = emf.lines(&metrics.encode(), 5).iter().map(|l| parsed(l)).collect();
        let visible = lines.iter().find(|l| l["state"] == "visible" && l["queue"] == "jobs").unwrap();
        assert_eq!(visible["den_queue_messages"], 7.0);
        let job = lines.iter().find(|l| l.get("den_job_duration_seconds_count").is_some()).unwrap();
        assert_eq!(job["den_job_duration_seconds_count"], 1.0);
        assert!((job["den_job_duration_seconds_sum"].as_f64().unwrap() - 0.25).abs() < 1e-9);
        assert!(lines.iter().all(|l| l.as_object().unwrap().keys().all(|k| !k.ends_with("_bucket"))));
        let second: Vec<Value> = emf.lines(&metrics.encode(), 6).iter().map(|l| parsed(l)).collect();
        let visible = second.iter().find(|l| l["state"] == "visible" && l["queue"] == "jobs").unwrap();
        assert_eq!(visible["den_queue_messages"], 7.0, "a gauge is its value every time");
    }

    #[test]
    fn only_included_prefixes_are_sent() {
        let metrics = Metrics::new();
        metrics.set_queue_depth("jobs", den_storage::QueueDepth { visible: 1, in_flight: 0, delayed: 0 });
        metrics.job_sent("jobs", "k");
        let mut emf = EmfEncoder::new("den").include(vec!["den_jobs_".into()]);
        let names: Vec<String> = emf
            .lines(&metrics.encode(), 1)
            .iter()
            .flat_map(|l| parsed(l)["_aws"]["CloudWatchMetrics"][0]["Metrics"].as_array().unwrap().clone())
            .filter_map(|m| m["Name"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(names, ["den_jobs_sent_total"]);
    }

    #[test]
    fn escaped_label_values_round_trip() {
        let sample = parse_sample(r#"den_x_total{kind="a\"b",q="c\\d"} 3"#).unwrap();
        assert_eq!(sample.labels["kind"], "a\"b");
        assert_eq!(sample.labels["q"], "c\\d");
        assert_eq!(sample.value, 3.0);
        assert!(parse_sample("den_x_total{kind=\"unterminated} 3").is_none());
    }
}
