//! How a persona posts: through den's webhook of the channel under the
//! persona's name and avatar, or, for a persona with its own bot token
//! (`token_env`), as that bot account. Bot accounts are made when a persona
//! first speaks with one, so personas that gain or lose a token when the
//! folder is reloaded post the new way at once. Each bot account has its own
//! REST client and rate limits, as Discord keeps limits per bot token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use den_core::{Secret, Timestamp};
use den_discord::egress::DiscordResult;
use den_discord::posts::{Post, PostLedger, Posted};
use den_discord::{DiscordError, Egress, EgressConfig, Identity, Poster};

use super::Deps;
use crate::persona::Persona;

/// A bot account a persona speaks as.
struct BotAccount {
    egress: Arc<Egress>,
    user_id: u64,
}

/// The ways personas post, and the record of what jobs posted.
pub(super) struct Speakers {
    egress: Arc<Egress>,
    bot_egress: EgressConfig,
    env: Vec<(String, String)>,
    posts: PostLedger,
    /// Bot accounts by token variable, made on first use.
    bots: Mutex<HashMap<String, Arc<BotAccount>>>,
}

/// Where a persona's words go.
enum Voice {
    Webhook(Identity),
    Bot(Arc<BotAccount>),
}

impl Speakers {
    pub(super) fn new(d: &Deps) -> Self {
        Self {
            egress: d.egress.clone(),
            bot_egress: d.bot_egress.clone(),
            env: d.env.clone(),
            posts: d.posts.clone(),
            bots: Mutex::default(),
        }
    }

    /// The persona's bot account, when it has a token that is set.
    async fn bot(&self, p: &Persona) -> DiscordResult<Option<Arc<BotAccount>>> {
        let Some(var) = &p.token_env else { return Ok(None) };
        if let Some(bot) = self.bots.lock().unwrap_or_else(PoisonError::into_inner).get(var) {
            return Ok(Some(bot.clone()));
        }
        let Some((_, token)) = self.env.iter().find(|(k, v)| k == var && !v.is_empty()) else {
            tracing::warn!(persona = %p.id, var = %var, "persona token not set; it posts through webhooks");
            return Ok(None);
        };
        let config = EgressConfig { token: Some(Secret::new(token.as_str())), ..self.bot_egress.clone() };
        let egress = Arc::new(Egress::new(&config, 0, None));
        let user_id = egress.learn_bot_user().await?;
        let bot = Arc::new(BotAccount { egress, user_id });
        self.bots.lock().unwrap_or_else(PoisonError::into_inner).insert(var.clone(), bot.clone());
        Ok(Some(bot))
    }

    async fn voice(&self, p: &Persona) -> DiscordResult<Voice> {
        Ok(match self.bot(p).await? {
            Some(bot) => Voice::Bot(bot),
            None => Voice::Webhook(Identity { name: p.name.clone(), avatar_url: p.avatar_url.clone() }),
        })
    }

    async fn poster(&self, voice: &Voice, channel: u64) -> DiscordResult<Poster> {
        match voice {
            Voice::Bot(bot) => Ok(Poster::Bot(bot.user_id)),
            Voice::Webhook(identity) => self.egress.webhook_poster(channel, identity).await,
        }
    }

    /// Posts `text` as the persona, once for `key` however often the job runs.
    pub(super) async fn post_once(
        &self,
        p: &Persona,
        channel: u64,
        text: &str,
        key: &str,
        now: Timestamp,
    ) -> DiscordResult<Posted> {
        let voice = self.voice(p).await?;
        let poster = self.poster(&voice, channel).await?;
        let post = Post { key, channel, poster: &poster };
        self.posts
            .once(&self.egress, post, text, now, || async {
                match &voice {
                    Voice::Bot(bot) => bot.egress.send_text_keyed(channel, text, None, key).await,
                    Voice::Webhook(identity) => self.egress.send_as(channel, identity, text).await,
                }
            })
            .await
    }

    /// Whether an earlier delivery already posted (or may have posted, and
    /// the post is in the channel) under `key`.
    pub(super) async fn posted_before(&self, p: &Persona, channel: u64, key: &str) -> DiscordResult<bool> {
        let voice = self.voice(p).await?;
        let poster = self.poster(&voice, channel).await?;
        Ok(self.posts.earlier(&self.egress, Post { key, channel, poster: &poster }).await?.is_some())
    }

    /// Replaces the text of one of the persona's messages.
    pub(super) async fn edit(&self, p: &Persona, channel: u64, message: u64, text: &str) -> Result<(), DiscordError> {
        match self.voice(p).await? {
            Voice::Bot(bot) => bot.egress.edit_text(channel, message, text).await,
            Voice::Webhook(_) => self.egress.edit_as(channel, message, text).await,
        }
    }
}
