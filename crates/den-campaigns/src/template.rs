//! Campaign templates: the roles, category and channels a campaign gets.

use den_discord::guild::ChannelKind;
use serde::{Deserialize, Serialize};

/// The shipped default: the original bot's channel set.
pub const DEFAULT: &str = include_str!("../templates/default.toml");

/// A channel of a template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelTemplate {
    /// Name (`{name}` is the campaign's).
    pub name: String,
    /// Type (default text).
    #[serde(default = "text")]
    pub kind: ChannelKind,
    /// Topic (text and forum).
    #[serde(default)]
    pub topic: Option<String>,
    /// Only the GM (and den) see it.
    #[serde(default)]
    pub private: bool,
    /// Forum tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

fn text() -> ChannelKind {
    ChannelKind::Text
}

/// A template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Its name (`/add-campaign template:`).
    pub name: String,
    /// What it makes.
    #[serde(default)]
    pub description: String,
    /// The members role's name.
    #[serde(default = "members_role")]
    pub members_role: String,
    /// The GM role's name (used when no GM member is named).
    #[serde(default = "gm_role")]
    pub gm_role: String,
    /// The category's name.
    #[serde(default = "category")]
    pub category: String,
    /// The channels, in order.
    #[serde(rename = "channel")]
    pub channels: Vec<ChannelTemplate>,
}

fn members_role() -> String {
    "{name} Members".into()
}
fn gm_role() -> String {
    "{name} GM".into()
}
fn category() -> String {
    "{name}".into()
}

impl Template {
    /// Parses and checks a TOML template; the error names the field.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let t: Template = toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))?;
        t.validate()?;
        Ok(t)
    }

    /// Parses a template in JSON (the TOML's structure).
    pub fn from_json(text: &str) -> Result<Self, String> {
        let t: Template = serde_json::from_str(text).map_err(|e| e.to_string())?;
        t.validate()?;
        Ok(t)
    }

    /// Parses a Markdown list: one channel per item, `- name (flags): topic`,
    /// where flags are any of `text`, `voice`, `forum`, `private`, comma
    /// separated; other lines are ignored.
    pub fn from_markdown(name: &str, text: &str) -> Result<Self, String> {
        let mut channels = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let Some(item) = line.trim().strip_prefix("- ").or_else(|| line.trim().strip_prefix("* ")) else {
                continue;
            };
            let (head, topic) = match item.split_once(':') {
                Some((h, t)) => (h.trim(), Some(t.trim().to_owned()).filter(|t| !t.is_empty())),
                None => (item.trim(), None),
            };
            let (cname, flags) = match head.split_once('(') {
                Some((c, f)) => {
                    (c.trim(), f.trim_end_matches(')').split(',').map(|f| f.trim().to_lowercase()).collect())
                }
                None => (head, Vec::new()),
            };
            let mut c = ChannelTemplate {
                name: cname.to_owned(),
                kind: ChannelKind::Text,
                topic,
                private: false,
                tags: vec![],
            };
            for f in flags.iter().filter(|f| !f.is_empty()) {
                match f.as_str() {
                    "text" => c.kind = ChannelKind::Text,
                    "voice" => c.kind = ChannelKind::Voice,
                    "forum" => c.kind = ChannelKind::Forum,
                    "private" | "gm" | "gm-only" => c.private = true,
                    other => {
                        return Err(format!("line {}: unknown flag {other:?} (text, voice, forum, private)", n + 1));
                    }
                }
            }
            channels.push(c);
        }
        let t = Template {
            name: name.to_owned(),
            description: String::new(),
            members_role: members_role(),
            gm_role: gm_role(),
            category: category(),
            channels,
        };
        t.validate()?;
        Ok(t)
    }

    /// Reads a template file by its extension: `.toml`, `.json` or `.md`.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = path.file_name().and_then(|s| s.to_str()).unwrap_or("template.toml");
        Self::from_named_text(name, &text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses `text` by the extension of `filename` (a Markdown list takes its name from the file).
    pub fn from_named_text(filename: &str, text: &str) -> Result<Self, String> {
        let path = std::path::Path::new(filename);
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("template");
        match path.extension().and_then(|e| e.to_str()).unwrap_or_default() {
            "toml" => Self::from_toml(text),
            "json" => Self::from_json(text),
            "md" | "markdown" => Self::from_markdown(stem, text),
            other => Err(format!("unknown template type {other:?}: use .toml, .json or .md")),
        }
    }

    /// One line about what it makes.
    #[must_use]
    pub fn describe(&self) -> String {
        let count = |k| self.channels.iter().filter(|c| c.kind == k).count();
        format!(
            "{}: {} channels ({} text, {} voice, {} forum), {} GM-only",
            self.name,
            self.channels.len(),
            count(ChannelKind::Text),
            count(ChannelKind::Voice),
            count(ChannelKind::Forum),
            self.channels.iter().filter(|c| c.private).count()
        )
    }

    /// The shipped default.
    #[must_use]
    pub fn default_template() -> Self {
        // Covered by a test: the shipped file always parses.
        Self::from_toml(DEFAULT).unwrap_or_else(|e| unreachable!("the default template is broken: {e}"))
    }

    /// Checks Discord's limits: 1-50 channels under one category, names of
    /// 1-100 characters, no duplicate names, forum tags only on forums (≤ 20,
    /// names ≤ 20 characters), no categories inside the category.
    pub fn validate(&self) -> Result<(), String> {
        if self.channels.is_empty() || self.channels.len() > 50 {
            return Err(format!("channel: {} channels; a category holds 1 to 50", self.channels.len()));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, c) in self.channels.iter().enumerate() {
            let name = c.name.trim();
            if name.is_empty() || name.chars().count() > 90 {
                return Err(format!("channel[{i}].name: 1 to 90 characters"));
            }
            if c.kind == ChannelKind::Category {
                return Err(format!("channel[{i}].kind: a category cannot hold another"));
            }
            if !c.tags.is_empty() && c.kind != ChannelKind::Forum {
                return Err(format!("channel[{i}].tags: only forums have tags"));
            }
            if c.tags.len() > 20 || c.tags.iter().any(|t| t.trim().is_empty() || t.chars().count() > 20) {
                return Err(format!("channel[{i}].tags: at most 20 tags of 1 to 20 characters"));
            }
            if !seen.insert(den_discord::guild::channel_name(name, c.kind)) {
                return Err(format!("channel[{i}].name: {name:?} appears twice"));
            }
        }
        // With the campaign's name in them, a template's role and category can
        // never be named like the server's own ("Moderators", "Text Channels").
        for (field, v) in
            [("members_role", &self.members_role), ("gm_role", &self.gm_role), ("category", &self.category)]
        {
            if !v.contains("{name}") {
                return Err(format!("{field}: must contain {{name}}, the campaign's name (e.g. \"{{name}} Players\")"));
            }
        }
        Ok(())
    }
}

/// Fills `{name}` in.
#[must_use]
pub fn fill(pattern: &str, name: &str) -> String {
    pattern.replace("{name}", name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_template_is_the_original_set() {
        let t = Template::default_template();
        let count = |k| t.channels.iter().filter(|c| c.kind == k).count();
        assert_eq!((count(ChannelKind::Text), count(ChannelKind::Voice), count(ChannelKind::Forum)), (7, 1, 3));
        let private: Vec<&str> = t.channels.iter().filter(|c| c.private).map(|c| c.name.as_str()).collect();
        assert_eq!(private, ["gm-notes", "gm-planning"]);
        assert!(t.channels.iter().filter(|c| c.kind == ChannelKind::Forum).all(|c| !c.tags.is_empty()));
    }

    #[test]
    fn markdown_and_json_templates_parse_like_toml() {
        let md = "# One-shot\nSome prose.\n- table-talk: chatter\n- gm-screen (private)\n* voice-room (voice)\n- handouts (forum, private): maps\n";
        let t = Template::from_markdown("one-shot", md).unwrap();
        assert_eq!(t.describe(), "one-shot: 4 channels (2 text, 1 voice, 1 forum), 2 GM-only");
        assert_eq!(t.channels[0].topic.as_deref(), Some("chatter"));
        assert!(Template::from_markdown("x", "- a (stage)").unwrap_err().contains("unknown flag \"stage\""));
        let json = serde_json::to_string(&Template::default_template()).unwrap();
        assert_eq!(Template::from_json(&json).unwrap(), Template::default_template());
    }

    #[test]
    fn broken_templates_name_the_field() {
        let cases = [
            ("name = \"x\"\nchannel = []\n", "channel: 0 channels"),
            ("name = \"x\"\n[[channel]]\nname = \"a\"\ntags = [\"t\"]\n", "channel[0].tags: only forums"),
            ("name = \"x\"\n[[channel]]\nname = \"a\"\n[[channel]]\nname = \"A\"\n", "channel[1].name"),
            ("name = \"x\"\n[[channel]]\nname = \"a\"\nkind = \"category\"\n", "channel[0].kind"),
            ("name = \"x\"\n[[channel]]\nname = \"a\"\nkind = \"stage\"\n", "unknown variant"),
            (
                "name = \"x\"\nmembers_role = \"Moderators\"\n[[channel]]\nname = \"a\"\n",
                "members_role: must contain {name}",
            ),
            (
                "name = \"x\"\ncategory = \"Text Channels\"\n[[channel]]\nname = \"a\"\n",
                "category: must contain {name}",
            ),
        ];
        for (text, expected) in cases {
            let e = Template::from_toml(text).unwrap_err();
            assert!(e.contains(expected), "{expected}: {e}");
        }
    }
}
