//! A campaign's plan, stored before anything is created, and carried out
//! step by step, each step idempotent: a crash or a retry resumes where it
//! stopped without creating anything twice.

use std::sync::Arc;

use den_core::Timestamp;
use den_discord::guild::{
    CONNECT, ChannelInfo, ChannelKind, NewChannel, Overwrite, SEND_MESSAGES, Target, VIEW_CHANNEL, channel_name,
};
use den_discord::{DiscordError, Egress, InteractionRef};
use den_storage::{Condition, Put, Query, SkCondition, StoreErrorKind, StoreResult, Table, TableSpec};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::template::{Template, fill};

/// The table's declaration.
#[must_use]
pub fn table_spec() -> TableSpec {
    TableSpec::new("campaigns")
}

/// Who runs the game.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Gm {
    /// A GM role, created with the campaign.
    Role,
    /// A member.
    User(u64),
}

/// What a step makes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepKind {
    /// The members role.
    MembersRole,
    /// The GM role.
    GmRole,
    /// The category.
    Category,
    /// A channel under the category.
    Channel {
        /// Type.
        kind: ChannelKind,
        /// Topic.
        topic: Option<String>,
        /// GM-only.
        private: bool,
        /// Forum tags.
        tags: Vec<String>,
    },
}

/// One step and, once done, the id of what it made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// What it makes.
    pub kind: StepKind,
    /// Its name.
    pub name: String,
    /// The id of what it made.
    pub id: Option<u64>,
}

/// Where a campaign stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being built.
    Building,
    /// Built.
    Done,
    /// A step failed after its retries.
    Failed,
    /// Read-only, under the archive category.
    Archived,
}

/// A campaign's plan and progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Guild.
    pub guild: u64,
    /// Name as given.
    pub name: String,
    /// Who runs it.
    pub gm: Gm,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Where it stands.
    pub status: Status,
    /// The interaction that asked for it (progress and summary go there).
    pub interaction: Option<InteractionRef>,
    /// Steps that failed, with why.
    pub failures: Vec<String>,
    /// When it was asked for.
    pub created: Timestamp,
}

/// A campaign name's key: case and spacing do not make a new name.
#[must_use]
pub fn key(name: &str) -> String {
    name.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// Checks a campaign name: 1-50 characters of letters, digits, spaces and `-_'.:&!`.
pub fn check_name(name: &str) -> Result<String, String> {
    let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
    if name.is_empty() || name.chars().count() > 50 {
        return Err("A campaign name has 1 to 50 characters.".into());
    }
    if let Some(c) = name.chars().find(|c| !(c.is_alphanumeric() || " -_'.:&!".contains(*c))) {
        return Err(format!("A campaign name cannot contain {c:?}: use letters, digits, spaces and - _ ' . : & !"));
    }
    Ok(name)
}

impl Plan {
    /// The plan for `name` from `template`.
    #[must_use]
    pub fn new(guild: u64, name: &str, gm: Gm, template: &Template, now: Timestamp) -> Self {
        let mut steps = vec![Step { kind: StepKind::MembersRole, name: fill(&template.members_role, name), id: None }];
        if gm == Gm::Role {
            steps.push(Step { kind: StepKind::GmRole, name: fill(&template.gm_role, name), id: None });
        }
        steps.push(Step { kind: StepKind::Category, name: fill(&template.category, name), id: None });
        for c in &template.channels {
            steps.push(Step {
                kind: StepKind::Channel {
                    kind: c.kind,
                    topic: c.topic.as_ref().map(|t| fill(t, name)),
                    private: c.private,
                    tags: c.tags.clone(),
                },
                name: fill(&c.name, name),
                id: None,
            });
        }
        Self {
            guild,
            name: name.to_owned(),
            gm,
            steps,
            status: Status::Building,
            interaction: None,
            failures: vec![],
            created: now,
        }
    }

    fn id_of(&self, kind: &StepKind) -> Option<u64> {
        self.steps.iter().find(|s| s.kind == *kind).and_then(|s| s.id)
    }

    /// The overwrites of the category and its channels; GM-only channels
    /// hide from @everyone and the members, and show to the GM and den.
    fn overwrites(&self, bot: u64, private: bool) -> Vec<Overwrite> {
        let members = self.id_of(&StepKind::MembersRole).unwrap_or(0);
        let gm = match self.gm {
            Gm::Role => Target::Role(self.id_of(&StepKind::GmRole).unwrap_or(0)),
            Gm::User(u) => Target::Member(u),
        };
        let see = VIEW_CHANNEL | SEND_MESSAGES | CONNECT;
        let mut o = vec![Overwrite { target: Target::Role(self.guild), allow: 0, deny: VIEW_CHANNEL }];
        if private {
            o.push(Overwrite { target: Target::Role(members), allow: 0, deny: VIEW_CHANNEL });
        } else {
            o.push(Overwrite { target: Target::Role(members), allow: see, deny: 0 });
        }
        o.push(Overwrite { target: gm, allow: see, deny: 0 });
        o.push(Overwrite { target: Target::Member(bot), allow: see, deny: 0 });
        o
    }

    /// Steps done, of all.
    #[must_use]
    pub fn progress(&self) -> (usize, usize) {
        (self.steps.iter().filter(|s| s.id.is_some()).count(), self.steps.len())
    }
}

/// Plans in den's store.
#[derive(Debug, Clone)]
pub struct Plans {
    table: Arc<dyn Table>,
}

/// A stored plan and its version.
pub type Versioned = (Plan, u64);

impl Plans {
    /// Plans over `table` (declared by [`table_spec`]).
    #[must_use]
    pub fn new(table: Arc<dyn Table>) -> Self {
        Self { table }
    }

    fn pk(guild: u64) -> String {
        format!("g:{guild}")
    }

    fn sk(name: &str) -> String {
        format!("c:{}", key(name))
    }

    /// Stores a new plan; `Ok(false)` when the guild already has a campaign of that name.
    pub async fn create(&self, plan: &Plan) -> StoreResult<bool> {
        let attrs = serde_json::to_value(plan).ok().and_then(|v| v.as_object().cloned()).unwrap_or_default();
        let put = Put::new(Self::pk(plan.guild), Self::sk(&plan.name), attrs).condition(Condition::Absent);
        match self.table.put(put).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == StoreErrorKind::ConditionFailed => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The plan of a campaign.
    pub async fn get(&self, guild: u64, name: &str) -> StoreResult<Option<Versioned>> {
        let item = self.table.get(&Self::pk(guild), &Self::sk(name)).await?;
        Ok(item.and_then(|i| serde_json::from_value(Value::Object(i.attrs)).ok().map(|p| (p, i.version))))
    }

    /// Saves `plan` if nobody changed it since `version`; the new version.
    pub async fn save(&self, plan: &Plan, version: u64) -> StoreResult<u64> {
        let attrs = serde_json::to_value(plan).ok().and_then(|v| v.as_object().cloned()).unwrap_or_default();
        let put =
            Put::new(Self::pk(plan.guild), Self::sk(&plan.name), attrs).condition(Condition::VersionEquals(version));
        self.table.put(put).await
    }

    /// Forgets a campaign's plan.
    pub async fn remove(&self, guild: u64, name: &str) -> StoreResult<bool> {
        self.table.delete(&Self::pk(guild), &Self::sk(name), Condition::None).await
    }

    /// Every campaign of a guild.
    pub async fn list(&self, guild: u64) -> StoreResult<Vec<Plan>> {
        let page = self.table.query(Query::pk(Self::pk(guild)).sk(SkCondition::Prefix("c:".into())).limit(200)).await?;
        Ok(page.items.into_iter().filter_map(|i| serde_json::from_value(Value::Object(i.attrs)).ok()).collect())
    }

    /// Stores a guild's own template (replacing one of the same name).
    pub async fn save_template(&self, guild: u64, template: &Template) -> StoreResult<()> {
        let attrs = serde_json::to_value(template).ok().and_then(|v| v.as_object().cloned()).unwrap_or_default();
        self.table.put(Put::new(Self::pk(guild), format!("t:{}", key(&template.name)), attrs)).await.map(|_| ())
    }

    /// A guild's own template.
    pub async fn template(&self, guild: u64, name: &str) -> StoreResult<Option<Template>> {
        let item = self.table.get(&Self::pk(guild), &format!("t:{}", key(name))).await?;
        Ok(item.and_then(|i| serde_json::from_value(Value::Object(i.attrs)).ok()))
    }
}

/// Why building stopped.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Discord refused a step for good (after retries).
    #[error("step {step:?} failed: {source}")]
    Step {
        /// The step's name.
        step: String,
        /// Discord's answer.
        source: DiscordError,
    },
    /// Discord could not be reached or kept failing; the job should be retried.
    #[error("Discord unavailable: {0}")]
    Transient(DiscordError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] den_storage::StoreError),
}

/// Carries out the plan's remaining steps, saving each id as soon as it
/// exists. Each step first looks for what an interrupted run may already
/// have made (by stored id, then by name under the category). `progress` is
/// told after each step. `stop_after` ends the run after that many steps
/// (tests use it to stand for a crash).
pub async fn build(
    egress: &Egress,
    plans: &Plans,
    mut plan: Plan,
    mut version: u64,
    bot: u64,
    progress: &(dyn Fn(&Plan, &str) + Send + Sync),
    stop_after: Option<usize>,
) -> Result<Plan, BuildError> {
    let guild = plan.guild;
    let fail = |step: &str, e: DiscordError| {
        use den_discord::DiscordErrorKind as K;
        if matches!(e.kind(), K::RateLimited | K::Server | K::Transport) {
            BuildError::Transient(e)
        } else {
            BuildError::Step { step: step.to_owned(), source: e }
        }
    };
    let mut existing: Option<Vec<ChannelInfo>> = None;
    let mut roles = None;
    let mut done_now = 0;
    for i in 0..plan.steps.len() {
        if plan.steps[i].id.is_some() {
            continue;
        }
        if stop_after.is_some_and(|n| done_now >= n) {
            return Ok(plan);
        }
        let step = plan.steps[i].clone();
        let id = match &step.kind {
            StepKind::MembersRole | StepKind::GmRole => {
                if roles.is_none() {
                    roles = Some(egress.list_roles(guild).await.map_err(|e| fail(&step.name, e))?);
                }
                match roles.as_ref().and_then(|r| r.iter().find(|r| r.name == step.name)) {
                    Some(r) => r.id,
                    None => egress.create_role(guild, &step.name).await.map_err(|e| fail(&step.name, e))?.id,
                }
            }
            StepKind::Category | StepKind::Channel { .. } => {
                if existing.is_none() {
                    existing = Some(egress.list_channels(guild).await.map_err(|e| fail(&step.name, e))?);
                }
                let parent = plan.id_of(&StepKind::Category);
                let (kind, topic, private, tags) = match &step.kind {
                    StepKind::Channel { kind, topic, private, tags } => (*kind, topic.clone(), *private, tags.clone()),
                    _ => (ChannelKind::Category, None, false, vec![]),
                };
                let wanted = channel_name(&step.name, kind);
                let under = if kind == ChannelKind::Category { None } else { parent };
                let found = existing.as_ref().and_then(|all| {
                    all.iter().find(|c| c.name == wanted && c.kind == u64::from(kind.code()) && c.parent == under)
                });
                match found {
                    Some(c) => c.id,
                    None => {
                        let new = NewChannel {
                            name: step.name.clone(),
                            kind: Some(kind),
                            topic,
                            parent: under,
                            position: Some(u32::try_from(i).unwrap_or(0)),
                            overwrites: plan.overwrites(bot, private),
                            tags,
                        };
                        egress.create_channel(guild, &new).await.map_err(|e| fail(&step.name, e))?.id
                    }
                }
            }
        };
        plan.steps[i].id = Some(id);
        version = save(plans, &mut plan, version).await?;
        done_now += 1;
        progress(&plan, &step.name);
    }
    plan.status = Status::Done;
    save(plans, &mut plan, version).await?;
    Ok(plan)
}

/// Saves, merging with a concurrent writer's ids if the version moved.
async fn save(plans: &Plans, plan: &mut Plan, version: u64) -> Result<u64, BuildError> {
    match plans.save(plan, version).await {
        Ok(v) => Ok(v),
        Err(e) if e.kind() == StoreErrorKind::ConditionFailed => {
            let Some((mut stored, v)) = plans.get(plan.guild, &plan.name).await? else { return Err(e.into()) };
            for (mine, theirs) in plan.steps.iter().zip(stored.steps.iter_mut()) {
                if theirs.id.is_none() {
                    theirs.id = mine.id;
                }
            }
            stored.status = plan.status;
            *plan = stored;
            Ok(plans.save(plan, v).await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes what a campaign made, by stored id: channels, then the category,
/// then the roles. Anything already gone is fine. Returns how many went.
pub async fn tear_down(egress: &Egress, plan: &Plan) -> Result<usize, DiscordError> {
    let mut gone = 0;
    let order = |s: &Step| match s.kind {
        StepKind::Channel { .. } => 0,
        StepKind::Category => 1,
        StepKind::MembersRole | StepKind::GmRole => 2,
    };
    let mut steps: Vec<&Step> = plan.steps.iter().filter(|s| s.id.is_some()).collect();
    steps.sort_by_key(|s| order(s));
    for s in steps {
        let id = s.id.unwrap_or(0);
        let deleted = match s.kind {
            StepKind::MembersRole | StepKind::GmRole => egress.delete_role(plan.guild, id).await?,
            _ => egress.delete_channel(id).await?,
        };
        gone += usize::from(deleted);
    }
    Ok(gone)
}

/// The name of the category archived campaigns move under.
pub const ARCHIVE_CATEGORY: &str = "Archived Campaigns";

/// Makes a campaign read-only and moves its channels under the archive
/// category (found or created, hidden from @everyone), then deletes the
/// campaign's own category. GM-only channels stay GM-only.
pub async fn archive(egress: &Egress, plan: &Plan, bot: u64) -> Result<(), DiscordError> {
    let channels = egress.list_channels(plan.guild).await?;
    let archive = match channels.iter().find(|c| c.kind == 4 && c.name == ARCHIVE_CATEGORY) {
        Some(c) => c.id,
        None => {
            let hidden = vec![
                Overwrite { target: Target::Role(plan.guild), allow: 0, deny: VIEW_CHANNEL },
                Overwrite { target: Target::Member(bot), allow: VIEW_CHANNEL, deny: 0 },
            ];
            let new = NewChannel {
                name: ARCHIVE_CATEGORY.into(),
                kind: Some(ChannelKind::Category),
                overwrites: hidden,
                ..NewChannel::default()
            };
            egress.create_channel(plan.guild, &new).await?.id
        }
    };
    let members = plan.id_of(&StepKind::MembersRole).unwrap_or(0);
    let write = SEND_MESSAGES
        | den_discord::guild::SEND_MESSAGES_IN_THREADS
        | den_discord::guild::CREATE_PUBLIC_THREADS
        | CONNECT;
    for s in &plan.steps {
        let (StepKind::Channel { private, .. }, Some(id)) = (&s.kind, s.id) else { continue };
        let mut overwrites = plan.overwrites(bot, *private);
        for o in &mut overwrites {
            if o.target == Target::Role(members) && !*private {
                o.allow = VIEW_CHANNEL;
                o.deny = write;
            }
        }
        match egress.update_channel(id, Some(archive), Some(&overwrites)).await {
            Ok(_) => {}
            Err(e) if e.kind() == den_discord::DiscordErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(category) = plan.id_of(&StepKind::Category) {
        egress.delete_channel(category).await?;
    }
    Ok(())
}

/// The 20-cell progress text.
#[must_use]
pub fn progress_text(plan: &Plan, last: &str) -> String {
    let (done, total) = plan.progress();
    let filled = (done * 20).checked_div(total).unwrap_or(20);
    let percent = (done * 100).checked_div(total).unwrap_or(100);
    format!(
        "🏗️ **Creating Campaign: {}**\n[{}{}] {percent}% ({done}/{total})\n✅ Created: **{last}**",
        plan.name,
        "█".repeat(filled),
        "░".repeat(20 - filled)
    )
}

/// The summary: channels grouped by type, 🔒 on GM-only ones, with links.
#[must_use]
pub fn summary(plan: &Plan) -> String {
    let mut out = format!("✅ **Campaign {} is ready**\n", plan.name);
    for (label, want) in [("Text", ChannelKind::Text), ("Voice", ChannelKind::Voice), ("Forums", ChannelKind::Forum)] {
        let lines: Vec<String> = plan
            .steps
            .iter()
            .filter_map(|s| match &s.kind {
                StepKind::Channel { kind, private, .. } if *kind == want => {
                    let lock = if *private { " 🔒" } else { "" };
                    Some(match s.id {
                        Some(id) => format!("<#{id}>{lock}"),
                        None => format!("{}{lock} (not created)", s.name),
                    })
                }
                _ => None,
            })
            .collect();
        if !lines.is_empty() {
            out.push_str(&format!("**{label}:** {}\n", lines.join(" ")));
        }
    }
    let members = plan.steps.iter().find(|s| s.kind == StepKind::MembersRole).and_then(|s| s.id);
    if let Some(r) = members {
        out.push_str(&format!("Give players the <@&{r}> role to let them in."));
    }
    out
}
