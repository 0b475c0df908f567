//! Persona files: one TOML file per persona, a directory of them, reloaded
//! when the directory changes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// A memory trigger: when a message matches, the persona recalls `recall`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryTrigger {
    /// Keywords (any of them, case-insensitive, whole words) ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
    /// ... or a regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// What the persona recalls or brings up.
    pub recall: String,
}

/// A persona, as its file describes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persona {
    /// Stable id: `[a-z0-9-]{1,32}`; commands and memories use it.
    pub id: String,
    /// The name it posts under.
    pub name: String,
    /// A shorter name people call it by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
    /// Who or what it is modelled on.
    #[serde(default)]
    pub modelled_on: String,
    /// Whether that is a real person (then `consent` is required).
    #[serde(default)]
    pub real_person: bool,
    /// How that person agreed to be modelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<String>,
    /// A few sentences of who it is.
    #[serde(default)]
    pub description: String,
    /// Character traits.
    #[serde(default)]
    pub traits: Vec<String>,
    /// How it talks.
    #[serde(default)]
    pub speech_patterns: Vec<String>,
    /// What it cares about.
    #[serde(default)]
    pub interests: Vec<String>,
    /// Things it says.
    #[serde(default)]
    pub catchphrases: Vec<String>,
    /// How it roasts.
    #[serde(default)]
    pub roast_style: String,
    /// 1 (gentle teasing) to 5 (savage, still within the rules).
    #[serde(default = "default_intensity")]
    pub intensity: u8,
    /// Topics it never touches.
    #[serde(default)]
    pub never_topics: Vec<String>,
    /// Memory triggers.
    #[serde(default)]
    pub memory_triggers: Vec<MemoryTrigger>,
    /// Chance (0-1) that it chimes in unprompted where chime-ins are on.
    #[serde(default = "default_talkativeness")]
    pub talkativeness: f64,
    /// Avatar image URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    /// A provider other than `llm.primary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// A model other than the provider's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Environment variable holding this persona's own bot token (multi-bot mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// Discord user id of the person who may steer it (Higher Self).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u64>,
}

fn default_intensity() -> u8 {
    3
}

fn default_talkativeness() -> f64 {
    0.3
}

/// What is wrong with a persona file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct PersonaError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, naming the field.
    pub message: String,
}

impl Persona {
    /// Reads and checks one persona file.
    pub fn load(path: &Path) -> Result<Self, PersonaError> {
        let err = |message: String| PersonaError { path: path.to_owned(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let persona: Persona = toml::from_str(&text).map_err(|e| err(e.to_string().trim().replace('\n', " ")))?;
        persona.validate().map_err(err)?;
        Ok(persona)
    }

    /// Checks the fields; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let id_ok = (1..=32).contains(&self.id.len())
            && self.id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !id_ok {
            return Err(format!("id {:?}: 1-32 characters of a-z, 0-9 and -", self.id));
        }
        if self.name.trim().is_empty() || self.name.chars().count() > 80 {
            return Err("name: 1-80 characters".into());
        }
        if let Some(n) = &self.nickname
            && (n.trim().is_empty() || n.chars().count() > 32)
        {
            return Err("nickname: 1-32 characters".into());
        }
        if !(1..=5).contains(&self.intensity) {
            return Err(format!("intensity {}: 1 to 5", self.intensity));
        }
        if !(0.0..=1.0).contains(&self.talkativeness) {
            return Err(format!("talkativeness {}: 0 to 1", self.talkativeness));
        }
        if self.real_person && self.consent.as_deref().is_none_or(|c| c.trim().is_empty()) {
            return Err("consent: required when real_person = true (say how the person agreed)".into());
        }
        if let Some(url) = &self.avatar_url
            && !url.starts_with("https://")
        {
            return Err(format!("avatar_url {url:?}: must start with https://"));
        }
        for (i, t) in self.memory_triggers.iter().enumerate() {
            if t.keywords.is_empty() && t.regex.is_none() {
                return Err(format!("memory_triggers[{i}]: needs keywords or regex"));
            }
            if let Some(r) = &t.regex {
                regex::RegexBuilder::new(r)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("memory_triggers[{i}].regex: {e}"))?;
            }
            if t.recall.trim().is_empty() {
                return Err(format!("memory_triggers[{i}].recall: empty"));
            }
        }
        Ok(())
    }

    /// The names people call it by (name, then nickname).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.nickname.as_deref())
    }

    /// Whether `text` calls it by name (whole words, any case).
    #[must_use]
    pub fn is_named_in(&self, text: &str) -> bool {
        self.names().any(|n| contains_words(text, n)) || contains_words(text, &self.id)
    }

    /// What its memory triggers recall for `text`.
    #[must_use]
    pub fn triggered_recalls(&self, text: &str) -> Vec<&str> {
        self.memory_triggers
            .iter()
            .filter(|t| {
                t.keywords.iter().any(|k| contains_words(text, k))
                    || t.regex.as_deref().is_some_and(|r| {
                        regex::RegexBuilder::new(r)
                            .case_insensitive(true)
                            .size_limit(1 << 20)
                            .build()
                            .is_ok_and(|re| re.is_match(text))
                    })
            })
            .map(|t| t.recall.as_str())
            .collect()
    }
}

/// Whether `needle` occurs in `hay` as whole words, ignoring case.
#[must_use]
pub fn contains_words(hay: &str, needle: &str) -> bool {
    let hay = hay.to_lowercase();
    let needle = needle.trim().to_lowercase();
    if needle.is_empty() {
        return false;
    }
    let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    hay.match_indices(&needle)
        .any(|(i, m)| !word(hay[..i].chars().next_back()) && !word(hay[i + m.len()..].chars().next()))
}

/// The personas of a directory, reloaded when its files change. A broken file
/// is reported and skipped; the others keep working, and a persona whose file
/// breaks keeps its last good version.
#[derive(Debug)]
pub struct PersonaSet {
    dir: Option<PathBuf>,
    inner: RwLock<Loaded>,
}

#[derive(Debug, Default)]
struct Loaded {
    fingerprint: Vec<(PathBuf, Option<SystemTime>, u64)>,
    personas: Vec<Arc<Persona>>,
    errors: Vec<String>,
}

impl PersonaSet {
    /// A fixed set (tests, `den chat` with one file).
    #[must_use]
    pub fn fixed(personas: Vec<Persona>) -> Self {
        let personas = personas.into_iter().map(Arc::new).collect();
        Self { dir: None, inner: RwLock::new(Loaded { personas, ..Loaded::default() }) }
    }

    /// The personas of `dir` (`*.toml`); a missing directory is an empty set.
    #[must_use]
    pub fn open(dir: &Path) -> Self {
        let set = Self { dir: Some(dir.to_owned()), inner: RwLock::default() };
        set.reload_if_changed();
        set
    }

    /// Every persona, in id order.
    #[must_use]
    pub fn all(&self) -> Vec<Arc<Persona>> {
        self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner).personas.clone()
    }

    /// The persona with this id, name or nickname (any case).
    #[must_use]
    pub fn find(&self, key: &str) -> Option<Arc<Persona>> {
        let key = key.trim().to_lowercase();
        self.all().into_iter().find(|p| p.id == key || p.names().any(|n| n.to_lowercase() == key))
    }

    /// What was wrong with files at the last load.
    #[must_use]
    pub fn errors(&self) -> Vec<String> {
        self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner).errors.clone()
    }

    /// Reloads when a file was added, removed or changed; returns whether it did.
    pub fn reload_if_changed(&self) -> bool {
        let Some(dir) = &self.dir else { return false };
        let fingerprint = fingerprint(dir);
        {
            let inner = self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if inner.fingerprint == fingerprint && !fingerprint.is_empty() {
                return false;
            }
        }
        let mut inner = self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = std::mem::take(&mut inner.personas);
        let mut personas: Vec<Arc<Persona>> = Vec::new();
        let mut errors = Vec::new();
        for (path, _, _) in &fingerprint {
            match Persona::load(path) {
                Ok(p) if personas.iter().any(|q| q.id == p.id) => {
                    errors.push(format!("{}: id {:?} is used by another file", path.display(), p.id));
                }
                Ok(p) => personas.push(Arc::new(p)),
                Err(e) => {
                    tracing::warn!(error = %e, "persona file skipped");
                    // Keep the last good version of a persona whose file broke.
                    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
                    if let Some(old) = previous.iter().find(|p| p.id == stem) {
                        personas.push(old.clone());
                    }
                    errors.push(e.to_string());
                }
            }
        }
        personas.sort_by(|a, b| a.id.cmp(&b.id));
        *inner = Loaded { fingerprint, personas, errors };
        true
    }
}

fn fingerprint(dir: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map_or(0, |m| m.len());
            (p, modified, len)
        })
        .collect();
    out.sort();
    out
}

/// A new persona file's text, with every field shown.
#[must_use]
pub fn template(id: &str, name: &str) -> String {
    format!(
        r#"# A den persona. Reference: README.md, "Personas".
id = "{id}"
name = "{name}"
# nickname = ""
modelled_on = "an original character"
real_person = false            # true requires `consent`
# consent = "Asked in person on 2026-01-01; may withdraw at any time."
description = "Who they are, in two or three sentences."
traits = ["sharp", "warm underneath"]
speech_patterns = ["short sentences", "rhetorical questions"]
interests = ["gardening"]
catchphrases = ["Well, I never."]
roast_style = "dry understatement"
intensity = 3                  # 1 gentle .. 5 savage (always within the rules)
never_topics = ["family tragedies"]
talkativeness = 0.3            # chance of chiming in unprompted, where enabled
# avatar_url = "https://example.org/avatar.png"
# provider = "anthropic"       # a provider other than llm.primary
# model = "claude-haiku-4-5"
# token_env = "{upper}_TOKEN"  # its own bot account (multi-bot mode)
# owner = 123456789012345678   # the Discord user who may steer it (Higher Self)

[[memory_triggers]]
keywords = ["garden"]
recall = "They once won a prize for marrows and have not stopped talking about it."
"#,
        upper = id.to_uppercase().replace('-', "_")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gran() -> Persona {
        toml::from_str(&template("grumpy-gran", "Grumpy Gran")).unwrap()
    }

    #[test]
    fn the_template_is_a_valid_persona() {
        let p = gran();
        p.validate().unwrap();
        assert_eq!(p.intensity, 3);
        assert_eq!(p.memory_triggers.len(), 1);
    }

    #[test]
    fn names_match_whole_words_in_any_case() {
        let mut p = gran();
        p.nickname = Some("Gran".into());
        assert!(p.is_named_in("hey GRAN, what now?"));
        assert!(p.is_named_in("what does grumpy gran think"));
        assert!(!p.is_named_in("the grandstand was full"));
        assert!(!p.is_named_in("nothing here"));
    }

    #[test]
    fn memory_triggers_fire_on_keywords_and_regexes() {
        let mut p = gran();
        p.memory_triggers.push(MemoryTrigger {
            keywords: vec![],
            regex: Some(r"\bbing+o\b".into()),
            recall: "B".into(),
        });
        assert_eq!(p.triggered_recalls("my Garden is lovely").len(), 1);
        assert_eq!(p.triggered_recalls("BINGGGO night"), vec!["B"]);
        assert!(p.triggered_recalls("gardening").is_empty(), "whole words only");
    }

    #[test]
    fn invalid_fields_are_named() {
        type BreakIt = fn(&mut Persona);
        let cases: [(&str, BreakIt); 5] = [
            ("id", |p| p.id = "Bad Id".into()),
            ("intensity", |p| p.intensity = 9),
            ("talkativeness", |p| p.talkativeness = 1.5),
            ("consent", |p| p.real_person = true),
            ("memory_triggers[0].regex", |p| p.memory_triggers[0].regex = Some("(".into())),
        ];
        for (field, break_it) in cases {
            let mut p = gran();
            break_it(&mut p);
            let e = p.validate().unwrap_err();
            assert!(e.starts_with(field), "{field}: {e}");
        }
    }

    #[test]
    fn a_broken_file_is_reported_and_its_last_good_version_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("grumpy-gran.toml"), template("grumpy-gran", "Grumpy Gran")).unwrap();
        std::fs::write(dir.path().join("other.toml"), template("other", "Other")).unwrap();
        let set = PersonaSet::open(dir.path());
        assert_eq!(set.all().len(), 2);
        assert!(set.errors().is_empty());

        std::fs::write(dir.path().join("grumpy-gran.toml"), "id = \"grumpy-gran\"\nname = 3\n").unwrap();
        std::fs::write(dir.path().join("new.toml"), template("new", "Newcomer")).unwrap();
        assert!(set.reload_if_changed());
        let ids: Vec<String> = set.all().iter().map(|p| p.id.clone()).collect();
        assert_eq!(ids, ["grumpy-gran", "new", "other"], "the broken one keeps its last good version");
        let errors = set.errors();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("grumpy-gran.toml") && errors[0].contains("name"), "{errors:?}");
        assert!(!set.reload_if_changed(), "nothing changed since");
        assert_eq!(set.find("NEWCOMER").unwrap().id, "new");
    }
}
