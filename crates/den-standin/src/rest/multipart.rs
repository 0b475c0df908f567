//! `multipart/form-data` bodies, as bots send files: a `payload_json` part
//! with the JSON body, and `files[n]` parts.

use serde_json::Value;

use crate::people::Upload;

/// Reads a multipart body into its JSON payload and its files.
pub(super) fn parse(content_type: &str, body: &[u8]) -> Result<(Value, Vec<Upload>), String> {
    let boundary = content_type
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()
        .map(|b| b.trim_matches('"'))
        .filter(|b| !b.is_empty())
        .ok_or("multipart body without a boundary")?;
    let delimiter = format!("--{boundary}");
    let mut payload = Value::Null;
    let mut files = Vec::new();
    for part in split(body, delimiter.as_bytes()).into_iter().skip(1) {
        if part.starts_with(b"--") {
            break; // the closing delimiter
        }
        let part = part.strip_prefix(b"\r\n").unwrap_or(part);
        let part = part.strip_suffix(b"\r\n").unwrap_or(part);
        let head_end = find(part, b"\r\n\r\n").ok_or("a multipart part without headers")?;
        let head = String::from_utf8_lossy(&part[..head_end]);
        let data = &part[head_end + 4..];
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v))
                .map(str::trim)
        };
        let disposition = header("content-disposition").ok_or("a multipart part without Content-Disposition")?;
        let field = |key: &str| {
            disposition.split(';').find_map(|p| p.trim().strip_prefix(&format!("{key}=")).map(|v| v.trim_matches('"')))
        };
        let name = field("name").unwrap_or_default();
        if name == "payload_json" {
            payload = serde_json::from_slice(data).map_err(|e| format!("payload_json is not JSON: {e}"))?;
        } else if let Some(filename) = field("filename") {
            files.push(Upload {
                filename: filename.to_owned(),
                bytes: data.to_vec(),
                content_type: header("content-type").map(str::to_owned),
            });
        }
    }
    Ok((payload, files))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn split<'a>(mut body: &'a [u8], delimiter: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    while let Some(at) = find(body, delimiter) {
        parts.push(&body[..at]);
        body = &body[at + delimiter.len()..];
    }
    parts.push(body);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_with_a_file_reads_as_its_payload_and_the_file() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"payload_json\"\r\nContent-Type: application/json\r\n\r\n{\"content\":\"log attached\"}\r\n--XyZ\r\nContent-Disposition: form-data; name=\"files[0]\"; filename=\"run.log\"\r\nContent-Type: text/plain\r\n\r\nline one\r\nline two\r\n--XyZ--\r\n";
        let (payload, files) = parse("multipart/form-data; boundary=XyZ", body).unwrap();
        assert_eq!(payload["content"], "log attached");
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].filename, "run.log");
        assert_eq!(files[0].bytes, b"line one\r\nline two");
        assert_eq!(files[0].content_type.as_deref(), Some("text/plain"));
    }

    #[test]
    fn a_body_without_a_boundary_is_refused() {
        assert!(parse("multipart/form-data", b"whatever").is_err());
    }
}
