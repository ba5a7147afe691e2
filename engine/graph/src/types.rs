//! Port types: what flows along a graph edge, and what a parameter holds.

use serde::Serialize;

/// The type of a node input or output. Names follow ComfyUI's socket types so
/// that a ComfyUI user recognises every port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
pub enum PortType {
    Model,
    Clip,
    Vae,
    Conditioning,
    Latent,
    Image,
    Mask,
    ControlNet,
    UpscaleModel,
    /// ComfyUI's SAMPLER (KSamplerSelect): which sampler a custom-sampling node runs.
    Sampler,
    /// ComfyUI's SIGMAS: a noise schedule, a list of sigmas.
    Sigmas,
    /// ComfyUI's GUIDER: a model with its conditionings and guidance.
    Guider,
    /// ComfyUI's NOISE: where the initial noise comes from.
    Noise,
    /// ComfyUI's GLIGEN: a loaded GLIGEN text-box grounding model.
    Gligen,
    Int,
    Float,
    String,
    Bool,
}

impl PortType {
    pub const ALL: [PortType; 18] = [
        PortType::Model,
        PortType::Clip,
        PortType::Vae,
        PortType::Conditioning,
        PortType::Latent,
        PortType::Image,
        PortType::Mask,
        PortType::ControlNet,
        PortType::UpscaleModel,
        PortType::Sampler,
        PortType::Sigmas,
        PortType::Guider,
        PortType::Noise,
        PortType::Gligen,
        PortType::Int,
        PortType::Float,
        PortType::String,
        PortType::Bool,
    ];

    /// The name used in graph files, docs and Lua plugins.
    pub fn name(self) -> &'static str {
        match self {
            PortType::Model => "Model",
            PortType::Clip => "Clip",
            PortType::Vae => "Vae",
            PortType::Conditioning => "Conditioning",
            PortType::Latent => "Latent",
            PortType::Image => "Image",
            PortType::Mask => "Mask",
            PortType::ControlNet => "ControlNet",
            PortType::UpscaleModel => "UpscaleModel",
            PortType::Sampler => "Sampler",
            PortType::Sigmas => "Sigmas",
            PortType::Guider => "Guider",
            PortType::Noise => "Noise",
            PortType::Gligen => "Gligen",
            PortType::Int => "Int",
            PortType::Float => "Float",
            PortType::String => "String",
            PortType::Bool => "Bool",
        }
    }

    pub fn from_name(name: &str) -> Option<PortType> {
        PortType::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Whether a value of type `self` may feed a port of type `to`. Only an
    /// Int widening to a Float is implicit; everything else must match.
    pub fn feeds(self, to: PortType) -> bool {
        self == to || (self == PortType::Int && to == PortType::Float)
    }
}

impl std::fmt::Display for PortType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
