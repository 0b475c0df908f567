//! A campaign's plan, stored before anything is created: its steps, the ids
//! of what they made, and where it stands; progress text and the summary.
//! [`crate::build`] carries it out.

use std::sync::Arc;

use den_core::Timestamp;
use den_discord::InteractionRef;
use den_discord::guild::{CONNECT, ChannelKind, Overwrite, SEND_MESSAGES, Target, VIEW_CHANNEL};
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
    /// When it was first attempted (den's clock): only what was created
    /// after this may be taken as the step's own when its id was not saved.
    #[serde(default)]
    pub attempted: Option<Timestamp>,
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
        let mut steps = vec![Step {
            kind: StepKind::MembersRole,
            name: fill(&template.members_role, name),
            id: None,
            attempted: None,
        }];
        if gm == Gm::Role {
            steps.push(Step { kind: StepKind::GmRole, name: fill(&template.gm_role, name), id: None, attempted: None });
        }
        steps.push(Step { kind: StepKind::Category, name: fill(&template.category, name), id: None, attempted: None });
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
                attempted: None,
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

    pub(crate) fn id_of(&self, kind: &StepKind) -> Option<u64> {
        self.steps.iter().find(|s| s.kind == *kind).and_then(|s| s.id)
    }

    /// The overwrites of the category and its channels; GM-only channels
    /// hide from @everyone and the members, and show to the GM and den.
    pub(crate) fn overwrites(&self, bot: u64, private: bool) -> Vec<Overwrite> {
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

    /// The guild's archive category as den recorded it: its id once made, and
    /// when den first tried to make it.
    pub async fn archive_category(&self, guild: u64) -> StoreResult<(Option<u64>, Option<Timestamp>)> {
        let item = self.table.get(&Self::pk(guild), "archive").await?;
        let attr = |k: &str| item.as_ref().and_then(|i| i.attrs.get(k)).and_then(Value::as_i64);
        Ok((attr("id").and_then(|n| u64::try_from(n).ok()), attr("attempted").map(Timestamp)))
    }

    /// Records the archive category's id (or, with `None`, that den is about to make it at `attempted`).
    pub async fn set_archive_category(&self, guild: u64, id: Option<u64>, attempted: Timestamp) -> StoreResult<()> {
        let mut attrs = serde_json::Map::new();
        attrs.insert("attempted".into(), attempted.0.into());
        if let Some(id) = id {
            attrs.insert("id".into(), id.into());
        }
        self.table.put(Put::new(Self::pk(guild), "archive", attrs)).await.map(|_| ())
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

/// The name of the category archived campaigns move under.
pub const ARCHIVE_CATEGORY: &str = "Archived Campaigns";

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
