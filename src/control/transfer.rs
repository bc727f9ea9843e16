//! Which follower a leader hands over to. Pure: the membership and each
//! follower's matched log index are passed in (the manager reads them from
//! openraft's metrics).

use std::collections::BTreeMap;

/// Why no target can be chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoTarget {
    /// The requested id is not a voter of the group.
    NotAVoter(u64),
    /// The group has no other voter.
    Alone,
}

/// The follower to hand leadership to: `requested` if it is a voter other
/// than `me` (`Ok(me)` if it is `me`: nothing to do), else the voter with
/// the highest matched index (the lowest id on a tie, so that the choice
/// is stable). `matched` maps each follower to its matched log index, as
/// far as the leader knows.
pub fn choose_target(
    me: u64,
    voters: &[u64],
    matched: &BTreeMap<u64, Option<u64>>,
    requested: Option<u64>,
) -> Result<u64, NoTarget> {
    if let Some(to) = requested {
        return if voters.contains(&to) { Ok(to) } else { Err(NoTarget::NotAVoter(to)) };
    }
    voters
        .iter()
        .copied()
        .filter(|id| *id != me)
        .max_by_key(|id| (matched.get(id).copied().flatten(), std::cmp::Reverse(*id)))
        .ok_or(NoTarget::Alone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_up_to_date_follower_is_chosen_unless_one_is_named() {
        let matched = BTreeMap::from([(2, Some(10)), (3, Some(12)), (4, None)]);
        assert_eq!(choose_target(1, &[1, 2, 3, 4], &matched, None), Ok(3));
        assert_eq!(choose_target(1, &[1, 2, 3, 4], &matched, Some(2)), Ok(2));
        assert_eq!(choose_target(1, &[1, 2, 3, 4], &matched, Some(1)), Ok(1), "already leads");
        assert_eq!(choose_target(1, &[1, 2], &matched, Some(9)), Err(NoTarget::NotAVoter(9)));
        assert_eq!(choose_target(1, &[1], &matched, None), Err(NoTarget::Alone));
        let tie = BTreeMap::from([(2, Some(5)), (3, Some(5))]);
        assert_eq!(choose_target(1, &[1, 2, 3], &tie, None), Ok(2), "lowest id on a tie");
    }
}
