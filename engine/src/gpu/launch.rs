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

/// A uniform `Params` struct built word by word. WGSL lays out u32, i32 and
/// f32 fields at 4-byte steps, so the launcher writes fields in declaration
/// order; the buffer is padded to 16 bytes as uniforms require.
#[derive(Debug, Clone, Default)]
pub struct Params(Vec<u8>);

impl Params {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn f32(mut self, v: f32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A size or index; kernels address with u32.
    pub fn usize(self, v: usize) -> Self {
        self.u32(v as u32)
    }
    fn into_bytes(mut self) -> Vec<u8> {
        let n = self.0.len().div_ceil(16).max(1) * 16;
        self.0.resize(n, 0);
        self.0
    }
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
    /// The largest number of elements of `elem_size` bytes one binding may hold.
    pub fn max_binding_elems(&self, elem_size: usize) -> usize {
        (self.limits.max_storage_buffer_binding_size / elem_size as u64) as usize
    }

    /// Records one dispatch. `buffers` are bound, in order, to the entry
    /// point's non-uniform bindings; `params` to its uniform binding.
    pub fn dispatch(
        &self,
        kernel: &Kernel,
        params: Params,
        buffers: &[wgpu::BufferBinding<'_>],
        groups: [u32; 3],
    ) -> Result<(), GpuError> {
        self.dispatches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let src = shader(kernel.family);
        let entry = src
            .entry(kernel.entry)
            .ok_or_else(|| GpuError::Wgpu(format!("{} has no entry point {}", src.file, kernel.entry)))?;
        if !src.variants.contains(&kernel.variant) {
            return Err(GpuError::Wgpu(format!("{} has no {:?} variant", src.file, kernel.variant)));
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
        let mut constants: Vec<(&'static str, u64)> = kernel.constants.iter().map(|(k, v)| (*k, v.to_bits())).collect();
        constants.sort();
        let key = PipelineKey { family: kernel.family, variant: kernel.variant, entry: kernel.entry, constants };
        let pipeline = self.pipelines.get_or_build(&key, || {
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
        });
        let align = u64::from(self.limits.min_uniform_buffer_offset_alignment).max(16);
        let params = params.into_bytes();
        let storage = entry.bindings.iter().filter(|b| b.access != Access::Uniform).count();
        if buffers.len() != storage {
            return Err(GpuError::Wgpu(format!(
                "{}: {} buffers for {storage} storage bindings",
                kernel.entry,
                buffers.len()
            )));
        }
        // The parameter slot, the bind group and the dispatch go into the
        // recording under one lock: a submit in between would hand the slot's
        // arena to the next recording, which rewrites it.
        // With timestamps each kernel gets a pass of its own (the timestamps
        // bracket passes); otherwise kernels share the open pass.
        let record = |timestamp_writes: Option<wgpu::ComputePassTimestampWrites<'_>>| {
            self.with_recording(|rec| {
                let slot = rec.uniform(&self.arenas, &self.device, align, &params);
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
                    pass.set_pipeline(&pipeline);
                    pass.set_bind_group(0, &bind_group, &[]);
                    pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                    return;
                }
                let mut pass = rec
                    .encoder()
                    .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(kernel.entry), timestamp_writes });
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
            })
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
}

/// Binds a whole tensor.
pub fn whole(t: &super::tensor::Tensor) -> wgpu::BufferBinding<'_> {
    t.buffer().as_entire_buffer_binding()
}
