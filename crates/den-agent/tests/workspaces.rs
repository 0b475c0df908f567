//! The servers' workspaces: a thread's branch reaches the base only by a
//! clean merge; a conflicting one names its files and leaves the base as it was.

use den_agent::discord::workspaces::{Merge, Workspaces};

fn commit_file(git: &den_agent::git::Git, name: &str, text: &str) -> impl std::future::Future<Output = ()> {
    std::fs::write(git.dir().join(name), text).unwrap();
    let git = git.clone();
    async move {
        git.commit_all(&format!("write {}", text.trim())).await.unwrap();
    }
}

#[tokio::test]
async fn a_clean_branch_merges_and_a_conflicting_one_leaves_the_base_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workspaces::new(dir.path(), "main");
    let base = w.base(1).await.unwrap();
    commit_file(&base, "app.txt", "one\n").await;

    // Thread 10 changes app.txt; it merges cleanly.
    let ten = w.thread(1, 10).await.unwrap();
    ten.checkout("den/10", "main").await.unwrap();
    commit_file(&ten, "app.txt", "ten\n").await;
    let Merge::Merged(_) = w.merge(1, 10, "den/10", "Merge den/10").await.unwrap() else { panic!("a clean merge") };
    assert_eq!(base.run(&["show", "main:app.txt"]).await.unwrap(), "ten\n");

    // Thread 20 branched before that merge and changed the same line: a conflict.
    let twenty_dir = w.thread_dir(1, 20);
    assert!(!twenty_dir.exists());
    let twenty = w.thread(1, 20).await.unwrap();
    twenty.run(&["reset", "--quiet", "--hard", "HEAD~1"]).await.unwrap(); // back to before the merge of "ten"
    twenty.checkout("den/20", "main").await.unwrap();
    commit_file(&twenty, "app.txt", "twenty\n").await;
    let before = base.run(&["rev-parse", "main"]).await.unwrap();
    let merge = w.merge(1, 20, "den/20", "Merge den/20").await.unwrap();
    assert_eq!(merge, Merge::Conflict(vec!["app.txt".into()]));
    assert_eq!(base.run(&["rev-parse", "main"]).await.unwrap(), before, "the base did not move");
    assert_eq!(base.run(&["status", "--porcelain"]).await.unwrap(), "", "nor did its files");
    assert_eq!(std::fs::read_to_string(base.dir().join("app.txt")).unwrap(), "ten\n");

    // A branch with nothing new has nothing to merge; a rejected branch is gone.
    let thirty = w.thread(1, 30).await.unwrap();
    thirty.checkout("den/30", "main").await.unwrap();
    assert_eq!(w.merge(1, 30, "den/30", "m").await.unwrap(), Merge::NothingToMerge);
    w.reject(1, 30, "den/30").await.unwrap();
    assert!(thirty.run(&["branch", "--list", "den/30"]).await.unwrap().trim().is_empty());
}

#[tokio::test]
async fn with_a_workspace_per_thread_a_merge_stays_in_its_thread_and_the_server_seed_starts_each() {
    use den_agent::discord::workspaces::{Scope, Seed};
    let dir = tempfile::tempdir().unwrap();
    let w = Workspaces::new(dir.path(), "main").scoped(Scope::Thread);
    let seed = tempfile::tempdir().unwrap();
    std::fs::write(seed.path().join("seed.txt"), "from the server\n").unwrap();
    w.seed(1, Seed::Path(seed.path().to_owned())).await.unwrap();

    let ten = w.thread(1, 10).await.unwrap();
    assert_eq!(std::fs::read_to_string(ten.dir().join("seed.txt")).unwrap(), "from the server\n");
    ten.checkout("den/10", "main").await.unwrap();
    commit_file(&ten, "ten.txt", "ten\n").await;
    let Merge::Merged(_) = w.merge(1, 10, "den/10", "Merge den/10").await.unwrap() else { panic!("merged") };

    let home = w.home(1, 10).await.unwrap();
    assert_eq!(home.run(&["show", "main:ten.txt"]).await.unwrap(), "ten\n", "merged into the thread's own base");
    let server = w.base(1).await.unwrap();
    assert!(server.run(&["show", "main:ten.txt"]).await.is_err(), "the server's base never sees it");
    let twenty = w.thread(1, 20).await.unwrap();
    assert!(!twenty.dir().join("ten.txt").exists(), "another thread starts from the server's base");
    assert!(twenty.dir().join("seed.txt").exists());
}
