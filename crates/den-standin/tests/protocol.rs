//! The fake behaves like Discord toward a client that speaks the protocol by hand.

use std::time::Duration;

use den_standin::{CommandOption, Standin, StandinConfig};
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

async fn next_json(
    ws: &mut (impl futures_util::Stream<Item = Result<Ws, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> Value {
    loop {
        let frame =
            tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("a frame").expect("open").unwrap();
        if let Ws::Text(t) = frame {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

#[tokio::test]
async fn a_hand_written_client_identifies_receives_events_and_resumes_with_replay() {
    let fake = Standin::start(StandinConfig::default()).await.unwrap();
    let user = fake.add_user("ada");
    let guild = fake.add_guild("g", user);
    let channel = fake.add_text_channel(guild, "c");
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{}/?v=10&encoding=json", fake.gateway_url())).await.unwrap();
    assert_eq!(next_json(&mut ws).await["op"], 10, "HELLO first");
    let identify =
        json!({"op": 2, "d": {"token": fake.bot_token(), "intents": 1 | (1 << 9) | (1 << 15), "properties": {}}});
    ws.send(Ws::Text(identify.to_string().into())).await.unwrap();
    let ready = next_json(&mut ws).await;
    assert_eq!((ready["t"].as_str(), ready["s"].as_u64()), (Some("READY"), Some(1)));
    assert_eq!(ready["d"]["resume_gateway_url"], fake.gateway_url());
    let session = ready["d"]["session_id"].as_str().unwrap().to_owned();
    assert_eq!(next_json(&mut ws).await["t"], "GUILD_CREATE");
    ws.send(Ws::Text(json!({"op": 1, "d": 2}).to_string().into())).await.unwrap();
    assert_eq!(next_json(&mut ws).await["op"], 11, "heartbeat ACK");

    fake.post_as(user, channel, "first");
    let first = next_json(&mut ws).await;
    assert_eq!((first["t"].as_str(), first["d"]["content"].as_str()), (Some("MESSAGE_CREATE"), Some("first")));
    let seen = first["s"].as_u64().unwrap();

    fake.gateway_drop_connections();
    fake.post_as(user, channel, "missed");
    let token = fake.press_button(user, channel, 1, "confirm");
    let (mut ws, _) = tokio_tungstenite::connect_async(fake.gateway_url()).await.unwrap();
    next_json(&mut ws).await;
    let resume = json!({"op": 6, "d": {"token": fake.bot_token(), "session_id": session, "seq": seen}});
    ws.send(Ws::Text(resume.to_string().into())).await.unwrap();
    let replayed = next_json(&mut ws).await;
    assert_eq!(replayed["d"]["content"], "missed");
    let button = next_json(&mut ws).await;
    assert_eq!((button["t"].as_str(), button["d"]["type"].as_u64()), (Some("INTERACTION_CREATE"), Some(3)));
    assert_eq!(button["d"]["data"]["custom_id"], "confirm");
    assert_eq!(button["d"]["token"], token.as_str());
    assert_eq!(next_json(&mut ws).await["t"], "RESUMED");
    assert_eq!(fake.resumes(), 1);
}

#[tokio::test]
async fn a_wrong_token_and_a_disallowed_intent_close_with_discords_codes() {
    let fake = Standin::start(StandinConfig { privileged_intents: 0, ..StandinConfig::default() }).await.unwrap();
    for (token, intents, code) in [("wrong", 1u64, 4004u16), (fake.bot_token().as_str(), 1 | (1 << 15), 4014)] {
        let (mut ws, _) = tokio_tungstenite::connect_async(fake.gateway_url()).await.unwrap();
        next_json(&mut ws).await;
        ws.send(Ws::Text(
            json!({"op": 2, "d": {"token": token, "intents": intents, "properties": {}}}).to_string().into(),
        ))
        .await
        .unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
        match frame {
            Ws::Close(Some(f)) => assert_eq!(u16::from(f.code), code),
            other => panic!("expected close {code}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn signed_interactions_verify_with_the_public_key_the_api_reports() {
    let fake = Standin::start(StandinConfig::default()).await.unwrap();
    let user = fake.add_user("ada");
    let guild = fake.add_guild("g", user);
    let channel = fake.add_text_channel(guild, "c");
    let signed = fake.signed_command(user, channel, "roast", &[CommandOption::user("target", user)]);
    let app: Value = reqwest::Client::new()
        .get(format!("http://{}/api/v10/applications/@me", fake.rest_addr()))
        .header("authorization", format!("Bot {}", fake.bot_token()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key_bytes: [u8; 32] = hex::decode(app["verify_key"].as_str().unwrap()).unwrap().try_into().unwrap();
    let key = VerifyingKey::from_bytes(&key_bytes).unwrap();
    let sig: [u8; 64] = hex::decode(&signed.signature).unwrap().try_into().unwrap();
    key.verify(format!("{}{}", signed.timestamp, signed.body).as_bytes(), &Signature::from_bytes(&sig)).unwrap();
    let body: Value = serde_json::from_str(&signed.body).unwrap();
    assert_eq!(body["data"]["resolved"]["users"][user.to_string()]["username"], "ada");
    assert!(fake.violations().is_empty());
}

#[tokio::test]
async fn unauthenticated_and_off_spec_requests_are_refused_and_recorded() {
    let fake = Standin::start(StandinConfig::default()).await.unwrap();
    let user = fake.add_user("ada");
    let guild = fake.add_guild("g", user);
    let channel = fake.add_text_channel(guild, "c");
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/v10/channels/{channel}/messages", fake.rest_addr());
    let r = client.post(&url).json(&json!({"content": "hi"})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(&url)
        .header("authorization", format!("Bot {}", fake.bot_token()))
        .json(&json!({"content": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // This test breaks the spec on purpose: take the violations so dropping the fake does not fail.
    let violations = fake.take_violations();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].contains("create_message") && violations[0].contains("content"), "{violations:?}");
    assert_eq!(fake.invalid_requests(), 1);
}
