//! Channelwright: a campaign's space in seconds, exactly once.
//!
//! `/add-campaign` answers at once (deferred), stores a plan (roles, a
//! private category, the template's channels), then a job carries it out step
//! by step: each step idempotent, so a crash or a retry resumes without
//! duplicates. Progress is drawn in the deferred answer at most once a second
//! and never holds up creation; a summary ends it.
//!
//! - [`template`]: templates (TOML) and the shipped default.
//! - [`plan`]: the stored plan, progress and summary.
//! - [`build`]: carrying a plan out exactly once, on nothing den did not make.

pub mod build;
pub mod plan;
pub mod template;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use den_core::{Clock, Job};
use den_discord::attachments::{Attachments, Download};
use den_discord::events::{InboundInteraction, MANAGE_CHANNELS, MANAGE_ROLES};
use den_discord::router::finish_interaction;
use den_discord::{CommandSpec, Egress, IngressCx, InteractionRef, Module, OptionKind, OptionSpec, Reaction};
use den_worker::{JobContext, JobError, JobHandler};
use serde_json::{Value, json};

use crate::build::{BuildError, Builder};
use crate::plan::{Gm, Plan, Plans, Status};
use crate::template::Template;

/// Job kind: plan (if new) and build a campaign.
pub const BUILD: &str = "campaigns.build";
/// Job kind: delete a campaign's channels, category and roles.
pub const DELETE: &str = "campaigns.delete";
/// Job kind: make a campaign read-only under the archive category.
pub const ARCHIVE: &str = "campaigns.archive";
/// Job kind: import a template attached to `/campaign-template`.
pub const IMPORT: &str = "campaigns.template";

/// Largest template file den downloads.
pub const MAX_TEMPLATE_BYTES: u64 = 64 * 1024;

/// The campaigns module.
pub struct CampaignsModule {
    egress: Arc<Egress>,
    plans: Plans,
    clock: Arc<dyn Clock>,
    templates: Vec<Template>,
    /// Least time between progress edits.
    progress_every: Duration,
    /// A role whose members may manage campaigns without Manage Channels.
    manager_role: Option<u64>,
    /// Downloads attachments (from Discord, or a configured stand-in).
    attachments: Attachments,
}

impl std::fmt::Debug for CampaignsModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CampaignsModule").field("templates", &self.templates.len()).finish_non_exhaustive()
    }
}

fn retry(e: impl std::fmt::Display) -> JobError {
    JobError::retry(e.to_string())
}

impl CampaignsModule {
    /// The module, with the default template and `templates`; members of
    /// `manager_role` may manage campaigns without Manage Channels.
    pub fn new(
        egress: Arc<Egress>,
        plans: Plans,
        clock: Arc<dyn Clock>,
        templates: Vec<Template>,
        manager_role: Option<u64>,
        extra_hosts: Vec<String>,
    ) -> Arc<Self> {
        let mut all = vec![Template::default_template()];
        all.extend(templates.into_iter().filter(|t| t.name != "default"));
        Arc::new(Self {
            egress,
            plans,
            clock,
            templates: all,
            progress_every: Duration::from_secs(1),
            manager_role,
            attachments: Attachments::new(extra_hosts),
        })
    }

    /// Whether the invoker may manage campaigns: Manage Channels, or the configured role.
    fn may_manage(&self, i: &InboundInteraction) -> bool {
        i.has_permission(MANAGE_CHANNELS) || self.manager_role.is_some_and(|r| i.roles.contains(&r))
    }

    /// Who sees the managing commands in Discord's menu: with a manager role
    /// configured, everyone (den checks the role itself).
    fn managers(&self) -> Option<u64> {
        if self.manager_role.is_some() { None } else { Some(MANAGE_CHANNELS) }
    }

    fn template(&self, name: &str) -> Option<&Template> {
        self.templates.iter().find(|t| t.name.eq_ignore_ascii_case(name))
    }

    /// A template by name: den's, then the guild's own.
    async fn find_template(&self, guild: u64, name: &str) -> Result<Option<Template>, JobError> {
        match self.template(name) {
            Some(t) => Ok(Some(t.clone())),
            None => self.plans.template(guild, name).await.map_err(retry),
        }
    }

    async fn import_job(&self, payload: &Value) -> Result<(), JobError> {
        let iref = serde_json::from_value::<InteractionRef>(payload["interaction"].clone())
            .map_err(|e| JobError::permanent(format!("bad template payload: {e}")))?;
        let guild = iref.guild_id.ok_or_else(|| JobError::permanent("no guild"))?;
        let url = payload["url"].as_str().unwrap_or_default();
        let filename = payload["filename"].as_str().unwrap_or("template.toml");
        // Checked again here: a job's payload is not trusted because ingress checked it.
        if !self.attachments.allows(url) {
            return self.finish(&iref, "den only downloads attachments from Discord.").await;
        }
        let bytes = match self.attachments.get(url, MAX_TEMPLATE_BYTES).await {
            Ok(b) => b,
            Err(Download::Retry(e)) => return Err(retry(e)),
            Err(Download::Refused(why)) => return self.finish(&iref, &format!("Cannot use {filename}: {why}.")).await,
        };
        let text = String::from_utf8_lossy(&bytes);
        let answer = match Template::from_named_text(filename, &text) {
            Err(e) => format!("❌ {filename}: {e}"),
            Ok(t) if self.template(&t.name).is_some() => {
                format!("❌ {filename}: a template called **{}** ships with den; give yours another name.", t.name)
            }
            Ok(t) => {
                self.plans.save_template(guild, &t).await.map_err(retry)?;
                format!("✅ Template saved: {}. Use it with `/add-campaign template:{}`.", t.describe(), t.name)
            }
        };
        self.finish(&iref, &answer).await
    }

    async fn build_job(&self, payload: &Value) -> Result<(), JobError> {
        let iref = serde_json::from_value::<InteractionRef>(payload["interaction"].clone())
            .map_err(|e| JobError::permanent(format!("bad campaign payload: {e}")))?;
        let guild = iref.guild_id.ok_or_else(|| JobError::permanent("no guild"))?;
        let name = payload["name"].as_str().unwrap_or_default().to_owned();
        let wanted = payload["template"].as_str().unwrap_or("default");
        let Some(template) = self.find_template(guild, wanted).await? else {
            return self.finish(&iref, &format!("No template called {wanted:?} here.")).await;
        };
        let gm = payload["gm"].as_u64().map_or(Gm::Role, Gm::User);
        let now = self.clock.now();
        let (plan, version) = match self.plans.get(guild, &name).await.map_err(retry)? {
            // A retry of this very request resumes; anyone else's is a duplicate.
            Some((p, v)) if p.interaction.as_ref().map(|i| i.id) == Some(iref.id) => (p, v),
            Some(_) => {
                return self.finish(&iref, &format!("There is already a campaign called **{name}** here.")).await;
            }
            None => {
                let mut plan = Plan::new(guild, &name, gm, &template, now);
                plan.interaction = Some(iref.clone());
                let taken = build::names_in_use(&self.egress, &plan).await.map_err(retry)?;
                if let Some(first) = taken.first() {
                    let text = format!(
                        "This server already has a role or category called **{first}**. den only builds what it \
                         can call its own: pick another campaign name."
                    );
                    return self.finish(&iref, &text).await;
                }
                if !self.plans.create(&plan).await.map_err(retry)? {
                    return self.finish(&iref, &format!("There is already a campaign called **{name}** here.")).await;
                }
                self.plans.get(guild, &name).await.map_err(retry)?.ok_or_else(|| retry("plan vanished"))?
            }
        };
        if plan.status == Status::Done {
            return self.finish(&iref, &plan::summary(&plan)).await;
        }
        // Progress goes through a reporter that edits at most once per
        // interval: creation never waits on an edit.
        let latest: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let stop = tokio_util::sync::CancellationToken::new();
        let reporter = {
            let (latest, stop, egress, token, every) =
                (latest.clone(), stop.clone(), self.egress.clone(), iref.token.clone(), self.progress_every);
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(every) => {}
                    }
                    let text = latest.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
                    if let Some(t) = text
                        && let Err(e) = egress.edit_original(&token, &t).await
                    {
                        tracing::debug!(error = %e, "progress edit failed");
                    }
                }
            })
        };
        let report = |p: &Plan, last: &str| {
            *latest.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(plan::progress_text(p, last));
        };
        let bot = self.bot_user().await?;
        let builder = Builder { egress: &self.egress, plans: &self.plans, bot, clock: &*self.clock, progress: &report };
        let outcome = builder.run(plan.clone(), version, None).await;
        stop.cancel();
        let _ = reporter.await;
        match outcome {
            Ok(done) => self.finish(&iref, &plan::summary(&done)).await,
            Err(BuildError::Transient(e)) => Err(retry(e)),
            Err(BuildError::Store(e)) => Err(retry(e)),
            Err(BuildError::Step { step, source }) => {
                if let Some((mut p, v)) = self.plans.get(guild, &name).await.map_err(retry)? {
                    p.status = Status::Failed;
                    p.failures.push(format!("{step}: {source}"));
                    let _ = self.plans.save(&p, v).await;
                }
                let (done, total) =
                    self.plans.get(guild, &name).await.map_err(retry)?.map_or((0, 0), |(p, _)| p.progress());
                let text = format!(
                    "❌ **Campaign {name}** stopped at {done}/{total}: Discord refused to create **{step}** ({source}).\n\
                     Clean up with `/delete-campaign name:{name}`, fix the cause, and add it again."
                );
                self.finish(&iref, &text).await?;
                Err(JobError::permanent(format!("campaign step {step} failed")))
            }
        }
    }

    async fn teardown_job(&self, kind: &str, payload: &Value) -> Result<(), JobError> {
        let iref = serde_json::from_value::<InteractionRef>(payload["interaction"].clone())
            .map_err(|e| JobError::permanent(format!("bad campaign payload: {e}")))?;
        let guild = iref.guild_id.ok_or_else(|| JobError::permanent("no guild"))?;
        let name = payload["name"].as_str().unwrap_or_default();
        let Some((mut plan, version)) = self.plans.get(guild, name).await.map_err(retry)? else {
            return self.finish(&iref, &format!("There is no campaign called **{name}**.")).await;
        };
        if kind == DELETE {
            let gone = build::tear_down(&self.egress, &plan).await.map_err(retry)?;
            self.plans.remove(guild, name).await.map_err(retry)?;
            self.finish(
                &iref,
                &format!("🗑️ Campaign **{}** deleted ({gone} channels, categories and roles).", plan.name),
            )
            .await
        } else {
            let bot = self.bot_user().await?;
            build::archive(&self.egress, &self.plans, &*self.clock, &plan, bot).await.map_err(retry)?;
            plan.status = Status::Archived;
            self.plans.save(&plan, version).await.map_err(retry)?;
            self.finish(
                &iref,
                &format!("📦 Campaign **{}** archived: read-only, under {}.", plan.name, plan::ARCHIVE_CATEGORY),
            )
            .await
        }
    }

    async fn finish(&self, iref: &InteractionRef, text: &str) -> Result<(), JobError> {
        finish_interaction(&self.egress, &*self.clock, iref, text).await.map_err(retry)
    }

    /// den's bot user id, which private channels show to (asked from Discord if not yet known).
    async fn bot_user(&self) -> Result<u64, JobError> {
        match self.egress.bot_user_id() {
            0 => self.egress.learn_bot_user().await.map_err(retry),
            id => Ok(id),
        }
    }
}

#[async_trait]
impl Module for CampaignsModule {
    fn name(&self) -> &'static str {
        "campaigns"
    }

    fn commands(&self) -> Vec<CommandSpec> {
        // Free text: a server's own templates are offered too.
        let template = OptionSpec::new("template", "Which channel set (default: default)", OptionKind::String, false);
        vec![
            CommandSpec {
                default_member_permissions: self.managers(),
                ..CommandSpec::new("add-campaign", "Create a campaign's role, category and channels")
                    .option(OptionSpec::new("name", "The campaign's name", OptionKind::String, true))
                    .option(template)
                    .option(OptionSpec::new("gm", "The game master (default: a GM role)", OptionKind::User, false))
            },
            CommandSpec::new("list-campaigns", "The campaigns of this server"),
            CommandSpec {
                default_member_permissions: self.managers(),
                ..CommandSpec::new(
                    "campaign-template",
                    "Add a campaign template from a file (.toml, .json or .md list)",
                )
                .option(OptionSpec::new("file", "The template file", OptionKind::Attachment, true))
            },
            CommandSpec {
                default_member_permissions: self.managers(),
                ..CommandSpec::new("delete-campaign", "Delete a campaign's channels, category and roles")
                    .option(OptionSpec::new("name", "The campaign", OptionKind::String, true))
            },
            CommandSpec {
                default_member_permissions: self.managers(),
                ..CommandSpec::new("archive-campaign", "Make a campaign read-only and move it to the archive")
                    .option(OptionSpec::new("name", "The campaign", OptionKind::String, true))
            },
        ]
    }

    async fn on_interaction(&self, i: &InboundInteraction, cx: &IngressCx) -> Option<Reaction> {
        if let Some(id) = i.custom_id.as_deref().filter(|id| id.starts_with("campaigns:")) {
            return Some(self.on_button(i, id, cx));
        }
        match i.command.as_deref()? {
            "campaign-template" => {
                let guild = i.guild_id?;
                if !self.may_manage(i) {
                    return Some(Reaction::reply(
                        "You need Manage Channels (or the campaign managers' role) for that.",
                        true,
                    ));
                }
                let Some(file) = i.resolved_attachments.first() else {
                    return Some(Reaction::reply("Attach a template file (.toml, .json or a .md list).", true));
                };
                if file.size > MAX_TEMPLATE_BYTES {
                    return Some(Reaction::reply(
                        format!("{} is over {MAX_TEMPLATE_BYTES} bytes.", file.filename),
                        true,
                    ));
                }
                if !self.attachments.allows(&file.url) {
                    return Some(Reaction::reply("den only downloads attachments from Discord.", true));
                }
                let payload =
                    json!({"interaction": InteractionRef::of(i, cx.now), "url": file.url, "filename": file.filename});
                Some(Reaction::defer(Job::builder(IMPORT, cx.now).guild(guild).payload(payload).build(), true))
            }
            "delete-campaign" | "archive-campaign" => {
                let guild = i.guild_id?;
                if !self.may_manage(i) {
                    return Some(Reaction::reply(
                        "You need Manage Channels (or the campaign managers' role) for that.",
                        true,
                    ));
                }
                let name = i.option_str("name").unwrap_or_default();
                let found = match self.plans.get(guild, name).await {
                    Ok(found) => found,
                    Err(e) => return Some(Reaction::reply(format!("Cannot read the campaigns now: {e}"), true)),
                };
                let Some((plan, _)) = found else {
                    return Some(Reaction::reply(format!("There is no campaign called **{name}**."), true));
                };
                if i.command.as_deref() == Some("archive-campaign") {
                    let payload = json!({"interaction": InteractionRef::of(i, cx.now), "name": plan.name});
                    let job = Job::builder(ARCHIVE, cx.now).guild(guild).payload(payload).build();
                    return Some(Reaction::defer(job, false));
                }
                let made = plan.steps.iter().filter(|s| s.id.is_some()).count();
                let key = plan::key(&plan.name);
                Some(Reaction {
                    ack: den_discord::Ack::Ask {
                        content: format!(
                            "Delete campaign **{}**: {made} channels, categories and roles, with everything posted                              in them? This cannot be undone.",
                            plan.name
                        ),
                        ephemeral: true,
                        buttons: vec![
                            (format!("campaigns:delete:{key}"), "Delete".into(), true),
                            ("campaigns:keep".into(), "Keep it".into(), false),
                        ],
                    },
                    jobs: vec![],
                })
            }
            "add-campaign" => {
                if i.guild_id.is_none() {
                    return Some(Reaction::reply("Campaigns live in servers.", true));
                }
                if !self.may_manage(i) {
                    return Some(Reaction::reply(
                        "You need Manage Channels (or the campaign managers' role) for that.",
                        true,
                    ));
                }
                let name = match plan::check_name(i.option_str("name").unwrap_or_default()) {
                    Ok(n) => n,
                    Err(e) => return Some(Reaction::reply(e, true)),
                };
                let lacks = i.app_lacks(MANAGE_CHANNELS | MANAGE_ROLES);
                if lacks != 0 {
                    let mut missing = Vec::new();
                    if lacks & MANAGE_CHANNELS != 0 {
                        missing.push("Manage Channels");
                    }
                    if lacks & MANAGE_ROLES != 0 {
                        missing.push("Manage Roles");
                    }
                    return Some(Reaction::reply(
                        format!(
                            "den needs the {} permission{} here to build a campaign: give its role {} in Server \
                             Settings → Roles.",
                            missing.join(" and "),
                            if missing.len() > 1 { "s" } else { "" },
                            if missing.len() > 1 { "them" } else { "it" }
                        ),
                        true,
                    ));
                }
                let template = i.option_str("template").unwrap_or("default");
                let payload = json!({
                    "interaction": InteractionRef::of(i, cx.now),
                    "name": name,
                    "template": template,
                    "gm": i.option_user("gm"),
                });
                let job = Job::builder(BUILD, cx.now).guild(i.guild_id.unwrap_or(0)).payload(payload).build();
                Some(Reaction::defer(job, false))
            }
            "list-campaigns" => {
                let guild = i.guild_id?;
                // A read of one partition; answered at once.
                let plans = match self.plans.list(guild).await {
                    Ok(p) => p,
                    Err(e) => return Some(Reaction::reply(format!("Cannot read the campaigns now: {e}"), true)),
                };
                if plans.is_empty() {
                    return Some(Reaction::reply("No campaigns yet: `/add-campaign name:...`", true));
                }
                let lines: Vec<String> = plans
                    .iter()
                    .map(|p| {
                        let (done, total) = p.progress();
                        let state = match p.status {
                            Status::Done => "ready".to_owned(),
                            Status::Building => format!("building {done}/{total}"),
                            Status::Failed => format!("failed at {done}/{total}"),
                            Status::Archived => "archived".to_owned(),
                        };
                        format!("• **{}** ({state})", p.name)
                    })
                    .collect();
                Some(Reaction::reply(lines.join("\n"), true))
            }
            _ => None,
        }
    }

    fn handlers(self: Arc<Self>) -> Vec<(String, Arc<dyn JobHandler>)> {
        let h: Arc<dyn JobHandler> = Arc::new(CampaignJobs(self));
        vec![(BUILD.into(), h.clone()), (DELETE.into(), h.clone()), (ARCHIVE.into(), h.clone()), (IMPORT.into(), h)]
    }
}

impl CampaignsModule {
    fn on_button(&self, i: &InboundInteraction, id: &str, cx: &IngressCx) -> Reaction {
        let update =
            |text: &str| Reaction { ack: den_discord::Ack::UpdateMessage { content: text.into() }, jobs: vec![] };
        let Some(key) = id.strip_prefix("campaigns:delete:") else { return update("Kept.") };
        if !self.may_manage(i) {
            return update("You need Manage Channels (or the campaign managers' role) for that.");
        }
        let payload = json!({"interaction": InteractionRef::of(i, cx.now), "name": key});
        let job = Job::builder(DELETE, cx.now).guild(i.guild_id.unwrap_or(0)).payload(payload).build();
        Reaction { ack: den_discord::Ack::UpdateMessage { content: format!("Deleting **{key}**…") }, jobs: vec![job] }
    }
}

/// Runs the module's jobs.
pub struct CampaignJobs(pub Arc<CampaignsModule>);

#[async_trait]
impl JobHandler for CampaignJobs {
    async fn run(&self, job: &Job, _cx: &JobContext) -> Result<(), JobError> {
        match job.kind.as_str() {
            BUILD => self.0.build_job(&job.payload).await,
            DELETE | ARCHIVE => self.0.teardown_job(&job.kind, &job.payload).await,
            IMPORT => self.0.import_job(&job.payload).await,
            other => Err(JobError::permanent(format!("campaigns has no job {other}"))),
        }
    }
}
