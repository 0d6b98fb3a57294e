//! The `file_source`: the lines of the files under a path (one file, or every file of a directory
//! in name order; files are expected not to change while the job reads them). Subtask `i` of `p`
//! reads the files whose position in that order is `i` modulo `p`, one after the other. Its
//! checkpointed state is the number of bytes it consumed of each file, by name, so a restore
//! continues at the exact line, also at another parallelism: every file then continues where the
//! subtask that read it before stood, whichever subtask owns it now.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Bytes consumed of each file, by its name under the source's path (files not begun are absent).
pub type FileProgress = BTreeMap<String, u64>;

/// Why the files cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("file source {path}: {source}")]
pub struct FileSourceError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// One input file of a subtask and how much of it was consumed.
#[derive(Debug)]
struct InputFile {
    path: PathBuf,
    /// The key of its progress: the file's name under the source's path.
    name: String,
    consumed: u64,
}

/// Reads the lines of one subtask's files, each from the byte it was consumed to.
#[derive(Debug)]
pub struct FileReader {
    files: Vec<InputFile>,
    current: usize,
    reader: Option<BufReader<std::fs::File>>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> FileSourceError + '_ {
    move |source| FileSourceError {
        path: path.to_owned(),
        source,
    }
}

/// Every input file under `path` in name order, with its name.
fn input_files(path: &Path) -> Result<Vec<(PathBuf, String)>, FileSourceError> {
    let path = std::path::absolute(path).map_err(io_error(path))?;
    let metadata = std::fs::metadata(&path).map_err(io_error(&path))?;
    let mut files = Vec::new();
    if metadata.is_dir() {
        for entry in std::fs::read_dir(&path).map_err(io_error(&path))? {
            let entry = entry.map_err(io_error(&path))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Hidden files (editors' swap files, our own sinks' pending files) are not input.
            if entry.path().is_file() && !name.starts_with('.') {
                files.push((entry.path(), name));
            }
        }
    } else {
        let name = path
            .file_name()
            .map_or_else(String::new, |name| name.to_string_lossy().into_owned());
        files.push((path, name));
    }
    files.sort();
    Ok(files)
}

/// The files subtask `index` of `parallelism` reads, in order.
fn files_of(path: &Path, index: u32, parallelism: u32) -> Result<Vec<(PathBuf, String)>, FileSourceError> {
    let parallelism = parallelism.max(1) as usize;
    Ok(input_files(path)?
        .into_iter()
        .enumerate()
        .filter(|(number, _)| number % parallelism == index as usize)
        .map(|(_, file)| file)
        .collect())
}

/// The progress of subtask `index` of `parallelism` that consumed `position` bytes over its
/// files read in order: the only state of checkpoints written before file sources could be
/// rescaled.
pub fn progress_at_position(
    path: &Path,
    index: u32,
    parallelism: u32,
    position: u64,
) -> Result<FileProgress, FileSourceError> {
    let mut progress = FileProgress::new();
    let mut remaining = position;
    for (file, name) in files_of(path, index, parallelism)? {
        if remaining == 0 {
            break;
        }
        let size = std::fs::metadata(&file).map_err(io_error(&file))?.len();
        let consumed = size.min(remaining);
        progress.insert(name, consumed);
        remaining -= consumed;
    }
    Ok(progress)
}

impl FileReader {
    /// The reader of subtask `index` of `parallelism` over `path`, at the start of its files.
    pub fn open(path: &Path, index: u32, parallelism: u32) -> Result<FileReader, FileSourceError> {
        let files = files_of(path, index, parallelism)?
            .into_iter()
            .map(|(path, name)| InputFile {
                path,
                name,
                consumed: 0,
            })
            .collect();
        Ok(FileReader {
            files,
            current: 0,
            reader: None,
        })
    }

    /// Continues each of this subtask's files at the bytes `progress` records for it (whichever
    /// subtask consumed them).
    pub fn resume(&mut self, progress: &FileProgress) {
        for file in &mut self.files {
            file.consumed = progress.get(&file.name).copied().unwrap_or(0);
        }
        self.current = 0;
        self.reader = None;
    }

    /// What a checkpoint records: the bytes consumed of each file begun.
    pub fn progress(&self) -> FileProgress {
        self.files
            .iter()
            .filter(|file| file.consumed > 0)
            .map(|file| (file.name.clone(), file.consumed))
            .collect()
    }

    /// Bytes consumed over this subtask's files: the offset the Raft state records.
    pub fn position(&self) -> u64 {
        self.files.iter().map(|file| file.consumed).sum()
    }

    /// Whether every line was read.
    pub fn is_exhausted(&self) -> bool {
        self.current >= self.files.len()
    }

    /// Reads the next line into `line` (without its line ending); false at the end of all files.
    pub fn next_line(&mut self, line: &mut String) -> Result<bool, FileSourceError> {
        loop {
            let Some(file) = self.files.get_mut(self.current) else {
                return Ok(false);
            };
            let reader = match self.reader.as_mut() {
                Some(reader) => reader,
                None => {
                    let mut handle = std::fs::File::open(&file.path).map_err(io_error(&file.path))?;
                    handle
                        .seek(SeekFrom::Start(file.consumed))
                        .map_err(io_error(&file.path))?;
                    self.reader.insert(BufReader::with_capacity(256 * 1024, handle))
                }
            };
            line.clear();
            let read = reader.read_line(line).map_err(io_error(&file.path))?;
            if read == 0 {
                self.current += 1;
                self.reader = None;
                continue;
            }
            file.consumed += read as u64;
            while line.ends_with('\n') || line.ends_with('\r') {
                line.pop();
            }
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(reader: &mut FileReader) -> Vec<String> {
        let mut line = String::new();
        let mut lines = Vec::new();
        while reader.next_line(&mut line).expect("reads") {
            lines.push(line.clone());
        }
        lines
    }

    fn lines_from(path: &Path, index: u32, parallelism: u32, position: u64) -> (Vec<String>, u64) {
        let mut reader = FileReader::open(path, index, parallelism).expect("opens");
        reader.resume(&progress_at_position(path, index, parallelism, position).expect("sizes"));
        let lines = read_all(&mut reader);
        (lines, reader.position())
    }

    fn directory_of(files: &[(&str, &str)]) -> std::io::Result<tempfile::TempDir> {
        let directory = tempfile::tempdir()?;
        for (name, contents) in files {
            std::fs::write(directory.path().join(name), contents)?;
        }
        Ok(directory)
    }

    #[test]
    fn splits_files_by_subtask_and_resumes_at_a_byte_offset() -> std::io::Result<()> {
        let directory = directory_of(&[
            ("a.txt", "a1\na2\n"),
            ("b.txt", "b1\r\nb2"),
            ("c.txt", "c1\n"),
            (".hidden", "no\n"),
        ])?;
        let (first, end) = lines_from(directory.path(), 0, 2, 0);
        assert_eq!(first, vec!["a1", "a2", "c1"]);
        assert_eq!(end, 9);
        let (second, _) = lines_from(directory.path(), 1, 2, 0);
        assert_eq!(second, vec!["b1", "b2"]);
        // Resume after "a1\n" (3 bytes) and after the whole of a.txt (6 bytes).
        assert_eq!(lines_from(directory.path(), 0, 2, 3).0, vec!["a2", "c1"]);
        assert_eq!(lines_from(directory.path(), 0, 2, 6).0, vec!["c1"]);
        assert!(lines_from(directory.path(), 0, 2, 9).0.is_empty());
        assert!(FileReader::open(&directory.path().join("missing"), 0, 1).is_err());
        // A single file is its own input, named by its file name.
        let single = directory.path().join("a.txt");
        assert_eq!(
            progress_at_position(&single, 0, 1, 3).expect("sizes"),
            FileProgress::from([("a.txt".to_owned(), 3)])
        );
        Ok(())
    }

    /// Subtasks of one placement read part of their files; the merged progress of all of them
    /// resumes a placement at another parallelism, which reads every line exactly once overall.
    #[test]
    fn a_placement_at_another_parallelism_reads_each_line_once() -> std::io::Result<()> {
        let files: Vec<(String, String)> = (0..7)
            .map(|file| {
                let lines: String = (0..(3 + file)).map(|line| format!("f{file}l{line}\n")).collect();
                (format!("part-{file}.txt"), lines)
            })
            .collect();
        let borrowed: Vec<(&str, &str)> = files
            .iter()
            .map(|(name, text)| (name.as_str(), text.as_str()))
            .collect();
        let directory = directory_of(&borrowed)?;
        for (before, after) in [(3u32, 2u32), (2, 5), (1, 4), (4, 1)] {
            let mut read = Vec::new();
            let mut progress = FileProgress::new();
            for index in 0..before {
                let mut reader = FileReader::open(directory.path(), index, before).expect("opens");
                // Each subtask of the first placement reads a different number of lines.
                let mut line = String::new();
                for _ in 0..(2 + 3 * index) {
                    if !reader.next_line(&mut line).expect("reads") {
                        break;
                    }
                    read.push(line.clone());
                }
                progress.extend(reader.progress());
            }
            for index in 0..after {
                let mut reader = FileReader::open(directory.path(), index, after).expect("opens");
                reader.resume(&progress);
                read.extend(read_all(&mut reader));
            }
            let mut expected: Vec<String> = files
                .iter()
                .flat_map(|(_, text)| text.lines().map(str::to_owned))
                .collect();
            expected.sort();
            read.sort();
            assert_eq!(read, expected, "{before} -> {after} subtasks");
        }
        Ok(())
    }
}
