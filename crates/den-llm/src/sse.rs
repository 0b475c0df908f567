//! Server-sent events, as both providers stream them.

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};

/// One event: its `event:` name (if any) and its `data:` lines joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The event name.
    pub event: Option<String>,
    /// The data.
    pub data: String,
}

/// Splits a byte stream into events. Malformed UTF-8 ends the stream with an error.
pub fn events<S, E>(bytes: S) -> impl Stream<Item = Result<SseEvent, String>> + Send
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display,
{
    futures_util::stream::unfold((Box::pin(bytes), Vec::<u8>::new(), false), |(mut bytes, mut buf, done)| async move {
        if done {
            return None;
        }
        loop {
            if let Some(end) = find_event_end(&buf) {
                let raw: Vec<u8> = buf.drain(..end.0 + end.1).collect();
                let text = match String::from_utf8(raw) {
                    Ok(t) => t,
                    Err(_) => return Some((Err("stream is not UTF-8".to_owned()), (bytes, buf, true))),
                };
                if let Some(event) = parse(&text) {
                    return Some((Ok(event), (bytes, buf, false)));
                }
                continue;
            }
            match bytes.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Some((Err(e.to_string()), (bytes, buf, true))),
                None => {
                    // A last event without its blank line still counts.
                    let rest = std::mem::take(&mut buf);
                    let text = String::from_utf8(rest).unwrap_or_default();
                    return parse(&text).map(|event| (Ok(event), (bytes, buf, true)));
                }
            }
        }
    })
}

/// Position and length of the first blank-line separator.
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn parse(text: &str) -> Option<SseEvent> {
    let mut event = None;
    let mut data: Vec<&str> = Vec::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            event = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    if data.is_empty() && event.is_none() {
        return None;
    }
    Some(SseEvent { event, data: data.join("\n") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&str]) -> impl Stream<Item = Result<Bytes, String>> + Send + 'static {
        let owned: Vec<Result<Bytes, String>> = parts.iter().map(|p| Ok(Bytes::from(p.to_string()))).collect();
        futures_util::stream::iter(owned)
    }

    #[tokio::test]
    async fn events_split_across_chunks_and_comments_are_read_whole() {
        let s = events(chunks(&[
            "event: a\nda",
            "ta: {\"x\":1}\n\n: keep-alive\n\n",
            "data: two\r\ndata: lines\r\n\r\ndata: [DONE]",
        ]));
        let got: Vec<_> = s.collect::<Vec<_>>().await.into_iter().map(Result::unwrap).collect();
        assert_eq!(got[0], SseEvent { event: Some("a".into()), data: "{\"x\":1}".into() });
        assert_eq!(got[1].data, "two\nlines");
        assert_eq!(got[2].data, "[DONE]");
        assert_eq!(got.len(), 3);
    }
}
