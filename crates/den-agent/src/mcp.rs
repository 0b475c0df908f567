//! Tools from MCP servers the operator attached: a command den starts and
//! talks to over stdio, or a server at a streamable-HTTP URL. Their tools are
//! offered to the model beside den's own, named `<server>__<tool>`. They run
//! in their own servers, outside den's sandbox: the operator vouches for them.

use std::sync::Arc;
use std::time::Duration;

use den_llm::ToolSpec;
use rmcp::model::{CallToolRequestParams, Tool};
use rmcp::service::RunningService;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::output;
use crate::tools::Outcome;

/// Longest den waits for an MCP tool.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest den waits for a server to start and list its tools.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// An MCP server, as the operator configures it: a `command` or a `url`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServer {
    /// Its name: tools are offered as `<name>__<tool>` (letters, digits, `_`, `-`).
    pub name: String,
    /// A program and its arguments, spoken to over stdio.
    #[serde(default)]
    pub command: Vec<String>,
    /// A streamable-HTTP endpoint.
    #[serde(default)]
    pub url: Option<String>,
}

struct Connected {
    server: McpServer,
    client: RunningService<RoleClient, ()>,
    tools: Vec<Tool>,
}

/// The connected servers and their tools.
#[derive(Default)]
pub struct Mcp {
    servers: Vec<Connected>,
}

impl std::fmt::Debug for Mcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mcp").field("servers", &self.servers.len()).finish()
    }
}

/// Separates a server's name from its tool's in the names the model sees.
const SEPARATOR: &str = "__";

impl Mcp {
    /// Connects to each server and lists its tools; a server that cannot be
    /// reached is left out, and said why.
    pub async fn connect(servers: &[McpServer]) -> (Self, Vec<String>) {
        let mut connected = Vec::new();
        let mut problems = Vec::new();
        for server in servers {
            match tokio::time::timeout(START_TIMEOUT, connect_one(server)).await {
                Ok(Ok(c)) => connected.push(c),
                Ok(Err(e)) => problems.push(format!("MCP server {}: {e}", server.name)),
                Err(_) => problems.push(format!("MCP server {}: no answer in {START_TIMEOUT:?}", server.name)),
            }
        }
        (Self { servers: connected }, problems)
    }

    /// Every tool, as the model is offered it.
    #[must_use]
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.servers
            .iter()
            .flat_map(|c| {
                c.tools.iter().map(|t| ToolSpec {
                    name: format!("{}{SEPARATOR}{}", c.server.name, t.name),
                    description: format!(
                        "{} (from the MCP server {}, outside den's sandbox)",
                        t.description.as_deref().unwrap_or(""),
                        c.server.name
                    ),
                    input_schema: Value::Object((*t.input_schema).clone()),
                })
            })
            .collect()
    }

    /// Servers and their tools, for `den agent doctor`.
    #[must_use]
    pub fn describe(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|c| {
                let how = c.server.url.clone().unwrap_or_else(|| c.server.command.join(" "));
                let tools: Vec<&str> = c.tools.iter().map(|t| t.name.as_ref()).collect();
                format!("{} ({how}): {}", c.server.name, tools.join(", "))
            })
            .collect()
    }

    /// Whether `name` is one of the servers' tools.
    #[must_use]
    pub fn has(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    fn find<'a>(&self, name: &'a str) -> Option<(&Connected, &'a str)> {
        let (server, tool) = name.split_once(SEPARATOR)?;
        let c = self.servers.iter().find(|c| c.server.name == server)?;
        c.tools.iter().any(|t| t.name == tool).then_some((c, tool))
    }

    /// Calls tool `name` (`<server>__<tool>`) with `input`.
    pub async fn call(&self, name: &str, input: &Value) -> Outcome {
        let Some((c, tool)) = self.find(name) else {
            return failed(format!("no MCP tool {name}"));
        };
        let mut params = CallToolRequestParams::new(tool.to_owned());
        params.arguments = input.as_object().cloned();
        match tokio::time::timeout(CALL_TIMEOUT, c.client.peer().call_tool(params)).await {
            Err(_) => failed(format!("{name} gave no answer in {} s", CALL_TIMEOUT.as_secs())),
            Ok(Err(e)) => failed(format!("{name} failed: {e}")),
            Ok(Ok(result)) => {
                let mut text: Vec<String> =
                    result.content.iter().filter_map(|b| b.as_text().map(|t| t.text.clone())).collect();
                if text.is_empty()
                    && let Some(structured) = &result.structured_content
                {
                    text.push(structured.to_string());
                }
                let full = text.join("\n");
                Outcome { shown: output::cut(&full, output::LIMIT), full, ok: result.is_error != Some(true) }
            }
        }
    }
}

fn failed(message: String) -> Outcome {
    Outcome { shown: message.clone(), full: message, ok: false }
}

async fn connect_one(server: &McpServer) -> Result<Connected, String> {
    if !server.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || (c == '_'))
        || server.name.contains(SEPARATOR)
    {
        return Err("a name of letters, digits, - and single _ is needed".into());
    }
    let client = match (&server.url, server.command.split_first()) {
        (Some(url), _) => {
            ().serve(StreamableHttpClientTransport::from_uri(url.clone())).await.map_err(|e| e.to_string())?
        }
        (None, Some((program, args))) => {
            let mut cmd = tokio::process::Command::new(program);
            // A server gets what it needs to run and none of den's secrets.
            cmd.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).kill_on_drop(true);
            let transport = TokioChildProcess::new(cmd).map_err(|e| format!("cannot start {program}: {e}"))?;
            ().serve(transport).await.map_err(|e| e.to_string())?
        }
        (None, None) => return Err("give a command or a url".into()),
    };
    let tools = client.peer().list_all_tools().await.map_err(|e| format!("cannot list its tools: {e}"))?;
    Ok(Connected { server: server.clone(), client, tools })
}

/// Shared by every run of a process.
pub type SharedMcp = Arc<Mcp>;
