//! Rescales: the new parallelism through a checkpoint, and what is refused.

use super::*;

#[test]
fn a_rescale_restarts_the_job_at_the_new_parallelism_and_refuses_what_cannot_be_done() {
    use crate::test_fixtures::StateBuilder;
    let job_id = JobId::from_number(1);
    // Job 1: src 1, keys 2, counts 2, out 1 (2 slices: 2 slots) on an executor with 8.
    let mut state = StateBuilder::new()
        .executor("e", 8)
        .job(graph(2, 3))
        .place_all(1, "e")
        .build();
    let not_running = apply(&mut state, request_rescale(Some("counts"), 3));
    assert!(
        matches!(
            &not_running,
            Err(Rejection::JobNotActive {
                status: JobStatus::Submitted,
                ..
            })
        ),
        "{not_running:?}"
    );
    assert!(apply(
        &mut state,
        Command::TransitionJob {
            job_id,
            to: JobStatus::Running,
            reason: String::new(),
            at_ms: 1,
            deployed_through_epoch: None,
        }
    )
    .is_ok());
    let before = state.clone();
    for (command, expected) in [
        (request_rescale(Some("counts"), 0), "at least 1"),
        (request_rescale(Some("counts"), 129), "max_parallelism of 128"),
        (request_rescale(Some("nope"), 2), "no operator \"nope\""),
        (request_rescale(Some("counts"), 2), "nothing to change"),
        // 2 held + 6 free = 8 available; every operator at 9 needs 9 slices.
        (
            request_rescale(None, 9),
            "needs 9 slots, but only 8 are free or held by it: 1 more needed",
        ),
        (rescale(Some("counts"), 0), "at least 1"),
    ] {
        let refused = apply(&mut state, command).expect_err("refused");
        assert!(refused.to_string().contains(expected), "{refused}");
        assert_eq!(state, before, "a refused rescale changes nothing");
    }

    // A request waits in the state for the leader's checkpoint; one at a time.
    assert_eq!(
        apply(&mut state, request_rescale(Some("counts"), 4)),
        Ok(Response::RescaleRequested { job_id })
    );
    assert_eq!(state.jobs[&job_id].status, JobStatus::Running);
    assert_eq!(
        state.jobs[&job_id]
            .pending_rescale
            .as_ref()
            .map(|request| request.parallelism),
        Some(4)
    );
    let second = apply(&mut state, request_rescale(Some("counts"), 3)).expect_err("refused");
    assert!(second.to_string().contains("already in progress"), "{second}");

    assert_eq!(
        apply(&mut state, rescale(Some("counts"), 4)),
        Ok(Response::JobTransitioned {
            job_id,
            status: JobStatus::Restarting
        })
    );
    let job = &state.jobs[&job_id];
    assert!(job.rescaling && job.restart_count == 0, "a rescale is not a failure");
    assert_eq!(job.pending_rescale, None);
    assert_eq!(
        job.graph.operator("counts").map(|operator| operator.parallelism),
        Some(4)
    );
    let counts: Vec<u32> = job
        .assignments
        .iter()
        .filter(|(key, _)| key.operator_id == "counts")
        .map(|(key, _)| key.subtask_index)
        .collect();
    assert_eq!(counts, [0, 1, 2, 3]);
    assert!(job
        .assignments
        .values()
        .all(|assignment| assignment.executor_id.is_none()));
    assert_eq!(state.used_slots(&executor_id("e")), 0);
    assert!(job.status_reason.contains("rescaling operator counts to parallelism 4"));
}
