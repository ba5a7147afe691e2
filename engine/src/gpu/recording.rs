//! What is being recorded for the next submit: the command encoder, the
//! compute pass kernels go into, and the kernels' uniform parameters.
//!
//! Recording cost per kernel is what limits a network of ~700 small kernels
//! (the SD 1.5 UNet), so the hot path allocates as little as it can:
//! - consecutive dispatches share one compute pass (wgpu still places the
//!   barriers each dispatch needs); copies and clears end it;
//! - parameters are appended to a few large uniform buffers, bound at an
//!   offset each, instead of one new buffer per dispatch. Their bytes are
//!   written with `Queue::write_buffer` just before the submit, which wgpu
//!   applies before the submitted commands run. Every submit gets fresh
//!   buffers, so nothing a running submission reads is ever overwritten.

/// Parameter slots per uniform buffer.
const SLOTS: u64 = 256;

pub(crate) struct Recording {
    pub encoder: wgpu::CommandEncoder,
    /// The open compute pass; it locks `encoder` until dropped.
    pass: Option<wgpu::ComputePass<'static>>,
    uniforms: Vec<UniformChunk>,
}

struct UniformChunk {
    buffer: wgpu::Buffer,
    bytes: Vec<u8>,
}

impl Recording {
    pub fn new(device: &wgpu::Device) -> Recording {
        Recording { encoder: device.create_command_encoder(&Default::default()), pass: None, uniforms: Vec::new() }
    }

    /// The encoder, with any open compute pass ended first.
    pub fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        &mut self.encoder
    }

    /// The shared compute pass, opened if needed.
    pub fn pass(&mut self) -> &mut wgpu::ComputePass<'static> {
        let encoder = &mut self.encoder;
        self.pass.get_or_insert_with(|| {
            encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("kernels"), timestamp_writes: None })
                .forget_lifetime()
        })
    }

    /// Stores `params` (a multiple of 16 bytes) for this submit and returns
    /// where to bind them: the buffer, the byte offset and the size.
    pub fn uniform(&mut self, device: &wgpu::Device, align: u64, params: &[u8]) -> (wgpu::Buffer, u64, u64) {
        let size = params.len() as u64;
        let slot = size.div_ceil(align) * align;
        let fits = self.uniforms.last().is_some_and(|c| c.bytes.len() as u64 + slot <= c.buffer.size());
        if !fits {
            let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("params"),
                size: slot.max(align) * SLOTS,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            self.uniforms.push(UniformChunk { buffer, bytes: Vec::with_capacity((slot * SLOTS) as usize) });
        }
        let chunk = self.uniforms.last_mut().expect("pushed above");
        let offset = chunk.bytes.len() as u64;
        chunk.bytes.extend_from_slice(params);
        chunk.bytes.resize((offset + slot) as usize, 0);
        (chunk.buffer.clone(), offset, size)
    }

    /// Ends the pass, writes the parameters and returns the encoder to finish and submit.
    pub fn finish(mut self, queue: &wgpu::Queue) -> wgpu::CommandEncoder {
        self.pass = None;
        for c in &self.uniforms {
            queue.write_buffer(&c.buffer, 0, &c.bytes);
        }
        self.encoder
    }
}
