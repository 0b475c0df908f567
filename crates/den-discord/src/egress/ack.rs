//! The first response to an interaction, as den decides it at ingress and
//! as Discord's API takes it (a callback body, or the HTTP endpoint's answer).

use serde_json::Value;
use twilight_model::channel::message::{AllowedMentions, MessageFlags};
use twilight_model::http::interaction::{InteractionResponse, InteractionResponseData, InteractionResponseType};

use super::clip;

/// The first response to an interaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ack {
    /// Answer a PING.
    Pong,
    /// Answer with a message now.
    Message {
        /// Text (at most 2,000 characters).
        content: String,
        /// Only the invoker sees it.
        ephemeral: bool,
    },
    /// "den is thinking…": the real answer edits the original response later.
    Defer {
        /// Only the invoker sees the answer.
        ephemeral: bool,
    },
    /// For components: acknowledge without changing the message yet.
    DeferUpdate,
    /// For components: replace the message's text.
    UpdateMessage {
        /// New text.
        content: String,
    },
    /// Answer with a question and buttons (a confirmation).
    Ask {
        /// Text.
        content: String,
        /// Only the invoker sees it.
        ephemeral: bool,
        /// Buttons: custom id, label, whether it is the dangerous choice.
        buttons: Vec<(String, String, bool)>,
    },
}

impl Ack {
    fn kind_and_data(&self, no_pings: &AllowedMentions) -> (InteractionResponseType, Option<InteractionResponseData>) {
        let flags = |ephemeral: bool| ephemeral.then_some(MessageFlags::EPHEMERAL);
        match self {
            Ack::Pong => (InteractionResponseType::Pong, None),
            Ack::Message { content, ephemeral } => (
                InteractionResponseType::ChannelMessageWithSource,
                Some(InteractionResponseData {
                    content: Some(clip(content)),
                    flags: flags(*ephemeral),
                    allowed_mentions: Some(no_pings.clone()),
                    ..InteractionResponseData::default()
                }),
            ),
            Ack::Defer { ephemeral } => (
                InteractionResponseType::DeferredChannelMessageWithSource,
                Some(InteractionResponseData { flags: flags(*ephemeral), ..InteractionResponseData::default() }),
            ),
            Ack::DeferUpdate => (InteractionResponseType::DeferredUpdateMessage, None),
            Ack::Ask { content, ephemeral, buttons } => {
                use twilight_model::channel::message::Component;
                use twilight_model::channel::message::component::{ActionRow, Button, ButtonStyle};
                let row = ActionRow {
                    id: None,
                    components: buttons
                        .iter()
                        .take(5)
                        .map(|(custom_id, label, danger)| {
                            Component::Button(Button {
                                custom_id: Some(custom_id.clone()),
                                disabled: false,
                                emoji: None,
                                id: None,
                                label: Some(label.clone()),
                                sku_id: None,
                                style: if *danger { ButtonStyle::Danger } else { ButtonStyle::Secondary },
                                url: None,
                            })
                        })
                        .collect(),
                };
                (
                    InteractionResponseType::ChannelMessageWithSource,
                    Some(InteractionResponseData {
                        content: Some(clip(content)),
                        flags: flags(*ephemeral),
                        allowed_mentions: Some(no_pings.clone()),
                        components: Some(vec![Component::ActionRow(row)]),
                        ..InteractionResponseData::default()
                    }),
                )
            }
            Ack::UpdateMessage { content } => (
                InteractionResponseType::UpdateMessage,
                Some(InteractionResponseData {
                    content: Some(clip(content)),
                    allowed_mentions: Some(no_pings.clone()),
                    ..InteractionResponseData::default()
                }),
            ),
        }
    }

    fn to_twilight(&self, no_pings: &AllowedMentions) -> InteractionResponse {
        let (kind, data) = self.kind_and_data(no_pings);
        InteractionResponse { kind, data }
    }

    /// The response as the JSON body of an HTTP interactions answer.
    #[must_use]
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.to_twilight(&AllowedMentions::default())).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_serialise_as_discord_expects() {
        assert_eq!(Ack::Pong.to_json(), serde_json::json!({"type": 1}));
        assert_eq!(Ack::Defer { ephemeral: true }.to_json(), serde_json::json!({"type": 5, "data": {"flags": 64}}));
        let m = Ack::Message { content: "hi".into(), ephemeral: false }.to_json();
        assert_eq!(m["type"], 4);
        assert_eq!(m["data"]["content"], "hi");
        assert_eq!(m["data"]["allowed_mentions"]["parse"], serde_json::json!([]));
    }
}
