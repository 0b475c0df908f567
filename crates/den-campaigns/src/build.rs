//! Carrying out a plan, exactly once and only on what den made.
//!
//! Each step records that it is being attempted before asking Discord to
//! create anything, and its id as soon as Discord answers. When a step was
//! attempted but its id was not saved (a crash, a lost answer), the step may
//! take an object of its name only if Discord made that object after the
//! campaign was asked for and after every earlier step's object: snowflakes
//! carry their creation time by Discord's own clock, so no clock of den's is
//! trusted. A role, category or channel that was already in the server is
//! never taken, so `/delete-campaign` can only ever delete what den made.

use den_core::{Clock, Timestamp};
use den_discord::guild::{ChannelKind, NewChannel, Overwrite, SEND_MESSAGES, Target, VIEW_CHANNEL, channel_name};
use den_discord::{DiscordError, DiscordErrorKind, Egress, snowflake_time};
use den_storage::StoreErrorKind;

use crate::plan::{ARCHIVE_CATEGORY, Plan, Plans, StepKind};

/// How far den's clock and Discord's may disagree, for the rare plan that has
/// no interaction to date it by Discord's clock (made by tools and tests).
const CLOCK_SKEW_MS: i64 = 10_000;

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

/// Where a test makes the builder stop, standing for a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Before the step after `n` steps done in this run.
    Before(usize),
    /// After Discord created the step after `n` steps done, before its id is saved.
    AfterCreating(usize),
}

/// Whether the object `id` was made no earlier than `floor`.
fn made_since(id: u64, floor: Timestamp) -> bool {
    snowflake_time(id) >= floor
}

/// The earliest an object of step `i` can have been made, by Discord's clock:
/// after the interaction that asked for the campaign and after the objects of
/// the steps before it (steps run in order). Without an interaction, the
/// step's first attempt by den's clock, less an allowance for skew.
fn floor_of(plan: &Plan, i: usize, attempted: Timestamp) -> Timestamp {
    let discord = plan
        .interaction
        .as_ref()
        .map(|asked| asked.id)
        .into_iter()
        .chain(plan.steps[..i].iter().filter_map(|s| s.id))
        .map(snowflake_time)
        .max();
    discord.unwrap_or(Timestamp(attempted.0.saturating_sub(CLOCK_SKEW_MS)))
}

/// Carries out plans.
pub struct Builder<'a> {
    /// The one egress.
    pub egress: &'a Egress,
    /// Where plans are kept.
    pub plans: &'a Plans,
    /// den's bot user id (private channels show to it).
    pub bot: u64,
    /// The clock attempts are recorded by.
    pub clock: &'a dyn Clock,
    /// Told after each step.
    pub progress: &'a (dyn Fn(&Plan, &str) + Send + Sync),
}

impl Builder<'_> {
    /// Carries out the plan's remaining steps, saving each id as soon as it
    /// exists. `stop` ends the run early (tests use it to stand for a crash).
    pub async fn run(&self, mut plan: Plan, mut version: u64, stop: Option<Stop>) -> Result<Plan, BuildError> {
        let mut done_now = 0;
        for i in 0..plan.steps.len() {
            if plan.steps[i].id.is_some() {
                continue;
            }
            if stop == Some(Stop::Before(done_now)) {
                return Ok(plan);
            }
            let step = plan.steps[i].clone();
            let adopted = match step.attempted {
                Some(attempted) => self.find_made(&plan, i, attempted).await?,
                None => {
                    plan.steps[i].attempted = Some(self.clock.now());
                    version = save(self.plans, &mut plan, version).await?;
                    None
                }
            };
            let id = match adopted {
                Some(id) => id,
                None => self.create(&plan, i).await?,
            };
            if stop == Some(Stop::AfterCreating(done_now)) {
                return Ok(plan);
            }
            plan.steps[i].id = Some(id);
            version = save(self.plans, &mut plan, version).await?;
            done_now += 1;
            (self.progress)(&plan, &step.name);
        }
        plan.status = crate::plan::Status::Done;
        save(self.plans, &mut plan, version).await?;
        Ok(plan)
    }

    /// What an earlier attempt at step `i` made, if Discord has it: an object of
    /// the step's name (and type, under the category) made after the attempt.
    /// A channel found so gets the plan's overwrites again.
    async fn find_made(&self, plan: &Plan, i: usize, attempted: Timestamp) -> Result<Option<u64>, BuildError> {
        let step = &plan.steps[i];
        let fail = |e| failure(&step.name, e);
        let floor = floor_of(plan, i, attempted);
        if matches!(step.kind, StepKind::MembersRole | StepKind::GmRole) {
            let roles = self.egress.list_roles(plan.guild).await.map_err(fail)?;
            return Ok(roles.iter().find(|r| r.name == step.name && made_since(r.id, floor)).map(|r| r.id));
        }
        let (kind, private) = channel_of(&step.kind);
        let parent = if kind == ChannelKind::Category { None } else { plan.id_of(&StepKind::Category) };
        let wanted = channel_name(&step.name, kind);
        let channels = self.egress.list_channels(plan.guild).await.map_err(fail)?;
        let Some(found) = channels.iter().find(|c| {
            c.name == wanted && c.kind == u64::from(kind.code()) && c.parent == parent && made_since(c.id, floor)
        }) else {
            return Ok(None);
        };
        tracing::info!(guild = plan.guild, step = %step.name, channel = found.id, "found what an interrupted run made");
        let overwrites = plan.overwrites(self.bot, private);
        self.egress.update_channel(found.id, None, Some(&overwrites)).await.map_err(fail)?;
        Ok(Some(found.id))
    }

    async fn create(&self, plan: &Plan, i: usize) -> Result<u64, BuildError> {
        let step = &plan.steps[i];
        let fail = |e| failure(&step.name, e);
        if matches!(step.kind, StepKind::MembersRole | StepKind::GmRole) {
            return Ok(self.egress.create_role(plan.guild, &step.name).await.map_err(fail)?.id);
        }
        let (kind, private) = channel_of(&step.kind);
        let (topic, tags) = match &step.kind {
            StepKind::Channel { topic, tags, .. } => (topic.clone(), tags.clone()),
            _ => (None, vec![]),
        };
        let new = NewChannel {
            name: step.name.clone(),
            kind: Some(kind),
            topic,
            parent: if kind == ChannelKind::Category { None } else { plan.id_of(&StepKind::Category) },
            position: Some(u32::try_from(i).unwrap_or(0)),
            overwrites: plan.overwrites(self.bot, private),
            tags,
        };
        Ok(self.egress.create_channel(plan.guild, &new).await.map_err(fail)?.id)
    }
}

/// The channel type and privacy of a channel or category step.
fn channel_of(kind: &StepKind) -> (ChannelKind, bool) {
    match kind {
        StepKind::Channel { kind, private, .. } => (*kind, *private),
        _ => (ChannelKind::Category, false),
    }
}

fn failure(step: &str, e: DiscordError) -> BuildError {
    if matches!(e.kind(), DiscordErrorKind::RateLimited | DiscordErrorKind::Server | DiscordErrorKind::Transport) {
        BuildError::Transient(e)
    } else {
        BuildError::Step { step: step.to_owned(), source: e }
    }
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
                theirs.attempted = theirs.attempted.or(mine.attempted);
            }
            stored.status = plan.status;
            *plan = stored;
            Ok(plans.save(plan, v).await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Names the plan would create that the server already uses (roles, and the
/// category), compared without case: den refuses those rather than share a
/// name with something it did not make.
pub async fn names_in_use(egress: &Egress, plan: &Plan) -> Result<Vec<String>, DiscordError> {
    let roles = egress.list_roles(plan.guild).await?;
    let channels = egress.list_channels(plan.guild).await?;
    let taken = |step: &crate::plan::Step| match step.kind {
        StepKind::MembersRole | StepKind::GmRole => roles.iter().any(|r| r.name.eq_ignore_ascii_case(&step.name)),
        StepKind::Category => channels.iter().any(|c| c.kind == 4 && c.name.eq_ignore_ascii_case(&step.name)),
        StepKind::Channel { .. } => false,
    };
    Ok(plan.steps.iter().filter(|s| taken(s)).map(|s| s.name.clone()).collect())
}

/// Deletes what a campaign made, by stored id: channels, then the category,
/// then the roles. Anything already gone is fine. Returns how many went.
pub async fn tear_down(egress: &Egress, plan: &Plan) -> Result<usize, DiscordError> {
    let mut gone = 0;
    let order = |s: &&crate::plan::Step| match s.kind {
        StepKind::Channel { .. } => 0,
        StepKind::Category => 1,
        StepKind::MembersRole | StepKind::GmRole => 2,
    };
    let mut steps: Vec<&crate::plan::Step> = plan.steps.iter().filter(|s| s.id.is_some()).collect();
    steps.sort_by_key(order);
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

/// The guild's archive category: the one den made (its id is kept with the
/// plans), else made now, hidden from @everyone, by the same attempt rule as
/// a plan's steps.
async fn archive_category(
    egress: &Egress,
    plans: &Plans,
    clock: &dyn Clock,
    guild: u64,
    bot: u64,
) -> Result<u64, BuildError> {
    let (stored, attempted) = plans.archive_category(guild).await?;
    let fail = |e| failure(ARCHIVE_CATEGORY, e);
    let channels = egress.list_channels(guild).await.map_err(fail)?;
    if let Some(id) = stored.filter(|id| channels.iter().any(|c| c.id == *id && c.kind == 4)) {
        return Ok(id);
    }
    if let Some(at) = attempted
        && stored.is_none()
        && let Some(found) = channels.iter().find(|c| c.kind == 4 && c.name == ARCHIVE_CATEGORY && made_since(c.id, at))
    {
        plans.set_archive_category(guild, Some(found.id), at).await?;
        return Ok(found.id);
    }
    let now = clock.now();
    plans.set_archive_category(guild, None, now).await?;
    let hidden = vec![
        Overwrite { target: Target::Role(guild), allow: 0, deny: VIEW_CHANNEL },
        Overwrite { target: Target::Member(bot), allow: VIEW_CHANNEL, deny: 0 },
    ];
    let new = NewChannel {
        name: ARCHIVE_CATEGORY.into(),
        kind: Some(ChannelKind::Category),
        overwrites: hidden,
        ..NewChannel::default()
    };
    let id = egress.create_channel(guild, &new).await.map_err(fail)?.id;
    plans.set_archive_category(guild, Some(id), now).await?;
    Ok(id)
}

/// Makes a campaign read-only and moves its channels under the archive
/// category, then deletes the campaign's own category. GM-only channels stay
/// GM-only.
pub async fn archive(
    egress: &Egress,
    plans: &Plans,
    clock: &dyn Clock,
    plan: &Plan,
    bot: u64,
) -> Result<(), BuildError> {
    let archive = archive_category(egress, plans, clock, plan.guild, bot).await?;
    let members = plan.id_of(&StepKind::MembersRole).unwrap_or(0);
    let write = SEND_MESSAGES
        | den_discord::guild::SEND_MESSAGES_IN_THREADS
        | den_discord::guild::CREATE_PUBLIC_THREADS
        | den_discord::guild::CONNECT;
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
            Err(e) if e.kind() == DiscordErrorKind::NotFound => {}
            Err(e) => return Err(failure(&s.name, e)),
        }
    }
    if let Some(category) = plan.id_of(&StepKind::Category) {
        egress.delete_channel(category).await.map_err(|e| failure(&plan.name, e))?;
    }
    Ok(())
}
