//! Restoring a subtask from the checkpoint its deployment names: keyed state by key group from
//! the old subtasks' files, a generator's or file source's position, a sink's pending output.

use raftstream_api::checkpoint::{CompletedCheckpoint, TaskStateHandle};
use raftstream_api::ids::CheckpointId;
use raftstream_api::spec::{OperatorConfig, OperatorSpec};

use super::source::{SourceReader, SourceSnapshot};
use super::{Logic, TaskEnvironment, TaskError};
use crate::blocking::off_the_workers;
use crate::checkpoint::{checksum, CheckpointStorage, CheckpointStore, StateHandle};
use crate::runtime::deployment::SubtaskDeployment;
use crate::runtime::file_source::{progress_at_position, FileProgress};
use crate::runtime::generator::GeneratorPosition;
use crate::runtime::key_groups::key_group_range;
use crate::runtime::operators::{entries_in_groups, restores_index, KeyedMapState};

/// The bytes of one task's state in a checkpoint, verified.
pub(super) async fn load_state(
    store: &CheckpointStorage,
    checkpoint_id: CheckpointId,
    handle: &TaskStateHandle,
) -> Result<Vec<u8>, TaskError> {
    let restore_error = |problem: String| TaskError::Restore { checkpoint_id, problem };
    if handle.location.is_empty() {
        if handle.size_bytes != handle.inline_state.len() as u64 || checksum(&handle.inline_state) != handle.checksum {
            return Err(restore_error(format!(
                "inline state of {}[{}] does not match its checksum",
                handle.subtask.operator_id, handle.subtask.subtask_index
            )));
        }
        return Ok(handle.inline_state.clone());
    }
    let state_handle = StateHandle {
        location: handle.location.clone(),
        size_bytes: handle.size_bytes,
        checksum: handle.checksum,
    };
    store
        .get(&state_handle)
        .await
        .map_err(|error| restore_error(error.to_string()))
}

/// The state of every subtask of source `operator` in `checkpoint`, by subtask index (all of the
/// placement that took it, whatever its parallelism).
pub(super) async fn source_snapshots(
    operator: &OperatorSpec,
    environment: &TaskEnvironment,
    checkpoint: &CompletedCheckpoint,
) -> Result<Vec<SourceSnapshot>, TaskError> {
    let checkpoint_id = checkpoint.checkpoint_id;
    let restore_error = |problem: String| TaskError::Restore { checkpoint_id, problem };
    let mut handles: Vec<&TaskStateHandle> = checkpoint
        .task_states
        .iter()
        .filter(|handle| handle.subtask.operator_id == operator.id)
        .collect();
    handles.sort_by_key(|handle| handle.subtask.subtask_index);
    let mut snapshots = Vec::with_capacity(handles.len());
    for (index, handle) in handles.into_iter().enumerate() {
        if handle.subtask.subtask_index as usize != index {
            return Err(restore_error(format!(
                "the checkpoint holds no state of {}[{index}]",
                operator.id
            )));
        }
        let bytes = load_state(&environment.store, checkpoint_id, handle).await?;
        snapshots.push(
            serde_json::from_slice(&bytes)
                .map_err(|error| restore_error(format!("state of {}[{index}]: {error}", operator.id)))?,
        );
    }
    Ok(snapshots)
}

/// Where generator subtask `deployment` resumes: from the positions every subtask of the operator
/// had in `checkpoint`, at whatever parallelism they ran.
pub(super) async fn resume_generator(
    deployment: &SubtaskDeployment,
    operator: &OperatorSpec,
    environment: &TaskEnvironment,
    checkpoint: &CompletedCheckpoint,
) -> Result<GeneratorPosition, TaskError> {
    let snapshots = source_snapshots(operator, environment, checkpoint).await?;
    let previous_parallelism = snapshots.len() as u64;
    let previous: Vec<GeneratorPosition> = snapshots
        .into_iter()
        .map(|snapshot| {
            // Checkpoints written before generators could be rescaled hold only the next offset.
            snapshot.generator.unwrap_or(GeneratorPosition {
                next: snapshot.position,
                step: previous_parallelism,
                emitted_before: Vec::new(),
            })
        })
        .collect();
    GeneratorPosition::resume(deployment.subtask_index, operator.parallelism, &previous).map_err(|problem| {
        TaskError::Restore {
            checkpoint_id: checkpoint.checkpoint_id,
            problem,
        }
    })
}

/// How far every file of file source `operator` was read in `checkpoint`, merged over the
/// subtasks of the placement that took it (each file was read by one of them).
pub(super) async fn file_progress(
    operator: &OperatorSpec,
    environment: &TaskEnvironment,
    checkpoint: &CompletedCheckpoint,
) -> Result<FileProgress, TaskError> {
    let OperatorConfig::FileSource { path, .. } = &operator.config else {
        return Err(TaskError::Graph(format!(
            "operator {} is not a file source",
            operator.id
        )));
    };
    let snapshots = source_snapshots(operator, environment, checkpoint).await?;
    let previous_parallelism = snapshots.len() as u32;
    let mut merged = FileProgress::new();
    for (index, snapshot) in snapshots.into_iter().enumerate() {
        let progress = match snapshot.files {
            Some(progress) => progress,
            // Checkpoints written before file sources could be rescaled hold the bytes consumed
            // over the subtask's files read in order.
            None => progress_at_position(
                std::path::Path::new(path),
                index as u32,
                previous_parallelism,
                snapshot.position,
            )
            .map_err(|error| TaskError::Source(error.to_string()))?,
        };
        for (file, consumed) in progress {
            let entry = merged.entry(file).or_default();
            *entry = (*entry).max(consumed);
        }
    }
    Ok(merged)
}

pub(super) async fn restore(
    deployment: &SubtaskDeployment,
    operator: &OperatorSpec,
    environment: &TaskEnvironment,
    logic: &mut Logic,
) -> Result<(), TaskError> {
    let checkpoint = deployment.restore_from.as_ref();
    let checkpoint_id = checkpoint.map_or(CheckpointId::default(), |checkpoint| checkpoint.checkpoint_id);
    match logic {
        Logic::Source(source) => {
            if let (Some(checkpoint), SourceReader::Generator(generator)) = (checkpoint, source.as_mut()) {
                if !crate::defects::injected(crate::defects::REPLAY_FROM_START) {
                    generator.position = resume_generator(deployment, operator, environment, checkpoint).await?;
                }
            }
            if let (Some(checkpoint), SourceReader::Files { reader, .. }) = (checkpoint, source.as_mut()) {
                if !crate::defects::injected(crate::defects::REPLAY_FROM_START) {
                    reader.resume(&file_progress(operator, environment, checkpoint).await?);
                }
            }
        }
        Logic::Count(_) | Logic::Aggregate(_) | Logic::Window(_) | Logic::KeyedUdf(_) => {
            let Some(checkpoint) = checkpoint else { return Ok(()) };
            let groups = key_group_range(
                deployment.subtask_index,
                deployment.graph.max_parallelism,
                operator.parallelism,
            );
            // The states of the old subtasks whose key groups overlap this subtask's: one at an
            // unchanged parallelism, a few after a rescale. (A checkpoint holds a state of every
            // subtask of the placement that took it, so their number is its parallelism.)
            let handles: Vec<&TaskStateHandle> = checkpoint
                .task_states
                .iter()
                .filter(|handle| handle.subtask.operator_id == operator.id)
                .collect();
            let previous_parallelism = handles.len() as u32;
            let mut indexes: Vec<u32> = handles.iter().map(|handle| handle.subtask.subtask_index).collect();
            indexes.sort_unstable();
            let complete = indexes.iter().copied().eq(0..previous_parallelism);
            // Every state this subtask needs is read first, so its map is sized once for all
            // of them (a rescale down merges several).
            let mut states = Vec::new();
            for handle in handles {
                let own = handle.subtask.subtask_index == deployment.subtask_index;
                let old_groups = key_group_range(
                    handle.subtask.subtask_index,
                    deployment.graph.max_parallelism,
                    previous_parallelism,
                );
                let overlaps = !complete || (old_groups.start < groups.end && groups.start < old_groups.end);
                // A window's own state also holds its input channels' progress.
                if !overlaps && !(own && matches!(logic, Logic::Window(_))) {
                    continue;
                }
                states.push((own, load_state(&environment.store, checkpoint_id, handle).await?));
            }
            off_the_workers(|| {
                let keys: usize = states.iter().map(|(_, bytes)| entries_in_groups(bytes, &groups)).sum();
                match logic {
                    Logic::Count(counts) => counts.reserve(keys),
                    Logic::Aggregate(aggregate) => aggregate.reserve(keys),
                    Logic::KeyedUdf(keyed) => keyed.reserve(keys),
                    _ => {}
                }
                states.iter().try_for_each(|(own, bytes)| match logic {
                    Logic::Count(counts) => counts.restore(operator.id.as_str(), bytes, &groups),
                    Logic::Aggregate(aggregate) => aggregate.restore(operator.id.as_str(), bytes, &groups),
                    Logic::KeyedUdf(keyed) => keyed.restore(operator.id.as_str(), bytes, &groups),
                    Logic::Window(window) => window.restore(operator.id.as_str(), bytes, &groups, *own),
                    _ => Ok(()),
                })
            })?;
        }
        Logic::FileSink(sink) => {
            // Its own state, and those of indexes a smaller placement no longer has that it
            // adopts: their pre-committed output must be published (or cleaned) by someone.
            let parallelism = operator.parallelism.max(1);
            let mut states = Vec::new();
            for handle in checkpoint.iter().flat_map(|checkpoint| &checkpoint.task_states) {
                let index = handle.subtask.subtask_index;
                if handle.subtask.operator_id == operator.id
                    && restores_index(index, deployment.subtask_index, parallelism)
                {
                    states.push((index, load_state(&environment.store, checkpoint_id, handle).await?));
                }
            }
            let states: Vec<(u32, &[u8])> = states.iter().map(|(index, bytes)| (*index, bytes.as_slice())).collect();
            // Whatever stops the sink from restoring its checkpoint's output (a pre-committed
            // file gone, unreadable state) is not cured by restarting from the same checkpoint:
            // it fails the job with the reason instead of looping.
            let published = sink
                .restore(operator.id.as_str(), parallelism, &states)
                .map_err(|error| TaskError::Restore {
                    checkpoint_id,
                    problem: error.to_string(),
                })?;
            if published > 0 {
                tracing::info!(
                    checkpoint_id = checkpoint_id.0,
                    published,
                    "published pre-committed output of the restored checkpoint"
                );
            }
        }
        Logic::Stateless(_) | Logic::Print(_) | Logic::Udf(_) => {}
    }
    Ok(())
}
