//! A directory of JSON records, one file `<id>.json` per id, as the NVMe volume records and the
//! snapshot jobs keep them: replaced atomically, read back strictly, and a file that cannot be
//! read (or that its owner does not accept) set aside as `<id>.json.unreadable` with a log line,
//! never deleted: a human may need it.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{write_atomic, HostError};

#[derive(Debug, Clone)]
pub struct RecordDir {
    dir: PathBuf,
}

/// One record read back: its file, the id its file name gives, and what it holds.
#[derive(Debug)]
pub struct Loaded<T> {
    pub path: PathBuf,
    pub stem: String,
    pub record: T,
}

impl RecordDir {
    pub fn new(dir: impl Into<PathBuf>) -> RecordDir {
        RecordDir { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Replaces `id`'s record. The directory is made when a write finds it missing (the first
    /// record, or someone removed it), not looked up before every write.
    pub fn write<T: Serialize>(&self, id: &str, record: &T) -> Result<(), HostError> {
        let json = serde_json::to_vec_pretty(record).expect("records serialize");
        let path = self.path_of(id);
        match write_atomic(&path, &json) {
            Err(HostError::Write { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                std::fs::create_dir_all(&self.dir).map_err(|source| HostError::Write {
                    path: self.dir.clone(),
                    source,
                })?;
                write_atomic(&path, &json)
            }
            written => written,
        }
    }

    /// Removes `id`'s record; one that is not there is already what was wanted.
    pub fn remove(&self, id: &str) -> Result<(), HostError> {
        let path = self.path_of(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(HostError::Write { path, source }),
        }
    }

    /// Every `*.json` record that parses as `T` and that `accept` (given the id from the file
    /// name) takes. The others are set aside and logged; a missing directory holds nothing.
    pub fn load<T: DeserializeOwned>(
        &self,
        accept: impl Fn(&str, &T) -> Result<(), String>,
    ) -> Vec<Loaded<T>> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let read = std::fs::read(&path)
                .map_err(|e| format!("cannot be read ({e})"))
                .and_then(|b| {
                    serde_json::from_slice::<T>(&b).map_err(|e| format!("cannot be read ({e})"))
                })
                .and_then(|r| {
                    accept(&stem, &r)
                        .map_err(|e| format!("is not a record this agent wrote: {e}"))?;
                    Ok(r)
                });
            match read {
                Ok(record) => out.push(Loaded { path, stem, record }),
                Err(why) => set_aside(&path, &why),
            }
        }
        out
    }
}

fn set_aside(path: &Path, why: &str) {
    let aside = path.with_extension("json.unreadable");
    match std::fs::rename(path, &aside) {
        Ok(()) => tracing::error!(
            "{}: {why}; moved to {} and not acted on",
            path.display(),
            aside.display()
        ),
        Err(e) => tracing::error!(
            "{}: {why}; not acted on, and it could not be moved to {} ({e})",
            path.display(),
            aside.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct R {
        id: String,
        n: u32,
    }

    #[test]
    fn written_records_load_and_bad_ones_are_set_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RecordDir::new(tmp.path().join("missing/records"));
        assert!(dir.load::<R>(|_, _| Ok(())).is_empty());
        dir.write(
            "a",
            &R {
                id: "a".into(),
                n: 1,
            },
        )
        .unwrap();
        dir.write(
            "b",
            &R {
                id: "x".into(),
                n: 2,
            },
        )
        .unwrap();
        std::fs::write(dir.path_of("torn"), b"{\"id\": \"torn\", \"n\":").unwrap();
        std::fs::write(dir.dir().join("notes.txt"), b"kept").unwrap();
        let loaded = dir.load::<R>(|stem, r| {
            if r.id == stem {
                Ok(())
            } else {
                Err(format!("names {:?}, not its file name", r.id))
            }
        });
        assert_eq!(loaded.len(), 1);
        assert_eq!((loaded[0].stem.as_str(), loaded[0].record.n), ("a", 1));
        for set_aside in ["b", "torn"] {
            assert!(!dir.path_of(set_aside).exists(), "{set_aside}");
            assert!(dir
                .dir()
                .join(format!("{set_aside}.json.unreadable"))
                .exists());
        }
        assert!(dir.dir().join("notes.txt").exists());
        dir.remove("a").unwrap();
        dir.remove("a").unwrap();
        assert!(!dir.path_of("a").exists());
    }
}
