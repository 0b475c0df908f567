//! `den llm ping`: the first thing a user runs after setting an API key.

mod support;

use den_testkit::llm::{FakeLlm, Script, Wire};
use support::{Scratch, stderr, stdout};

const KEY: &str = "sk-ant-test-key-42";

fn write_config(scratch: &Scratch, kind: &str, base_url: &str) {
    let text = format!(
        "[llm]\nprimary = \"test\"\n\n[[llm.provider]]\nname = \"test\"\nkind = \"{kind}\"\nbase_url = \"{base_url}\"\nmodel = \"fake-1\"\nkey_env = \"TEST_LLM_KEY\"\n"
    );
    std::fs::write(scratch.path().join("den.toml"), text).unwrap();
}

fn fake(wire: Wire) -> (tokio::runtime::Runtime, FakeLlm) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let fake = rt.block_on(FakeLlm::start(wire, Some(KEY))).unwrap();
    (rt, fake)
}

#[test]
fn ping_prints_the_reply_latency_and_tokens_for_both_wire_formats() {
    for (wire, kind) in [(Wire::Anthropic, "anthropic"), (Wire::OpenAi, "openai")] {
        let (_rt, fake) = fake(wire);
        fake.push(Script::reply("I am working fine."));
        let scratch = Scratch::new();
        write_config(&scratch, kind, &fake.base_url());
        let out = scratch.output(&["llm", "ping"], &[("TEST_LLM_KEY", KEY)]);
        assert!(out.status.success(), "{kind}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains("test (fake-1): I am working fine."), "{text}");
        assert!(text.contains("first token") && text.contains("tokens in") && text.contains("out 4"), "{text}");
    }
}

#[test]
fn a_wrong_key_gets_one_clear_line_without_the_key() {
    let (_rt, fake) = fake(Wire::Anthropic);
    let scratch = Scratch::new();
    write_config(&scratch, "anthropic", &fake.base_url());
    let out = scratch.output(&["llm", "ping"], &[("TEST_LLM_KEY", "sk-ant-wrong-999")]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("HTTP 401") && !err.contains("sk-ant-wrong-999"), "{err}");
}

#[test]
fn an_unreachable_endpoint_and_a_missing_key_get_one_clear_line() {
    let scratch = Scratch::new();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    write_config(&scratch, "openai", &format!("http://{dead}/v1"));
    let out = scratch.output(&["llm", "ping"], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot reach the provider"), "{err}");

    write_config(&scratch, "anthropic", &format!("http://{dead}"));
    let out = scratch.output(&["llm", "ping"], &[]);
    assert!(stderr(&out).contains("no API key for test: set TEST_LLM_KEY"), "{}", stderr(&out));
    let out = scratch.output(&["llm", "ping", "--provider", "nope"], &[]);
    assert!(stderr(&out).contains("no LLM provider named \"nope\""), "{}", stderr(&out));
}
