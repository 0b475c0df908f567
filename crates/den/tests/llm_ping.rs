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

/// Bedrock takes its credentials from the standard AWS chain (here the
/// environment) and its region from den.toml.
#[cfg(feature = "aws")]
#[test]
fn ping_reaches_bedrock_with_credentials_from_the_aws_chain() {
    let (_rt, fake) = fake(Wire::Bedrock);
    fake.push(Script::reply("Bedrock says hello."));
    let scratch = Scratch::new();
    let config = format!(
        "[llm]\nprimary = \"claude\"\n\n[[llm.provider]]\nname = \"claude\"\nkind = \"bedrock\"\nregion = \"eu-central-1\"\n\
         base_url = \"{}\"\nmodel = \"anthropic.claude-haiku\"\n",
        fake.base_url()
    );
    std::fs::write(scratch.path().join("den.toml"), config).unwrap();
    let secret = "bedrock/secret+Key/EXAMPLE";
    let env = [("AWS_ACCESS_KEY_ID", KEY), ("AWS_SECRET_ACCESS_KEY", secret), ("AWS_EC2_METADATA_DISABLED", "true")];
    let out = scratch.output(&["llm", "ping"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("claude (anthropic.claude-haiku): Bedrock says hello."), "{}", stdout(&out));
    assert!(fake.requests()[0].authorized, "signed with the key id from the environment");

    let out = scratch.output(&["llm", "ping"], &[("AWS_ACCESS_KEY_ID", "AKIDOTHER"), env[1], env[2]]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.lines().count() == 1, "{err}");
    assert!(!err.contains(secret), "{err}");
}

#[test]
fn a_bedrock_provider_without_a_region_is_a_config_error() {
    let scratch = Scratch::new();
    let config =
        "[llm]\nprimary = \"claude\"\n\n[[llm.provider]]\nname = \"claude\"\nkind = \"bedrock\"\nmodel = \"m\"\n";
    std::fs::write(scratch.path().join("den.toml"), config).unwrap();
    let out = scratch.output(&["config", "check"], &[("DISCORD_TOKEN", "x")]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bedrock needs region"), "{}", stderr(&out));
}

#[test]
fn a_local_model_answers_without_a_key_or_a_server() {
    let scratch = Scratch::new();
    let model = scratch.path().join("tiny.gguf");
    den_local::testing::write_tiny_model(&model, den_local::testing::Says::Laughter).unwrap();
    let text = format!(
        "[llm]\nprimary = \"here\"\n\n[[llm.provider]]\nname = \"here\"\nkind = \"local\"\npath = \"{}\"\nthreads = 1\n",
        model.display()
    );
    std::fs::write(scratch.path().join("den.toml"), text).unwrap();
    let out = scratch.output(&["llm", "ping"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("here (local): hahaha"), "{text}");
    // The tiny model keeps 256 positions: half of them may be reply.
    assert!(text.contains("here (local): hahahahahaha") && text.contains("finish Length"), "{text}");
}

#[test]
fn a_local_provider_without_its_model_says_how_to_fetch_it() {
    let scratch = Scratch::new();
    let text = "[llm]\nprimary = \"here\"\n\n[[llm.provider]]\nname = \"here\"\nkind = \"local\"\n";
    std::fs::write(scratch.path().join("den.toml"), text).unwrap();
    let out = scratch.output(&["llm", "ping"], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("den model fetch") && err.contains("SmolLM2-135M-Instruct.Q4_1.gguf"), "{err}");
}
