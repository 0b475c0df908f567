//! How big a task looks, before any model sees it: it picks the run's turn
//! limit and the tier of model it starts on. Words count, and so do a few
//! that mean "many files" or "a redesign".

use serde::{Deserialize, Serialize};

/// A task's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Size {
    /// A line or two about one thing: a typo, a failing test.
    Small,
    /// The usual task.
    Medium,
    /// Long, or about many files or the design.
    Large,
}

/// Words that make a task large whatever its length.
const LARGE: [&str; 9] =
    ["refactor", "migrate", "rewrite", "redesign", "architecture", "across the", "every file", "all files", "port "];

impl Size {
    /// The size of `task`.
    #[must_use]
    pub fn of(task: &str) -> Self {
        let lower = task.to_lowercase();
        let words = lower.split_whitespace().count();
        if words > 150 || LARGE.iter().any(|w| lower.contains(w)) {
            Self::Large
        } else if words <= 25 {
            Self::Small
        } else {
            Self::Medium
        }
    }

    /// The tier (0-based) a run of this size starts on, of `tiers`.
    #[must_use]
    pub fn start_tier(self, tiers: usize) -> usize {
        match self {
            Self::Large => 1.min(tiers.saturating_sub(1)),
            _ => 0,
        }
    }
}

/// Turns per run by size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Turns {
    /// Small tasks.
    pub small: u32,
    /// Medium tasks.
    pub medium: u32,
    /// Large tasks.
    pub large: u32,
}

impl Default for Turns {
    fn default() -> Self {
        Self { small: 10, medium: 20, large: 35 }
    }
}

impl Turns {
    /// The limit for `size`.
    #[must_use]
    pub fn of(self, size: Size) -> u32 {
        match size {
            Size::Small => self.small,
            Size::Medium => self.medium,
            Size::Large => self.large,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_tasks_are_small_and_redesigns_are_large_whatever_their_length() {
        assert_eq!(Size::of("fix the failing test in add.sh"), Size::Small);
        assert_eq!(Size::of("Refactor the parser"), Size::Large);
        let medium = "add a flag ".repeat(10);
        assert_eq!(Size::of(&medium), Size::Medium);
        assert_eq!(Size::of(&"word ".repeat(200)), Size::Large);
        assert_eq!((Size::Large.start_tier(3), Size::Large.start_tier(1), Size::Small.start_tier(3)), (1, 0, 0));
        assert_eq!(Turns::default().of(Size::Large), 35);
    }
}
