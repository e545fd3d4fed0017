//! Shrinking a slot table (a Vec of slots plus a free list of their indices) after a burst.
//! Owns no table; knows nothing of what the slots hold.

/// Cuts `slots` back to its last slot `in_use` and drops the free indices past it, releasing
/// the capacity a burst left: a quiet shard's deadline, drain and park tables (runtime/quiet.rs).
/// Slots in use keep their indices, so handles to them stay valid.
pub fn trim_tail<T, I>(slots: &mut Vec<T>, free: &mut Vec<I>, in_use: impl Fn(&T) -> bool)
where
    I: Copy + TryInto<usize>,
{
    let len = slots.iter().rposition(in_use).map_or(0, |i| i + 1);
    slots.truncate(len);
    slots.shrink_to_fit();
    free.retain(|&i| i.try_into().is_ok_and(|i| i < len));
    free.shrink_to_fit();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_slots_up_to_the_last_in_use_and_their_free_indices() {
        let mut slots: Vec<Option<u8>> = vec![None; 100];
        slots[2] = Some(1);
        slots[5] = Some(2);
        let mut free: Vec<u32> = (0..100).filter(|&i| i != 2 && i != 5).collect();
        trim_tail(&mut slots, &mut free, Option::is_some);
        assert_eq!(slots.len(), 6);
        assert!(slots.capacity() < 100);
        assert_eq!(free, vec![0, 1, 3, 4]);
        let mut none: Vec<Option<u8>> = vec![None; 10];
        let mut all: Vec<usize> = (0..10).collect();
        trim_tail(&mut none, &mut all, Option::is_some);
        assert!(none.is_empty() && all.is_empty());
    }
}
