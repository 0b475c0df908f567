//! den's webhook of each channel (found, created, remembered, recreated when
//! deleted) and posting through it under a persona's name and avatar.

use den_storage::Put;
use reqwest::Method;
use serde_json::{Value, json};

use super::{
    DiscordErrorKind, DiscordResult, Egress, Identity, Landed, Poster, clip, local, no_pings, no_zero, snowflake,
};
use crate::rest::Call;
use crate::split::{MAX_MESSAGE_CHARS, split_message};

/// Makes a name Discord accepts for a webhook message: 1 to 80 characters,
/// without "clyde" or "discord" in any case (Discord refuses those; twilight
/// only checks the exact word "clyde").
#[must_use]
pub fn sanitize_webhook_name(name: &str) -> String {
    let mut out: String = name.chars().filter(|c| !c.is_control()).collect();
    for banned in ["clyde", "discord"] {
        loop {
            let lower = out.to_lowercase();
            let Some(at) = lower.find(banned) else { break };
            // Same byte length in lower case for these ASCII words; break the word with a zero-width joiner.
            let split = at + 1;
            if !out.is_char_boundary(split) {
                break;
            }
            out.insert(split, '\u{200d}');
            if out.to_lowercase().contains(banned) {
                // The lowercase mapping shifted bytes (non-ASCII before it): fall back to a plain name.
                return "den".into();
            }
        }
    }
    let trimmed: String = out.trim().chars().take(80).collect();
    if trimmed.is_empty() { "den".into() } else { trimmed }
}

/// A den-owned webhook of one channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct WebhookRef {
    id: u64,
    token: String,
}

impl Egress {
    /// den's webhook in `channel`: cached, else stored, else found among the
    /// channel's webhooks, else created.
    async fn webhook(&self, channel: u64) -> DiscordResult<WebhookRef> {
        if let Some(w) = self.cached_webhook(channel) {
            return Ok(w);
        }
        let _setup = self.webhook_setup.lock().await;
        // Someone may have set it up while we waited.
        if let Some(w) = self.cached_webhook(channel) {
            return Ok(w);
        }
        let key = format!("channel:{channel}");
        if let Some(table) = &self.webhook_table
            && let Ok(Some(item)) = table.get(&key, "webhook").await
            && let (Some(wid), Some(token)) =
                (item.attrs.get("id").and_then(Value::as_u64), item.attrs.get("token").and_then(Value::as_str))
        {
            let w = WebhookRef { id: wid, token: token.to_owned() };
            self.remember_webhook(channel, &w);
            return Ok(w);
        }
        no_zero(channel, "find webhook")?;
        let w = match self.owned_webhook(channel).await? {
            Some(w) => w,
            None => {
                let body = json!({"name": "den"});
                let call = Call::new(Method::POST, format!("/channels/{channel}/webhooks")).json(&body);
                let found = || async move {
                    match self.owned_webhook(channel).await {
                        Ok(Some(w)) => Landed::Yes(json!({"id": w.id.to_string(), "token": w.token})),
                        Ok(None) => Landed::No,
                        Err(_) => Landed::Unknown,
                    }
                };
                let v = self.create("create webhook", call, found).await?;
                WebhookRef {
                    id: snowflake(&v["id"]).ok_or_else(|| local("create webhook", "no id in answer"))?,
                    token: v["token"].as_str().ok_or_else(|| local("create webhook", "no token in answer"))?.to_owned(),
                }
            }
        };
        if let Some(table) = &self.webhook_table {
            let mut attrs = serde_json::Map::new();
            attrs.insert("id".into(), w.id.into());
            attrs.insert("token".into(), w.token.clone().into());
            if let Err(e) = table.put(Put::new(key, "webhook", attrs)).await {
                tracing::warn!(error = %e, "could not store the webhook; it will be looked up again");
            }
        }
        self.remember_webhook(channel, &w);
        Ok(w)
    }

    /// A webhook of `channel` that den's application owns, if there is one.
    async fn owned_webhook(&self, channel: u64) -> DiscordResult<Option<WebhookRef>> {
        let list = self.call("list webhooks", Call::new(Method::GET, format!("/channels/{channel}/webhooks"))).await?;
        let app = self.app_id();
        Ok(list.as_array().into_iter().flatten().find_map(|w| {
            let owned = snowflake(&w["application_id"]) == Some(app);
            let token = w["token"].as_str()?;
            owned.then(|| Some(WebhookRef { id: snowflake(&w["id"])?, token: token.to_owned() })).flatten()
        }))
    }

    fn cached_webhook(&self, channel: u64) -> Option<WebhookRef> {
        self.webhooks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&channel).cloned()
    }

    fn remember_webhook(&self, channel: u64, w: &WebhookRef) {
        self.webhooks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(channel, w.clone());
    }

    async fn forget_webhook(&self, channel: u64) {
        self.webhooks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&channel);
        if let Some(table) = &self.webhook_table {
            let _ = table.delete(&format!("channel:{channel}"), "webhook", den_storage::Condition::None).await;
        }
    }

    /// Posts `text` in `channel` under `identity` through den's webhook,
    /// split as needed. A deleted webhook is recreated once. Returns the message ids.
    pub async fn send_as(&self, channel: u64, identity: &Identity, text: &str) -> DiscordResult<Vec<u64>> {
        let mut ids = Vec::new();
        for piece in split_message(text, MAX_MESSAGE_CHARS) {
            ids.push(self.webhook_call(channel, |w| self.execute(channel, w, identity, &piece)).await?);
        }
        Ok(ids)
    }

    /// Who a post by `identity` through den's webhook in `channel` appears as,
    /// to find it again ([`Egress::find_posted`]).
    pub async fn webhook_poster(&self, channel: u64, identity: &Identity) -> DiscordResult<Poster> {
        let w = self.webhook(channel).await?;
        Ok(Poster::Webhook { id: w.id, name: sanitize_webhook_name(&identity.name) })
    }

    /// Replaces the text of a message den posted through its webhook in `channel`.
    pub async fn edit_as(&self, channel: u64, message: u64, text: &str) -> DiscordResult<()> {
        no_zero(message, "edit webhook message")?;
        let body = json!({"content": clip(text), "allowed_mentions": no_pings()});
        let body = &body;
        self.webhook_call(channel, |w| async move {
            let call = Call::new(Method::PATCH, format!("/webhooks/{}/{}/messages/{message}", w.id, w.token))
                .bucket(format!("PATCH /webhooks/{}/{}/messages", w.id, w.token))
                .unauthenticated()
                .json(body);
            self.call("edit webhook message", call).await.map(|_| 0)
        })
        .await?;
        Ok(())
    }

    /// Runs `call` with the channel's webhook; on 404 (deleted) recreates it and tries once more.
    async fn webhook_call<'a, F, Fut>(&'a self, channel: u64, call: F) -> DiscordResult<u64>
    where
        F: Fn(WebhookRef) -> Fut,
        Fut: Future<Output = DiscordResult<u64>> + 'a,
    {
        let w = self.webhook(channel).await?;
        match call(w).await {
            Err(e) if e.kind() == DiscordErrorKind::NotFound && e.code == Some(10015) => {
                tracing::info!(channel, "den's webhook was deleted; creating a new one");
                self.forget_webhook(channel).await;
                let w = self.webhook(channel).await?;
                call(w).await
            }
            other => other,
        }
    }

    async fn execute(&self, channel: u64, w: WebhookRef, identity: &Identity, text: &str) -> DiscordResult<u64> {
        let name = sanitize_webhook_name(&identity.name);
        let mut body = json!({"content": text, "username": name, "allowed_mentions": no_pings()});
        if let Some(avatar) = &identity.avatar_url {
            body["avatar_url"] = avatar.clone().into();
        }
        let call =
            Call::new(Method::POST, format!("/webhooks/{}/{}?wait=true", w.id, w.token)).unauthenticated().json(&body);
        let since = den_core::Clock::now(&den_core::SystemClock);
        let poster = Poster::Webhook { id: w.id, name };
        let what = "execute webhook";
        let posted = |v: Value| snowflake(&v["id"]).ok_or_else(|| local(what, "no message id"));
        self.retry(
            what,
            None,
            || async { posted(self.once(what, &call).await?) },
            // Webhooks take no nonce: a lost answer is checked against the channel instead.
            || async {
                match self.find_posted(channel, &poster, Some(text), since).await {
                    Ok(Some(id)) => Landed::Yes(id),
                    Ok(None) => Landed::No,
                    Err(_) => Landed::Unknown,
                }
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_names_never_contain_clyde_or_discord_and_fit_80_chars() {
        for name in ["Clyde", "my DISCORD pal", "discordclyde", "  ", "\u{7}x", &"n".repeat(100)] {
            let s = sanitize_webhook_name(name);
            let lower = s.to_lowercase();
            assert!(!lower.contains("clyde") && !lower.contains("discord"), "{name:?} -> {s:?}");
            assert!((1..=80).contains(&s.chars().count()), "{name:?} -> {s:?}");
        }
        assert_eq!(sanitize_webhook_name("Grumpy Gran"), "Grumpy Gran");
    }
}
