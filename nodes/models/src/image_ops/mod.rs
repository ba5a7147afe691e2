//! Pure pixel operations behind the image nodes, with ComfyUI's semantics.
//!
//! - [`resample`]: resizing as ComfyUI's `comfy.utils.common_upscale` does it
//!   (PyTorch `F.interpolate` for nearest-exact, bilinear, bicubic and area;
//!   PIL's Lanczos), plus its center crop to the target aspect ratio
//! - [`blend`](mod@blend): ImageBlend's blend modes, ImageInvert and ImageCrop
//! - [`planes`]: pictures as the networks' `[C, H, W]` planes
//! - [`edges`]: Canny edges and binary stroke maps for ControlNets
//! - [`canvas`]: ImagePadForOutpaint, EmptyImage and ImageBatch
//! - [`inpaint`]: VAEEncodeForInpaint's cropped, greyed picture and grown noise mask
//! - [`compose`]: LatentComposite and LatentCompositeMasked on `[B, C, H, W]` planes
//! - [`batch`](mod@batch): LatentFromBatch and RepeatLatentBatch's item and `batch_index` maths
//!
//! Everything here works on [`pixels::Image`] (`[B, H, W, C]`) or
//! [`pixels::Mask`] (`[B, H, W]`), never panics on odd shapes, and reports
//! invalid inputs as `Err(String)` for the node to wrap.

pub mod batch;
pub mod blend;
pub mod canvas;
pub mod compose;
pub mod edges;
pub mod inpaint;
pub mod planes;
pub mod resample;

pub use blend::{BlendMode, blend, crop, invert};
pub use planes::item_planes;
pub use resample::{Method, center_crop_to_aspect, resize, resize_mask};
