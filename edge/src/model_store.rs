//! The models a device keeps on disk: the active one, the previous one (for rollback), and
//! the reference frames a new model is tried on before it is adopted.
//!
//! Layout of the store folder (default `<data>/models`):
//!
//! ```text
//! state.json                 {"active": "v3-1a2b..", "previous": "v2-9f8e.."}
//! slots/v3-1a2b../           manifest.json, the ONNX file it names, signer.txt
//! reference/ref-00.jpg ..    frames new models are tried on
//! staging-*/                 a bundle being checked (removed at open)
//! ```
//!
//! A slot folder is written completely and fsynced under a staging name, then renamed
//! into `slots/`; only then is `state.json` replaced (temporary file, fsync, rename,
//! fsync of the folder). So a kill at any moment leaves `state.json` naming complete
//! slots: the old model or the new one is active, never neither. Slots that no state
//! names (a swap killed before its state was written) are removed at the next open.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use image::RgbImage;
use serde::{Deserialize, Serialize};
use shared::bundle::{Bundle, BundleError};
use shared::ModelManifest;

use crate::detector::Detector;

/// Loads the model a manifest file describes (the ONNX file named by it sits beside it).
pub type ModelLoader =
    Arc<dyn Fn(&Path) -> Result<Box<dyn Detector>, String> + Send + Sync + 'static>;

/// How many reference frames are kept beside the models.
pub const REFERENCE_FRAMES: usize = 8;

const STATE_FILE: &str = "state.json";
const MANIFEST_FILE: &str = "manifest.json";
const SIGNER_FILE: &str = "signer.txt";

/// Why a model was refused or a store operation failed. Every refusal leaves the disk
/// as it was.
#[derive(Debug, thiserror::Error)]
pub enum ModelStoreError {
    /// The bundle is malformed, unsigned by a trusted key, or its hash is wrong.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The manifest names its ONNX file with a path instead of a plain name.
    #[error("manifest file name {0:?} must be a plain `.onnx` file name")]
    FileName(String),
    /// The pushed model is not newer than the active one.
    #[error(
        "model version {offered} is not newer than the active version {active}; \
         use rollback to go back"
    )]
    NotNewer {
        /// Version number offered.
        offered: u64,
        /// Version number active now.
        active: u64,
    },
    /// tract (or the configured loader) could not load the model.
    #[error("model {version} does not load: {reason}")]
    Load {
        /// Version string of the model.
        version: String,
        /// The loader's message.
        reason: String,
    },
    /// The model loaded but failed the self-test on the reference frames.
    #[error("model {version} failed the self-test: {reason}")]
    SelfTest {
        /// Version string of the model.
        version: String,
        /// What went wrong.
        reason: String,
    },
    /// Rollback was asked for but there is no previous model.
    #[error("no previous model to roll back to")]
    NoPrevious,
    /// A file operation failed.
    #[error("{path}: {action}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// `state.json` or a slot's manifest is unreadable.
    #[error("{path}: corrupt model store file: {reason}; remove the store folder to start over")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

impl ModelStoreError {
    /// Whether the error is the client's (a refused model) rather than the device's.
    #[cfg(test)]
    pub fn is_refusal(&self) -> bool {
        !matches!(self, ModelStoreError::Io { .. } | ModelStoreError::Corrupt { .. })
    }
}

type Result<T, E = ModelStoreError> = std::result::Result<T, E>;

/// Which slots are active and previous: the one file replaced atomically on each swap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    active: Option<String>,
    previous: Option<String>,
}

/// A model in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredModel {
    /// Its slot folder.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: ModelManifest,
}

impl StoredModel {
    /// The manifest file, which the loader takes.
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST_FILE)
    }
}

/// What an accepted install or a rollback did.
pub struct Swap {
    /// The model now active.
    pub active: StoredModel,
    /// The model it replaced, if any.
    pub replaced: Option<StoredModel>,
    /// The new model, loaded, for the frame loop to run from its next frame.
    pub detector: Box<dyn Detector>,
}

impl std::fmt::Debug for Swap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swap")
            .field("active", &self.active.manifest.version)
            .field("replaced", &self.replaced.as_ref().map(|m| &m.manifest.version))
            .finish_non_exhaustive()
    }
}

/// Settings of the self-test a new model must pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelfTestConfig {
    /// Share of reference frames on which the new model's face decision must equal the
    /// active model's.
    pub min_agreement: f32,
}

impl Default for SelfTestConfig {
    fn default() -> Self {
        Self { min_agreement: 0.6 }
    }
}

/// The model store of one device.
pub struct ModelStore {
    dir: PathBuf,
    state: State,
    loader: ModelLoader,
    trusted: Vec<VerifyingKey>,
    self_test: SelfTestConfig,
}

impl std::fmt::Debug for ModelStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelStore").field("dir", &self.dir).field("state", &self.state).finish()
    }
}

impl ModelStore {
    /// Opens (creating) the store in `dir`, removing what an interrupted swap left.
    pub fn open(
        dir: &Path,
        loader: ModelLoader,
        trusted: Vec<VerifyingKey>,
        self_test: SelfTestConfig,
    ) -> Result<Self> {
        for sub in [dir.to_path_buf(), dir.join("slots"), dir.join("reference")] {
            fs::create_dir_all(&sub).map_err(io_err(&sub, "creating the folder"))?;
        }
        let state = read_state(&dir.join(STATE_FILE))?;
        let store = Self { dir: dir.to_path_buf(), state, loader, trusted, self_test };
        store.remove_leftovers()?;
        Ok(store)
    }

    /// The active model, if the store has one.
    pub fn active(&self) -> Result<Option<StoredModel>> {
        self.state.active.as_deref().map(|s| self.slot(s)).transpose()
    }

    /// The model a rollback would return to.
    pub fn previous(&self) -> Result<Option<StoredModel>> {
        self.state.previous.as_deref().map(|s| self.slot(s)).transpose()
    }

    /// The function that loads the store's models.
    pub fn loader(&self) -> ModelLoader {
        self.loader.clone()
    }

    /// Makes a model that is not in the store (the one `edge run` was started with) the
    /// active one, so that later pushes have a version to be newer than. Only when the
    /// store is empty; the model is copied in like a pushed one (without a signer).
    pub fn adopt(&mut self, manifest_path: &Path) -> Result<StoredModel> {
        let manifest_json = fs::read(manifest_path).map_err(io_err(manifest_path, "reading"))?;
        let manifest = ModelManifest::from_json(&manifest_json)
            .map_err(|e| corrupt(manifest_path, e.to_string()))?;
        check_file_name(&manifest.file)?;
        let onnx_path = manifest_path.with_file_name(&manifest.file);
        let onnx = fs::read(&onnx_path).map_err(io_err(&onnx_path, "reading"))?;
        manifest.verify_model(&onnx).map_err(BundleError::from)?;
        let staged = self.stage(&manifest, &manifest_json, &onnx, "adopted: not pushed")?;
        let name = slot_name(&manifest);
        self.commit_slot(&staged, &name)?;
        self.write_state(State { active: Some(name.clone()), previous: None })?;
        tracing::info!(version = %manifest.version, "model store adopted the running model");
        self.slot(&name)
    }

    /// Checks a pushed bundle and, if every check passes, makes it the active model and
    /// the active one the previous. A refusal changes nothing on disk.
    pub fn install(&mut self, bytes: &[u8], reference: &[RgbImage]) -> Result<Swap> {
        let bundle = Bundle::parse(bytes)?;
        bundle.verify(&self.trusted)?;
        check_file_name(&bundle.manifest.file)?;
        let active = self.active()?;
        if let Some(active) = &active {
            let (offered, current) =
                (bundle.manifest.version_number, active.manifest.version_number);
            if offered <= current {
                return Err(ModelStoreError::NotNewer { offered, active: current });
            }
        }
        let manifest = &bundle.manifest;
        let staged =
            self.stage(manifest, &bundle.manifest_json, &bundle.onnx, &bundle.signer_hex())?;
        let checked = self.try_staged(&staged, manifest, active.as_ref(), reference);
        let detector = match checked {
            Ok(d) => d,
            Err(e) => {
                remove_dir(&staged);
                return Err(e);
            }
        };
        let name = slot_name(manifest);
        self.commit_slot(&staged, &name)?;
        let state = State { active: Some(name.clone()), previous: self.state.active.clone() };
        self.write_state(state)?;
        self.remove_leftovers()?;
        Ok(Swap { active: self.slot(&name)?, replaced: active, detector })
    }

    /// Makes the previous model active again. The model rolled back from is removed,
    /// and there is no previous model until the next install.
    pub fn rollback(&mut self) -> Result<Swap> {
        let previous = self.previous()?.ok_or(ModelStoreError::NoPrevious)?;
        let detector = self.load(&previous)?;
        let replaced = self.active()?;
        self.write_state(State { active: self.state.previous.clone(), previous: None })?;
        self.remove_leftovers()?;
        Ok(Swap { active: previous, replaced, detector })
    }

    /// The reference frames kept beside the models.
    pub fn reference_frames(&self) -> Vec<RgbImage> {
        let dir = self.dir.join("reference");
        let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        paths.sort();
        paths
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
            .filter_map(|p| match shared::frame::load_image(p) {
                Ok(img) => Some(img),
                Err(e) => {
                    tracing::warn!(error = %e, "reference frame unreadable; skipped");
                    None
                }
            })
            .collect()
    }

    /// Keeps `frames` (JPEG bytes, e.g. recent captures) as the reference frames when
    /// the store has none yet. Returns how many are kept now.
    pub fn keep_reference_frames(&self, frames: &[Vec<u8>]) -> Result<usize> {
        let have = self.reference_frames().len();
        if have > 0 {
            return Ok(have);
        }
        let dir = self.dir.join("reference");
        let mut kept = 0;
        for jpeg in frames.iter().take(REFERENCE_FRAMES) {
            if shared::frame::decode_image(jpeg, "reference frame").is_err() {
                continue;
            }
            write_synced(&dir.join(format!("ref-{kept:02}.jpg")), jpeg)?;
            kept += 1;
        }
        sync_dir(&dir)?;
        Ok(kept)
    }

    fn slot(&self, name: &str) -> Result<StoredModel> {
        let dir = self.dir.join("slots").join(name);
        let path = dir.join(MANIFEST_FILE);
        let bytes = fs::read(&path).map_err(io_err(&path, "reading"))?;
        let manifest =
            ModelManifest::from_json(&bytes).map_err(|e| corrupt(&path, e.to_string()))?;
        Ok(StoredModel { dir, manifest })
    }

    fn load(&self, model: &StoredModel) -> Result<Box<dyn Detector>> {
        (self.loader)(&model.manifest_path()).map_err(|reason| ModelStoreError::Load {
            version: model.manifest.version.clone(),
            reason,
        })
    }

    /// Writes a complete slot under a staging name, everything fsynced.
    fn stage(
        &self,
        manifest: &ModelManifest,
        json: &[u8],
        onnx: &[u8],
        signer: &str,
    ) -> Result<PathBuf> {
        let staged =
            self.dir.join(format!("staging-{}-{}", std::process::id(), rand::random::<u32>()));
        fs::create_dir(&staged).map_err(io_err(&staged, "creating the folder"))?;
        let written = write_synced(&staged.join(&manifest.file), onnx)
            .and_then(|()| write_synced(&staged.join(MANIFEST_FILE), json))
            .and_then(|()| write_synced(&staged.join(SIGNER_FILE), signer.as_bytes()))
            .and_then(|()| sync_dir(&staged));
        if let Err(e) = written {
            remove_dir(&staged);
            return Err(e);
        }
        Ok(staged)
    }

    /// Loads the staged model and runs the self-test against the active model.
    fn try_staged(
        &self,
        staged: &Path,
        manifest: &ModelManifest,
        active: Option<&StoredModel>,
        reference: &[RgbImage],
    ) -> Result<Box<dyn Detector>> {
        let staged_model = StoredModel { dir: staged.to_path_buf(), manifest: manifest.clone() };
        let mut candidate = self.load(&staged_model)?;
        let mut current = active.map(|a| self.load(a)).transpose()?;
        let frames = if reference.is_empty() { synthetic_frames() } else { reference.to_vec() };
        self_test(candidate.as_mut(), current.as_deref_mut(), &frames, self.self_test).map_err(
            |reason| ModelStoreError::SelfTest { version: manifest.version.clone(), reason },
        )?;
        Ok(candidate)
    }

    /// Renames a staged slot into `slots/`. A slot of the same name (the same model
    /// pushed again after a rollback removed it... or left by a killed swap) is replaced.
    fn commit_slot(&self, staged: &Path, name: &str) -> Result<()> {
        let slots = self.dir.join("slots");
        let target = slots.join(name);
        if target.exists() && !self.is_referenced(name) {
            fs::remove_dir_all(&target).map_err(io_err(&target, "removing a stale slot"))?;
        }
        if target.exists() {
            // The very same model is already a live slot (same version number and hash).
            remove_dir(staged);
            return Ok(());
        }
        fs::rename(staged, &target).map_err(io_err(&target, "renaming the staged model"))?;
        sync_dir(&slots)
    }

    fn is_referenced(&self, name: &str) -> bool {
        self.state.active.as_deref() == Some(name) || self.state.previous.as_deref() == Some(name)
    }

    fn write_state(&mut self, state: State) -> Result<()> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(&state).map_err(|e| corrupt(&path, e.to_string()))?;
        write_synced(&tmp, &json)?;
        fs::rename(&tmp, &path).map_err(io_err(&path, "replacing"))?;
        sync_dir(&self.dir)?;
        self.state = state;
        Ok(())
    }

    /// Removes staging folders and slots the state does not name.
    fn remove_leftovers(&self) -> Result<()> {
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir, "listing"))?.flatten() {
            if entry.file_name().to_string_lossy().starts_with("staging-") {
                remove_dir(&entry.path());
            }
        }
        let slots = self.dir.join("slots");
        for entry in fs::read_dir(&slots).map_err(io_err(&slots, "listing"))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !self.is_referenced(&name) {
                tracing::debug!(slot = %name, "removing an unused model slot");
                remove_dir(&entry.path());
            }
        }
        Ok(())
    }
}

/// Runs `candidate` (and `current`, if any) on `frames`: every output must be finite and
/// in `[0, 1]`, and the face decisions must agree on at least `min_agreement` of them.
pub fn self_test<'a>(
    candidate: &mut dyn Detector,
    mut current: Option<&mut (dyn Detector + 'a)>,
    frames: &[RgbImage],
    config: SelfTestConfig,
) -> Result<(), String> {
    let mut agree = 0usize;
    for (i, frame) in frames.iter().enumerate() {
        let new = candidate.detect(frame).map_err(|e| format!("reference frame {i}: {e}"))?;
        check_output(&new).map_err(|e| format!("reference frame {i}: {e}"))?;
        let Some(current) = current.as_deref_mut() else { continue };
        match current.detect(frame) {
            Ok(old) if old.is_face(current.threshold()) == new.is_face(candidate.threshold()) => {
                agree += 1;
            }
            Ok(_) => {}
            // The active model failing on a frame is not the new model's fault.
            Err(_) => agree += 1,
        }
    }
    if current.is_none() || frames.is_empty() {
        return Ok(());
    }
    let share = agree as f32 / frames.len() as f32;
    if share < config.min_agreement {
        return Err(format!(
            "agrees with the active model on {agree} of {} reference frames (needs {:.0}%)",
            frames.len(),
            config.min_agreement * 100.0
        ));
    }
    Ok(())
}

fn check_output(d: &shared::Detection) -> Result<(), String> {
    let b = d.bbox;
    let values = [d.score, b.x1, b.y1, b.x2, b.y2];
    match values.iter().find(|v| !v.is_finite() || !(0.0..=1.0).contains(*v)) {
        Some(v) => Err(format!("output {v} is not finite or not in [0, 1]")),
        None => Ok(()),
    }
}

/// Plain frames for a device that has no reference frames yet (no captures): they cannot
/// show that two models agree on faces, but they do catch NaN and out-of-range outputs.
fn synthetic_frames() -> Vec<RgbImage> {
    (0..4u8)
        .map(|k| {
            RgbImage::from_fn(160, 120, |x, y| {
                let v = (x as u8).wrapping_mul(k + 1).wrapping_add(y as u8);
                image::Rgb([v, v.wrapping_add(60 * k), 255 - v])
            })
        })
        .collect()
}

fn slot_name(m: &ModelManifest) -> String {
    format!("v{}-{}", m.version_number, m.sha256.get(..12).unwrap_or(&m.sha256))
}

fn check_file_name(name: &str) -> Result<()> {
    let plain = !name.is_empty()
        && name.ends_with(".onnx")
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if plain && name != MANIFEST_FILE {
        Ok(())
    } else {
        Err(ModelStoreError::FileName(name.to_string()))
    }
}

fn read_state(path: &Path) -> Result<State> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| corrupt(path, e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(io_err(path, "reading")(e)),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).map_err(io_err(path, "creating"))?;
    file.write_all(bytes).map_err(io_err(path, "writing"))?;
    file.sync_all().map_err(io_err(path, "syncing"))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir, "syncing the folder"))
}

fn remove_dir(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove a model folder");
    }
}

fn io_err(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> ModelStoreError {
    let path = path.to_path_buf();
    move |source| ModelStoreError::Io { path, action, source }
}

fn corrupt(path: &Path, reason: String) -> ModelStoreError {
    ModelStoreError::Corrupt { path: path.to_path_buf(), reason }
}

#[cfg(test)]
mod tests;
