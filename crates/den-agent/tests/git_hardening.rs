//! A repository whose config points fsmonitor, hooks and a filter at a
//! sentinel script: plain git runs it; den's git never does.

use den_agent::git::Git;

fn fixture() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let sentinel = dir.path().join("sentinel-ran");
    let script = dir.path().join("evil.sh");
    std::fs::write(&script, format!("#!/bin/sh\ntouch {}\ncat\n", sentinel.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git").current_dir(&repo).args(args).output().unwrap();
        assert!(out.status.success(), "{:?}: {}", args, String::from_utf8_lossy(&out.stderr));
    };
    git(&["init", "--quiet", "--initial-branch=main"]);
    git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "--allow-empty", "-m", "base"]);
    let s = script.display();
    let config = format!(
        "[core]\n\tfsmonitor = {s}\n\thooksPath = hooks\n[filter \"evil\"]\n\tclean = {s}\n\tsmudge = {s}\n\
         [diff \"evil\"]\n\ttextconv = {s}\n[user]\n\tname = t\n\temail = t@t\n"
    );
    std::fs::write(repo.join(".git/config"), config).unwrap();
    std::fs::create_dir_all(repo.join("hooks")).unwrap();
    for hook in ["pre-commit", "post-commit", "commit-msg"] {
        std::fs::copy(&script, repo.join("hooks").join(hook)).unwrap();
        std::fs::copy(&script, repo.join(".git/hooks").join(hook)).unwrap();
    }
    std::fs::write(repo.join(".gitattributes"), "* filter=evil diff=evil\n").unwrap();
    std::fs::write(repo.join("file.txt"), "hello\n").unwrap();
    (dir, sentinel)
}

#[test]
fn the_fixture_is_armed_plain_git_runs_the_sentinel() {
    let (dir, sentinel) = fixture();
    let repo = dir.path().join("repo");
    std::process::Command::new("git").current_dir(&repo).args(["add", "--all"]).output().unwrap();
    std::process::Command::new("git").current_dir(&repo).args(["commit", "-qm", "x"]).output().unwrap();
    assert!(sentinel.exists(), "the fixture must trigger plain git, or the other test proves nothing");
}

#[tokio::test]
async fn dens_git_commits_diffs_and_logs_without_running_anything_the_repository_names() {
    let (dir, sentinel) = fixture();
    let repo = dir.path().join("repo");
    let git = Git::open(&repo).await.unwrap();
    git.checkout("den/1", "main").await.unwrap();
    std::fs::write(repo.join("file.txt"), "hello again\n").unwrap();
    let diff = git.diff(None).await.unwrap();
    assert!(diff.contains("hello again"), "{diff}");
    let commit = git.commit_all("den's change").await.unwrap();
    assert!(commit.is_some());
    git.status().await.unwrap();
    git.log(5).await.unwrap();
    git.diffstat("main", "den/1").await.unwrap();
    assert!(!sentinel.exists(), "den's git ran a program the repository named");
    assert!(!repo.join(".git/hooks").exists(), "hooks are gone");
}
