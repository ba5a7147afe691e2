//! Image nodes, with ComfyUI's kind, input and param names: LoadImage,
//! SaveImage, PreviewImage, ImageScale, ImageScaleBy, ImageScaleToTotalPixels,
//! ImageCrop, ImageBlend, ImageInvert, ImagePadForOutpaint, ImageBatch, EmptyImage
//! (the last three as `nodes.py` @ 02217e36a45bcbe2dd8fa24187aa5e053d9aea2e, through
//! [`models::image_ops::canvas`]).

use std::fs;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use graph::node::err;
use graph::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use graph::registry::DuplicateKind;
use graph::{Image, Mask, PortType, Registry, Value};

use crate::png_meta;
use models::image_ops::{self, BlendMode, Method, canvas};

/// Largest width or height a node will make (ComfyUI's MAX_RESOLUTION).
pub const MAX_RESOLUTION: i64 = 16384;
/// Most pixels in one decoded or produced image batch: keeps a hostile
/// file or param from asking for tens of GiB.
pub const MAX_PIXELS: usize = 1 << 28;

pub fn register(reg: &mut Registry, settings: crate::Settings) -> Result<(), DuplicateKind> {
    reg.register(Arc::new(LoadImage::new()))?;
    reg.register(Arc::new(SaveImage::new(settings.absolute_paths)))?;
    reg.register(Arc::new(PreviewImage::new(settings.absolute_paths)))?;
    reg.register(Arc::new(ImageScale::new()))?;
    reg.register(Arc::new(ImageScaleBy::new()))?;
    reg.register(Arc::new(ImageScaleToTotalPixels::new()))?;
    reg.register(Arc::new(ImageCrop::new()))?;
    reg.register(Arc::new(ImageBlend::new()))?;
    reg.register(Arc::new(ImageInvert::new()))?;
    reg.register(Arc::new(ImagePadForOutpaint::new()))?;
    reg.register(Arc::new(ImageBatch::new()))?;
    reg.register(Arc::new(EmptyImage::new()))?;
    Ok(())
}

fn check_size(batch: usize, width: usize, height: usize) -> Result<(), NodeError> {
    let px = batch.saturating_mul(width).saturating_mul(height);
    if px > MAX_PIXELS {
        return Err(err(format!("{batch}x{width}x{height} is {px} pixels, more than the limit of {MAX_PIXELS}")));
    }
    Ok(())
}

// ---------------------------------------------------------------- LoadImage

pub struct LoadImage(NodeSchema);

graph::node_fields! {
    struct LoadImageFields {
        image: String = path("Image file, relative to the graph file's folder."),
    }
}

impl LoadImage {
    fn new() -> Self {
        Self(
            NodeSchema::new(
                "LoadImage",
                "image",
                "Loads a PNG, JPEG or WebP file; its alpha channel becomes the mask.",
            )
            .fields(LoadImageFields::declare)
            .output("image", PortType::Image, "The picture as RGB.")
            .output(
                "mask",
                PortType::Mask,
                "1 - alpha (transparent = masked, as ComfyUI); all 0 without alpha.",
            ),
        )
    }
}

/// Decodes an image file into an RGB batch of one and its mask.
pub fn load_image_file(path: &Path) -> Result<(Image, Mask), String> {
    let mut reader = image::ImageReader::open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?
        .with_guessed_format()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_RESOLUTION as u32);
    limits.max_image_height = Some(MAX_RESOLUTION as u32);
    limits.max_alloc = Some(2 << 30);
    reader.limits(limits);
    use image::ImageDecoder;
    let mut decoder = reader.into_decoder().map_err(|e| format!("cannot decode {}: {e}", path.display()))?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img =
        image::DynamicImage::from_decoder(decoder).map_err(|e| format!("cannot decode {}: {e}", path.display()))?;
    img.apply_orientation(orientation);
    let (w, h) = (img.width() as usize, img.height() as usize);
    check_size(1, w, h).map_err(|e| e.message)?;
    let has_alpha = img.color().has_alpha();
    let rgba = img.into_rgba32f();
    let mut data = Vec::with_capacity(w * h * 3);
    let mut mask = Mask::zeros(1, h, w);
    for (i, p) in rgba.pixels().enumerate() {
        data.extend_from_slice(&p.0[..3]);
        if has_alpha {
            mask.data[i] = 1.0 - p.0[3];
        }
    }
    let image = Image::from_data(1, h, w, 3, data).ok_or("decoded image has an inconsistent size")?;
    Ok((image, mask))
}

impl NodeKind for LoadImage {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = LoadImageFields::read(inputs)?;
        let path = ctx.resolve(f.image.as_str());
        let (image, mask) = load_image_file(&path).map_err(err)?;
        Ok(vec![Value::Image(Arc::new(image)), Value::Mask(Arc::new(mask))])
    }

    /// Size and modification time, so editing the picture re-runs the node.
    fn fingerprint(&self, ctx: &RunContext<'_>, inputs: &NodeInputs) -> Option<String> {
        let path = ctx.resolve(&LoadImageFields::read(inputs).ok()?.image);
        let meta = fs::metadata(&path).ok()?;
        Some(format!("{}:{}:{:?}", path.display(), meta.len(), meta.modified().ok()))
    }
}

// ---------------------------------------------------------------- SaveImage

pub struct SaveImage {
    schema: NodeSchema,
    /// Record absolute paths in the PNG (see `Settings::absolute_paths`).
    absolute_paths: bool,
}

graph::node_fields! {
    struct SaveImageFields {
        images: Arc<Image> = input(PortType::Image, "The images to save."),
        filename_prefix: String = string(Some("sdgraph"), "File name prefix; may name a subfolder (\"pets/cat\")."),
    }
}

impl SaveImage {
    fn new(absolute_paths: bool) -> Self {
        let schema = NodeSchema::new(
            "SaveImage",
            "image",
            "Saves each image as PNG in the output folder (never overwriting), with the graph embedded.",
        )
        .fields(SaveImageFields::declare)
        .sink();
        Self { schema, absolute_paths }
    }
}

/// Checks a prefix stays inside the output folder.
fn check_prefix(prefix: &str) -> Result<(), NodeError> {
    let p = Path::new(prefix);
    let bad = prefix.is_empty()
        || p.is_absolute()
        || p.components().any(|c| !matches!(c, Component::Normal(_)))
        || prefix.ends_with('/')
        || prefix.chars().any(|c| c.is_control() || c == '\\');
    if bad {
        return Err(err(format!(
            "filename_prefix {prefix:?} must be a relative name inside the output folder (no '..', no absolute path)"
        )));
    }
    Ok(())
}

/// The next free number for `prefix` in `dir`: one past the highest
/// `prefix_NNNNN.png` already there, as ComfyUI counts.
fn next_counter(dir: &Path, stem: &str) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else { return 1 };
    let mut max = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(stem).and_then(|r| r.strip_prefix('_')) else { continue };
        let Some(num) = rest.strip_suffix(".png") else { continue };
        if let Ok(n) = num.parse::<u64>()
            && num.len() >= 5
        {
            max = max.max(n);
        }
    }
    max + 1
}

/// Writes `bytes` to a new file `stem_NNNNN.png` in `dir`, never replacing an
/// existing file: the data goes to a temporary file first, then is linked
/// into place, so an interrupted save leaves no half-written picture.
pub fn write_numbered(dir: &Path, stem: &str, bytes: &[u8]) -> Result<PathBuf, String> {
    write_numbered_with(dir, stem, bytes, |from, to| fs::hard_link(from, to))
}

/// [`write_numbered`] with the hard-link step given, so tests can play a
/// filesystem without hard links (FAT, exFAT, some network shares). Where
/// linking fails for any reason but an existing name, the name is claimed
/// with `create_new` (an empty file no one else can take) and the finished
/// temporary file renamed over it: still never an overwrite of someone
/// else's file, and never a half-written picture under the final name.
fn write_numbered_with(
    dir: &Path,
    stem: &str,
    bytes: &[u8],
    link: impl Fn(&Path, &Path) -> std::io::Result<()>,
) -> Result<PathBuf, String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create output folder {}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".{stem}.{}.tmp", std::process::id()));
    let write_tmp = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write_tmp() {
        let _ = fs::remove_file(&tmp);
        return Err(format!("cannot write {}: {e}", tmp.display()));
    }
    let mut n = next_counter(dir, stem);
    let mut links = true;
    let result = loop {
        let path = dir.join(format!("{stem}_{n:05}.png"));
        let placed = if links { link(&tmp, &path) } else { claim_and_rename(&tmp, &path) };
        match placed {
            Ok(()) => break Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(_) if links => links = false,
            Err(e) => break Err(format!("cannot create {}: {e}", path.display())),
        }
    };
    let _ = fs::remove_file(&tmp);
    result
}

/// Takes `path` with `create_new` (fails if it exists), then moves `tmp` onto it.
fn claim_and_rename(tmp: &Path, path: &Path) -> std::io::Result<()> {
    fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    fs::rename(tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(path);
    })
}

/// One image of a batch as 8-bit pixels, quantised as ComfyUI's SaveImage does
/// (`np.clip(255. * i, 0, 255).astype(np.uint8)`): scaled in f32, clipped, truncated
/// (not rounded), NaN to 0.
pub fn to_u8(img: &Image, b: usize) -> Vec<u8> {
    img.item(b).iter().map(|&v| (255.0 * v).clamp(0.0, 255.0) as u8).collect()
}

/// `{"path": "sha256"}` for every model file recorded upstream, each path
/// relative to the graph's folder unless `absolute`. A file that cannot be
/// hashed (deleted mid-run) is left out with a warning rather than losing
/// the picture.
fn model_digests_json(ctx: &RunContext<'_>, absolute: bool) -> String {
    let mut map = serde_json::Map::new();
    for f in ctx.upstream_digests() {
        match (f.sha256, f.error) {
            (Some(d), _) => {
                map.insert(png_meta::recorded_path(&f.path, ctx.base_dir, absolute), d.into());
            }
            (None, e) if !ctx.cancelled() => {
                ctx.progress.message(&format!(
                    "warning: no digest recorded for {}: {}",
                    f.path.display(),
                    e.unwrap_or_default()
                ));
            }
            (None, _) => {}
        }
    }
    serde_json::Value::Object(map).to_string()
}

impl NodeKind for SaveImage {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = SaveImageFields::read(inputs)?;
        let prefix = f.filename_prefix.as_str();
        check_prefix(prefix)?;
        let full = ctx.out_dir.join(prefix);
        let dir = full.parent().unwrap_or(ctx.out_dir).to_path_buf();
        let stem = full.file_name().and_then(|s| s.to_str()).unwrap_or("sdgraph").to_string();
        let written = save_pngs(ctx, &f.images, &dir, &stem, self.absolute_paths)?;
        ctx.files_written.extend(written);
        Ok(vec![])
    }
}

/// Saves each image of the batch as `dir/stem_NNNNN.png` (never overwriting), with the
/// graph and the model digests embedded; returns the paths, in batch order. Stops at
/// Ctrl-C, keeping what was written.
fn save_pngs(
    ctx: &RunContext<'_>,
    images: &Image,
    dir: &Path,
    stem: &str,
    absolute_paths: bool,
) -> Result<Vec<PathBuf>, NodeError> {
    // The graph's folder as seen from the picture's, the models from the graph's (see png_meta).
    let base = png_meta::recorded_path(ctx.base_dir, dir, absolute_paths);
    let models = model_digests_json(ctx, absolute_paths);
    let texts = [
        (png_meta::GRAPH_KEY, ctx.graph_text),
        (png_meta::BASE_DIR_KEY, base.as_str()),
        (png_meta::MODELS_KEY, models.as_str()),
    ];
    let mut written = Vec::with_capacity(images.batch);
    for b in 0..images.batch {
        if ctx.cancelled() {
            return Err(err("cancelled"));
        }
        let px = to_u8(images, b);
        let png = png_meta::encode_png(images.width as u32, images.height as u32, images.channels, &px, &texts)
            .map_err(err)?;
        written.push(write_numbered(dir, stem, &png).map_err(err)?);
    }
    Ok(written)
}

// ---------------------------------------------------------------- PreviewImage

/// The folder PreviewImage writes to: `sdgraph-previews` in the system's temporary
/// folder (`$TMPDIR`, else `/tmp`; `%TEMP%` on Windows), as ComfyUI's previews go to
/// its `temp/` folder rather than `output/`.
pub fn previews_dir() -> PathBuf {
    std::env::temp_dir().join("sdgraph-previews")
}

/// PreviewImage: SaveImage for looking at, as ComfyUI's: the pictures go to
/// [`previews_dir`] (never the output folder), as `sdgraph_temp_<node>_NNNNN.png`
/// (never overwriting, the graph embedded), and the run report lists them under
/// `previews`, apart from the outputs.
pub struct PreviewImage {
    schema: NodeSchema,
    absolute_paths: bool,
}

graph::node_fields! {
    struct PreviewImageFields {
        images: Arc<Image> = input(PortType::Image, "The images to preview."),
    }
}

impl PreviewImage {
    fn new(absolute_paths: bool) -> Self {
        let schema = NodeSchema::new(
            "PreviewImage",
            "image",
            "Writes each image as PNG to the previews folder (sdgraph-previews in the system's temp folder), \
             not the output folder; `--json` lists them under \"previews\".",
        )
        .fields(PreviewImageFields::declare)
        .sink();
        Self { schema, absolute_paths }
    }
}

/// `sdgraph_temp_<node id>`, with anything but ASCII letters, digits, `-` and `_` as `_`.
fn preview_stem(node_id: &str) -> String {
    let id: String =
        node_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    format!("sdgraph_temp_{id}")
}

impl NodeKind for PreviewImage {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = PreviewImageFields::read(inputs)?;
        let dir = previews_dir();
        let written = save_pngs(ctx, &f.images, &dir, &preview_stem(ctx.node_id), self.absolute_paths)?;
        ctx.previews_written.extend(written);
        Ok(vec![])
    }
}

// ---------------------------------------------------------------- ImageScale

fn method_param(name: &str) -> Result<Method, NodeError> {
    Method::from_name(name).ok_or_else(|| err(format!("unknown upscale_method {name:?}")))
}

pub struct ImageScale(NodeSchema);

graph::node_fields! {
    struct ImageScaleFields {
        image: Arc<Image> = input(PortType::Image, "The images to resize."),
        upscale_method: String = choice(&Method::NAMES, "nearest-exact", "Resampling filter."),
        width: usize = int(0, MAX_RESOLUTION, 512, "Target width; 0 keeps the aspect ratio from height."),
        height: usize = int(0, MAX_RESOLUTION, 512, "Target height; 0 keeps the aspect ratio from width."),
        crop: String = choice(&["disabled", "center"], "disabled", "Center-crop to the target aspect first."),
    }
}

impl ImageScale {
    fn new() -> Self {
        Self(
            NodeSchema::new("ImageScale", "image", "Resizes images to a width and height.")
                .fields(ImageScaleFields::declare)
                .output("image", PortType::Image, "The resized images."),
        )
    }
}

/// Resizes as ComfyUI's ImageScale: a 0 side follows the aspect ratio.
pub fn scale_image(img: &Image, width: usize, height: usize, method: Method, center: bool) -> Result<Image, NodeError> {
    let (w, h) = match (width, height) {
        (0, 0) => return Ok(img.clone()),
        (0, h) => (((img.width * h) as f64 / img.height as f64).round().max(1.0) as usize, h),
        (w, 0) => (w, ((img.height * w) as f64 / img.width as f64).round().max(1.0) as usize),
        (w, h) => (w, h),
    };
    check_size(img.batch, w, h)?;
    let src = if center { image_ops::center_crop_to_aspect(img, w, h) } else { img.clone() };
    image_ops::resize(&src, w, h, method).map_err(err)
}

impl NodeKind for ImageScale {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = ImageScaleFields::read(inputs)?;
        let img = f.image;
        let center = f.crop == "center";
        let out = scale_image(&img, f.width, f.height, method_param(&f.upscale_method)?, center)?;
        Ok(vec![Value::Image(Arc::new(out))])
    }
}

pub struct ImageScaleBy(NodeSchema);

graph::node_fields! {
    struct ImageScaleByFields {
        image: Arc<Image> = input(PortType::Image, "The images to resize."),
        upscale_method: String = choice(&Method::NAMES, "nearest-exact", "Resampling filter."),
        scale_by: f64 = float(0.01, 8.0, 1.0, "Factor applied to width and height."),
    }
}

impl ImageScaleBy {
    fn new() -> Self {
        Self(
            NodeSchema::new("ImageScaleBy", "image", "Resizes images by a factor.")
                .fields(ImageScaleByFields::declare)
                .output("image", PortType::Image, "The resized images."),
        )
    }
}

impl NodeKind for ImageScaleBy {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = ImageScaleByFields::read(inputs)?;
        let img = f.image;
        let s = f.scale_by;
        let w = ((img.width as f64 * s).round() as usize).max(1);
        let h = ((img.height as f64 * s).round() as usize).max(1);
        let out = scale_image(&img, w, h, method_param(&f.upscale_method)?, false)?;
        Ok(vec![Value::Image(Arc::new(out))])
    }
}

// ---------------------------------------------------------------- ImageScaleToTotalPixels

pub struct ImageScaleToTotalPixels(NodeSchema);

graph::node_fields! {
    struct ImageScaleToTotalPixelsFields {
        image: Arc<Image> = input(PortType::Image, "The images to resize."),
        upscale_method: String = choice(&Method::NAMES, "nearest-exact", "Resampling filter."),
        megapixels: f64 = float(0.01, 16.0, 1.0, "Target size in megapixels of 1024 x 1024 pixels; the aspect ratio is kept."),
        resolution_steps: usize = int(1, 256, 1, "Each side is rounded to a multiple of this."),
    }
}

impl ImageScaleToTotalPixels {
    fn new() -> Self {
        Self(
            NodeSchema::new(
                "ImageScaleToTotalPixels",
                "image/upscaling",
                "Resizes images to about a number of megapixels, keeping the aspect ratio.",
            )
            .fields(ImageScaleToTotalPixelsFields::declare)
            .output("image", PortType::Image, "The resized images."),
        )
    }
}

/// The size ImageScaleToTotalPixels gives a `width` x `height` picture, as ComfyUI computes
/// it: `scale = sqrt(megapixels * 1024 * 1024 / (width * height))`, each side
/// `round(side * scale / steps) * steps` with Python's round (halves to even).
pub fn total_pixels_size(width: usize, height: usize, megapixels: f64, steps: usize) -> (usize, usize) {
    let total = megapixels * 1024.0 * 1024.0;
    let scale = (total / (width * height) as f64).sqrt();
    let side = |n: usize| (n as f64 * scale / steps as f64).round_ties_even().max(0.0) as usize * steps;
    (side(width), side(height))
}

impl NodeKind for ImageScaleToTotalPixels {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = ImageScaleToTotalPixelsFields::read(inputs)?;
        let img = f.image;
        let method = method_param(&f.upscale_method)?;
        if img.width == 0 || img.height == 0 {
            return Err(err(format!("input \"image\" is {}x{}: nothing to scale", img.width, img.height)));
        }
        let (w, h) = total_pixels_size(img.width, img.height, f.megapixels, f.resolution_steps);
        if w == 0 || h == 0 {
            return Err(err(format!(
                "{}x{} at {} megapixels in steps of {} would be {w}x{h}: raise megapixels or lower resolution_steps",
                img.width, img.height, f.megapixels, f.resolution_steps
            )));
        }
        let out = scale_image(&img, w, h, method, false)?;
        Ok(vec![Value::Image(Arc::new(out))])
    }
}

// ---------------------------------------------------------------- ImageCrop

pub struct ImageCrop(NodeSchema);

graph::node_fields! {
    struct ImageCropFields {
        image: Arc<Image> = input(PortType::Image, "The images to crop."),
        width: usize = int(1, MAX_RESOLUTION, 512, "Width of the rectangle."),
        height: usize = int(1, MAX_RESOLUTION, 512, "Height of the rectangle."),
        x: usize = int(0, MAX_RESOLUTION, 0, "Left edge."),
        y: usize = int(0, MAX_RESOLUTION, 0, "Top edge."),
    }
}

impl ImageCrop {
    fn new() -> Self {
        Self(
            NodeSchema::new("ImageCrop", "image", "Cuts a rectangle out of images (clamped to the image).")
                .fields(ImageCropFields::declare)
                .output("image", PortType::Image, "The cropped images."),
        )
    }
}

impl NodeKind for ImageCrop {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = ImageCropFields::read(inputs)?;
        let img = f.image;
        let out = image_ops::crop(&img, f.width, f.height, f.x, f.y).map_err(err)?;
        Ok(vec![Value::Image(Arc::new(out))])
    }
}

// ---------------------------------------------------------------- ImageBlend

pub struct ImageBlend(NodeSchema);

graph::node_fields! {
    struct ImageBlendFields {
        image1: Arc<Image> = input(PortType::Image, "The base images."),
        image2: Arc<Image> = input(PortType::Image, "The images blended in (resized to image1 if needed)."),
        blend_factor: f64 = float(0.0, 1.0, 0.5, "0 keeps image1, 1 gives the full blend."),
        blend_mode: String = choice(&BlendMode::NAMES, "normal", "How the two are combined."),
    }
}

impl ImageBlend {
    fn new() -> Self {
        Self(
            NodeSchema::new("ImageBlend", "image", "Blends image2 over image1 with a blend mode and factor.")
                .fields(ImageBlendFields::declare)
                .output("image", PortType::Image, "The blended images."),
        )
    }
}

impl NodeKind for ImageBlend {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = ImageBlendFields::read(inputs)?;
        let a = f.image1;
        let b = f.image2;
        let mode_name = f.blend_mode.as_str();
        let mode = BlendMode::from_name(mode_name).ok_or_else(|| err(format!("unknown blend_mode {mode_name:?}")))?;
        let out = image_ops::blend(&a, &b, f.blend_factor as f32, mode).map_err(err)?;
        Ok(vec![Value::Image(Arc::new(out))])
    }
}

// ---------------------------------------------------------------- ImageInvert

pub struct ImageInvert(NodeSchema);

graph::node_fields! {
    struct ImageInvertFields {
        image: Arc<Image> = input(PortType::Image, "The images to invert."),
    }
}

impl ImageInvert {
    fn new() -> Self {
        Self(
            NodeSchema::new("ImageInvert", "image", "Inverts images (1 - value).")
                .fields(ImageInvertFields::declare)
                .output("image", PortType::Image, "The inverted images."),
        )
    }
}

impl NodeKind for ImageInvert {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = ImageInvertFields::read(inputs)?;
        let img = f.image;
        Ok(vec![Value::Image(Arc::new(image_ops::invert(&img)))])
    }
}

// ---------------------------------------------------------------- ImagePadForOutpaint

pub struct ImagePadForOutpaint(NodeSchema);

graph::node_fields! {
    struct ImagePadForOutpaintFields {
        image: Arc<Image> = input(PortType::Image, "The pictures to extend."),
        left: usize = int(0, MAX_RESOLUTION, 0, "Pixels added on the left."),
        top: usize = int(0, MAX_RESOLUTION, 0, "Pixels added at the top."),
        right: usize = int(0, MAX_RESOLUTION, 0, "Pixels added on the right."),
        bottom: usize = int(0, MAX_RESOLUTION, 0, "Pixels added at the bottom."),
        feathering: usize = int(0, MAX_RESOLUTION, 40, "Width of the mask's ramp into the picture along the padded sides (none unless less than half of each side)."),
    }
}

impl ImagePadForOutpaint {
    fn new() -> Self {
        Self(
            NodeSchema::new(
                "ImagePadForOutpaint",
                "image/transform",
                "Extends pictures with 0.5 grey for outpainting, with a mask of where to paint.",
            )
            .fields(ImagePadForOutpaintFields::declare)
            .output("image", PortType::Image, "The pictures on the larger canvas.")
            .output(
                "mask",
                PortType::Mask,
                "One mask: 1 on the new border, fading into the picture by the feathering.",
            ),
        )
    }
}

impl NodeKind for ImagePadForOutpaint {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = ImagePadForOutpaintFields::read(inputs)?;
        let img = f.image;
        let w = img.width.saturating_add(f.left).saturating_add(f.right);
        let h = img.height.saturating_add(f.top).saturating_add(f.bottom);
        check_size(img.batch.max(1), w, h)?;
        let (image, mask) = canvas::pad_for_outpaint(&img, [f.left, f.top, f.right, f.bottom], f.feathering)
            .map_err(|e| err(format!("input \"image\": {e}")))?;
        Ok(vec![Value::Image(Arc::new(image)), Value::Mask(Arc::new(mask))])
    }
}

// ---------------------------------------------------------------- ImageBatch

pub struct ImageBatch(NodeSchema);

graph::node_fields! {
    struct ImageBatchFields {
        image1: Arc<Image> = input(PortType::Image, "The first pictures."),
        image2: Arc<Image> = input(PortType::Image, "The pictures after them (resized to image1's size if needed)."),
    }
}

impl ImageBatch {
    fn new() -> Self {
        Self(
            NodeSchema::new("ImageBatch", "image/batch", "Puts two batches of pictures into one.")
                .fields(ImageBatchFields::declare)
                .output("image", PortType::Image, "image1's pictures, then image2's."),
        )
    }
}

impl NodeKind for ImageBatch {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = ImageBatchFields::read(inputs)?;
        check_size(f.image1.batch + f.image2.batch, f.image1.width, f.image1.height)?;
        let out = canvas::batch_images(&f.image1, &f.image2).map_err(err)?;
        Ok(vec![Value::Image(Arc::new(out))])
    }
}

// ---------------------------------------------------------------- EmptyImage

pub struct EmptyImage(NodeSchema);

graph::node_fields! {
    struct EmptyImageFields {
        width: usize = int(1, MAX_RESOLUTION, 512, "Width in pixels."),
        height: usize = int(1, MAX_RESOLUTION, 512, "Height in pixels."),
        batch_size: usize = int(1, 4096, 1, "Pictures to make."),
        color: usize = int(0, 0xFF_FFFF, 0, "The colour as 0xRRGGBB."),
    }
}

impl EmptyImage {
    fn new() -> Self {
        Self(
            NodeSchema::new("EmptyImage", "image", "Pictures of one colour.").fields(EmptyImageFields::declare).output(
                "image",
                PortType::Image,
                "RGB pictures, each channel the colour's byte / 255.",
            ),
        )
    }
}

impl NodeKind for EmptyImage {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, _ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = EmptyImageFields::read(inputs)?;
        check_size(f.batch_size, f.width, f.height)?;
        let color = u32::try_from(f.color).ok().filter(|c| *c <= 0xFF_FFFF);
        let color = color.ok_or_else(|| err(format!("param \"color\": {} is not a 0xRRGGBB colour", f.color)))?;
        Ok(vec![Value::Image(Arc::new(canvas::solid(f.batch_size, f.height, f.width, color)))])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_files_never_overwrite_and_count_past_the_highest() {
        let dir = std::env::temp_dir().join(format!("sdgraph-save-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let a = write_numbered(&dir, "pic", b"one").unwrap();
        let b = write_numbered(&dir, "pic", b"two").unwrap();
        assert_eq!(a.file_name().unwrap(), "pic_00001.png");
        assert_eq!(b.file_name().unwrap(), "pic_00002.png");
        fs::write(dir.join("pic_00041.png"), b"user's").unwrap();
        let c = write_numbered(&dir, "pic", b"three").unwrap();
        assert_eq!(c.file_name().unwrap(), "pic_00042.png");
        assert_eq!(fs::read(&a).unwrap(), b"one");
        assert_eq!(fs::read(dir.join("pic_00041.png")).unwrap(), b"user's");
        // No temporary files are left behind.
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// On a filesystem without hard links (FAT, exFAT, some shares: `link` fails with EPERM or
    /// "unsupported"), saving still works, still numbers past what is there and still never
    /// replaces a file.
    #[test]
    fn saving_without_hard_links_falls_back_to_claiming_the_name() {
        let dir = std::env::temp_dir().join(format!("sdgraph-save-nolink-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let no_links = |_: &Path, _: &Path| Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "no hard links"));
        let a = write_numbered_with(&dir, "pic", b"one", no_links).unwrap();
        fs::write(dir.join("pic_00002.png"), b"user's").unwrap();
        let b = write_numbered_with(&dir, "pic", b"two", no_links).unwrap();
        assert_eq!(a.file_name().unwrap(), "pic_00001.png");
        assert_eq!(b.file_name().unwrap(), "pic_00003.png");
        assert_eq!(fs::read(&a).unwrap(), b"one");
        assert_eq!(fs::read(&b).unwrap(), b"two");
        assert_eq!(fs::read(dir.join("pic_00002.png")).unwrap(), b"user's");
        // A name taken between counting and claiming is skipped, not replaced.
        let racing = |_: &Path, to: &Path| {
            fs::write(to, b"raced")?;
            Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
        };
        let c = write_numbered_with(&dir, "pic", b"three", racing).unwrap();
        assert_eq!(fs::read(dir.join("pic_00004.png")).unwrap(), b"raced");
        assert_eq!(
            (c.file_name().unwrap().to_str().unwrap(), fs::read(&c).unwrap()),
            ("pic_00005.png", b"three".to_vec())
        );
        let names: Vec<_> = fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 5, "{names:?}: no temporary file is left");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn prefixes_that_escape_the_output_folder_are_refused() {
        for bad in ["../x", "/etc/x", "a/../../x", "", "a/", "a\\b"] {
            assert!(check_prefix(bad).is_err(), "{bad:?} should be refused");
        }
        for good in ["x", "pets/cat", "a b"] {
            assert!(check_prefix(good).is_ok(), "{good:?} should be allowed");
        }
    }

    #[test]
    fn scale_with_zero_side_keeps_aspect_ratio() {
        let img = Image::zeros(1, 100, 200, 3);
        let out = scale_image(&img, 0, 50, Method::Bilinear, false).unwrap();
        assert_eq!((out.width, out.height), (100, 50));
        let out = scale_image(&img, 50, 0, Method::Bilinear, false).unwrap();
        assert_eq!((out.width, out.height), (50, 25));
    }

    #[test]
    fn total_pixels_sizes_round_halves_to_even_as_python() {
        // megapixels such that the scale is exactly 0.5: 5 * 0.5 = 2.5 -> 2, 7 * 0.5 = 3.5 -> 4.
        assert_eq!(total_pixels_size(5, 4, 5.0 / (1 << 20) as f64, 1), (2, 2));
        assert_eq!(total_pixels_size(7, 4, 7.0 / (1 << 20) as f64, 1), (4, 2));
        // In steps: 7 * 0.5 / 2 = 1.75 -> 2 steps of 2.
        assert_eq!(total_pixels_size(7, 4, 7.0 / (1 << 20) as f64, 2), (4, 2));
    }

    #[test]
    fn preview_stems_keep_only_safe_characters() {
        assert_eq!(preview_stem("look"), "sdgraph_temp_look");
        assert_eq!(preview_stem("a/../b c"), "sdgraph_temp_a____b_c");
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sdgraph-load-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn load_png_with_alpha_gives_rgb_and_inverted_alpha_mask() {
        let path = temp("alpha.png");
        let px: Vec<u8> = vec![255, 0, 0, 255, 0, 255, 0, 0, 0, 0, 255, 51, 10, 20, 30, 204];
        image::RgbaImage::from_raw(2, 2, px).unwrap().save(&path).unwrap();
        let (img, mask) = load_image_file(&path).unwrap();
        assert_eq!((img.batch, img.height, img.width, img.channels), (1, 2, 2, 3));
        assert_eq!(&img.data[..6], &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        assert!((img.get(0, 1, 1, 2) - 30.0 / 255.0).abs() < 1e-6);
        let want = [0.0, 1.0, 1.0 - 0.2, 1.0 - 0.8];
        for (m, w) in mask.data.iter().zip(want) {
            assert!((m - w).abs() < 1e-6, "{:?}", mask.data);
        }
    }

    #[test]
    fn load_jpeg_and_webp_without_alpha_gives_empty_mask() {
        let grey = image::RgbImage::from_pixel(8, 4, image::Rgb([128, 128, 128]));
        for name in ["grey.jpg", "grey.webp"] {
            let path = temp(name);
            grey.save(&path).unwrap();
            let (img, mask) = load_image_file(&path).unwrap();
            assert_eq!((img.width, img.height), (8, 4), "{name}");
            assert!(img.data.iter().all(|v| (v - 128.0 / 255.0).abs() < 3.0 / 255.0), "{name}");
            assert!(mask.data.iter().all(|&m| m == 0.0), "{name}");
        }
    }

    #[test]
    fn load_of_a_corrupt_or_missing_file_is_an_error_naming_it() {
        let path = temp("corrupt.png");
        fs::write(&path, b"\x89PNG\r\n\x1a\nthis is not really a png").unwrap();
        let e = load_image_file(&path).unwrap_err();
        assert!(e.contains("corrupt.png"), "{e}");
        let e = load_image_file(&temp("missing.png")).unwrap_err();
        assert!(e.starts_with("cannot open") && e.contains("missing.png"), "{e}");
        let e = load_image_file(Path::new("/")).unwrap_err();
        assert!(e.contains("cannot"), "{e}");
    }

    #[test]
    fn oversized_dimensions_are_refused_before_decoding() {
        // A PNG header claiming 100000x100000 pixels, with no data behind it.
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        png.extend_from_slice(&13u32.to_be_bytes());
        png.extend_from_slice(&ihdr);
        png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
        let path = temp("huge.png");
        fs::write(&path, &png).unwrap();
        let e = load_image_file(&path).unwrap_err();
        assert!(e.contains("huge.png"), "{e}");
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }

    #[test]
    fn to_u8_truncates_as_comfyui_saves() {
        // 255 * x in f32, clipped, truncated: 127.5 -> 127, 254.745 -> 254, out of range clipped, NaN -> 0.
        let data = vec![0.5, 0.999, 1.0, -0.1, 1.5, 0.0039, 0.0040, f32::NAN];
        let img = Image::from_data(1, 1, data.len(), 1, data).unwrap();
        assert_eq!(to_u8(&img, 0), [127, 254, 255, 0, 255, 0, 1, 0]);
    }

    #[test]
    fn to_u8_round_trips_every_8_bit_value() {
        let data: Vec<f32> = (0..=255).map(|v| v as f32 / 255.0).collect();
        let img = Image::from_data(1, 1, 256, 1, data).unwrap();
        let bytes = to_u8(&img, 0);
        assert_eq!(bytes, (0..=255).collect::<Vec<u8>>());
    }
}
