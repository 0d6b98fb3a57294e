//! Linearizability checking by search (Wing & Gong, with Lowe's memoization, as in Porcupine):
//! take operations in an order that respects real time (an operation may go next only if it was
//! invoked before every other pending operation returned), stepping a sequential model; remember
//! every (set of operations taken, model state) already explored. A history is linearizable when
//! every operation that completed can be taken. Operations with an unknown outcome may be taken at
//! any point after their invocation, or never; failed ones never took effect and are left out.

use std::collections::HashSet;
use std::hash::Hash;

use crate::history::{Operation, Outcome};

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash;
    type Input;
    type Output;

    fn init(&self) -> Self::State;

    /// The state after `input` ran in `state` and answered `output` (`None`: the answer is not
    /// known, any answer goes), or `None` if the model cannot answer that.
    fn step(&self, state: &Self::State, input: &Self::Input, output: Option<&Self::Output>) -> Option<Self::State>;
}

/// Why a history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotLinearizable {
    /// History indexes of the longest linearizable prefix found, in linearization order.
    pub longest_prefix: Vec<usize>,
    /// The completed operations that could not follow that prefix (the earliest to return first).
    pub stuck_at: Vec<usize>,
}

/// Search budget: a history whose search explores more states than this is reported as
/// undecided rather than running forever.
pub const MAX_EXPLORED_STATES: usize = 5_000_000;

/// The checker's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable(NotLinearizable),
    /// The search gave up after [`MAX_EXPLORED_STATES`] states.
    Undecided,
}

struct Bits(Vec<u64>);

impl Bits {
    fn new(size: usize) -> Self {
        Bits(vec![0; size.div_ceil(64)])
    }
    fn get(&self, index: usize) -> bool {
        self.0[index / 64] & (1 << (index % 64)) != 0
    }
    fn flip(&mut self, index: usize) {
        self.0[index / 64] ^= 1 << (index % 64);
    }
}

/// Checks `history` against `model`.
pub fn check<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>]) -> Verdict {
    // Failed operations never happened.
    let mut operations: Vec<&Operation<M::Input, M::Output>> = history
        .iter()
        .filter(|operation| !matches!(operation.outcome, Outcome::Fail(_)))
        .collect();
    operations.sort_by_key(|operation| (operation.invoked_us, operation.index));
    let count = operations.len();
    let required = operations.iter().filter(|operation| !operation.is_unknown()).count();

    let mut taken = Bits::new(count);
    let mut seen: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    // The search path: (operation taken, state before it, next candidate to try after it).
    let mut path: Vec<(usize, M::State)> = Vec::new();
    let mut state = model.init();
    let mut taken_required = 0usize;
    let mut best: Vec<usize> = Vec::new();
    let mut best_required = 0usize;
    let mut next_candidate = 0usize;
    loop {
        if taken_required == required {
            return Verdict::Linearizable;
        }
        if seen.len() > MAX_EXPLORED_STATES {
            return Verdict::Undecided;
        }
        // The earliest deadline among pending operations bounds who may go next.
        let horizon = (0..count)
            .filter(|index| !taken.get(*index))
            .map(|index| operations[index].deadline_us())
            .min()
            .unwrap_or(u64::MAX);
        let mut advanced = false;
        let mut candidate = next_candidate;
        while candidate < count && operations[candidate].invoked_us <= horizon {
            if !taken.get(candidate) {
                let operation = operations[candidate];
                let output = match &operation.outcome {
                    Outcome::Ok(output) => Some(output),
                    _ => None,
                };
                if let Some(after) = model.step(&state, &operation.input, output) {
                    taken.flip(candidate);
                    if seen.insert((taken.0.clone(), after.clone())) {
                        path.push((candidate, std::mem::replace(&mut state, after)));
                        if !operation.is_unknown() {
                            taken_required += 1;
                        }
                        if taken_required > best_required || best.is_empty() {
                            best_required = taken_required;
                            best = path.iter().map(|(index, _)| operations[*index].index).collect();
                        }
                        advanced = true;
                        next_candidate = 0;
                        break;
                    }
                    taken.flip(candidate);
                }
            }
            candidate += 1;
        }
        if advanced {
            continue;
        }
        // Dead end: undo the last step and try the next candidate after it.
        let Some((last, before)) = path.pop() else {
            return Verdict::NotLinearizable(stuck(&operations, &best));
        };
        taken.flip(last);
        if !operations[last].is_unknown() {
            taken_required -= 1;
        }
        state = before;
        next_candidate = last + 1;
    }
}

/// The completed operations left over after the longest linearizable prefix.
fn stuck<I, O>(operations: &[&Operation<I, O>], prefix: &[usize]) -> NotLinearizable {
    let mut left: Vec<&&Operation<I, O>> = operations
        .iter()
        .filter(|operation| !operation.is_unknown() && !prefix.contains(&operation.index))
        .collect();
    left.sort_by_key(|operation| (operation.deadline_us(), operation.index));
    NotLinearizable {
        longest_prefix: prefix.to_vec(),
        stuck_at: left.iter().map(|operation| operation.index).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A single register: writes, and reads that return the value.
    struct Register;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum RegisterOp {
        Write(u8),
        Read,
    }

    impl Model for Register {
        type State = u8;
        type Input = RegisterOp;
        type Output = u8;
        fn init(&self) -> u8 {
            0
        }
        fn step(&self, state: &u8, input: &RegisterOp, output: Option<&u8>) -> Option<u8> {
            match input {
                RegisterOp::Write(value) => Some(*value),
                RegisterOp::Read => output.is_none_or(|read| read == state).then_some(*state),
            }
        }
    }

    fn op(
        index: usize,
        input: RegisterOp,
        outcome: Outcome<u8>,
        span: (u64, Option<u64>),
    ) -> Operation<RegisterOp, u8> {
        Operation {
            index,
            client: index as u32,
            input,
            outcome,
            invoked_us: span.0,
            completed_us: span.1,
        }
    }

    use RegisterOp::{Read, Write};

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        let history = vec![
            op(0, Write(1), Outcome::Ok(0), (0, Some(10))),
            op(1, Read, Outcome::Ok(1), (2, Some(4))),
            op(2, Read, Outcome::Ok(0), (3, Some(5))),
        ];
        // Read 0 at 3, the write just after, read 1 just before 4.
        assert_eq!(check(&Register, &history), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let history = vec![
            op(0, Write(1), Outcome::Ok(0), (0, Some(10))),
            op(1, Read, Outcome::Ok(0), (11, Some(12))),
        ];
        let Verdict::NotLinearizable(failure) = check(&Register, &history) else {
            panic!("a read of the old value after the write returned must be caught");
        };
        assert_eq!(failure.longest_prefix, vec![0]);
        assert_eq!(failure.stuck_at, vec![1]);
    }

    #[test]
    fn unknown_writes_may_land_late_or_never_but_not_twice() {
        let late = vec![
            op(0, Write(1), Outcome::Unknown("timeout".into()), (0, None)),
            op(1, Read, Outcome::Ok(0), (5, Some(6))),
            op(2, Read, Outcome::Ok(1), (7, Some(8))),
        ];
        assert_eq!(check(&Register, &late), Verdict::Linearizable);
        let never = vec![
            op(0, Write(1), Outcome::Unknown("timeout".into()), (0, None)),
            op(1, Read, Outcome::Ok(0), (5, Some(6))),
        ];
        assert_eq!(check(&Register, &never), Verdict::Linearizable);
        let flapping = vec![
            op(0, Write(1), Outcome::Unknown("timeout".into()), (0, None)),
            op(1, Read, Outcome::Ok(1), (5, Some(6))),
            op(2, Read, Outcome::Ok(0), (7, Some(8))),
        ];
        assert!(matches!(check(&Register, &flapping), Verdict::NotLinearizable(_)));
    }

    #[test]
    fn failed_operations_never_took_effect() {
        let history = vec![
            op(0, Write(1), Outcome::Fail("rejected".into()), (0, Some(1))),
            op(1, Read, Outcome::Ok(1), (2, Some(3))),
        ];
        assert!(matches!(check(&Register, &history), Verdict::NotLinearizable(_)));
    }

    proptest::proptest! {
        /// Any history produced by running operations one at a time against the model itself,
        /// with random overlapping intervals around each real effect time, is linearizable.
        #[test]
        fn histories_of_a_real_register_are_linearizable(
            steps in proptest::collection::vec((0u8..4, proptest::bool::ANY, 0u64..20, 0u64..20), 1..40)
        ) {
            let mut value = 0u8;
            let mut history = Vec::new();
            for (position, (written, is_write, before, after)) in steps.into_iter().enumerate() {
                let effect = position as u64 * 10 + 20;
                let span = (effect - before.min(19), Some(effect + after));
                let (input, output) = if is_write {
                    value = written;
                    (Write(written), 0)
                } else {
                    (Read, value)
                };
                history.push(op(position, input, Outcome::Ok(output), span));
            }
            proptest::prop_assert_eq!(check(&Register, &history), Verdict::Linearizable);
        }
    }
}
