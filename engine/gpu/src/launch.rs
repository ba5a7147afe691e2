//! Recording a kernel dispatch: pipeline lookup, uniform params, bind group,
//! workgroup grid. Every op launcher goes through `Gpu::dispatch`.

use super::device::{Gpu, GpuError};
use super::pipeline_cache::PipelineKey;
use super::profile::{KernelId, ProfileClock};
use super::shaders::{Access, ShaderFamily, Variant, shader};

/// A kernel: which shader, variant and entry point, with override constants.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub family: ShaderFamily,
    pub variant: Variant,
    pub entry: &'static str,
    pub constants: Vec<(&'static str, f64)>,
}

impl Kernel {
    pub fn new(family: ShaderFamily, variant: Variant, entry: &'static str) -> Self {
        Self { family, variant, entry, constants: vec![] }
    }

    pub fn constant(mut self, name: &'static str, value: f64) -> Self {
        self.constants.push((name, value));
        self
    }
}

/// The WGSL scalar type of one field of a kernel's parameter block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    U32,
    I32,
    F32,
}

/// One field of a parameter block: its name, byte offset and type, as the
/// kernel-contract test compares them with the WGSL struct's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamField {
    pub name: &'static str,
    pub offset: usize,
    pub ty: ParamType,
}

/// A Rust scalar a parameter block may hold: 4 bytes, little-endian, as WGSL
/// lays out `u32`, `i32` and `f32` in a uniform struct.
pub trait ParamScalar: Copy {
    const TYPE: ParamType;
    fn le_bytes(self) -> [u8; 4];
}

impl ParamScalar for u32 {
    const TYPE: ParamType = ParamType::U32;
    fn le_bytes(self) -> [u8; 4] {
        self.to_le_bytes()
    }
}
impl ParamScalar for i32 {
    const TYPE: ParamType = ParamType::I32;
    fn le_bytes(self) -> [u8; 4] {
        self.to_le_bytes()
    }
}
impl ParamScalar for f32 {
    const TYPE: ParamType = ParamType::F32;
    fn le_bytes(self) -> [u8; 4] {
        self.to_le_bytes()
    }
}

/// A kernel's uniform parameter block: a `#[repr(C)]` struct whose fields are,
/// by name, offset and type, the WGSL struct it is bound to (the kernel-contract
/// test reflects every shader and variant with naga and compares). Declare one
/// with [`kernel_params!`]; [`crate::ops::PARAM_BLOCKS`] says which WGSL
/// uniform each one fills.
pub trait KernelParams {
    const FIELDS: &'static [ParamField];
    /// The block's bytes as the uniform buffer holds them.
    fn to_bytes(&self) -> Vec<u8>;
}

/// Declares a parameter block: the `#[repr(C)]` struct and its
/// [`KernelParams`] (field table from `offset_of!`, so it cannot drift from
/// the struct).
#[macro_export]
macro_rules! kernel_params {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, PartialEq)]
        $vis struct $name { $($(#[$fmeta])* $fvis $field: $ty),* }

        impl $crate::launch::KernelParams for $name {
            const FIELDS: &'static [$crate::launch::ParamField] = &[$(
                $crate::launch::ParamField {
                    name: stringify!($field),
                    offset: ::std::mem::offset_of!($name, $field),
                    ty: <$ty as $crate::launch::ParamScalar>::TYPE,
                }
            ),*];
            fn to_bytes(&self) -> Vec<u8> {
                let mut bytes = vec![0u8; ::std::mem::size_of::<Self>()];
                $(
                    let at = ::std::mem::offset_of!($name, $field);
                    bytes[at..at + 4].copy_from_slice(&$crate::launch::ParamScalar::le_bytes(self.$field));
                )*
                bytes
            }
        }
    };
}

/// A size, stride or offset as a parameter word: kernels address with u32
/// (launchers keep tensors within the adapter's binding limits).
pub fn word(v: usize) -> u32 {
    v as u32
}

/// `params`' bytes padded to 16, as uniform bindings require.
fn uniform_bytes(params: &impl KernelParams) -> Vec<u8> {
    let mut bytes = params.to_bytes();
    let n = bytes.len().div_ceil(16).max(1) * 16;
    bytes.resize(n, 0);
    bytes
}

/// Splits `groups` workgroups over x and y so neither passes the per-dimension
/// limit; shaders rebuild the linear index as `wid.y * num_workgroups.x + wid.x`.
pub fn grid(groups: u32, max_per_dim: u32) -> [u32; 3] {
    if groups <= max_per_dim {
        [groups.max(1), 1, 1]
    } else {
        let y = groups.div_ceil(max_per_dim);
        [groups.div_ceil(y), y, 1]
    }
}

impl Gpu {
    /// Records one dispatch. `buffers` are bound, in order, to the entry
    /// point's non-uniform bindings; `params` to its uniform binding.
    pub fn dispatch<P: KernelParams>(
        &self,
        kernel: &Kernel,
        params: &P,
        buffers: &[wgpu::BufferBinding<'_>],
        groups: [u32; 3],
    ) -> Result<(), GpuError> {
        self.dispatches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let entry = self.check_dispatch(kernel, buffers, groups)?;
        debug_assert!(
            crate::ops::param_block_of(kernel.family, entry) == Some(P::FIELDS),
            "{}: parameter block {} is not the one PARAM_BLOCKS names",
            kernel.entry,
            std::any::type_name::<P>()
        );
        let pipeline = self.pipeline(kernel);
        let params = uniform_bytes(params);
        let record = |timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>| {
            self.record_dispatch(kernel, entry, &pipeline, &params, buffers, groups, timestamp_writes)
        };
        let Some(profiler) = &self.profiler else {
            record(None);
            return Ok(());
        };
        let id = KernelId { entry: kernel.entry, variant: kernel.variant };
        match profiler.clock() {
            ProfileClock::GpuTimestamps => {
                let (query_set, index) = profiler.begin_pass(&self.device, id);
                record(Some(wgpu::ComputePassTimestampWrites {
                    query_set: &query_set,
                    beginning_of_pass_write_index: Some(index),
                    end_of_pass_write_index: Some(index + 1),
                }));
            }
            ProfileClock::CpuQueueWait => {
                // Finish everything before this kernel, then time it alone.
                self.sync()?;
                let t0 = std::time::Instant::now();
                record(None);
                self.sync()?;
                profiler.add_cpu_time(id, t0.elapsed());
            }
        }
        Ok(())
    }

    /// The entry point `kernel` names, after checking the variant, the
    /// buffers (count and binding size) and the grid against the adapter.
    fn check_dispatch(
        &self,
        kernel: &Kernel,
        buffers: &[wgpu::BufferBinding<'_>],
        groups: [u32; 3],
    ) -> Result<&'static shaders::EntryPoint, GpuError> {
        let src = shader(kernel.family);
        let entry = src
            .entry(kernel.entry)
            .ok_or_else(|| GpuError::Wgpu(format!("{} has no entry point {}", src.file, kernel.entry)))?;
        if !src.variants.contains(&kernel.variant) {
            return Err(GpuError::Wgpu(format!("{} has no {:?} variant", src.file, kernel.variant)));
        }
        let storage = entry.bindings.iter().filter(|b| b.access != Access::Uniform).count();
        if buffers.len() != storage {
            return Err(GpuError::Wgpu(format!(
                "{}: {} buffers for {storage} storage bindings",
                kernel.entry,
                buffers.len()
            )));
        }
        let limit = self.limits.max_storage_buffer_binding_size;
        for b in buffers {
            let size = b.size.map(|s| s.get()).unwrap_or_else(|| b.buffer.size() - b.offset);
            if size > limit {
                return Err(GpuError::TooLarge { bytes: size, limit, what: "storage binding" });
            }
        }
        let max = self.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(GpuError::Shape(format!("dispatch {groups:?} exceeds {max} workgroups per dimension")));
        }
        Ok(entry)
    }

    /// The compute pipeline of `kernel` (shader, variant, entry point,
    /// override constants), built on first use.
    fn pipeline(&self, kernel: &Kernel) -> std::sync::Arc<wgpu::ComputePipeline> {
        let src = shader(kernel.family);
        let mut constants: Vec<(&'static str, u64)> = kernel.constants.iter().map(|(k, v)| (*k, v.to_bits())).collect();
        constants.sort();
        let key = PipelineKey { family: kernel.family, variant: kernel.variant, entry: kernel.entry, constants };
        self.pipelines.get_or_build(&key, || {
            let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(src.file),
                source: wgpu::ShaderSource::Wgsl(src.source(kernel.variant).into()),
            });
            self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.entry),
                layout: None,
                module: &module,
                entry_point: Some(kernel.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &kernel.constants,
                    // Kernels initialise the workgroup memory they read.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            })
        })
    }

    /// Records the parameter slot, the bind group and the dispatch. They go
    /// into the recording under one lock: a submit in between would hand the
    /// slot's arena to the next recording, which rewrites it. With timestamps
    /// each kernel gets a pass of its own (the timestamps bracket passes);
    /// otherwise kernels share the open pass.
    #[allow(clippy::too_many_arguments)]
    fn record_dispatch(
        &self,
        kernel: &Kernel,
        entry: &shaders::EntryPoint,
        pipeline: &wgpu::ComputePipeline,
        params: &[u8],
        buffers: &[wgpu::BufferBinding<'_>],
        groups: [u32; 3],
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>,
    ) {
        let align = u64::from(self.limits.min_uniform_buffer_offset_alignment).max(16);
        self.with_recording(|rec| {
            let slot = rec.uniform(&self.arenas, &self.device, align, params);
            let mut next = buffers.iter();
            let entries: Vec<wgpu::BindGroupEntry<'_>> = entry
                .bindings
                .iter()
                .filter_map(|b| {
                    let resource = match b.access {
                        Access::Uniform => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &slot.buffer,
                            offset: slot.offset,
                            size: std::num::NonZeroU64::new(params.len() as u64),
                        }),
                        Access::Read | Access::ReadWrite => wgpu::BindingResource::Buffer(next.next()?.clone()),
                    };
                    Some(wgpu::BindGroupEntry { binding: b.index, resource })
                })
                .collect();
            let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(kernel.entry),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
            if timestamp_writes.is_none() {
                let pass = rec.pass();
                pass.set_pipeline(pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                return;
            }
            let mut pass = rec
                .encoder()
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(kernel.entry), timestamp_writes });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        })
    }
}

/// Binds a whole tensor.
pub fn whole(t: &super::tensor::Tensor) -> wgpu::BufferBinding<'_> {
    t.buffer().as_entire_buffer_binding()
}
