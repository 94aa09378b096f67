//! The callers one command answers: one inline, more on the heap.

use core::fmt;

use crate::ids::CallerId;

/// The callers one command answers. One caller, the usual case, is held
/// inline, so answering it allocates nothing; more spill to the heap.
/// Reads as a slice (`callers.iter()`, `callers.len()`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Callers(CallerList);

#[derive(Clone, Default, PartialEq, Eq)]
enum CallerList {
    #[default]
    Empty,
    One(CallerId),
    Many(Vec<CallerId>),
}

impl Callers {
    /// Adds `caller`.
    pub fn push(&mut self, caller: CallerId) {
        self.0 = match core::mem::take(&mut self.0) {
            CallerList::Empty => CallerList::One(caller),
            CallerList::One(first) => CallerList::Many(vec![first, caller]),
            CallerList::Many(mut many) => {
                many.push(caller);
                CallerList::Many(many)
            }
        };
    }

    /// The callers, in the order they were added.
    pub fn as_slice(&self) -> &[CallerId] {
        match &self.0 {
            CallerList::Empty => &[],
            CallerList::One(one) => core::slice::from_ref(one),
            CallerList::Many(many) => many,
        }
    }
}

impl core::ops::Deref for Callers {
    type Target = [CallerId];

    fn deref(&self) -> &[CallerId] {
        self.as_slice()
    }
}

impl fmt::Debug for Callers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl FromIterator<CallerId> for Callers {
    fn from_iter<I: IntoIterator<Item = CallerId>>(iter: I) -> Self {
        let mut callers = Self::default();
        for caller in iter {
            callers.push(caller);
        }
        callers
    }
}

impl<const N: usize> From<[CallerId; N]> for Callers {
    fn from(callers: [CallerId; N]) -> Self {
        callers.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a Callers {
    type Item = &'a CallerId;
    type IntoIter = core::slice::Iter<'a, CallerId>;

    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

impl IntoIterator for Callers {
    type Item = CallerId;
    type IntoIter = CallersIntoIter;

    fn into_iter(self) -> CallersIntoIter {
        CallersIntoIter { callers: self, next: 0 }
    }
}

/// The callers of a [`Callers`], by value.
#[derive(Debug)]
pub struct CallersIntoIter {
    callers: Callers,
    next: usize,
}

impl Iterator for CallersIntoIter {
    type Item = CallerId;

    fn next(&mut self) -> Option<CallerId> {
        let caller = self.callers.as_slice().get(self.next).copied()?;
        self.next += 1;
        Some(caller)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.callers.len().saturating_sub(self.next);
        (left, Some(left))
    }
}

impl ExactSizeIterator for CallersIntoIter {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_keep_their_order_inline_or_spilled() {
        let mut callers = Callers::default();
        assert!(callers.is_empty());
        callers.push(CallerId(3));
        assert_eq!(callers.as_slice(), [CallerId(3)]);
        callers.push(CallerId(1));
        callers.push(CallerId(2));
        assert_eq!(callers.as_slice(), [CallerId(3), CallerId(1), CallerId(2)]);
        assert_eq!(callers.clone().into_iter().collect::<Vec<_>>(), [CallerId(3), CallerId(1), CallerId(2)]);
        assert_eq!(callers.clone().into_iter().len(), 3);
        assert_eq!(Callers::from([CallerId(3), CallerId(1), CallerId(2)]), callers);
        assert_eq!(
            format!("{callers:?}"),
            format!("{:?}", vec![CallerId(3), CallerId(1), CallerId(2)]),
            "reads as a Vec did"
        );
    }
}
