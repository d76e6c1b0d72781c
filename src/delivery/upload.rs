//! Writing a model file into the staging area as it arrives — an HTTP body or a download —
//! never holding it whole in memory: [`PartFile`] appends chunks to `model.onnx.part`,
//! refuses a byte past the announced size, and on [`PartFile::finish`] checks the size,
//! flushes to disk and renames the part into `model.onnx`. A part file dropped unfinished is
//! deleted unless it is kept for a resumed download.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use super::DeliveryError;

/// A model file being written.
pub struct PartFile {
    file: Option<tokio::fs::File>,
    part: PathBuf,
    done: PathBuf,
    written: u64,
    expected: u64,
    /// Keep the part on drop (a download resumes from it).
    keep: bool,
}

impl PartFile {
    /// Starts `part` from empty, for a file of `expected` bytes that becomes `done`.
    pub async fn create(part: &Path, done: &Path, expected: u64) -> Result<PartFile, DeliveryError> {
        let file = tokio::fs::File::create(part).await.map_err(|e| io(part, e))?;
        Ok(PartFile::with(file, part, done, 0, expected, false))
    }

    /// Continues `part` where it ends (a resumed download); returns the writer and its offset.
    pub async fn resume(part: &Path, done: &Path, expected: u64) -> Result<PartFile, DeliveryError> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(part)
            .await
            .map_err(|e| io(part, e))?;
        let written = file.metadata().await.map_err(|e| io(part, e))?.len();
        Ok(PartFile::with(file, part, done, written, expected, true))
    }

    fn with(
        file: tokio::fs::File,
        part: &Path,
        done: &Path,
        written: u64,
        expected: u64,
        keep: bool,
    ) -> PartFile {
        PartFile {
            file: Some(file),
            part: part.to_path_buf(),
            done: done.to_path_buf(),
            written,
            expected,
            keep,
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Bytes announced.
    pub fn expected(&self) -> u64 {
        self.expected
    }

    /// Starts over from empty (a server that ignored the range).
    pub async fn truncate(&mut self) -> Result<(), DeliveryError> {
        let file = self.file.as_mut().expect("open until finished");
        file.set_len(0).await.map_err(|e| io(&self.part, e))?;
        self.written = 0;
        Ok(())
    }

    /// Appends a chunk; more than the expected size is refused.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), DeliveryError> {
        let total = self.written + chunk.len() as u64;
        if total > self.expected {
            return Err(DeliveryError::TooLarge(format!(
                "more than the announced {} bytes arrived",
                self.expected
            )));
        }
        let file = self.file.as_mut().expect("open until finished");
        file.write_all(chunk).await.map_err(|e| io(&self.part, e))?;
        self.written = total;
        Ok(())
    }

    /// Checks that every byte arrived, flushes the file to disk and renames it into place.
    pub async fn finish(mut self) -> Result<u64, DeliveryError> {
        if self.written != self.expected {
            return Err(DeliveryError::Truncated(format!(
                "the model file ended after {} of {} bytes",
                self.written, self.expected
            )));
        }
        let mut file = self.file.take().expect("open until finished");
        file.flush().await.map_err(|e| io(&self.part, e))?;
        file.sync_all().await.map_err(|e| io(&self.part, e))?;
        drop(file);
        tokio::fs::rename(&self.part, &self.done)
            .await
            .map_err(|e| io(&self.done, e))?;
        Ok(self.written)
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if self.file.is_some() && !self.keep {
            let _ = std::fs::remove_file(&self.part);
        }
    }
}

fn io(path: &Path, e: std::io::Error) -> DeliveryError {
    DeliveryError::Io(format!("{}: {e}", path.display()))
}
