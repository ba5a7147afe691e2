//! Sampling previews: every few steps KSampler turns its current denoised
//! estimate into a rough picture with a fixed linear map from the 4 latent
//! channels to RGB (no VAE), and `sdgraph run --preview DIR` writes it to
//! `DIR/preview_<node>.png`, replaced atomically, so an image viewer can watch
//! the picture form.
//!
//! The map is ComfyUI's `Latent2RGBPreviewer` with SD 1.5's
//! `latent_rgb_factors` (`comfy/latent_formats.py`, comfyanonymous/ComfyUI @
//! 040a3243468ecefd1f2802592d90458f1ce4d65f; `latent_preview.py` @
//! 0219e5be6ea6917c4710950bc37a7b1135085307): the first latent of the batch,
//! `rgb = x0 · factors`, then `round((clamp(rgb, -1, 1) + 1) * 127.5)`.
//! ComfyUI shows it at latent size; here it is enlarged 8x (nearest) to the
//! picture's size.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use graph::exec::Progress;

use models::sampling::samplers::StepInfo;

/// SD 1.5's latent channel -> (R, G, B) weights, ComfyUI's `SD15.latent_rgb_factors`.
pub const SD15_LATENT_RGB_FACTORS: [[f32; 3]; 4] =
    [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]];

/// Latent to picture size: the SD VAE's downsampling.
pub const PREVIEW_SCALE: usize = 8;

/// The first latent of a `[B, 4, h, w]` batch as 8-bit RGB, enlarged
/// [`PREVIEW_SCALE`] times: `(width, height, pixels)`. `None` when the
/// latent does not have SD's 4 channels or its data does not fit its shape.
pub fn latent_to_rgb(samples: &[f32], shape: [usize; 4]) -> Option<(u32, u32, Vec<u8>)> {
    let [b, c, h, w] = shape;
    if c != 4 || b == 0 || h == 0 || w == 0 || samples.len() != b.checked_mul(c * h * w)? {
        return None;
    }
    let (ow, oh) = (w.checked_mul(PREVIEW_SCALE)?, h.checked_mul(PREVIEW_SCALE)?);
    u32::try_from(ow).ok()?;
    u32::try_from(oh).ok()?;
    // One RGB pixel per latent position.
    let plane = h * w;
    let mut small = vec![[0u8; 3]; plane];
    for (i, px) in small.iter_mut().enumerate() {
        for (ch, out) in px.iter_mut().enumerate() {
            let mut v = 0.0f32;
            for (k, row) in SD15_LATENT_RGB_FACTORS.iter().enumerate() {
                v += samples[k * plane + i] * row[ch];
            }
            // NaN (a diverged sampler) shows as black rather than panicking.
            let v = if v.is_nan() { -1.0 } else { v.clamp(-1.0, 1.0) };
            // torch.round rounds half to even.
            *out = ((v + 1.0) * 127.5).round_ties_even() as u8;
        }
    }
    let mut rgb = Vec::with_capacity(ow * oh * 3);
    for y in 0..oh {
        let row = &small[(y / PREVIEW_SCALE) * w..][..w];
        for px in row {
            for _ in 0..PREVIEW_SCALE {
                rgb.extend_from_slice(px);
            }
        }
    }
    Some((ow as u32, oh as u32, rgb))
}

/// KSampler's per-step hook: hands a preview of the step's denoised estimate
/// to `progress` when it asks for one at this step.
pub fn sampler_step(progress: &dyn Progress, node_id: &str, info: &StepInfo<'_>, shape: [usize; 4]) {
    let (done, total) = (info.step as u64 + 1, info.total as u64);
    if !progress.wants_preview(node_id, done, total) {
        return;
    }
    if let Some((w, h, rgb)) = latent_to_rgb(info.denoised, shape) {
        progress.preview(node_id, w, h, &rgb);
    }
}

/// `DIR/preview_<node>.png`; characters other than ASCII letters, digits,
/// `-`, `_` and `.` in the node id become `_`, so the name stays in DIR.
pub fn preview_path(dir: &Path, node_id: &str) -> PathBuf {
    let safe: String = node_id
        .chars()
        .take(100)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect();
    dir.join(format!("preview_{safe}.png"))
}

/// Writes a preview PNG, replacing the previous one atomically (a temporary
/// file renamed over it): a viewer never sees half a picture, and an
/// interrupted write leaves no stray file.
pub fn write_preview(dir: &Path, node_id: &str, width: u32, height: u32, rgb: &[u8]) -> Result<PathBuf, String> {
    let path = preview_path(dir, node_id);
    let mut png = Vec::new();
    let mut enc = png::Encoder::new(Cursor::new(&mut png), width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    // Previews are rewritten every few steps: speed over size.
    enc.set_compression(png::Compression::Fast);
    let encoded = enc.write_header().and_then(|mut w| {
        w.write_image_data(rgb)?;
        w.finish()
    });
    encoded.map_err(|e| format!("cannot encode preview {}: {e}", path.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("preview.png");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::write(&tmp, &png).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cannot write preview {}: {e}", path.display()));
    }
    Ok(path)
}

/// A [`Progress`] that passes everything on to `inner` and writes previews
/// to a folder every `every` steps (and at the last step).
pub struct PreviewWriter<'a> {
    inner: &'a dyn Progress,
    dir: PathBuf,
    every: u64,
    /// The first failure to write, reported once by the caller after the run.
    error: Mutex<Option<String>>,
}

impl<'a> PreviewWriter<'a> {
    /// Creates `dir` if needed. `every` below 1 counts as 1.
    pub fn new(inner: &'a dyn Progress, dir: &Path, every: u64) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create preview folder {}: {e}", dir.display()))?;
        Ok(Self { inner, dir: dir.to_path_buf(), every: every.max(1), error: Mutex::new(None) })
    }

    /// The first preview that could not be written, if any.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Progress for PreviewWriter<'_> {
    fn node_start(&self, id: &str, kind: &str) {
        self.inner.node_start(id, kind)
    }
    fn node_end(&self, id: &str, status: &str, seconds: f64) {
        self.inner.node_end(id, status, seconds)
    }
    fn step(&self, id: &str, done: u64, total: u64, what: &str) {
        self.inner.step(id, done, total, what)
    }
    fn message(&self, text: &str) {
        self.inner.message(text)
    }
    fn wants_preview(&self, _id: &str, done: u64, total: u64) -> bool {
        done.is_multiple_of(self.every) || done == total
    }
    fn preview(&self, id: &str, width: u32, height: u32, rgb: &[u8]) {
        if let Err(e) = write_preview(&self.dir, id, width, height, rgb) {
            self.error.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_matches_comfyui_factors_and_rounding() {
        // One latent position, batch of 2 (only the first is shown), 1x2 latent.
        let shape = [2, 4, 1, 2];
        let mut samples = vec![0.0f32; 16];
        // Position 0: channel k = 1 -> rgb = factors[k]; position 1: large values clamp.
        samples[0] = 1.0; // c0, x0
        samples[1] = 10.0; // c0, x1
        samples[2 * 2 + 1] = -10.0; // c2, x1
        samples[8..].fill(5.0); // second latent: ignored
        let (w, h, rgb) = latent_to_rgb(&samples, shape).unwrap();
        assert_eq!((w, h), (16, 8));
        assert_eq!(rgb.len(), 16 * 8 * 3);
        let want0: Vec<u8> = SD15_LATENT_RGB_FACTORS[0]
            .iter()
            .map(|f| ((f.clamp(-1.0, 1.0) + 1.0) * 127.5).round_ties_even() as u8)
            .collect();
        assert_eq!(want0, [172, 157, 169]);
        // x1: 10 * f0 - 10 * f2 = [6.34, 0.535, 0.506] -> R clamps to 255.
        let want1 = [255u8, ((0.535f32 + 1.0) * 127.5).round() as u8, ((0.506f32 + 1.0) * 127.5).round() as u8];
        for y in 0..8 {
            for x in 0..16 {
                let px = &rgb[(y * 16 + x) * 3..][..3];
                assert_eq!(px, if x < 8 { &want0[..] } else { &want1[..] }, "({x}, {y})");
            }
        }
    }

    #[test]
    fn wrong_shapes_give_no_preview() {
        assert!(latent_to_rgb(&[0.0; 3 * 4], [1, 3, 2, 2]).is_none());
        assert!(latent_to_rgb(&[0.0; 15], [1, 4, 2, 2]).is_none());
        assert!(latent_to_rgb(&[], [0, 4, 2, 2]).is_none());
        assert!(latent_to_rgb(&[f32::NAN; 16], [1, 4, 2, 2]).is_some());
    }

    #[test]
    fn preview_names_stay_inside_the_folder() {
        let dir = Path::new("/p");
        assert_eq!(preview_path(dir, "sample"), Path::new("/p/preview_sample.png"));
        assert_eq!(preview_path(dir, "../x/y"), Path::new("/p/preview_.._x_y.png"));
        assert_eq!(preview_path(dir, "é"), Path::new("/p/preview__.png"));
    }

    #[test]
    fn writer_previews_every_n_steps_and_the_last() {
        let dir = std::env::temp_dir().join(format!("sdgraph-preview-unit-{}", std::process::id()));
        let inner = graph::exec::NoProgress;
        let w = PreviewWriter::new(&inner, &dir, 5).unwrap();
        let asked: Vec<u64> = (1..=12).filter(|&d| w.wants_preview("k", d, 12)).collect();
        assert_eq!(asked, [5, 10, 12]);
        w.preview("k", 2, 1, &[1, 2, 3, 4, 5, 6]);
        w.preview("k", 1, 1, &[7, 8, 9]);
        assert_eq!(w.error(), None);
        let img = image::open(dir.join("preview_k.png")).unwrap().to_rgb8();
        assert_eq!(img.as_raw(), &[7, 8, 9], "the second preview replaced the first");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, ["preview_k.png"], "no temporary files left");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
