//! The `file_source`: the lines of the files under a path (one file, or every file of a directory
//! in name order; files are expected not to change while the job reads them). Subtask `i` of `p`
//! reads the files whose position in that order is `i` modulo `p`. Its checkpointed offset is the
//! number of bytes it consumed over its files, so a restore continues at the exact line.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Why the files cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("file source {path}: {source}")]
pub struct FileSourceError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Reads the lines of one subtask's files from a byte position.
#[derive(Debug)]
pub struct FileReader {
    files: Vec<PathBuf>,
    current: usize,
    reader: Option<BufReader<std::fs::File>>,
    /// Bytes consumed over all of this subtask's files.
    position: u64,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> FileSourceError + '_ {
    move |source| FileSourceError {
        path: path.to_owned(),
        source,
    }
}

impl FileReader {
    /// The reader of subtask `index` of `parallelism` over `path`, starting at byte `position`.
    pub fn open(path: &Path, index: u32, parallelism: u32, position: u64) -> Result<FileReader, FileSourceError> {
        let path = std::path::absolute(path).map_err(io_error(path))?;
        let metadata = std::fs::metadata(&path).map_err(io_error(&path))?;
        let mut all = if metadata.is_dir() {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(&path).map_err(io_error(&path))? {
                let entry = entry.map_err(io_error(&path))?;
                let name = entry.file_name();
                // Hidden files (editors' swap files, our own sinks' pending files) are not input.
                if entry.path().is_file() && !name.to_string_lossy().starts_with('.') {
                    files.push(entry.path());
                }
            }
            files
        } else {
            vec![path.clone()]
        };
        all.sort();
        let parallelism = parallelism.max(1) as usize;
        let files = all
            .into_iter()
            .enumerate()
            .filter(|(number, _)| number % parallelism == index as usize)
            .map(|(_, file)| file)
            .collect();
        let mut reader = FileReader {
            files,
            current: 0,
            reader: None,
            position: 0,
        };
        reader.seek(position)?;
        Ok(reader)
    }

    fn seek(&mut self, position: u64) -> Result<(), FileSourceError> {
        let mut skipped = 0u64;
        for (number, file) in self.files.iter().enumerate() {
            let size = std::fs::metadata(file).map_err(io_error(file))?.len();
            if skipped + size > position {
                let mut handle = std::fs::File::open(file).map_err(io_error(file))?;
                handle
                    .seek(SeekFrom::Start(position - skipped))
                    .map_err(io_error(file))?;
                self.current = number;
                self.reader = Some(BufReader::with_capacity(256 * 1024, handle));
                self.position = position;
                return Ok(());
            }
            skipped += size;
        }
        self.current = self.files.len();
        self.position = position;
        Ok(())
    }

    /// Bytes consumed so far: the offset to checkpoint.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Whether every line was read.
    pub fn is_exhausted(&self) -> bool {
        self.current >= self.files.len()
    }

    /// Reads the next line into `line` (without its line ending); false at the end of all files.
    pub fn next_line(&mut self, line: &mut String) -> Result<bool, FileSourceError> {
        loop {
            if self.current >= self.files.len() {
                return Ok(false);
            }
            if self.reader.is_none() {
                let file = &self.files[self.current];
                self.reader = Some(BufReader::with_capacity(
                    256 * 1024,
                    std::fs::File::open(file).map_err(io_error(file))?,
                ));
            }
            line.clear();
            let file = &self.files[self.current];
            let read = match self.reader.as_mut() {
                Some(reader) => reader.read_line(line).map_err(io_error(file))?,
                None => 0,
            };
            if read == 0 {
                self.current += 1;
                self.reader = None;
                continue;
            }
            self.position += read as u64;
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

    fn lines_from(path: &Path, index: u32, parallelism: u32, position: u64) -> (Vec<String>, u64) {
        let mut reader = FileReader::open(path, index, parallelism, position).expect("opens");
        let mut line = String::new();
        let mut lines = Vec::new();
        while reader.next_line(&mut line).expect("reads") {
            lines.push(line.clone());
        }
        (lines, reader.position())
    }

    #[test]
    fn splits_files_by_subtask_and_resumes_at_a_byte_offset() -> std::io::Result<()> {
        let directory = tempfile::tempdir()?;
        std::fs::write(directory.path().join("a.txt"), "a1\na2\n")?;
        std::fs::write(directory.path().join("b.txt"), "b1\r\nb2")?;
        std::fs::write(directory.path().join("c.txt"), "c1\n")?;
        std::fs::write(directory.path().join(".hidden"), "no\n")?;
        let (first, end) = lines_from(directory.path(), 0, 2, 0);
        assert_eq!(first, vec!["a1", "a2", "c1"]);
        assert_eq!(end, 9);
        let (second, _) = lines_from(directory.path(), 1, 2, 0);
        assert_eq!(second, vec!["b1", "b2"]);
        // Resume after "a1\n" (3 bytes) and after the whole of a.txt (6 bytes).
        assert_eq!(lines_from(directory.path(), 0, 2, 3).0, vec!["a2", "c1"]);
        assert_eq!(lines_from(directory.path(), 0, 2, 6).0, vec!["c1"]);
        assert!(lines_from(directory.path(), 0, 2, 9).0.is_empty());
        assert!(FileReader::open(&directory.path().join("missing"), 0, 1, 0).is_err());
        Ok(())
    }
}
