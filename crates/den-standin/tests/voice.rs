//! The voice server behaves like Discord's toward a client that speaks the voice gateway by hand.

use std::sync::Arc;
use std::time::Duration;

use den_standin::voice::VoiceServer;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite::Message as Ws;

type VoiceSocket = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A voice gateway connection that trusts the server's own authority; HELLO is read.
async fn connect(server: &VoiceServer) -> VoiceSocket {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(server.ca_pem().as_bytes()).unwrap()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(server.endpoint()).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    let url = format!("wss://{}/?v=8", server.endpoint());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap()["op"], 8, "HELLO first");
    ws
}

/// The next JSON frame, or the close code the server ended the connection with.
async fn next(ws: &mut VoiceSocket) -> Result<Value, u16> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("a frame in time");
        match frame {
            Some(Ok(Ws::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
            Some(Ok(Ws::Close(frame))) => return Err(frame.map_or(1005, |f| f.code.into())),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(1006),
        }
    }
}

async fn send(ws: &mut VoiceSocket, op: u64, d: Value) {
    ws.send(Ws::text(json!({"op": op, "d": d}).to_string())).await.unwrap();
}

#[tokio::test]
async fn a_connection_replaced_by_a_resume_leaves_the_call_connected_when_it_closes() {
    let server = VoiceServer::start().await.unwrap();
    let (guild, channel, bot) = (10_u64, 20_u64, 30_u64);
    server.grant(guild, channel, bot, "session", "token");
    let ids = json!({"server_id": guild.to_string(), "session_id": "session", "token": "token"});

    let mut first = connect(&server).await;
    let mut identify = ids.clone();
    identify["user_id"] = json!(bot.to_string());
    send(&mut first, 0, identify).await;
    assert_eq!(next(&mut first).await.unwrap()["op"], 2, "READY");

    // The client resumes on a second connection while the first is still open:
    // the server ends the first (4006), and that ending must not count against the second.
    let mut second = connect(&server).await;
    send(&mut second, 7, ids).await;
    assert_eq!(next(&mut second).await.unwrap()["op"], 9, "RESUMED");
    assert_eq!(next(&mut first).await, Err(4006), "the replaced connection is closed as Discord does");
    server
        .wait_until("the server to finish the replaced connection", Duration::from_secs(5), |s| {
            s.call(guild).is_some_and(|c| c.ended == 1)
        })
        .await;

    let call = server.call(guild).unwrap();
    assert_eq!((call.connections, call.resumes, call.connected), (2, 1, true), "the resumed connection holds the call");

    // The server closing the resumed connection (its own end) does end the call.
    server.close(guild, 4015);
    assert_eq!(next(&mut second).await, Err(4015));
    server
        .wait_until("the call to show no open connection", Duration::from_secs(5), |s| {
            s.call(guild).is_some_and(|c| c.ended == 2 && !c.connected)
        })
        .await;
}
