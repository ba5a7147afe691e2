//! The shader registry: every WGSL file in this folder, its variants and the
//! bindings each entry point declares, and the one preprocessing step that
//! makes a variant (a header naming the storage type).
//!
//! Conventions (also in `shaders/README.md`): storage element type is the
//! alias `T` (`f32` or `f16`), arithmetic is f32; binding 0 is the `Params`
//! uniform when an entry point has one; tile and workgroup sizes are WGSL
//! `override` constants.

use serde::Serialize;

/// One WGSL file: one kernel family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ShaderFamily {
    Elementwise,
    Cast,
    Binary,
    Layout,
    Embedding,
    Matmul,
    MatmulCoop,
    Conv2d,
    Norm,
    Softmax,
    Attention,
    AttentionCoop,
}

/// A storage-type (and hardware-path) variant of a shader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Variant {
    /// `T = f32`.
    F32,
    /// `T = f16` (needs `SHADER_F16`).
    F16,
    /// `T = f16` with cooperative matrices (tensor cores).
    CoopF16,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::F32, Variant::F16, Variant::CoopF16];

    /// The text prepended to a shader body. `enable` lines must precede
    /// every declaration, so they can only come from here.
    pub fn header(self) -> &'static str {
        match self {
            Variant::F32 => "alias T = f32;\n",
            Variant::F16 => "enable f16;\nalias T = f16;\n",
            Variant::CoopF16 => "enable f16;\nenable wgpu_cooperative_matrix;\nalias T = f16;\n",
        }
    }
}

/// How an entry point uses a binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Access {
    Uniform,
    Read,
    ReadWrite,
}

/// One `@group(0) @binding(index) var<...> name` an entry point uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Binding {
    pub index: u32,
    pub name: &'static str,
    pub access: Access,
}

pub const fn uniform(index: u32, name: &'static str) -> Binding {
    Binding { index, name, access: Access::Uniform }
}
pub const fn read(index: u32, name: &'static str) -> Binding {
    Binding { index, name, access: Access::Read }
}
pub const fn read_write(index: u32, name: &'static str) -> Binding {
    Binding { index, name, access: Access::ReadWrite }
}

/// An entry point and the bindings its launcher passes, in binding order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EntryPoint {
    pub name: &'static str,
    pub bindings: &'static [Binding],
}

/// One shader file with its variants and entry points.
#[derive(Debug, Clone, Copy)]
pub struct ShaderSource {
    pub family: ShaderFamily,
    /// File name in `shaders/`.
    pub file: &'static str,
    pub body: &'static str,
    pub variants: &'static [Variant],
    pub entries: &'static [EntryPoint],
    /// Override constants the tests set when validating (name, value).
    pub overrides: &'static [(&'static str, f64)],
    /// Shared snippets from `shaders/lib/` (by name in [`LIBS`]) prepended to the body.
    pub libs: &'static [&'static str],
}

/// Functions and parameter structs several kernels share, in `shaders/lib/`: WGSL has no includes,
/// so the registry prepends them (after the variant header).
pub const LIBS: &[(&str, &str)] = &[
    ("activation", include_str!("lib/activation.wgsl")),
    ("attention_io", include_str!("lib/attention_io.wgsl")),
    ("conv_params", include_str!("lib/conv_params.wgsl")),
    ("matmul_params", include_str!("lib/matmul_params.wgsl")),
    ("strided", include_str!("lib/strided.wgsl")),
    ("tile_gemm", include_str!("lib/tile_gemm.wgsl")),
    ("unary_io", include_str!("lib/unary_io.wgsl")),
];

impl ShaderSource {
    /// The full WGSL text of one variant.
    pub fn source(&self, variant: Variant) -> String {
        let mut src = variant.header().to_string();
        for lib in self.libs {
            // Every name in `libs` is in LIBS; the shaders test checks it.
            if let Some((_, text)) = LIBS.iter().find(|(n, _)| n == lib) {
                src.push_str(text);
            }
        }
        src.push_str(self.body);
        src
    }

    pub fn entry(&self, name: &str) -> Option<&EntryPoint> {
        self.entries.iter().find(|e| e.name == name)
    }
}

const UNARY: &[Binding] = &[uniform(0, "params"), read(1, "x"), read_write(2, "y")];
const BINARY: &[Binding] = &[uniform(0, "params"), read(1, "a"), read(2, "b"), read_write(3, "y")];
const MATMUL: &[Binding] =
    &[uniform(0, "params"), read(1, "a"), read(2, "b"), read(3, "bias"), read_write(4, "c"), read(5, "res")];
/// The cooperative matmul's: the same, with the residual at 10 (5..9 are its conv2d's).
const MATMUL_COOP: &[Binding] =
    &[uniform(0, "params"), read(1, "a"), read(2, "b"), read(3, "bias"), read_write(4, "c"), read(10, "res")];

/// Every shader. A test checks this table against the files in `shaders/`
/// in both directions, and validates every (shader, variant) with naga.
pub const SHADERS: &[ShaderSource] = &[
    ShaderSource {
        family: ShaderFamily::Elementwise,
        file: "elementwise.wgsl",
        body: include_str!("elementwise.wgsl"),
        variants: &[Variant::F32, Variant::F16],
        entries: &[
            EntryPoint { name: "silu", bindings: UNARY },
            EntryPoint { name: "gelu", bindings: UNARY },
            EntryPoint { name: "quick_gelu", bindings: UNARY },
            EntryPoint { name: "leaky_relu", bindings: UNARY },
            EntryPoint { name: "scale", bindings: UNARY },
        ],
        overrides: &[],
        libs: &["activation", "unary_io"],
    },
    ShaderSource {
        family: ShaderFamily::Matmul,
        file: "matmul.wgsl",
        body: include_str!("matmul.wgsl"),
        variants: &[Variant::F32, Variant::F16],
        entries: &[EntryPoint { name: "matmul", bindings: MATMUL }],
        // The tile the launcher uses (ops::matmul::TILE).
        overrides: &[("BM", 128.0), ("BN", 128.0), ("BK", 16.0), ("WG", 256.0)],
        libs: &["activation", "matmul_params", "tile_gemm"],
    },
    ShaderSource {
        family: ShaderFamily::MatmulCoop,
        file: "matmul_coop.wgsl",
        body: include_str!("matmul_coop.wgsl"),
        variants: &[Variant::CoopF16],
        entries: &[
            EntryPoint { name: "matmul", bindings: MATMUL_COOP },
            EntryPoint {
                name: "conv2d",
                bindings: &[
                    uniform(5, "cparams"),
                    read(6, "cx"),
                    read(7, "cw"),
                    read(8, "cbias"),
                    read_write(9, "cy"),
                    read(11, "cres"),
                ],
            },
        ],
        // Subgroup size (NVIDIA's 32).
        overrides: &[("SG", 32.0)],
        libs: &["activation", "matmul_params", "conv_params"],
    },
    ShaderSource {
        family: ShaderFamily::Conv2d,
        file: "conv2d.wgsl",
        body: include_str!("conv2d.wgsl"),
        variants: &[Variant::F32, Variant::F16],
        entries: &[EntryPoint {
            name: "conv2d",
            bindings: &[
                uniform(0, "params"),
                read(1, "x"),
                read(2, "w"),
                read(3, "bias"),
                read_write(4, "y"),
                read(5, "res"),
            ],
        }],
        overrides: &[("BM", 128.0), ("BN", 128.0), ("BK", 16.0), ("WG", 256.0)],
        libs: &["activation", "conv_params", "tile_gemm"],
    },
    ShaderSource {
        family: ShaderFamily::Cast,
        file: "cast.wgsl",
        body: include_str!("cast.wgsl"),
        variants: &[Variant::F16],
        entries: &[
            EntryPoint {
                name: "f32_to_f16",
                bindings: &[uniform(0, "params"), read(1, "src32"), read_write(2, "dst16")],
            },
            EntryPoint {
                name: "f16_to_f32",
                bindings: &[uniform(0, "params"), read(3, "src16"), read_write(4, "dst32")],
            },
        ],
        overrides: &[],
        libs: &[],
    },
    ShaderSource {
        family: ShaderFamily::Binary,
        file: "binary.wgsl",
        body: include_str!("binary.wgsl"),
        variants: &[Variant::F32, Variant::F16],
        entries: &[
            EntryPoint { name: "add", bindings: BINARY },
            EntryPoint { name: "mul", bindings: BINARY },
            EntryPoint { name: "prelu", bindings: BINARY },
            EntryPoint { name: "geglu", bindings: BINARY },
        ],
        overrides: &[],
        libs: &["activation", "strided"],
    },
    ShaderSource {
        family: ShaderFamily::Layout,
        file: "layout.wgsl",
        body: include_str!("layout.wgsl"),
        variants: &[Variant::F32, Variant::F16],
        entries: &[EntryPoint {
            name: "copy",
            bindings: &[uniform(0, "params"), read(1, "src"), read_write(2, "dst")],
        }],
        overrides: &[],
        libs: &["strided"],
    },
    ShaderSource {
        family: ShaderFamily::Embedding,
        file: "embedding.wgsl",
        body: include_str!("embedding.wgsl"),
        variants: &[Variant::F32, Variant::F16],
        entries: &[EntryPoint {
            name: "timestep_embedding",
            bindings: &[uniform(0, "params"), read(1, "t"), read_write(2, "y")],
        }],
        overrides: &[],
        libs: &[],
    },
    ShaderSource {
        family: ShaderFamily::Norm,
        file: "norm.wgsl",
        body: include_str!("norm.wgsl"),
        variants: &[Variant::F32, Variant::F16],
        entries: &[
            EntryPoint { name: "gn_stats", bindings: &[uniform(0, "params"), read(1, "x"), read_write(2, "partial")] },
            EntryPoint {
                name: "gn_finalize",
                bindings: &[uniform(0, "params"), read(1, "x"), read_write(2, "partial"), read_write(3, "stats")],
            },
            EntryPoint {
                name: "gn_apply",
                bindings: &[
                    uniform(0, "params"),
                    read(1, "x"),
                    read_write(2, "partial"),
                    read_write(3, "stats"),
                    read(4, "gamma"),
                    read(5, "beta"),
                    read_write(6, "y"),
                ],
            },
            EntryPoint {
                name: "gn_single",
                bindings: &[uniform(0, "params"), read(1, "x"), read(4, "gamma"), read(5, "beta"), read_write(6, "y")],
            },
            EntryPoint {
                name: "layer_norm",
                bindings: &[uniform(0, "params"), read(1, "x"), read(4, "gamma"), read(5, "beta"), read_write(6, "y")],
            },
        ],
        overrides: &[],
        libs: &[],
    },
    ShaderSource {
        family: ShaderFamily::Softmax,
        file: "softmax.wgsl",
        body: include_str!("softmax.wgsl"),
        variants: &[Variant::F32, Variant::F16],
        entries: &[EntryPoint { name: "softmax", bindings: UNARY }],
        overrides: &[],
        libs: &["unary_io"],
    },
    ShaderSource {
        family: ShaderFamily::Attention,
        file: "attention.wgsl",
        body: include_str!("attention.wgsl"),
        variants: &[Variant::F32, Variant::F16],
        entries: &[EntryPoint {
            name: "attention",
            bindings: &[uniform(0, "params"), read(1, "q"), read(2, "k"), read(3, "v"), read_write(4, "out")],
        }],
        // The largest head dimension, where the per-invocation arrays are fullest.
        overrides: &[("HEAD_DIM", 160.0)],
        libs: &["attention_io"],
    },
    ShaderSource {
        family: ShaderFamily::AttentionCoop,
        file: "attention_coop.wgsl",
        body: include_str!("attention_coop.wgsl"),
        variants: &[Variant::CoopF16],
        entries: &[EntryPoint {
            name: "attention",
            bindings: &[uniform(0, "params"), read(1, "q"), read(2, "k"), read(3, "v"), read_write(4, "out")],
        }],
        // NVIDIA's subgroup size; the largest head dim (every accumulator in use).
        overrides: &[("SG", 32.0), ("HEAD_DIM", 160.0)],
        libs: &["attention_io"],
    },
];

pub fn shader(family: ShaderFamily) -> &'static ShaderSource {
    // Every family has exactly one entry; the shaders test checks it.
    SHADERS.iter().find(|s| s.family == family).expect("every ShaderFamily is in SHADERS")
}
