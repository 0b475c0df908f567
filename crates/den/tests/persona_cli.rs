//! `den persona ...` and `den chat`: persona files, character cards and a
//! terminal chat, run as the real binary.

mod support;

use std::io::Write as _;
use std::process::Stdio;

use den_testkit::llm::{FakeLlm, Script, Wire};
use serde_json::{Value, json};
use support::{Scratch, stderr, stdout};

fn shipped_personas() -> String {
    format!("{}/../../personas", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_shipped_example_personas_are_valid_and_fictional() {
    let scratch = Scratch::new();
    let dir = shipped_personas();
    let out = scratch.output(&["persona", "validate"], &[("DEN_PERSONAS__DIR", &dir)]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(stdout(&out).lines().filter(|l| l.starts_with("ok ")).count(), 3, "{}", stdout(&out));
    for entry in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(text.contains("real_person = false"), "examples are not modelled on real people");
    }
    let out = scratch.output(&["persona", "list"], &[("DEN_PERSONAS__DIR", &dir)]);
    for id in ["grumpy-gran", "sir-quill", "byte"] {
        assert!(stdout(&out).contains(id), "{}", stdout(&out));
    }
}

#[test]
fn new_show_and_validate_point_at_the_broken_field() {
    let scratch = Scratch::new();
    let out = scratch.output(&["persona", "new", "captain-rum"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let show = scratch.output(&["persona", "show", "Captain Rum"], &[]);
    assert!(stdout(&show).contains("id = \"captain-rum\""), "{}", stdout(&show));
    assert!(stdout(&show).contains("You are Captain Rum, a persona"), "{}", stdout(&show));
    let again = scratch.output(&["persona", "new", "captain-rum"], &[]);
    assert!(!again.status.success() && stderr(&again).contains("already exists"));

    std::fs::write(scratch.path().join("personas/broken.toml"), "id = \"broken\"\nname = \"B\"\nintensity = 11\n")
        .unwrap();
    let out = scratch.output(&["persona", "validate"], &[]);
    assert!(!out.status.success());
    assert!(stdout(&out).contains("ok     personas/captain-rum.toml"), "{}", stdout(&out));
    assert!(stdout(&out).contains("broken.toml: intensity 11: 1 to 5"), "{}", stdout(&out));
    assert!(stderr(&out).contains("1 of 2 persona file(s) are broken"), "{}", stderr(&out));
    let list = scratch.output(&["persona", "list"], &[]);
    assert!(stdout(&list).contains("broken: personas/broken.toml"), "{}", stdout(&list));
}

#[test]
fn a_card_imported_and_exported_as_json_and_png_keeps_every_field() {
    let scratch = Scratch::new();
    let card = json!({
        "spec": "chara_card_v3",
        "spec_version": "3.0",
        "data": {
            "name": "Madame Fortuna",
            "nickname": "Fortuna",
            "description": "A fortune teller who is always wrong.",
            "personality": "mysterious, overconfident",
            "scenario": "", "first_mes": "I foresaw you, {{user}}.", "mes_example": "", "creator_notes": "note",
            "system_prompt": "", "post_history_instructions": "", "alternate_greetings": [],
            "group_only_greetings": ["Welcome, all."], "tags": ["tarot"], "creator": "den tests",
            "character_version": "3", "extensions": {"some_frontend": {"x": 1}},
            "assets": [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}],
            "creation_date": 1700000000
        },
        "unknown_top": "kept"
    });
    std::fs::write(scratch.path().join("fortuna.json"), card.to_string()).unwrap();
    let out = scratch.output(&["persona", "import", "fortuna.json"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = scratch.output(&["persona", "export", "fortuna", "--v3", "-o", "out.json"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let back: Value = serde_json::from_slice(&std::fs::read(scratch.path().join("out.json")).unwrap()).unwrap();
    assert_eq!(back["unknown_top"], "kept");
    for key in ["assets", "creation_date", "group_only_greetings", "first_mes", "creator_notes"] {
        assert_eq!(back["data"][key], card["data"][key], "{key}");
    }
    assert_eq!(back["data"]["extensions"]["some_frontend"], json!({"x": 1}));
    assert_eq!(back["data"]["extensions"]["den"]["id"], "madame-fortuna");

    let out = scratch.output(&["persona", "export", "fortuna", "--v3", "--format", "png", "-o", "out.png"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let elsewhere = Scratch::new();
    std::fs::copy(scratch.path().join("out.png"), elsewhere.path().join("card.png")).unwrap();
    let out = elsewhere.output(&["persona", "import", "card.png"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let original = std::fs::read_to_string(scratch.path().join("personas/madame-fortuna.toml")).unwrap();
    let copied = std::fs::read_to_string(elsewhere.path().join("personas/madame-fortuna.toml")).unwrap();
    assert_eq!(original, copied, "the PNG carries the same persona");

    std::fs::write(scratch.path().join("junk.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let out = scratch.output(&["persona", "import", "junk.png"], &[]);
    assert!(!out.status.success());
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("junk.png") && stderr(&out).contains("character card"), "{}", stderr(&out));
}

#[test]
fn den_chat_talks_through_the_model_with_the_same_memory() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let llm = rt.block_on(FakeLlm::start(Wire::OpenAi, None)).unwrap();
    llm.push(Script::reply("Hello, dear."));
    llm.push(Script::reply("Jazz, of course."));
    let scratch = Scratch::new();
    let config = format!(
        "[llm]\nprimary = \"fake\"\n\n[[llm.provider]]\nname = \"fake\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\n",
        llm.base_url()
    );
    std::fs::write(scratch.path().join("den.toml"), config).unwrap();
    let dir = shipped_personas();
    let mut child = scratch
        .command(&["chat", "--persona", "gran"], &[("DEN_PERSONAS__DIR", &dir), ("USER", "ada")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello gran\n/remember I love jazz\nwhat music do I like?\n/quit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("Grumpy Gran: Hello, dear."), "{text}");
    assert!(text.contains("Noted: \"I love jazz\"."), "{text}");
    assert!(text.contains("Grumpy Gran: Jazz, of course."), "{text}");
    let second = &llm.requests()[1].body;
    let system = second["messages"][0]["content"].as_str().unwrap();
    assert!(system.contains("- I love jazz"), "the memory reached the prompt: {system}");
    let all = second.to_string();
    assert!(all.contains("ada: hello gran") && all.contains("Hello, dear."), "the transcript too: {all}");
}
