//! `file://` sources, for testing models and demos without a camera. Both kinds loop forever,
//! like a camera:
//!
//! - Images: `file:///dir/pattern`, where the file name may hold `*` (any run of characters)
//!   and `?` (one character), or names one image (`.jpg`, `.jpeg`, `.png`, `.bmp`, `.webp`).
//!   The directory part is literal. Matching files (not hidden ones, unless the pattern starts
//!   with `.`) are read in file-name order at `fps`, then listed again and replayed, so files
//!   added meanwhile join the next round. An unreadable or undecodable file is a
//!   [`SourceError::Corrupt`] frame; no match at all is [`SourceError::Failed`].
//! - Any other file is a video, played by ffmpeg at its own frame rate and looped
//!   (`-re -stream_loop -1`).
//!
//! The path is taken as written (no percent-decoding) and must be absolute (`file:///…`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::ffmpeg::{self, Playback};
use super::{decode, redact, Frame, FrameFuture, FrameSource, Pacer, SourceError, SourceOptions};

/// File extensions read as images (compared without case).
const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "bmp", "webp"];

/// The source for `file://<path>`.
pub(crate) fn open(path: &str, options: &SourceOptions) -> Result<Box<dyn FrameSource>, SourceError> {
    let shown = redact(&format!("file://{path}"));
    let file = Path::new(path);
    let (true, Some(pattern), Some(dir)) = (file.is_absolute(), file.file_name(), file.parent()) else {
        return Err(SourceError::invalid(
            &shown,
            "needs an absolute path to a file: file:///dir/*.jpg",
        ));
    };
    if dir.to_string_lossy().contains(['*', '?']) {
        return Err(SourceError::invalid(
            &shown,
            "wildcards are allowed in the file name only",
        ));
    }
    let pattern = pattern.to_string_lossy();
    let is_image = Path::new(&*pattern)
        .extension()
        .is_some_and(|extension| IMAGE_EXTENSIONS.iter().any(|e| extension.eq_ignore_ascii_case(e)));
    if pattern.contains(['*', '?']) || is_image {
        Ok(Box::new(ImageFiles {
            dir: dir.to_path_buf(),
            pattern: pattern.into_owned(),
            shown,
            pacer: Pacer::new(options),
            queue: VecDeque::new(),
        }))
    } else {
        Ok(Box::new(ffmpeg::source(
            path,
            &shown,
            options,
            Playback::LoopRealTime,
        )))
    }
}

/// Image files played in a loop.
struct ImageFiles {
    dir: PathBuf,
    pattern: String,
    shown: String,
    pacer: Pacer,
    /// The rest of the current round.
    queue: VecDeque<PathBuf>,
}

impl ImageFiles {
    async fn frame(&mut self) -> Result<Frame, SourceError> {
        self.pacer.tick().await;
        if self.queue.is_empty() {
            self.queue = self.list().await?.into();
        }
        let Some(path) = self.queue.pop_front() else {
            return Err(SourceError::failed(&self.shown, "no file matches"));
        };
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| SourceError::corrupt(&self.shown, format!("cannot read {}: {e}", path.display())))?;
        decode(&self.shown, bytes.into(), Instant::now()).await
    }

    /// The matching files, sorted by name.
    async fn list(&self) -> Result<Vec<PathBuf>, SourceError> {
        let fail = |e: std::io::Error| {
            SourceError::failed(&self.shown, format!("cannot list {}: {e}", self.dir.display()))
        };
        let mut entries = tokio::fs::read_dir(&self.dir).await.map_err(fail)?;
        let mut files = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(fail)? {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let hidden = name.starts_with('.') && !self.pattern.starts_with('.');
            if !hidden && matches(&self.pattern, &name) && entry.file_type().await.is_ok_and(|t| !t.is_dir())
            {
                files.push(entry.path());
            }
        }
        files.sort();
        Ok(files)
    }
}

impl FrameSource for ImageFiles {
    fn next_frame(&mut self) -> FrameFuture<'_> {
        Box::pin(self.frame())
    }

    fn describe(&self) -> String {
        self.shown.clone()
    }
}

/// Whether `name` matches `pattern` (`*`: any run of characters, `?`: one character).
fn matches(pattern: &str, name: &str) -> bool {
    let (pattern, name): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut p, mut n) = (0, 0);
    // The last `*` seen and the name position it currently stands for the run up to.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == '?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((star_at, run_end)) => {
                    star = Some((star_at, run_end + 1));
                    p = star_at + 1;
                    n = run_end + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        for (pattern, name, want) in [
            ("*.jpg", "a.jpg", true),
            ("*.jpg", "a.jpg.png", false),
            ("frame_??.png", "frame_01.png", true),
            ("frame_??.png", "frame_1.png", false),
            ("*_*.png", "a_b_c.png", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*", "", true),
            ("exact.bmp", "exact.bmp", true),
        ] {
            assert_eq!(matches(pattern, name), want, "{pattern} {name}");
        }
    }

    #[test]
    fn kinds_and_bad_paths() {
        let options = SourceOptions::new(1.0, "");
        let images = open("/data/*.jpg", &options).unwrap();
        assert_eq!(images.describe(), "file:///data/*.jpg");
        let video = open("/data/clip.mp4", &options).unwrap();
        assert_eq!(video.describe(), "file:///data/clip.mp4");
        for bad in ["relative/*.jpg", "/data/*/a.jpg", "/"] {
            assert!(
                matches!(open(bad, &options), Err(SourceError::Invalid { .. })),
                "{bad}"
            );
        }
    }
}
