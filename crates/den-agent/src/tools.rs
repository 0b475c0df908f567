//! The native tools a model works with, dispatched by a table: files,
//! search, edits, sandboxed commands and read-only git.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use den_llm::ToolSpec;
use serde_json::{Value, json};

use crate::git::Git;
use crate::sandbox::Sandbox;
use crate::workspace::Workspace;
use crate::{ToolError, output};

/// Most files `list_files` names and matches `search` shows.
const MAX_LISTED: usize = 2000;
const MAX_MATCHES: usize = 500;
/// Longest a command may run, whatever the model asks.
pub const MAX_RUN: Duration = Duration::from_secs(600);

/// What a tool answered: what the model sees, and the whole of it for the turn log.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    /// Cut to [`output::LIMIT`]. Not kept in a saved run: the conversation holds it already.
    #[serde(skip)]
    pub shown: String,
    /// Everything (not kept in a saved run: the turn log has its size and digest).
    #[serde(skip)]
    pub full: String,
    /// The tool succeeded.
    pub ok: bool,
}

/// The tools of one workspace.
#[derive(Clone, Debug)]
pub struct Tools {
    /// The workspace.
    pub workspace: Workspace,
    /// Its repository.
    pub git: Git,
    /// Where `run` runs.
    pub sandbox: Sandbox,
    /// The session's sandbox user.
    pub session_uid: u32,
    /// Tools of the operator's MCP servers, beside den's own.
    pub mcp: Option<crate::mcp::SharedMcp>,
    /// Longest a command may run ([`MAX_RUN`] at most): under a worker's job timeout when turns are jobs.
    pub run_limit: Duration,
}

type Reply<'a> = Pin<Box<dyn Future<Output = Result<String, ToolError>> + Send + 'a>>;
type Handler = for<'a> fn(&'a Tools, &'a Value) -> Reply<'a>;

/// A native tool: name, description, input schema, handler.
type Entry = (&'static str, &'static str, fn() -> Value, Handler);

/// Every native tool.
const TABLE: &[Entry] = &[
    ("read_file", "Read a text file of the workspace, with line numbers.", read_file_schema, |t, i| {
        Box::pin(t.read_file(i))
    }),
    ("list_files", "List files matching a glob (default all), honouring .gitignore.", glob_schema, |t, i| {
        Box::pin(t.list_files(i))
    }),
    ("search", "Search files for a regular expression; answers path:line: text.", search_schema, |t, i| {
        Box::pin(t.search(i))
    }),
    ("write_file", "Create or replace a file with the given content.", write_schema, |t, i| Box::pin(t.write_file(i))),
    ("edit_file", "Replace `old` (which must occur exactly once) with `new` in a file.", edit_schema, |t, i| {
        Box::pin(t.edit_file(i))
    }),
    ("run", "Run a shell command in the workspace, in a sandbox without network.", run_schema, |t, i| {
        Box::pin(t.run(i))
    }),
    ("git_status", "Show the working tree's status.", empty_schema, |t, _| Box::pin(t.git.status())),
    ("git_diff", "Show the uncommitted changes.", empty_schema, |t, _| Box::pin(t.git.diff(None))),
    ("git_log", "Show recent commits.", log_schema, |t, i| {
        Box::pin(t.git.log(number(i, "count").unwrap_or(10) as u32))
    }),
];

fn empty_schema() -> Value {
    json!({"type": "object", "properties": {}})
}
fn read_file_schema() -> Value {
    json!({"type": "object", "required": ["path"], "properties": {
        "path": {"type": "string"}, "offset": {"type": "integer", "description": "first line, from 1"},
        "limit": {"type": "integer", "description": "lines to read"}}})
}
fn glob_schema() -> Value {
    json!({"type": "object", "properties": {"glob": {"type": "string"}}})
}
fn search_schema() -> Value {
    json!({"type": "object", "required": ["regex"], "properties": {"regex": {"type": "string"}, "glob": {"type": "string"}}})
}
fn write_schema() -> Value {
    json!({"type": "object", "required": ["path", "content"], "properties": {"path": {"type": "string"}, "content": {"type": "string"}}})
}
fn edit_schema() -> Value {
    json!({"type": "object", "required": ["path", "old", "new"], "properties": {
        "path": {"type": "string"}, "old": {"type": "string"}, "new": {"type": "string"}}})
}
fn run_schema() -> Value {
    json!({"type": "object", "required": ["command"], "properties": {
        "command": {"type": "string"}, "timeout": {"type": "integer", "description": "seconds, at most 600"}}})
}
fn log_schema() -> Value {
    json!({"type": "object", "properties": {"count": {"type": "integer"}}})
}

fn text<'a>(input: &'a Value, key: &str) -> Result<&'a str, ToolError> {
    input[key].as_str().ok_or_else(|| ToolError::BadInput(format!("`{key}` (a string) is required")))
}

fn number(input: &Value, key: &str) -> Option<u64> {
    input[key].as_u64()
}

impl Tools {
    /// den's own tools and the MCP servers', as the model is offered them.
    #[must_use]
    pub fn offered(&self) -> Vec<ToolSpec> {
        let mut specs = Self::specs();
        specs.extend(self.mcp.iter().flat_map(|m| m.specs()));
        specs
    }

    /// den's own tools as the model is offered them.
    #[must_use]
    pub fn specs() -> Vec<ToolSpec> {
        TABLE
            .iter()
            .map(|(name, description, schema, _)| ToolSpec {
                name: (*name).into(),
                description: (*description).into(),
                input_schema: schema(),
            })
            .collect()
    }

    /// Whether `name` is one of these tools.
    #[must_use]
    pub fn has(name: &str) -> bool {
        TABLE.iter().any(|(n, ..)| *n == name)
    }

    /// Calls tool `name` with `input`; a failure is an outcome the model reads, not an error.
    pub async fn call(&self, name: &str, input: &Value) -> Outcome {
        let result = match TABLE.iter().find(|(n, ..)| *n == name) {
            Some((.., handler)) => handler(self, input).await,
            None => match &self.mcp {
                Some(mcp) if mcp.has(name) => return mcp.call(name, input).await,
                _ => Err(ToolError::BadInput(format!("there is no tool called {name}"))),
            },
        };
        let (full, ok) = match result {
            Ok(text) => (text, true),
            Err(e) => (e.to_string(), false),
        };
        Outcome { shown: output::cut(&full, output::LIMIT), full, ok }
    }

    async fn read_file(&self, input: &Value) -> Result<String, ToolError> {
        let name = text(input, "path")?;
        let path = self.workspace.resolve(name)?;
        let bytes = std::fs::read(&path).map_err(|e| ToolError::Failed(format!("{name}: {e}")))?;
        let content = String::from_utf8(bytes).map_err(|_| ToolError::Failed("not a text file".into()))?;
        let first = number(input, "offset").unwrap_or(1).max(1) as usize;
        let limit = number(input, "limit").unwrap_or(2000) as usize;
        let lines: Vec<String> = content
            .lines()
            .enumerate()
            .skip(first - 1)
            .take(limit)
            .map(|(i, l)| format!("{:>5}\t{l}", i + 1))
            .collect();
        Ok(if lines.is_empty() { "(no lines there)".into() } else { lines.join("\n") })
    }

    /// Files of the workspace (not `.git`, not what .gitignore ignores) matching `glob`.
    fn walk(&self, glob: Option<&str>) -> Result<Vec<std::path::PathBuf>, ToolError> {
        let root = self.workspace.root();
        let mut walk = ignore::WalkBuilder::new(root);
        walk.hidden(false).git_ignore(true).require_git(false).parents(false);
        walk.filter_entry(|e| e.file_name() != ".git");
        if let Some(glob) = glob.filter(|g| !g.is_empty()) {
            let mut o = ignore::overrides::OverrideBuilder::new(root);
            o.add(glob).map_err(|e| ToolError::BadInput(format!("glob {glob}: {e}")))?;
            walk.overrides(o.build().map_err(|e| ToolError::BadInput(format!("glob {glob}: {e}")))?);
        }
        let mut files: Vec<_> = walk
            .build()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_some_and(|t| t.is_file()))
            .map(ignore::DirEntry::into_path)
            .collect();
        files.sort();
        Ok(files)
    }

    fn shown(&self, path: &Path) -> String {
        self.workspace.relative(path).display().to_string()
    }

    async fn list_files(&self, input: &Value) -> Result<String, ToolError> {
        let files = self.walk(input["glob"].as_str())?;
        let mut out: Vec<String> = files.iter().take(MAX_LISTED).map(|p| self.shown(p)).collect();
        if files.len() > MAX_LISTED {
            out.push(format!("[... {} more files]", files.len() - MAX_LISTED));
        }
        Ok(if out.is_empty() { "(no files)".into() } else { out.join("\n") })
    }

    async fn search(&self, input: &Value) -> Result<String, ToolError> {
        let pattern = text(input, "regex")?;
        let re = regex::Regex::new(pattern).map_err(|e| ToolError::BadInput(format!("regex: {e}")))?;
        let mut out = Vec::new();
        'files: for path in self.walk(input["glob"].as_str())? {
            let Ok(content) = std::fs::read_to_string(&path) else { continue };
            for (i, line) in content.lines().enumerate() {
                if re.is_match(line) {
                    out.push(format!("{}:{}: {line}", self.shown(&path), i + 1));
                    if out.len() == MAX_MATCHES {
                        out.push("[... more matches left out]".into());
                        break 'files;
                    }
                }
            }
        }
        Ok(if out.is_empty() { "(no matches)".into() } else { out.join("\n") })
    }

    async fn write_file(&self, input: &Value) -> Result<String, ToolError> {
        let name = text(input, "path")?;
        let content = text(input, "content")?;
        let path = self.workspace.resolve_for_write(name)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ToolError::Failed(format!("{name}: {e}")))?;
        }
        std::fs::write(&path, content).map_err(|e| ToolError::Failed(format!("{name}: {e}")))?;
        Ok(format!("wrote {name} ({} lines)", content.lines().count()))
    }

    async fn edit_file(&self, input: &Value) -> Result<String, ToolError> {
        let name = text(input, "path")?;
        let (old, new) = (text(input, "old")?, text(input, "new")?);
        if old.is_empty() {
            return Err(ToolError::BadInput("`old` is empty: use write_file to create a file".into()));
        }
        let path = self.workspace.resolve_for_write(name)?;
        let content = std::fs::read_to_string(&path).map_err(|e| ToolError::Failed(format!("{name}: {e}")))?;
        match content.matches(old).count() {
            1 => {}
            0 => return Err(ToolError::BadInput(format!("`old` does not occur in {name}; read the file again"))),
            n => {
                return Err(ToolError::BadInput(format!(
                    "`old` occurs {n} times in {name}; include more lines around it so it occurs once"
                )));
            }
        }
        std::fs::write(&path, content.replacen(old, new, 1)).map_err(|e| ToolError::Failed(format!("{name}: {e}")))?;
        Ok(format!("edited {name}"))
    }

    async fn run(&self, input: &Value) -> Result<String, ToolError> {
        let command = text(input, "command")?;
        let most = self.run_limit.min(MAX_RUN).as_secs().max(1);
        let timeout = Duration::from_secs(number(input, "timeout").unwrap_or(120).clamp(1, most));
        let ran = self.sandbox.run(self.workspace.root(), self.session_uid, command, timeout).await?;
        if ran.timed_out {
            return Err(ToolError::Failed(format!("killed after {} s (the timeout)", timeout.as_secs())));
        }
        let code = ran.code.map_or_else(|| "killed by a signal".to_owned(), |c| format!("exit code {c}"));
        let body = format!("{code}\n--- stdout\n{}\n--- stderr\n{}", ran.stdout, ran.stderr);
        if ran.code == Some(0) { Ok(body) } else { Err(ToolError::Failed(body)) }
    }
}
