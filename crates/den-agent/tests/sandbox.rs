//! Each protection of the sandbox, shown by a command that tries to get past
//! it. Every test fails if its protection is removed.

use std::time::Duration;

use den_agent::sandbox::{Backend, Limits, Sandbox};

/// Live processes of a sandbox user (zombies, which hold nothing but a PID, left out).
fn alive(user: u32) -> Vec<String> {
    let ps = std::process::Command::new("ps").args(["-o", "stat=,args=", "-u", &user.to_string()]).output().unwrap();
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| !l.trim_start().starts_with('Z'))
        .map(str::to_owned)
        .collect()
}

/// A sandbox user no other test uses, so process counts are this test's own.
fn uid(n: u32) -> u32 {
    61_000 + n
}

async fn sandbox() -> Sandbox {
    let limits = Limits { file_size: 8 * 1024 * 1024, ..Limits::default() };
    let s = Sandbox::probe(limits).await;
    assert!(matches!(s.backend(), Backend::Bubblewrap { .. }), "the sandbox must work here: {}", s.describe());
    s
}

fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".git/hooks")).unwrap();
    std::fs::write(dir.path().join(".git/config"), "[core]\n").unwrap();
    dir
}

async fn sh(s: &Sandbox, ws: &tempfile::TempDir, user: u32, command: &str) -> den_agent::sandbox::Ran {
    s.run(ws.path(), uid(user), command, Duration::from_secs(20)).await.unwrap()
}

#[tokio::test]
async fn the_workspace_is_writable_and_nothing_else_is() {
    let s = sandbox().await;
    let ws = workspace();
    let ran = sh(&s, &ws, 1, "echo hi > made.txt && cat made.txt").await;
    assert_eq!((ran.code, ran.stdout.trim()), (Some(0), "hi"), "{}", ran.stderr);
    let ran = sh(&s, &ws, 1, "id -u").await;
    assert_ne!(ran.stdout.trim(), "0", "commands never run as root");
    for target in ["/usr/den-was-here", "/etc/den-was-here"] {
        let ran = sh(&s, &ws, 1, &format!("echo x > {target}")).await;
        assert_ne!(ran.code, Some(0), "{target} must not be writable");
    }
    assert!(!std::path::Path::new("/usr/den-was-here").exists() && !std::path::Path::new("/etc/den-was-here").exists());
    // Above the workspace is the sandbox's own scratch root, not the host's folder.
    sh(&s, &ws, 1, "echo x > ../den-was-here").await;
    assert!(!ws.path().parent().unwrap().join("den-was-here").exists());
}

#[tokio::test]
async fn git_metadata_is_read_only_inside() {
    let s = sandbox().await;
    let ws = workspace();
    for command in ["echo '[core]\n\tfsmonitor = evil' >> .git/config", "echo evil > .git/hooks/pre-commit"] {
        let ran = sh(&s, &ws, 2, command).await;
        assert_ne!(ran.code, Some(0), "{command} must fail");
    }
    assert_eq!(std::fs::read_to_string(ws.path().join(".git/config")).unwrap(), "[core]\n");
    assert!(!ws.path().join(".git/hooks/pre-commit").exists());
}

#[tokio::test]
async fn secrets_of_the_host_and_of_den_stay_out() {
    let s = sandbox().await;
    let ws = workspace();
    let ran = sh(&s, &ws, 3, "cat /etc/shadow").await;
    assert_ne!(ran.code, Some(0), "/etc/shadow must not be readable: {}", ran.stdout);
    // cargo runs this test with CARGO_* variables set: none may reach the sandbox.
    assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")), "the test needs an environment to leak");
    let ran = sh(&s, &ws, 3, "env").await;
    assert!(ran.stdout.contains("PATH=") && ran.stdout.contains("HOME=/tmp"), "{}", ran.stdout);
    assert!(!ran.stdout.contains("CARGO"), "den's environment leaked: {}", ran.stdout);
}

#[tokio::test]
async fn there_is_no_network_not_even_to_the_host() {
    let s = sandbox().await;
    let ws = workspace();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let probe =
        format!("python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 3); print('connected')\"");
    let ran = sh(&s, &ws, 4, &probe).await;
    assert!(!ran.stdout.contains("connected"), "the sandbox reached the host: {}", ran.stdout);
    assert_ne!(ran.code, Some(0));
    assert!(listener.accept().is_err(), "nothing arrived at the listener");
}

#[tokio::test]
async fn memory_file_size_and_processes_are_limited() {
    let s = sandbox().await;
    let ws = workspace();
    let ran = sh(&s, &ws, 5, "python3 -c \"b = bytearray(2 * 1024 ** 3); print('allocated')\"").await;
    assert!(!ran.stdout.contains("allocated"), "a 2 GiB allocation must fail");
    let ran = sh(&s, &ws, 5, "head -c 16777216 /dev/zero > big").await;
    assert_ne!(ran.code, Some(0));
    let size = std::fs::metadata(ws.path().join("big")).map(|m| m.len()).unwrap_or(0);
    assert!(size <= 8 * 1024 * 1024, "the file stopped at the limit: {size}");
    // A fork bomb hits the process limit and is killed at the timeout at worst.
    let bomb = s.run(ws.path(), uid(6), "b() { b | b & }; b; sleep 5", Duration::from_secs(8)).await.unwrap();
    assert!(
        bomb.stderr.contains("fork") || bomb.stderr.contains("Resource") || bomb.timed_out,
        "the bomb hit a limit: {bomb:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(alive(uid(6)), Vec::<String>::new(), "no process of the session survives");
}

#[tokio::test]
async fn the_timeout_kills_the_whole_tree() {
    let s = sandbox().await;
    let ws = workspace();
    let ran =
        s.run(ws.path(), uid(7), "sleep 301 & setsid sleep 302 & sleep 303", Duration::from_secs(2)).await.unwrap();
    assert!(ran.timed_out);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(alive(uid(7)), Vec::<String>::new(), "background sleeps survived");
}
