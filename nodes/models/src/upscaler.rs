//! Image upscale models (ComfyUI's UPSCALE_MODEL): opening a `.safetensors`
//! or `.pth` file, telling the architecture from its tensor names and
//! shapes, and running it. The networks are in [`super::esrgan`] (RRDBNet:
//! ESRGAN, Real-ESRGAN x4plus / x2plus) and [`super::srvgg`]
//! (SRVGGNetCompact: realesr-general, animevideo).

use std::path::Path;
use std::sync::Arc;

use gpu::{DType, Gpu, Tensor};

use super::ModelError;
use super::esrgan::{RrdbConfig, RrdbNet, layout_names};
use super::srvgg::{SrvggConfig, SrvggNet};
use crate::checkpoint::pth;
use crate::checkpoint::safetensors::{CheckpointError, SafeTensors};
use crate::checkpoint::weights::WeightSource;
use crate::checkpoint::zip;

/// Opens an upscale model's weights: a PyTorch zip archive (`.pth`, `.pt`,
/// whatever the extension) through the restricted reader, else safetensors.
/// A DataParallel `module.` prefix is dropped, and the original ESRGAN and
/// BSRGAN layouts are renamed to basicsr's.
pub fn open_weights(path: &Path) -> Result<WeightSource, CheckpointError> {
    let mut head = [0u8; 4];
    let zipped = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|_| zip::is_zip(&head));
    let st = if zipped || pth::is_pth(path) { pth::open(path)? } else { SafeTensors::open(path)? };
    let stored: Vec<String> = st.names().map(str::to_string).collect();
    let strip = stored.iter().all(|n| n.starts_with("module."));
    let plain: Vec<(String, String)> =
        stored.iter().map(|n| (if strip { n["module.".len()..].to_string() } else { n.clone() }, n.clone())).collect();
    let renamed = match layout_names(plain.iter().map(|(p, _)| p.as_str())) {
        // (basicsr name, plain name) -> (basicsr name, stored name)
        Some(map) => map
            .into_iter()
            .map(|(new, old)| {
                let stored = plain.iter().find(|(p, _)| *p == old).map(|(_, s)| s.clone()).unwrap_or(old);
                (new, stored)
            })
            .collect(),
        None => plain,
    };
    if !strip && renamed.iter().all(|(a, b)| a == b) {
        return Ok(WeightSource::from_tensors(st));
    }
    let table = renamed.into_iter().map(|(name, key)| (name, 0, key, None)).collect();
    Ok(WeightSource::from_parts(vec![Arc::new(st)], table))
}

/// A loaded network.
pub enum UpscaleNet {
    Esrgan(Box<RrdbNet>),
    Compact(SrvggNet),
}

/// An upscale model on the GPU, and the storage type it runs in.
pub struct UpscaleModel {
    pub net: UpscaleNet,
    pub dtype: DType,
}

impl UpscaleModel {
    /// Detects the architecture from the weights and loads it.
    pub fn load(gpu: &Gpu, src: &WeightSource, dtype: DType) -> Result<UpscaleModel, ModelError> {
        let w = src.prefix("");
        let net = if src.contains("conv_first.weight") {
            let cfg = RrdbConfig::detect_from_weights(&w)?;
            UpscaleNet::Esrgan(Box::new(RrdbNet::load(gpu, &w, &cfg, dtype)?))
        } else if src.contains("body.0.weight") {
            let cfg = SrvggConfig::detect_from_weights(&w)?;
            UpscaleNet::Compact(SrvggNet::load(gpu, &w, &cfg, dtype)?)
        } else {
            let some: Vec<&str> = src.names().take(6).collect();
            return Err(ModelError::Config(format!(
                "unknown upscale model layout: expected RRDBNet (ESRGAN / Real-ESRGAN: conv_first, body.N.rdb1.conv1, \
                 conv_up1, conv_last; model.0, model.1.sub.N...; or RRDB_trunk.N, trunk_conv) or SRVGGNetCompact \
                 (body.N) weights; the file has {some:?}{}",
                if src.names().count() > 6 { " ..." } else { "" }
            )));
        };
        let model = UpscaleModel { net, dtype };
        // A tensor the network does not use means a variant this loader does not know
        // (ESRGAN+'s conv1x1, an extra layer): refuse rather than run something else.
        let expected = model.tensor_names();
        let extra: Vec<&str> = src.names().filter(|n| !expected.contains(*n)).take(5).collect();
        if !extra.is_empty() {
            return Err(ModelError::Config(format!(
                "{} does not use the tensors {extra:?}: an architecture variant sdgraph does not support \
                 (ESRGAN+, an extra layer...)",
                model.describe()
            )));
        }
        Ok(model)
    }

    /// Every tensor name the loaded network reads (basicsr names).
    fn tensor_names(&self) -> std::collections::BTreeSet<String> {
        let mut names = std::collections::BTreeSet::new();
        let mut conv = |p: String| {
            names.insert(format!("{p}.weight"));
            names.insert(format!("{p}.bias"));
        };
        match &self.net {
            UpscaleNet::Esrgan(n) => {
                let c = &n.config;
                for p in ["conv_first", "conv_body", "conv_hr", "conv_last"] {
                    conv(p.to_string());
                }
                for k in 1..=c.upsamples {
                    conv(format!("conv_up{k}"));
                }
                for i in 0..c.num_block {
                    for r in 1..=3 {
                        for j in 1..=5 {
                            conv(format!("body.{i}.rdb{r}.conv{j}"));
                        }
                    }
                }
            }
            UpscaleNet::Compact(n) => {
                let convs = n.config.num_conv + 2;
                for k in 0..convs {
                    conv(format!("body.{}", 2 * k));
                }
                for k in 0..convs - 1 {
                    names.insert(format!("body.{}.weight", 2 * k + 1));
                }
            }
        }
        names
    }

    /// Output pixels per input pixel along each axis.
    pub fn scale(&self) -> usize {
        match &self.net {
            UpscaleNet::Esrgan(n) => n.config.scale(),
            UpscaleNet::Compact(n) => n.config.scale,
        }
    }

    pub fn in_channels(&self) -> usize {
        match &self.net {
            UpscaleNet::Esrgan(n) => n.config.in_channels,
            UpscaleNet::Compact(n) => n.config.in_channels,
        }
    }

    pub fn out_channels(&self) -> usize {
        match &self.net {
            UpscaleNet::Esrgan(n) => n.config.out_channels,
            UpscaleNet::Compact(n) => n.config.in_channels,
        }
    }

    /// Input height and width must be multiples of this (the pixel unshuffle factor).
    pub fn size_multiple(&self) -> usize {
        match &self.net {
            UpscaleNet::Esrgan(n) => n.config.unshuffle,
            UpscaleNet::Compact(_) => 1,
        }
    }

    /// How far (in input pixels) a pixel of the output sees: past this
    /// distance from a tile's edge, the tile's output is exact.
    pub fn receptive_radius(&self) -> usize {
        match &self.net {
            // Every 3x3 conv adds one pixel at its resolution; the upsampled
            // convs add less than one input pixel in total.
            UpscaleNet::Esrgan(n) => {
                let c = &n.config;
                (2 + 15 * c.num_block + 1) * c.unshuffle + c.unshuffle
            }
            UpscaleNet::Compact(n) => n.config.num_conv + 2,
        }
    }

    /// A one-line description: architecture and sizes.
    pub fn describe(&self) -> String {
        match &self.net {
            UpscaleNet::Esrgan(n) => {
                let c = &n.config;
                format!(
                    "RRDBNet x{} ({} blocks, {} features, {} growth, {} -> {} channels{})",
                    c.scale(),
                    c.num_block,
                    c.num_feat,
                    c.num_grow_ch,
                    c.in_channels,
                    c.out_channels,
                    if c.unshuffle > 1 { format!(", pixel-unshuffle {}", c.unshuffle) } else { String::new() }
                )
            }
            UpscaleNet::Compact(n) => {
                let c = &n.config;
                format!(
                    "SRVGGNetCompact x{} ({} convs, {} features, {} channels)",
                    c.scale, c.num_conv, c.num_feat, c.in_channels
                )
            }
        }
    }

    /// `x [B, in, H, W]` (the model's dtype) `-> [B, out, H*scale, W*scale]`.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor, ModelError> {
        match &self.net {
            UpscaleNet::Esrgan(n) => n.forward(gpu, x),
            UpscaleNet::Compact(n) => n.forward(gpu, x),
        }
    }

    /// Bytes of the largest single activation for an `h x w` input.
    pub fn largest_activation(&self, h: usize, w: usize) -> u64 {
        match &self.net {
            UpscaleNet::Esrgan(n) => n.largest_activation(h, w, self.dtype),
            UpscaleNet::Compact(n) => n.largest_activation(h, w, self.dtype),
        }
    }
}
