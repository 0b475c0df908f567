//! Messages with more than text: buttons and a file; threads; den's own reactions.

use reqwest::Method;
use serde_json::{Value, json};

use super::{DiscordResult, Egress, clip, local, no_pings, no_zero, nonce, snowflake};
use crate::rest::Call;

/// How a button looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ButtonStyle {
    /// Blurple: the expected choice.
    Primary,
    /// Grey.
    Secondary,
    /// Green.
    Success,
    /// Red: the dangerous choice.
    Danger,
}

/// A button under a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Button {
    /// What den receives when it is pressed (at most 100 characters).
    pub custom_id: String,
    /// Its text.
    pub label: String,
    /// A Unicode emoji shown before the text.
    pub emoji: Option<String>,
    /// Its colour.
    pub style: ButtonStyle,
    /// Shown but not pressable.
    pub disabled: bool,
}

impl Button {
    /// A grey button.
    #[must_use]
    pub fn new(custom_id: impl Into<String>, label: impl Into<String>) -> Self {
        Self {
            custom_id: custom_id.into(),
            label: label.into(),
            emoji: None,
            style: ButtonStyle::Secondary,
            disabled: false,
        }
    }

    /// With `emoji` before the label.
    #[must_use]
    pub fn emoji(mut self, emoji: &str) -> Self {
        self.emoji = Some(emoji.into());
        self
    }

    /// In `style`.
    #[must_use]
    pub fn style(mut self, style: ButtonStyle) -> Self {
        self.style = style;
        self
    }

    fn to_json(&self) -> Value {
        let style = match self.style {
            ButtonStyle::Primary => 1,
            ButtonStyle::Secondary => 2,
            ButtonStyle::Success => 3,
            ButtonStyle::Danger => 4,
        };
        let mut b = json!({"type": 2, "style": style, "label": self.label, "custom_id": self.custom_id});
        if let Some(e) = &self.emoji {
            b["emoji"] = json!({"name": e});
        }
        if self.disabled {
            b["disabled"] = true.into();
        }
        b
    }
}

/// Buttons as Discord's action rows (five to a row, five rows at most).
#[must_use]
pub fn button_rows(buttons: &[Button]) -> Value {
    buttons
        .chunks(5)
        .take(5)
        .map(|row| json!({"type": 1, "components": row.iter().map(Button::to_json).collect::<Vec<_>>()}))
        .collect()
}

/// A string select menu: one choice among up to 25 options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectMenu {
    /// What den receives with the choice (at most 100 characters).
    pub custom_id: String,
    /// Shown before anything is chosen.
    pub placeholder: String,
    /// The options: label, value (what den receives), description.
    pub options: Vec<(String, String, Option<String>)>,
}

impl SelectMenu {
    /// The menu as one action row.
    #[must_use]
    pub fn row(&self) -> Value {
        let cut = |s: &str, n: usize| s.chars().take(n).collect::<String>();
        let options: Vec<Value> = self
            .options
            .iter()
            .take(25)
            .map(|(label, value, description)| {
                let mut o = json!({"label": cut(label, 100), "value": cut(value, 100)});
                if let Some(d) = description {
                    o["description"] = cut(d, 100).into();
                }
                o
            })
            .collect();
        json!({"type": 1, "components": [{
            "type": 3, "custom_id": cut(&self.custom_id, 100), "placeholder": cut(&self.placeholder, 150),
            "min_values": 1, "max_values": 1, "options": options,
        }]})
    }
}

/// A message den posts: text, buttons under it, and at most one file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outgoing {
    /// Text (cut to 2,000 characters).
    pub content: String,
    /// Buttons.
    pub buttons: Vec<Button>,
    /// A file: its name and bytes.
    pub file: Option<(String, Vec<u8>)>,
}

impl Outgoing {
    /// A message of `content`.
    #[must_use]
    pub fn text(content: impl Into<String>) -> Self {
        Self { content: content.into(), ..Self::default() }
    }

    /// With `buttons`.
    #[must_use]
    pub fn buttons(mut self, buttons: Vec<Button>) -> Self {
        self.buttons = buttons;
        self
    }

    /// With a file.
    #[must_use]
    pub fn file(mut self, name: impl Into<String>, bytes: Vec<u8>) -> Self {
        self.file = Some((name.into(), bytes));
        self
    }
}

/// Emoji in a URL path, as Discord's reaction routes take it.
fn emoji_path(emoji: &str) -> String {
    emoji.bytes().map(|b| format!("%{b:02X}")).collect()
}

impl Egress {
    /// Posts `message` in `channel` once per `key` (an enforced nonce, so a
    /// retry after a lost answer never posts it twice); returns its id.
    pub async fn post(&self, channel: u64, message: &Outgoing, key: &str) -> DiscordResult<u64> {
        no_zero(channel, "post message")?;
        let mut body = json!({
            "content": clip(&message.content),
            "nonce": nonce(key, 0),
            "enforce_nonce": true,
            "allowed_mentions": no_pings(),
        });
        if !message.buttons.is_empty() {
            body["components"] = button_rows(&message.buttons);
        }
        let mut call = Call::new(Method::POST, format!("/channels/{channel}/messages"));
        if let Some((name, bytes)) = &message.file {
            body["attachments"] = json!([{"id": "0", "filename": name}]);
            call = call.file(name, bytes);
        }
        let v = self.call("post message", call.json(&body)).await?;
        snowflake(&v["id"]).ok_or_else(|| local("post message", "no message id"))
    }

    /// Replaces the text and buttons of one of den's messages (no buttons removes them).
    pub async fn edit(&self, channel: u64, message: u64, content: &str, buttons: &[Button]) -> DiscordResult<()> {
        no_zero(channel, "edit message")?;
        no_zero(message, "edit message")?;
        let body =
            json!({"content": clip(content), "components": button_rows(buttons), "allowed_mentions": no_pings()});
        let call = Call::new(Method::PATCH, format!("/channels/{channel}/messages/{message}"))
            .bucket(format!("PATCH /channels/{channel}/messages"))
            .json(&body);
        self.call("edit message", call).await.map(|_| ())
    }

    /// Replaces the text and buttons of an interaction's original response.
    pub async fn edit_original_with(&self, token: &str, content: &str, buttons: &[Button]) -> DiscordResult<()> {
        self.edit_original_rows(token, content, button_rows(buttons)).await
    }

    /// Replaces the text and components (action rows: buttons, select menus)
    /// of an interaction's original response.
    pub async fn edit_original_rows(&self, token: &str, content: &str, rows: Value) -> DiscordResult<()> {
        let app = no_zero(self.app_id(), "edit original response")?;
        let body = json!({"content": clip(content), "components": rows, "allowed_mentions": no_pings()});
        let call = Call::new(Method::PATCH, format!("/webhooks/{app}/{token}/messages/@original"))
            .unauthenticated()
            .json(&body);
        self.call("edit original response", call).await.map(|_| ())
    }

    /// Takes the buttons off one of den's messages, leaving its text.
    pub async fn remove_buttons(&self, channel: u64, message: u64) -> DiscordResult<()> {
        no_zero(channel, "edit message")?;
        no_zero(message, "edit message")?;
        let body = json!({"components": []});
        let call = Call::new(Method::PATCH, format!("/channels/{channel}/messages/{message}"))
            .bucket(format!("PATCH /channels/{channel}/messages"))
            .json(&body);
        self.call("edit message", call).await.map(|_| ())
    }

    /// Starts a public thread named `name` on `message` in `channel`; returns
    /// its id (which is the message's, as Discord makes it). Starting it again
    /// finds the thread already there and answers the same id.
    pub async fn start_thread(&self, channel: u64, message: u64, name: &str) -> DiscordResult<u64> {
        no_zero(channel, "start thread")?;
        no_zero(message, "start thread")?;
        let name: String = name.chars().take(100).collect();
        let body = json!({"name": if name.trim().is_empty() { "den".to_owned() } else { name }, "auto_archive_duration": 1440});
        let call = Call::new(Method::POST, format!("/channels/{channel}/messages/{message}/threads")).json(&body);
        match self.call("start thread", call).await {
            Ok(v) => snowflake(&v["id"]).ok_or_else(|| local("start thread", "no thread id")),
            // "A thread has already been created for this message": a retry whose first try landed.
            Err(e) if e.code == Some(160_004) => Ok(message),
            Err(e) => Err(e),
        }
    }

    /// Adds den's reaction `emoji` (a Unicode emoji) to a message.
    pub async fn react(&self, channel: u64, message: u64, emoji: &str) -> DiscordResult<()> {
        no_zero(channel, "add reaction")?;
        no_zero(message, "add reaction")?;
        let path = format!("/channels/{channel}/messages/{message}/reactions/{}/@me", emoji_path(emoji));
        let call = Call::new(Method::PUT, path).bucket(format!("PUT /channels/{channel}/messages/reactions"));
        self.call("add reaction", call).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buttons_become_rows_of_five_and_emoji_are_escaped_for_paths() {
        let buttons: Vec<Button> = (0..7).map(|i| Button::new(format!("b{i}"), "x").emoji("🛑")).collect();
        let rows = button_rows(&buttons);
        assert_eq!(rows.as_array().unwrap().len(), 2);
        assert_eq!(rows[0]["components"].as_array().unwrap().len(), 5);
        assert_eq!(rows[1]["components"][1]["custom_id"], "b6");
        assert_eq!(rows[0]["components"][0]["emoji"]["name"], "🛑");
        assert_eq!(emoji_path("👍"), "%F0%9F%91%8D");
    }
}
